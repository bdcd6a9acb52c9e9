"""`convert: {kind: imgannot}`: DIARETDB1's imgannotool XML markings -> detection rows (2d_det).

What one input is: one marking of an annotation file (each expert's file is one of the `masks`
files paired with the image by their shared fields), as a detection table's row is; an annotation
file with no marking is one input (`no_finding`); an image whose annotation files are all missing
is one (`missing_file`). Markings below `convert.min_confidence` are `low_confidence`, a marking
without an area `not_an_area`, a box wholly outside the image `box_outside_image`. The kept
markings of an image are its rows (one box each, label = markingtype through the catalog's labels);
the image is read and stored once.
"""

from __future__ import annotations

from collections.abc import Iterator

from gmai_pipeline.converters import imgannot as conv_ia
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.layouts import LayoutReader
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Event, Quarantined, ReaderContext
from gmai_pipeline.readers.converted import decided_images, gather
from gmai_pipeline.readers.layout import _per_box
from gmai_pipeline.readers.masks import Mask2D, seg_image_with

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read(ctx: ReaderContext, opts: LayoutReader) -> Iterator[Event]:
    conv: conv_ia.ImgannotOptions = opts.convert  # type: ignore[assignment]
    inputs = gather(ctx, opts, IMAGE_EXTENSIONS, (".xml",))
    yield from inputs.events
    expected = " or ".join(opts.masks.path)  # type: ignore[union-attr]
    for unit in decided_images(ctx, opts, inputs):
        if isinstance(unit, Quarantined):
            yield unit
            continue
        f = unit.found
        files = inputs.masks_of(f)
        if not files:
            yield Quarantined(
                f.rel, "read", Reason.MISSING_FILE, f"{f.rel}: annotation file {expected} not found"
            )
            continue
        kept: list[tuple[str, conv_ia.Marking]] = []
        for a in files:
            ctx.claim(a.rel)
            try:
                markings = conv_ia.parse(ctx.read(a.rel), a.rel)
            except ImageError as err:
                yield Quarantined(a.rel, "read", err.reason, err.detail)
                continue
            if not markings:
                yield Quarantined(a.rel, "annotate", Reason.NO_FINDING, f"{a.rel}: the expert marked nothing")
            for m in markings:
                bad = _rejected(a.rel, m, conv)
                if bad is not None:
                    yield bad
                else:
                    kept.append((a.rel, m))
        if not kept:
            continue
        outside: list[Quarantined] = []
        yield from _per_box(
            ctx,
            seg_image_with(
                ctx,
                opts,
                f.rel,
                unit.split,
                unit.modality,
                lambda size, name, kept=kept, outside=outside: _mask(kept, size, name, outside),
            ),
        )
        yield from outside


def _rejected(rel: str, m: conv_ia.Marking, conv) -> Quarantined | None:
    if m.box is None:
        return Quarantined(rel, "annotate", Reason.NOT_AN_AREA, m.why)
    if m.box[2] <= m.box[0] or m.box[3] <= m.box[1]:
        return Quarantined(
            rel, "annotate", Reason.NOT_AN_AREA, f"{rel}: marking {m.index} ({m.kind}) has no area"
        )
    ok = conv_ia.confident(m, conv)
    if ok is None:
        return Quarantined(
            rel, "annotate", Reason.LOW_CONFIDENCE, f"{rel}: marking {m.index} has no known confidence level"
        )
    if not ok:
        return Quarantined(
            rel,
            "annotate",
            Reason.LOW_CONFIDENCE,
            f"{rel}: marking {m.index} ({m.kind}) is '{m.confidence}', below min_confidence {conv.min_confidence}",
        )
    return None


def _mask(kept, size: tuple[int, int], name: str, outside: list) -> Mask2D:
    """The kept markings as boxes of class names (markingtype); those wholly outside the image apart."""
    names = {i: m.kind for i, (_, m) in enumerate(kept, start=1)}
    boxes = []
    for i, (rel, m) in enumerate(kept, start=1):
        box = conv_ia.clip(m.box, *size)  # type: ignore[arg-type]
        if box is None:
            outside.append(
                Quarantined(
                    rel, "annotate", Reason.BOX_OUTSIDE_IMAGE, f"{rel}: marking {m.index} lies outside {name}"
                )
            )
        else:
            boxes.append((i, box))
    desc = kept[0][0] if len({r for r, _ in kept}) == 1 else f"{len({r for r, _ in kept})} annotation files"
    return Mask2D(None, names, False, desc, boxes)
