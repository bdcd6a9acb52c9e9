"""4D cine cases labelled at a few time points, the frames chosen per case from a table (M&Ms), on tiny
NIfTI files at the real relative paths, through the catalog YAML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from layout_fixtures import entry, nifti
from normalize_fixtures import reasons, run

from gmai_pipeline.catalog import CatalogError

CARDIAC = {"modality": "MR", "department": "Cardiovascular Surgery"}
CSV = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"


def _cine(t: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 800, (24, 24, 4, t)).astype(np.float32)


def _gt(t: int, frames: dict[int, list[int]]) -> np.ndarray:
    """Labels only at the given frames: frame -> the values painted there (LV 1, MYO 2, RV 3)."""
    lab = np.zeros((24, 24, 4, t), np.uint8)
    for f, values in frames.items():
        for i, v in enumerate(values):
            lab[2 + 7 * i : 8 + 7 * i, 4:12, :, f] = v
    return lab


def test_mnms_ed_and_es_frames_from_the_information_csv(tmp_path: Path) -> None:
    """OpenDataset/Training/Labeled/<code>/<code>_sa.nii.gz (4D cine) + <code>_sa_gt.nii.gz (4D, labelled at
    the ED and ES frames only), the frame numbers 0-based in the csv's ED / ES columns
    (MIC-DKFZ/nnUNet:nnunetv2/dataset_conversion/Dataset114_MNMs.py reads `dataobj[..., ed]`). Each frame is
    its own 3D volume; the unlabelled frames are never read. A frame past the last time point and an
    empty frame cell are quarantined naming the column; validation cases are evaluation files."""
    raw = tmp_path / "raw" / "mnms"
    top = raw / "OpenDataset"
    lab = top / "Training" / "Labeled"
    nifti(lab / "A0S9V9" / "A0S9V9_sa.nii.gz", _cine(6, 1))
    nifti(lab / "A0S9V9" / "A0S9V9_sa_gt.nii.gz", _gt(6, {0: [1, 2, 3], 4: [1, 3]}))
    nifti(lab / "A1D0Q7" / "A1D0Q7_sa.nii.gz", _cine(6, 2))
    nifti(lab / "A1D0Q7" / "A1D0Q7_sa_gt.nii.gz", _gt(6, {0: [1]}))
    nifti(lab / "A1D9Z7" / "A1D9Z7_sa.nii.gz", _cine(6, 3))
    nifti(lab / "A1D9Z7" / "A1D9Z7_sa_gt.nii.gz", _gt(6, {0: [1]}))
    nifti(top / "Validation" / "A5C2D2" / "A5C2D2_sa.nii.gz", _cine(6, 4))
    nifti(top / "Training" / "Unlabeled" / "A0U7X3" / "A0U7X3_sa.nii.gz", _cine(6, 5))
    (top / CSV).write_text(
        "External code,Vendor,Centre,ED,ES,Pathology\n"
        "A0S9V9,A,1,0,4,NOR\nA1D0Q7,B,2,0,9,HCM\nA1D9Z7,B,2,,3,DCM\nA5C2D2,C,3,0,2,NOR\n"
    )
    source = entry(
        tmp_path,
        "mnms",
        "3d_seg",
        f"""
        reader:
          kind: layout
          images: ['Training/Labeled/{{code}}/{{code}}_sa.nii.gz', 'Validation/{{code}}/{{code}}_sa.nii.gz']
          masks: ['Training/Labeled/{{code}}/{{code}}_sa_gt.nii.gz', 'Validation/{{code}}/{{code}}_sa_gt.nii.gz']
          table: {{file: "{CSV}", join: {{column: External code, field: code}}}}
          frames: {{columns: [ED, ES], base: 0}}
          axes: [2]
        labels: {{'1': left ventricle blood pool, '2': left ventricular myocardium, '3': right ventricle}}
        """,
        **CARDIAC,
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (4, 1)
    assert reasons(qrows) == {"missing_label": 2, "split_excluded": 1}
    details = sorted(q["detail"] for q in qrows if q["reason"] == "missing_label")
    assert "frame 9 ('ES') is outside its 6 time points" in details[0]
    assert details[1].endswith("frame column 'ED' is empty for case A1D9Z7")
    by_frame = {(r["sample_id"].split("#")[-2], r["label"]) for r in rows}
    assert by_frame == {
        ("ED", "left ventricle blood pool"),
        ("ED", "left ventricular myocardium"),
        ("ED", "right ventricle"),
        ("ES", "left ventricle blood pool"),
        ("ES", "right ventricle"),
    }
    assert {r["slice_axis"] for r in rows} == {"z"} and report.counters["frames_read"] == 2


def test_frames_are_validated(tmp_path: Path) -> None:
    base = "reader: {kind: layout, images: 'a/{code}_sa.nii.gz', masks: 'a/{code}_gt.nii.gz', "
    with pytest.raises(CatalogError, match="a column needs a table"):
        entry(tmp_path, "f1", "3d_seg", base + "frames: {columns: [ED]}}")
    with pytest.raises(CatalogError, match="instead of channels"):
        entry(tmp_path, "f2", "3d_seg", base + "frames: {columns: [code]}, channels: [0]}")
