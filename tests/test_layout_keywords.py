"""Per-eye labels from the keyword cell the image's eye chooses (`label.column_by` + `label.keywords`), on a
tiny data.xlsx and fundus JPEGs at ODIR-5K's real relative paths (ODIR-5K/ODIR-5K/data.xlsx,
ODIR-5K/ODIR-5K/Training Images/<ID>_<eye>.jpg: Xritsos/RetViT:EDA/EDA.py), through the catalog YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
from layout_fixtures import entry, photo
from normalize_fixtures import reasons, run

from gmai_pipeline.catalog import CatalogError

ODIR = """
reader:
  kind: layout
  root: ODIR-5K/ODIR-5K
  images: ['Training Images/{ID}_{eye}.jpg', 'Testing Images/{ID}_{eye}.jpg']
  table: {file: data.xlsx, join: {column: ID, field: ID}}
  label:
    column_by: {field: eye, columns: {left: Left-Diagnostic Keywords, right: Right-Diagnostic Keywords}}
    delimiter: "，"
    keywords:
    - {regex: normal fundus, value: N}
    - {regex: diabetic retinopathy|proliferative retinopathy, value: D}
    - {regex: glaucoma, value: G}
    - {regex: cataract, value: C}
    - {regex: macular degeneration, value: A}
    - {regex: hypertensive retinopathy, value: H}
    - {regex: myopi, value: M}
    - {regex: 'lens dust|low image quality|image offset|optic dis[ck] photographically invisible', value: null}
    - {regex: anterior segment image|no fundus image, value: null}
    - {regex: ., value: O}
labels: {N: normal fundus, D: diabetic retinopathy, G: glaucoma, C: cataract, A: age-related macular degeneration,
         H: hypertensive retinopathy, M: pathological myopia, O: other disease or abnormality}
"""
HEADER = [
    "ID",
    "Patient Age",
    "Patient Sex",
    "Left-Fundus",
    "Right-Fundus",
    "Left-Diagnostic Keywords",
    "Right-Diagnostic Keywords",
    "N",
    "D",
    "G",
    "C",
    "A",
    "H",
    "M",
    "O",
]
FLAGS = ["0"] * 8


def _odir(raw: Path, rows: list[list]) -> None:
    import openpyxl

    top = raw / "ODIR-5K" / "ODIR-5K"
    top.mkdir(parents=True)
    wb = openpyxl.Workbook()
    wb.active.append(HEADER)
    for r in rows:
        wb.active.append(r)
    wb.save(top / "data.xlsx")
    seed = 0
    for r in rows:
        for eye in ("left", "right"):
            seed += 1
            photo(top / "Training Images" / f"{r[0]}_{eye}.jpg", seed=seed, quality=90)
    photo(top / "Testing Images" / "1000_left.jpg", seed=99, quality=90)


def test_odir_each_eye_reads_its_own_keyword_cell(tmp_path: Path) -> None:
    """The patient-level N..O flags describe both eyes; each image takes its eye's keywords, several
    findings per cell become one input each; quality notes are no finding; an anterior-segment photo
    (no fundus) is left without a label; an unexpected value is named; Testing Images are excluded."""
    raw = tmp_path / "raw" / "odir"
    _odir(
        raw,
        [
            [0, 69, "Female", "0_left.jpg", "0_right.jpg", "cataract", "normal fundus", *FLAGS],
            [
                1,
                57,
                "Male",
                "1_left.jpg",
                "1_right.jpg",
                "normal fundus",
                "moderate non proliferative retinopathy，hypertensive retinopathy，lens dust",
                *FLAGS,
            ],
            [
                2,
                42,
                "Male",
                "2_left.jpg",
                "2_right.jpg",
                "anterior segment image",
                "epiretinal membrane",
                *FLAGS,
            ],
        ],
    )
    source = entry(tmp_path, "odir", "2d_cls", ODIR, modality="Fundus", department="Ophthalmology")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    got = sorted((r["source_path"].rsplit("/", 1)[-1], r["label"]) for r in rows)
    assert got == [
        ("0_left.jpg", "cataract"),
        ("0_right.jpg", "normal fundus"),
        ("1_left.jpg", "normal fundus"),
        ("1_right.jpg", "diabetic retinopathy"),
        ("1_right.jpg", "hypertensive retinopathy"),
        ("2_right.jpg", "other disease or abnormality"),
    ]
    assert reasons(qrows) == {"missing_label": 1, "split_excluded": 1}


def test_an_eye_no_column_names_is_missing_label(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "odir"
    _odir(raw, [[0, 69, "Female", "0_left.jpg", "0_right.jpg", "cataract", "normal fundus", *FLAGS]])
    body = ODIR.replace("right: Right-Diagnostic Keywords", "Right: Right-Diagnostic Keywords")
    source = entry(tmp_path, "odir", "2d_cls", body, modality="Fundus", department="Ophthalmology")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    bad = [q for q in qrows if q["reason"] == "missing_label"]
    assert len(bad) == 1 and "eye 'right' names none of the label columns (left, Right)" in bad[0]["detail"]


def test_unmatched_keyword_is_unknown_label(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "odir"
    _odir(raw, [[0, 69, "Female", "0_left.jpg", "0_right.jpg", "cataract", "normal fundus", *FLAGS]])
    body = ODIR.replace("    - {regex: ., value: O}\n", "")
    body = body.replace("normal fundus, value: N", "normal fundus$, value: N").replace(
        "cataract, value: C", "^x, value: C"
    )
    source = entry(tmp_path, "odir", "2d_cls", body, modality="Fundus", department="Ophthalmology")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    (bad,) = [q for q in qrows if q["reason"] == "unknown_label"]
    assert "keyword 'cataract' matches none of label.keywords" in bad["detail"]


def test_column_by_field_must_be_in_the_templates(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="label.column_by: field 'side'"):
        entry(
            tmp_path,
            "x",
            "2d_cls",
            ODIR.replace("field: eye", "field: side"),
            modality="Fundus",
            department="Ophthalmology",
        )
