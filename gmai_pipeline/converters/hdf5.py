"""`hdf5`: arrays of images and labels in HDF5 files (PCam), read by dataset name, chunk by chunk.

What an input is: one index `i` of the image dataset (image `x[i]`, label `y[i]`). A file that cannot
be used at all (not HDF5, still gzip-packed, a dataset missing, images and labels of different
lengths) raises one `ImageError` for the whole file, which the reader records once per file, naming
the file and the dataset; it stands for every index the file would have had, which cannot be counted.

Why it is built this way:
- PCam ships `camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`: `x` is (N, 96, 96, 3) uint8,
  `y` is (N, 1, 1, 1) in a separate file (basveeling/pcam:README.md; the downloads are `.h5.gz`). Image
  and label datasets are therefore named per file, and may live in two files.
- Never loaded whole: 262,144 training patches are 7 GB of pixels. Rows are read in blocks of about
  `block_bytes`, each block a whole number of the dataset's HDF5 chunks (a chunk is the unit h5py
  decompresses, so an aligned block decompresses each chunk once). Memory is one block of images plus
  one of labels, whatever the file size.
- PCam downloads are `.h5.gz`; a gzip-packed file is reported as `packed_archive` with the fix
  (gunzip), not as an unreadable HDF5 file.
- Images must be (N, H, W) or (N, H, W, C) with C in 1, 3, 4; non-uint8 pixels are scaled per image
  (`imaging.to_uint8`). Labels: `scalar` (one number per row, any trailing axes of size 1, as PCam's
  `y`) or `mask` (N, H, W label maps, same H, W as the images).
- Detection boxes may live in a table beside the files instead (fastMRI+ `Annotations/knee.csv`: a row per
  box, keyed by file stem and slice): `boxes` (`Hdf5BoxTable`, read by `readers.hdf5_boxes`), with
  `labels: null`. `flip` turns every image (and label map) over first, for annotations drawn on flipped
  slices (fastMRI+ boxes: microsoft/fastmri-plus:README.md).

Catalog declaration (`reader.convert` of a `kind: layout` entry; the reader is
`gmai_pipeline.readers.hdf5`). PCam:

    reader:
      kind: layout
      images: "camelyonpatch_level_2_split_{split}_x.h5"
      split: "{split}"
      convert: {kind: hdf5, images: x, labels: y, labels_file: "camelyonpatch_level_2_split_{split}_y.h5"}
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from gmai_pipeline.converters._masks import Options
from gmai_pipeline.imaging import ImageError, to_uint8
from gmai_pipeline.quarantine import Reason

GZIP_MAGIC = b"\x1f\x8b"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class Hdf5BoxTable(Options):
    """Boxes as rows of a table beside the HDF5 files (fastMRI+ `Annotations/knee.csv`): a row belongs to
    index `index` of the file whose stem is its `key` cell; `skip` names rows that are no box (study-level)."""

    file: str
    key: str  # column holding the HDF5 file's stem (`file1000001`)
    index: str  # column holding the record index (the slice)
    columns: tuple[str, str, str, str]
    format: Literal["xyxy", "xywh"]
    label: str
    skip: dict[str, str] = Field(default_factory=dict)  # column -> value: the row is no box (counted)


class Hdf5Options(Options):
    kind: Literal["hdf5"] = "hdf5"
    images: str = "x"  # dataset name (a path inside the file: "x" or "group/x")
    labels: str | None = "y"
    label_kind: Literal["scalar", "mask"] = "scalar"
    block_bytes: int = Field(32 << 20, ge=1 << 16)  # about how many bytes of images one read brings in
    # mask labels as instance ids (CREMI's uint64 neuron_ids): every non-zero id is one object of class 1,
    # one box per id (`instance_boxes`), however many ids a volume holds; the catalog names class 1
    instances: bool = False
    # `ud` / `lr`: every image (and label map) flipped before use, as the annotations were drawn
    # (fastMRI+ boxes lie on up/down-flipped reconstructions: microsoft/fastmri-plus:README.md)
    flip: Literal["ud", "lr"] | None = None
    boxes: Hdf5BoxTable | None = None  # 2d_det: one box per table row (readers.hdf5_boxes)

    @model_validator(mode="after")
    def _instances(self) -> Hdf5Options:
        if self.instances and self.label_kind != "mask":
            raise ValueError("instances: true reads label maps of instance ids (label_kind: mask)")
        if self.boxes is not None and self.labels is not None:
            raise ValueError("convert.boxes: the labels are the table's; set convert.labels: null")
        return self


@dataclass
class Hdf5Record:
    index: int
    image: np.ndarray  # (H, W) or (H, W, 3|4) uint8; a view into the current block
    label: int | np.ndarray | None  # scalar label, (H, W) label map, or None without labels


def record_name(rel: str, index: int, count: int) -> str:
    """The input's name: `<file>/<index, zero-padded to the dataset's length>` (sample ids, stored names)."""
    return f"{rel}/{index:0{max(1, len(str(max(count - 1, 0))))}d}"


def _open(path, name: str):
    """An h5py File on a path, or on an open binary file (the reader's verified descriptor:
    `ReaderContext.open`), which h5py then reads through, never the path."""
    import h5py

    if hasattr(path, "read"):
        path.seek(0)
        head = path.read(8)
        path.seek(0)
    else:
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as exc:
            raise ImageError(Reason.MISSING_FILE, f"{name}: cannot read ({exc.strerror})") from None
    if head.startswith(GZIP_MAGIC):
        raise ImageError(
            Reason.PACKED_ARCHIVE, f"{name}: gzip-compressed; unpack it first (gunzip {Path(name).name})"
        )
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        reason = Reason.TRUNCATED if head == HDF5_MAGIC else Reason.UNREADABLE
        raise ImageError(reason, f"{name}: not a readable HDF5 file ({type(exc).__name__})") from None


def _dataset(f, key: str, name: str):
    import h5py

    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        present = []
        f.visititems(lambda k, v: present.append(k) if isinstance(v, h5py.Dataset) else None)
        raise ImageError(
            Reason.MISSING_DATASET,
            f"{name}: no dataset '{key}' (datasets present: {', '.join(sorted(present)) or 'none'})",
        )
    return obj


def _block_rows(ds, block_bytes: int) -> int:
    row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    rows = max(1, block_bytes // row_bytes)
    chunk = ds.chunks[0] if ds.chunks else 1
    return max(chunk, rows // chunk * chunk)


@dataclass
class Hdf5Info:
    count: int
    image_shape: tuple[int, ...]
    image_dtype: str
    block_rows: int


def inspect(images, images_name: str, opts: Hdf5Options, labels=None, labels_name: str = "") -> Hdf5Info:
    """Check the datasets (names, shapes, lengths) without reading pixels; ImageError when unusable."""
    with _open(images, images_name) as f:
        x = _dataset(f, opts.images, images_name)
        info = Hdf5Info(
            int(x.shape[0]),
            tuple(int(v) for v in x.shape[1:]),
            str(x.dtype),
            _block_rows(x, opts.block_bytes),
        )
        _check_images(x, images_name, opts)
        if opts.labels is not None:
            if labels is None or labels == images:
                _check_labels(_dataset(f, opts.labels, images_name), x, images_name, opts)
            else:
                with _open(labels, labels_name) as g:
                    _check_labels(_dataset(g, opts.labels, labels_name), x, labels_name, opts)
    return info


def _check_images(x, name: str, opts: Hdf5Options) -> None:
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3, 4)) or x.dtype.kind not in "uif":
        raise ImageError(
            Reason.UNSUPPORTED_LAYOUT,
            f"{name}: dataset '{opts.images}' is {x.shape} {x.dtype}; expected (N, H, W) or (N, H, W, 1|3|4) numbers",
        )


def _check_labels(y, x, name: str, opts: Hdf5Options) -> None:
    if y.shape[0] != x.shape[0]:
        raise ImageError(
            Reason.SHAPE_MISMATCH,
            f"{name}: '{opts.labels}' has {y.shape[0]} rows, '{opts.images}' has {x.shape[0]}",
        )
    per_row = int(np.prod(y.shape[1:], dtype=np.int64))
    if opts.label_kind == "scalar" and per_row != 1:
        raise ImageError(
            Reason.SHAPE_MISMATCH, f"{name}: '{opts.labels}' rows are {y.shape[1:]}, not one value each"
        )
    if opts.label_kind == "mask" and tuple(y.shape[1:3]) != tuple(x.shape[1:3]):
        raise ImageError(
            Reason.SHAPE_MISMATCH, f"{name}: '{opts.labels}' masks are {y.shape[1:]}, images {x.shape[1:3]}"
        )


def _image(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return arr if arr.dtype == np.uint8 else to_uint8(arr)


def iter_records(
    images,
    images_name: str,
    opts: Hdf5Options,
    labels=None,
    labels_name: str = "",
    start: int = 0,
    stop: int | None = None,
) -> Iterator[Hdf5Record | tuple[int, ImageError]]:
    """Records `start..stop` in order, one block in memory at a time.

    A bad row (a label that is not a whole non-negative number) comes as `(index, ImageError)`, so the
    reader quarantines that index and goes on. File-level problems raise before the first record.
    """
    inspect(images, images_name, opts, labels, labels_name)
    with _open(images, images_name) as f:
        x = _dataset(f, opts.images, images_name)
        g = None
        try:
            if opts.labels is not None:
                g = f if labels is None or labels == images else _open(labels, labels_name)
                y = _dataset(g, opts.labels, labels_name or images_name)
            else:
                y = None
            total = int(x.shape[0])
            n = total if stop is None else min(int(stop), total)
            step = _block_rows(x, opts.block_bytes)
            first = start // step * step  # blocks stay chunk-aligned whatever `start` is
            for b0 in range(first, n, step):
                b1 = min(n, b0 + step)
                block = x[b0:b1]
                lab = y[b0:b1] if y is not None else None
                for i in range(max(b0, start), b1):
                    yield from _record(
                        i, block[i - b0], None if lab is None else lab[i - b0], images_name, total, opts
                    )
                del block, lab
        finally:
            if g is not None and g is not f:
                g.close()


def _flipped(arr, flip: str | None):
    if flip is None or arr is None or np.ndim(arr) < 2:
        return arr
    return np.asarray(arr)[::-1] if flip == "ud" else np.asarray(arr)[:, ::-1]


def _record(i: int, raw: np.ndarray, lab, name: str, total: int, opts: Hdf5Options) -> Iterator:
    raw = _flipped(raw, opts.flip)
    if opts.label_kind == "mask":
        lab = _flipped(lab, opts.flip)
    if lab is None:
        yield Hdf5Record(i, _image(raw), None)
        return
    if opts.label_kind == "scalar":
        value = np.asarray(lab).reshape(-1)[0]
        if not np.isfinite(value) or value < 0 or float(value) != int(value):
            yield (
                i,
                ImageError(
                    Reason.INVALID_LABEL,
                    f"{record_name(name, i, total)}: label is not a whole non-negative number",
                ),
            )
            return
        yield Hdf5Record(i, _image(raw), int(value))
        return
    mask = np.asarray(lab)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    yield Hdf5Record(i, _image(raw), mask)


def instance_ids(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Instance ids of any integer type (uint64 included) renumbered 1..count, 0 staying background."""
    if mask.dtype.kind not in "ui":
        raise ImageError(Reason.UNSUPPORTED_MASK, f"instance ids are {mask.dtype}, not integers")
    ids, inverse = np.unique(mask, return_inverse=True)
    inverse = inverse.reshape(mask.shape).astype(np.int32)
    if ids.size and ids[0] == 0:
        return inverse, int(ids.size - 1)
    return inverse + 1, int(ids.size)
