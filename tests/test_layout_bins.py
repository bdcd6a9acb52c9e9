"""Numeric labels binned into classes (`label.bins`): LYSTO's lymphocyte counts in training.h5 (HDF5
converter) and RSNA Bone Age's months in a CSV (tables), on tiny files at the real relative paths."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from layout_fixtures import entry
from normalize_fixtures import reasons, run
from PIL import Image

from gmai_pipeline.catalog import CatalogError

LYSTO_BINS = """[{max: 0, value: '0'}, {min: 1, max: 5, value: 1-5}, {min: 6, max: 10, value: 6-10},
         {min: 11, max: 20, value: 11-20}, {min: 21, max: 50, value: 21-50}, {min: 51, max: 200, value: 51-200},
         {min: 201, value: '>200'}]"""
LYSTO_LABELS = (
    "labels: {'0': no lymphocytes, 1-5: 1 to 5 lymphocytes, 6-10: 6 to 10 lymphocytes, 11-20: 11 to 20 "
    "lymphocytes, 21-50: 21 to 50 lymphocytes, 51-200: 51 to 200 lymphocytes, '>200': more than 200 lymphocytes}"
)
PATHOLOGY = {"modality": "Pathology", "department": "Laboratory Medicine and Pathology"}


def _h5(path: Path, counts: list[int] | None, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f["x"] = rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)
        if counts is not None:
            f["y"] = np.asarray(counts, np.int64)
        f["organ"] = np.asarray([b"colon_1"] * n)


def test_lysto_counts_become_the_scoring_categories(tmp_path: Path) -> None:
    """training.h5: x (N x 299 x 299 x 3), y (lymphocyte count per patch), organ; test.h5: x and organ only
    (Zenodo 3513571; LYSTO scoring categories 0, 1-5, 6-10, 11-20, 21-50, 51-200, >200). The test file is
    an evaluation split; a negative count is refused by the converter before binning, naming the record."""
    raw = tmp_path / "raw" / "lysto"
    raw.mkdir(parents=True)
    _h5(raw / "training.h5", [0, 5, 6, 212, 37, -1], 6, 1)
    _h5(raw / "test.h5", None, 2, 2)
    source = entry(
        tmp_path,
        "lysto",
        "2d_cls",
        f"""
        reader:
          kind: layout
          images: '{{name}}.h5'
          convert: {{kind: hdf5, images: x, labels: y}}
          label:
            bins: {LYSTO_BINS}
        {LYSTO_LABELS}
        expect: {{classes: 5}}
        """,
        **PATHOLOGY,
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert [r["label"] for r in sorted(rows, key=lambda r: r["source_path"])] == [
        "no lymphocytes",
        "1 to 5 lymphocytes",
        "6 to 10 lymphocytes",
        "more than 200 lymphocytes",
        "21 to 50 lymphocytes",
    ]
    assert reasons(qrows) == {"split_excluded": 1, "invalid_label": 1}
    (bad,) = [q for q in qrows if q["reason"] == "invalid_label"]
    assert bad["source_path"] == "training.h5/5"


def test_bone_age_months_binned_from_the_csv(tmp_path: Path) -> None:
    """RSNA Pediatric Bone Age (Kaggle kmader/rsna-bone-age): boneage-training-dataset/<id>.png with
    boneage-training-dataset.csv (id, boneage in months, male); a cell that is not a number is quarantined."""
    raw = tmp_path / "raw" / "boneage"
    img = raw / "boneage-training-dataset"
    img.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in (1377, 1378, 1379, 1380):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(img / f"{i}.png")
    (raw / "boneage-training-dataset.csv").write_text(
        "id,boneage,male\n1377,180,False\n1378,12,False\n1379,94,False\n1380,n/a,True\n"
    )
    source = entry(
        tmp_path,
        "boneage",
        "2d_cls",
        """
        reader:
          kind: layout
          images: boneage-training-dataset/{id}.png
          table: {file: boneage-training-dataset.csv, join: {column: id, field: id}}
          label: {column: boneage, bins: [{max: 23, value: infant}, {min: 24, max: 143, value: child},
                  {min: 144, value: adolescent}]}
        labels: {infant: infant (under 2 years), child: child (2 to 11 years), adolescent: adolescent (12 years and over)}
        expect: {classes: 3}
        """,
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert {r["source_path"].split("/")[-1]: r["label"] for r in rows} == {
        "1377.png": "adolescent (12 years and over)",
        "1378.png": "infant (under 2 years)",
        "1379.png": "child (2 to 11 years)",
    }
    assert reasons(qrows) == {"unknown_label": 1}
    assert "'n/a' is not a number to bin" in qrows[0]["detail"]


@pytest.mark.parametrize(
    "bins",
    [
        "[{min: 5, max: 1, value: a}]",
        "[{max: 5, value: a}, {min: 5, value: b}]",
        "[{max: 5, value: a}, {value: b}]",
        "[{min: 1, value: a}, {min: 6, max: 9, value: b}]",
    ],
)
def test_bins_must_be_ordered_closed_and_apart(tmp_path: Path, bins: str) -> None:
    with pytest.raises(CatalogError, match="label.bins"):
        entry(
            tmp_path,
            "x",
            "2d_cls",
            f"""
            reader: {{kind: layout, images: 'img/{{id}}.png', table: {{file: a.csv, join: {{column: id, field: id}}}},
                      label: {{column: n, bins: {bins}}}}}
            """,
        )


def test_a_value_between_bins_is_named() -> None:
    from gmai_pipeline.layouts import Bin
    from gmai_pipeline.readers.bins import bin_of

    bins = (Bin(value="0", max=0), Bin(value="1-5", min=1, max=5))
    assert bin_of(bins, "5") == ("1-5", None) and bin_of(bins, " 0 ") == ("0", None)
    assert bin_of(bins, "0.5") == (None, "label '0.5' falls in none of the declared bins")
    assert bin_of(bins, "nan")[1] == "label 'nan' is not a finite number to bin"
