"""No DICOM header value reaches any output: tables, images, previews, asset metadata, logs.

Synthetic patient values are stamped into copies of pydicom's CT_small.dcm, some file and folder
names carry them too; the dataset then goes through the real Dagster assets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from normalize_fixtures import make_source
from PIL import Image
from pydicom.data import get_testdata_file
from storage_fixtures import storage_at

from gmai_pipeline.defs.normalize import build_normalized_asset
from gmai_pipeline.defs.sources import build_source_asset
from gmai_pipeline.readers.dicom import looks_like_identifier, safe_path

PHI = {
    "PatientName": "Zyxwvut^Quentin",
    "PatientID": "QX7Z-ALPHA",
    "OtherPatientIDs": "MRN-44417702",
    "PatientBirthDate": "19511203",
    "StudyDate": "19620314",
    "SeriesDate": "19620314",
    "AccessionNumber": "ACC55501234",
    "InstitutionName": "Saint Hypothetical Hospital",
    "ReferringPhysicianName": "Doctor^Marvolo",
    "StudyID": "STUDY-GRYPHON",
}
NEEDLES = [
    "Zyxwvut",
    "Quentin",
    "QX7Z-ALPHA",
    "QX7Z",
    "44417702",
    "19511203",
    "19620314",
    "1962-03-14",
    "ACC55501234",
    "Hypothetical",
    "Marvolo",
    "GRYPHON",
]


def _stamp(path: Path, shift: int, **extra) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for k, v in {**PHI, **extra}.items():
        setattr(ds, k, v)
    ds.PixelData = np.roll(ds.pixel_array, shift, axis=0).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)


def _dataset(raw: Path) -> None:
    _stamp(raw / "Zyxwvut_Quentin_1.dcm", 1)  # file named after the patient
    _stamp(raw / "QX7Z-ALPHA" / "scan.dcm", 2)  # folder named by patient ID
    _stamp(raw / "train" / "1962-03-14" / "img.dcm", 3)  # date folder
    _stamp(raw / "1.2.826.0.1.3680043.2.1125.1.1.dcm", 4)  # UID as file name
    _stamp(raw / "plain.dcm", 5)
    _stamp(raw / "ACC55501234_us.dcm", 6, Modality="US")  # burned-in risk, quarantined
    (raw / "labels.csv").write_text(
        "file,label\n"
        "Zyxwvut_Quentin_1.dcm,chest\nQX7Z-ALPHA/scan.dcm,chest\ntrain/1962-03-14/img.dcm,chest\n"
        "1.2.826.0.1.3680043.2.1125.1.1.dcm,chest\nplain.dcm,chest\nACC55501234_us.dcm,chest\n"
        "MRN-44417702.dcm,chest\n"  # missing file with an identifier name
    )
    (raw / "Hypothetical_extra.dcm").write_bytes(b"not dicom")  # unreferenced, identifier-ish name


def _scan_text(text: str, where: str) -> None:
    low = text.lower()
    for needle in NEEDLES:
        assert needle.lower() not in low, f"'{needle}' leaked into {where}"


def test_no_header_value_in_any_output(tmp_path: Path, output_root: Path, monkeypatch, caplog, capfd) -> None:
    raw_root = tmp_path / "raw"
    _dataset(raw_root / "phi")
    storage = storage_at(output_root, raw_root=raw_root)
    source = make_source("phi", "2d_cls", {"kind": "dicom"}, modality="CT", labels={"chest": "chest"})
    caplog.set_level(logging.DEBUG)
    result = dg.materialize(
        [build_source_asset(source), build_normalized_asset(source)], resources={"storage": storage}
    )
    assert result.success
    rows = pq.read_table(output_root / "normalized" / "phi.parquet").to_pylist()
    qrows = pq.read_table(output_root / "quarantine" / "phi.parquet").to_pylist()
    assert len(rows) == 5 and {q["reason"] for q in qrows} == {
        "burned_in_text_risk",
        "missing_file",
        "unreferenced_file",
    }
    assert "plain.dcm" in {r["source_path"] for r in rows}  # harmless names are kept

    checked = 0
    for path in output_root.rglob("*"):
        if not path.is_file() or path.relative_to(output_root).parts[0] in ("demo_raw", "demo_benchmarks"):
            continue  # the manifest is checked too: it masks identifying names like the tables do
        _scan_text(str(path.relative_to(output_root)), f"the file name {path}")
        data = path.read_bytes()
        for needle in NEEDLES:
            assert needle.encode() not in data, f"'{needle}' in the bytes of {path}"
        if path.suffix == ".parquet":
            _scan_text(str(pq.read_table(path).to_pylist()), str(path))
        if path.suffix == ".png":
            with Image.open(path) as im:
                _scan_text(str(im.info), f"PNG chunks of {path}")
        checked += 1
    assert checked >= 5 + 4  # images + two tables + preview + manifest

    for event in result.all_events:
        if event.step_key and event.step_key.startswith("normalized"):
            _scan_text(str(event), f"Dagster event {event.event_type_value}")
    _scan_text("\n".join(r.getMessage() for r in caplog.records), "log records")
    out, err = capfd.readouterr()
    _scan_text(out + err, "stdout/stderr")


@pytest.mark.parametrize(
    ("component", "flagged"),
    [
        ("CT_small", False),
        ("scan", False),
        ("12345678", True),
        ("1.2.840.1.2.3", True),
        ("DOE^JOHN", True),
        ("2020_01_31", True),
        ("case_017", False),
        ("Zyxwvut", True),
    ],
)
def test_identifier_rule(component: str, flagged: bool) -> None:
    assert looks_like_identifier(component, ["zyxwvut"]) is flagged


def test_safe_path_keeps_harmless_folders() -> None:
    assert safe_path("train/plain.dcm", [], "abc") == "train/plain.dcm"
    assert safe_path("train/PID12345678/x.dcm", [], "abc") == "train/anon/abc.dcm"
