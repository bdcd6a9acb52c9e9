"""MATLAB `.mat` label volumes for a DICOM series (`convert.mask: {kind: matlab}`): FUMPE's
`GroundTruth/PAT<nnn>.mat`, variable `Mask`.

Why it is built this way:
- Two container formats share the extension: MAT v5 (read by `scipy.io.loadmat`) and v7.3, which is
  HDF5 behind a 512-byte text header (read by h5py; MATLAB writes column-major, so h5py shows the
  axes reversed and they are transposed back). Either way the variable is sized from its header
  (`scipy.io.whosmat`, the HDF5 dataset shape) and checked against the decode budget before a byte
  of it is decompressed.
- A `.mat` file records no geometry, so the grid it lies on is declared: after `rot90` quarter turns
  (numpy's `rot90` over the first two axes) and `flip` (axes reversed after that), the array must be
  (DICOM rows, DICOM columns, slices in position order along the slice normal), the grid the DICOM
  pixel arrays show. Its shape must then equal the series' (`mask_mismatch` otherwise): nothing is
  resampled, and a declaration that rotates the wrong way fails on any non-square plane or is caught
  by the fixture's off-centre blocks.
- FUMPE (Masoudi et al., Sci Data 2018): zhaoziheng/SAT-DS:processor.py `preprocess_FUMPE` places
  `np.rot90(loadmat(...)['Mask'], -1, axes=(0, 1))` on the dicom2nifti volume, whose array is LAS
  (i = DICOM column, j = reversed DICOM row, k = position along the normal); that rotation is exactly
  the map from (row, column, slice) to that array, so FUMPE's `Mask` already lies on the DICOM grid:
  `rot90: 0`.

Declaration (a `kind: layout` entry with `convert: {kind: dicom_series}`):

    images: "CT_scans/{case}/*.dcm"
    masks: "GroundTruth/{case}.mat"
    convert: {kind: dicom_series, mask: {kind: matlab, variable: Mask}}
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from pydantic import Field

from gmai_pipeline.converters._masks import Options
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# bytes per element of the MATLAB classes whosmat reports (v5 files)
CLASS_BYTES = {
    "logical": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "single": 4,
    "int64": 8,
    "uint64": 8,
    "double": 8,
}


class MatlabMask(Options):
    kind: Literal["matlab"] = "matlab"
    variable: str = Field(min_length=1)  # the variable holding the label volume (FUMPE: Mask)
    rot90: int = Field(0, ge=0, le=3)  # quarter turns (numpy rot90, axes 0 and 1) onto (rows, columns)
    flip: tuple[Literal[0, 1, 2], ...] = ()  # axes reversed after the turn (2: slices stored top-down)


def is_v73(data: bytes) -> bool:
    """MAT v7.3 is HDF5 with a 512-byte user block (h5py looks for the superblock at 0, 512, 1024...)."""
    return data[:8] == HDF5_MAGIC or data[512:520] == HDF5_MAGIC


def read_variable(data: bytes, name: str, variable: str, budget=None) -> np.ndarray:
    """The variable as a numpy array in MATLAB's own axis order; ImageError when absent or unreadable."""
    if is_v73(data):
        return _read_v73(data, name, variable, budget)
    import scipy.io

    try:
        found = {v[0]: v for v in scipy.io.whosmat(io.BytesIO(data))}
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        raise ImageError(
            Reason.UNREADABLE, f"{name}: not a readable MATLAB file ({type(exc).__name__})"
        ) from None
    if variable not in found:
        present = ", ".join(sorted(found)) or "none"
        raise ImageError(Reason.MISSING_DATASET, f"{name}: no variable '{variable}' (variables: {present})")
    _, shape, cls = found[variable]
    if cls not in CLASS_BYTES:
        raise ImageError(
            Reason.UNSUPPORTED_MASK, f"{name}: variable '{variable}' is a MATLAB {cls}, not numbers"
        )
    if budget is not None:
        budget.check(
            int(np.prod(shape, dtype=np.int64)) * CLASS_BYTES[cls], name, f"a {shape} {cls} variable"
        )
    try:
        out = scipy.io.loadmat(io.BytesIO(data), variable_names=[variable])[variable]
    except Exception as exc:  # noqa: BLE001
        raise ImageError(
            Reason.UNREADABLE, f"{name}: variable '{variable}' unreadable ({type(exc).__name__})"
        ) from None
    return np.asarray(out)


def _read_v73(data: bytes, name: str, variable: str, budget) -> np.ndarray:
    import h5py

    try:
        f = h5py.File(io.BytesIO(data), "r")
    except (OSError, ValueError) as exc:
        raise ImageError(
            Reason.TRUNCATED, f"{name}: MAT v7.3 (HDF5) file unreadable ({type(exc).__name__})"
        ) from None
    with f:
        ds = f.get(variable)
        if not isinstance(ds, h5py.Dataset):
            present = ", ".join(sorted(k for k in f if not k.startswith("#"))) or "none"
            raise ImageError(
                Reason.MISSING_DATASET, f"{name}: no variable '{variable}' (variables: {present})"
            )
        if ds.dtype.kind not in "buif":
            raise ImageError(Reason.UNSUPPORTED_MASK, f"{name}: variable '{variable}' is not numeric")
        if budget is not None:
            budget.check(
                int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize, name, f"a {ds.shape} variable"
            )
        return np.asarray(ds[()]).transpose()  # column-major on disk: reversed axes in h5py


def on_grid(arr: np.ndarray, spec: MatlabMask, name: str, rows: int, cols: int, slices: int) -> np.ndarray:
    """The declared turn and flips applied; the result is (rows, columns, slices) or mask_mismatch."""
    if arr.ndim == 2 and slices == 1:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ImageError(
            Reason.MASK_MISMATCH, f"{name}: variable is {arr.ndim}-D, expected a 3-D label volume"
        )
    arr = np.rot90(arr, spec.rot90, axes=(0, 1))
    for axis in spec.flip:
        arr = np.flip(arr, axis=axis)
    if arr.shape != (rows, cols, slices):
        raise ImageError(
            Reason.MASK_MISMATCH,
            f"{name}: mask is {arr.shape[0]}x{arr.shape[1]}x{arr.shape[2]} (rows x columns x slices after "
            f"rot90 {spec.rot90}, flip {list(spec.flip)}), the series is {rows}x{cols}x{slices}",
        )
    return arr


def load_matlab_mask(data: bytes, name: str, sv, spec: MatlabMask, budget=None) -> np.ndarray:
    """A `.mat` label volume for a decoded series (`dicom_series.SeriesVolume`), in canonical order."""
    from gmai_pipeline.volumes import as_label_array

    rows, cols = sv.series.slices[0].grid[:2]
    arr = on_grid(
        read_variable(data, name, spec.variable, budget), spec, name, rows, cols, len(sv.series.slices)
    )
    labels = as_label_array(np.ascontiguousarray(arr), name)
    return np.ascontiguousarray(sv.canonical(labels.transpose(1, 0, 2)))  # (column, row, slice) like `load`
