"""DICOM labels from an MD.ai annotation export keyed by the header's StudyInstanceUID: MIDRC-RICORD-1c at its real
paths (TCIA tree MIDRC-RICORD-1C-<AnonMRN>/<date>-<description>-<last 5 of the study UID>/<series>/<n>.dcm:
lindawangg/COVID-Net:create_ricord_dataset/create_ricord_dataset.ipynb; the export named as RICORD-1a's,
neuro-ml/amid:amid/midrc.py; its layout datasets[].annotations[] + labelGroups[].labels[]:
mdai/mdai-client-py:mdai/utils/common_utils.py). The key is used in memory only: no UID reaches a row, a path,
a quarantine detail or the log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from layout_fixtures import dicom_file, entry
from normalize_fixtures import reasons, run

RICORD = """
reader:
  kind: dicom
  labels_json: {file: "MIDRC-RICORD-1c_annotations_*.json", format: mdai, key: StudyInstanceUID}
labels: {"Typical Appearance": typical appearance, "Negative for Pneumonia": negative for pneumonia}
"""
ROOT = "1.2.826.0.1.3680043.10.474.419639."
UIDS = {
    k: f"{ROOT}{n}"
    for k, n in (
        ("a", 275017752081810791420837856),
        ("b", 413704055090564244466504760),
        ("c", 113704055090564244466539552),
        ("d", 913704055090564244466511111),
    )
}


def _export(path: Path) -> None:
    ann = [
        ("a", "L_typ"),
        ("a", "L_typ"),
        ("a", "L_neg"),
        ("a", "L_mild"),  # majority typical; grading ignored
        ("b", "L_neg"),
        ("c", "L_typ"),
        ("c", "L_neg"),  # a tie between two annotators
    ]  # d: no annotation
    data = {
        "id": "ricord-1c",
        "datasets": [
            {
                "id": "D_1",
                "name": "RICORD-1c",
                "studies": [],
                "annotations": [
                    {
                        "id": f"A_{i}",
                        "labelId": lab,
                        "StudyInstanceUID": UIDS[s],
                        "SeriesInstanceUID": None,
                        "SOPInstanceUID": None,
                        "data": None,
                    }
                    for i, (s, lab) in enumerate(ann)
                ],
            }
        ],
        "labelGroups": [
            {
                "id": "G_1",
                "name": "Study labels",
                "labels": [
                    {"id": "L_typ", "name": "Typical Appearance", "scope": "STUDY"},
                    {"id": "L_neg", "name": "Negative for Pneumonia", "scope": "STUDY"},
                ],
            },
            {
                "id": "G_2",
                "name": "Airspace grading",
                "labels": [{"id": "L_mild", "name": "Mild", "scope": "STUDY"}],
            },
        ],
    }
    path.write_text(json.dumps(data))


def test_ricord_labels_join_on_the_header_study_uid_in_memory_only(tmp_path: Path, caplog) -> None:
    raw = tmp_path / "raw" / "midrc_ricord_1c"
    for i, (k, mrn) in enumerate(
        (("a", "419639-000025"), ("b", "419639-000082"), ("c", "419639-001155"), ("d", "419639-002724"))
    ):
        uid = UIDS[k]
        study = f"MIDRC-RICORD-1C-{mrn}/01-2{i}-2005-NA-XR CHEST AP PORTABLE-{uid[-5:]}"
        pixels = (np.indices((24, 20)).sum(0) * (7 + i) % 4000).astype(np.uint16)
        dicom_file(
            raw / study / "1.000000-NA-56491" / "1-1.dcm",
            pixels,
            StudyInstanceUID=uid,
            PatientID=mrn,
            StudyDate=f"2005012{i}",
        )
    _export(raw / "MIDRC-RICORD-1c_annotations_labelgroup_all_2020-Dec-8.json")
    source = entry(tmp_path, "midrc_ricord_1c", "2d_cls", RICORD)
    with caplog.at_level(logging.DEBUG):
        report, rows, qrows = run(source, raw, tmp_path / "out")
    assert sorted(r["label"] for r in rows) == ["negative for pneumonia", "typical appearance"]
    assert reasons(qrows) == {"conflicting_labels": 1, "missing_label": 1}
    assert report.inputs == report.kept + report.quarantined == 4
    shown = json.dumps([rows, qrows], default=str) + caplog.text
    for uid in UIDS.values():
        assert uid not in shown and uid[-12:] not in shown
    assert "419639" not in shown and "20050120" not in shown  # the MRN and the date folders are pseudonymous


def test_an_unreadable_export_quarantines_every_file(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "midrc_ricord_1c"
    dicom_file(raw / "MIDRC-RICORD-1C-419639-000025/x-37856/1.000000-NA-56491/1-1.dcm", np.ones((8, 8)))
    (raw / "MIDRC-RICORD-1c_annotations_labelgroup_all_2020-Dec-8.json").write_text("{not json")
    report, rows, qrows = run(entry(tmp_path, "midrc_ricord_1c", "2d_cls", RICORD), raw, tmp_path / "out")
    assert not rows and reasons(qrows) == {"unreadable": 1, "missing_label": 1}
    assert report.inputs == report.quarantined == 2
