"""`convert: {kind: wsi}`: whole-slide images through OpenSlide -> tiles at a declared magnification.

What one input is: in `2d_seg`, a slide (kept: one row per box of every tile); in `2d_cls`, a tile of
a slide (one row each: tiles are what a classifier sees), and a slide that gives no tile or cannot be
read as one input. A slide is tiled whole or not at all: a read that fails part-way (OpenSlide errors
are sticky) quarantines the slide and removes the tiles already stored. Each shape of an annotation
file that encloses no area is one more input (`not_an_area`). A slide whose annotation file is not
found is `no_annotation`, unless `convert.unannotated` says it has none by design (Camelyon16's
normal slides): those give background tiles only. Without `masks`, every slide is tiled as
background (slide-level labels), unless `convert.rle` names the joined table's run-length column: then
that row is the slide's mask slide (`readers.rle_window`), a slide without a row `missing_label`.
`convert.backend: plain` reads JPEG/PNG/non-pyramidal TIFF slides (`readers.plain_slide`).

A tile is a normal 2D row: `source_path` is the slide, `sample_id` ends with the tile's position
`{slide}@L{level}_x{X}_y{Y}` (the pyramid level read, the level-0 top-left corner), the stored image
is `<position>.png`. Labels: `2d_seg` boxes carry their shape's label (polygons) or mask value (mask
slides); `2d_cls` tiles carry `reader.label` when declared (the slide's: PANDA's ISUP grade), else
the label covering most of the tile's annotated pixels, and `background_label` for background tiles.

The slide file is verified like any other (`ReaderContext.open`: its MD5 streamed once, links refused)
and OpenSlide opens that same open file (`/proc/self/fd/N`, behind a link named like the slide so
format detection by suffix still works), never the path again. Formats whose data sit in other files
(`.mrxs` + its folder, `.vms`/`.vmu`) are opened by path after their index file is verified: their data
files are not checked against the manifest (as for detached `.mhd` headers).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from gmai_pipeline.converters.polygons import Shape, read_annotations
from gmai_pipeline.converters.wsi import Tile, TilePlan, iter_mask_tiles, iter_tiles
from gmai_pipeline.decode_guard import decoder_failure, is_output_failure
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.layouts import LayoutReader, WsiConvert
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Event, Kept, Quarantined, ReaderContext
from gmai_pipeline.readers.converted import Decided, decided_images, gather
from gmai_pipeline.readers.masks import value_label
from gmai_pipeline.readers.templates import all_hold
from gmai_pipeline.readers.values import resolve
from gmai_pipeline.sample import Sample

MULTI_FILE = (".mrxs", ".vms", ".vmu")  # index files whose slide data are separate files


@contextlib.contextmanager
def slide_path(ctx: ReaderContext, rel: str) -> Iterator[Path]:
    """A path OpenSlide can open that is the verified file (module docstring)."""
    with ctx.open(rel) as f:
        if rel.lower().endswith(MULTI_FILE):
            yield ctx.fs_path(rel)
            return
        proc = Path(f"/proc/self/fd/{f.fileno()}")
        with tempfile.TemporaryDirectory(prefix="gmai-wsi-") as tmp:
            link = Path(tmp) / f"slide{PurePosixPath(rel).suffix.lower()}"
            if proc.exists():
                os.symlink(proc, link)
            else:  # pragma: no cover - no procfs: the verified file by path
                link = ctx.fs_path(rel)
            yield link


def read(ctx: ReaderContext, opts: LayoutReader) -> Iterator[Event]:
    conv: WsiConvert = opts.convert  # type: ignore[assignment]
    inputs = gather(ctx, opts)
    yield from inputs.events
    expected = " or ".join(opts.masks.path) if opts.masks else ""
    for unit in decided_images(ctx, opts, inputs):
        if isinstance(unit, Quarantined):
            yield unit
            continue
        f = unit.found
        masks = inputs.masks_of(f)
        for m in masks:
            ctx.claim(m.rel)
        if (
            opts.masks is not None
            and not masks
            and (not conv.unannotated or all_hold(conv.unannotated, unit.values) is not None)
        ):
            yield Quarantined(
                f.rel,
                "annotate",
                Reason.NO_ANNOTATION,
                f"{f.rel}: no annotation file ({expected}); slides without one by design need convert.unannotated",
            )
            continue
        excluded = ctx.exclusion(f.rel, unit.split)
        if excluded is not None:
            yield Quarantined(f.rel, *excluded)
            continue
        shapes: list[Shape] = []
        mask_rel = None
        if masks and conv.annotations is not None:
            failed = None
            for m in masks:
                parsed = _parse(ctx, m.rel, conv)
                if isinstance(parsed, Quarantined):
                    failed = parsed
                    break
                for reason, detail in parsed.skipped:
                    yield Quarantined(m.rel, "annotate", reason, detail)
                shapes += parsed.shapes
            if failed is not None:
                yield Quarantined(f.rel, failed.step, failed.reason, failed.detail)
                continue
        elif masks:
            if len(masks) > 1:
                yield Quarantined(
                    f.rel, "read", Reason.MASK_MISMATCH, f"{f.rel}: {len(masks)} mask slides match {expected}"
                )
                continue
            mask_rel = masks[0].rel
        yield from _slide(ctx, opts, conv, unit, shapes, mask_rel)


def _parse(ctx: ReaderContext, rel: str, conv: WsiConvert):
    try:
        return read_annotations(ctx.read(rel), rel, conv.annotations)  # type: ignore[arg-type]
    except ImageError as err:
        return Quarantined(rel, "read", err.reason, err.detail)
    except Exception as exc:  # noqa: BLE001 - the sample boundary
        if is_output_failure(exc):
            raise
        err = decoder_failure(exc, rel, "annotation file")
        return Quarantined(rel, "read", err.reason, err.detail)


def _slide(
    ctx: ReaderContext,
    opts: LayoutReader,
    conv: WsiConvert,
    unit: Decided,
    shapes: list[Shape],
    mask_rel: str | None,
) -> list[Event]:
    """Every tile of one slide, or the slide's one quarantine row (tiles already stored are removed)."""
    rel = unit.found.rel
    stored_paths: list[Path] = []
    try:
        return _tiles(ctx, opts, conv, unit, shapes, mask_rel, stored_paths)
    except Exception as exc:  # noqa: BLE001 - the sample boundary: the slide is kept whole or not at all
        if is_output_failure(exc):
            raise
        for p in stored_paths:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        err = exc if isinstance(exc, ImageError) else decoder_failure(exc, rel, "slide")
        step = "annotate" if err.reason in (Reason.UNKNOWN_LABEL, Reason.MISSING_LABEL) else "read"
        return [Quarantined(rel, step, err.reason, err.detail)]


def _tiles(
    ctx, opts: LayoutReader, conv: WsiConvert, unit: Decided, shapes, mask_rel, stored_paths
) -> list[Event]:
    rel = unit.found.rel
    seg = ctx.source.task_type == "2d_seg"
    positives = sorted({s.label for s in shapes if not s.negative})
    values = {label: i + 1 for i, label in enumerate(positives)}
    names = {v: label for label, v in values.items()}
    slide_label = resolve(opts.label, unit.values) if opts.label is not None else None
    if seg or slide_label is None:  # every label the tiles can carry is known before a pixel is read
        unknown = [lab for lab in positives if ctx.label([lab])[0] is None]
        if unknown:
            raise ImageError(
                Reason.UNKNOWN_LABEL, f"{rel}: annotation labels {unknown} are not in the catalog's labels"
            )
    fixed = {}
    for what, raw in (("slide label", slide_label), ("background_label", conv.background_label)):
        if raw is not None:
            label, _ = ctx.label([raw])
            if label is None:
                raise ImageError(
                    Reason.UNKNOWN_LABEL, f"{rel}: {what} '{raw}' is not in the catalog's labels"
                )
            fixed[what] = label
    store = ctx.store_for(unit.modality)
    raster = mask_rel is not None or conv.rle is not None  # labels are mask values
    plans: list[TilePlan] = []
    rows: list[Sample] = []
    tiles_kept: Counter = Counter()
    with contextlib.ExitStack() as stack:
        path = stack.enter_context(slide_path(ctx, rel))
        if conv.rle is not None:
            tiles = iter_mask_tiles(path, rel, None, rel, conv, rle_mask(conv, unit.values, rel))
        elif mask_rel is not None:
            mpath = stack.enter_context(slide_path(ctx, mask_rel))
            tiles = iter_mask_tiles(path, rel, mpath, mask_rel, conv)
        else:
            tiles = iter_tiles(path, rel, shapes, conv, values, plans)
        for tile in tiles:
            stored = store.store_array(tile.image, rel, f"{tile.position}.png")
            stored_paths.append(store.output_root / stored.image)
            tiles_kept[tile.spec.kind] += 1
            if seg:
                for value, box in tile.boxes:
                    label = _box_label(ctx, value, names, raster, conv.instances)
                    if label is None:
                        raise ImageError(
                            Reason.UNKNOWN_LABEL,
                            f"{rel}: mask value {value} at {tile.position} is not in the catalog's labels",
                        )
                    rows.append(
                        ctx.row(
                            rel,
                            unit.split,
                            stored,
                            label,
                            stored.scale_box(box),
                            tile.position,
                            modality=unit.modality,
                        )
                    )
                continue
            if slide_label is not None:
                label = fixed["slide label"]
            elif tile.spec.kind == "background":
                label = fixed.get("background_label")
            else:
                label = _box_label(ctx, _majority(tile, conv.instances), names, raster, conv.instances)
            if label is None:
                raise ImageError(
                    Reason.UNKNOWN_LABEL,
                    f"{rel}: the label of tile {tile.position} is not in the catalog's labels",
                )
            rows.append(ctx.row(rel, unit.split, stored, label, None, tile.position, modality=unit.modality))
    for p in plans:
        ctx.counters["tiles_planned"] += len(p.tiles)
        ctx.counters["tiles_thinned"] += p.thinned
    ctx.counters["region_tiles"] += tiles_kept["region"]
    ctx.counters["background_tiles"] += tiles_kept["background"]
    if not rows:
        return [
            Quarantined(
                rel, "annotate", Reason.EMPTY_MASK, f"{rel}: no tile with annotated pixels or enough tissue"
            )
        ]
    ctx.counters["slides_kept"] += 1
    return [Kept(rows)] if seg else [Kept([r]) for r in rows]


def rle_mask(conv: WsiConvert, values: dict, rel: str):
    """The mask slide of a slide's run-length row (the joined table's `rle.column`), built once the
    slide's size is known."""
    from gmai_pipeline.readers.rle_window import RleMaskSlide

    rle = conv.rle
    assert rle is not None
    if rle.column not in values:
        raise ImageError(Reason.MISSING_LABEL, f"{rel}: no table row with column '{rle.column}'")

    def open_mask(info):
        return RleMaskSlide(
            str(values[rle.column] or ""),
            info.width,
            info.height,
            order=rle.order,
            start=rle.start,
            runs=rle.runs,
            value=conv.rle_value,
            where=f"{rel} ({rle.column})",
        )

    return open_mask


def _box_label(ctx, value, names: dict[int, str], mask_slide: bool, instances: bool) -> str | None:
    if mask_slide:
        return value_label(ctx, int(value))
    raw = value if instances else names.get(int(value))
    return ctx.label([raw])[0] if raw is not None else None


def _majority(tile: Tile, instances: bool):
    """The value (or, with instances, the label) covering most of a region tile's annotated pixels."""
    if instances:
        area: Counter = Counter()
        for label, (x0, y0, x1, y1) in tile.boxes:
            area[label] += (x1 - x0) * (y1 - y0)
        return area.most_common(1)[0][0]
    counts = np.bincount(tile.mask.ravel().astype(np.intp))
    counts[0] = 0
    return int(np.argmax(counts))
