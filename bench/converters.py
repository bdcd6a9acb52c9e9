"""The converters through the catalog reader against a bare decode/encode loop, and the peak memory of
normalizing a 20k x 20k slide.

    .venv/bin/python bench/converters.py [--workdir /dev/shm] [--slide-side 20480] [--repeats 3]

Each path lays a dataset out at its real relative paths, declares it as the catalog does (`kind:
layout` with `convert:`), scans the manifest once (the `source/<name>` asset's work, not timed), and
times `normalize_source` (the layout reader, the converter, verified reads, checks, label mapping,
rows, atomic writes, Parquet) against its floor: a bare loop over the same files doing the same
decode and encode work the pipeline must do and nothing else. Both sides read every input once and
hash it once (what checking it against the manifest's MD5 costs), and end every stored image in the
same PNG encode (level 1) + MD5 + write. Best of `--repeats`, alternating sides; `ratio` = floor time /
pipeline time (1.0 = as fast as the bare loop), also per CPU second, as wall time on a shared
machine is noisy.

- dicom_series: CHAOS's layout, one CT series of 120 slices 512 x 512 (pydicom's CT_small header,
  shuffled names) + 120 `Ground/*.png` masks. Floor: read + MD5 + dcmread + pixel_array + modality
  LUT per file in a known order, the masks likewise, stack, window, components of each slice, encode.
- polygons: MoNuSeg's layout, 20 images 1000 x 1000 RGB TIFF with Aperio XML of 600 nuclei each.
  Floor: read + MD5 + decode the image, ElementTree + `skimage.draw.polygon` per region into an
  instance map + `find_objects`, encode the image.
- rle: SIIM-ACR's shape, 400 PNG images 1024 x 1024 and a table of column-major RLE (1-3 blobs per
  image, one row each). Floor: read + MD5 + the copy checks a PNG must pass (CRCs, IEND, inflate),
  the common Kaggle `rle_decode` per row, components, write the bytes.
- hdf5: PCam's files, 8,192 patches (96 x 96 x 3, 64-row chunks, 226 MB) + labels. Floor: MD5 of both
  files, h5py slices of 1,024 rows, encode each patch.
- wsi: a `--slide-side` square pyramidal TIFF (Aperio layout, 40x, levels 1/4/16, deflate tiles of
  256) with an ASAP XML of 48 lesions; tiles of 512 at 20x (level 0 read at 1024 and resized: the
  common worst case). Floor: MD5 of the slide, `read_region` + RGB + resize at the same positions,
  encode (decode and encode only: the pipeline's per-tile masks and boxes are on its side alone).
  Peak RSS: a child process normalizes the slide as a 2d_cls entry (every region tile plus up to 16
  background tiles) and reports VmHWM before and after; the bound stated is 256 MiB of growth,
  against 1.2 GB for the decoded level 0.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import random
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

WSI_RSS_BOUND = 256 << 20
PATHOLOGY = {"modality": "Pathology", "department": "Laboratory Medicine and Pathology"}


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def read(p: Path) -> bytes:
    """An input's bytes, hashed once: what checking it against the manifest costs."""
    data = p.read_bytes()
    md5(data)
    return data


def hash_file(p: Path) -> None:
    h = hashlib.md5(usedforsecurity=False)
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def store(arr: np.ndarray, out: Path, name: str) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, "PNG", compress_level=1)
    data = buf.getvalue()
    md5(data)
    (out / name).write_bytes(data)


def source(name: str, task: str, reader: dict, **fields):
    from gmai_pipeline.catalog import SourceDataset

    modality = fields.pop("modality", "CT")
    department = fields.pop("department", "Oncology")
    clinical = {"3d_seg": "Organ Recognition", "2d_seg": "Lesion Detection", "2d_cls": "Disease Diagnosis"}
    return SourceDataset.model_validate(
        {
            "name": name,
            "title": name,
            "license": "unknown",
            "modality": modality,
            "department": department,
            "task_type": task,
            "clinical_task": clinical[task],
            "reader": reader,
            "provenance": {"source": "bench"},
            **fields,
        }
    )


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def compare(name: str, items: int, unit: str, src, folder: Path, work: Path, floor, repeats: int) -> dict:
    """Best of `repeats` for the floor and for `normalize_source` on `src`, alternating."""
    from gmai_pipeline.manifest import scan
    from gmai_pipeline.normalize import normalize_source, shown_names

    t0 = time.perf_counter()
    manifest = scan(folder, shown=shown_names(src))
    scan_s = time.perf_counter() - t0
    best = {"floor": (math.inf, math.inf), "pipeline": (math.inf, math.inf)}
    reports = []
    for r in range(repeats):
        out_f, out_p = work / f"floor{r}", work / f"out{r}"
        out_f.mkdir()

        def pipeline(out_p=out_p) -> None:
            reports.append(normalize_source(src, folder, manifest, out_p))

        for side, fn in (("floor", lambda out_f=out_f: floor(out_f)), ("pipeline", pipeline)):
            best[side] = min(best[side], timed(fn))
        shutil.rmtree(out_f, ignore_errors=True)
        shutil.rmtree(out_p, ignore_errors=True)
    report = reports[-1]
    assert report.quarantined == 0 and report.kept, (name, report.by_reason)
    f, p = best["floor"], best["pipeline"]
    row = {
        "path": name,
        "items": items,
        "unit": unit,
        "inputs": report.inputs,
        "rows": report.rows,
        f"floor_{unit}_per_s": round(items / f[0], 1),
        f"pipeline_{unit}_per_s": round(items / p[0], 1),
        "ratio": round(f[0] / p[0], 3),
        "ratio_cpu_time": round(f[1] / p[1], 3),
        "manifest_scan_s": round(scan_s, 2),
    }
    print(json.dumps(row), flush=True)
    return row


# ------------------------------------------------------------------ dicom_series


def bench_dicom(work: Path, repeats: int) -> dict:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut
    from pydicom.uid import generate_uid

    from gmai_pipeline.volumes import iter_slices, volume_to_uint8

    folder = work / "chaos"
    case = folder / "Train_Sets" / "CT" / "1"
    (case / "DICOM_anon").mkdir(parents=True)
    (case / "Ground").mkdir()
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uid, n = generate_uid(), 120
    rng = np.random.default_rng(0)
    names = sorted(random.Random(0).sample(range(10_000), n))
    ranks = random.Random(1).sample(range(n), n)  # name order is not position order
    yy, xx = np.mgrid[0:512, 0:512]
    by_position = []
    for k in range(n):
        d = template.copy()
        d.SeriesInstanceUID, d.SOPInstanceUID = uid, generate_uid()
        d.Rows = d.Columns = 512
        d.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        d.ImagePositionPatient = [-170.0, -170.0, 2.5 * k]
        body = 1000 + 400 * np.exp(-(((xx - 256) / 180.0) ** 2 + ((yy - 256) / 140.0) ** 2) * 2)
        d.PixelData = (body + rng.normal(0, 20, (512, 512)) + 3 * k).astype(np.int16).tobytes()
        name = f"i{names[ranks[k]]:04d},0000b.dcm"
        d.save_as(case / "DICOM_anon" / name)
        m = np.zeros((512, 512), np.uint8)
        m[200 + k % 40 : 300 + k % 40, 150:330] = 255
        Image.fromarray(m).save(case / "Ground" / f"liver_GT_{ranks[k]:03d}.png")
        by_position.append((case / "DICOM_anon" / name, case / "Ground" / f"liver_GT_{ranks[k]:03d}.png"))
    window = (-1000.0, 1000.0)

    def floor(out: Path) -> None:
        vol = np.empty((512, 512, n), np.float32)
        lab = np.empty((512, 512, n), np.uint8)
        for k, (p, m) in enumerate(by_position):
            ds = pydicom.dcmread(io.BytesIO(read(p)))
            vol[:, :, k] = apply_modality_lut(ds.pixel_array, ds).astype(np.float32).T
            with Image.open(io.BytesIO(read(m))) as im:
                lab[:, :, k] = np.asarray(im).T
        img = volume_to_uint8(vol, window)
        for sl in iter_slices(img, lab, (2,), 0.00153, 16):
            store(sl.image, out, f"z{sl.index}.png")

    src = source(
        "bench_chaos",
        "3d_seg",
        {
            "kind": "layout",
            "root": "Train_Sets",
            "images": "CT/{case}/DICOM_anon/*.dcm",
            "masks": "CT/{case}/Ground/*.png",
            "axes": [2],
            "ct_window": [0, 2000],
            "convert": {"kind": "dicom_series", "mask": {"kind": "slices", "match": "file_order"}},
        },
        labels={"255": "liver"},
    )
    return compare("dicom_series", n, "slices", src, folder, work, floor, repeats)


# ------------------------------------------------------------------ polygons


def bench_polygons(work: Path, repeats: int) -> dict:
    import xml.etree.ElementTree as ET

    from scipy import ndimage
    from skimage.draw import polygon as draw_polygon

    folder = work / "monuseg"
    train = folder / "MoNuSeg 2018 Training Data"
    (train / "Tissue Images").mkdir(parents=True)
    (train / "Annotations").mkdir()
    pairs = []
    for i in range(20):
        rng = np.random.default_rng(i)
        regions = []
        for r_id in range(600):
            cx, cy = rng.uniform(15, 985, 2)
            t = np.sort(rng.uniform(0, 2 * np.pi, 20))
            rad = rng.uniform(5, 12) * rng.uniform(0.8, 1.2, 20)
            verts = "".join(
                f'<Vertex X="{cx + r * np.cos(a):.3f}" Y="{cy + r * np.sin(a):.3f}" />'
                for a, r in zip(t, rad, strict=True)
            )
            regions.append(
                f'<Region Id="{r_id + 1}" Type="0" NegativeROA="0"><Vertices>{verts}</Vertices></Region>'
            )
        xml = train / "Annotations" / f"TCGA-{i:02d}.xml"
        xml.write_text(
            f'<Annotations><Annotation Id="1" Name=""><Regions>{"".join(regions)}</Regions></Annotation></Annotations>'
        )
        y, x = np.mgrid[0:1000, 0:1000]
        base = 150 + 60 * np.sin(x / (9 + i)) * np.cos(y / 11) + rng.normal(0, 8, (1000, 1000))
        rgb = np.clip(np.stack([base, base * 0.6, base * 0.9], -1), 0, 255).astype(np.uint8)
        tif = train / "Tissue Images" / f"TCGA-{i:02d}.tif"
        Image.fromarray(rgb).save(tif)
        pairs.append((tif, xml))

    def floor(out: Path) -> None:
        for tif, xml in pairs:
            with Image.open(io.BytesIO(read(tif))) as im:
                im.load()
                rgb = np.asarray(im)
            inst = np.zeros((1000, 1000), np.uint16)
            for k, reg in enumerate(ET.parse(io.BytesIO(read(xml))).getroot().iter("Region"), start=1):
                pts = np.array([(float(v.get("X")), float(v.get("Y"))) for v in reg.iter("Vertex")])
                rr, cc = draw_polygon(pts[:, 1] - 0.5, pts[:, 0] - 0.5, shape=inst.shape)
                inst[rr, cc] = k
            ndimage.find_objects(inst)
            store(rgb, out, tif.stem + ".png")

    src = source(
        "bench_monuseg",
        "2d_seg",
        {
            "kind": "layout",
            "images": "MoNuSeg 2018 Training Data/Tissue Images/{id}.tif",
            "masks": "MoNuSeg 2018 Training Data/Annotations/{id}.xml",
            "min_component_pixels": 1,
            "convert": {"kind": "polygons", "format": "aperio_xml", "instances": True},
        },
        labels={"1": "nucleus"},
        **PATHOLOGY,
    )
    return compare("polygons", len(pairs), "images", src, folder, work, floor, repeats)


# ------------------------------------------------------------------ rle


def kaggle_rle_decode(mask_rle: str, shape: tuple[int, int]) -> np.ndarray:
    s = mask_rle.split()
    starts, lengths = (np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2]))
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends, strict=True):
        img[lo:hi] = 1
    return img.reshape((shape[1], shape[0])).T


def png_inflate(data: bytes) -> None:
    """The copy checks a stored PNG must pass (the bare form): CRCs and IEND (`verify`), image data inflated."""
    Image.open(io.BytesIO(data)).verify()
    pos, parts = 8, []
    while pos + 8 <= len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if ctype == b"IDAT":
            parts.append(data[pos + 8 : pos + 8 + length])
        elif ctype == b"IEND":
            break
        pos += 12 + length
    zlib.decompress(b"".join(parts))


def bench_rle(work: Path, repeats: int) -> dict:
    from gmai_pipeline.converters.rle import encode
    from gmai_pipeline.volumes import mask_boxes

    folder = work / "siim"
    (folder / "png_images").mkdir(parents=True)
    yy, xx = np.mgrid[0:1024, 0:1024]
    lines = ["ImageId,EncodedPixels"]
    images = []
    for i in range(400):
        rng = np.random.default_rng(i)
        m = np.zeros((1024, 1024), bool)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.integers(150, 874, 2)
            rx, ry = rng.integers(30, 140, 2)
            m |= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        img = np.clip(120 + 50 * np.sin(xx / (13 + i % 7)) + rng.normal(0, 5, (1024, 1024)), 0, 255).astype(
            np.uint8
        )
        p = folder / "png_images" / f"img{i:04d}.png"
        Image.fromarray(img).save(p, compress_level=1)
        images.append(p)
        lines.append(f"img{i:04d},{encode(m, order='column')}")
    (folder / "train-rle.csv").write_text("\n".join(lines) + "\n")
    texts = [line.split(",", 1)[1] for line in lines[1:]]

    def floor(out: Path) -> None:
        read(folder / "train-rle.csv")
        for p, t in zip(images, texts, strict=True):
            data = read(p)
            png_inflate(data)
            mask_boxes(kaggle_rle_decode(t, (1024, 1024)), 0.00153, 16)
            (out / p.name).write_bytes(data)

    src = source(
        "bench_siim",
        "2d_seg",
        {
            "kind": "layout",
            "images": "png_images/{id}.png",
            "table": {"file": "train-rle.csv", "join": {"column": "ImageId", "field": "id"}},
            "label": "pneumothorax",
            "convert": {"kind": "rle", "column": "EncodedPixels", "order": "column", "start": 1},
        },
        modality="X-Ray",
        department="Pulmonary Medicine",
    )
    return compare("rle", len(images), "images", src, folder, work, floor, repeats)


# ------------------------------------------------------------------ hdf5


def bench_hdf5(work: Path, repeats: int) -> dict:
    import h5py

    n = 8192
    folder = work / "pcam"
    folder.mkdir()
    xp = folder / "camelyonpatch_level_2_split_train_x.h5"
    yp = folder / "camelyonpatch_level_2_split_train_y.h5"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (64, 96, 96, 3), dtype=np.uint8)
    with h5py.File(xp, "w") as f:
        x = f.create_dataset("x", (n, 96, 96, 3), np.uint8, chunks=(64, 96, 96, 3))
        for b in range(0, n, 64):
            x[b : b + 64] = np.roll(base, b, axis=1)
    with h5py.File(yp, "w") as f:
        f.create_dataset("y", data=(np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1))

    def floor(out: Path) -> None:
        hash_file(xp)
        hash_file(yp)
        with h5py.File(xp, "r") as f, h5py.File(yp, "r") as g:
            for b in range(0, n, 1024):
                block, labels = f["x"][b : b + 1024], g["y"][b : b + 1024]
                for i in range(block.shape[0]):
                    store(block[i], out, f"{b + i}.png")
                    int(labels[i].reshape(-1)[0])

    src = source(
        "bench_pcam",
        "2d_cls",
        {
            "kind": "layout",
            "images": "camelyonpatch_level_2_split_{split}_x.h5",
            "split": "{split}",
            "convert": {"kind": "hdf5", "labels_file": "camelyonpatch_level_2_split_{split}_y.h5"},
        },
        labels={"0": "normal", "1": "metastatic tissue"},
        **PATHOLOGY,
    )
    return compare("hdf5", n, "patches", src, folder, work, floor, repeats)


# ------------------------------------------------------------------ wsi


def write_big_slide(path: Path, side: int) -> list:
    """A 40x Aperio-layout pyramid written tile by tile (the generator never holds a level in memory),
    and 48 lesion outlines inside its tissue (rings of 40 vertices)."""
    import tifffile

    tile = 256
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:tile, 0:tile]
    textures = []
    for k in range(16):
        base = np.stack(
            [
                170 + 30 * np.sin(xx / (7 + k) + k),
                70 + 25 * np.cos(yy / (5 + k)),
                160 + 20 * np.sin((xx + yy) / (9 + k)),
            ],
            axis=-1,
        )
        textures.append(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))
    glass = np.full((tile, tile, 3), 242, np.uint8)

    def tissue(x: float, y: float) -> bool:  # a slide-sized blob of tissue, glass around it
        u, v = x / side - 0.5, y / side - 0.5
        return (u / 0.42) ** 2 + (v / 0.36) ** 2 <= 1

    def tiles(level_side: int, ds: int):
        for ty in range(math.ceil(level_side / tile)):
            for tx in range(math.ceil(level_side / tile)):
                cx, cy = (tx + 0.5) * tile * ds, (ty + 0.5) * tile * ds
                yield textures[(tx * 7 + ty * 3) % 16] if tissue(cx, cy) else glass

    desc = f"Aperio Image Library v12.0.15\r\n{side}x{side} [0,0 {side}x{side}] (256x256) RGB|AppMag = 40|MPP = 0.25"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, ds in enumerate((1, 4, 16)):
            level_side = side // ds
            tw.write(
                tiles(level_side, ds),
                shape=(level_side, level_side, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                compressionargs={"level": 1},
                description=desc if i == 0 else None,
                metadata=None,
                subfiletype=0 if i == 0 else 1,
            )
    rings = []
    r2 = np.random.default_rng(1)
    while len(rings) < 48:
        cx, cy = r2.uniform(0.15, 0.85, 2) * side
        if not tissue(cx, cy):
            continue
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        rad = r2.uniform(750, 1500) * r2.uniform(0.8, 1.2, 40)
        rings.append(np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=1))
    return rings


def asap(path: Path, rings: list) -> None:
    anns = []
    for i, ring in enumerate(rings):
        c = "".join(f'<Coordinate Order="{k}" X="{x:.2f}" Y="{y:.2f}" />' for k, (x, y) in enumerate(ring))
        anns.append(
            f'<Annotation Name="Annotation {i}" Type="Polygon" PartOfGroup="Tumor"><Coordinates>{c}</Coordinates></Annotation>'
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<ASAP_Annotations><Annotations>{''.join(anns)}</Annotations></ASAP_Annotations>")


def wsi_source(task: str):
    convert = {"kind": "wsi", "magnification": 20, "tile_size": 512, "annotations": {"format": "asap_xml"}}
    if task == "2d_cls":
        convert |= {"background_tiles": 16, "background_label": "normal"}
    return source(
        f"bench_camelyon16_{task[3:]}",
        task,
        {
            "kind": "layout",
            "images": "training/{group}/{slide}.tif",
            "masks": "lesion_annotations/{slide}.xml",
            "convert": convert,
        },
        labels={"Tumor": "metastasis", "normal": "normal"},
        **PATHOLOGY,
    )


WSI_CHILD = r"""
import json, sys
from pathlib import Path
root, folder, out = sys.argv[1:4]
sys.path.insert(0, root)
sys.path.insert(0, root + "/bench")
from converters import wsi_source
from gmai_pipeline.manifest import scan
from gmai_pipeline.normalize import normalize_source
import openslide, PIL.Image, numpy, pyarrow  # libraries before the baseline, not the data
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
src = wsi_source("2d_cls")
manifest = scan(Path(folder))
base = hwm()
report = normalize_source(src, Path(folder), manifest, Path(out))
print(json.dumps({"kept": report.kept, "inputs": report.inputs, "background": report.counters["background_tiles"],
                  "region": report.counters["region_tiles"], "base": base, "peak": hwm()}))
"""


def bench_wsi(work: Path, repeats: int, side: int) -> tuple[dict, dict]:
    import openslide

    from gmai_pipeline.converters.polygons import read_asap_xml
    from gmai_pipeline.converters.wsi import WsiOptions, plan, scale, slide_info

    folder = work / "camelyon16"
    path = folder / "training" / "tumor" / "tumor_001.tif"
    path.parent.mkdir(parents=True)
    t0 = time.perf_counter()
    rings = write_big_slide(path, side)
    asap(folder / "lesion_annotations" / "tumor_001.xml", rings)
    print(
        f"slide {side}x{side} written in {time.perf_counter() - t0:.1f}s ({path.stat().st_size >> 20} MiB)",
        flush=True,
    )
    shapes = read_asap_xml(folder / "lesion_annotations" / "tumor_001.xml", "x").shapes
    opts = WsiOptions(magnification=20, tile_size=512)
    slide = openslide.OpenSlide(str(path))
    info = slide_info(slide)
    factor, level = scale(info, opts, "slide")
    specs = plan(info, shapes, opts, factor, level).tiles
    slide.close()

    def floor(out: Path) -> None:
        hash_file(path)
        read(folder / "lesion_annotations" / "tumor_001.xml")
        s = openslide.OpenSlide(str(path))
        for sp in specs:
            region = s.read_region((sp.x, sp.y), level, (1024, 1024)).convert("RGB")
            store(
                np.asarray(region.resize((512, 512), Image.Resampling.LANCZOS, reducing_gap=3.0)),
                out,
                f"{sp.x}_{sp.y}.png",
            )
        s.close()

    row = compare("wsi", len(specs), "tiles", wsi_source("2d_seg"), folder, work, floor, repeats)
    out = subprocess.run(
        [sys.executable, "-c", WSI_CHILD, str(ROOT), str(folder), str(work / "rss-out")],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    rss = {
        "slide_side_px": side,
        "slide_decoded_level0_mib": round(side * side * 3 / 2**20, 1),
        "slide_file_mib": round(path.stat().st_size / 2**20, 1),
        "tiles_kept": got["kept"],
        "region_tiles": got["region"],
        "background_tiles": got["background"],
        "baseline_rss_mib": round(got["base"] / 2**20, 1),
        "peak_rss_mib": round(got["peak"] / 2**20, 1),
        "growth_mib": round((got["peak"] - got["base"]) / 2**20, 1),
        "bound_growth_mib": WSI_RSS_BOUND >> 20,
        "within_bound": got["peak"] - got["base"] <= WSI_RSS_BOUND,
    }
    print(json.dumps(rss), flush=True)
    return row, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--slide-side", type=int, default=20480)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None, help="paths to run (dicom polygons rle hdf5 wsi)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "converters-cpu.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-converters-", dir=args.workdir))
    results: dict = {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "repeats": args.repeats,
        "measures": "normalize_source (layout reader + converter) vs a bare decode/encode loop",
        "throughput": [],
    }
    paths = {"dicom": bench_dicom, "polygons": bench_polygons, "rle": bench_rle, "hdf5": bench_hdf5}
    try:
        for name, fn in paths.items():
            if args.only is None or name in args.only:
                (work / name).mkdir()
                results["throughput"].append(fn(work / name, args.repeats))
        if args.only is None or "wsi" in args.only:
            (work / "wsi").mkdir()
            row, rss = bench_wsi(work / "wsi", args.repeats, args.slide_side)
            results["throughput"].append(row)
            results["wsi_peak_memory"] = rss
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_average_at_end"] = os.getloadavg()
    if args.only is not None and args.results.exists():  # a partial run updates its paths in place
        old = json.loads(args.results.read_text())
        mine = {r["path"] for r in results["throughput"]}
        old["throughput"] = [r for r in old["throughput"] if r["path"] not in mine] + results["throughput"]
        old.setdefault("reruns", []).append(
            {"paths": sorted(mine), "load_average_at_start": results["load_average_at_start"]}
        )
        if "wsi_peak_memory" in results:
            old["wsi_peak_memory"] = results["wsi_peak_memory"]
        results = old
    args.results.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.results.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(args.results)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
