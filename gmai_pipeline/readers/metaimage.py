"""2D MetaImage pictures and masks (`.mhd` + its `.raw`, or `.mha`) in every 2D reader.

Radiograph sets built with ITK tools ship 2D MetaImage files (CRASS: `data_train/*.mhd` radiographs with
`mask_mhd/*.mhd` clavicle masks), which Pillow cannot open. SimpleITK reads them, as it reads MetaImage
volumes in the 3D path. A file is a picture when its image is 2D, or 3D with one slice; anything deeper is
a volume and an error here (a 3d_seg entry reads it). The declared size is checked against the decode
budget before any allocation. A detached header is read by path (its data file lies beside it); the
header itself is read verified first, and duplicates are judged on header + data file
(`ReaderContext.duplicate_of`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

import numpy as np

from gmai_pipeline.catalog import METAIMAGE_EXTENSIONS
from gmai_pipeline.decode_guard import DecodeBudget, decoder_failure
from gmai_pipeline.imaging import ImageError, StoredImage, to_uint8
from gmai_pipeline.volumes import _SITK_BYTES, _sitk_path, as_label_array


def is_metaimage(rel: str | None) -> bool:
    return bool(rel) and rel.lower().endswith(METAIMAGE_EXTENSIONS)  # type: ignore[union-attr]


def read_plane(ctx, rel: str, is_label: bool = False) -> np.ndarray:
    """The 2D array of a MetaImage file of the dataset: (rows, cols), or (rows, cols, 3) for a colour picture;
    labels as the smallest unsigned type that holds them. ImageError naming the file otherwise."""
    with ctx.open(rel) as f:
        source = ctx.fs_path(rel) if rel.lower().endswith(".mhd") else f
        return decode_plane(source, rel, ctx.store.budget, is_label)


def decode_plane(
    source: Path | BinaryIO, name: str, budget: DecodeBudget | None = None, is_label: bool = False
) -> np.ndarray:
    """`read_plane` on a path or an open file; every decoder failure is an ImageError (type only)."""
    try:
        return _decode(source, name, budget or DecodeBudget(), is_label)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder failure is a quarantine reason
        raise decoder_failure(exc, name, "mask" if is_label else "image") from None


def _decode(source, name: str, budget: DecodeBudget, is_label: bool) -> np.ndarray:
    import SimpleITK as sitk

    with _sitk_path(source, name) as where:
        reader = sitk.ImageFileReader()
        reader.SetFileName(where)
        reader.ReadImageInformation()  # the header only: size and pixel type before any allocation
        dims = [int(d) for d in reader.GetSize()]
        components = int(reader.GetNumberOfComponents())
        size = "x".join(map(str, dims))
        if len(dims) == 3 and dims[2] == 1:
            plane = dims[:2]
        elif len(dims) == 2:
            plane = dims
        else:
            raise ImageError(
                "unreadable",
                f"{name}: a {size} image; a 2D reader takes a 2D image or one slice (3d_seg reads volumes)",
            )
        if components not in ((1,) if is_label else (1, 3, 4)):
            raise ImageError(
                "unsupported_mask" if is_label else "unreadable",
                f"{name}: {components} components per pixel; expected {'one (label values)' if is_label else '1, 3 or 4'}",
            )
        itemsize = _SITK_BYTES.get(sitk.GetPixelIDValueAsString(reader.GetPixelID()).split(" vector")[0], 8)
        budget.check(math.prod(plane) * components * itemsize * 2, name, f"a {size} image")  # ITK + numpy
        img = reader.Execute()
    arr = sitk.GetArrayFromImage(img)  # (rows, cols[, c]); a 3D one-slice image (1, rows, cols[, c])
    del img
    if len(dims) == 3:
        arr = arr[0]
    if is_label:
        return as_label_array(arr, name)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    return arr


def store_plane(ctx, store, rel: str) -> StoredImage:
    """Decode a MetaImage picture and store it as an 8-bit PNG (wide values percentile-scaled, `to_uint8`)."""
    arr = read_plane(ctx, rel)
    try:
        pixels = to_uint8(arr)
    except ImageError as err:
        raise ImageError(err.reason, f"{rel}: {err.detail}") from None
    return store.store_array(pixels, rel)
