"""`imgannot`: DIARETDB1's imgannotool XML markings -> one box per marking (2d_det).

What an input is: one marking (`markinglist/marking`) of an expert's annotation file, as a detection
table's row is: kept as a box, or quarantined on its own (below the declared confidence
`low_confidence`, a region that encloses no area `not_an_area`), so inputs = kept + quarantined.

Why it is built this way:
- DIARETDB1 v2.1 (`ddb1_v02_01/groundtruth/diaretdb1_image<nnn>_0<k>.xml`, experts k = 1..4) stores
  each marking as a `markingtype` (Haemorrhages, Hard_exudates, Soft_exudates, Red_small_dots,
  Disc, IRMA, Neovascularisation), a `confidencelevel` (Low, Moderate, High) and a region in image
  pixels: `polygonregion` (`coords2d` "x,y" vertices beside a `centroid`), `circleregion` (a
  `centroid` and a `radius`, per axis when `direction` is given), and a `representativepoint`, the
  point the expert clicked (jusiro/FLAIR:local_data/prepare_partitions.py reads
  `./markinglist/marking/markingtype`; Kauppi et al., BMVC 2007, describe the confidences).
- The box is the region's extent (polygon vertices; circle centre +- radius), clipped to the image;
  a marking with only a representative point, or a region of zero width or height, encloses no area.
- Experts disagree, and confidence is their own statement of it, so the threshold is declared per
  dataset (`min_confidence`), never assumed; each expert's markings stay their own rows, as the
  layout's `annotators: {policy: all}` keeps a detection table's raters.
- Parsed with the standard library on the verified bytes; DTDs and entities are refused (the files
  have none), so a crafted file cannot expand or reach outside.

Declaration (`reader.convert` of a `kind: layout` entry; the reader is `gmai_pipeline.readers.imgannot`):

    images: "images/{image}.png"
    masks: "groundtruth/{image}_0{expert:[1-4]}.xml"
    convert: {kind: imgannot, min_confidence: moderate}
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal

from gmai_pipeline.converters._masks import Box, Options
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason

CONFIDENCE = {"low": 1, "moderate": 2, "high": 3}


class ImgannotOptions(Options):
    kind: Literal["imgannot"] = "imgannot"
    min_confidence: Literal["low", "moderate", "high"]  # markings below it are quarantined low_confidence


@dataclass
class Marking:
    index: int  # 1-based, in file order
    kind: str  # markingtype, the raw label
    confidence: str  # as written (lower-cased)
    box: Box | None  # None: no area
    why: str = ""  # for a None box


def parse(data: bytes, name: str) -> list[Marking]:
    """Every marking of an imgannot file, in order; ImageError when the file is not one."""
    if b"<!DOCTYPE" in data[:2048].upper() or b"<!ENTITY" in data.upper():
        raise ImageError(Reason.UNREADABLE, f"{name}: XML with a DTD or entities is refused")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ImageError(Reason.UNREADABLE, f"{name}: not well-formed XML ({exc})") from None
    listing = root.find("markinglist")
    if listing is None:
        raise ImageError(Reason.UNREADABLE, f"{name}: no markinglist (not an imgannotool file)")
    return [_marking(i, m, name) for i, m in enumerate(listing.findall("marking"), start=1)]


def _point(text: str | None, name: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in (text or "").split(","))
    except ValueError:
        raise ImageError(Reason.UNREADABLE, f"{name}: coords2d '{(text or '')[:40]}' is not 'x,y'") from None
    return x, y


def _marking(i: int, m: ET.Element, name: str) -> Marking:
    kind = (m.findtext("markingtype") or "").strip()
    confidence = (m.findtext("confidencelevel") or "").strip().lower()
    where = f"{name}: marking {i}"
    poly, circle = m.find("polygonregion"), m.find("circleregion")
    if poly is not None:
        pts = [_point(c.text, where) for c in poly.findall("coords2d")]
        if not pts:
            return Marking(i, kind, confidence, None, f"{where} ({kind}): a polygon without vertices")
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        box = (min(xs), min(ys), max(xs), max(ys))
    elif circle is not None:
        cx, cy = _point(circle.findtext("centroid/coords2d"), where)
        radii = {r.get("direction", ""): r.text for r in circle.findall("radius")}
        try:
            rx = float(radii.get("x") or radii.get("") or "nan")
            ry = float(radii.get("y") or radii.get("") or "nan")
        except ValueError:
            raise ImageError(Reason.UNREADABLE, f"{where}: circle radius is not a number") from None
        if not (rx == rx and ry == ry):
            raise ImageError(Reason.UNREADABLE, f"{where}: circle without a radius")
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
    else:
        return Marking(i, kind, confidence, None, f"{where} ({kind}): only a representative point, no region")
    x0, y0, x1, y1 = box
    return Marking(i, kind, confidence, (int(x0 // 1), int(y0 // 1), int(-(-x1 // 1)), int(-(-y1 // 1))))


def clip(box: Box, width: int, height: int) -> Box | None:
    """The box inside the image (half-open pixels); None when nothing of it is."""
    x0, y0, x1, y1 = max(0, box[0]), max(0, box[1]), min(width, box[2]), min(height, box[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def confident(m: Marking, opts: ImgannotOptions) -> bool | None:
    """Whether the marking reaches the declared confidence; None when its level is not one of the three."""
    level = CONFIDENCE.get(m.confidence)
    return None if level is None else level >= CONFIDENCE[opts.min_confidence]
