"""Every catalog entry reads its real layout: each record's fixture (tiny files in the real formats at the
download's real relative paths, `scripts/catalog_research/<name>.yaml` -> `catalog.fixture`) is built,
scanned as `source/<name>` scans, normalized with the entry exactly as shipped in `assets/sources/`, and
must give the declared label names and splits, quarantine official test files, and account for every input.

Entries whose catalog section is not written yet have no fixture; `test_entry_without_a_fixture_says_so`
lists them one by one (`pytest -v` shows which), and they must say so in their provenance.
Run one entry: `pytest tests/test_catalog_fixtures.py -k <name>`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gmai_pipeline.catalog import load_source
from gmai_pipeline.catalog_fixtures import run_fixture
from gmai_pipeline.catalog_records import PENDING_STATE, load_records
from gmai_pipeline.settings import SOURCES_DIR

RECORDS = {n: r for n, r in load_records().items() if r.kept}
WITH_FIXTURE = sorted(n for n, r in RECORDS.items() if r.catalog is not None)
WITHOUT_FIXTURE = sorted(n for n, r in RECORDS.items() if r.catalog is None)


@pytest.mark.parametrize("name", WITH_FIXTURE)
def test_fixture(name: str, tmp_path: Path) -> None:
    source = load_source(SOURCES_DIR / f"{name}.yaml")
    fixture = RECORDS[name].catalog.fixture  # type: ignore[union-attr]
    result = run_fixture(source, fixture, tmp_path)
    assert result.problems == [], "\n".join(result.problems)
    assert result.report.inputs == result.report.kept + len(result.quarantine)
    assert not {r["split"] for r in result.rows} - set(source.splits)


def test_every_entry_has_a_fixture_or_says_it_has_none() -> None:
    """Every catalog entry is proven by its fixture; one without (none left today) says so in its provenance."""
    assert len(WITH_FIXTURE) + len(WITHOUT_FIXTURE) == len(list(SOURCES_DIR.glob("*.yaml"))) == 219
    for name in WITHOUT_FIXTURE:
        source = load_source(SOURCES_DIR / f"{name}.yaml")
        assert PENDING_STATE in source.provenance.source and PENDING_STATE in source.provenance.notes
        assert source.expect is None and not source.labels and source.splits == ("train",)


def test_the_first_batch_spans_every_task_and_modality_family() -> None:
    """The machinery is proven on entries of every task type and of the main modality families."""
    done = [load_source(SOURCES_DIR / f"{n}.yaml") for n in WITH_FIXTURE]
    assert {s.task_type for s in done} == {"2d_cls", "2d_det", "2d_seg", "3d_seg"}
    assert {
        "CT",
        "MR",
        "PET",
        "X-Ray",
        "Ultrasound",
        "Endoscopy",
        "Pathology",
        "Fundus",
        "OCT",
        "Dermoscopy",
    } <= {s.modality for s in done}
    assert {"layout", "msd", "image_folder", "csv_labels", "mask_pairs"} <= {s.reader.kind for s in done}


def test_fixture_files_are_written_in_their_real_formats(tmp_path: Path) -> None:
    """Every kind a writer may declare comes out readable by the library a reader uses for it."""
    import nibabel as nib
    import numpy as np
    import pydicom
    import SimpleITK as sitk
    from openpyxl import load_workbook
    from PIL import Image

    from gmai_pipeline.catalog_fixtures import build
    from gmai_pipeline.catalog_records import Fixture

    fixture = Fixture.model_validate(
        {
            "under": "wrap",
            "files": [
                {"path": "a.png", "image": "L"},
                {"path": "b.jpg", "image": "RGB"},
                {"path": "c.bmp", "image": "RGB"},
                {"path": "d.tif", "image": "L"},
                {"path": "m.png", "mask": [1, 2, 3, 4, 5]},
                {"path": "x.dcm", "dicom": "CR"},
                {"path": "v.nii.gz", "volume": 1},
                {"path": "v4.nii.gz", "volume": 2},
                {"path": "v.mha", "volume": 1},
                {"path": "l.mhd", "mask": [1, 2, 3, 4, 5, 6, 7, 8, 9]},
                {"path": "v.nrrd", "volume": 1},
                {"path": "t.tsv", "table": {"header": ["a", "b"], "rows": [["1", "x"]]}},
                {"path": "t.xlsx", "table": {"header": ["a", "b"], "rows": [["1", "x"]], "sheet": "S"}},
                {"path": "j.json", "json": {"k": [1, 2]}},
            ],
            "yields": {"labels": ["x"]},
        }
    )
    build(fixture, tmp_path)
    base = tmp_path / "wrap"
    pictures = [np.asarray(Image.open(base / n)) for n in ("a.png", "b.jpg", "c.bmp", "d.tif")]
    assert [p.shape for p in pictures] == [(12, 8), (12, 8, 3), (12, 8, 3), (12, 8)]  # 5 mask values: 3 rows
    assert len({p.tobytes() for p in pictures}) == 4
    mask = np.asarray(Image.open(base / "m.png"))
    assert {int(v): int((mask == v).sum()) for v in np.unique(mask) if v} == dict.fromkeys(range(1, 6), 16)
    assert pydicom.dcmread(base / "x.dcm").pixel_array.shape == (12, 8)
    assert nib.load(base / "v4.nii.gz").shape == (8, 8, 12, 2)  # 3D shapes follow the 9-value mask
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(base / "l.mhd")))
    assert (base / "l.raw").exists() and sorted(np.unique(labels).tolist()) == list(range(10))
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(base / "v.nrrd"))).shape == labels.shape
    assert (base / "t.tsv").read_text() == "a\tb\n1\tx\n"
    assert [list(r) for r in load_workbook(base / "t.xlsx")["S"].values] == [["a", "b"], [1, "x"]]
