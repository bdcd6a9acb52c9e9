"""The 2D demo datasets, built in memory as {relative path: bytes}.

Real pictures where a package ships one (scikit-image's fundus photograph and IHC slide,
pydicom-data's chest radiograph), generated ones in the real file formats otherwise. Every
random choice comes from a fixed seed, so the bytes are identical on every run; the benchmark
builder calls the same functions to plant copies of exact training files.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from gmai_pipeline.demo._files import jpeg_bytes, png_bytes

FUNDUS_CLASSES = ("normal", "diabetic_retinopathy")


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height) with a deterministic Lanczos filter."""
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.LANCZOS))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-ish low-frequency texture."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return n / (n.std() + 1e-9)


# --------------------------------------------------------------------------- fundus (image_folder)


def _fundus_image(base: np.ndarray, rng: np.random.Generator, angle: float, diseased: bool) -> np.ndarray:
    """A zoomed, rotated field of the fundus: each variant shows the disc and vessels at another place,
    so the demo images are perceptually distinct (not near-duplicates of one another)."""
    h = base.shape[0]
    rotated = np.asarray(Image.fromarray(base).rotate(angle, resample=Image.Resampling.BILINEAR))
    half = int(h * rng.uniform(0.3, 0.36))  # a square inside the circular field of view
    cy, cx = (int(h / 2 + rng.uniform(-0.04, 0.04) * h) for _ in range(2))
    crop = rotated[cy - half : cy + half, cx - half : cx + half]
    size = int(rng.choice([512, 576, 640, 704]))
    img = _resize(crop, (size, size)).astype(np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img *= rng.uniform(0.85, 1.12, size=3)  # colour cast between cameras
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** rng.uniform(0.85, 1.2)
    if diseased:  # hard exudates (yellow) and dot haemorrhages (dark red) inside the disc
        yy, xx = np.mgrid[0:size, 0:size]
        c = size / 2
        for _ in range(int(rng.integers(10, 22))):
            r, a = rng.uniform(0.05, 0.45) * size, rng.uniform(0, 2 * np.pi)
            cy, cx = c + r * np.sin(a), c + r * np.cos(a)
            rad = rng.uniform(2.5, 6.5) * size / 512
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rad**2))[..., None]
            colour = np.array([250, 225, 90]) if rng.random() < 0.6 else np.array([110, 10, 10])
            img = img * (1 - 0.85 * blob) + colour * 0.85 * blob
    return np.clip(img, 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def fundus_files() -> dict[str, bytes]:
    """`<split>/<class>/<image>.jpg`: 4 train + 2 test per class, from skimage's retina photograph."""
    from skimage import data

    base = _resize(data.retina(), (1024, 1024))  # the bundled image is 1411 px; work at <= 1024
    rng = np.random.default_rng(20240501)
    files: dict[str, bytes] = {}
    n = 0
    for split, per_class in (("train", 4), ("test", 2)):
        for cls in FUNDUS_CLASSES:
            for _ in range(per_class):
                n += 1
                angle = 360.0 * ((n * 5) % 12) / 12 + float(rng.uniform(-6, 6))
                img = _fundus_image(base, rng, angle, diseased=cls != "normal")
                files[f"{split}/{cls}/fundus_{n:03d}.jpg"] = jpeg_bytes(img, quality=92)
    return files


# --------------------------------------------------------------------------- histology (csv_labels)


@lru_cache(maxsize=1)
def histology_files() -> dict[str, bytes]:
    """12 PNG tiles of skimage's IHC slide + `labels.csv` (DAB-positive vs negative by stain content)."""
    from skimage import color, data

    ihc = data.immunohistochemistry()
    tiles: list[tuple[str, np.ndarray, float]] = []
    for r in range(4):
        for c in range(4):
            if len(tiles) == 12:
                break
            tile = ihc[r * 128 : (r + 1) * 128, c * 128 : (c + 1) * 128]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dab = float(color.rgb2hed(tile)[..., 2].mean())
            tiles.append((f"ihc_r{r}_c{c}.png", tile, dab))
    threshold = float(np.median([t[2] for t in tiles]))
    files = {name: png_bytes(np.ascontiguousarray(tile)) for name, tile, _ in tiles}
    lines = ["image,label"] + [
        f"{name},{'dab_positive' if dab > threshold else 'dab_negative'}" for name, _, dab in tiles
    ]
    files["labels.csv"] = ("\n".join(lines) + "\n").encode()
    return files


# --------------------------------------------------------------------------- chest radiographs (coco)


def _radiograph() -> np.ndarray:
    """pydicom-data's CR chest radiograph (RG1) rendered to 8 bit, else a synthetic chest-like image."""
    import pydicom
    from pydicom.data import get_testdata_file

    path = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            path = get_testdata_file("RG1_UNCR.dcm", download=False)
        except Exception:  # pragma: no cover - depends on what is installed
            path = None
    if path is not None:
        ds = pydicom.dcmread(path)
        px = ds.pixel_array.astype(np.float32)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            px = px.max() - px
        lo, hi = np.percentile(px, (0.5, 99.5))
        img = (np.clip((px - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
        h, w = img.shape
        scale = 1024 / max(h, w)
        return _resize(img, (round(w * scale), round(h * scale)))
    rng = np.random.default_rng(7)  # pragma: no cover - fallback when pydicom-data is absent
    yy, xx = np.mgrid[0:960, 0:1024] / 1000.0
    img = 0.75 - 0.55 * (((xx - 0.33) / 0.16) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1)
    img -= 0.55 * (((xx - 0.69) / 0.16) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1)
    img = ndimage.gaussian_filter(img, 12) + 0.05 * _smooth_noise(rng, img.shape, 3)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@lru_cache(maxsize=1)
def chest_files() -> dict[str, bytes]:
    """8 radiograph PNGs (crops of a real CR with simulated nodules/masses) + COCO `annotations.json`."""
    base = _radiograph()
    rng = np.random.default_rng(1337)
    images, annotations = [], []
    files: dict[str, bytes] = {}
    categories = [
        {"id": 1, "name": "nodule", "supercategory": "lesion"},
        {"id": 2, "name": "mass", "supercategory": "lesion"},
    ]
    h0, w0 = base.shape
    for i in range(1, 9):
        ch, cw = (
            int(rng.integers(int(h0 * 0.7), int(h0 * 0.9))),
            int(rng.integers(int(w0 * 0.7), int(w0 * 0.9))),
        )
        y0, x0 = int(rng.integers(0, h0 - ch)), int(rng.integers(0, w0 - cw))
        size = (512, round(512 * ch / cw))
        img = _resize(base[y0 : y0 + ch, x0 : x0 + cw], size).astype(np.float32)
        if i % 3 == 0:
            img = img[:, ::-1]
        img = 255.0 * (img / 255.0) ** rng.uniform(0.8, 1.25)
        w, h = size
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(1 if i % 4 else 2):
            r = float(rng.uniform(6, 22))
            cx = float(rng.choice([rng.uniform(0.2, 0.42), rng.uniform(0.58, 0.8)]) * w)
            cy = float(rng.uniform(0.3, 0.7) * h)
            blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (r / 2) ** 2)))
            img = img + 70 * blob * (1 + 0.2 * _smooth_noise(rng, (h, w), 2))
            bx0, by0 = max(0.0, cx - r), max(0.0, cy - r)
            bx1, by1 = min(float(w), cx + r), min(float(h), cy + r)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": 2 if r >= 15 else 1,
                    "bbox": [round(bx0, 1), round(by0, 1), round(bx1 - bx0, 1), round(by1 - by0, 1)],
                    "area": round((bx1 - bx0) * (by1 - by0), 1),
                    "iscrowd": 0,
                }
            )
        name = f"cxr_{i:03d}.png"
        files[name] = png_bytes(np.clip(img, 0, 255).astype(np.uint8))
        images.append({"id": i, "file_name": name, "width": w, "height": h})
    coco = {
        "info": {
            "description": "gmai-pipeline demo: crops of pydicom-data RG1 (CR chest) with simulated lesions"
        },
        "licenses": [{"id": 1, "name": "MIT (pydicom-data)"}],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    files["annotations.json"] = (json.dumps(coco, indent=1, sort_keys=True) + "\n").encode()
    return files


# --------------------------------------------------------------------------- endoscopy (voc)


def _mucosa(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    tex = 0.6 * _smooth_noise(rng, (h, w), 14) + 0.4 * _smooth_noise(rng, (h, w), 3)
    base = np.array([214.0, 120.0, 118.0]) * rng.uniform(0.92, 1.06, size=3)
    img = base + tex[..., None] * np.array([18.0, 14.0, 12.0])
    vessels = np.abs(_smooth_noise(rng, (h, w), 6)) < 0.06  # thin dark-red capillary lines
    img[vessels] *= np.array([0.78, 0.6, 0.62])
    yy, xx = np.mgrid[0:h, 0:w]
    ly, lx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w  # the lumen: darker far wall
    lumen = np.exp(-((yy - ly) ** 2 + (xx - lx) ** 2) / (2 * (0.18 * w) ** 2))
    img *= (1 - 0.65 * lumen)[..., None]
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    img *= np.clip(1.25 - 0.55 * r**2, 0, 1)[..., None]  # scope vignetting
    img[r > 1.25] = 0
    return img


@lru_cache(maxsize=1)
def endoscopy_files() -> dict[str, bytes]:
    """8 colonoscopy-like JPEG frames with polyps, Pascal VOC XML in `Annotations/`."""
    rng = np.random.default_rng(424242)
    files: dict[str, bytes] = {}
    w, h = 448, 384
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(1, 9):
        img = _mucosa(rng, h, w)
        boxes = []
        for _ in range(2 if i == 5 else 1):
            ry, rx = rng.uniform(22, 60), rng.uniform(22, 60)
            for _attempt in range(20):  # keep two polyps apart
                cy, cx = rng.uniform(ry + 20, h - ry - 20), rng.uniform(rx + 20, w - rx - 20)
                if all(abs(cx - (b[0] + b[2]) / 2) > rx + (b[2] - b[0]) / 2 for b in boxes):
                    break
            d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            inside = d <= 1
            shade = np.clip(1.15 - 0.35 * ((yy - cy) / ry + (xx - cx) / rx), 0.7, 1.3)
            polyp = np.array([228.0, 104.0, 96.0]) * shade[..., None]
            edge = np.clip((1.08 - d) / 0.08, 0, 1)[..., None]
            img = img * (1 - edge) + polyp * edge
            spec = np.exp(
                -(((yy - (cy - 0.4 * ry)) ** 2 + (xx - (cx - 0.3 * rx)) ** 2) / (2 * (0.12 * rx) ** 2))
            )
            img = img + 160 * spec[..., None] * inside[..., None]
            boxes.append(
                (
                    max(1, int(np.floor(cx - rx)) + 1),
                    max(1, int(np.floor(cy - ry)) + 1),
                    min(w, int(np.ceil(cx + rx)) + 1),
                    min(h, int(np.ceil(cy + ry)) + 1),
                )
            )
        name = f"frame_{i:04d}"
        files[f"JPEGImages/{name}.jpg"] = jpeg_bytes(np.clip(img, 0, 255).astype(np.uint8), quality=90)
        files[f"Annotations/{name}.xml"] = _voc_xml(f"{name}.jpg", w, h, boxes)
    return files


def _voc_xml(filename: str, w: int, h: int, boxes: list[tuple[int, int, int, int]]) -> bytes:
    """Pascal VOC annotation (1-based inclusive pixel coordinates, as VOC writes them)."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "JPEGImages"
    ET.SubElement(ann, "filename").text = filename
    src = ET.SubElement(ann, "source")
    ET.SubElement(src, "database").text = "gmai-pipeline demo (generated)"
    size = ET.SubElement(ann, "size")
    for tag, val in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(val)
    ET.SubElement(ann, "segmented").text = "0"
    for x0, y0, x1, y1 in boxes:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = "polyp"
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag, val in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, tag).text = str(val)
    ET.indent(ann)
    return ET.tostring(ann, encoding="utf-8", xml_declaration=False) + b"\n"


# --------------------------------------------------------------------------- dermoscopy (mask_pairs)


def _lesion_mask(rng: np.random.Generator, h: int, w: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    theta = np.arctan2(yy - cy, xx - cx)
    r = np.ones_like(theta)
    for k in range(2, 6):  # an irregular, asymmetric border
        r += rng.uniform(0.02, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(yy - cy, xx - cx) <= radius * r


@lru_cache(maxsize=1)
def skin_files() -> dict[str, bytes]:
    """8 dermoscopy-like PNGs `images/x.png` with label masks `masks/x.png` (0 background, 1 lesion)."""
    rng = np.random.default_rng(8080)
    files: dict[str, bytes] = {}
    h = w = 320
    for i in range(1, 9):
        tone = np.array([226.0, 178.0, 152.0]) * rng.uniform(0.85, 1.05)
        img = tone + _smooth_noise(rng, (h, w), 9)[..., None] * np.array([9.0, 8.0, 8.0])
        mask = np.zeros((h, w), np.uint8)
        centres = [(0.33, 0.3), (0.65, 0.7)] if i == 4 else [(rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6))]
        for fy, fx in centres:
            radius = rng.uniform(0.12, 0.18) * w if i == 4 else rng.uniform(0.18, 0.3) * w
            m = _lesion_mask(rng, h, w, fy * h, fx * w, radius)
            dist = ndimage.distance_transform_edt(m)
            depth = np.clip(dist / (radius * 0.6), 0, 1)[..., None]  # darker centre, soft edge
            brown = np.array([120.0, 72.0, 50.0]) - depth * np.array([55.0, 40.0, 28.0])
            brown = brown + _smooth_noise(rng, (h, w), 2)[..., None] * 10
            soft = ndimage.gaussian_filter(m.astype(np.float32), 1.5)[..., None]
            img = img * (1 - soft) + brown * soft
            mask[m] = 1
        for _ in range(int(rng.integers(0, 4))):  # a few hairs crossing the field
            y0, y1 = rng.uniform(0, h, size=2)
            line = Image.new("L", (w, h), 0)
            ImageDraw.Draw(line).line([(0, y0), (w, y1)], fill=255, width=2)
            hair = np.asarray(line, dtype=np.float32)[..., None] / 255 * 0.7
            img = img * (1 - hair) + 40 * hair
        name = f"lesion_{i:03d}.png"
        files[f"images/{name}"] = png_bytes(np.clip(img, 0, 255).astype(np.uint8))
        files[f"masks/{name}"] = png_bytes(mask)
    return files
