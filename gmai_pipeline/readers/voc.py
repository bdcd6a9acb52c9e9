"""`voc`: Pascal VOC, one XML per image in `annotations_dir`, images in `image_dir`.

Input = each `<object>` of each XML, plus each XML without objects (`no_annotation`), plus each
XML that cannot be parsed (`unreadable`, one input), plus each image in `image_dir` that no XML
names (`unreferenced_file`). The image is `<filename>` (or the XML's stem + an image extension
when `<filename>` is absent or names no file). VOC boxes are 1-based inclusive pixel corners:
`[xmin - 1, ymin - 1, xmax, ymax]` half-open; a 0 corner (0-based exporters) is taken as 0.
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
        yield from image_inputs(ctx, rel, ref, ctx.split_of(rel or xml_rel), objects)
    yield from unreferenced(ctx, image_dir)
