"""Joins whose key is written differently from the file field and whose table is chosen per image
(`table.join.cell`, `table.join.table_by`, `table.skip_rows`), on tiny workbooks and fundus JPEGs at
PAPILA's real relative paths (jusiro/FLAIR:local_data/prepare_partitions.py adequate_09_papila:
FundusImages/RET<id>OD.jpg / OS.jpg, ClinicalData/patient_data_od.xlsx / _os.xlsx, the id '#nnn' in an
unnamed first column, data after two sub-header rows, Diagnosis 0/1/2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from layout_fixtures import entry, photo
from normalize_fixtures import reasons, run

from gmai_pipeline.catalog import CatalogError

PAPILA = """
reader:
  kind: layout
  images: 'FundusImages/RET{id:\\d+}{eye:O[DS]}.jpg'
  table:
    file: [ClinicalData/patient_data_od.xlsx, ClinicalData/patient_data_os.xlsx]
    skip_rows: 2
    join:
      column: 0
      field: id
      cell: '#{key}'
      table_by: {field: eye, files: {OD: ClinicalData/patient_data_od.xlsx, OS: ClinicalData/patient_data_os.xlsx}}
  label: {column: Diagnosis}
labels: {'0': healthy, '1': glaucoma, '2': glaucoma suspect}
"""
EYE = {"modality": "Fundus", "department": "Ophthalmology"}


def _sheet(path: Path, rows: list[list]) -> None:
    import openpyxl

    path.parent.mkdir(parents=True, exist_ok=True)
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append([None, "Age", "Gender", "Diagnosis", "Refractive_Defect", None])
    ws.append([None, None, None, None, "dioptre_1", "dioptre_2"])  # the two sub-header rows
    ws.append(["ID", "years", "0 male / 1 female", "0 healthy / 1 glaucoma / 2 suspect", None, None])
    for r in rows:
        ws.append(r)
    wb.save(path)


def test_papila_each_eye_takes_its_own_sheet(tmp_path: Path) -> None:
    """RET002OD.jpg takes '#002' of patient_data_od.xlsx and RET002OS.jpg '#002' of patient_data_os.xlsx
    (different diagnoses); the sub-header rows are never data; an image without a row is missing_label."""
    raw = tmp_path / "raw" / "papila"
    top = raw / "PAPILA"
    _sheet(
        top / "ClinicalData" / "patient_data_od.xlsx", [["#002", 39, 0, 0, -0.5, 0], ["#004", 53, 1, 1, 1, 0]]
    )
    _sheet(
        top / "ClinicalData" / "patient_data_os.xlsx",
        [["#002", 39, 0, 2, -0.25, 0], ["#004", 53, 1, 1, 1, 0]],
    )
    for i, name in enumerate(["RET002OD", "RET002OS", "RET004OS", "RET009OD"]):
        photo(top / "FundusImages" / f"{name}.jpg", seed=i, quality=90)
    source = entry(tmp_path, "papila", "2d_cls", PAPILA, **EYE)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert {r["source_path"].rsplit("/", 1)[-1]: r["label"] for r in rows} == {
        "RET002OD.jpg": "healthy",
        "RET002OS.jpg": "glaucoma suspect",
        "RET004OS.jpg": "glaucoma",
    }
    assert reasons(qrows) == {"missing_label": 1}
    assert report.counters["inputs_without_table_row"] == 1
    assert report.counters["table_rows_key_not_matched"] == 0  # the sub-headers were skipped, not mismatched


def test_rows_whose_cell_misses_the_pattern_are_counted(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "papila"
    _sheet(raw / "ClinicalData" / "patient_data_od.xlsx", [["002", 39, 0, 0, 0, 0], ["#004", 53, 1, 1, 1, 0]])
    _sheet(raw / "ClinicalData" / "patient_data_os.xlsx", [])
    photo(raw / "FundusImages" / "RET002OD.jpg", seed=1, quality=90)
    photo(raw / "FundusImages" / "RET004OD.jpg", seed=2, quality=90)
    source = entry(tmp_path, "papila", "2d_cls", PAPILA, **EYE)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert [r["source_path"] for r in rows] == ["FundusImages/RET004OD.jpg"]
    assert report.counters["table_rows_key_not_matched"] == 1


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("cell: '#{key}'", "cell: '#{id}'", "write the key once"),
        ("OS: ClinicalData/patient_data_os.xlsx}", "OS: other.xlsx}", "must be one of table.file"),
        ("table_by: {field: eye", "table_by: {field: side", "table.join.table_by: field 'side'"),
    ],
)
def test_join_declarations_are_checked(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        entry(tmp_path, "papila", "2d_cls", PAPILA.replace(old, new), **EYE)
