"""Every reader on small datasets built in their real on-disk formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from normalize_fixtures import encoded, make_source, pattern, reasons, run, write_image, write_json
from PIL import Image
from pydicom.data import get_testdata_file

from gmai_pipeline.storage import md5_file


def test_image_folder_split_folders_and_byte_copy(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    for split in ("train", "val"):
        for cls, n in (("normal", 2), ("pneumonia", 1)):
            for i in range(n):
                write_image(
                    raw / split / cls / f"{cls}_{i}.png",
                    pattern(64, 80, seed=i + 10 * len(cls) + 100 * len(split)),
                )
    write_image(raw / "train" / "normal" / "extra.jpg", pattern(40, 40, seed=9, rgb=True), quality=90)
    (raw / "README.txt").write_text("not an input")
    source = make_source(
        "ds",
        "2d_cls",
        {"kind": "image_folder"},
        splits=["train", "val"],
        labels={"normal": "normal", "pneumonia": "pneumonia"},
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept, report.quarantined) == (7, 7, 0)
    assert report.ignored == ["README.txt"]
    by_path = {r["source_path"]: r for r in rows}
    r = by_path["train/normal/normal_0.png"]
    assert r["sample_id"] == "2d#cls#x-ray#ds#train#normal#normal_0.png"
    assert r["image"] == "images/2d/cls/x-ray/ds/train/normal/normal_0.png"
    assert r["image_md5"] == md5_file(raw / "train/normal/normal_0.png")  # original bytes kept
    assert (r["width"], r["height"], r["bbox"], r["slice_axis"], r["slice_index"]) == (
        80,
        64,
        None,
        None,
        None,
    )
    assert by_path["val/pneumonia/pneumonia_0.png"]["split"] == "val"
    assert by_path["train/normal/extra.jpg"]["image_md5"] == md5_file(raw / "train/normal/extra.jpg")
    assert {r["label"] for r in rows} == {"normal", "pneumonia"}
    assert all(r["modality"] == "X-Ray" and r["department"] == "Pulmonary Medicine" for r in rows)


def test_image_folder_reencodes_what_needs_change(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    write_image(raw / "a" / "bitmap.bmp", pattern(30, 50, rgb=True))
    write_image(raw / "a" / "big.png", pattern(1000, 2000, seed=3))
    wide16 = (pattern(20, 30).astype(np.uint16) * 250).astype(np.uint16)
    write_image(raw / "b" / "deep.png", wide16)
    Image.fromarray(pattern(20, 20)).convert("P").save(raw / "b" / "palette.png")
    write_image(raw / "b" / "scan.tif", pattern(24, 24))
    source = make_source("ds", "2d_cls", {"kind": "image_folder", "split_folders": False})
    report, rows, _ = run(source, raw, tmp_path / "out", max_side=1024)
    by = {r["source_path"]: r for r in rows}
    assert by["a/bitmap.bmp"]["image"].endswith("a/bitmap.png")
    assert Image.open(tmp_path / "out" / by["a/bitmap.bmp"]["image"]).format == "PNG"
    assert (by["a/big.png"]["width"], by["a/big.png"]["height"]) == (1024, 512)
    deep = Image.open(tmp_path / "out" / by["b/deep.png"]["image"])
    assert deep.mode == "L" and np.asarray(deep).max() == 255  # 16-bit scaled to 8-bit
    assert by["b/palette.png"]["image_md5"] == md5_file(raw / "b/palette.png")  # palette PNG copied as is
    assert by["b/scan.tif"]["image"].endswith("scan.png")
    assert {r["label"] for r in rows} == {"a", "b"}


def test_csv_labels_custom_columns_split_column_and_bare_names(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    for i in range(4):
        write_image(raw / "imgs" / f"ISIC_{i:07d}.jpg", pattern(32, 32, seed=i, rgb=True), quality=85)
    (raw / "meta.csv").write_text(
        "file_id,diagnosis,fold\n"
        "ISIC_0000000,mel,train\n"
        "ISIC_0000001.jpg,nv,train\n"
        "ISIC_0000002,nv,test\n"
        "ISIC_0000000,nv,train\n"  # multi-label: second row for the same image
    )
    source = make_source(
        "ds",
        "2d_cls",
        {
            "kind": "csv_labels",
            "csv": "meta.csv",
            "image_column": "file_id",
            "label_column": "diagnosis",
            "split_column": "fold",
            "image_dir": "imgs",
        },
        splits=["train", "test"],
        labels={"mel": "melanoma", "nv": "melanocytic nevus"},
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (5, 4)  # 4 CSV rows + 1 image no row names
    assert reasons(qrows) == {"unreferenced_file": 1}
    assert qrows[0]["source_path"] == "imgs/ISIC_0000003.jpg"
    zero = [r for r in rows if r["source_path"] == "imgs/ISIC_0000000.jpg"]
    assert sorted(r["label"] for r in zero) == ["melanocytic nevus", "melanoma"]
    assert zero[0]["image"] == zero[1]["image"]
    assert {r["source_path"]: r["split"] for r in rows}["imgs/ISIC_0000002.jpg"] == "test"


def test_coco_boxes_labels_and_scaling(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    write_image(raw / "images" / "a.png", pattern(100, 200))
    write_image(raw / "images" / "big.png", pattern(1000, 2048, seed=1))
    write_image(raw / "images" / "empty.png", pattern(50, 50, seed=2))
    write_json(
        raw / "ann.json",
        {
            "images": [
                {"id": 1, "file_name": "a.png", "width": 200, "height": 100},
                {"id": 2, "file_name": "big.png", "width": 2048, "height": 1000},
                {"id": 3, "file_name": "empty.png", "width": 50, "height": 50},
            ],
            "categories": [{"id": 7, "name": "polyp"}, {"id": 8, "name": "tool"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10.2, 20, 30.5, 40]},
                {"id": 2, "image_id": 1, "category_id": 8, "bbox": [0, 0, 200, 100]},
                {"id": 3, "image_id": 2, "category_id": 7, "bbox": [100, 200, 400, 300]},
            ],
        },
    )
    source = make_source(
        "ds",
        "2d_det",
        {"kind": "coco", "annotations": "ann.json", "image_dir": "images"},
        labels={"polyp": "polyp", "8": "instrument"},
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept, report.quarantined) == (4, 3, 1)
    assert reasons(qrows) == {"no_annotation": 1}
    a = sorted((r["label"], r["bbox"]) for r in rows if r["source_path"] == "images/a.png")
    assert a == [("instrument", [0, 0, 200, 100]), ("polyp", [10, 20, 41, 60])]
    big = [r for r in rows if r["source_path"] == "images/big.png"][0]
    assert (big["width"], big["height"]) == (1024, 500)
    assert big["bbox"] == [50, 100, 250, 250]  # halved with the image


def test_voc_one_based_boxes_and_missing_filename(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    write_image(raw / "JPEGImages" / "f1.jpg", pattern(60, 80, rgb=True))
    write_image(raw / "JPEGImages" / "f2.jpg", pattern(60, 80, seed=5, rgb=True))
    (raw / "Annotations").mkdir(parents=True)
    (raw / "Annotations" / "f1.xml").write_text(
        "<annotation><filename>f1.jpg</filename><size><width>80</width><height>60</height></size>"
        "<object><name>polyp</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>"
        "<object><name>polyp</name><bndbox><xmin>30</xmin><ymin>5</ymin><xmax>80</xmax><ymax>60</ymax></bndbox></object>"
        "</annotation>"
    )
    (raw / "Annotations" / "f2.xml").write_text(  # no <filename>: found by the XML's stem
        "<annotation><object><name>adenoma</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>4</xmax><ymax>5</ymax></bndbox>"
        "</object></annotation>"
    )
    source = make_source("ds", "2d_det", {"kind": "voc"})
    report, rows, _ = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (3, 3)
    assert sorted((r["source_path"], r["label"], r["bbox"]) for r in rows) == [
        ("JPEGImages/f1.jpg", "polyp", [0, 0, 10, 20]),
        ("JPEGImages/f1.jpg", "polyp", [29, 4, 80, 60]),
        ("JPEGImages/f2.jpg", "adenoma", [1, 2, 4, 5]),
    ]


def test_yolo_split_folders_polygons_and_background(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    write_image(raw / "images" / "train" / "a.jpg", pattern(100, 200, rgb=True))
    write_image(raw / "images" / "val" / "b.png", pattern(50, 50, seed=1))
    write_image(raw / "images" / "train" / "bg.jpg", pattern(30, 30, seed=2, rgb=True))
    (raw / "labels" / "train").mkdir(parents=True)
    (raw / "labels" / "val").mkdir(parents=True)
    (raw / "classes.txt").write_text("polyp\nforceps\n")
    (raw / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.3 0.1 0.3 0.3\n")
    (raw / "labels" / "val" / "b.txt").write_text("1 0.5 0.5 1.0 1.0\n")
    (raw / "labels" / "train" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    source = make_source("ds", "2d_det", {"kind": "yolo"}, splits=["train", "val"])
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert reasons(qrows) == {"no_annotation": 1, "missing_file": 1}
    assert (report.inputs, report.kept) == (5, 3)
    got = sorted((r["source_path"], r["split"], r["label"], r["bbox"]) for r in rows)
    assert got == [
        ("images/train/a.jpg", "train", "forceps", [20, 10, 60, 30]),
        ("images/train/a.jpg", "train", "polyp", [80, 30, 120, 70]),
        ("images/val/b.png", "val", "forceps", [0, 0, 50, 50]),
    ]


def test_mask_pairs_suffix_same_folder_and_palette_masks(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    write_image(raw / "data" / "case1.png", pattern(40, 60, rgb=True))
    mask = np.zeros((40, 60), np.uint8)
    mask[2:8, 3:13] = 1  # label 1, component A
    mask[20:30, 40:55] = 1  # label 1, component B
    mask[30:38, 5:15] = 2  # label 2
    im = Image.fromarray(mask).convert("P")  # palette PNG: pixel values are palette indices
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    im.save(raw / "data" / "case1_mask.png")
    source = make_source(
        "ds",
        "2d_seg",
        {"kind": "mask_pairs", "images_dir": "data", "masks_dir": "data", "mask_suffix": "_mask"},
        labels={"1": "lesion", "2": "ruler"},
    )
    report, rows, _ = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept, report.rows) == (1, 1, 3)
    assert sorted((r["label"], r["bbox"]) for r in rows) == [
        ("lesion", [3, 2, 13, 8]),
        ("lesion", [40, 20, 55, 30]),
        ("ruler", [5, 30, 15, 38]),
    ]
    assert len({r["image"] for r in rows}) == 1


def test_mask_pairs_binary_255_masks_in_own_folder(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    write_image(raw / "images" / "x.jpg", pattern(32, 32, rgb=True))
    m = np.zeros((32, 32), np.uint8)
    m[4:20, 6:30] = 255
    write_image(raw / "masks" / "x_seg.png", m)
    source = make_source(
        "ds", "2d_seg", {"kind": "mask_pairs", "mask_suffix": "_seg"}, labels={"255": "lesion"}
    )
    _, rows, _ = run(source, raw, tmp_path / "out")
    assert [(r["label"], r["bbox"]) for r in rows] == [("lesion", [6, 4, 30, 20])]


def _write_nifti(path: Path, arr: np.ndarray, affine=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))


def test_msd_dataset_json_and_nnunet_fallback(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    vol = np.random.default_rng(0).normal(0, 300, (20, 20, 10)).astype(np.int16)
    lab = np.zeros((20, 20, 10), np.uint8)
    lab[5:15, 5:15, 3:6] = 1
    _write_nifti(raw / "imagesTr" / "c1.nii.gz", vol)
    _write_nifti(raw / "labelsTr" / "c1.nii.gz", lab)
    write_json(
        raw / "dataset.json",
        {
            "labels": {"0": "background", "1": "liver"},
            "training": [{"image": "./imagesTr/c1.nii.gz", "label": "./labelsTr/c1.nii.gz"}],
        },
    )
    source = make_source("ds", "3d_seg", {"kind": "msd", "axes": [2]})
    report, rows, _ = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (1, 1)
    assert [(r["slice_axis"], r["slice_index"], r["label"], r["bbox"]) for r in rows] == [
        ("z", k, "liver", [5, 5, 15, 15]) for k in (3, 4, 5)
    ]
    assert rows[0]["sample_id"] == "3d#seg#ct#ds#imagesTr#c1.nii.gz#z3"
    assert rows[0]["image"] == "images/3d/seg/ct/ds/imagesTr/c1_z0003.png"

    raw2 = tmp_path / "raw" / "v2"  # nnU-Net v2: no training list, labels name -> value, _0000 channel suffix
    _write_nifti(raw2 / "imagesTr" / "c1_0000.nii.gz", vol)
    _write_nifti(raw2 / "labelsTr" / "c1.nii.gz", lab)
    write_json(raw2 / "dataset.json", {"labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz"})
    report2, rows2, _ = run(make_source("v2", "3d_seg", {"kind": "msd", "axes": [2]}), raw2, tmp_path / "out")
    assert report2.kept == 1 and {r["label"] for r in rows2} == {"liver"}


def test_dicom_labels_csv_pixels_only(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    raw.mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), raw / "slice1.dcm")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelData = (ds.pixel_array[::-1].copy()).tobytes()
    ds.save_as(raw / "slice2.dcm")
    (raw / "labels.csv").write_text("file,label\nslice1.dcm,chest\nslice2.dcm,chest\n")
    source = make_source(
        "ds",
        "2d_cls",
        {"kind": "dicom"},
        modality="CT",
        department="Oncology",
        clinical_task="Organ Recognition",
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (2, 2), qrows
    r = rows[0]
    assert r["sample_id"] == "2d#cls#ct#ds#slice1.dcm" and r["image"] == "images/2d/cls/ct/ds/slice1.png"
    img = np.asarray(Image.open(tmp_path / "out" / r["image"]))
    assert img.shape == (128, 128) and img.dtype == np.uint8 and img.max() > img.min()
    assert encoded(img, "PNG")  # decodable
