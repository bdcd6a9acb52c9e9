"""`coco`: COCO detection JSON with images relative to `image_dir`.

Input = each entry of `annotations`, plus each entry of `images` that has no annotation
(`no_annotation`), plus each image file under `image_dir` that no entry names (`unreferenced_file`).
An annotation whose `image_id` is not in `images` is `missing_file`; one whose `category_id` is
not in `categories` is `unknown_label`; one without a 4-number `bbox` is `missing_box`. Label
candidates, in order: the category name, then its id (so a catalog map may key on either).
A JSON that cannot be parsed is one input, quarantined `unreadable`. `image_dir` may name several
folders (searched in order); `split.lists` gives the split per image (`voc.split_inputs`).
`bbox_format: xyxy` reads corner pairs; `split_table` takes each image's split from a table (a
missing or unreadable table is one input, and every annotated image is then `split_unknown`: none
defaults to training).
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
    image_inputs,
    join,
    quarantine_all,
    unreferenced,
)
from gmai_pipeline.readers.layout import _split_lists
from gmai_pipeline.readers.tables import TableError, read_table
from gmai_pipeline.readers.voc import split_inputs


def _box(ann: dict, fmt: str = "xywh") -> tuple[float, float, float, float] | None:
    b = ann.get("bbox")
    if not isinstance(b, list | tuple) or len(b) != 4:
        return None
    try:
        x, y, c, d = (float(v) for v in b)
    except (TypeError, ValueError):
        return None
    return (x, y, c, d) if fmt == "xyxy" else (x, y, x + c, y + d)


def _key(value) -> str:
    """An image id or table cell as a join key: digits compare as numbers (`001` = `1`)."""
    text = str(value).strip()
    return str(int(text)) if text.isdigit() else text


def _split_table(ctx: ReaderContext, opts: CocoReader) -> tuple[dict[str, str] | None, list[Event]]:
    """{image key: split} from `split`; None (and the reason as one input) when the table cannot be read."""
    spec = opts.split_table
    rel = ctx.at(spec.file)  # type: ignore[union-attr]
    if rel not in ctx.files:
        return None, [Quarantined(rel, "read", Reason.MISSING_FILE, f"{rel}: split table not found")]
    ctx.claim(rel)
    try:
        table = read_table(ctx.read(rel), rel, [spec.key, spec.column], delimiter=spec.delimiter)  # type: ignore[union-attr]
    except (TableError, ImageError) as err:
        return None, [Quarantined(rel, "read", err.reason, err.detail)]
    out: dict[str, str] = {}
    for _, row in table.rows:
        value = row[spec.column]  # type: ignore[union-attr]
        if value:
            out.setdefault(_key(row[spec.key]), spec.map.get(value, value))  # type: ignore[union-attr]
    return out, []


def _image_split(ctx: ReaderContext, opts: CocoReader, splits, img: dict, rel: str | None, ref: str):
    """The image's split: from the split table when declared (None: no row and no default), else its path."""
    if opts.split_table is None:
        return ctx.split_of(rel or ref)
    if splits is None:  # the table is missing or unreadable: no image may default to training
        return None
    name = str(img.get("file_name", "")).rsplit("/", 1)[-1]
    key = {"id": img.get("id"), "file_name": name, "stem": name.rsplit(".", 1)[0]}[opts.split_table.match]
    value = splits.get(_key(key), opts.split_table.default)
    return ctx.split_of(rel or ref, value) if value is not None else None


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
            box = _box(ann, opts.bbox_format)
            error = None if box is not None else (Reason.MISSING_BOX, f"{where}: no 4-number bbox")
            a = Annotation(
                (str(cat.get("name", "")), str(cat["id"])), box or (0, 0, 0, 0), where=where, error=error
            )
        by_image[image_id].append(a)
    del annotations
    splits, events = _split_table(ctx, opts) if opts.split_table is not None else (None, [])
    yield from events
    for image_id, img in images.items():
        ref = str(img.get("file_name", ""))
        rel = _image_rel(ctx, dirs, ref)
        anns = by_image.pop(image_id, [])
        if opts.split_table is None:
            yield from split_inputs(ctx, opts, rel, ref, ref, anns, lists)
            continue
        split = _image_split(ctx, opts, splits, img, rel, ref)
        if split is None and anns and rel in ctx.files:
            ctx.claim(rel)
            ctx.saw_image(rel)
            detail = (
                f"{rel}: no split from {opts.split_table.file} (no row names it, or the table is unreadable) "
                "and no split_table.default"
            )
            yield from quarantine_all(anns, rel, "read", Reason.SPLIT_UNKNOWN, detail)
            continue
        yield from image_inputs(ctx, rel, ref, split or ctx.source.splits[0], anns)
    yield from _unreferenced(ctx, dirs)
