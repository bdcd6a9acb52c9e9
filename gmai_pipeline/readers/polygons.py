"""`convert: {kind: polygons}`: 2D images with vector annotations -> label masks -> boxes (2d_seg).

What one input is: an image file the `images` templates match, with its annotation file(s) (paired
by the fields the `masks` templates share with it; MoNuSeg's `{id}.tif` + `{id}.xml`), kept as one row
per box; plus each shape of an annotation file that encloses no area (`not_an_area`,
`degenerate_polygon`: a ruler, a point, two vertices), quarantined on its own so nothing vanishes.
COCO (`format: coco`): the `masks` templates match the JSON file(s); an input is an image file with
the JSON entry that names it (by path under the layout root or the JSON's folder, or by file name), and
every JSON image entry whose file is not found is one more (`missing_file`).

Masks are rasterised at the image's size by `converters.polygons` (holes and exclusions cleared);
with `instances: true` every shape is its own object (one box each, touching nuclei apart), else
one box per connected component of each label. A shape's label is its own (Aperio `Name`/`Id`/
attribute, ASAP `PartOfGroup`, QuPath `classification.name`, COCO category name) unless
`reader.label` gives one for every shape of the image; either way through the catalog's labels.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from collections.abc import Iterator

import numpy as np

from gmai_pipeline.catalog import IMAGE_EXTENSIONS_2D
from gmai_pipeline.converters._masks import instance_boxes
from gmai_pipeline.converters.polygons import (
    Parsed,
    PolygonOptions,
    Shape,
    coco_mask,
    positive_labels,
    rasterize,
    read_annotations,
)
from gmai_pipeline.decode_guard import decoder_failure, is_output_failure
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.layouts import LayoutReader
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Event, Quarantined, ReaderContext, unreferenced_file
from gmai_pipeline.readers.converted import Decided, decide, decided_images, gather
from gmai_pipeline.readers.masks import Mask2D, seg_image_with
from gmai_pipeline.readers.values import resolve

ANNOTATION_EXTENSIONS = (".xml", ".json", ".geojson")


def read(ctx: ReaderContext, opts: LayoutReader) -> Iterator[Event]:
    conv: PolygonOptions = opts.convert  # type: ignore[assignment]
    inputs = gather(ctx, opts, IMAGE_EXTENSIONS_2D, ANNOTATION_EXTENSIONS)
    yield from inputs.events
    if conv.format == "coco":
        yield from _coco(ctx, opts, conv, inputs)
        return
    expected = " or ".join(opts.masks.path)  # type: ignore[union-attr]
    for unit in decided_images(ctx, opts, inputs):
        if isinstance(unit, Quarantined):
            yield unit
            continue
        f = unit.found
        files = inputs.masks_of(f)
        if not files:
            shown = ctx.shown(f.rel)
            yield Quarantined(
                shown, "read", Reason.MISSING_FILE, f"{shown}: annotation file {expected} not found"
            )
            continue
        shapes: list[Shape] = []
        failed = None
        for a in files:
            ctx.claim(a.rel)
            parsed = _parse(ctx, a.rel, conv)
            if isinstance(parsed, Quarantined):
                failed = parsed
                break
            for reason, detail in parsed.skipped:  # each shape without an area: an input of its own
                yield Quarantined(a.rel, "annotate", reason, detail)
            shapes += parsed.shapes
        if failed is not None:
            yield Quarantined(ctx.shown(f.rel), failed.step, failed.reason, failed.detail)
            continue
        label = resolve(opts.label, unit.values) if opts.label is not None else None
        if label is not None:
            shapes = [dataclasses.replace(s, label=label) for s in shapes]
        desc = files[0].rel if len(files) == 1 else f"{len(files)} annotation files ({files[0].rel}, ...)"
        yield seg_image_with(
            ctx,
            opts,
            f.rel,
            unit.split,
            unit.modality,
            lambda size, name, shapes=shapes, desc=desc: shapes_mask(ctx, conv, shapes, size, name, desc),
        )


def _parse(ctx: ReaderContext, rel: str, conv: PolygonOptions) -> Parsed | Quarantined:
    """One annotation file, read verified and parsed, at the sample boundary."""
    try:
        return read_annotations(ctx.read(rel), rel, conv)
    except ImageError as err:
        return Quarantined(rel, "read", err.reason, err.detail)
    except Exception as exc:  # noqa: BLE001 - the sample boundary (a parser's RecursionError, ...)
        if is_output_failure(exc):
            raise
        err = decoder_failure(exc, rel, "annotation file")
        return Quarantined(rel, "read", err.reason, err.detail)


def _check_size(ctx: ReaderContext, width: int, height: int, name: str, count: int) -> None:
    """The mask is allocated at the image's size: within the decode budget like any decode."""
    top = 4 if count > 65535 else 2 if count > 255 else 1
    ctx.store.budget.check(width * height * (top + 1), name, f"its {width}x{height} annotation mask")


def shapes_mask(
    ctx: ReaderContext, conv: PolygonOptions, shapes: list[Shape], size: tuple[int, int], name: str, desc: str
) -> Mask2D:
    """Shapes in image coordinates -> the image's labels (instances: boxes; else a label map)."""
    width, height = size
    labels = sorted({s.label for s in shapes if not s.negative})
    value_of = {label: i + 1 for i, label in enumerate(labels)}
    names = {v: label for label, v in value_of.items()}
    if not labels:
        raise ImageError(Reason.EMPTY_MASK, f"{name}: {desc} has no area shape")
    if conv.instances:
        positives = positive_labels(shapes)
        _check_size(ctx, width, height, name, len(positives))
        instances = rasterize(shapes, height, width, instances=True)
        boxes, dropped = instance_boxes(instances, len(positives), conv.min_pixels)
        if dropped:
            ctx.counters["instances_below_min_pixels"] += dropped
        return Mask2D(None, names, False, desc, [(value_of[positives[i - 1]], b) for i, b in boxes])
    _check_size(ctx, width, height, name, len(labels))
    return Mask2D(rasterize(shapes, height, width, value_of), names, False, desc)


# ------------------------------------------------------------------ COCO


def _coco(ctx: ReaderContext, opts: LayoutReader, conv: PolygonOptions, inputs) -> Iterator[Event]:
    """Images named by COCO JSON files (`masks`), segmentations decoded with pycocotools."""
    entries: dict[
        str, tuple[str, dict, list, dict]
    ] = {}  # key -> (json, image entry, annotations, categories)
    order: list[tuple[str, str, dict]] = []  # (json, key, image entry), for entries no file matches
    for m in inputs.masks:
        ctx.claim(m.rel)
        data = _load_json(ctx, m.rel)
        if isinstance(data, Quarantined):
            yield data
            continue
        cats = {
            c.get("id"): str(c.get("name", c.get("id")))
            for c in data.get("categories") or []
            if isinstance(c, dict)
        }
        anns: dict = {}
        for a in data.get("annotations") or []:
            if isinstance(a, dict):
                anns.setdefault(a.get("image_id"), []).append(a)
        folder = posixpath.dirname(ctx.inner(m.rel))
        for img in data.get("images") or []:
            if not isinstance(img, dict) or not str(img.get("file_name") or "").strip():
                yield Quarantined(
                    m.rel, "read", Reason.UNREADABLE, f"{m.rel}: an images entry without file_name"
                )
                continue
            name = str(img["file_name"]).replace("\\", "/").strip()
            for key in (posixpath.normpath(posixpath.join(folder, name)), posixpath.normpath(name)):
                entries.setdefault(key, (m.rel, img, anns.get(img.get("id"), []), cats))
            entries.setdefault(
                "name:" + name.rsplit("/", 1)[-1], (m.rel, img, anns.get(img.get("id"), []), cats)
            )
            order.append((m.rel, name, img))
    used: set[int] = set()
    for f in inputs.found:
        entry = entries.get(f.fields["path"]) or entries.get("name:" + f.fields["file"])
        unit = decide(ctx, opts, inputs, f)
        if unit is None:
            if entry is not None:
                used.add(id(entry[1]))
            continue
        ctx.claim(f.rel)
        ctx.saw_image(f.rel)
        if isinstance(unit, Quarantined):
            yield unit
            continue
        if entry is None:
            yield unreferenced_file(ctx, f.rel)
            continue
        used.add(id(entry[1]))
        yield _coco_image(ctx, opts, conv, unit, entry)
    for json_rel, name, img in order:
        if id(img) not in used:
            used.add(id(img))
            yield Quarantined(
                json_rel,
                "read",
                Reason.MISSING_FILE,
                f"{json_rel}: image '{name}' is named but not in the dataset folder",
            )


def _load_json(ctx: ReaderContext, rel: str) -> dict | Quarantined:
    try:
        data = json.loads(ctx.read(rel))
    except ImageError as err:
        return Quarantined(rel, "read", err.reason, err.detail)
    except (ValueError, RecursionError) as exc:
        return Quarantined(rel, "read", Reason.UNREADABLE, f"{rel}: not valid JSON ({type(exc).__name__})")
    if not isinstance(data, dict):
        return Quarantined(
            rel, "read", Reason.UNREADABLE, f"{rel}: not a COCO object (images, annotations, categories)"
        )
    return data


def _coco_image(ctx: ReaderContext, opts: LayoutReader, conv: PolygonOptions, unit: Decided, entry) -> Event:
    json_rel, img, anns, cats = entry
    label = resolve(opts.label, unit.values) if opts.label is not None else None

    def make(size: tuple[int, int], name: str) -> Mask2D:
        width, height = size
        try:
            declared = (int(img.get("width") or width), int(img.get("height") or height))
        except (TypeError, ValueError):
            raise ImageError(
                Reason.UNREADABLE, f"{json_rel}: image {img.get('id')}: width/height are not numbers"
            ) from None
        if declared != (width, height):
            raise ImageError(
                Reason.SHAPE_MISMATCH,
                f"{name}: the image is {width}x{height}, {json_rel} says {declared[0]}x{declared[1]}",
            )
        labels = [label or cats.get(a.get("category_id"), str(a.get("category_id"))) for a in anns]
        values = {lab: i + 1 for i, lab in enumerate(sorted(set(labels)))}
        names = {v: lab for lab, v in values.items()}
        if not anns:
            raise ImageError(Reason.EMPTY_MASK, f"{name}: {json_rel} has no annotation for it")
        _check_size(ctx, width, height, name, len(anns) if conv.instances else len(values))
        out = np.zeros((height, width), np.uint32 if conv.instances else np.uint16)
        for i, (a, lab) in enumerate(zip(anns, labels, strict=True), start=1):
            where = f"{json_rel} annotation {a.get('id', i)}"
            mask = coco_mask(a.get("segmentation"), height, width, where)
            out[mask] = i if conv.instances else values[lab]
        desc = f"{json_rel} ({len(anns)} annotations)"
        if conv.instances:
            boxes, dropped = instance_boxes(out, len(anns), conv.min_pixels)
            if dropped:
                ctx.counters["instances_below_min_pixels"] += dropped
            return Mask2D(None, names, False, desc, [(values[labels[i - 1]], b) for i, b in boxes])
        return Mask2D(out.astype(np.uint8) if len(values) < 256 else out, names, False, desc)

    return seg_image_with(ctx, opts, unit.found.rel, unit.split, unit.modality, make)
