"""Bad inputs: every quarantine reason, with inputs = kept + quarantined checked on each dataset."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from normalize_fixtures import encoded, make_source, pattern, reasons, run, write_image, write_json
from pydicom.data import get_testdata_file

from gmai_pipeline.manifest import scan
from gmai_pipeline.normalize import normalize_source
from gmai_pipeline.quarantine import NORMALIZE_REASONS as REASONS


def _check(qrows: list[dict], expected: dict[str, int]) -> None:
    assert reasons(qrows) == expected
    for q in qrows:
        assert q["reason"] in REASONS and q["source_path"] and q["step"]
        assert (
            q["source_path"].rsplit("/", 1)[-1].split(".")[0] in q["detail"]
            or q["source_path"] in q["detail"]
        )


def test_image_files_unreadable_truncated_duplicate_refused_labels_splits(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    ok = write_image(raw / "train" / "normal" / "ok.png", pattern(32, 32))
    (raw / "train" / "normal" / "garbage.png").write_bytes(os.urandom(500))
    png = encoded(pattern(64, 64, seed=2), "PNG")
    (raw / "train" / "normal" / "cut.png").write_bytes(png[: len(png) // 2])
    jpg = encoded(pattern(64, 64, seed=3, rgb=True), "JPEG")
    (raw / "train" / "normal" / "cut.jpg").write_bytes(jpg[:-200])
    (raw / "train" / "normal" / "copy.png").write_bytes(ok.read_bytes())
    outside = write_image(tmp_path / "elsewhere.png", pattern(8, 8))
    os.symlink(outside, raw / "train" / "normal" / "link.png")
    write_image(raw / "loose.png", pattern(8, 8, seed=4))
    write_image(raw / "train" / "alien" / "x.png", pattern(8, 8, seed=5))
    write_image(raw / "test" / "normal" / "t.png", pattern(8, 8, seed=6))
    source = make_source("ds", "2d_cls", {"kind": "image_folder"}, labels={"normal": "normal"})
    report, rows, qrows = run(source, raw, tmp_path / "out")
    _check(
        qrows,
        {
            "unreadable": 1,
            "truncated": 2,
            "duplicate_image": 1,
            "path_refused": 1,
            "missing_label": 1,
            "unknown_label": 1,
            "split_excluded": 1,
        },
    )
    assert [r["source_path"] for r in rows] == ["train/normal/copy.png"] or [
        r["source_path"] for r in rows
    ] == ["train/normal/ok.png"]
    assert report.inputs == 9 and report.kept == 1
    dup = next(q for q in qrows if q["reason"] == "duplicate_image")
    assert "same bytes" in dup["detail"]


def test_detection_boxes_missing_files_and_unknown_categories(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    write_image(raw / "a.png", pattern(100, 100))
    write_json(
        raw / "annotations.json",
        {
            "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "gone.png"}],
            "categories": [{"id": 1, "name": "polyp"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
                {"id": 2, "image_id": 1, "category_id": 1, "bbox": [90, 90, 30, 30]},  # past the edge
                {"id": 3, "image_id": 1, "category_id": 1, "bbox": [50, 50, 0, 10]},  # zero width
                {"id": 4, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]},  # undefined category
                {"id": 5, "image_id": 1, "category_id": 1},  # no bbox
                {"id": 6, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]},  # file missing
                {"id": 7, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5]},  # image id undefined
            ],
        },
    )
    report, rows, qrows = run(make_source("ds", "2d_det", {"kind": "coco"}), raw, tmp_path / "out")
    _check(
        qrows,
        {
            "box_outside_image": 1,
            "degenerate_box": 1,
            "unknown_label": 1,
            "missing_box": 1,
            "missing_file": 2,
        },
    )
    assert (report.inputs, report.kept) == (7, 1) and rows[0]["bbox"] == [10, 10, 30, 30]


def test_catalog_label_map_rejects_unknown_names(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    write_image(raw / "JPEGImages" / "f.jpg", pattern(40, 40, rgb=True))
    (raw / "Annotations").mkdir(parents=True)
    (raw / "Annotations" / "f.xml").write_text(
        "<annotation><filename>f.jpg</filename>"
        "<object><name>polyp</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name>bubble</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>"
    )
    (raw / "Annotations" / "broken.xml").write_text("<annotation><object>")
    source = make_source("ds", "2d_det", {"kind": "voc"}, labels={"polyp": "colorectal polyp"})
    report, rows, qrows = run(source, raw, tmp_path / "out")
    _check(qrows, {"unknown_label": 1, "unreadable": 1})
    assert [r["label"] for r in rows] == ["colorectal polyp"] and report.inputs == 3


def test_masks_shape_empty_missing_unknown(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    good = np.zeros((32, 32), np.uint8)
    good[4:20, 4:20] = 1
    for name in ("good", "shape", "empty", "nomask", "alien", "colour"):
        write_image(raw / "images" / f"{name}.png", pattern(32, 32, seed=len(name) + ord(name[0])))
    write_image(raw / "masks" / "good.png", good)
    write_image(raw / "masks" / "shape.png", np.zeros((16, 32), np.uint8))
    write_image(raw / "masks" / "empty.png", np.zeros((32, 32), np.uint8))
    write_image(raw / "masks" / "alien.png", good * 3)
    write_image(raw / "masks" / "colour.png", np.stack([good * 255, good * 0, good * 80], axis=-1))
    source = make_source("ds", "2d_seg", {"kind": "mask_pairs"}, labels={"1": "lesion"})
    report, rows, qrows = run(source, raw, tmp_path / "out")
    _check(
        qrows,
        {"shape_mismatch": 1, "empty_mask": 1, "missing_file": 1, "unknown_label": 1, "unsupported_mask": 1},
    )
    assert report.inputs == 6 and [r["source_path"] for r in rows] == ["images/good.png"]


def _ct_small(path: Path, shift: int = 0, **changes) -> Path:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelData = np.roll(ds.pixel_array, shift, axis=1).tobytes()  # distinct pixels per file
    for k, v in changes.items():
        if v is None:
            delattr(ds, k) if k in ds else None
        else:
            setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def test_dicom_codec_truncation_burned_in_and_missing(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    _ct_small(raw / "ok.dcm")
    _ct_small(raw / "us.dcm", 1, Modality="US", BurnedInAnnotation=None)
    _ct_small(raw / "flagged.dcm", 2, BurnedInAnnotation="YES")
    data = _ct_small(raw / "cut.dcm", 3, InstanceNumber=7).read_bytes()
    (raw / "cut.dcm").write_bytes(data[:-1000])
    ds = pydicom.dcmread(get_testdata_file("JPEG-LL.dcm"))  # JPEG lossless: no decoder installed
    ds.BurnedInAnnotation = "NO"
    ds.save_as(raw / "lossless.dcm")
    (raw / "notdicom.dcm").write_bytes(b"hello" * 50)
    (raw / "labels.csv").write_text(
        "file,label\nok.dcm,chest\nus.dcm,chest\nflagged.dcm,chest\ncut.dcm,chest\nlossless.dcm,chest\n"
        "notdicom.dcm,chest\nabsent.dcm,chest\n"
    )
    (raw / "stray.dcm").write_bytes(b"x")
    (raw / "LICENSE").write_text("CC-BY 4.0\n")  # extension-less but not DICOM: ignored, not an input
    source = make_source("ds", "2d_cls", {"kind": "dicom"}, modality="CT")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    _check(
        qrows,
        {
            "burned_in_text_risk": 2,
            "truncated": 1,
            "unsupported_codec": 1,
            "unreadable": 1,
            "missing_file": 1,
            "unreferenced_file": 1,
        },
    )
    assert report.inputs == 8 and [r["source_path"] for r in rows] == ["ok.dcm"]
    assert report.ignored == ["LICENSE"]
    allowed = make_source("ds", "2d_cls", {"kind": "dicom"}, modality="CT", burned_in_text_allowed=True)
    _, rows2, qrows2 = run(allowed, raw, tmp_path / "out2")
    assert "burned_in_text_risk" not in reasons(qrows2)
    assert {"us.dcm", "flagged.dcm"} <= {r["source_path"] for r in rows2}


def test_volumes_truncated_shape_empty_unknown(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    vol = np.random.default_rng(0).normal(0, 100, (16, 16, 8)).astype(np.int16)
    lab = np.zeros((16, 16, 8), np.uint8)
    lab[4:12, 4:12, 2:5] = 1
    tiny = np.zeros_like(lab)
    tiny[3, 3, 3] = 1
    cases = {
        "good": (vol, lab),
        "shape": (vol, lab[:, :, :6]),
        "empty": (vol, tiny),
        "alien": (vol, lab * 5),
        "cut": (vol, lab),
    }
    training = []
    for i, (name, (v, m)) in enumerate(cases.items()):
        (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
        (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(v + i, np.eye(4)), str(raw / "imagesTr" / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(m, np.eye(4)), str(raw / "labelsTr" / f"{name}.nii.gz"))
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    blob = (raw / "imagesTr" / "cut.nii.gz").read_bytes()
    (raw / "imagesTr" / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    assert gzip.decompress(blob)  # the original was valid
    write_json(raw / "dataset.json", {"labels": {"0": "background", "1": "liver"}, "training": training})
    source = make_source("ds", "3d_seg", {"kind": "msd"})
    report, rows, qrows = run(source, raw, tmp_path / "out")
    _check(qrows, {"truncated": 1, "shape_mismatch": 1, "empty_mask": 1, "unknown_label": 1})
    assert report.kept == 1 and {r["source_path"] for r in rows} == {"imagesTr/good.nii.gz"}


def test_whole_dataset_unreadable_says_why(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    for i in range(3):
        (raw / "normal").mkdir(parents=True, exist_ok=True)
        (raw / "normal" / f"{i}.png").write_bytes(b"not a png" * (i + 1))
    source = make_source("ds", "2d_cls", {"kind": "image_folder"})
    report = normalize_source(source, raw, scan(raw), tmp_path / "out")
    msg = report.failure_message()
    assert msg is not None and "none of 3 inputs" in msg and "unreadable (3)" in msg
