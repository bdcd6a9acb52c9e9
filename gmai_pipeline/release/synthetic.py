"""Synthetic generated tables (GENERATED_SCHEMA) with real image files, for tests and `bench/shards.py`.

Builds what the generation stage would leave under an output root, without running it: images under
`images/{dim}/{task}/{modality}/{dataset}/` and `generated/{captions,vqa,translations}/<partition>.parquet`.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gmai_pipeline.catalog import dim_of, task_of
from gmai_pipeline.partitions import SHARD_KEYS, shard_of
from gmai_pipeline.release.records import generated_table
from gmai_pipeline.storage import OutputLayout, md5_bytes, write_table


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
