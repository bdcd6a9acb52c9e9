"""Image files no picture decoder reads, declared in `images`: headerless raw pixels (`images.raw`,
`layouts.RawPixels`: JSRT's `.IMG` chest films) and NumPy arrays (`images.array`, `layouts.ArrayImages`:
MRNet's per-exam `.npy` stacks).

Nothing in a raw file says its size or sample type, so the declaration is the header: the file must
hold exactly `offset + width x height x bytes per sample` bytes, and integer samples must fit the
declared `bits` (a value above them almost always means the wrong byte order). A `.npy` header is
read first, without loading: an object array (a pickle) is refused, and the declared shape must fit
the file and the decode budget before anything is allocated. Both become 8-bit HxW(x3) arrays.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

from gmai_pipeline.decode_guard import DecodeBudget, ImageError
from gmai_pipeline.imaging import to_uint8
from gmai_pipeline.layouts import ArrayImages, RawPixels


def _applies(spec, rel: str) -> bool:
    return spec is not None and rel.lower().endswith(tuple(e.lower() for e in spec.extensions))


def declared_picture(ctx, rel: str, budget: DecodeBudget) -> Callable[[], np.ndarray] | None:
    """How to read (verified) and decode `rel` when a declaration covers it, else None (decode by extension)."""
    if _applies(ctx.raw, rel):
        return lambda: decode_raw(ctx.read(rel), rel, ctx.raw, budget)
    if _applies(ctx.array, rel):
        return lambda: decode_npy(ctx.read(rel), rel, ctx.array, budget)
    return None


def decode_raw(data: bytes, rel: str, spec: RawPixels, budget: DecodeBudget) -> np.ndarray:
    """The 8-bit picture of one raw file (HxW), or ImageError naming the file and what is wrong."""
    pixels = spec.width * spec.height
    need = spec.offset + pixels * spec.itemsize
    what = f"{spec.width}x{spec.height} {spec.dtype}" + (
        f" after {spec.offset} header bytes" if spec.offset else ""
    )
    if len(data) < need:
        raise ImageError(
            "truncated", f"{rel}: {len(data)} bytes, but the declared raw format ({what}) needs {need}"
        )
    if len(data) > need:
        raise ImageError(
            "unreadable",
            f"{rel}: {len(data)} bytes, more than the declared raw format ({what}) holds ({need})",
        )
    with budget.reserve(pixels * 4, rel, f"a {what} raw image"):  # float32 working copy for the window
        arr = np.frombuffer(data, np.dtype(spec.numpy_dtype), count=pixels, offset=spec.offset)
        arr = arr.reshape(spec.height, spec.width)
        if spec.bits is not None:
            signed = spec.dtype.startswith("int")
            bottom = -(1 << (spec.bits - 1)) if signed else 0
            top = bottom + (1 << spec.bits) - 1
            low, high = int(arr.min()), int(arr.max())
            if low < bottom or high > top:
                raise ImageError(
                    "unreadable",
                    f"{rel}: samples reach {low}..{high}, outside the declared {spec.bits} bits "
                    f"(check byte_order {spec.byte_order} and bits)",
                )
            out = to_uint8(arr, float(bottom), float(top))
        else:
            out = to_uint8(arr)
        return 255 - out if spec.invert else out


def _npy_header(f: io.BytesIO, rel: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ImageError("unsupported_codec", f"{rel}: .npy format version {version} is not read")
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError and others for a bad header
        raise ImageError("unreadable", f"{rel}: not a NumPy .npy file ({type(exc).__name__})") from None
    return shape, dtype


def decode_npy(data: bytes, rel: str, spec: ArrayImages, budget: DecodeBudget) -> np.ndarray:
    """The 8-bit picture of one `.npy` file (module docstring), or ImageError naming the file."""
    f = io.BytesIO(data)
    shape, dtype = _npy_header(f, rel)
    if dtype.hasobject:
        raise ImageError("unsupported_codec", f"{rel}: an object array (a pickle) is never loaded")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - f.tell() < nbytes:
        raise ImageError("truncated", f"{rel}: the header declares {shape} {dtype}, the file holds less")
    colour = len(shape) == 3 and shape[-1] in (3, 4) and spec.slice is None
    if len(shape) not in (2, 3) or (len(shape) == 3 and not colour and spec.slice is None):
        hint = "; declare images.array.slice (middle or an index)" if len(shape) == 3 else ""
        raise ImageError("unsupported_codec", f"{rel}: a {shape} array is not one 2D image{hint}")
    with budget.reserve(nbytes + (nbytes // dtype.itemsize) * 4, rel, f"a {shape} {dtype} array"):
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        if len(shape) == 3 and not colour:
            if spec.axis >= arr.ndim:
                raise ImageError(
                    "unsupported_codec", f"{rel}: array.axis {spec.axis} but the array is {shape}"
                )
            n = arr.shape[spec.axis]
            i = n // 2 if spec.slice == "middle" else int(spec.slice)  # type: ignore[arg-type]
            if not 0 <= i < n:
                raise ImageError("unsupported_codec", f"{rel}: slice {i} outside the {n} slices of {shape}")
            arr = np.take(arr, i, axis=spec.axis)
        if arr.ndim == 3:
            arr = arr[..., :3]
        return to_uint8(np.ascontiguousarray(arr))
