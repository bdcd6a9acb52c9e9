"""`coco`: COCO detection JSON with images relative to `image_dir`.

Input = each entry of `annotations`, plus each entry of `images` that has no annotation
(`no_annotation`), plus each image file under `image_dir` that no entry names (`unreferenced_file`).
An annotation whose `image_id` is not in `images` is `missing_file`; one whose `category_id` is
not in `categories` is `unknown_label`; one without a 4-number `bbox` is `missing_box`. Label
candidates, in order: the category name, then its id (so a catalog map may key on either).
A JSON that cannot be parsed is one input, quarantined `unreadable`. `image_dir` may name several
folders (searched in order); `split.lists` gives the split per image (`voc.split_inputs`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator

from gmai_pipeline.catalog import CocoReader
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import (
    Annotation,
    Event,
    Quarantined,
    ReaderContext,
    join,
    unreferenced,
)
from gmai_pipeline.readers.layout import _split_lists
from gmai_pipeline.readers.voc import split_inputs


def _box(ann: dict) -> tuple[float, float, float, float] | None:
    b = ann.get("bbox")
    if not isinstance(b, list | tuple) or len(b) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in b)
    except (TypeError, ValueError):
        return None
    return x, y, x + w, y + h


def _unreferenced(ctx: ReaderContext, dirs: list[str]) -> Iterator[Event]:
    for d in dirs:
        yield from unreferenced(ctx, d)


def _image_rel(ctx: ReaderContext, dirs: list[str], ref: str) -> str | None:
    """The image a `file_name` names: the first folder of `image_dir` that holds it (else the first's path)."""
    rels = [join(d, ref) for d in dirs]
    return next((r for r in rels if r is not None and r in ctx.files), rels[0])


def read(ctx: ReaderContext, opts: CocoReader) -> Iterator[Event]:
    ann_rel = ctx.at(opts.annotations)
    dirs = [ctx.at(d) for d in opts.image_dirs]
    lists, events = _split_lists(ctx, opts)
    yield from events
    if ann_rel not in ctx.files:
        yield Quarantined(ann_rel, "read", Reason.MISSING_FILE, f"{ann_rel}: COCO annotation file not found")
        yield from _unreferenced(ctx, dirs)
        return
    ctx.claim(ann_rel)
    try:
        data = json.loads(ctx.read(ann_rel))
        images = {img["id"]: img for img in data.get("images", [])}
        categories = {c["id"]: c for c in data.get("categories", [])}
        annotations = data.get("annotations", [])
    except ImageError as err:  # changed or swapped since the scan
        yield Quarantined(ann_rel, "read", err.reason, err.detail)
        yield from _unreferenced(ctx, dirs)
        return
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        yield Quarantined(
            ann_rel,
            "read",
            Reason.UNREADABLE,
            f"{ann_rel}: not valid COCO JSON ({type(exc).__name__}: {exc})",
        )
        yield from _unreferenced(ctx, dirs)
        return
    by_image: dict = defaultdict(list)
    for i, ann in enumerate(annotations):
        where = f"{ann_rel} annotation id {ann.get('id', f'#{i}')}"
        image_id = ann.get("image_id")
        if image_id not in images:
            yield Quarantined(
                ann_rel, "read", Reason.MISSING_FILE, f"{where}: image_id {image_id!r} is not in 'images'"
            )
            continue
        cat = categories.get(ann.get("category_id"))
        if cat is None:
            a = Annotation(
                (),
                where=where,
                error=(
                    Reason.UNKNOWN_LABEL,
                    f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'",
                ),
            )
        else:
            box = _box(ann)
            error = None if box is not None else (Reason.MISSING_BOX, f"{where}: no [x, y, w, h] bbox")
            a = Annotation(
                (str(cat.get("name", "")), str(cat["id"])), box or (0, 0, 0, 0), where=where, error=error
            )
        by_image[image_id].append(a)
    del annotations
    for image_id, img in images.items():
        ref = str(img.get("file_name", ""))
        rel = _image_rel(ctx, dirs, ref)
        yield from split_inputs(ctx, opts, rel, ref, ref, by_image.pop(image_id, []), lists)
    yield from _unreferenced(ctx, dirs)
