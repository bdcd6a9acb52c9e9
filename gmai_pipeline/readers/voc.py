"""`voc`: Pascal VOC, one XML per image in `annotations_dir`, images in `image_dir`.

Input = each `<object>` of each XML, plus each XML without objects (`no_annotation`), plus each
XML that cannot be parsed (`unreadable`, one input), plus each image in `image_dir` that no XML
names (`unreferenced_file`). The image is `<filename>` (or the XML's stem + an image extension
when `<filename>` is absent or names no file). VOC boxes are 1-based inclusive pixel corners:
`[xmin - 1, ymin - 1, xmax, ymax]` half-open; a 0 corner (0-based exporters) is taken as 0.
The split comes from `split.lists` (`ImageSets/Main/{train,val,test}.txt`: image ids) when declared,
else from the path.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

from gmai_pipeline.catalog import IMAGE_EXTENSIONS_2D, VocReader
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import (
    Annotation,
    Event,
    Quarantined,
    ReaderContext,
    image_inputs,
    join,
    unreferenced,
)
from gmai_pipeline.readers.layout import _split, _split_lists, _split_unknown, builtins


def _object(obj: ET.Element, where: str) -> Annotation:
    name = (obj.findtext("name") or "").strip()
    bb = obj.find("bndbox")
    try:
        xmin, ymin, xmax, ymax = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr, arg-type]
    except (AttributeError, TypeError, ValueError):
        return Annotation(
            (name,),
            (0, 0, 0, 0),
            where=where,
            error=(Reason.MISSING_BOX, f"{where}: object '{name}' has no valid bndbox"),
        )
    return Annotation(
        (name,), (xmin - 1 if xmin >= 1 else xmin, ymin - 1 if ymin >= 1 else ymin, xmax, ymax), where=where
    )


def read(ctx: ReaderContext, opts: VocReader) -> Iterator[Event]:
    image_dir = ctx.at(opts.image_dir)
    lists, events = _split_lists(ctx, opts)
    yield from events
    for xml_rel in ctx.under(ctx.at(opts.annotations_dir), (".xml",)):
        ctx.claim(xml_rel)
        try:
            root = ET.fromstring(ctx.read(xml_rel))
        except ImageError as err:
            yield Quarantined(xml_rel, "read", err.reason, err.detail)
            continue
        except (ET.ParseError, OSError) as exc:
            yield Quarantined(xml_rel, "read", Reason.UNREADABLE, f"{xml_rel}: not valid XML ({exc})")
            continue
        ref = (root.findtext("filename") or "").strip()
        rel = join(image_dir, ref) if ref else None
        if rel is None or rel not in ctx.files:
            stem = xml_rel.rsplit("/", 1)[-1][:-4]
            alt = ctx.find(join(image_dir, stem) or stem, IMAGE_EXTENSIONS_2D)
            rel, ref = (alt, alt) if alt else (rel, ref or stem)
        objects = [_object(o, f"{xml_rel} object {i}") for i, o in enumerate(root.findall("object"))]
        yield from split_inputs(ctx, opts, rel, ref, xml_rel, objects, lists)
    yield from unreferenced(ctx, image_dir)


def split_inputs(
    ctx: ReaderContext, opts, rel: str | None, ref: str, where: str, anns, lists
) -> Iterator[Event]:
    """`image_inputs` with the split from `opts.split` (list files; shared with `coco`), else from the path.

    A found image in none of the lists, without `split.default`, is quarantined `split_unknown` (once per
    annotation), never guessed."""
    if opts.split is None or rel is None or rel not in ctx.files:
        yield from image_inputs(ctx, rel, ref, ctx.split_of(rel or where), anns)
        return
    split = _split(ctx, opts, rel, {**builtins(ctx, rel), "case": builtins(ctx, rel)["stem"]}, lists)
    if split is None:
        ctx.claim(rel)
        ctx.saw_image(rel)
        yield from (_split_unknown(ctx, rel) for _ in anns or [None])
        return
    yield from image_inputs(ctx, rel, ref, split, anns)
