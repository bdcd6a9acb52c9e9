"""The embedded demo: deterministic, in the layouts the readers expect, with honest planted benchmark items."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import imagehash
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from gmai_pipeline.benchmarks import read_all
from gmai_pipeline.demo import (
    DEMO_PHI_VALUES,
    DEMO_SOURCES,
    DICOM_BURNED_IN_RISK,
    DICOM_UNDECODABLE,
    PLANTED,
    clear_caches,
    ensure_demo_benchmarks,
    ensure_demo_source,
)
from gmai_pipeline.demo._files import MARKER

csv.field_size_limit(sys.maxsize)
DHASH_THRESHOLD = 6  # decontamination's default: re-encodes within it, distinct pictures beyond


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(raw root, benchmark root) with every demo dataset and benchmark generated once for this module."""
    base = tmp_path_factory.mktemp("demo")
    for name in DEMO_SOURCES:
        ensure_demo_source(name, base / "raw")
    ensure_demo_benchmarks(base / "bench")
    return base / "raw", base / "bench"


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_catalog_lists_every_demo_source() -> None:
    from gmai_pipeline.catalog import load_catalog
    from gmai_pipeline.settings import DEMO_CATALOG_DIR

    catalog = load_catalog((DEMO_CATALOG_DIR,))
    assert sorted(s.name for s in catalog) == sorted(DEMO_SOURCES)
    assert all(s.demo for s in catalog)
    kinds = {s.reader.kind for s in catalog}
    assert kinds == {"image_folder", "csv_labels", "coco", "voc", "mask_pairs", "msd", "dicom"}


def test_generation_is_deterministic(demo: tuple[Path, Path], tmp_path: Path) -> None:
    """Regenerating from scratch (in-memory caches cleared) writes byte-identical files."""
    clear_caches()
    for name in DEMO_SOURCES:
        ensure_demo_source(name, tmp_path / "raw")
    ensure_demo_benchmarks(tmp_path / "bench")
    raw, bench = demo
    first = {**_digests(raw), **{f"bench/{k}": v for k, v in _digests(bench).items()}}
    second = {
        **_digests(tmp_path / "raw"),
        **{f"bench/{k}": v for k, v in _digests(tmp_path / "bench").items()},
    }
    assert first == second
    assert len(first) > 80


def test_generation_is_idempotent_and_leaves_no_temp_folders(demo: tuple[Path, Path]) -> None:
    raw, bench = demo
    folder = raw / "demo_histology_csv"
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert ensure_demo_source("demo_histology_csv", raw) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    assert sorted(p.name for p in raw.iterdir()) == sorted(DEMO_SOURCES)  # no .tmp leftovers
    assert sorted(p.name for p in bench.iterdir()) == [
        "GMAI-MMBench", "MMMU", "OmniMedVQA", "PMC-VQA", "PathVQA", "SLAKE", "VQA-RAD"
    ]  # fmt: skip


def test_existing_user_folder_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "demo_skin_masks").mkdir()
    (tmp_path / "demo_skin_masks" / "mine.txt").write_text("user data")
    ensure_demo_source("demo_skin_masks", tmp_path)
    assert [p.name for p in (tmp_path / "demo_skin_masks").iterdir()] == ["mine.txt"]


def test_stale_demo_version_is_rebuilt(tmp_path: Path) -> None:
    folder = tmp_path / "demo_histology_csv"
    folder.mkdir()
    (folder / MARKER).write_text("0\n")
    (folder / "old.png").write_bytes(b"old")
    ensure_demo_source("demo_histology_csv", tmp_path)
    assert not (folder / "old.png").exists()
    assert (folder / "labels.csv").is_file()


def test_unknown_demo_name_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="demo_nope"):
        ensure_demo_source("demo_nope", tmp_path)


# --------------------------------------------------------------------------- layouts


def test_fundus_image_folder_layout(demo: tuple[Path, Path]) -> None:
    root = demo[0] / "demo_fundus_folder"
    files = sorted(p.relative_to(root) for p in root.rglob("*.jpg"))
    assert len(files) == 12
    assert {f.parts[0] for f in files} == {"train", "test"}
    assert {f.parts[1] for f in files} == {"normal", "diabetic_retinopathy"}
    assert all(len(f.parts) == 3 for f in files)
    for f in files:
        with Image.open(root / f) as img:
            assert img.format == "JPEG"
            assert max(img.size) <= 1024


def test_histology_csv_layout(demo: tuple[Path, Path]) -> None:
    root = demo[0] / "demo_histology_csv"
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", "label"]
    assert len(rows) == 12
    assert {r["label"] for r in rows} == {"dab_positive", "dab_negative"}
    assert sorted(r["image"] for r in rows) == sorted(p.name for p in root.glob("*.png"))
    for r in rows:
        with Image.open(root / r["image"]) as img:
            assert img.format == "PNG"


def test_chest_coco_layout(demo: tuple[Path, Path]) -> None:
    root = demo[0] / "demo_chest_coco"
    coco = json.loads((root / "annotations.json").read_text())
    assert {"images", "annotations", "categories"} <= set(coco)
    assert len(coco["images"]) == 8
    cats = {c["id"] for c in coco["categories"]}
    images = {im["id"]: im for im in coco["images"]}
    for im in coco["images"]:
        with Image.open(root / im["file_name"]) as img:
            assert img.size == (im["width"], im["height"])
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert ann["category_id"] in cats
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= im["width"] and y + h <= im["height"]
    assert {a["image_id"] for a in coco["annotations"]} == set(images)


def test_endoscopy_voc_layout(demo: tuple[Path, Path]) -> None:
    root = demo[0] / "demo_endoscopy_voc"
    xmls = sorted((root / "Annotations").glob("*.xml"))
    jpgs = sorted((root / "JPEGImages").glob("*.jpg"))
    assert len(xmls) == len(jpgs) == 8
    assert [p.stem for p in xmls] == [p.stem for p in jpgs]
    n_objects = 0
    for xml in xmls:
        ann = ET.parse(xml).getroot()
        with Image.open(root / "JPEGImages" / ann.findtext("filename")) as img:
            assert img.format == "JPEG"
            assert img.size == (int(ann.findtext("size/width")), int(ann.findtext("size/height")))
        for obj in ann.iter("object"):
            n_objects += 1
            assert obj.findtext("name") == "polyp"
            b = {k: int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")}
            assert 1 <= b["xmin"] < b["xmax"] <= img.size[0]
            assert 1 <= b["ymin"] < b["ymax"] <= img.size[1]
    assert n_objects == 9  # one frame has two polyps


def test_skin_mask_pairs_layout(demo: tuple[Path, Path]) -> None:
    root = demo[0] / "demo_skin_masks"
    images = sorted(p.name for p in (root / "images").glob("*.png"))
    assert images == sorted(p.name for p in (root / "masks").glob("*.png"))
    assert len(images) == 8
    components = {}
    for name in images:
        img, mask = Image.open(root / "images" / name), np.asarray(Image.open(root / "masks" / name))
        assert img.size == mask.shape[::-1]
        assert set(np.unique(mask)) == {0, 1}
        components[name] = ndimage.label(mask)[1]
    assert sorted(components.values()) == [1] * 7 + [2]


def test_brain_msd_layout(demo: tuple[Path, Path]) -> None:
    import nibabel as nib

    root = demo[0] / "demo_brain_msd"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "grey matter", "2": "white matter"}
    assert meta["modality"] == {"0": "T1"}
    assert meta["numTraining"] == len(meta["training"]) == 3
    exts, arrays = set(), []
    for case in meta["training"]:
        img = sitk.ReadImage(str(root / case["image"]))
        lab = sitk.ReadImage(str(root / case["label"]))
        assert img.GetSize() == lab.GetSize()
        assert np.allclose(img.GetSpacing(), (2, 2, 2)) and np.allclose(img.GetOrigin(), lab.GetOrigin())
        labels = sitk.GetArrayFromImage(lab)
        assert set(np.unique(labels)) == {0, 1, 2}
        assert (labels == 1).sum() > 10_000 and (labels == 2).sum() > 10_000
        arrays.append(sitk.GetArrayFromImage(img))
        exts.add("".join(Path(case["image"]).suffixes))
    assert exts == {".nii.gz", ".mha", ".nrrd"}
    assert len({a.shape for a in arrays}) == 3  # different crops: not three copies of one volume
    nii = nib.load(root / meta["training"][0]["image"])  # the NIfTI case also reads with nibabel
    assert nii.shape == arrays[0].shape[::-1]


def test_ct_dicom_layout_and_quarantine_cases(demo: tuple[Path, Path]) -> None:
    root = demo[0] / "demo_ct_dicom"
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "label"]
    assert sorted(r["file"] for r in rows) == sorted(p.name for p in root.glob("*.dcm"))
    for r in rows:
        ds = pydicom.dcmread(root / r["file"])
        if r["file"] == DICOM_UNDECODABLE:  # declares no burned-in text: only its codec can fail it
            assert ds.BurnedInAnnotation == "NO"
            with pytest.raises(Exception):  # noqa: B017 - whatever the plugins raise: it must not decode
                _ = ds.pixel_array
        elif r["file"] == DICOM_BURNED_IN_RISK:
            assert ds.Modality == "US" and "BurnedInAnnotation" not in ds
            assert ds.pixel_array.ndim == 3
        else:
            assert ds.Modality == "CT"
            assert ds.pixel_array.ndim == 2


def test_dicom_files_carry_the_demo_phi(demo: tuple[Path, Path]) -> None:
    """The leak test downstream is only meaningful if the values are really in the headers."""
    files = sorted((demo[0] / "demo_ct_dicom").glob("*.dcm"))
    assert len(files) == 6
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword, value in DEMO_PHI_VALUES.items():
            assert str(ds.data_element(keyword).value) == value, (path.name, keyword)
        assert DEMO_PHI_VALUES["PatientName"].encode() in path.read_bytes()


# --------------------------------------------------------------------------- benchmarks


def _mmbench_rows(bench: Path) -> list[dict[str, str]]:
    with open(bench / "GMAI-MMBench" / "GMAI-MMBench_VAL.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _benchmark_images(bench: Path) -> dict[tuple[str, str], bytes]:
    """(benchmark, item id) -> image bytes, resolving VLMEvalKit's short back-references."""
    rows = _mmbench_rows(bench)
    by_index = {r["index"]: r["image"] for r in rows}
    out = {}
    for r in rows:
        cell = r["image"] if len(r["image"]) > 64 else by_index[r["image"]]
        out[("GMAI-MMBench_VAL", r["index"])] = base64.b64decode(cell)
    omni = bench / "OmniMedVQA"
    for qa in json.loads((omni / "QA_information" / "Open-access" / "DemoSet.json").read_text()):
        out[("OmniMedVQA", qa["question_id"])] = (omni / qa["image_path"]).read_bytes()
    return out


def test_mmbench_tsv_is_in_vlmevalkit_format(demo: tuple[Path, Path]) -> None:
    rows = _mmbench_rows(demo[1])
    cols = ["index", "image", "question", "A", "B", "C", "D", "E", "answer", "category", "department"]
    assert list(rows[0])[: len(cols)] == cols
    assert {"clinical vqa task", "perceptual granularity"} <= set(rows[0])
    refs = [r for r in rows if len(r["image"]) <= 64]
    assert len(refs) == 1
    target = next(r for r in rows if r["index"] == refs[0]["image"])
    assert len(target["image"]) > 64
    for r in rows:
        assert r["answer"] in "ABCDE" and r[r["answer"]]


def test_omnimedvqa_json_is_in_the_original_format(demo: tuple[Path, Path]) -> None:
    omni = demo[1] / "OmniMedVQA"
    qa = json.loads((omni / "QA_information" / "Open-access" / "DemoSet.json").read_text())
    keys = {"question_id", "question_type", "question", "gt_answer", "option_A", "option_B", "image_path"}
    for item in qa:
        assert keys <= set(item) and "modality_type" in item
        assert item["gt_answer"] in [item[k] for k in item if k.startswith("option_")]
        assert item["image_path"].startswith("Images/DemoSet/") and (omni / item["image_path"]).is_file()


def test_planted_items_match_their_training_files(demo: tuple[Path, Path]) -> None:
    raw, bench = demo
    images = _benchmark_images(bench)
    assert {p["method"] for p in PLANTED} == {"md5", "pixel", "phash"}
    for p in PLANTED:
        bench_bytes = images[(p["benchmark"], p["item_id"])]
        train_bytes = (raw / p["training_dataset"] / p["source_path"]).read_bytes()
        bench_img, train_img = Image.open(io.BytesIO(bench_bytes)), Image.open(io.BytesIO(train_bytes))
        bench_img.load()
        if p["method"] == "md5":
            assert bench_bytes == train_bytes, p
        else:
            assert bench_bytes != train_bytes, p
        if p["method"] == "pixel":
            assert np.array_equal(np.asarray(bench_img), np.asarray(train_img)), p
        if (
            p["method"] == "phash"
        ):  # re-encoded or resized: only that it decodes, and stays perceptually close
            assert bench_img.format == "JPEG"
            assert imagehash.dhash(bench_img) - imagehash.dhash(train_img) <= DHASH_THRESHOLD, p


def test_unplanted_benchmark_images_are_not_near_any_training_image(demo: tuple[Path, Path]) -> None:
    """False-positive bait: nothing but the planted items may be caught by decontamination."""
    raw, bench = demo
    train = {
        p: imagehash.dhash(Image.open(p))
        for pattern in ("*/*/*/*.jpg", "*/*.png", "*/JPEGImages/*.jpg", "*/images/*.png")
        for p in raw.glob(pattern)
    }
    assert len(train) == 12 + 12 + 8 + 8 + 8
    planted = {
        (p["benchmark"], p["item_id"]): raw / p["training_dataset"] / p["source_path"] for p in PLANTED
    }
    for key, data in _benchmark_images(bench).items():
        h = imagehash.dhash(Image.open(io.BytesIO(data)))
        near = {p for p, th in train.items() if h - th <= DHASH_THRESHOLD + 4}
        assert near == ({planted[key]} if key in planted else set()), key
    others = [i for i in read_all(bench, []) if i.benchmark not in ("GMAI-MMBench_VAL", "OmniMedVQA")]
    assert len(others) == 3 + 2 + 3 + 3 + 4  # VQA-RAD, SLAKE, PMC-VQA, PathVQA_TEST, MMMU: nothing planted
    for item in others:
        h = imagehash.dhash(Image.open(io.BytesIO(item.image_bytes)))
        assert not [p for p, th in train.items() if h - th <= DHASH_THRESHOLD + 4], item[:2]
