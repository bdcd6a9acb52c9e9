"""Polygons and run-length masks through the catalog YAML and the normal asset path: MoNuSeg's Aperio XML
(`MoNuSeg 2018 Training Data/{Tissue Images,Annotations}`, `MoNuSegTestData/`; torch-em
`torch_em/data/datasets/histopathology/monuseg.py`), QuPath GeoJSON, COCO polygons and RLE, SIIM-ACR's
`train-rle.csv` (column-major, relative runs) and Sartorius' row-major, one-row-per-cell `train.csv`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from converter_fixtures import aperio_xml
from layout_fixtures import dicom_file, entry, photo
from normalize_fixtures import reasons, run

from gmai_pipeline.converters.rle import encode

PATHOLOGY = {"modality": "Pathology", "department": "Laboratory Medicine and Pathology"}

MONUSEG = """
reader:
  kind: layout
  images: ["MoNuSeg 2018 Training Data/Tissue Images/{id}.tif", "MoNuSegTestData/{id}.tif"]
  masks: ["MoNuSeg 2018 Training Data/Annotations/{id}.xml", "MoNuSegTestData/{id}.xml"]
  label: nucleus
  min_component_pixels: 1
  convert: {kind: polygons, format: aperio_xml, instances: true}
splits: [train]
"""


def _square(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def test_monuseg_aperio_nuclei_with_a_hole_touching_nuclei_and_a_ruler(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "monuseg"
    train = raw / "MoNuSeg 2018 Training Data"
    photo(train / "Tissue Images" / "TCGA-A7-A13E-01Z-00-DX1.tif", size=(64, 64), fmt="TIFF")
    ruler = (
        '<Region Id="9" Type="3" NegativeROA="0"><Vertices><Vertex X="1" Y="1"/>'
        '<Vertex X="30" Y="1"/></Vertices></Region>'
    )
    aperio_xml(
        train / "Annotations" / "TCGA-A7-A13E-01Z-00-DX1.xml",
        [
            (_square(10, 10, 20, 20), False),  # two nuclei that touch: two boxes
            (_square(20, 10, 30, 18), False),
            (_square(40, 30, 56, 50), False),  # a nucleus whose left half a negative region cuts away
            (_square(39, 29, 48, 51), True),
        ],
        extra=ruler,
    )
    photo(
        train / "Tissue Images" / "TCGA-21-5784-01Z-00-DX1.tif", seed=1, size=(64, 64), fmt="TIFF"
    )  # no XML
    test = raw / "MoNuSegTestData"
    photo(test / "TCGA-2Z-A9J9-01A-01-TS1.tif", seed=2, size=(64, 64), fmt="TIFF")
    aperio_xml(test / "TCGA-2Z-A9J9-01A-01-TS1.xml", [(_square(5, 5, 15, 15), False)])
    source = entry(tmp_path, "monuseg", "2d_seg", MONUSEG, labels="{nucleus: nucleus}", **PATHOLOGY)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    # inputs: 3 images and the ruler
    assert (report.inputs, report.kept) == (4, 1)
    assert reasons(qrows) == {"not_an_area": 1, "missing_file": 1, "split_excluded": 1}
    ruler_q = next(q for q in qrows if q["reason"] == "not_an_area")
    assert ruler_q["source_path"].endswith("TCGA-A7-A13E-01Z-00-DX1.xml") and "region 9" in ruler_q["detail"]
    assert sorted(r["bbox"] for r in rows) == [[10, 10, 20, 20], [20, 10, 30, 18], [48, 30, 56, 50]]
    assert {r["label"] for r in rows} == {"nucleus"} and {r["split"] for r in rows} == {"train"}


def test_qupath_geojson_hole_splits_a_region_and_a_point_is_reported(tmp_path: Path) -> None:
    """QuPath's 'Export objects as GeoJSON': a FeatureCollection of annotations with `classification.name`."""
    raw = tmp_path / "raw" / "qupath"
    photo(raw / "slides" / "case_01.png", size=(48, 64))
    outer = [[10, 10], [40, 10], [40, 30], [10, 30], [10, 10]]
    hole = [[20, 10], [30, 10], [30, 30], [20, 30], [20, 10]]  # the hole spans the region's height
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [outer, hole]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [[[[50, 5], [60, 5], [60, 15], [50, 15]]]]},
         "properties": {"classification": {"name": "Stroma"}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}},
    ]  # fmt: skip
    (raw / "slides" / "case_01.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": features})
    )
    body = """
    reader:
      kind: layout
      images: "slides/{id}.png"
      masks: "slides/{id}.geojson"
      min_component_pixels: 1
      convert: {kind: polygons, format: geojson}
    labels: {Tumor: tumor, Stroma: stroma}
    """
    report, rows, qrows = run(entry(tmp_path, "qupath", "2d_seg", body, **PATHOLOGY), raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (2, 1) and reasons(qrows) == {"not_an_area": 1}
    assert sorted((r["label"], r["bbox"]) for r in rows) == [
        ("stroma", [50, 5, 60, 15]),
        ("tumor", [10, 10, 20, 30]),  # the hole cut the region in two
        ("tumor", [30, 10, 40, 30]),
    ]


def test_coco_polygons_and_rle_decoded_like_pycocotools(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    raw = tmp_path / "raw" / "cells"
    for seed, name in enumerate(("a.png", "b.png", "c.png")):
        photo(raw / "images" / name, seed=seed, size=(40, 50))
    blob = np.zeros((40, 50), np.uint8, order="F")
    blob[20:30, 5:12] = 1
    rle = mask_utils.encode(blob)
    rle["counts"] = rle["counts"].decode()
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50},
                   {"id": 2, "file_name": "b.png", "height": 40, "width": 50},
                   {"id": 3, "file_name": "gone.png", "height": 40, "width": 50}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "segmentation": [[2, 2, 12, 2, 12, 9, 2, 9]]},
                        {"id": 2, "image_id": 1, "category_id": 7, "segmentation": rle, "iscrowd": 1},
                        {"id": 3, "image_id": 2, "category_id": 7, "segmentation": [[1, 1, 2, 1]]}],
        "categories": [{"id": 7, "name": "cell"}],
    }  # fmt: skip
    (raw / "annotations").mkdir()
    (raw / "annotations" / "train.json").write_text(json.dumps(coco))
    body = """
    reader:
      kind: layout
      images: "images/{file}"
      masks: "annotations/*.json"
      min_component_pixels: 1
      convert: {kind: polygons, format: coco, instances: true}
    labels: {cell: cell}
    """
    report, rows, qrows = run(entry(tmp_path, "cells", "2d_seg", body), raw, tmp_path / "out")
    # a.png kept; b.png's polygon has 2 points; c.png has no entry; gone.png has no file
    assert (report.inputs, report.kept) == (4, 1)
    assert reasons(qrows) == {"degenerate_polygon": 1, "unreferenced_file": 1, "missing_file": 1}
    assert sorted(r["bbox"] for r in rows) == [[2, 2, 12, 9], [5, 20, 12, 30]]


SIIM = """
reader:
  kind: layout
  images: "dicom-images-train/*/*/{image_id}.dcm"
  table: {file: train-rle.csv, join: {column: ImageId, field: image_id}}
  label: pneumothorax
  min_component_pixels: 1
  convert: {kind: rle, column: EncodedPixels, order: column, runs: relative, start: 0}
labels: {pneumothorax: pneumothorax}
"""


def test_siim_relative_column_major_rle_on_dicom_images(tmp_path: Path) -> None:
    """SIIM-ACR: `dicom-images-train/<study>/<series>/<SOPInstanceUID>.dcm`, `train-rle.csv` with
    `ImageId, EncodedPixels` (runs counted from the end of the previous run; -1 = no pneumothorax)."""
    raw = tmp_path / "raw" / "siim"
    ids = ["1.2.276.0.7230010.3.1.4.8323329.5597.1517875188.959090", "1.2.276.0.7230010.3.1.4.8323329.1.1.2",
           "1.2.276.0.7230010.3.1.4.8323329.1.1.3"]  # fmt: skip
    rng = np.random.default_rng(0)
    for i, uid in enumerate(ids):
        folder = raw / "dicom-images-train" / f"1.2.276.0.7230010.3.1.2.{i}" / f"1.2.276.0.7230010.3.1.3.{i}"
        dicom_file(folder / f"{uid}.dcm", rng.integers(0, 4000, (32, 40)), modality="CR", SOPInstanceUID=uid)
    a = np.zeros((32, 40), bool)
    a[4:10, 3:8] = True  # column-major: this block's runs go down each column
    b = np.zeros((32, 40), bool)
    b[20:30, 30:36] = True
    lines = ["ImageId, EncodedPixels",
             f"{ids[0]}, {encode(a, order='column', runs='relative', start=0)}",
             f"{ids[0]}, {encode(b, order='column', runs='relative', start=0)}",
             f"{ids[1]}, -1",
             f"{ids[2]}, 5 3 99999 4",
             "1.2.276.0.7230010.3.1.4.8323329.9.9.9, -1"]  # fmt: skip
    (raw / "train-rle.csv").write_text("\n".join(lines) + "\n")
    report, rows, qrows = run(entry(tmp_path, "siim", "2d_seg", SIIM), raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (4, 1)
    assert reasons(qrows) == {"no_finding": 1, "rle_outside_image": 1, "missing_file": 1}
    assert sorted(r["bbox"] for r in rows) == [[3, 4, 8, 10], [30, 20, 36, 30]]
    text = json.dumps([rows, qrows])
    assert not any(uid in text for uid in ids)  # file names and table keys are UIDs: never shown
    outside = next(q for q in qrows if q["reason"] == "rle_outside_image")
    assert "train-rle.csv line 5" in outside["detail"]


def test_sartorius_row_major_rle_one_row_per_cell(tmp_path: Path) -> None:
    """Sartorius cell instance segmentation: `train/<id>.png`, `train.csv` (id, annotation, width, height,
    cell_type, ...), row-major 1-based runs, one row per cell: touching cells stay two boxes."""
    raw = tmp_path / "raw" / "sartorius"
    photo(raw / "train" / "0030fd0e6378.png", size=(30, 40), rgb=False)
    c1 = np.zeros((30, 40), bool)
    c1[5:10, 5:15] = True
    c2 = np.zeros((30, 40), bool)
    c2[5:10, 15:20] = True  # touches c1
    rows_csv = ["id,annotation,width,height,cell_type,plate_time,sample_date,sample_id,elapsed_timedelta"]
    for m in (c1, c2):
        rows_csv.append(
            f"0030fd0e6378,{encode(m, order='row', start=1)},40,30,shsy5y,11h30m00s,2019-06-16,x,0"
        )
    (raw / "train.csv").write_text("\n".join(rows_csv) + "\n")
    body = """
    reader:
      kind: layout
      images: "train/{id}.png"
      table: {file: train.csv, join: {column: id, field: id}}
      label: {column: cell_type}
      min_component_pixels: 1
      convert: {kind: rle, column: annotation, order: row, start: 1, rows_are: instances}
    labels: {shsy5y: neuroblastoma cell}
    """
    report, rows, _ = run(entry(tmp_path, "sartorius", "2d_seg", body, **PATHOLOGY), raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (1, 1)
    assert sorted(r["bbox"] for r in rows) == [[5, 5, 15, 10], [15, 5, 20, 10]]
    assert {r["label"] for r in rows} == {"neuroblastoma cell"}
    # the same runs read column-major would be another (plausible, wrong) mask: the order is stated
    assert encode(c1, order="row") != encode(c1, order="column")
