"""3D volumes -> 2D slices the SA-Med2D-20M way, and masks -> boxes (shared with 2D `mask_pairs`).

- Channels: a 4D image (BraTS-in-MSD modalities, a time series) is read whole only when the reader
  asks for channels (`read_volume(..., channels=True)`); otherwise it is an error, never a silent
  first channel.
- Orientation: every volume is brought to the closest canonical orientation, RAS+ (array axis 0
  runs to patient Right, 1 to Anterior, 2 to Superior): nibabel `as_closest_canonical` for NIfTI,
  SimpleITK `DICOMOrient(..., "RAS")` for MHA/NRRD, so the same scan gives the same array whichever
  format it came in. Only flips and axis permutations, never resampling. Axis letters x/y/z name
  array axes 0/1/2 after this step.
- A slice along axis `a` keeps the other two axes (u, v) in increasing order and is stored as an
  image with columns = u and rows = v reversed (superior/anterior at the top): `plane.T[::-1]`.
  Boxes are computed on that stored orientation, so they need no later transform.
- Intensity to 8 bit: CT through a window (level, width), from the catalog or a wide default
  (-1000..1000 HU); every other modality by clipping at the 0.5/99.5 percentiles (estimated on a
  strided subsample of the volume, which is exact enough and 8x cheaper).
- Masks: per label value, a mask covering less than `min_mask_fraction` of the slice is dropped
  (SA-Med2D: 0.153%); each remaining 8-connected component gives one box; components smaller than
  `min_component_pixels` are dropped. Slices with nothing left, or with constant intensity
  (degenerate: padding, blank), produce no image.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from gmai_pipeline.imaging import ImageError

AXIS_LETTERS = "xyz"
DEFAULT_CT_WINDOW = (0.0, 2000.0)  # (level, width): -1000..1000 HU, air to dense bone
PERCENTILES = (0.5, 99.5)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
CHUNK_SLICES = 16

Box = tuple[int, int, int, int]


def is_volume(path: str) -> bool:
    low = path.lower()
    return low.endswith(NIFTI_SUFFIXES) or low.endswith(SITK_SUFFIXES)


def _read_nifti(path: Path, is_label: bool) -> np.ndarray:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    if is_label:
        return np.asanyarray(img.dataobj)
    return img.get_fdata(dtype=np.float32)


def _sitk_volumes(img):
    """A SimpleITK image as its 3D volumes: each time point of a 4D image, each component of a vector image."""
    import SimpleITK as sitk

    if img.GetDimension() == 4:
        size = list(img.GetSize())
        count, size[3] = size[3], 0
        parts = [sitk.Extract(img, size, [0, 0, 0, t]) for t in range(count)]
    else:
        parts = [img]
    for part in parts:
        comps = part.GetNumberOfComponentsPerPixel()
        for c in range(comps):
            yield sitk.VectorIndexSelectionCast(part, c) if comps > 1 else part


def _read_sitk(path: Path) -> np.ndarray:
    """(x, y, z) for a 3D image, (x, y, z, c) when it has several time points or components."""
    import SimpleITK as sitk

    arrays = []
    for vol in _sitk_volumes(sitk.ReadImage(str(path))):
        if vol.GetDimension() != 3:
            raise ImageError(
                "unreadable", f"{path.name}: a {vol.GetDimension()}D image, expected a 3D volume"
            )
        vol = sitk.DICOMOrient(vol, "RAS")
        arrays.append(sitk.GetArrayFromImage(vol).transpose(2, 1, 0))  # sitk arrays are (z, y, x)
    return arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=-1)


def read_volume(path: Path, name: str, is_label: bool = False, channels: bool = False) -> np.ndarray:
    """A canonical (RAS+) 3D array, or with `channels` always 4D (x, y, z, channel).

    A 4D image (channels or time points) without `channels` is an error, never a silent first
    channel: the reader says which channels it wants (`reader.channels`). Trailing axes of size 1 are
    dropped. Labels come back as the smallest unsigned integer type that holds them. Errors become
    ImageError with a quarantine reason (truncated gzip -> truncated; anything else -> unreadable).
    """
    try:
        low = str(path).lower()
        arr = _read_nifti(path, is_label) if low.endswith(NIFTI_SUFFIXES) else _read_sitk(path)
    except ImageError:
        raise
    except (EOFError, OSError, RuntimeError, ValueError, Exception) as exc:
        msg = str(exc).lower()
        reason = (
            "truncated"
            if isinstance(exc, EOFError) or "truncat" in msg or "end of" in msg or "eof" in msg
            else "unreadable"
        )
        raise ImageError(reason, f"{name}: cannot read volume ({type(exc).__name__})") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:  # a single slice stored as NIfTI (QUBIQ): a volume one slice deep
        arr = arr[..., None]
    if arr.ndim == 4 and (is_label or not channels):
        what = "label volume" if is_label else "image"
        raise ImageError(
            "unsupported_mask" if is_label else "unreadable",
            f"{name}: {what} has {arr.shape[-1]} channels or time points (4D); "
            + ("expected one label map" if is_label else "declare reader.channels"),
        )
    if arr.ndim not in (3, 4):
        raise ImageError("unreadable", f"{name}: {arr.ndim}D array, expected a 3D volume")
    if is_label:
        return as_label_array(arr, name)
    return arr[..., None] if channels and arr.ndim == 3 else arr


def as_label_array(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind == "f":
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise ImageError("unreadable", f"{name}: label volume has non-integer values")
        arr = rounded
    if arr.size and arr.min() < 0:
        raise ImageError("unreadable", f"{name}: label volume has negative values")
    top = int(arr.max()) if arr.size else 0
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
    return arr.astype(dtype, copy=False)


def window_for(modality_slug: str, ct_window: tuple[float, float] | None) -> tuple[float, float] | None:
    """(low, high) for CT; None means percentile clipping."""
    if modality_slug != "ct":
        return None
    level, width = ct_window or DEFAULT_CT_WINDOW
    return level - width / 2, level + width / 2


def volume_to_uint8(vol: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Whole volume to uint8, chunk by chunk along the last axis so no float copy of it is made."""
    if window is None:
        sample = vol[::2, ::2, ::2]
        low, high = (float(v) for v in np.percentile(sample, PERCENTILES))
    else:
        low, high = window
    if high <= low:
        high = low + 1.0
    out = np.empty(vol.shape, dtype=np.uint8)
    scale = np.float32(255.0 / (high - low))
    for k in range(0, vol.shape[2], CHUNK_SLICES):
        chunk = (vol[:, :, k : k + CHUNK_SLICES].astype(np.float32) - np.float32(low)) * scale
        np.clip(chunk, 0, 255, out=chunk)
        out[:, :, k : k + CHUNK_SLICES] = chunk
    return out


def plane(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The stored 2D orientation of slice `index` along `axis` (see the module docstring)."""
    return vol[(slice(None),) * axis + (index,)].T[::-1]  # a view: np.take would copy (slowly) every call


@dataclass
class MaskStats:
    masks_below_fraction: int = 0
    components_below_size: int = 0


def mask_boxes(
    mask: np.ndarray, min_mask_fraction: float, min_component_pixels: int, stats: MaskStats | None = None
) -> list[tuple[int, Box]]:
    """(label value, [x0, y0, x1, y1] half-open) for each kept 8-connected component, by value then position."""
    stats = stats if stats is not None else MaskStats()
    flat = mask.ravel()
    if mask.dtype.kind in "ui" and (mask.size == 0 or int(mask.max()) < 65536):
        counts = np.bincount(flat.astype(np.intp, copy=False)) if mask.size else np.zeros(1, np.intp)
        values = np.nonzero(counts)[0]
        areas = counts[values]
    else:
        values, areas = np.unique(flat, return_counts=True)
    min_area = min_mask_fraction * mask.size
    out: list[tuple[int, Box]] = []
    for value, area in zip(values.tolist(), areas.tolist(), strict=True):
        if value == 0:
            continue
        if area < min_area:
            stats.masks_below_fraction += 1
            continue
        components, n = ndimage.label(mask == value, structure=EIGHT_CONNECTED)
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        for i, sl in enumerate(ndimage.find_objects(components), start=1):
            if sl is None:
                continue
            if sizes[i] < min_component_pixels:
                stats.components_below_size += 1
                continue
            rows, cols = sl
            out.append((int(value), (cols.start, rows.start, cols.stop, rows.stop)))
    return out


@dataclass
class SliceResult:
    axis: str
    index: int
    image: np.ndarray  # uint8, stored orientation
    boxes: list[tuple[int, Box]]


def iter_slices(
    image8: np.ndarray,
    labels: np.ndarray,
    axes: tuple[int, ...],
    min_mask_fraction: float,
    min_component_pixels: int,
    slice_step: int = 1,
    counters: Counter | None = None,
) -> Iterator[SliceResult]:
    """Slices with at least one kept box, along each axis; counters record what was dropped and why."""
    counters = counters if counters is not None else Counter()
    stats = MaskStats()
    for axis in axes:
        others = tuple(a for a in range(3) if a != axis)
        has_fg = np.flatnonzero((labels > 0).any(axis=others))
        for index in has_fg.tolist():
            if index % slice_step:
                continue
            counters["slices_with_foreground"] += 1
            img = plane(image8, axis, index)
            if img.min() == img.max():
                counters["slices_degenerate"] += 1
                continue
            boxes = mask_boxes(plane(labels, axis, index), min_mask_fraction, min_component_pixels, stats)
            if not boxes:
                counters["slices_only_tiny_masks"] += 1
                continue
            counters["slices_kept"] += 1
            yield SliceResult(AXIS_LETTERS[axis], index, img, boxes)
    counters["masks_below_fraction"] += stats.masks_below_fraction
    counters["components_below_size"] += stats.components_below_size
