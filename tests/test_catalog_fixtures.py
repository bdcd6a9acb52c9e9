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


@pytest.mark.parametrize("name", WITHOUT_FIXTURE)
def test_entry_without_a_fixture_says_so(name: str) -> None:
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
