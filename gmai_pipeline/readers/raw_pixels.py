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
import pickle  # only through _ArrayOnly, which admits numpy arrays alone
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
        if ctx.array.format == "pickle":
            return lambda: decode_pickled(ctx.read(rel), rel, ctx.array, budget)
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
        return _picture(np.load(io.BytesIO(data), allow_pickle=False), rel, spec)


def _picture(arr: np.ndarray, rel: str, spec: ArrayImages) -> np.ndarray:
    """One 8-bit 2D picture from a loaded array: as it is, or the declared slice of a stack."""
    shape = arr.shape
    colour = arr.ndim == 3 and shape[-1] in (3, 4) and spec.slice is None
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and not colour and spec.slice is None):
        hint = "; declare images.array.slice (middle or an index)" if arr.ndim == 3 else ""
        raise ImageError("unsupported_codec", f"{rel}: a {shape} array is not one 2D image{hint}")
    if arr.dtype.kind not in "uif" or arr.size == 0:
        raise ImageError("unsupported_codec", f"{rel}: a {arr.dtype} array is not pixel data")
    if arr.ndim == 3 and not colour:
        if spec.axis >= arr.ndim:
            raise ImageError("unsupported_codec", f"{rel}: array.axis {spec.axis} but the array is {shape}")
        n = shape[spec.axis]
        i = n // 2 if spec.slice == "middle" else int(spec.slice)  # type: ignore[arg-type]
        if not 0 <= i < n:
            raise ImageError("unsupported_codec", f"{rel}: slice {i} outside the {n} slices of {shape}")
        arr = np.take(arr, i, axis=spec.axis)
    if arr.ndim == 3:
        arr = arr[..., :3]
    return to_uint8(np.ascontiguousarray(arr))


class _NdarrayMarker:
    """Stands for numpy.ndarray inside the restricted unpickler: a NEWOBJ or BUILD on it builds nothing."""


class _ArrayOnly(pickle.Unpickler):
    """Admits the globals a pickled ndarray needs and nothing else, each a guarded stand-in."""

    def __init__(self, data: bytes, rel: str):
        super().__init__(io.BytesIO(data), encoding="latin1")  # latin1: arrays pickled by Python 2
        self.rel, self.limit = rel, len(data)

    def find_class(self, module: str, name: str):
        key = (module.replace("numpy._core", "numpy.core"), name)
        if key == ("numpy.core.multiarray", "_reconstruct"):
            return self._reconstruct
        if key == ("numpy.core.numeric", "_frombuffer"):
            return self._frombuffer
        if key == ("numpy", "ndarray"):
            return _NdarrayMarker
        if key in (("numpy", "dtype"), ("numpy.core.multiarray", "dtype")):
            return self._dtype
        if key == ("_codecs", "encode"):  # how protocols 0-2 write the array's bytes from Python 3
            return self._latin1
        raise ImageError(
            "unsupported_codec",
            f"{self.rel}: the pickle refers to {module}.{name}; only numpy arrays are read",
        )

    def _refuse(self, what: str) -> ImageError:
        return ImageError("unsupported_codec", f"{self.rel}: {what}; only numpy arrays are read")

    def _dtype(self, kind, align=False, copy=False) -> np.dtype:
        """numpy's `dtype('u2', False, True)`: `copy` makes a new dtype for BUILD to set its byte order
        on (never the shared built-in one)."""
        if isinstance(kind, bytes):  # `_reconstruct(ndarray, (0,), b'b')`
            kind = kind.decode("latin1")
        if not isinstance(kind, str) or align not in (0, 1) or copy not in (0, 1):  # Python 2 wrote 0/1
            raise self._refuse("the pickle builds a dtype from something other than a type code")
        dt = np.dtype(kind, align=bool(align), copy=bool(copy))
        if dt.hasobject:
            raise self._refuse("the pickled array holds Python objects")
        if (
            dt.names is not None or dt.subdtype is not None or dt.itemsize > 16
        ):  # no record or sub-array types
            raise self._refuse(f"the pickled array has a {dt} element type, not pixel samples")
        return dt

    def _latin1(self, text, encoding="utf-8") -> bytes:
        if not isinstance(text, str) or encoding != "latin1":
            raise self._refuse("the pickle encodes text other than an array's bytes")
        return text.encode("latin1")

    def persistent_load(self, pid):
        raise ImageError("unsupported_codec", f"{self.rel}: the pickle uses persistent ids; not read")

    def _reconstruct(self, subtype, shape, dtype):
        """numpy's `_reconstruct(ndarray, (0,), b'b')`: an empty array that `__setstate__` then fills
        (numpy checks that the state's bytes match the shape it sets)."""
        if subtype is not _NdarrayMarker:
            raise ImageError(
                "unsupported_codec", f"{self.rel}: the pickle builds something other than an ndarray"
            )
        count = int(np.prod(shape, dtype=np.int64)) if isinstance(shape, tuple) else -1
        if not 0 <= count <= self.limit:
            raise ImageError(
                "unsupported_codec", f"{self.rel}: the pickle declares an array larger than the file"
            )
        return np.ndarray.__new__(
            np.ndarray, shape, dtype if isinstance(dtype, np.dtype) else self._dtype(dtype)
        )

    def _frombuffer(self, buf, dtype, shape, order):
        """numpy's protocol-5 path: an array over bytes already in the file (their size is checked)."""
        dt = dtype if isinstance(dtype, np.dtype) else self._dtype(dtype)
        if int(np.prod(shape, dtype=np.int64)) * dt.itemsize != len(buf):
            raise ImageError("unreadable", f"{self.rel}: the pickled array's shape does not match its bytes")
        return np.frombuffer(buf, dt).reshape(shape, order=order).copy()


def load_pickled_array(data: bytes, rel: str) -> np.ndarray:
    """The ndarray a pickle file holds, read by `_ArrayOnly`; anything else is refused by name."""
    try:
        obj = _ArrayOnly(data, rel).load()
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged or hostile pickle: its type only in the message
        raise ImageError(
            "unreadable", f"{rel}: not a readable pickled array ({type(exc).__name__})"
        ) from None
    if not isinstance(obj, np.ndarray) or obj.dtype.hasobject:
        raise ImageError(
            "unsupported_codec", f"{rel}: the pickle holds a {type(obj).__name__}, not a numpy array"
        )
    return obj


def decode_pickled(data: bytes, rel: str, spec: ArrayImages, budget: DecodeBudget) -> np.ndarray:
    """The 8-bit picture of one pickled ndarray (KneeMRI's `.pck` volumes), within the decode budget."""
    with budget.reserve(len(data) * 5, rel, "a pickled array"):  # the array (<= the file) + a float32 window
        return _picture(load_pickled_array(data, rel), rel, spec)
