"""Whole-slide images through the catalog YAML and the normal asset path: CAMELYON16 as it ships
(`training/tumor/tumor_001.tif`, `training/normal/normal_001.tif`, `lesion_annotations/tumor_001.xml` in
ASAP XML), small pyramidal TIFFs in Aperio's layout that OpenSlide opens, tiled around a polygon with a
hole; PANDA (`train_images/<id>.tiff` + `train_label_masks/<id>_mask.tiff`, labels in the red channel,
`train.csv`) as generic pyramidal TIFFs that record no magnification."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from converter_fixtures import asap_xml, pyramid_slide
from layout_fixtures import entry
from normalize_fixtures import reasons, run

W, H = 3072, 2048
PINK, PURPLE = (200, 80, 150), (170, 60, 190)
LESION = [(600, 300), (1000, 300), (1000, 700), (600, 700)]
HOLE = [(750, 450), (850, 450), (850, 550), (750, 550)]
PATHOLOGY = {"modality": "Pathology", "department": "Laboratory Medicine and Pathology"}


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("slides")
    tumor = np.full((H, W, 3), 240, np.uint8)
    tumor[300:700, 600:1000] = PINK  # the annotated lesion
    tumor[200:1800, 1600:3072] = PURPLE  # tissue no one annotated: background tiles come from here
    normal = np.full((H, W, 3), 240, np.uint8)
    normal[100:1900, 200:2800] = PURPLE
    lab = np.zeros((H, W, 3), np.uint8)
    lab[300:700, 600:1000, 0] = 4  # Radboud: Gleason 4 ...
    lab[300:500, 600:700, 0] = 1  # ... beside stroma
    return {
        "tumor": pyramid_slide(tmp / "tumor.tif", tumor),
        "normal": pyramid_slide(tmp / "normal.tif", normal),
        "plain": pyramid_slide(tmp / "plain.tiff", tumor, mag=0, levels=(1, 2, 4)),
        "mask": pyramid_slide(tmp / "mask.tiff", lab, mag=0, levels=(1, 4, 16)),
    }


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _camelyon16(raw: Path, slides) -> None:
    _copy(slides["tumor"], raw / "training" / "tumor" / "tumor_001.tif")
    _copy(slides["tumor"], raw / "training" / "tumor" / "tumor_002.tif")  # its XML is missing
    _copy(slides["normal"], raw / "training" / "normal" / "normal_001.tif")
    asap_xml(
        raw / "lesion_annotations" / "tumor_001.xml",
        [("Tumor", LESION), ("_2", HOLE), ("Tumor", [(100, 100), (100, 100), (101, 100)])],
    )


CAMELYON16_SEG = """
reader:
  kind: layout
  images: "training/{group}/{slide}.tif"
  masks: "lesion_annotations/{slide}.xml"
  filters: {group: tumor}
  convert: {kind: wsi, magnification: 10, tile_size: 256, annotations: {format: asap_xml}}
labels: {Tumor: metastasis}
"""


def test_camelyon16_tiles_around_the_lesion_with_boxes_and_positions(tmp_path: Path, slides) -> None:
    raw = tmp_path / "raw" / "camelyon16"
    _camelyon16(raw, slides)
    (raw / "training" / "tumor" / "tumor_003.tif").write_bytes(b"not a slide")
    asap_xml(raw / "lesion_annotations" / "tumor_003.xml", [("Tumor", LESION)])
    source = entry(tmp_path, "camelyon16", "2d_seg", CAMELYON16_SEG, **PATHOLOGY)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    # inputs: tumor_001 (kept), its degenerate shape, tumor_002 (no XML), tumor_003 (not a slide)
    assert (report.inputs, report.kept) == (4, 1)
    assert reasons(qrows) == {"degenerate_polygon": 1, "no_annotation": 1, "unreadable": 1}
    # a 20x slide read at 10x: level 1, no resize; the lesion spans level-0 x 600..1000, y 300..700
    assert sorted((r["sample_id"].rsplit("#", 1)[1], r["bbox"]) for r in rows) == [
        ("tumor_001@L1_x512_y0", [44, 150, 244, 256]),
        ("tumor_001@L1_x512_y512", [44, 0, 244, 94]),
    ]
    assert all(
        r["source_path"] == "training/tumor/tumor_001.tif" and r["label"] == "metastasis" for r in rows
    )
    assert rows[0]["sample_id"].startswith("2d#seg#pathology#camelyon16#training#tumor#tumor_001@L1_x512_y")
    from PIL import Image

    tile = next(r for r in rows if r["sample_id"].endswith("y0"))
    with Image.open(tmp_path / "out" / tile["image"]) as im:
        px = np.asarray(im)
    assert px.shape == (256, 256, 3) and tuple(px[200, 100]) == PINK and tuple(px[10, 10]) == (240, 240, 240)
    assert report.counters["region_tiles"] == 2


CAMELYON16_CLS = """
reader:
  kind: layout
  images: "training/{group}/{slide}.tif"
  masks: "lesion_annotations/{slide}.xml"
  convert:
    kind: wsi
    magnification: 10
    tile_size: 256
    annotations: {format: asap_xml}
    background_tiles: 2
    background_label: normal
    unannotated: {group: normal}
labels: {Tumor: metastasis, normal: normal}
"""


def test_camelyon16_classification_tiles_region_and_background(tmp_path: Path, slides) -> None:
    raw = tmp_path / "raw" / "camelyon16"
    _camelyon16(raw, slides)
    source = entry(tmp_path, "camelyon16", "2d_cls", CAMELYON16_CLS, **PATHOLOGY)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    by_slide: dict[str, list] = {}
    for r in rows:
        by_slide.setdefault(r["source_path"], []).append(r["label"])
    assert sorted(by_slide["training/tumor/tumor_001.tif"]) == [
        "metastasis",
        "metastasis",
        "normal",
        "normal",
    ]
    assert by_slide["training/normal/normal_001.tif"] == ["normal", "normal"]  # background tiles only
    assert reasons(qrows) == {"degenerate_polygon": 1, "no_annotation": 1}
    assert (report.inputs, report.kept) == (6 + 2, 6)  # a tile is an input in classification
    assert all(r["bbox"] is None for r in rows)


def test_panda_mask_slides_seg_and_slide_grades(tmp_path: Path, slides) -> None:
    raw = tmp_path / "raw" / "panda"
    ids = ("0005f7aaab2800f6170c399693a96917", "000920ad0b612851f8e01bcc880d9b3d")
    for n, i in enumerate(ids):
        _copy(slides["plain"], raw / "train_images" / f"{i}.tiff")
        with open(raw / "train_images" / f"{i}.tiff", "ab") as f:
            f.write(b"\0" * n)  # other bytes (same pixels): not a byte duplicate of the first slide
        _copy(slides["mask"], raw / "train_label_masks" / f"{i}_mask.tiff")
    (raw / "train.csv").write_text(
        f"image_id,data_provider,isup_grade,gleason_score\n{ids[0]},radboud,4,4+4\n{ids[1]},karolinska,1,3+3\n"
    )
    seg = """
    reader:
      kind: layout
      images: "train_images/{image_id}.tiff"
      masks: "train_label_masks/{image_id}_mask.tiff"
      table: {file: train.csv, join: {column: image_id, field: image_id}}
      filters: {data_provider: radboud}
      convert: {kind: wsi, magnification: 10, base_magnification: 20, tile_size: 256}
    labels: {"1": stroma, "4": Gleason 4}
    """
    report, rows, _ = run(entry(tmp_path, "panda_radboud", "2d_seg", seg, **PATHOLOGY), raw, tmp_path / "o1")
    assert (report.inputs, report.kept) == (1, 1)
    assert sorted((r["sample_id"].rsplit("@", 1)[1], r["label"], r["bbox"]) for r in rows) == [
        ("L1_x512_y0", "Gleason 4", [44, 150, 244, 256]),
        ("L1_x512_y0", "stroma", [44, 150, 94, 250]),
        ("L1_x512_y512", "Gleason 4", [44, 0, 244, 94]),
    ]
    cls = """
    reader:
      kind: layout
      images: "train_images/{image_id}.tiff"
      masks: "train_label_masks/{image_id}_mask.tiff"
      table: {file: train.csv, join: {column: image_id, field: image_id}}
      label: {column: isup_grade}
      convert: {kind: wsi, magnification: 10, base_magnification: 20, tile_size: 256}
    labels: {"1": ISUP grade 1, "4": ISUP grade 4}
    """
    report, rows, _ = run(entry(tmp_path, "panda", "2d_cls", cls, **PATHOLOGY), raw, tmp_path / "o2")
    assert (report.inputs, report.kept) == (4, 4)  # two tiles of each slide, each its slide's grade
    assert sorted((r["source_path"].split("/")[1][:6], r["label"]) for r in rows) == [
        ("0005f7", "ISUP grade 4"),
        ("0005f7", "ISUP grade 4"),
        ("000920", "ISUP grade 1"),
        ("000920", "ISUP grade 1"),
    ]
