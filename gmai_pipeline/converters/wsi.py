"""`wsi`: whole-slide images (SVS, NDPI, MRXS, SCN, pyramidal TIFF) -> 2D tiles at a declared
magnification, with their masks and boxes from the slide's polygons (`polygons`).

What an input is: one slide, with its annotation shapes if it has any (or its raster mask slide,
`iter_mask_tiles`, as PANDA ships labels). Kept, it yields one tile per
region tile (a tile that holds annotated pixels) plus at most `background_tiles` tissue tiles away
from every annotation; each tile is a normal 2D image with its own mask and boxes, named by
`Tile.position` (`{slide}@L{level}_x{X}_y{Y}`, level-0 coordinates of the tile's top-left corner and
the pyramid level it was read from) so its `sample_id` says where on which slide it lies. A slide that
cannot be opened, has no magnification, or whose magnification is below the one declared raises
`ImageError`; a slide whose reads fail part-way raises too (OpenSlide errors are sticky: the slide
handle is unusable afterwards), so a slide is kept whole or quarantined whole. More region tiles than
`max_tiles_per_slide` are thinned evenly, and the count of tiles left out is returned (`TilePlan`).

Why it is built this way:
- Magnification is declared, not assumed: `magnification` (objective power, e.g. 20) or `mpp`
  (microns per pixel, e.g. 0.5); the slide's own `openslide.objective-power` / `openslide.mpp-x`
  give the factor from level 0 (`base_magnification` stands in for slides that record neither). The
  pyramid level read is the coarsest one still at least as fine as the target (snapped to a level when
  within `tolerance`),
  and the rest of the factor is a Pillow resize of that one region. So a read is at most the tile size
  times the step between two levels (2x or 4x per side on common scanners); memory is bounded by the
  tile size, never by the slide.
- Tiles sit on a grid over level 0 (`placement: grid`), so neighbouring annotations share tiles and
  no pixel is emitted twice; `placement: centered` puts one tile on the centre of each small shape
  (nucleus sets, small lesions), tiling larger shapes on a grid of their own.
- Masks are rasterised per tile (`polygons.rasterize` with the tile's origin and scale), never for the
  whole slide; boxes come from the same code as every other mask (`volumes.mask_boxes`, or one box per
  shape with `instances`).
- Background tiles are drawn from the grid cells that touch no annotation, in an order seeded by the
  slide's name (the same tiles every run), and kept only where tissue covers `min_tissue_fraction` of
  the tile (a pixel is tissue when its colour is saturated and not near-white: glass, pen-free
  background and blank padding are not); at most `max(20, 10 x background_tiles)` candidates are read.
- Areas outside the scanned region (OpenSlide returns them transparent) are composited onto white,
  as a microscope's empty glass looks.

- `backend: plain` serves a large plain image (JPEG, PNG, non-pyramidal TIFF) through the same
  tiler (`readers.plain_slide`); `rle` takes the mask from a run-length table column, read per window
  (`readers.rle_window`). Mask slides can remap values (`mask_values`), overlap (`stride`) and label
  a classification tile by its central third (`label_from: center`), as Arvaniti et al. cut patches.

Catalog declaration (`reader.convert` of a `kind: layout` entry; the reader is
`gmai_pipeline.readers.wsi`). CAMELYON16:

    reader:
      kind: layout
      images: "training/{group}/{slide}.tif"
      masks: "lesion_annotations/{slide}.xml"
      convert: {kind: wsi, magnification: 10, tile_size: 512, background_tiles: 8, background_label: normal,
                annotations: {format: asap_xml}, unannotated: {group: normal}}
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from gmai_pipeline.converters._masks import Box, Options, instance_boxes
from gmai_pipeline.converters.polygons import PolygonOptions, Shape, positive_labels, rasterize
from gmai_pipeline.converters.rle import RleOptions
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason

TISSUE_CHROMA = 20  # max - min over RGB, 0..255: stained tissue is coloured, glass is grey
TISSUE_BRIGHTNESS = 230  # mean RGB above this is background glass


class WsiOptions(Options):
    kind: Literal["wsi"] = "wsi"
    magnification: float | None = Field(None, gt=0)  # objective power wanted (20 = "20x")
    mpp: float | None = Field(None, gt=0)  # or microns per pixel wanted
    base_magnification: float | None = Field(None, gt=0)  # for slides that record neither
    tolerance: float = Field(0.05, ge=0, lt=0.5)  # relative: a 40.1x slide serves 40x
    tile_size: int = Field(512, ge=32, le=4096)
    placement: Literal["grid", "centered"] = "grid"
    annotations: PolygonOptions | None = None  # the slide's annotation files (format, instances)
    min_region_pixels: int = Field(16, ge=1)  # a tile needs this many annotated pixels to count
    max_tiles_per_slide: int = Field(2000, ge=1)
    background_tiles: int = Field(0, ge=0)
    min_tissue_fraction: float = Field(0.5, gt=0, le=1)
    # plain: a non-pyramidal JPEG/PNG/TIFF read window by window (`readers.plain_slide`)
    backend: Literal["openslide", "plain"] = "openslide"
    # mask slides: raw mask value -> label value (0 = no label); unlisted values keep theirs
    mask_values: dict[int, int] = Field(default_factory=dict)
    stride: int | None = Field(None, ge=16)  # mask slides: output pixels between tile origins (overlap)
    # mask slides in 2d_cls: `center` labels a tile by the one label value of its central third (a
    # tile whose central third holds two, or none, is not cut), as Arvaniti et al.'s create_patches.py
    label_from: Literal["tile", "center"] = "tile"
    max_mean_brightness: float | None = Field(None, gt=0, le=255)  # mask slides: brighter tiles are glass
    # the mask is run-length encoded in the joined table's `rle.column` (HuBMAP's train.csv encoding),
    # read window by window as a mask slide of label value `rle_value` (`readers.rle_window`)
    rle: RleOptions | None = None
    rle_value: int = Field(1, ge=1, le=255)

    @property
    def instances(self) -> bool:
        """One box per shape (nuclei), not per connected component."""
        return self.annotations is not None and self.annotations.instances

    @model_validator(mode="after")
    def _one_scale(self) -> WsiOptions:
        if (self.magnification is None) == (self.mpp is None):
            raise ValueError(
                "declare exactly one of magnification (objective power) or mpp (microns per pixel)"
            )
        if self.backend == "plain" and (self.magnification is None or self.base_magnification is None):
            raise ValueError(
                "backend plain: plain images record no scale; declare magnification and base_magnification"
            )
        return self


@dataclass(frozen=True)
class SlideInfo:
    width: int
    height: int
    downsamples: tuple[float, ...]
    objective_power: float | None
    mpp: float | None


@dataclass(frozen=True)
class TileSpec:
    x: int  # level-0 top-left
    y: int
    level: int  # pyramid level read
    factor: float  # level-0 pixels per output pixel
    size: int  # output pixels per side
    kind: Literal["region", "background"] = "region"

    @property
    def footprint(self) -> float:
        return self.size * self.factor

    def position(self, slide: str) -> str:
        return f"{slide}@L{self.level}_x{self.x}_y{self.y}"


@dataclass
class TilePlan:
    tiles: list[TileSpec]
    thinned: int = 0  # region tiles left out by max_tiles_per_slide


@dataclass
class Tile:
    spec: TileSpec
    position: str
    image: np.ndarray  # (size, size, 3) uint8
    mask: np.ndarray  # label map (values) or instance map (instances)
    boxes: list[tuple[str | int, Box]] = field(default_factory=list)  # (label or value, box)


def slide_name(rel: str) -> str:
    """`training/tumor/tumor_001.tif` -> `training/tumor/tumor_001` (the position string's prefix)."""
    return str(PurePosixPath(rel).with_suffix(""))


def _float(props: Mapping[str, str], key: str) -> float | None:
    try:
        v = float(props.get(key, ""))
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def open_slide(path: Path, name: str, backend: str = "openslide", mask: bool = False):
    """An OpenSlide handle (or a `PlainSlide`); ImageError (`unreadable`, `missing_file`) naming the file otherwise."""
    if backend == "plain":
        from gmai_pipeline.readers.plain_slide import PlainSlide

        return PlainSlide(path, name, mask=mask)
    import openslide

    if not Path(path).is_file():
        raise ImageError(Reason.MISSING_FILE, f"{name}: slide file not found")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise ImageError(Reason.UNREADABLE, f"{name}: not a slide format OpenSlide recognises") from None
    except openslide.OpenSlideError as exc:
        raise ImageError(
            Reason.UNREADABLE, f"{name}: OpenSlide cannot open it ({type(exc).__name__})"
        ) from None


def slide_info(slide) -> SlideInfo:
    props = slide.properties
    if not props:  # a plain image: no scale recorded
        w, h = slide.dimensions
        return SlideInfo(int(w), int(h), tuple(float(d) for d in slide.level_downsamples), None, None)
    import openslide

    w, h = slide.dimensions
    return SlideInfo(
        int(w),
        int(h),
        tuple(float(d) for d in slide.level_downsamples),
        _float(props, openslide.PROPERTY_NAME_OBJECTIVE_POWER),
        _float(props, openslide.PROPERTY_NAME_MPP_X),
    )


def scale(info: SlideInfo, opts: WsiOptions, name: str) -> tuple[float, int]:
    """(level-0 pixels per output pixel, pyramid level to read) for the declared magnification."""
    if opts.magnification is not None:
        base = info.objective_power or opts.base_magnification
        if base is None and info.mpp is not None:
            base = 10.0 / info.mpp  # the usual convention: 0.25 um/px ~ 40x, 0.5 ~ 20x
        if base is None:
            raise ImageError(
                Reason.NO_MAGNIFICATION,
                f"{name}: the slide records no objective power or mpp; declare base_magnification",
            )
        factor = base / opts.magnification
        wanted = f"{opts.magnification:g}x"
    else:
        if info.mpp is None:
            raise ImageError(
                Reason.NO_MAGNIFICATION, f"{name}: the slide records no microns per pixel (openslide.mpp-x)"
            )
        factor = opts.mpp / info.mpp  # type: ignore[operator]
        wanted = f"{opts.mpp:g} um/px"
    if factor < 1 - opts.tolerance:
        raise ImageError(
            Reason.MAGNIFICATION_UNAVAILABLE, f"{name}: {wanted} is finer than the slide's level 0"
        )
    for d in info.downsamples:  # a 40.1x slide read at 20x: use level 1 as it is, no resize
        if abs(factor / d - 1) <= opts.tolerance:
            factor = d
            break
    level = max(i for i, d in enumerate(info.downsamples) if d <= factor * (1 + 1e-6) or i == 0)
    return factor, level


def _cells(
    bounds: tuple[float, float, float, float], step: float, info: SlideInfo
) -> Iterator[tuple[int, int]]:
    x0, y0, x1, y1 = bounds
    nx, ny = max(1, math.ceil(info.width / step)), max(1, math.ceil(info.height / step))
    for j in range(max(0, math.floor(y0 / step)), min(ny, math.floor(y1 / step) + 1)):
        for i in range(max(0, math.floor(x0 / step)), min(nx, math.floor(x1 / step) + 1)):
            yield i, j


def _clamp(v: float, span: float, limit: int) -> int:
    return int(max(0, min(round(v), max(0, limit - math.ceil(span)))))


def plan(info: SlideInfo, shapes: Sequence[Shape], opts: WsiOptions, factor: float, level: int) -> TilePlan:
    """Region tiles for the positive shapes (grid or centered), thinned evenly to max_tiles_per_slide."""
    span = opts.tile_size * factor
    seen: set[tuple[int, int]] = set()
    tiles: list[TileSpec] = []

    def add(x: float, y: float) -> None:
        key = (_clamp(x, span, info.width), _clamp(y, span, info.height))
        if key not in seen:
            seen.add(key)
            tiles.append(TileSpec(key[0], key[1], level, factor, opts.tile_size))

    for shape in (s for s in shapes if not s.negative):
        b = shape.bounds()
        if opts.placement == "centered" and b[2] - b[0] <= span and b[3] - b[1] <= span:
            add((b[0] + b[2]) / 2 - span / 2, (b[1] + b[3]) / 2 - span / 2)
            continue
        if opts.placement == "centered":  # a large shape: a grid of its own, anchored at its corner
            for j in range(math.ceil((b[3] - b[1]) / span) or 1):
                for i in range(math.ceil((b[2] - b[0]) / span) or 1):
                    add(b[0] + i * span, b[1] + j * span)
            continue
        for i, j in _cells(b, span, info):
            add(i * span, j * span)
    tiles.sort(key=lambda t: (t.y, t.x))
    thinned = 0
    if len(tiles) > opts.max_tiles_per_slide:
        keep = np.linspace(0, len(tiles) - 1, opts.max_tiles_per_slide).round().astype(int)
        thinned = len(tiles) - len(set(keep.tolist()))
        tiles = [tiles[i] for i in sorted(set(keep.tolist()))]
    return TilePlan(tiles, thinned)


def read_tile(slide, spec: TileSpec, info: SlideInfo, name: str) -> np.ndarray:
    """The tile's RGB pixels at the declared scale: one read at `spec.level`, then one resize."""
    from PIL import Image

    ds = info.downsamples[spec.level]
    side = max(1, math.ceil(spec.footprint / ds - 1e-6))
    try:
        region = slide.read_region((spec.x, spec.y), spec.level, (side, side))
    except Exception as exc:  # openslide.OpenSlideError, or a lower-level I/O error
        raise ImageError(
            Reason.UNREADABLE,
            f"{name}: reading the region at {spec.position(name)} failed ({type(exc).__name__})",
        ) from None
    if region.getchannel("A").getextrema()[0] == 255:  # fully scanned: nothing to composite
        rgb = region.convert("RGB")
    else:
        rgb = Image.alpha_composite(Image.new("RGBA", region.size, (255, 255, 255, 255)), region).convert(
            "RGB"
        )
    if rgb.size != (spec.size, spec.size):
        rgb = rgb.resize((spec.size, spec.size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(rgb)


def tissue_fraction(rgb: np.ndarray) -> float:
    a = rgb.astype(np.int16)
    chroma = a.max(axis=2) - a.min(axis=2)
    return float(((chroma > TISSUE_CHROMA) & (a.mean(axis=2) < TISSUE_BRIGHTNESS)).mean())


def _tile(
    spec: TileSpec, image: np.ndarray, shapes: Sequence[Shape], opts: WsiOptions, values, slide: str
) -> Tile:
    from gmai_pipeline.volumes import mask_boxes

    span = spec.footprint
    near = [
        s
        for s in shapes
        if (b := s.bounds())[2] >= spec.x
        and b[0] <= spec.x + span
        and b[3] >= spec.y
        and b[1] <= spec.y + span
    ]
    origin, k = (float(spec.x), float(spec.y)), 1.0 / spec.factor
    if opts.instances:
        labels = positive_labels(near)
        mask = rasterize(near, spec.size, spec.size, instances=True, origin=origin, scale=k)
        found, _ = instance_boxes(mask, len(labels), opts.min_region_pixels)
        boxes: list[tuple[str | int, Box]] = [(labels[i - 1], b) for i, b in found]
    else:
        mask = rasterize(near, spec.size, spec.size, values, origin=origin, scale=k)
        boxes = list(mask_boxes(mask, 0.0, opts.min_region_pixels)) if near else []
    return Tile(spec, spec.position(slide), image, mask, boxes)


def iter_tiles(
    path: Path,
    name: str,
    shapes: Sequence[Shape],
    opts: WsiOptions,
    values: Mapping[str, int] | None = None,
    plan_out: list[TilePlan] | None = None,
) -> Iterator[Tile]:
    """Region tiles (those with annotated pixels), then background tiles; one tile in memory at a time.

    `values` maps labels to mask values (semantic masks; unused with `instances`). `plan_out`, when
    given, receives the plan (tiles planned, tiles thinned) for the reader's counters.
    """
    if not opts.instances and values is None:
        raise ValueError("a label map needs the value of each label")
    if not opts.instances:
        unknown = sorted({s.label for s in shapes if not s.negative} - set(values or {}))
        if unknown:
            raise ImageError(
                Reason.UNKNOWN_LABEL, f"{name}: annotation labels {unknown} are not in the catalog's labels"
            )
    slide = open_slide(path, name, opts.backend)
    try:
        info = slide_info(slide)
        factor, level = scale(info, opts, name)
        p = plan(info, shapes, opts, factor, level)
        if plan_out is not None:
            plan_out.append(p)
        prefix = slide_name(name)
        for spec in p.tiles:
            tile = _tile(spec, read_tile(slide, spec, info, name), shapes, opts, values, prefix)
            if tile.boxes:  # the bounding boxes met the cell, the shape itself may not have
                yield tile
        if opts.background_tiles:
            bounds = [sh.bounds() for sh in shapes]
            yield from _background(slide, info, bounds, set(), opts, factor, level, prefix, name)
    finally:
        slide.close()


def _background(
    slide,
    info,
    bounds: list,
    busy: set[tuple[int, int]],
    opts: WsiOptions,
    factor: float,
    level: int,
    prefix: str,
    name: str,
):
    """Tissue tiles from grid cells outside `busy` and away from every box in `bounds`, seeded by the slide name."""
    span = opts.tile_size * factor
    nx, ny = max(1, math.ceil(info.width / span)), max(1, math.ceil(info.height / span))
    for b in bounds:
        busy.update(_cells(b, span, info))
    free = [(i, j) for j in range(ny) for i in range(nx) if (i, j) not in busy]
    seed = int(hashlib.md5(prefix.encode()).hexdigest()[:8], 16)
    random.Random(seed).shuffle(free)
    kept = 0
    for i, j in free[: max(20, 10 * opts.background_tiles)]:
        x, y = _clamp(i * span, span, info.width), _clamp(j * span, span, info.height)
        if any(b[2] >= x and b[0] <= x + span and b[3] >= y and b[1] <= y + span for b in bounds):
            continue  # an edge cell clamped onto an annotation
        spec = TileSpec(x, y, level, factor, opts.tile_size, "background")
        image = read_tile(slide, spec, info, name)
        if tissue_fraction(image) < opts.min_tissue_fraction:
            continue
        yield Tile(spec, spec.position(prefix), image, np.zeros(image.shape[:2], np.uint8))
        kept += 1
        if kept >= opts.background_tiles:
            return


MAX_PLAN_PIXELS = 16 << 20  # the mask level planned on is read whole: it must be a small one


def iter_mask_tiles(
    path: Path,
    name: str,
    mask_path: Path | None,
    mask_name: str,
    opts: WsiOptions,
    open_mask: Callable[[SlideInfo], object] | None = None,
) -> Iterator[Tile]:
    """Tiles of a slide whose labels come as a raster mask slide (PANDA's `train_label_masks/{id}_mask.tiff`:
    a pyramidal TIFF on the same grid, label values in the red channel). Region tiles are the grid cells
    where the mask's smallest level has a label; boxes carry the mask values (the catalog names them).
    Background tiles as for polygons, from cells without labels. `open_mask` builds the mask slide from
    the slide's size instead of opening `mask_path` (a run-length mask: `readers.rle_window`).
    """
    from PIL import Image

    from gmai_pipeline.volumes import mask_boxes

    slide = open_slide(path, name, opts.backend)
    mslide = None
    lut = np.arange(256, dtype=np.uint8)
    for raw, value in opts.mask_values.items():
        lut[raw] = value
    try:
        info = slide_info(slide)
        if open_mask is not None:
            mslide = open_mask(info)
        else:
            mslide = open_slide(mask_path, mask_name, opts.backend, mask=True)  # type: ignore[arg-type]
        minfo = slide_info(mslide)
        if (info.width, info.height) != (minfo.width, minfo.height):
            raise ImageError(
                Reason.MASK_MISMATCH,
                f"{mask_name}: mask slide is {minfo.width}x{minfo.height}, the slide {info.width}x{info.height}",
            )
        factor, level = scale(info, opts, name)
        low = len(minfo.downsamples) - 1
        lw, lh = mslide.level_dimensions[low]
        if lw * lh > MAX_PLAN_PIXELS:
            raise ImageError(
                Reason.UNSUPPORTED_LAYOUT, f"{mask_name}: the mask slide has no level small enough to plan on"
            )
        try:
            low_mask = lut[np.asarray(mslide.read_region((0, 0), low, (lw, lh)))[..., 0]]
        except Exception as exc:
            raise ImageError(
                Reason.UNREADABLE, f"{mask_name}: reading the mask failed ({type(exc).__name__})"
            ) from None
        span = opts.tile_size * factor
        step = (opts.stride or opts.tile_size) * factor
        ds_low = minfo.downsamples[low]
        busy: set[tuple[int, int]] = set()
        specs, origins = [], set()
        for j in range(max(1, math.ceil(info.height / step))):
            for i in range(max(1, math.ceil(info.width / step))):
                win = low_mask[
                    int(j * step / ds_low) : math.ceil((j * step + span) / ds_low),
                    int(i * step / ds_low) : math.ceil((i * step + span) / ds_low),
                ]
                if win.any():
                    x, y = _clamp(i * step, span, info.width), _clamp(j * step, span, info.height)
                    busy.update(_cells((x, y, x + span - 1e-6, y + span - 1e-6), span, info))
                    if (x, y) not in origins:
                        origins.add((x, y))
                        specs.append(TileSpec(x, y, level, factor, opts.tile_size))
        del low_mask
        specs = specs[:: max(1, math.ceil(len(specs) / opts.max_tiles_per_slide))]
        mlevel = max(i for i, d in enumerate(minfo.downsamples) if d <= factor * (1 + 1e-6) or i == 0)
        prefix = slide_name(name)
        for spec in specs:
            image = read_tile(slide, spec, info, name)
            if opts.max_mean_brightness is not None and image.mean() > opts.max_mean_brightness:
                continue  # mostly glass
            side = max(1, math.ceil(spec.footprint / minfo.downsamples[mlevel] - 1e-6))
            try:
                region = mslide.read_region((spec.x, spec.y), mlevel, (side, side)).getchannel("R")
            except Exception as exc:
                raise ImageError(
                    Reason.UNREADABLE, f"{mask_name}: reading the mask failed ({type(exc).__name__})"
                ) from None
            if region.size != (spec.size, spec.size):
                region = region.resize((spec.size, spec.size), Image.Resampling.NEAREST)
            mask = lut[np.asarray(region)]
            boxes = list(mask_boxes(mask, 0.0, opts.min_region_pixels))
            if boxes and opts.label_from == "center":
                third = spec.size // 3
                center = mask[third : spec.size - third, third : spec.size - third]
                found = np.unique(center[center > 0])
                if len(found) != 1:
                    continue  # no single class in the central third: not a patch
                center = np.full(center.shape, found[0], mask.dtype)
                yield Tile(spec, spec.position(prefix), image, center, boxes)
            elif boxes:
                yield Tile(spec, spec.position(prefix), image, mask, boxes)
        if opts.background_tiles:
            yield from _background(slide, info, [], busy, opts, factor, level, prefix, name)
    finally:
        slide.close()
        if mslide is not None:
            mslide.close()
