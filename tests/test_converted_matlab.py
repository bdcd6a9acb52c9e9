"""MATLAB label volumes for DICOM series: FUMPE's real layout (`CT_scans/PAT<nnn>/*.dcm` + `GroundTruth/PAT<nnn>.mat`,
variable `Mask`; zhaoziheng/SAT-DS:processor.py `preprocess_FUMPE`), in both MAT containers (v5 via scipy, v7.3 =
HDF5 via h5py), with a declared in-plane turn, normalized from the manifest `scan()` writes."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from converter_fixtures import COLS, ORIGIN_Z, ROWS, SECRETS, SPACING, block_row, chaos_series
from layout_fixtures import entry
from normalize_fixtures import reasons, run

FUMPE = """
reader:
  kind: layout
  images: "CT_scans/{case}/*.dcm"
  masks: "GroundTruth/{case}.mat"
  axes: [2]
  min_component_pixels: 4
  convert:
    kind: dicom_series
    mask: {kind: matlab, variable: Mask, rot90: 1}
labels: {"1": pulmonary embolism}
"""
N = 5


def _grid() -> np.ndarray:
    """The label volume on the DICOM grid (rows, columns, slices by position): a block per slice."""
    m = np.zeros((ROWS, COLS, N), np.uint8)
    for k in range(N):
        r0 = block_row(ORIGIN_Z + SPACING * k)
        m[r0 : r0 + 3, 2:6, k] = 1
    return m


def _v73(path: Path, arr: np.ndarray, name: str = "Mask") -> None:
    """A MAT v7.3 file: HDF5 behind MATLAB's 512-byte text header, the array stored column-major."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset(name, data=np.ascontiguousarray(arr.transpose()), compression="gzip")
    with open(path, "r+b") as f:
        f.write(
            b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 ."
        )


def test_fumpe_mat_masks_v5_and_v73_on_the_series_grid_and_bad_files_quarantined(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "fumpe"
    stored = np.rot90(_grid(), -1, axes=(0, 1))  # as the declaration's rot90: 1 undoes
    for case in ("PAT001", "PAT002", "PAT003", "PAT004"):
        chaos_series(raw / "CT_scans" / case, None, n=N, seed=int(case[-1]), names="{v:03d}.dcm")
    gt = raw / "GroundTruth"
    gt.mkdir()
    scipy.io.savemat(gt / "PAT001.mat", {"Mask": stored.astype(bool)}, do_compression=True)
    _v73(gt / "PAT002.mat", stored.astype(np.float64))
    scipy.io.savemat(gt / "PAT003.mat", {"mask_pe": stored})  # another variable name
    scipy.io.savemat(gt / "PAT004.mat", {"Mask": _grid()})  # not turned as declared: 16x20 vs 20x16
    source = entry(tmp_path, "fumpe", "3d_seg", FUMPE)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (4, 2)
    assert reasons(qrows) == {"missing_dataset": 1, "mask_mismatch": 1}
    by_reason = {q["reason"]: q["detail"] for q in qrows}
    assert "no variable 'Mask' (variables: mask_pe)" in by_reason["missing_dataset"]
    assert "rows x columns x slices after rot90 1" in by_reason["mask_mismatch"]
    for case in ("PAT001", "PAT002"):
        got = [r for r in rows if r["source_path"] == f"CT_scans/{case}"]
        assert len(got) == N and {r["label"] for r in got} == {"pulmonary embolism"}
        for r in got:  # slice j lies at ORIGIN_Z + j * SPACING; the patient's right is shown on the left
            r0 = block_row(ORIGIN_Z + SPACING * r["slice_index"])
            assert r["bbox"] == [COLS - 6, r0, COLS - 2, r0 + 3], r
    text = json.dumps([rows, qrows], default=str).lower()
    assert not any(s in text for s in SECRETS)
