"""Polygons -> masks on files in the real formats: ASAP XML as Camelyon16 ships it (groups `_0`/`_2`,
the `_2` group cutting holes), Aperio ImageScope XML as MoNuSeg ships it (one Region per nucleus),
GeoJSON as QuPath exports it (FeatureCollection, `classification.name`, interior rings, MultiPolygon),
and COCO `segmentation` polygons and RLE (decoded with pycocotools)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from gmai_pipeline.converters._masks import instance_boxes
from gmai_pipeline.converters.polygons import (
    PolygonOptions,
    Shape,
    coco_mask,
    fill_rings,
    positive_labels,
    rasterize,
    read_annotations,
    read_asap_xml,
    read_geojson,
)
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.volumes import mask_boxes

SQUARE = [(10, 20), (50, 20), (50, 60), (10, 60)]  # 40 x 40 pixels
HOLE = [(20, 30), (30, 30), (30, 40), (20, 40)]  # 10 x 10 pixels


def asap_xml(path: Path) -> None:
    def ann(name: str, group: str, pts, kind: str = "Polygon") -> str:
        coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}" />' for i, (x, y) in enumerate(pts))
        return f'<Annotation Name="{name}" Type="{kind}" PartOfGroup="{group}" Color="#F4FA58"><Coordinates>{coords}</Coordinates></Annotation>'

    path.write_text(
        '<?xml version="1.0"?><ASAP_Annotations><Annotations>'
        + ann("Annotation 0", "_0", SQUARE)
        + ann("Annotation 1", "_2", HOLE)
        + ann("Annotation 2", "_1", [(70, 5), (90, 5), (90, 15), (70, 15)])
        + ann("Annotation 3", "_0", [(1, 1)], "Dot")
        + '</Annotations><AnnotationGroups><Group Name="_0" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>'
        '<Group Name="_1" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>'
        '<Group Name="_2" PartOfGroup="None" Color="#00ff00"><Attributes /></Group></AnnotationGroups></ASAP_Annotations>'
    )


def test_asap_exclusion_group_cuts_a_hole(tmp_path: Path) -> None:
    asap_xml(tmp_path / "tumor_001.xml")
    parsed = read_asap_xml(tmp_path / "tumor_001.xml", "lesion_annotations/tumor_001.xml")
    assert [s.label for s in parsed.shapes] == ["_0", "_2", "_1"]
    assert [r for r, _ in parsed.skipped] == ["not_an_area"]  # the Dot
    mask = rasterize(parsed.shapes, 80, 100, {"_0": 1, "_1": 1})
    assert int((mask == 1).sum()) == 40 * 40 - 10 * 10 + 20 * 10
    assert mask[35, 25] == 0 and mask[25, 15] == 1  # inside the hole / inside the square
    assert mask_boxes(mask, 0.0, 1) == [(1, (70, 5, 90, 15)), (1, (10, 20, 50, 60))]


def aperio_xml(path: Path) -> None:
    def region(i: int, pts, negative: int = 0, rtype: int = 0) -> str:
        verts = "".join(f'<Vertex X="{x}" Y="{y}" Z="0" />' for x, y in pts)
        return f'<Region Id="{i}" Type="{rtype}" NegativeROA="{negative}"><Attributes /><Vertices>{verts}</Vertices></Region>'

    path.write_text(
        '<Annotations MicronsPerPixel="0.252100"><Annotation Id="1" Name="" ReadOnly="0" LineColor="65280">'
        '<Attributes><Attribute Name="Description" Id="0" Value="" /></Attributes><Regions>'
        + region(1, SQUARE)
        + region(2, HOLE, negative=1)
        + region(3, [(50, 20), (60, 20), (60, 30), (50, 30)])  # touches nucleus 1: stays a separate instance
        + region(4, [(0, 0), (5, 5)], rtype=4)  # a ruler
        + region(5, [(3, 3), (3, 3), (4, 4)])  # degenerate
        + region(6, [(70, 40), (90, 60)], rtype=2)  # an ellipse by its bounding box
        + "</Regions></Annotation></Annotations>"
    )


def test_aperio_instances_touching_nuclei_and_negative_region(tmp_path: Path) -> None:
    aperio_xml(tmp_path / "TCGA-18-5592-01Z-00-DX1.xml")
    opts = PolygonOptions(format="aperio_xml", instances=True)
    parsed = read_annotations(tmp_path / "TCGA-18-5592-01Z-00-DX1.xml", "Annotations/TCGA-18.xml", opts)
    assert [r for r, _ in parsed.skipped] == ["not_an_area", "degenerate_polygon"]
    assert "region 4" in parsed.skipped[0][1] and "region 5" in parsed.skipped[1][1]
    inst = rasterize(parsed.shapes, 80, 100, instances=True)
    boxes, dropped = instance_boxes(inst, len(positive_labels(parsed.shapes)))
    assert dropped == 0
    assert boxes == [(1, (10, 20, 50, 60)), (2, (50, 20, 60, 30)), (3, (70, 40, 90, 60))]
    assert positive_labels(parsed.shapes) == ["1", "1", "1"]  # nameless annotation: its Id
    assert inst[35, 25] == 0  # NegativeROA cleared it
    by_attr = read_annotations(
        tmp_path / "TCGA-18-5592-01Z-00-DX1.xml",
        "a.xml",
        PolygonOptions(format="aperio_xml", label_from="attribute"),
    )
    assert {s.label for s in by_attr.shapes} == {"Description"}  # MoNuSAC keeps the cell type there
    # the semantic map merges the touching nuclei into one component: why instances exist
    assert len(mask_boxes((inst > 0).astype(np.uint8), 0.0, 1)) == 2


def test_geojson_qupath_hole_multipolygon_and_classes(tmp_path: Path) -> None:
    ring = [[x, y] for x, y in [*SQUARE, SQUARE[0]]]
    hole = [[x, y] for x, y in [*HOLE, HOLE[0]]]
    data = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "a1",
                "geometry": {"type": "Polygon", "coordinates": [ring, hole]},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                },
            },
            {
                "type": "Feature",
                "geometry": {
                    "type": "MultiPolygon",
                    "coordinates": [
                        [[[60, 0], [70, 0], [70, 10], [60, 10], [60, 0]]],
                        [[[80, 0], [90, 0], [90, 10], [80, 10], [80, 0]]],
                    ],
                },
                "properties": {"objectType": "annotation", "classification": {"name": "Stroma"}},
            },
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}},
        ],
    }
    (tmp_path / "slide.geojson").write_text(json.dumps(data))
    parsed = read_geojson(tmp_path / "slide.geojson", "slide.geojson")
    assert [s.label for s in parsed.shapes] == ["Tumor", "Stroma"]
    assert parsed.skipped == [("not_an_area", "slide.geojson feature 3: Point geometry has no area")]
    mask = rasterize(parsed.shapes, 64, 96, {"Tumor": 1, "Stroma": 2})
    assert int((mask == 1).sum()) == 1500 and int((mask == 2).sum()) == 200
    assert mask_boxes(mask, 0.0, 1) == [(1, (10, 20, 50, 60)), (2, (60, 0, 70, 10)), (2, (80, 0, 90, 10))]
    inst = rasterize(parsed.shapes, 64, 96, instances=True)
    assert instance_boxes(inst, 2)[0] == [
        (1, (10, 20, 50, 60)),
        (2, (60, 0, 90, 10)),
    ]  # one object, two parts
    # the same picture in a tile: origin (10, 20), half scale
    tile = rasterize(parsed.shapes, 32, 32, {"Tumor": 1, "Stroma": 2}, origin=(10, 20), scale=0.5)
    assert mask_boxes(tile, 0.0, 1)[0] == (1, (0, 0, 20, 20))


def test_coco_polygons_and_both_rle_forms_match_the_known_mask() -> None:
    known = np.zeros((30, 40), dtype=np.uint8)
    known[5:15, 10:30] = 1
    known[20:25, 0:3] = 1
    poly = [[10, 5, 30, 5, 30, 15, 10, 15], [0, 20, 3, 20, 3, 25, 0, 25]]
    np.testing.assert_array_equal(coco_mask(poly, 30, 40, "ann 1"), known.astype(bool))
    compressed = mask_utils.encode(np.asfortranarray(known))
    compressed["counts"] = compressed["counts"].decode()  # as it sits in a JSON file
    np.testing.assert_array_equal(coco_mask(compressed, 30, 40, "ann 2"), known.astype(bool))
    flat = known.flatten(order="F")  # uncompressed COCO RLE: column-major runs starting with zeros
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    assert sum(counts) == known.size
    np.testing.assert_array_equal(
        coco_mask({"size": [30, 40], "counts": counts}, 30, 40, "ann 3"), known.astype(bool)
    )
    with pytest.raises(ImageError) as e:
        coco_mask({"size": [30, 41], "counts": counts}, 30, 40, "ann 4")
    assert e.value.reason == "shape_mismatch"
    with pytest.raises(ImageError) as e:
        coco_mask({"size": [30, 40], "counts": counts[:-1]}, 30, 40, "ann 5")
    assert e.value.reason == "invalid_rle"
    for bad in ("", compressed["counts"][:-1], compressed["counts"] + "0", "garbage!"):
        with pytest.raises(ImageError) as e:  # pycocotools alone would decode these into garbage
            coco_mask({"size": [30, 40], "counts": bad}, 30, 40, "ann 6")
        assert e.value.reason == "invalid_rle"
    with pytest.raises(ImageError) as e:
        coco_mask([[1, 2, 3, 4]], 30, 40, "ann 7")
    assert e.value.reason == "degenerate_polygon"


def test_broken_files_are_unreadable_with_the_file_named(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(ImageError) as e:
        read_asap_xml(tmp_path / "a.xml", "ann/a.xml")
    assert e.value.reason == "unreadable" and e.value.detail.startswith("ann/a.xml: not well-formed XML")
    (tmp_path / "b.xml").write_text("<Annotations />")
    with pytest.raises(ImageError) as e:
        read_asap_xml(tmp_path / "b.xml", "ann/b.xml")
    assert "expected <ASAP_Annotations>" in e.value.detail
    (tmp_path / "c.geojson").write_text('{"type": "Topology"}')
    with pytest.raises(ImageError) as e:
        read_geojson(tmp_path / "c.geojson", "c.geojson")
    assert e.value.reason == "unreadable"


def test_scanline_fill_gives_the_pixels_skimage_gives() -> None:
    """`skimage.draw.polygon` (a point-in-polygon test per pixel centre) is the reference."""
    from skimage.draw import polygon as draw_polygon

    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(3, 60))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(5, 40, n)
        ring = np.stack([50 + r * np.cos(t) + rng.uniform(-3, 3), 45 + r * np.sin(t)], axis=1)
        hole = np.stack([50 + 3 * np.cos(t[:8]), 45 + 3 * np.sin(t[:8])], axis=1) if n >= 8 else None
        ref = np.zeros((90, 100), bool)
        rr, cc = draw_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape=ref.shape)
        ref[rr, cc] = True
        if hole is not None:
            rr, cc = draw_polygon(hole[:, 1] - 0.5, hole[:, 0] - 0.5, shape=ref.shape)
            ref[rr, cc] = False
        got = np.zeros((90, 100), bool)
        fill_rings(got, [ring] if hole is None else [ring, hole], (0.0, 0.0), 1.0, 0, 0)
        np.testing.assert_array_equal(got, ref)
        shape = Shape("x", ((ring, (hole,) if hole is not None else ()),), "random")
        np.testing.assert_array_equal(rasterize([shape], 90, 100, {"x": 1}).astype(bool), ref)
