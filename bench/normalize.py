"""Normalization throughput per reader kind against the floor, and peak memory at 1x and 10x data.

    .venv/bin/python bench/normalize.py [--images 200] [--ct-shape 512 512 200] [--rss-images 200]

Data is generated in a temp folder: 512x512 grey PNGs and RGB JPEGs (smooth anatomy-like texture
plus noise, every file distinct), masks with 1-3 blobs, 512x512 CT DICOMs (from pydicom's CT_small
header), and one 512x512x200 CT volume with a 3-label mask (NIfTI). The `layout` reader runs on three
of its paths: `layout_table` (NIH ChestX-ray14's shape: PNGs in images_00N/images/, labels from
Data_Entry.csv), `layout_dicom` (RSNA Pneumonia's shape: stage_2_train_images/*.dcm named by a table)
and `layout_volume` (BTCV's shape: RawData/Training/img/img{id}.nii.gz + label/label{id}.nii.gz).

The floor is a bare loop over the same files doing the same per-image work the pipeline must do
and nothing else: every input read once and hashed once (what checking it against the manifest's
MD5 costs; for a copied image that hash is also its stored MD5); for PNG/JPEG that need no change,
read + validate + MD5 + write the bytes, where validate is what a copied image must pass since the
hardening issue (PNG: chunk CRCs and IEND with `Image.verify`, plus its image data inflated, as a
stream cut short inside a well-formed chunk passes `verify`; JPEG: libjpeg-turbo's strict decode at
1/8 scale, `simplejpeg`, as Pillow's lenient decode fills data that ends early with grey); for masks, also decode the mask and find its components; for
DICOM, decode + window + PNG level-1 encode + MD5 + write; for the volume, load + window + per-slice
components + PNG encode + MD5 + write. The legacy floor (`ratio_legacy_floor`) is the floor as it
was before those checks (PNG `verify` only, Pillow's 1/8 JPEG draft, inputs hashed only when
copied), kept so the cost of the checks themselves stays visible. The pipeline run is `normalize_source` (reader, checks,
label mapping, row building, atomic writes, Parquet); the manifest scan belongs to `source/<name>`
and is timed apart. The floor is one thread; the pipeline runs as deployed (2D image stores on
`min(4, cpus)` threads; `--workers 1` for a single-threaded comparison). Each side runs several times, alternating, best time kept; the CPU-time
ratio is printed too, as wall time on a shared machine is noisy. `--workdir /dev/shm` keeps disk
contention from other processes out of both sides alike.

Peak RSS: `normalize_source` in a fresh subprocess on N and 10N PNGs (the 10x set repeats the
pixels of the 1x set with a unique PNG text chunk per file, so every file is distinct bytes), and
on 1 and 10 small CT volumes; the child reads its peak RSS (VmHWM; `ru_maxrss` is also recorded,
but on Linux it keeps the forked parent's peak). The figure includes the Python +
Python import baseline of the domain modules (numpy, Pillow, pyarrow, scipy, nibabel, pydicom),
which is also reported; the child skips the package `__init__` (all Dagster definitions).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE = 512
WORKERS = [1]  # set from --workers
KINDS_2D = [
    "image_folder",
    "csv_labels",
    "coco",
    "voc",
    "yolo",
    "mask_pairs",
    "dicom",
    "layout_table",
    "layout_dicom",
]


# ------------------------------------------------------------------ data generation


_BASES: dict[tuple[int, int, bool], np.ndarray] = {}


def texture(seed: int, size: int = SIZE, rgb: bool = False) -> np.ndarray:
    """Distinct per seed and cheap: one of 16 base pictures, rolled by a seed-dependent offset."""
    key = (seed % 16, size, rgb)
    if key not in _BASES:
        _BASES[key] = _base_texture(seed % 16 + 1000 * rgb, size, rgb)
    k = seed // 16
    return np.roll(_BASES[key], (k * 37 % size, k * 91 % size + 1), axis=(0, 1))


def _base_texture(seed: int, size: int = SIZE, rgb: bool = False) -> np.ndarray:
    """A body-like blob with smooth structure and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy = 0.5 + rng.uniform(-0.1, 0.1), 0.5 + rng.uniform(-0.1, 0.1)
    body = np.exp(-(((x - cx) / 0.35) ** 2 + ((y - cy) / 0.42) ** 2) * 2)
    organs = sum(
        rng.uniform(0.2, 0.5)
        * np.exp(
            -(
                ((x - rng.uniform(0.3, 0.7)) ** 2 + (y - rng.uniform(0.3, 0.7)) ** 2)
                / rng.uniform(0.002, 0.01)
            )
        )
        for _ in range(5)
    )
    img = 200 * body + 80 * organs + 12 * np.sin(x * rng.uniform(20, 60)) + rng.normal(0, 6, (size, size))
    arr = np.clip(img, 0, 255).astype(np.uint8)
    if rgb:
        return np.stack(
            [arr, np.clip(arr * 0.8 + 30, 0, 255).astype(np.uint8), (arr * 0.6).astype(np.uint8)], axis=-1
        )
    return arr


def png_bytes(arr: np.ndarray, level: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def with_text_chunk(png: bytes, text: str) -> bytes:
    """The same PNG plus one tEXt chunk (valid CRC) before IEND: distinct bytes, same pixels."""
    data = b"Comment\x00" + text.encode()
    chunk = (
        struct.pack(">I", len(data))
        + b"tEXt"
        + data
        + struct.pack(">I", zlib.crc32(b"tEXt" + data) & 0xFFFFFFFF)
    )
    return png[:-12] + chunk + png[-12:]


def blob_mask(seed: int, size: int = SIZE) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    rng = np.random.default_rng(10_000 + seed)
    mask = np.zeros((size, size), np.uint8)
    boxes = []
    for k in range(int(rng.integers(1, 4))):
        r = int(rng.integers(20, 60))
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        y, x = np.ogrid[0:size, 0:size]
        mask[(x - cx) ** 2 + (y - cy) ** 2 <= r * r] = 1 + k % 2
        boxes.append((cx - r, cy - r, cx + r, cy + r))
    return mask, boxes


def gen_2d(base: Path, n: int) -> dict[str, Path]:
    """All 2D datasets; returns name -> folder."""
    from gmai_pipeline.catalog import load_vocabulary  # noqa: F401 (fail early if the package is broken)

    pngs = [png_bytes(texture(i)) for i in range(n)]
    jpgs = [jpeg_bytes(texture(100_000 + i, rgb=True)) for i in range(n)]
    out: dict[str, Path] = {}

    d = out["image_folder"] = base / "image_folder"
    for i, b in enumerate(pngs):
        (d / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        (d / f"class{i % 2}" / f"img_{i:05d}.png").write_bytes(b)

    d = out["csv_labels"] = base / "csv_labels"
    (d / "images").mkdir(parents=True)
    lines = ["image,label"]
    for i, b in enumerate(jpgs):
        (d / "images" / f"img_{i:05d}.jpg").write_bytes(b)
        lines.append(f"img_{i:05d}.jpg,class{i % 3}")
    (d / "labels.csv").write_text("\n".join(lines) + "\n")

    boxes = [[(40 + 7 * k, 60 + 5 * k, 200 + 9 * k, 220 + 3 * k) for k in range(2)] for _ in range(n)]
    d = out["coco"] = base / "coco"
    (d / "images").mkdir(parents=True)
    coco = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": "lesion"}, {"id": 2, "name": "tool"}],
    }
    for i, b in enumerate(jpgs):
        (d / "images" / f"img_{i:05d}.jpg").write_bytes(b)
        coco["images"].append({"id": i, "file_name": f"img_{i:05d}.jpg", "width": SIZE, "height": SIZE})
        for k, (x0, y0, x1, y1) in enumerate(boxes[i]):
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]),
                    "image_id": i,
                    "category_id": 1 + k,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                }
            )
    (d / "annotations.json").write_text(json.dumps(coco))

    d = out["voc"] = base / "voc"
    (d / "JPEGImages").mkdir(parents=True)
    (d / "Annotations").mkdir(parents=True)
    for i, b in enumerate(jpgs):
        (d / "JPEGImages" / f"img_{i:05d}.jpg").write_bytes(b)
        objs = "".join(
            f"<object><name>{'lesion' if k == 0 else 'tool'}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for k, (x0, y0, x1, y1) in enumerate(boxes[i])
        )
        (d / "Annotations" / f"img_{i:05d}.xml").write_text(
            f"<annotation><filename>img_{i:05d}.jpg</filename>{objs}</annotation>"
        )

    d = out["yolo"] = base / "yolo"
    (d / "images").mkdir(parents=True)
    (d / "labels").mkdir(parents=True)
    (d / "classes.txt").write_text("lesion\ntool\n")
    for i, b in enumerate(jpgs):
        (d / "images" / f"img_{i:05d}.jpg").write_bytes(b)
        rows = [
            f"{k} {(x0 + x1) / 2 / SIZE:.6f} {(y0 + y1) / 2 / SIZE:.6f} {(x1 - x0) / SIZE:.6f} {(y1 - y0) / SIZE:.6f}"
            for k, (x0, y0, x1, y1) in enumerate(boxes[i])
        ]
        (d / "labels" / f"img_{i:05d}.txt").write_text("\n".join(rows) + "\n")

    d = out["mask_pairs"] = base / "mask_pairs"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir(parents=True)
    for i, b in enumerate(pngs):
        (d / "images" / f"img_{i:05d}.png").write_bytes(b)
        (d / "masks" / f"img_{i:05d}.png").write_bytes(png_bytes(blob_mask(i)[0]))

    d = out["dicom"] = base / "dicom"
    d.mkdir(parents=True)
    import pydicom
    from pydicom.data import get_testdata_file

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    lines = ["file,label"]
    for i in range(n):
        hu = (texture(200_000 + i).astype(np.int16) * 6 - 1000).astype(np.int16)
        template.Rows, template.Columns = SIZE, SIZE
        template.RescaleSlope, template.RescaleIntercept = 1, 0
        template.PixelData = hu.tobytes()
        template.save_as(d / f"ct_{i:05d}.dcm")
        lines.append(f"ct_{i:05d}.dcm,abdomen")
    (d / "labels.csv").write_text("\n".join(lines) + "\n")

    d = out["layout_table"] = base / "layout_table"
    lines = ["Image Index,Finding Labels,Patient ID"]
    for i, b in enumerate(pngs):
        folder = d / f"images_{1 + i % 2:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:08d}_000.png").write_bytes(b)
        lines.append(f"{i:08d}_000.png,{('Effusion', 'Nodule', 'No Finding')[i % 3]},{i}")
    (d / "Data_Entry.csv").write_text("\n".join(lines) + "\n")

    d = out["layout_dicom"] = base / "layout_dicom" / "stage_2_train_images"
    d.mkdir(parents=True)
    lines = ["patientId,Target"]
    for src in sorted((base / "dicom").glob("*.dcm")):
        shutil.copy(src, d / src.name)
        lines.append(f"{src.stem},1")
    (d.parent / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    out["layout_dicom"] = d.parent
    return out


def ct_volume(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (HU) with a 3-label mask: two organs and a lesion."""
    rng = np.random.default_rng(seed)
    sx, sy, sz = shape
    x, y, z = np.ogrid[0:sx, 0:sy, 0:sz]
    nx, ny, nz = x / sx - 0.5, y / sy - 0.5, z / sz - 0.5
    body = (nx / 0.42) ** 2 + (ny / 0.36) ** 2 <= 1
    vol = np.full(shape, -1000, np.int16)
    vol[np.broadcast_to(body, shape)] = 30
    organ1 = ((nx + 0.15) / 0.14) ** 2 + ((ny - 0.05) / 0.12) ** 2 + (nz / 0.3) ** 2 <= 1
    organ2 = ((nx - 0.18) / 0.08) ** 2 + ((ny + 0.1) / 0.07) ** 2 + ((nz - 0.1) / 0.2) ** 2 <= 1
    lesion = ((nx + 0.12) / 0.03) ** 2 + ((ny - 0.03) / 0.03) ** 2 + ((nz + 0.05) / 0.05) ** 2 <= 1
    lab = np.zeros(shape, np.uint8)
    lab[organ1] = 1
    lab[organ2] = 2
    lab[lesion] = 3
    vol[organ1] = 60
    vol[organ2] = 45
    vol[lesion] = 90
    vol += rng.normal(0, 15, shape).astype(np.int16)
    return vol, lab


def gen_btcv(base: Path, shape: tuple[int, int, int]) -> Path:
    """BTCV's shape (RawData/Training/img/img0001.nii.gz, label/label0001.nii.gz) for the templated volume path."""
    import nibabel as nib

    d = base / "layout_volume" / "RawData" / "Training"
    (d / "img").mkdir(parents=True)
    (d / "label").mkdir(parents=True)
    vol, lab = ct_volume(shape, seed=0)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), str(d / "img" / "img0001.nii.gz"))
    nib.save(nib.Nifti1Image(lab, affine), str(d / "label" / "label0001.nii.gz"))
    return base / "layout_volume"


def gen_msd(base: Path, shape: tuple[int, int, int], cases: int = 1) -> Path:
    import nibabel as nib

    d = base / f"msd_{cases}"
    (d / "imagesTr").mkdir(parents=True)
    (d / "labelsTr").mkdir(parents=True)
    training = []
    for c in range(cases):
        vol, lab = ct_volume(shape, seed=c)
        affine = np.diag([0.8, 0.8, 2.5, 1.0])
        nib.save(nib.Nifti1Image(vol, affine), str(d / "imagesTr" / f"ct_{c:03d}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(d / "labelsTr" / f"ct_{c:03d}.nii.gz"))
        training.append({"image": f"./imagesTr/ct_{c:03d}.nii.gz", "label": f"./labelsTr/ct_{c:03d}.nii.gz"})
    (d / "dataset.json").write_text(
        json.dumps(
            {"labels": {"0": "background", "1": "liver", "2": "spleen", "3": "tumour"}, "training": training}
        )
    )
    return d


# ------------------------------------------------------------------ sources


LAYOUT_READERS = {
    "layout_table": {
        "kind": "layout",
        "images": "images_*/images/*.png",
        "table": {"file": "Data_Entry.csv", "image": "Image Index"},
        "label": {"column": "Finding Labels", "delimiter": "|"},
    },
    "layout_dicom": {
        "kind": "layout",
        "images": "stage_2_train_images/*.dcm",
        "table": {"file": "stage_2_train_labels.csv", "image": "patientId"},
        "label": {"column": "Target", "map": {"1": "abdomen"}},
    },
    "layout_volume": {
        "kind": "layout",
        "images": "RawData/Training/img/img{id}.nii.gz",
        "masks": "RawData/Training/label/label{id}.nii.gz",
    },
}


def source_for(kind: str, n_labels: int = 3):
    from gmai_pipeline.catalog import SourceDataset

    task = {
        "coco": "2d_det",
        "voc": "2d_det",
        "yolo": "2d_det",
        "mask_pairs": "2d_seg",
        "msd": "3d_seg",
        "layout_volume": "3d_seg",
    }.get(kind, "2d_cls")
    modality = {
        "dicom": "CT",
        "msd": "CT",
        "mask_pairs": "Dermoscopy",
        "layout_dicom": "CT",
        "layout_volume": "CT",
    }
    reader = LAYOUT_READERS.get(kind) or {
        "kind": kind,
        **({"image_dir": "images"} if kind in ("csv_labels", "coco") else {}),
    }
    return SourceDataset.model_validate(
        {
            "name": f"bench_{kind}",
            "title": f"bench {kind}",
            "license": "generated",
            "modality": modality.get(kind, "X-Ray"),
            "department": "Oncology",
            "task_type": task,
            "clinical_task": "Organ Recognition",
            "reader": reader,
            "provenance": {"source": "bench/normalize.py"},
        }
    )


# ------------------------------------------------------------------ floors (bare loops)


_MADE: set[Path] = set()


def _write(path: Path, data: bytes) -> None:
    if path.parent not in _MADE:
        path.parent.mkdir(parents=True, exist_ok=True)
        _MADE.add(path.parent)
    with open(path, "wb") as f:
        f.write(data)


def _png_inflate(data: bytes) -> None:
    """Inflate a PNG's image data, nothing kept: the bare form of the truncation check every copied
    PNG must pass (a stream cut short inside a well-formed chunk passes `Image.verify`)."""
    pos, parts = 8, []
    while pos + 8 <= len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if ctype == b"IDAT":
            parts.append(data[pos + 8 : pos + 8 + length])
        elif ctype == b"IEND":
            break
        pos += 12 + length
    zlib.decompress(b"".join(parts))


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _read(p: Path, legacy: bool) -> bytes:
    """An input's bytes; the floor hashes every input once (what checking it against the manifest
    costs), the legacy floor only where the output MD5 is the input's (copied images)."""
    data = p.read_bytes()
    if not legacy:
        _md5(data)
    return data


def _copy_floor(files: list[Path], out: Path, legacy: bool) -> int:
    import simplejpeg

    for p in files:
        data = p.read_bytes()
        im = Image.open(io.BytesIO(data))
        if im.format == "PNG":
            im.verify()  # chunk CRCs and IEND
            if not legacy:
                _png_inflate(data)  # image data complete
        elif legacy:
            im.draft(im.mode, (im.width // 8, im.height // 8))
            im.load()
        else:  # entropy-coded data complete: libjpeg-turbo, strict, at 1/8 scale
            simplejpeg.decode_jpeg(data, colorspace="GRAY", min_factor=8, strict=True)
        _md5(data)  # the stored image's MD5, which is the input's
        _write(out / p.name, data)
    return len(files)


def floor(kind: str, folder: Path, out: Path, legacy: bool = False) -> int:
    """The bare loop of `kind` (module docstring); `legacy`: the floor as defined before the hardening
    issue's checks (no PNG inflate, Pillow's lenient JPEG decode, inputs hashed only when copied)."""
    from gmai_pipeline.volumes import mask_boxes

    if kind in ("image_folder", "layout_table"):
        return _copy_floor(sorted(folder.rglob("*.png")), out, legacy)
    if kind in ("csv_labels", "coco", "yolo"):
        return _copy_floor(sorted((folder / "images").glob("*.jpg")), out, legacy)
    if kind == "voc":
        return _copy_floor(sorted((folder / "JPEGImages").glob("*.jpg")), out, legacy)
    if kind == "mask_pairs":
        files = sorted((folder / "images").glob("*.png"))
        for p in files:
            with Image.open(io.BytesIO(_read(folder / "masks" / p.name, legacy))) as m:
                mask_boxes(np.asarray(m), 0.00153, 16)
        return _copy_floor(files, out, legacy)
    if kind in ("dicom", "layout_dicom"):
        import pydicom
        from pydicom.pixels import apply_modality_lut

        files = sorted(folder.rglob("*.dcm"))
        for p in files:
            ds = pydicom.dcmread(io.BytesIO(_read(p, legacy)))
            arr = ds.pixel_array
            _md5(arr.tobytes())  # duplicates are judged on the decoded pixels
            hu = apply_modality_lut(arr, ds).astype(np.float32)
            img = (np.clip((hu + 1000.0) * (255.0 / 2000.0), 0, 255)).astype(np.uint8)
            data = png_bytes(img, 1)
            _md5(data)
            _write(out / (p.stem + ".png"), data)
        return len(files)
    if kind in ("msd", "layout_volume"):
        from gmai_pipeline.volumes import iter_slices, read_volume, volume_to_uint8

        count = 0
        images = sorted((folder / "imagesTr").glob("*.nii.gz")) or sorted(folder.rglob("img*.nii.gz"))
        for p in images:
            label = (
                folder / "labelsTr" / p.name
                if kind == "msd"
                else p.parent.parent / "label" / p.name.replace("img", "label")
            )
            for f in (label, p):
                _read(f, legacy)  # hashed once (the verified read), then decoded from the file
            lab = read_volume(label, label.name, is_label=True)
            img8 = volume_to_uint8(read_volume(p, p.name), (-1000.0, 1000.0))
            for sl in iter_slices(img8, lab, (0, 1, 2), 0.00153, 16):
                data = png_bytes(np.ascontiguousarray(sl.image), 1)
                _md5(data)
                _write(out / f"{p.name}_{sl.axis}{sl.index}.png", data)
                count += 1
        return count
    raise ValueError(kind)


def pipeline(kind: str, folder: Path, out: Path, manifest: list[dict]) -> tuple[int, int]:
    """(images written, inputs) by the real normalize_source."""
    from gmai_pipeline.normalize import normalize_source

    report = normalize_source(source_for(kind), folder, manifest, out, workers=WORKERS[0])
    assert report.quarantined == 0, report.by_reason
    images = report.rows if kind in VOLUME_KINDS else report.kept
    if kind in VOLUME_KINDS:
        import pyarrow.parquet as pq

        images = len(
            set(
                pq.read_table(out / "normalized" / f"bench_{kind}.parquet", columns=["image"])
                .column("image")
                .to_pylist()
            )
        )
    elif source_for(kind).task == "det":
        images = report.kept // 2
    return images, report.inputs


VOLUME_KINDS = ("msd", "layout_volume")


def timed(fn, *args) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result)."""
    t, c = time.perf_counter(), time.process_time()
    result = fn(*args)
    return time.perf_counter() - t, time.process_time() - c, result


def measure(kind: str, folder: Path, work: Path, repeats: int = 5) -> dict:
    """Alternate the floor, the legacy floor and the pipeline, keep the best of each (the machine may be shared)."""
    from gmai_pipeline.manifest import scan
    from gmai_pipeline.normalize import shown_names

    scan_s, _, manifest = timed(scan, folder, None, shown_names(source_for(kind)))
    sides = ("floor", "legacy", "pipe")
    best = {side: [float("inf"), float("inf")] for side in sides}
    counts = {}
    for r in range(repeats):
        for side in sides:
            shutil.rmtree(work, ignore_errors=True)
            _MADE.clear()
            if side == "pipe":
                wall, cpu, (n, _) = timed(pipeline, kind, folder, work / f"pipe{r}", manifest)
            else:
                wall, cpu, n = timed(floor, kind, folder, work / f"{side}{r}", side == "legacy")
            best[side] = [min(best[side][0], wall), min(best[side][1], cpu)]
            counts[side] = n
    shutil.rmtree(work, ignore_errors=True)
    assert len(set(counts.values())) == 1, (kind, counts)
    n = counts["pipe"]
    rate = {side: n / best[side][0] for side in sides}
    return {
        "kind": kind,
        "images": n,
        "floor_images_per_s": round(rate["floor"], 1),
        "pipeline_images_per_s": round(rate["pipe"], 1),
        "ratio": round(rate["pipe"] / rate["floor"], 3),
        "ratio_cpu_time": round(best["floor"][1] / best["pipe"][1], 3),
        "legacy_floor_images_per_s": round(rate["legacy"], 1),
        "ratio_legacy_floor": round(rate["pipe"] / rate["legacy"], 3),
        "manifest_scan_s": round(scan_s, 3),
    }


# ------------------------------------------------------------------ peak RSS in a child process


def child(kind: str, folder: str, out: str) -> None:
    # Import the domain modules only: the package __init__ loads every stage's Dagster definitions
    # (dagster, torch, ...), whose import peak (over 1 GiB) would hide the pipeline's own memory.
    import types

    pkg = types.ModuleType("gmai_pipeline")
    pkg.__path__ = [str(ROOT / "gmai_pipeline")]
    sys.modules["gmai_pipeline"] = pkg
    from gmai_pipeline.manifest import scan
    from gmai_pipeline.normalize import normalize_source, shown_names

    manifest = scan(Path(folder), shown=shown_names(source_for(kind)))
    base = peak_rss_kib()
    report = normalize_source(source_for(kind), Path(folder), manifest, Path(out))
    peak = peak_rss_kib()
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "baseline_kib": base,
                "peak_kib": peak,
                "ru_maxrss_kib": ru,
                "inputs": report.inputs,
                "rows": report.rows,
            }
        )
    )


def peak_rss_kib() -> int:
    """This process's peak RSS: VmHWM, which exec resets. Linux's ru_maxrss keeps the high-water mark of
    the parent's address space it was forked from, so a child of a big parent reads the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss(kind: str, folder: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(folder), str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(res.stdout.strip().splitlines()[-1])


def rss_pair(kind: str, small: Path, big: Path, work: Path) -> dict:
    a = rss(kind, small, work / "rss1")
    b = rss(kind, big, work / "rss10")
    shutil.rmtree(work, ignore_errors=True)
    return {
        "kind": kind,
        "inputs_1x": a["inputs"],
        "inputs_10x": b["inputs"],
        "peak_rss_mib_1x": round(a["peak_kib"] / 1024, 1),
        "peak_rss_mib_10x": round(b["peak_kib"] / 1024, 1),
        "import_baseline_mib": round(a["baseline_kib"] / 1024, 1),
        "ratio": round(b["peak_kib"] / a["peak_kib"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200, help="images per 2D dataset")
    ap.add_argument("--ct-shape", type=int, nargs=3, default=(512, 512, 200))
    ap.add_argument(
        "--rss-images", type=int, default=200, help="PNGs in the 1x RSS set (10x has ten times more)"
    )
    ap.add_argument("--rss-ct-shape", type=int, nargs=3, default=(192, 192, 96))
    ap.add_argument("--kinds", nargs="*", default=None, help="only these reader kinds")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument(
        "--workers", type=int, default=None, help="pipeline threads (default: the pipeline's own default)"
    )
    ap.add_argument("--repeats", type=int, default=5, help="runs per side for 2D kinds (best kept)")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="where to generate and write (default: $TMPDIR)"
    )
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return

    started = time.perf_counter()
    from gmai_pipeline.normalize import DEFAULT_WORKERS

    WORKERS[0] = args.workers or DEFAULT_WORKERS
    kinds = [] if args.skip_throughput else args.kinds or [*KINDS_2D, *VOLUME_KINDS]
    results: dict = {
        "pipeline_workers": WORKERS[0],
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "throughput": [],
        "rss": [],
    }
    with tempfile.TemporaryDirectory(prefix="gmai-bench-", dir=args.workdir) as tmp:
        base = Path(tmp)
        t = time.perf_counter()
        folders = gen_2d(base / "data", args.images) if any(k not in VOLUME_KINDS for k in kinds) else {}
        if "msd" in kinds:
            folders["msd"] = gen_msd(base / "data", tuple(args.ct_shape))
        if "layout_volume" in kinds:
            folders["layout_volume"] = gen_btcv(base / "data", tuple(args.ct_shape))
        print(f"generated data in {time.perf_counter() - t:.1f}s")
        print(
            f"{'kind':<14}{'images':>8}{'floor/s':>10}{'pipeline/s':>12}{'ratio':>8}{'cpu ratio':>11}"
            f"{'legacy/s':>10}{'vs legacy':>11}"
        )
        for kind in kinds:
            row = measure(kind, folders[kind], base / "work", 2 if kind in VOLUME_KINDS else args.repeats)
            results["throughput"].append(row)
            print(
                f"{kind:<14}{row['images']:>8}{row['floor_images_per_s']:>10}{row['pipeline_images_per_s']:>12}"
                f"{row['ratio']:>8}{row['ratio_cpu_time']:>11}{row['legacy_floor_images_per_s']:>10}"
                f"{row['ratio_legacy_floor']:>11}"
            )

        if not args.skip_rss:
            small, big = base / "rss" / "x1", base / "rss" / "x10"
            pngs = [png_bytes(texture(500_000 + i)) for i in range(args.rss_images)]
            for i in range(args.rss_images * 10):
                for folder, limit in ((small, args.rss_images), (big, None)):
                    if limit is None or i < limit:
                        p = folder / f"c{i % 2}" / f"{i:06d}.png"
                        p.parent.mkdir(parents=True, exist_ok=True)
                        p.write_bytes(with_text_chunk(pngs[i % args.rss_images], f"copy {i}"))
            results["rss"].append(rss_pair("image_folder", small, big, base / "work"))
            shape = tuple(args.rss_ct_shape)
            results["rss"].append(
                rss_pair(
                    "msd",
                    gen_msd(base / "rss3d", shape, 1),
                    gen_msd(base / "rss3d10", shape, 10),
                    base / "work",
                )
            )
            for r in results["rss"]:
                print(
                    f"peak RSS {r['kind']}: {r['peak_rss_mib_1x']} MiB at {r['inputs_1x']} inputs, "
                    f"{r['peak_rss_mib_10x']} MiB at {r['inputs_10x']} (ratio {r['ratio']}; import baseline {r['import_baseline_mib']} MiB)"
                )
    two_d = [r for r in results["throughput"] if r["kind"] not in VOLUME_KINDS]
    every = results["throughput"]
    results["acceptance"] = {
        "2d_ratio_min": min((r["ratio"] for r in two_d), default=None),
        "2d_all_at_least_0.8": all(r["ratio"] >= 0.8 for r in two_d),
        "ratio_min": min((r["ratio"] for r in every), default=None),
        "all_kinds_at_least_0.8": all(r["ratio"] >= 0.8 for r in every),
        "rss_all_within_1.2": all(r["ratio"] <= 1.2 for r in results["rss"]) if results["rss"] else None,
    }
    results["args"] = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in vars(args).items()
        if k not in ("child", "results")
    }
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.results.mkdir(parents=True, exist_ok=True)
    name = "cpu" if not os.environ.get("CUDA_VISIBLE_DEVICES") else socket.gethostname().split(".")[0]
    target = args.results / f"normalize-{name}.json"
    target.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(
        json.dumps(results["acceptance"]),
        f"-> {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}",
    )
    print(f"total {results['seconds']}s")


if __name__ == "__main__":
    main()
