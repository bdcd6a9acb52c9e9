"""DICOM series through the catalog YAML and the normal asset path: CHAOS's real layout
(`Train_Sets/CT/<n>/DICOM_anon/*.dcm` + `Ground/*.png`; `Train_Sets/MR/<n>/T1DUAL/DICOM_anon/{InPhase,OutPhase}`
+ `T1DUAL/Ground`; torch-em `torch_em/data/datasets/medical/chaos.py`, emrekavur/CHAOS-evaluation `Data_3D/`),
normalized from the manifest `scan()` writes, once through Dagster."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
from converter_fixtures import COLS, ORIGIN_Z, SECRETS, SPACING, chaos_series
from layout_fixtures import entry
from normalize_fixtures import reasons, run
from storage_fixtures import storage_at

CHAOS = """
reader:
  kind: layout
  root: Train_Sets
  images: ["{modality}/{case}/DICOM_anon/*.dcm", "{modality}/{case}/{sequence}/DICOM_anon/*.dcm",
           "{modality}/{case}/{sequence}/DICOM_anon/{phase}/*.dcm"]
  masks: ["{modality}/{case}/Ground/*.png", "{modality}/{case}/{sequence}/Ground/*.png"]
  modality: "{modality}"
  axes: [2]
  min_component_pixels: 4
  convert:
    kind: dicom_series
    mask: {kind: slices, match: file_order}
labels: {"255": liver, "63": liver, "126": right kidney}
"""


def _chaos(raw: Path) -> dict:
    t = raw / "CHAOS_Train_Sets" / "Train_Sets"  # the zip's top folder: skipped on its own
    blocks = {"ct1": chaos_series(t / "CT" / "1" / "DICOM_anon", t / "CT" / "1" / "Ground", seed=1)}
    # case 2: the 4th slice by position is missing (5 files, 5 masks)
    chaos_series(t / "CT" / "2" / "DICOM_anon", t / "CT" / "2" / "Ground", skip=(3,), seed=2)
    # MR case 3: T1DUAL in- and opposed-phase series share T1DUAL/Ground
    mr = t / "MR" / "3" / "T1DUAL"
    names = "IMG-0004-{v:05d}.dcm"
    blocks["in"] = chaos_series(
        mr / "DICOM_anon" / "InPhase",
        mr / "Ground",
        n=5,
        seed=3,
        values=(63, 126),
        names=names,
        modality="MR",
    )
    chaos_series(mr / "DICOM_anon" / "OutPhase", None, n=5, seed=3, names=names, modality="MR")
    (t / "CT" / "1" / "DICOM_anon" / "i9999,0000b.dcm").write_bytes(b"a scanner export log, not DICOM")
    return blocks


def test_chaos_series_kept_with_boxes_a_gap_quarantined_and_no_header_value_anywhere(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "chaos"
    blocks = _chaos(raw)
    source = entry(tmp_path, "chaos", "3d_seg", CHAOS)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    # inputs: CT/1, CT/2, MR InPhase, MR OutPhase series, and the one broken file of CT/1
    assert (report.inputs, report.kept) == (5, 3)
    assert reasons(qrows) == {"missing_slice": 1, "unreadable": 1}
    gap = next(q for q in qrows if q["reason"] == "missing_slice")
    assert gap["source_path"] == "CHAOS_Train_Sets/Train_Sets/CT/2/DICOM_anon"
    assert "1 slice(s) missing; the gap between the 3rd and 4th slice by position" in gap["detail"]
    broken = next(q for q in qrows if q["reason"] == "unreadable")
    assert broken["source_path"].startswith("anon/") and broken["source_path"].endswith(".dcm")

    ct = [r for r in rows if r["source_path"] == "CHAOS_Train_Sets/Train_Sets/CT/1/DICOM_anon"]
    assert len(ct) == 6 and {r["label"] for r in ct} == {"liver"} and {r["modality"] for r in ct} == {"CT"}
    for r in ct:  # slice j lies at ORIGIN_Z + j * SPACING (canonical axis 2 is superior)
        r0 = blocks["ct1"][round(ORIGIN_Z + SPACING * r["slice_index"], 3)]
        # stored slices show the patient's right on the left: DICOM columns 2..6 -> x COLS-6..COLS-2
        assert r["bbox"] == [COLS - 6, r0, COLS - 2, r0 + 3], r
        assert r["sample_id"].startswith("3d#seg#ct#chaos#CHAOS_Train_Sets#Train_Sets#CT#1#DICOM_anon#z")
    mr = [r for r in rows if r["modality"] == "MR"]
    assert {r["source_path"] for r in mr} == {
        "CHAOS_Train_Sets/Train_Sets/MR/3/T1DUAL/DICOM_anon/InPhase",
        "CHAOS_Train_Sets/Train_Sets/MR/3/T1DUAL/DICOM_anon/OutPhase",
    }
    assert {r["label"] for r in mr} == {"liver", "right kidney"} and len(mr) == 2 * 5 * 2
    assert all(r["image"].startswith("images/3d/seg/mr/chaos/") for r in mr)
    assert report.counters["series_kept"] == 3 and report.images == 4

    out = tmp_path / "out"
    text = json.dumps([rows, qrows], default=str).lower()
    text += pq.read_table(out / "normalized" / "chaos.parquet").to_pandas().to_json().lower()
    assert not any(s in text for s in SECRETS)
    stored = [p for p in (out / "images").rglob("*.png")]
    assert stored and not any(s in str(p).lower() for p in stored for s in SECRETS)


def test_chaos_through_dagster_masks_dicom_names_in_the_manifest(
    tmp_path: Path, output_root: Path, monkeypatch
) -> None:
    from gmai_pipeline.defs.normalize import build_normalized_asset
    from gmai_pipeline.defs.sources import build_source_asset

    raw_root = tmp_path / "raw"
    _chaos(raw_root / "chaos")
    source = entry(tmp_path, "chaos", "3d_seg", CHAOS + "expect: {images: 4, source: fixture}\n")
    storage = storage_at(output_root, raw_root=raw_root)
    result = dg.materialize(
        [build_source_asset(source), build_normalized_asset(source)],
        raise_on_error=False,
        resources={"storage": storage},
    )
    assert result.success
    meta = result.asset_materializations_for_node("normalized__chaos")[0].metadata
    assert (meta["kept"].value, meta["quarantined"].value) == (3, 2)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert all(c.passed for c in checks.values()), {k: c.metadata for k, c in checks.items() if not c.passed}
    manifest = pq.read_table(output_root / "manifests" / "chaos.parquet").to_pylist()
    dcm = [m["path"] for m in manifest if m["path"].endswith(".dcm")]
    assert dcm and all(p.startswith("anon/") and "/file-" in p for p in dcm)  # names unread: masked


TCIA = """
reader:
  kind: layout
  images: "{case}/{study}/{series}/*.dcm"
  masks: "{case}/{study}/{series}/label.nii.gz"
  axes: [2]
  min_component_pixels: 4
  convert: {kind: dicom_series, mask: {kind: volume}}
labels: {"1": tumour}
"""


def test_series_names_hide_identifiers_burned_in_text_and_a_label_volume(tmp_path: Path) -> None:
    """A TCIA-style download (`<patient>/<study date ...>/<series>/*.dcm`) with a NIfTI label volume per
    series: folders that look like identifiers, or hold a header value, are shown as `anon`."""
    import nibabel as nib
    import numpy as np

    from gmai_pipeline.converters.dicom_series import DicomFile, DicomSeriesOptions, load, scan

    raw = tmp_path / "raw" / "tcia"
    series = raw / "1" / "StudyDate-20001231" / "CT_chest"
    chaos_series(series, None, n=6, seed=4, names="1-{v:02d}.dcm")
    files = [DicomFile(p, p.name) for p in sorted(series.glob("*.dcm"))]
    sv = load(scan(files, DicomSeriesOptions()).series[0], DicomSeriesOptions(), "s")
    lab = np.zeros(sv.volume.shape, np.uint8)
    lab[4:10, 3:9, 1:4] = 1
    nib.save(nib.Nifti1Image(lab, sv.affine), series / "label.nii.gz")
    # a patient folder named after the patient (a header value), holding an ultrasound series
    chaos_series(raw / "Zyxwvut" / "1" / "US", None, n=4, seed=5, names="{v}.dcm", modality="US")
    report, rows, qrows = run(entry(tmp_path, "tcia", "3d_seg", TCIA), raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (2, 1)
    [name] = {r["source_path"] for r in rows}  # a folder shown with `anon` in it: the series' token too
    assert name.startswith("1/anon/CT_chest/series-") and len(rows) == 3
    # canonical x 4..10, y 3..9 on a 16-row grid: stored rows run from anterior (y = 15) down
    assert {r["slice_index"]: r["bbox"] for r in rows} == {
        1: [4, 7, 10, 13],
        2: [4, 7, 10, 13],
        3: [4, 7, 10, 13],
    }
    [risk] = qrows
    assert (risk["reason"], risk["step"]) == ("burned_in_text_risk", "privacy")
    assert risk["source_path"].startswith("anon/1/US/series-")
    assert not any(s in json.dumps([rows, qrows]).lower() for s in SECRETS)
