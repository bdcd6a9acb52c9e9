"""Official splits of VOC and COCO detection sets from their list files (the same `split.lists` as
`kind: layout`), and COCO images spread over several folders. Tiny files at the real relative paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from layout_fixtures import entry, photo
from normalize_fixtures import reasons, run

from gmai_pipeline.catalog import CatalogError

MICROSCOPY = {"modality": "Microscopy", "department": "Hematology"}


def _voc_xml(name: str, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
        "</bndbox></object>"
        for n, (a, b, c, d) in objects
    )
    return f"<annotation><filename>{name}</filename>{objs}</annotation>"


def test_bccd_voc_split_from_imagesets_main(tmp_path: Path) -> None:
    """Shenggan/BCCD_Dataset: BCCD/JPEGImages/BloodImage_00000.jpg, BCCD/Annotations/BloodImage_00000.xml,
    BCCD/ImageSets/Main/{train,val,test}.txt (image ids, one per line; val and test are evaluation sets)."""
    raw = tmp_path / "raw" / "bccd"
    top = raw / "BCCD"
    ids = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00002", "BloodImage_00003"]
    for i, stem in enumerate(ids):
        photo(top / "JPEGImages" / f"{stem}.jpg", seed=i, size=(48, 64))
        (top / "Annotations").mkdir(parents=True, exist_ok=True)
        (top / "Annotations" / f"{stem}.xml").write_text(
            _voc_xml(f"{stem}.jpg", [("WBC", (10, 10, 30, 30)), ("RBC", (35, 5, 60, 25))])
        )
    main = top / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("BloodImage_00000\nBloodImage_00001\n")
    (main / "val.txt").write_text("BloodImage_00002\n")
    (main / "test.txt").write_text("")  # BloodImage_00003 is in no list
    (main / "trainval.txt").write_text("BloodImage_00000\nBloodImage_00001\nBloodImage_00002\n")
    body = """
        reader:
          kind: voc
          split:
            lists: {train: ImageSets/Main/train.txt, val: ImageSets/Main/val.txt, test: ImageSets/Main/test.txt}
        labels: {WBC: white blood cell, RBC: red blood cell, Platelets: platelet}
        """
    source = entry(tmp_path, "bccd", "2d_det", body, **MICROSCOPY)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert {r["source_path"].rsplit("/", 1)[-1] for r in rows} == {
        "BloodImage_00000.jpg",
        "BloodImage_00001.jpg",
    }
    assert {r["split"] for r in rows} == {"train"} and len(rows) == 4
    assert reasons(qrows) == {"split_excluded": 2, "split_unknown": 2}  # one per box of each image
    unknown = [q["detail"] for q in qrows if q["reason"] == "split_unknown"]
    assert all("BloodImage_00003.jpg" in d and "split lists" in d for d in unknown)


def test_fracatlas_coco_two_image_folders_and_csv_split_lists(tmp_path: Path) -> None:
    """FracAtlas: images/Fractured/ and images/Non_fractured/, Annotations/COCO JSON/COCO_fracture_masks.json
    (one category 'fractured'), Utilities/Fracture Split/{train,valid,test}.csv with an `image_id` column
    (public FracAtlas split scripts read `df['image_id']`); non-fractured images are in no split list."""
    raw = tmp_path / "raw" / "fracatlas"
    top = raw / "FracAtlas"
    photo(top / "images" / "Fractured" / "IMG0000019.jpg", seed=1, size=(48, 64))
    photo(top / "images" / "Fractured" / "IMG0000025.jpg", seed=2, size=(48, 64))
    photo(top / "images" / "Non_fractured" / "IMG0000000.jpg", seed=3, size=(48, 64))
    photo(top / "images" / "Non_fractured" / "IMG0000001.jpg", seed=4, size=(48, 64))
    coco = {
        "images": [
            {"id": 1, "file_name": "IMG0000019.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "IMG0000025.jpg", "width": 64, "height": 48},
            {"id": 3, "file_name": "IMG0000000.jpg", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 15], "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "fractured"}],
    }
    ann = top / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps(coco))
    split = top / "Utilities" / "Fracture Split"
    split.mkdir(parents=True)
    (split / "train.csv").write_text("image_id\nIMG0000019.jpg\n")
    (split / "valid.csv").write_text("image_id\nIMG0000025.jpg\n")
    (split / "test.csv").write_text("image_id\n")
    source = entry(
        tmp_path,
        "fracatlas",
        "2d_det",
        """
        reader:
          kind: coco
          annotations: Annotations/COCO JSON/COCO_fracture_masks.json
          image_dir: [images/Fractured, images/Non_fractured]
          split:
            lists: {train: Utilities/Fracture Split/train.csv, val: Utilities/Fracture Split/valid.csv,
                    test: Utilities/Fracture Split/test.csv}
            list_column: image_id
            default: train
        labels: {fractured: bone fracture}
        """,
        modality="X-Ray",
        department="Sports Medicine",
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert [(r["label"], r["split"], r["bbox"]) for r in rows] == [
        ("bone fracture", "train", [10, 10, 30, 25])
    ]
    # the valid-list image is excluded; a JSON entry without boxes and a file no entry names, both normal
    assert reasons(qrows) == {"split_excluded": 1, "no_annotation": 1, "unreferenced_file": 1}
    assert report.inputs == 4


def test_detection_split_lists_are_validated(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="split lists"):
        entry(tmp_path, "v", "2d_det", 'reader: {kind: voc, split: "{split}"}')
    with pytest.raises(CatalogError, match="list_column names the image column"):
        entry(tmp_path, "c", "2d_det", "reader: {kind: coco, split: {value: train, list_column: image_id}}")
