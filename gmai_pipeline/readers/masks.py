"""2D masks: reading them, combining several per image, and turning components into rows.

Shared by `mask_pairs`, `layout`, the converters (`seg_image_with`: polygons and run-length masks give
their label map, or their boxes, to the same flow) and (for `mask_rows`, `value_label`) the 3D path.
Masks are read as
label indices: palette PNGs give their indices, grey PNGs their values; a colour mask whose channels
differ is `unsupported_mask`. Several mask files of one image are combined into one label map: a
file that carries its own label (a template field: BUSI's class folder, JSRT's structure folder) is
binary (every non-zero pixel is that label, value i+1 for the i-th label in name order, later files
winning where two overlap); a file without one contributes its values. A declared encoding
(`layouts.MaskEncoding`) is applied to each file first: `background: 255` (0 is a structure, looked up by
its raw value) or `threshold: t` (values >= t are the structure).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
from PIL import Image

from gmai_pipeline.catalog import IMAGE_EXTENSIONS, METAIMAGE_EXTENSIONS
from gmai_pipeline.decode_guard import DecodeBudget
from gmai_pipeline.imaging import ImageError, classify_error, declared_bytes, to_uint8
from gmai_pipeline.layouts import MaskColors, MaskEncoding
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Event, Kept, Quarantined, ReaderContext, at_boundary, is_dicom
from gmai_pipeline.readers.metaimage import is_metaimage, read_plane
from gmai_pipeline.volumes import mask_boxes

MASK_EXTENSIONS_2D = IMAGE_EXTENSIONS + (".gif", ".dcm", ".dicom") + METAIMAGE_EXTENSIONS


@dataclass
class MaskFile:
    rel: str
    label: str | None = None  # a binary mask of this label; None: a label map (values -> labels)
    encoding: MaskEncoding | None = None  # how values are encoded; None: 0 = background, values as they are
    colors: MaskColors | None = None  # a colour-coded mask: RGB -> value (`layouts.MaskColors`)


@dataclass
class Mask2D:
    """One 2D image's labels, however they were stored: a label map (one box per connected component
    and value, `volumes.mask_boxes`) or boxes already made (one per instance: a nucleus polygon, an
    RLE row), with what each value means."""

    labels: np.ndarray | None
    names: dict[int, str]  # value -> label name (empty: values are the labels)
    numeric: bool  # whether a value is itself a raw label (label maps) or only an index into `names`
    description: str  # the mask's source, for messages
    boxes: list[tuple[int, tuple[int, int, int, int]]] | None = None


def load_mask(data: bytes, rel: str, budget: DecodeBudget | None = None, grey: bool = False) -> np.ndarray:
    """Label indices of an encoded mask; its declared size is checked against `budget` before decoding.

    `grey`: a colour mask is read as its luminance (lossy JPEG masks, whose channels differ a little,
    are thresholded afterwards); otherwise a colour mask whose channels differ is refused.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            if budget is not None:
                budget.check(declared_bytes(im), rel, f"a {im.width}x{im.height} {im.mode} mask")
            im.load()
            if grey and im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "P"):
                arr = np.asarray(im.convert("L"))
            else:
                arr = np.asarray(im)
    except ImageError:
        raise
    except Exception as exc:
        err = classify_error(exc, rel)
        raise ImageError(err.reason, err.detail.replace(f"{rel}: ", f"{rel}: mask: ", 1)) from None
    if arr.ndim == 3:
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(3, arr.shape[2]))):
            raise ImageError(
                Reason.UNSUPPORTED_MASK, f"{rel}: colour mask (channels differ); expected label indices"
            )
        arr = arr[..., 0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def load_color_mask(
    data: bytes, rel: str, spec: MaskColors, budget: DecodeBudget | None = None, counters=None
) -> np.ndarray:
    """Label values of a colour-coded mask (`reader.colors`): each pixel's colour -> its value.

    Colours are compared once per distinct colour, not per pixel. A colour within `tolerance` of two listed
    colours takes the nearer; an unlisted colour is an error naming it, or background when declared so."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if budget is not None:  # the decoded picture, its RGB copy and the packed colours
                budget.check(
                    declared_bytes(im) + im.width * im.height * 7,
                    rel,
                    f"a {im.width}x{im.height} {im.mode} mask",
                )
            rgb = np.asarray(im.convert("RGB"))
    except Exception as exc:
        err = classify_error(exc, rel)
        raise ImageError(err.reason, err.detail.replace(f"{rel}: ", f"{rel}: mask: ", 1)) from None
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    colours, inverse = np.unique(packed, return_inverse=True)
    listed = np.array(list(spec.values), dtype=np.int32).reshape(-1, 3)
    values = np.array(list(spec.values.values()), dtype=np.int64)
    out = np.zeros(len(colours), np.int64)
    unlisted = []
    for i, c in enumerate(colours.tolist()):
        rgb_c = np.array([(c >> 16) & 255, (c >> 8) & 255, c & 255], dtype=np.int32)
        dist = np.abs(listed - rgb_c).max(axis=1)
        j = int(dist.argmin())
        if dist[j] <= spec.tolerance:
            out[i] = values[j]
        else:
            unlisted.append((tuple(int(x) for x in rgb_c), i))
    if unlisted and spec.unlisted == "error":
        shown = ", ".join(f"({r},{g},{b})" for (r, g, b), _ in unlisted[:5])
        raise ImageError(
            "unsupported_mask",
            f"{rel}: mask colours {shown}{' ...' if len(unlisted) > 5 else ''} are not in reader.colors"
            " (list them, or set colors.unlisted: background)",
        )
    if unlisted and counters is not None:
        counts = np.bincount(inverse.ravel(), minlength=len(colours))
        counters["mask_pixels_unlisted_colour"] += int(sum(counts[i] for _, i in unlisted))
    labels = out[inverse.reshape(packed.shape)]
    return labels.astype(np.uint16 if values.max(initial=0) > 255 else np.uint8)


def ignore_values(ctx: ReaderContext, labels: np.ndarray, values: tuple[int, ...] | str) -> np.ndarray:
    """`reader.ignore_values` as background (in place on a label array the reader owns), counted;
    `unlisted`: every value the catalog's labels do not name."""
    if values and labels.size:
        if values == "unlisted":
            keep = [int(k) for k in ctx.source.labels if k.isdigit()]
            hit = (labels != 0) & ~np.isin(labels, keep)
        else:
            hit = np.isin(labels, values)
        n = int(np.count_nonzero(hit))
        if n:
            if not labels.flags.writeable:
                labels = labels.copy()
            labels[hit] = 0
            ctx.counters["mask_pixels_ignored"] += n
    return labels


def value_label(
    ctx: ReaderContext, value: int, names: dict[int, str] | None = None, numeric: bool = True
) -> str | None:
    """A mask value's label: catalog map (by value, then by name) if given; else the dataset's own
    names (dataset.json), where a value it does not name is unknown; else the value as text.
    `numeric=False`: the value is only an index into `names` (masks labelled by a field or file name)."""
    name = (names or {}).get(value)
    if ctx.source.labels:
        return ctx.label(([str(value)] if numeric else []) + ([name] if name else []))[0]
    if names:
        return name
    return str(value)


def mask_rows(
    ctx: ReaderContext,
    rel: str,
    mask_rel: str,
    split: str,
    boxes,
    store,
    value_names=None,
    numeric: bool = True,
    **row_kw,
) -> Event:
    """Boxes of one image (or slice) -> Kept rows, or the quarantine reason (empty_mask, unknown_label)."""
    if not boxes:
        return Quarantined(
            rel,
            "annotate",
            Reason.EMPTY_MASK,
            f"{rel}: mask {mask_rel} has no foreground component above the size limits",
        )
    labels: dict[int, str] = {}
    unknown = []
    for value in sorted({v for v, _ in boxes}):
        label = value_label(ctx, value, value_names, numeric)
        if label is None:
            unknown.append(value)
        else:
            labels[value] = label
    if unknown:
        named = [value_names[v] for v in unknown] if not numeric and value_names else []
        if named and all(n.isdigit() for n in named):  # raw values kept as names (`background: 255`)
            what = f"values {[int(n) for n in named]}"
        else:
            what = f"labels {named}" if named else f"values {unknown}"
        return Quarantined(
            rel,
            "annotate",
            Reason.UNKNOWN_LABEL,
            f"{rel}: mask {what} in {mask_rel} are not in the label map",
        )
    try:
        stored = store()
    except ImageError as err:
        return Quarantined(rel, "read", err.reason, err.detail)
    return Kept([ctx.row(rel, split, stored, labels[v], stored.scale_box(b), **row_kw) for v, b in boxes])


def seg_image(
    ctx, opts, rel: str, masks: list[MaskFile], split: str, modality: str | None, expected: str
) -> Event:
    """One 2D image and its mask file(s) -> rows per kept component, or the reason it is quarantined.

    Shared with `mask_pairs`. Several masks are combined (`volume_cases` rules); an image may be DICOM.
    The whole input runs at the sample boundary (`base.at_boundary`).
    """
    return at_boundary(
        lambda: ctx.shown(rel),
        lambda: _seg_image(ctx, opts, rel, masks, split, modality, expected),
        "image",
    )


def seg_image_with(ctx, opts, rel: str, split: str, modality: str | None, make) -> Event:
    """One 2D image whose labels `make((width, height), shown name) -> Mask2D` builds (a converter's
    polygons or runs) -> rows per kept box, or the reason it is quarantined; at the sample boundary."""
    return at_boundary(
        lambda: ctx.shown(rel), lambda: _seg_with(ctx, opts, rel, split, modality, make), "image"
    )


def _seg_image(ctx, opts, rel: str, masks: list[MaskFile], split: str, modality: str | None, expected: str):
    dicom = is_dicom(rel)
    shown = ctx.namer(rel)  # worked out only for a message: a DICOM pseudonym needs the file's MD5
    # A DICOM image's masks are usually named after it: they are shown as pseudonymously as the image.
    display = ctx.dicom_names.unread if dicom else (lambda r: r)
    if not masks:
        return Quarantined(
            shown(), "read", Reason.MISSING_FILE, f"{shown()}: mask {display(expected)} not found"
        )
    for m in masks:
        ctx.claim(m.rel)
    return _seg_with(
        ctx, opts, rel, split, modality, lambda size, name: Mask2D(*_mask_2d(ctx, masks, size, name, display))
    )


def _seg_with(ctx, opts, rel: str, split: str, modality: str | None, make) -> Event:
    dicom = is_dicom(rel)
    shown = ctx.namer(rel)
    excluded = ctx.exclusion(rel, split, shown, bytes_dedup=not dicom)
    if excluded is not None:
        return Quarantined(shown(), *excluded)
    image = (
        _open_dicom(ctx, rel) if dicom else _open_meta(ctx, rel) if is_metaimage(rel) else _open_2d(ctx, rel)
    )
    if isinstance(image, Quarantined):
        return image
    size, store, name = image
    try:
        mask = make(size, name)
    except ImageError as err:
        return Quarantined(
            name, "annotate" if err.reason in ANNOTATE_REASONS else "read", err.reason, err.detail
        )
    if mask.boxes is not None:
        boxes = mask.boxes
    else:
        boxes = mask_boxes(
            ignore_values(ctx, mask.labels, getattr(opts, "ignore_values", ()) if mask.numeric else ()),
            opts.min_mask_fraction,
            opts.min_component_pixels,
        )
    store_for = ctx.store_for(modality)
    return mask_rows(
        ctx,
        name,
        mask.description,
        split,
        boxes,
        lambda: store(store_for),
        value_names=mask.names,
        numeric=mask.numeric,
        modality=modality,
    )


# Reasons about the annotation rather than the file (the quarantine table's `step`).
ANNOTATE_REASONS = frozenset(
    {
        Reason.UNKNOWN_LABEL,
        Reason.EMPTY_MASK,
        Reason.INVALID_RLE,
        Reason.RLE_OUTSIDE_IMAGE,
        Reason.DEGENERATE_POLYGON,
        Reason.NO_FINDING,
    }
)


def _open_2d(ctx, rel: str):
    """((width, height), store(store) -> StoredImage, name) for a Pillow image, decoded lazily."""
    from gmai_pipeline.readers.raw_pixels import declared_picture

    decode = declared_picture(ctx, rel, ctx.store.budget)
    if decode is not None:  # raw pixels or a NumPy array: decoded now, for the size the mask must have
        try:
            arr = decode()
        except ImageError as err:
            return Quarantined(rel, "read", err.reason, err.detail)
        return (arr.shape[1], arr.shape[0]), lambda store: store.store_array(arr, rel), rel
    try:
        data = ctx.read(rel)
        im = Image.open(io.BytesIO(data))  # lazy: the size without decoding; reused by the store
    except ImageError as err:
        return Quarantined(rel, "read", err.reason, err.detail)
    except Exception as exc:
        err = classify_error(exc, rel)
        return Quarantined(rel, "read", err.reason, err.detail)
    return im.size, lambda store: store.store_bytes(data, rel, im, ctx.md5(rel)), rel


def _open_meta(ctx, rel: str):
    """Like `_open_2d` for a 2D MetaImage (`readers/metaimage.py`): decoded now, its size is the array's."""
    try:
        arr = read_plane(ctx, rel)
        pixels = to_uint8(arr)
    except ImageError as err:
        return Quarantined(
            rel, "read", err.reason, err.detail if rel in err.detail else f"{rel}: {err.detail}"
        )
    return (arr.shape[1], arr.shape[0]), lambda store: store.store_array(pixels, rel), rel


def _open_dicom(ctx, rel: str):
    """Like `_open_2d` for a DICOM image: header rules, decode, pixel deduplication (the `dicom` reader's)."""
    from gmai_pipeline.readers.dicom import decode_header, final_name, read_header

    header = read_header(ctx, rel)
    if isinstance(header, Quarantined):
        return header
    try:
        img, pixel_md5 = decode_header(ctx, header)
    except ImageError as err:
        return Quarantined(header.shown, "read", err.reason, err.detail)
    name = final_name(header, pixel_md5)
    first = ctx.duplicate_of(name, md5="pixels:" + pixel_md5)
    if first is not None:
        return Quarantined(name, "dedup", Reason.DUPLICATE_IMAGE, f"{name}: same decoded pixels as {first}")
    target = str(PurePosixPath(name).with_suffix(".png"))
    return (img.shape[1], img.shape[0]), lambda store: store.store_array(img, name, target), name


def _mask_2d(ctx, masks: list[MaskFile], size: tuple[int, int], shown: str, display):
    """(label map, value -> name, numeric?, description) from one or several 2D mask files."""
    names: dict[int, str] = {}
    labels = sorted({m.label for m in masks if m.label is not None})
    index = {label: i + 1 for i, label in enumerate(labels)}
    combined = None
    for m in sorted(masks, key=lambda m: (m.label or "", m.rel)):
        try:
            grey = m.encoding is not None and m.encoding.threshold is not None
            arr = _load_mask_file(ctx, m.rel, grey, m.colors)
        except ImageError as err:
            raise ImageError(err.reason, err.detail.replace(m.rel, display(m.rel))) from None
        if (arr.shape[1], arr.shape[0]) != size:
            raise ImageError(
                Reason.SHAPE_MISMATCH,
                f"{shown}: image is {size[0]}x{size[1]} but mask {display(m.rel)} is {arr.shape[1]}x{arr.shape[0]}",
            )
        fg, values, raw_names = decode_values(arr, m.encoding)
        if raw_names is not None and m.label is None:
            names.update(raw_names)
        if len(masks) == 1 and m.label is None and values.dtype.kind == "u":  # one label map: as it is
            return values, names, raw_names is None, display(m.rel)
        if combined is None:
            combined = np.zeros((size[1], size[0]), np.uint16 if len(labels) > 254 else np.uint8)
        if m.label is not None:
            combined[fg] = index[m.label]
            names[index[m.label]] = m.label
        else:
            if combined.dtype == np.uint8 and values.max(initial=0) > 255:
                combined = combined.astype(np.uint16)
            combined[fg] = values[fg]
    first = display(masks[0].rel)
    desc = first if len(masks) == 1 else f"{len(masks)} mask files ({first}, ...)"
    return combined, names, not labels and not names, desc


def decode_values(
    arr: np.ndarray, encoding: MaskEncoding | None
) -> tuple[np.ndarray, np.ndarray, dict[int, str] | None]:
    """(foreground, label values, value -> raw name or None) of one mask file under its encoding.

    With `background` other than 0, a raw value v becomes index v + 1 (background 0) and keeps its raw
    text as its name, so `'0': optic disc` in the label map still finds it.
    """
    if encoding is None or encoding.plain:
        return arr > 0, arr, None
    if encoding.threshold is not None:
        fg = arr >= encoding.threshold
        return fg, fg.astype(np.uint8), None
    fg = arr != encoding.background
    values = np.zeros(arr.shape, np.uint32 if arr.max(initial=0) >= 65535 else np.uint16)
    values[fg] = arr[fg].astype(values.dtype) + 1
    present = np.unique(arr[fg])
    return fg, values, {int(v) + 1: str(int(v)) for v in present}


def _load_mask_file(ctx, rel: str, grey: bool = False, colors: MaskColors | None = None) -> np.ndarray:
    """A mask file's label indices, read verified and within the decode budget (DICOM masks too)."""
    if colors is not None:
        return load_color_mask(ctx.read(rel), rel, colors, ctx.store.budget, ctx.counters)
    if is_dicom(rel):
        import pydicom

        from gmai_pipeline.readers.dicom import pixel_array, quiet

        data = ctx.read(rel, ctx.shown)
        with quiet():
            try:
                return np.asarray(
                    pixel_array(pydicom.dcmread(io.BytesIO(data)), ctx.shown(rel), ctx.store.budget)
                )
            except ImageError:
                raise
            except Exception as exc:  # noqa: BLE001 - type only: pydicom's text can quote the header
                raise ImageError(
                    Reason.UNREADABLE, f"{ctx.shown(rel)}: mask not readable ({type(exc).__name__})"
                ) from None
    if is_metaimage(rel):
        return read_plane(ctx, rel, is_label=True)
    return load_mask(ctx.read(rel), rel, ctx.store.budget, grey)
