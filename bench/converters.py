"""Converter throughput against a bare decode/encode loop, and peak memory tiling a 20k x 20k slide.

    .venv/bin/python bench/converters.py [--workdir /dev/shm] [--slide-side 20480] [--repeats 3]

Each path is timed against its floor, a bare loop over the same inputs doing the same decode and
encode work with no checks, no bookkeeping and no validation (as the usual public snippets do it);
both sides end in the same PNG encode (level 1) + MD5 a stored image costs. Best of `--repeats`,
alternating sides; `ratio` = floor time / converter time (1.0 = as fast as the bare loop), also per
CPU second, as wall time on a shared machine is noisy.

- dicom_series: 120 CT slices 512 x 512 (pydicom's CT_small.dcm header), shuffled names.
  Floor: dcmread + pixel_array + slope/intercept per file in a known order, stack, window, encode
  each axial slice. Converter: `scan` (headers only) + `load` (checks, position order, affine,
  canonical RAS) + the same window and encode.
- polygons: 20 MoNuSeg-sized images (1000 x 1000, 600 nuclei each, Aperio XML). Floor: ElementTree
  + `skimage.draw.polygon` per region into a full-size instance map + `find_objects`, encode the map.
  Converter: `read_aperio_xml` + `rasterize(instances=True)` + `instance_boxes`, same encode.
- rle: 400 SIIM-sized masks (1024 x 1024, 1-3 blobs). Floor: the common Kaggle `rle_decode` (a Python
  loop over runs) and `mask2rle` (numpy diff). Converter: `decode` (validated, vectorised) + `encode`.
- hdf5: 8,192 PCam patches (96 x 96 x 3, 64-row chunks, 226 MB). Floor: h5py slices of 1,024 rows,
  encode each patch. Converter: `iter_records` (checks, chunk-aligned blocks) + the same encode.
- wsi: a `--slide-side` square pyramidal TIFF (Aperio layout, 40x, levels 1/4/16, deflate tiles of
  256), 48 lesion polygons; tiles of 512 at 20x (level 0 read at 1024 and resized: the common worst
  case). Floor: `read_region` + RGB + resize at the same positions. Converter: `iter_tiles` (plan,
  per-tile mask rasterising and boxes) + the same encode. Peak RSS: a child process tiles the whole
  slide (every region tile plus 16 background tiles) and reports VmHWM before and after; the bound
  stated is 256 MiB of growth, against 1.2 GB for the decoded level 0.
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
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if "gmai_pipeline" not in sys.modules:  # the domain modules only, not every stage's Dagster definitions
    _pkg = types.ModuleType("gmai_pipeline")
    _pkg.__path__ = [str(ROOT / "gmai_pipeline")]
    sys.modules["gmai_pipeline"] = _pkg

WSI_RSS_BOUND = 256 << 20


def store(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, "PNG", compress_level=1)
    return hashlib.md5(buf.getvalue()).hexdigest()


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def compare(name: str, items: int, unit: str, floor, conv, repeats: int) -> dict:
    best = {"floor": (math.inf, math.inf), "conv": (math.inf, math.inf)}
    for _ in range(repeats):
        for side, fn in (("floor", floor), ("conv", conv)):
            t = timed(fn)
            best[side] = min(best[side], t)
    f, c = best["floor"], best["conv"]
    row = {
        "path": name,
        "items": items,
        "unit": unit,
        f"floor_{unit}_per_s": round(items / f[0], 1),
        f"converter_{unit}_per_s": round(items / c[0], 1),
        "ratio": round(f[0] / c[0], 3),
        "ratio_cpu_time": round(f[1] / c[1], 3),
    }
    print(json.dumps(row), flush=True)
    return row


# ------------------------------------------------------------------ dicom_series


def bench_dicom(work: Path, repeats: int) -> dict:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    from gmai_pipeline.converters.dicom_series import DicomFile, DicomSeriesOptions, load, scan
    from gmai_pipeline.volumes import plane, volume_to_uint8

    folder = work / "series"
    folder.mkdir()
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uid, n = generate_uid(), 120
    rng = np.random.default_rng(0)
    names = random.Random(0).sample(range(10_000), n)
    order = []
    yy, xx = np.mgrid[0:512, 0:512]
    for k in range(n):
        d = template.copy()
        d.SeriesInstanceUID, d.SOPInstanceUID = uid, generate_uid()
        d.Rows = d.Columns = 512
        d.ImagePositionPatient = [-170.0, -170.0, 2.5 * k]
        body = 1000 + 400 * np.exp(-(((xx - 256) / 180.0) ** 2 + ((yy - 256) / 140.0) ** 2) * 2)
        d.PixelData = (body + rng.normal(0, 20, (512, 512)) + 3 * k).astype(np.int16).tobytes()
        p = folder / f"IM{names[k]:05d}.dcm"
        d.save_as(p)
        order.append(p)
    window = (-1000.0, 1000.0)

    def floor() -> None:
        vol = np.empty((512, 512, n), np.float32)
        for k, p in enumerate(order):
            ds = pydicom.dcmread(p)
            vol[:, :, k] = (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).T
        img = volume_to_uint8(vol, window)
        for k in range(n):
            store(plane(img, 2, k))

    def conv() -> None:
        opts = DicomSeriesOptions()
        result = scan([DicomFile(p, p.name) for p in sorted(folder.iterdir())], opts)
        sv = load(result.series[0], opts, "bench")
        img = volume_to_uint8(sv.volume, window)
        for k in range(img.shape[2]):
            store(plane(img, 2, k))

    return compare("dicom_series", n, "slices", floor, conv, repeats)


# ------------------------------------------------------------------ polygons


def bench_polygons(work: Path, repeats: int) -> dict:
    import xml.etree.ElementTree as ET

    from scipy import ndimage
    from skimage.draw import polygon as draw_polygon

    from gmai_pipeline.converters._masks import instance_boxes
    from gmai_pipeline.converters.polygons import positive_labels, rasterize, read_aperio_xml

    files = []
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
        p = work / f"TCGA-{i:02d}.xml"
        p.write_text(
            f'<Annotations><Annotation Id="1" Name=""><Regions>{"".join(regions)}</Regions></Annotation></Annotations>'
        )
        files.append(p)

    def floor() -> None:
        for p in files:
            inst = np.zeros((1000, 1000), np.uint16)
            for k, reg in enumerate(ET.parse(p).getroot().iter("Region"), start=1):
                pts = np.array([(float(v.get("X")), float(v.get("Y"))) for v in reg.iter("Vertex")])
                rr, cc = draw_polygon(pts[:, 1] - 0.5, pts[:, 0] - 0.5, shape=inst.shape)
                inst[rr, cc] = k
            ndimage.find_objects(inst)
            store((inst % 256).astype(np.uint8))

    def conv() -> None:
        for p in files:
            parsed = read_aperio_xml(p, p.name)
            inst = rasterize(parsed.shapes, 1000, 1000, instances=True)
            instance_boxes(inst, len(positive_labels(parsed.shapes)))
            store((inst % 256).astype(np.uint8))

    return compare("polygons", len(files), "images", floor, conv, repeats)


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


def kaggle_mask2rle(img: np.ndarray) -> str:
    pixels = np.concatenate([[0], img.T.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def bench_rle(work: Path, repeats: int) -> list[dict]:
    from gmai_pipeline.converters.rle import decode, encode

    yy, xx = np.mgrid[0:1024, 0:1024]
    masks = []
    for i in range(400):
        rng = np.random.default_rng(i)
        m = np.zeros((1024, 1024), bool)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.integers(150, 874, 2)
            rx, ry = rng.integers(30, 140, 2)
            m |= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        masks.append(m)
    texts = [kaggle_mask2rle(m.astype(np.uint8)) for m in masks]
    assert all(
        np.array_equal(decode(t, 1024, 1024, order="column"), m)
        for t, m in zip(texts[:5], masks, strict=False)
    )
    rows = [
        compare(
            "rle_decode",
            len(texts),
            "masks",
            lambda: [kaggle_rle_decode(t, (1024, 1024)) for t in texts],
            lambda: [decode(t, 1024, 1024, order="column") for t in texts],
            repeats,
        ),
        compare(
            "rle_encode",
            len(masks),
            "masks",
            lambda: [kaggle_mask2rle(m.astype(np.uint8)) for m in masks],
            lambda: [encode(m, order="column") for m in masks],
            repeats,
        ),
    ]
    return rows


# ------------------------------------------------------------------ hdf5


def bench_hdf5(work: Path, repeats: int) -> dict:
    import h5py

    from gmai_pipeline.converters.hdf5 import Hdf5Options, iter_records

    n = 8192
    xp, yp = work / "camelyonpatch_level_2_split_valid_x.h5", work / "camelyonpatch_level_2_split_valid_y.h5"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (64, 96, 96, 3), dtype=np.uint8)
    with h5py.File(xp, "w") as f:
        x = f.create_dataset("x", (n, 96, 96, 3), np.uint8, chunks=(64, 96, 96, 3))
        for b in range(0, n, 64):
            x[b : b + 64] = np.roll(base, b, axis=1)
    with h5py.File(yp, "w") as f:
        f.create_dataset("y", data=(np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1))

    def floor() -> None:
        with h5py.File(xp, "r") as f, h5py.File(yp, "r") as g:
            for b in range(0, n, 1024):
                block, labels = f["x"][b : b + 1024], g["y"][b : b + 1024]
                for i in range(block.shape[0]):
                    store(block[i])
                    int(labels[i].reshape(-1)[0])

    def conv() -> None:
        for r in iter_records(xp, xp.name, Hdf5Options(), yp, yp.name):
            store(r.image)

    return compare("hdf5", n, "patches", floor, conv, repeats)


# ------------------------------------------------------------------ wsi


def write_big_slide(path: Path, side: int) -> list:
    """A 40x Aperio-layout pyramid written tile by tile (the generator never holds a level in memory)."""
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
    # 48 lesions of 1.5-3 k pixels inside the tissue, as ASAP-like polygons
    from gmai_pipeline.converters.polygons import Shape

    shapes = []
    r2 = np.random.default_rng(1)
    while len(shapes) < 48:
        cx, cy = r2.uniform(0.15, 0.85, 2) * side
        if not tissue(cx, cy):
            continue
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        rad = r2.uniform(750, 1500) * r2.uniform(0.8, 1.2, 40)
        ring = np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=1)
        shapes.append(Shape("metastases", ((ring, ()),), f"lesion {len(shapes)}"))
    return shapes


WSI_CHILD = r"""
import json, sys, types, pickle
root, slide, shapes_file = sys.argv[1:4]
pkg = types.ModuleType("gmai_pipeline"); pkg.__path__ = [root + "/gmai_pipeline"]; sys.modules["gmai_pipeline"] = pkg
sys.path.insert(0, root + "/bench")
from pathlib import Path
from converters import store
from gmai_pipeline.converters.wsi import WsiOptions, iter_tiles
import openslide, PIL.Image, numpy  # imports before the baseline
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
shapes = pickle.loads(Path(shapes_file).read_bytes())
base = hwm()
n = boxes = bg = 0
for t in iter_tiles(Path(slide), "slide.svs", shapes, WsiOptions(magnification=20, tile_size=512, background_tiles=16), {"metastases": 1}):
    store(t.image); n += 1; boxes += len(t.boxes); bg += t.spec.kind == "background"
print(json.dumps({"tiles": n, "boxes": boxes, "background": bg, "base": base, "peak": hwm()}))
"""


def bench_wsi(work: Path, repeats: int, side: int) -> tuple[dict, dict]:
    import pickle

    import openslide

    from gmai_pipeline.converters.wsi import WsiOptions, iter_tiles, plan, scale, slide_info

    path = work / "slide.svs"
    t0 = time.perf_counter()
    shapes = write_big_slide(path, side)
    print(
        f"slide {side}x{side} written in {time.perf_counter() - t0:.1f}s ({path.stat().st_size >> 20} MiB)",
        flush=True,
    )
    opts = WsiOptions(magnification=20, tile_size=512)
    slide = openslide.OpenSlide(str(path))
    info = slide_info(slide)
    factor, level = scale(info, opts, "slide.svs")
    specs = plan(info, shapes, opts, factor, level).tiles
    slide.close()

    def floor() -> None:
        s = openslide.OpenSlide(str(path))
        for sp in specs:
            region = s.read_region((sp.x, sp.y), level, (1024, 1024)).convert("RGB")
            store(np.asarray(region.resize((512, 512), Image.Resampling.LANCZOS, reducing_gap=3.0)))
        s.close()

    def conv() -> None:
        for t in iter_tiles(path, "slide.svs", shapes, opts, {"metastases": 1}):
            store(t.image)

    row = compare("wsi", len(specs), "tiles", floor, conv, repeats)
    (work / "shapes.pkl").write_bytes(pickle.dumps(shapes))
    out = subprocess.run(
        [sys.executable, "-c", WSI_CHILD, str(ROOT), str(path), str(work / "shapes.pkl")],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    rss = {
        "slide_side_px": side,
        "slide_decoded_level0_mib": round(side * side * 3 / 2**20, 1),
        "slide_file_mib": round(path.stat().st_size / 2**20, 1),
        "tiles": got["tiles"],
        "background_tiles": got["background"],
        "boxes": got["boxes"],
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
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "converters-cpu.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-converters-", dir=args.workdir))
    results: dict = {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "repeats": args.repeats,
        "throughput": [],
    }
    try:
        for name, fn in (("dicom", bench_dicom), ("polygons", bench_polygons), ("hdf5", bench_hdf5)):
            (work / name).mkdir()
            results["throughput"].append(fn(work / name, args.repeats))
        (work / "rle").mkdir()
        results["throughput"].extend(bench_rle(work / "rle", args.repeats))
        (work / "wsi").mkdir()
        row, rss = bench_wsi(work / "wsi", args.repeats, args.slide_side)
        results["throughput"].append(row)
        results["wsi_peak_memory"] = rss
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_average_at_end"] = os.getloadavg()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.results.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(args.results)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
