"""`polygons`: vector annotations (Aperio/ASAP XML, GeoJSON, COCO) -> label masks in image coordinates.

What an input is: one image (or slide) with its annotation file. Each area shape (a polygon with
its holes, a multi-polygon, a rectangle or ellipse) is one annotation of it; a shape that is not an
area (a point, a line, a ruler) or has fewer than three distinct vertices comes back in
`Parsed.skipped` with a reason (`not_an_area`, `degenerate_polygon`), so the reader can quarantine
each one as its own input and nothing disappears silently. A file that cannot be parsed raises
`ImageError("unreadable")`.

Why it is built this way:
- Coordinates are continuous image coordinates (x right, y down, level-0 pixels of a slide), pixel
  (c, r) covering [c, c+1) x [r, r+1): a pixel is inside when its centre is. So a rectangle
  (0, 0)-(10, 5) fills exactly 10 x 5 pixels and its box is [0, 0, 10, 5], as pycocotools and
  QuPath agree. Rasterised by an even-odd scanline fill (`fill_rings`) that gives exactly the pixels
  `skimage.draw.polygon` gives (checked by a test) at a cost of edge crossings instead of pixels x
  vertices: a Camelyon lesion outline has thousands of vertices and covers whole tiles. Shape by
  shape inside the shape's own bounding box, so cost follows the annotated area, not the image (a
  slide's polygons are rasterised per tile, see `wsi`). PIL's `ImageDraw.polygon` is no substitute:
  it also fills the outline's pixels (a 40 x 40 square becomes 41 x 41).
- Holes: a GeoJSON polygon's interior rings; Aperio regions with `NegativeROA="1"`; ASAP annotations
  in an exclusion group (Camelyon16's `_2`, "Exclusion"). Exclusions clear what they cover after
  every positive shape is drawn. Overlapping positive shapes: the later one in the file wins.
- Labels: the raw label of each shape (Aperio: the Annotation's `Name`, else its `Id`; ASAP: the
  `PartOfGroup`; GeoJSON: `classification.name` as QuPath writes it, else `name`; COCO: the category)
  goes through the catalog's label map; `rasterize` writes the value the caller maps each label to.
- Instances (nucleus sets such as MoNuSeg): `rasterize(..., instances=True)` gives one id per shape,
  so touching nuclei stay separate boxes (`_masks.instance_boxes`); the semantic map goes through the
  existing `volumes.mask_boxes` (one box per connected component).
- COCO `segmentation` (polygons, uncompressed and compressed RLE) is decoded with pycocotools, the
  COCO reference implementation, so masks equal the ones the dataset's own evaluation uses.

Catalog declaration (`reader.convert` of a `kind: layout` entry; the reader is
`gmai_pipeline.readers.polygons`). MoNuSeg:

    reader:
      kind: layout
      images: "MoNuSeg 2018 Training Data/Tissue Images/{id}.tif"
      masks: "MoNuSeg 2018 Training Data/Annotations/{id}.xml"
      convert: {kind: polygons, format: aperio_xml, instances: true}
"""

from __future__ import annotations

import functools
import io
import json
import math
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from gmai_pipeline.converters._masks import Options, label_dtype
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason

ELLIPSE_VERTICES = 64
SMALL_FILL = 200_000  # window pixels x vertices below which skimage's per-pixel test beats the scanline
ASAP_EXCLUSION_GROUPS = ("_2", "Exclusion", "exclusion")


class PolygonOptions(Options):
    kind: Literal["polygons"] = "polygons"
    format: Literal["aperio_xml", "asap_xml", "geojson", "coco", "vertices_json"]
    instances: bool = False  # one object per shape (nuclei) instead of one per connected component
    exclusion_groups: tuple[str, ...] = ASAP_EXCLUSION_GROUPS  # ASAP groups that cut holes
    label_from: Literal["name", "id", "attribute"] = (
        "name"  # Aperio: Annotation Name, Id, or first Attribute Name
    )
    min_pixels: int = Field(1, ge=1)  # an instance smaller than this after rasterising is dropped (counted)


Ring = np.ndarray  # (N, 2) float64, x then y


@dataclass(frozen=True)
class Shape:
    """One area annotation: polygons (exterior, holes), all of one label and one instance."""

    label: str
    parts: tuple[tuple[Ring, tuple[Ring, ...]], ...]
    where: str  # "Annotations/x.xml annotation 2 region 5", for messages
    negative: bool = False  # an exclusion: clears what it covers

    @functools.cached_property
    def _bounds(self) -> tuple[float, float, float, float]:
        lo = np.min([p[0].min(axis=0) for p in self.parts], axis=0)
        hi = np.max([p[0].max(axis=0) for p in self.parts], axis=0)
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the exteriors, source coordinates."""
        return self._bounds


@dataclass
class Parsed:
    shapes: list[Shape] = field(default_factory=list)
    skipped: list[tuple[Reason, str]] = field(default_factory=list)  # (reason, detail)

    def add(self, shape: Shape | tuple[Reason, str]) -> None:
        if isinstance(shape, Shape):
            self.shapes.append(shape)
        else:
            self.skipped.append(shape)


def _ring(points: Sequence[Sequence[float]]) -> Ring | None:
    """A closed ring without its repeated closing vertex; None when it has no area (or a coordinate
    is not finite, or so large that its sums overflow)."""
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2) if len(points) else np.zeros((0, 2))
    if arr.shape[0] > 1 and arr[0, 0] == arr[-1, 0] and arr[0, 1] == arr[-1, 1]:
        arr = arr[:-1]
    if arr.shape[0] < 3 or not math.isfinite(float(arr.sum())):
        return None
    # a positive area needs three distinct, non-collinear vertices: no separate distinctness test
    x, y = arr[:, 0], arr[:, 1]
    area = 0.5 * abs(float(x[:-1] @ y[1:] - y[:-1] @ x[1:] + x[-1] * y[0] - y[-1] * x[0]))  # shoelace
    return arr if math.isfinite(area) and area > 0 else None


def _ellipse(x0: float, y0: float, x1: float, y1: float) -> Ring:
    t = np.linspace(0, 2 * math.pi, ELLIPSE_VERTICES, endpoint=False)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _rectangle(pts: Ring) -> Ring:
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _simple(
    label: str, points, where: str, kind: str = "polygon", negative: bool = False
) -> Shape | tuple[str, str]:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if kind in ("rectangle", "ellipse") and len(pts) >= 2:
        box = _rectangle(pts)
        pts = _ellipse(*box[0], *box[2]) if kind == "ellipse" else box
    ring = _ring(pts)
    if ring is None:
        return (Reason.DEGENERATE_POLYGON, f"{where}: fewer than three distinct vertices or zero area")
    return Shape(label, ((ring, ()),), where, negative)


def _data(source: Path | bytes) -> Path | io.BytesIO:
    """A path, or bytes the reader already verified (`ReaderContext.read`) as a file object."""
    return io.BytesIO(source) if isinstance(source, bytes | bytearray) else source


def _parse_xml(source: Path | bytes, name: str, fmt: str) -> ET.Element:
    """Parse with the standard library (expat: no external entities; entity expansion limits apply)."""
    try:
        root = ET.parse(_data(source)).getroot()
    except ET.ParseError as exc:
        raise ImageError(Reason.UNREADABLE, f"{name}: not well-formed XML ({exc})") from None
    except OSError as exc:
        raise ImageError(Reason.MISSING_FILE, f"{name}: cannot read ({exc.strerror})") from None
    expected = {"aperio_xml": "Annotations", "asap_xml": "ASAP_Annotations"}[fmt]
    if root.tag != expected:
        raise ImageError(
            Reason.UNREADABLE, f"{name}: root element <{root.tag}>, expected <{expected}> ({fmt})"
        )
    return root


def _xy(el: ET.Element, where: str) -> tuple[float, float]:
    try:
        return float(el.get("X", "")), float(el.get("Y", ""))
    except ValueError:
        raise ImageError(Reason.UNREADABLE, f"{where}: a vertex without numeric X/Y") from None


# Aperio ImageScope Region Type codes of the drawing tools: 0 free-hand/polygon (MoNuSeg's nuclei), 1
# rectangle, 2 ellipse; the others (arrow, ruler, ...) enclose no area and are reported `not_an_area`.
APERIO_TYPES = {"0": "polygon", "1": "rectangle", "2": "ellipse"}


def read_aperio_xml(
    path: Path | bytes, name: str, label_from: Literal["name", "id", "attribute"] = "name"
) -> Parsed:
    """ImageScope XML: `Annotations/Annotation/Regions/Region/Vertices/Vertex X= Y=` (MoNuSeg, TCGA).

    `label_from: attribute` takes the Annotation's first `Attributes/Attribute` Name, where MoNuSAC
    writes the cell type (one Annotation layer per type); an empty choice falls back to the Id.
    """
    root = _parse_xml(path, name, "aperio_xml")
    out = Parsed()
    for a_i, ann in enumerate(root.iter("Annotation"), start=1):
        if label_from == "attribute":
            attr = ann.find("Attributes/Attribute")
            label = (attr.get("Name") or "").strip() if attr is not None else ""
        else:
            label = (ann.get("Name") or "").strip() if label_from == "name" else ""
        label = label or (ann.get("Id") or str(a_i))
        regions = ann.find("Regions")
        for r_i, region in enumerate(regions.iter("Region") if regions is not None else (), start=1):
            where = f"{name} annotation {a_i} region {region.get('Id') or r_i}"
            kind = APERIO_TYPES.get(region.get("Type", "0") or "0")
            if kind is None:
                out.add(
                    (
                        Reason.NOT_AN_AREA,
                        f"{where}: region type {region.get('Type')} (a line, arrow or ruler)",
                    )
                )
                continue
            try:  # one comprehension per region: a Camelyon outline has thousands of vertices
                pts = [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
            except (TypeError, ValueError):
                raise ImageError(Reason.UNREADABLE, f"{where}: a vertex without numeric X/Y") from None
            negative = (region.get("NegativeROA") or "0").strip() == "1"
            out.add(_simple(label, pts, where, kind, negative))
    return out


# ASAP annotation types: Polygon, Rectangle, Spline (its control points, taken as a polygon), Dot and
# PointSet (no area).
ASAP_TYPES = {"polygon": "polygon", "spline": "polygon", "rectangle": "rectangle", "ellipse": "ellipse"}


def read_asap_xml(
    path: Path | bytes, name: str, exclusion_groups: Sequence[str] = ASAP_EXCLUSION_GROUPS
) -> Parsed:
    """ASAP XML: `ASAP_Annotations/Annotations/Annotation/Coordinates/Coordinate` (Camelyon16/17)."""
    root = _parse_xml(path, name, "asap_xml")
    out = Parsed()
    anns = root.find("Annotations")
    for a_i, ann in enumerate(anns.iter("Annotation") if anns is not None else (), start=1):
        where = f"{name} annotation {a_i} ({ann.get('Name') or 'unnamed'})"
        group = (ann.get("PartOfGroup") or "").strip()
        kind = ASAP_TYPES.get((ann.get("Type") or "Polygon").strip().lower())
        if kind is None:
            out.add((Reason.NOT_AN_AREA, f"{where}: type {ann.get('Type')} has no area"))
            continue
        try:
            coords = sorted(ann.iter("Coordinate"), key=lambda c: int(c.get("Order", "0") or 0))
        except ValueError:
            raise ImageError(
                Reason.UNREADABLE, f"{where}: a Coordinate Order that is not an integer"
            ) from None
        pts = [_xy(c, where) for c in coords]
        out.add(_simple(group or "None", pts, where, kind, group in exclusion_groups))
    return out


def _qupath_label(props: Mapping) -> str:
    cls = props.get("classification")
    if isinstance(cls, Mapping) and cls.get("name"):
        return str(cls["name"])
    if isinstance(cls, str) and cls:
        return cls
    for key in ("name", "label", "class"):
        if props.get(key):
            return str(props[key])
    return ""


def read_geojson(path: Path | bytes, name: str) -> Parsed:
    """GeoJSON as QuPath exports it: a FeatureCollection, a list of Features, or one Feature;
    Polygon / MultiPolygon geometries (GeometryCollections are opened), pixel coordinates."""
    try:
        data = json.loads(path if isinstance(path, bytes | bytearray) else Path(path).read_bytes())
    except OSError as exc:
        raise ImageError(Reason.MISSING_FILE, f"{name}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise ImageError(Reason.UNREADABLE, f"{name}: not valid JSON ({exc})") from None
    if isinstance(data, Mapping) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
    elif isinstance(data, list):
        features = data
    elif isinstance(data, Mapping) and data.get("type") == "Feature":
        features = [data]
    else:
        raise ImageError(
            Reason.UNREADABLE, f"{name}: not a GeoJSON FeatureCollection, Feature or list of Features"
        )
    out = Parsed()
    for f_i, feat in enumerate(features, start=1):
        where = f"{name} feature {f_i}"
        if not isinstance(feat, Mapping) or not isinstance(feat.get("geometry"), Mapping):
            out.add((Reason.NOT_AN_AREA, f"{where}: no geometry"))
            continue
        label = _qupath_label(feat.get("properties") or {})
        try:
            parts = list(_geometry_parts(feat["geometry"]))
        except (TypeError, ValueError):
            raise ImageError(
                Reason.UNREADABLE, f"{where}: coordinates are not numeric position arrays"
            ) from None
        if parts is None or not parts:
            gtype = feat["geometry"].get("type")
            out.add((Reason.NOT_AN_AREA, f"{where}: {gtype} geometry has no area"))
            continue
        polys = []
        for rings in parts:
            exterior = _ring(rings[0]) if rings else None
            if exterior is None:
                continue
            holes = tuple(h for h in (_ring(r) for r in rings[1:]) if h is not None)
            polys.append((exterior, holes))
        if not polys:
            out.add((Reason.DEGENERATE_POLYGON, f"{where}: fewer than three distinct vertices or zero area"))
            continue
        out.add(Shape(label, tuple(polys), where))
    return out


def _geometry_parts(geom: Mapping):
    gtype = geom.get("type")
    if gtype == "Polygon":
        yield [[[float(v) for v in p[:2]] for p in ring] for ring in geom.get("coordinates") or []]
    elif gtype == "MultiPolygon":
        for poly in geom.get("coordinates") or []:
            yield [[[float(v) for v in p[:2]] for p in ring] for ring in poly]
    elif gtype == "GeometryCollection":
        for g in geom.get("geometries") or []:
            yield from _geometry_parts(g)


def coco_mask(segmentation, height: int, width: int, where: str) -> np.ndarray:
    """A COCO `segmentation` (polygon list, uncompressed or compressed RLE) -> bool (height, width)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polys = []
        for poly in segmentation:
            if not isinstance(poly, list | tuple) or len(poly) < 6 or len(poly) % 2:
                raise ImageError(
                    Reason.DEGENERATE_POLYGON, f"{where}: a polygon needs an even list of at least 6 numbers"
                )
            try:
                vals = [float(v) for v in poly]
            except (TypeError, ValueError):
                raise ImageError(Reason.UNREADABLE, f"{where}: polygon coordinates are not numbers") from None
            if not all(math.isfinite(v) for v in vals):
                raise ImageError(Reason.UNREADABLE, f"{where}: polygon coordinates are not finite")
            polys.append(vals)
        if not polys:
            raise ImageError(Reason.DEGENERATE_POLYGON, f"{where}: empty segmentation")
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segmentation, Mapping) and "counts" in segmentation and "size" in segmentation:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ImageError(Reason.SHAPE_MISMATCH, f"{where}: RLE size {size} != image {height}x{width}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if any((not isinstance(c, int)) or c < 0 for c in counts) or sum(counts) != height * width:
                raise ImageError(
                    Reason.INVALID_RLE,
                    f"{where}: RLE counts must be non-negative and sum to {height * width}",
                )
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, str | bytes):
            # pycocotools decodes a malformed string without complaint (into garbage): check it first
            text = counts.encode() if isinstance(counts, str) else counts
            runs = compressed_counts(text)
            if runs is None or any(c < 0 for c in runs) or sum(runs) != height * width:
                raise ImageError(
                    Reason.INVALID_RLE, f"{where}: compressed RLE is malformed or does not cover the image"
                )
            rle = {"size": size, "counts": text}
        else:
            raise ImageError(Reason.INVALID_RLE, f"{where}: RLE counts are neither a list nor a string")
    else:
        raise ImageError(Reason.UNREADABLE, f"{where}: segmentation is neither polygons nor RLE")
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def compressed_counts(text: bytes) -> list[int] | None:
    """The run lengths of a COCO compressed RLE string (the LEB128-like code of pycocotools'
    `rleFrString`: 5 bits per character offset by 48, runs after the second stored as differences
    from the run two back); None when a character is outside the code or the string ends mid-number."""
    counts: list[int] = []
    p, n = 0, len(text)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None
            c = text[p] - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def read_annotations(path: Path | bytes, name: str, opts: PolygonOptions) -> Parsed:
    """Parse one annotation file in the declared format (COCO is per annotation: `coco_mask`)."""
    if opts.format == "aperio_xml":
        return read_aperio_xml(path, name, opts.label_from)
    if opts.format == "asap_xml":
        return read_asap_xml(path, name, opts.exclusion_groups)
    if opts.format == "geojson":
        return read_geojson(path, name)
    if opts.format == "vertices_json":  # BCNB's {"positive": [{"vertices": ...}]}
        from gmai_pipeline.converters.vertices_json import read_vertices_json

        return read_vertices_json(path, name)
    raise ValueError("COCO segmentations are decoded per annotation with coco_mask")


def fill_rings(
    mask: np.ndarray, rings: Sequence[Ring], origin: tuple[float, float], scale: float, x0: int, y0: int
) -> None:
    """Set the pixels of `mask` whose centres lie inside `rings` by the even-odd rule (so holes are holes).

    A scanline fill: each ring edge is crossed with the pixel-centre rows it spans (half-open in y, so a
    vertex on a row counts once), the crossings of each row are sorted and paired, and each pair fills
    the centres c with x_a <= c < x_b. Cost is the number of edge-row crossings plus the window's pixels,
    not pixels x vertices as a per-pixel point-in-polygon test (`skimage.draw.polygon`, which gives the
    same pixels: tests/test_converters_polygons.py checks it) costs on a slide's lesion outlines.
    `mask` is the window whose top-left output pixel is (x0, y0); `origin`/`scale` map source to output.
    """
    h, w = mask.shape
    parts = []
    for ring in rings:
        xy = (ring - np.asarray(origin)) * scale - (x0 + 0.5, y0 + 0.5)  # pixel centres at integers
        parts.append(np.concatenate([xy, np.concatenate([xy[1:], xy[:1]])], axis=1))
    e = np.concatenate(parts)
    e = e[e[:, 1] != e[:, 3]]  # horizontal edges cross no row
    if not len(e):
        return
    lo, hi = np.minimum(e[:, 1], e[:, 3]), np.maximum(e[:, 1], e[:, 3])
    r0 = np.maximum(np.ceil(lo), 0).astype(np.int64)
    r1 = np.minimum(np.ceil(hi) - 1, h - 1).astype(np.int64)  # rows r with lo <= r < hi
    n = np.maximum(r1 - r0 + 1, 0)
    total = int(n.sum())
    if not total:
        return
    edge = np.repeat(np.arange(len(e)), n)
    rows = r0[edge] + (np.arange(total) - np.repeat(np.cumsum(n) - n, n))
    xa, ya, xb, yb = e[edge].T
    xs = xa + (rows - ya) * (xb - xa) / (yb - ya)
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    row = rows[0::2]
    start = np.clip(np.ceil(xs[0::2]), 0, w).astype(np.int64)
    stop = np.clip(np.ceil(xs[1::2]), 0, w).astype(np.int64)
    diff = np.zeros((h, w + 1), dtype=np.int8)
    np.add.at(diff, (row, start), 1)
    np.add.at(diff, (row, stop), -1)
    mask |= np.cumsum(diff[:, :w], axis=1, dtype=np.int8) > 0


def shape_mask(
    shape: Shape, height: int, width: int, origin: tuple[float, float] = (0.0, 0.0), scale: float = 1.0
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """The shape's pixels inside its clipped bounding box: (window, bool mask), or None when outside.

    `origin` (source coordinates of the output's top-left corner) and `scale` (output pixels per source
    pixel) place the image in a tile of a slide; the identity for a whole image.
    """
    bx0, by0, bx1, by1 = shape.bounds()
    x0 = max(0, math.floor((bx0 - origin[0]) * scale))
    y0 = max(0, math.floor((by0 - origin[1]) * scale))
    x1 = min(width, math.ceil((bx1 - origin[0]) * scale) + 1)
    y1 = min(height, math.ceil((by1 - origin[1]) * scale) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    local = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    if len(shape.parts) == 1:
        exterior, holes = shape.parts[0]
        if not holes and local.size * len(exterior) <= SMALL_FILL:  # a nucleus: the per-pixel test is cheaper
            from skimage.draw import polygon as draw_polygon

            xs = (exterior[:, 0] - origin[0]) * scale - 0.5 - x0
            ys = (exterior[:, 1] - origin[1]) * scale - 0.5 - y0
            rr, cc = draw_polygon(ys, xs, shape=local.shape)
            local[rr, cc] = True
        else:
            fill_rings(local, [exterior, *holes], origin, scale, x0, y0)
        return (slice(y0, y1), slice(x0, x1)), local
    for exterior, holes in shape.parts:  # parts one by one: overlapping parts unite, never cancel
        part = np.zeros_like(local)
        fill_rings(part, [exterior, *holes], origin, scale, x0, y0)
        local |= part
    return (slice(y0, y1), slice(x0, x1)), local


def rasterize(
    shapes: Sequence[Shape],
    height: int,
    width: int,
    values: Mapping[str, int] | None = None,
    *,
    instances: bool = False,
    origin: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
) -> np.ndarray:
    """Shapes -> a label map (value per label, `values`) or, with `instances`, an instance map (1..n by
    shape order among positive shapes). Positive shapes in order (later wins), then exclusions clear."""
    positives = [s for s in shapes if not s.negative]
    if instances:
        top = len(positives)
    else:
        if values is None:
            raise ValueError("a label map needs the value of each label")
        top = max(values.values(), default=0)
    out = np.zeros((height, width), dtype=label_dtype(top))
    for i, shape in enumerate(positives, start=1):
        got = shape_mask(shape, height, width, origin, scale)
        if got is None:
            continue
        window, local = got
        value = i if instances else values[shape.label]  # type: ignore[index]
        out[window][local] = value
    for shape in shapes:
        if shape.negative:
            got = shape_mask(shape, height, width, origin, scale)
            if got is not None:
                out[got[0]][got[1]] = 0
    return out


def positive_labels(shapes: Sequence[Shape]) -> list[str]:
    """Label of each instance id (1-based ids follow positive shapes in order), for `instances=True`."""
    return [s.label for s in shapes if not s.negative]
