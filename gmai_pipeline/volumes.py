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
- Before any voxel is read, the header's declared size is checked against the file (an
  uncompressed NIfTI must hold its data; a compressed one cannot inflate more than ~1032:1) and
  against the decode budget (`decode_guard`, `GMAI_DECODE_BUDGET_MB`): a 100-byte file declaring
  2048x2048x1024 voxels is `truncated`, a real but oversized volume `too_large`.
- Masks: per label value, a mask covering less than `min_mask_fraction` of the slice is dropped
  (SA-Med2D: 0.153%); each remaining 8-connected component gives one box; components smaller than
  `min_component_pixels` are dropped. Slices with nothing left, or with constant intensity
  (degenerate: padding, blank), produce no image.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from scipy import ndimage

from gmai_pipeline.decode_guard import DecodeBudget, decoder_failure
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason

AXIS_LETTERS = "xyz"
DEFAULT_CT_WINDOW = (0.0, 2000.0)  # (level, width): -1000..1000 HU, air to dense bone
PERCENTILES = (0.5, 99.5)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
CHUNK_SLICES = 16
MAX_DEFLATE_RATIO = 1100  # deflate cannot expand more than ~1032:1, so a larger claim is a lie

Box = tuple[int, int, int, int]


def is_volume(path: str) -> bool:
    low = path.lower()
    return low.endswith(NIFTI_SUFFIXES) or low.endswith(SITK_SUFFIXES)


def _nifti_header(stream: BinaryIO, name: str):
    """The NIfTI-1 or NIfTI-2 image class and header, read from the first bytes only."""
    import nibabel as nib

    head = stream.read(4)
    stream.seek(0)
    if len(head) < 4:
        raise ImageError(Reason.TRUNCATED, f"{name}: shorter than a NIfTI header")
    sizes = {int.from_bytes(head, "little"), int.from_bytes(head, "big")}
    klass = nib.Nifti2Image if 540 in sizes else nib.Nifti1Image
    header = klass.header_class.from_fileobj(stream)
    stream.seek(0)
    return klass, header


def _check_channels(shape, name: str, is_label: bool, channels: bool) -> None:
    """A 4D shape (channels or time points) is read only when the reader asks for channels (from the
    header, before any voxel is decoded, and again on the array)."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) == 4 and not channels:
        what = "label volume" if is_label else "image"
        raise ImageError(
            Reason.UNSUPPORTED_MASK if is_label else Reason.UNREADABLE,
            f"{name}: {what} has {dims[-1]} channels or time points (4D); "
            + (
                "expected one label map (or declare reader.frames)" if is_label else "declare reader.channels"
            ),
        )


def _read_nifti(
    source: Path | BinaryIO, name: str, is_label: bool, budget: DecodeBudget, gz: bool, channels: bool
) -> np.ndarray:
    """Declared size checked against the file and the budget before nibabel allocates anything."""
    import gzip

    import nibabel as nib

    with contextlib.ExitStack() as stack:
        f = source if hasattr(source, "read") else stack.enter_context(open(source, "rb"))  # noqa: SIM115
        size = os.fstat(f.fileno()).st_size
        stream = stack.enter_context(gzip.GzipFile(fileobj=f, mode="rb")) if gz else f
        klass, header = _nifti_header(stream, name)
        shape = tuple(int(d) for d in header.get_data_shape())
        dtype = header.get_data_dtype()
        voxels = math.prod(shape) if shape else 0
        data_bytes = voxels * dtype.itemsize
        what = f"a {'x'.join(map(str, shape))} {dtype.name} volume"
        if not gz and int(header.get_data_offset()) + data_bytes > size:
            raise ImageError(
                Reason.TRUNCATED, f"{name}: {what} declared, but the file holds only {size} bytes"
            )
        if gz and data_bytes > size * MAX_DEFLATE_RATIO:
            raise ImageError(
                Reason.TRUNCATED, f"{name}: {what} declared, more than {size} compressed bytes can hold"
            )
        _check_channels(shape, name, is_label, channels)
        budget.check(voxels * (dtype.itemsize + 8), name, what)  # raw + float32/label copy (+ scaling)
        img = nib.as_closest_canonical(klass.from_stream(stream))
        if is_label:
            return np.asanyarray(img.dataobj)
        return img.get_fdata(dtype=np.float32)


_SITK_BYTES = {
    "8-bit unsigned integer": 1,
    "8-bit signed integer": 1,
    "16-bit unsigned integer": 2,
    "16-bit signed integer": 2,
    "32-bit unsigned integer": 4,
    "32-bit signed integer": 4,
    "32-bit float": 4,
    "64-bit unsigned integer": 8,
    "64-bit signed integer": 8,
    "64-bit float": 8,
}


@contextlib.contextmanager
def _sitk_path(source: Path | BinaryIO, name: str) -> Iterator[str]:
    """A path SimpleITK can open for `source`. For an open (verified) file: a link named like the file
    to `/proc/self/fd/N`, so ITK, which picks its reader by suffix, reads exactly the checked file
    (elsewhere, a private copy). Detached headers (.mhd, .nhdr) name a data file beside them and
    are passed as paths by the caller."""
    import shutil
    import tempfile

    if not hasattr(source, "read"):
        yield str(source)
        return
    suffix = next((s for s in SITK_SUFFIXES if name.lower().endswith(s)), "")
    proc = Path(f"/proc/self/fd/{source.fileno()}")
    with tempfile.TemporaryDirectory(prefix="gmai-sitk-") as tmp:
        target = Path(tmp) / f"volume{suffix}"
        if proc.exists():
            target.symlink_to(proc)
        else:  # pragma: no cover - no procfs
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out)
        yield str(target)


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


def _read_sitk(
    source: Path | BinaryIO, name: str, is_label: bool, budget: DecodeBudget, fmt: str, channels: bool
) -> np.ndarray:
    """(x, y, z) for a 3D image, (x, y, z, c) when it has several time points or components."""
    import SimpleITK as sitk

    with _sitk_path(source, fmt) as where:
        reader = sitk.ImageFileReader()
        reader.SetFileName(where)
        reader.ReadImageInformation()  # the header only: size and pixel type before any allocation
        dims = [int(d) for d in reader.GetSize()]
        itemsize = _SITK_BYTES.get(sitk.GetPixelIDValueAsString(reader.GetPixelID()).split(" vector")[0], 8)
        components = int(reader.GetNumberOfComponents())
        voxels = math.prod(dims) if dims else 0
        what = f"a {'x'.join(map(str, dims))} volume with {components} component(s)"
        _check_channels([*dims, components], name, is_label, channels)
        # ITK buffer + numpy copy; a 4D or vector image also its per-channel extracts and the stack
        copies = 2 if len(dims) <= 3 and components == 1 else 3
        budget.check(voxels * components * itemsize * copies, name, what)
        img = reader.Execute()
    arrays = []
    for vol in _sitk_volumes(img):
        if vol.GetDimension() != 3:
            raise ImageError(
                Reason.UNREADABLE, f"{name}: a {vol.GetDimension()}D image, expected a 3D volume"
            )
        vol = sitk.DICOMOrient(vol, "RAS")
        arrays.append(sitk.GetArrayFromImage(vol).transpose(2, 1, 0))  # sitk arrays are (z, y, x)
    del img
    return arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=-1)


def read_volume(
    source: Path | BinaryIO,
    name: str,
    is_label: bool = False,
    budget: DecodeBudget | None = None,
    channels: bool = False,
) -> np.ndarray:
    """A canonical (RAS+) 3D array, or with `channels` always 4D (x, y, z, channel).

    `source` is a path or an open (verified) binary file; `name` (the dataset path) picks the
    format. The declared size is checked before allocation (`decode_guard.DecodeBudget`), and so
    is the number of channels: a 4D image (channels or time points) without `channels` is an error,
    never a silent first channel (the reader says which channels it wants, `reader.channels`).
    Trailing axes of size 1 are dropped; a 2D NIfTI is a volume one slice deep. Labels come back as
    the smallest unsigned integer type that holds them. Every failure is an ImageError naming the
    file and the exception type, never the decoder's message (it can quote a path or a header).
    """
    budget = budget if budget is not None else DecodeBudget()
    fmt = name if is_volume(name) else str(source)  # a bare name: the path says the format
    try:
        if fmt.lower().endswith(NIFTI_SUFFIXES):
            arr = _read_nifti(source, name, is_label, budget, fmt.lower().endswith(".gz"), channels)
        else:
            arr = _read_sitk(source, name, is_label, budget, fmt, channels)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder failure is a quarantine reason
        raise decoder_failure(exc, name, "volume") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:  # a single slice stored as NIfTI (QUBIQ): a volume one slice deep
        arr = arr[..., None]
    _check_channels(arr.shape, name, is_label, channels)
    if arr.ndim not in (3, 4):
        raise ImageError(Reason.UNREADABLE, f"{name}: {arr.ndim}D array, expected a 3D volume")
    if is_label:
        return as_label_array(arr, name)
    return arr[..., None] if channels and arr.ndim == 3 else arr


def as_label_array(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ImageError(Reason.NON_FINITE, f"{name}: label volume has NaN or infinite values")
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise ImageError(Reason.UNREADABLE, f"{name}: label volume has non-integer values")
        arr = rounded
    if arr.dtype == np.uint8:
        return arr
    if arr.size and arr.dtype.kind != "u" and arr.min() < 0:
        raise ImageError(Reason.UNREADABLE, f"{name}: label volume has negative values")
    top = int(arr.max()) if arr.size else 0
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
    return arr.astype(dtype, copy=False)


LABEL_CHUNK = 1 << 22  # voxels counted at a time: bincount works on an 8-byte copy of its input


def label_values(labels: np.ndarray) -> list[int]:
    """The values present in a label volume (from `as_label_array`: unsigned), counted in chunks so
    the 8-byte copy bincount makes is a few MiB, not eight times the volume."""
    if labels.dtype == np.uint32:
        return [int(v) for v in np.unique(labels)]
    flat = labels.reshape(-1, order="A")  # a view for C- or Fortran-ordered volumes
    counts = np.zeros(int(labels.max(initial=0)) + 1, np.int64)
    for i in range(0, flat.size, LABEL_CHUNK):
        counts += np.bincount(flat[i : i + LABEL_CHUNK], minlength=counts.size)
    return np.flatnonzero(counts).tolist()


def window_for(modality_slug: str, ct_window: tuple[float, float] | None) -> tuple[float, float] | None:
    """(low, high) for CT; None means percentile clipping."""
    if modality_slug != "ct":
        return None
    level, width = ct_window or DEFAULT_CT_WINDOW
    return level - width / 2, level + width / 2


def volume_to_uint8(
    vol: np.ndarray, window: tuple[float, float] | None, counters: Counter | None = None, name: str = "volume"
) -> np.ndarray:
    """Whole volume to uint8, chunk by chunk along the last axis so no float copy of it is made.

    NaN and infinite voxels (masked-out background in some MR pipelines) take no part in the
    percentiles and are stored as 0; one NaN would otherwise make the window NaN and every slice
    black. Their number is counted (`voxels_non_finite`); a volume with no finite voxel is `non_finite`.
    """
    floating = vol.dtype.kind == "f"
    if window is None:
        sample = vol[::2, ::2, ::2]
        if floating:
            sample = sample[np.isfinite(sample)]
            if sample.size == 0:
                sample = vol[np.isfinite(vol)]
            if sample.size == 0:
                raise ImageError(
                    Reason.NON_FINITE, f"{name}: no voxel has a finite value (all NaN or infinite)"
                )
        low, high = (float(v) for v in np.percentile(sample, PERCENTILES))
    else:
        low, high = window
    if high <= low:
        high = low + 1.0
    out = np.empty(vol.shape, dtype=np.uint8)
    scale = np.float32(255.0 / (high - low))
    bad = 0
    for k in range(0, vol.shape[2], CHUNK_SLICES):
        chunk = (vol[:, :, k : k + CHUNK_SLICES].astype(np.float32) - np.float32(low)) * scale
        if floating:
            finite = np.isfinite(chunk)
            if not finite.all():
                bad += int(finite.size - np.count_nonzero(finite))
                chunk[~finite] = 0.0
        np.clip(chunk, 0, 255, out=chunk)
        out[:, :, k : k + CHUNK_SLICES] = chunk
    if floating and bad == vol.size:
        raise ImageError(Reason.NON_FINITE, f"{name}: no voxel has a finite value (all NaN or infinite)")
    if bad and counters is not None:
        counters["voxels_non_finite"] += bad
        counters["volumes_with_non_finite"] += 1
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
