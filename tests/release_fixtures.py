"""Synthetic data with real image files, for tests and the benchmarks (`bench/shards.py`, `bench/scale.py`, which
put `tests/` on their path).

Builds what a stage would leave under an output root, without running it: generated tables
(`generated/{captions,vqa,translations}/<partition>.parquet`, GENERATED_SCHEMA) with images under
`images/{dim}/{task}/{modality}/{dataset}/`, or normalized tables of any size (`write_scale_normalized`).
"""

from __future__ import annotations

import io
import json
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from gmai_pipeline.catalog import dim_of, task_of
from gmai_pipeline.partitions import SHARD_KEYS, shard_of
from gmai_pipeline.schemas import GENERATED_SCHEMA, NORMALIZED_SCHEMA
from gmai_pipeline.storage import OutputLayout, batched, md5_bytes, write_parquet, write_table


@dataclass(frozen=True)
class SynthSource:
    name: str
    modality: str
    department: str
    task_type: str
    clinical_task: str
    label: str

    @property
    def dim(self) -> str:
        return dim_of(self.task_type)

    @property
    def task(self) -> str:
        return task_of(self.task_type)


SOURCES = (
    SynthSource("demo_fundus_folder", "Fundus", "Ophthalmology", "2d_cls", "Disease Diagnosis", "glaucoma"),
    SynthSource("demo_chest_coco", "X-Ray", "Pulmonary Medicine", "2d_det", "Lesion Detection", "nodule"),
    SynthSource("demo_brain_msd", "MR", "Neurosurgery", "3d_seg", "Organ Recognition", "hippocampus"),
)


def png_bytes(width: int, height: int, seed: int, compress_level: int = 1) -> bytes:
    """A noise PNG: incompressible, so its size is predictable (about width * height * 3 bytes)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def conversation(question: str, answer: str) -> str:
    return json.dumps([{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}])


def row(
    source: SynthSource,
    image: str,
    image_md5: str,
    size: tuple[int, int],
    kind: str,
    language: str,
    question: str,
    answer: str,
    confidence: float | None = None,
    suffix: str = "",
) -> dict[str, Any]:
    sample_id = f"{source.dim}#{source.task}#{source.modality.lower()}#{source.name}#{Path(image).name}"
    return {
        "id": f"{sample_id}#{kind}{'#zh' if language == 'zh' else ''}{suffix}",
        "sample_id": sample_id,
        "dataset": source.name,
        "image": image,
        "image_md5": image_md5,
        "width": size[0],
        "height": size[1],
        "modality": source.modality,
        "label": source.label,
        "department": source.department,
        "task_type": source.task_type,
        "clinical_task": source.clinical_task,
        "bbox": [1, 1, size[0] - 1, size[1] - 1] if kind == "region_caption" else None,
        "kind": kind,
        "language": language,
        "conversations": conversation(question, answer),
        "generator": "template:template-v1",
        "prompt_version": f"{kind}-v1",
        "request_sha256": "0" * 64,
        "label_mentioned": True,
        "confidence": confidence,
        "source_record_id": None,
    }


def generated_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> a GENERATED_SCHEMA table."""
    return pa.Table.from_pylist(rows, schema=GENERATED_SCHEMA)


def write_image(
    layout: OutputLayout, source: SynthSource, index: int, size: tuple[int, int], ext: str = "png"
) -> tuple[str, str]:
    """Store one image; returns (path relative to the output root, MD5)."""
    rel = f"images/{source.dim}/{source.task}/{source.modality.lower()}/{source.name}/img{index:05d}.{ext}"
    seed = zlib.crc32(f"{source.name}#{index}".encode())
    data = png_bytes(*size, seed=seed) if ext == "png" else _jpeg(size, seed)
    path = layout.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel, md5_bytes(data)


def _jpeg(size: tuple[int, int], seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def demo_rows(
    layout: OutputLayout, images_per_source: int = 3, size: tuple[int, int] = (32, 24)
) -> list[dict[str, Any]]:
    """Captions or region captions, VQA, and a Chinese copy of every other caption, for each synthetic image."""
    rows = []
    for source in SOURCES:
        for i in range(images_per_source):
            image, md5 = write_image(layout, source, i, size, ext="jpg" if i == 1 else "png")
            kind = "caption" if source.task == "cls" else "region_caption"
            lead = "This image" if kind == "caption" else "This region"
            rows.append(
                row(
                    source,
                    image,
                    md5,
                    size,
                    kind,
                    "en",
                    "Describe the image.",
                    f"{lead} is a {source.modality} image from {source.department} showing signs of {source.label} in clear detail.",
                )
            )
            rows.append(
                row(
                    source,
                    image,
                    md5,
                    size,
                    "vqa",
                    "en",
                    "What is the modality?",
                    f"The modality of this image is {source.modality}.",
                    confidence=0.9,
                )
            )
            if i % 2 == 0:
                rows.append(
                    row(
                        source,
                        image,
                        md5,
                        size,
                        kind,
                        "zh",
                        "描述这张图像。",
                        f"这是一张来自{source.department}的{source.modality}图像，可见{source.label}的征象，细节清晰可辨。",
                    )
                )
    return rows


def write_generated(
    layout: OutputLayout, rows: Iterable[dict[str, Any]], partitions: Iterable[str] = SHARD_KEYS
) -> None:
    """Write rows to their generated tables, one file per kind and partition (empty partitions too)."""
    table_of = {"caption": "captions", "region_caption": "captions", "vqa": "vqa"}
    by_file: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        kind = "translations" if r["language"] == "zh" else table_of[r["kind"]]
        by_file.setdefault((kind, shard_of(r["sample_id"])), []).append(r)
    for kind in ("captions", "vqa", "translations"):
        for p in partitions:
            write_table(layout.generated(kind, p), generated_table(by_file.get((kind, p), [])))


# --- normalized tables at scale (bench/scale.py) ---------------------------------------------------------

# GMAI-VL-5.5M's mix, roughly: half 2D classification, a third 3D slices, the rest boxes.
SCALE_MIX = ((SOURCES[0], 0.5), (SOURCES[1], 0.2), (SOURCES[2], 0.3))
SLICES_PER_VOLUME = 50
SCALE_IMAGE_SIZE = (16, 16)


def pool_image(layout: OutputLayout, source: SynthSource, k: int) -> tuple[Path, str]:
    """The k-th distinct image of a source's pool (written once): its path and MD5."""
    path = layout.root / "synthetic_pool" / source.name / f"pool{k:05d}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(*SCALE_IMAGE_SIZE, seed=zlib.crc32(f"{source.name}#pool{k}".encode())))
    return path, md5_bytes(path.read_bytes())


def write_scale_normalized(
    layout: OutputLayout, n_samples: int, pool: int = 512, labels: int = 4093, batch: int = 50_000
) -> dict[str, int]:
    """`normalized/<dataset>.parquet` for `n_samples` samples over the three synthetic sources (SCALE_MIX).

    Each sample has its own image path in the store, hard-linked to one of `pool` distinct PNGs per source
    (a million samples cost a million directory entries, not a million files of disk), and its own
    annotation: one of `labels` label variants and, for boxes, one of 625 boxes. So nearly every sample
    makes its own LLM requests, as real samples (each its own image) do; identical files with identical
    annotations would make identical requests. 3D samples are slices of volumes of SLICES_PER_VOLUME (one
    source path each), with a box, as the 3D reader leaves them. Returns rows per dataset.
    """
    counts: dict[str, int] = {}
    w, h = SCALE_IMAGE_SIZE
    for source, share in SCALE_MIX:
        n = round(n_samples * share) if source is not SCALE_MIX[-1][0] else n_samples - sum(counts.values())
        counts[source.name] = n
        pooled = [pool_image(layout, source, k) for k in range(pool)]
        folder = f"images/{source.dim}/{source.task}/{source.modality.lower()}/{source.name}"

        def rows(source: SynthSource = source, n: int = n, pooled: list = pooled, folder: str = folder):
            made: set[Path] = set()
            for i in range(n):
                sub = f"{i // 1000:04d}"
                volume = i // SLICES_PER_VOLUME if source.task_type == "3d_seg" else None
                src_path = f"vol{volume:06d}.nii.gz" if volume is not None else f"{sub}/img{i:07d}.png"
                rel = f"{folder}/{sub}/img{i:07d}.png"
                target = layout.root / rel
                if target.parent not in made:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    made.add(target.parent)
                pool_path, md5 = pooled[zlib.crc32(rel.encode()) % len(pooled)]
                if not target.exists():
                    os.link(pool_path, target)
                sample_id = f"{source.dim}#{source.task}#{source.modality.lower()}#{source.name}#"
                sample_id += src_path.replace("/", "#")
                axis = "z" if volume is not None else None
                index = i % SLICES_PER_VOLUME if volume is not None else None
                box = [i % 5, (i // 5) % 5, w - 1 - (i // 25) % 5, h - 1 - (i // 125) % 5]
                yield {
                    "sample_id": sample_id + (f"#{axis}{index:04d}" if volume is not None else ""),
                    "dataset": source.name,
                    "source_path": src_path,
                    "slice_axis": axis,
                    "slice_index": index,
                    "split": "train",
                    "image": rel,
                    "image_md5": md5,
                    "width": w,
                    "height": h,
                    "modality": source.modality,
                    "label": f"{source.label} {i % labels}",
                    "department": source.department,
                    "task_type": source.task_type,
                    "clinical_task": source.clinical_task,
                    "bbox": None if source.task == "cls" else box,
                }

        write_parquet(layout.normalized(source.name), batched(rows(), batch), NORMALIZED_SCHEMA)
    return counts
