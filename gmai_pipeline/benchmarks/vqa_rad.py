"""VQA-RAD test split.

Two layouts are read:
- the original OSF release: `VQA_RAD Dataset Public.json` (or any `*.json` list with `image_name`
  and `phrase_type`) and the images in `VQA_RAD Image Folder/`; the test split is the questions
  whose `phrase_type` starts with `test` (`test_freeform`, `test_para`);
- the Hugging Face Parquet mirror (`flaviagiammarino/vqa-rad`): `data/test-*.parquet` with an
  `image` {bytes, path} struct.
A folder one level deeper (an archive unpacked into its own folder) is found by the registry.
Each image is yielded once, under the `qid` of its first test question (original) or
`test:<row>` (mirror, which carries no ids).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from gmai_pipeline.benchmarks.base import (
    BenchmarkImage,
    first_existing,
    iter_parquet_rows,
    read_image_file,
    struct_bytes,
)

BENCHMARK = "VQA-RAD"
IMAGE_DIRS = ("VQA_RAD Image Folder", "images", "")


def _json_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json"))


def read_original(folder: Path, problems: list[str]) -> Iterator[BenchmarkImage]:
    image_dir = first_existing(*(folder / d for d in IMAGE_DIRS if d)) or folder
    seen: set[str] = set()
    for path in _json_files(folder):
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{BENCHMARK}: {path}: unreadable JSON ({exc})")
            continue
        if not isinstance(items, list) or not items or "image_name" not in items[0]:
            continue
        for item in items:
            if not str(item.get("phrase_type", "")).startswith("test"):
                continue
            name = str(item.get("image_name", "")).strip()
            if not name or name in seen:
                continue
            seen.add(name)
            got = read_image_file(image_dir / name, BENCHMARK, str(item.get("qid", name)), problems)
            if got is not None:
                yield got


def hf_split(path: Path) -> str:
    """`data/validation-00000-of-00001.parquet` -> `validation` (HF `datasets` shard names)."""
    return path.name.split("-", 1)[0]


def read_hf_parquet(files: list[Path], benchmark: str, problems: list[str]) -> Iterator[BenchmarkImage]:
    """HF `datasets` Parquet with an `image` struct column: distinct images by bytes, ids `<split>:<row>`."""
    import hashlib

    seen: set[bytes] = set()
    rows: dict[str, int] = {}
    for path in files:
        split = hf_split(path)
        for rec in iter_parquet_rows(path, ["image"]):
            data = struct_bytes(rec.get("image"))
            item_id = f"{split}:{rows.get(split, 0)}"
            rows[split] = rows.get(split, 0) + 1
            if data is None:
                problems.append(f"{benchmark}: {path}: row {item_id} has no image bytes")
                continue
            digest = hashlib.md5(data, usedforsecurity=False).digest()
            if digest in seen:
                continue
            seen.add(digest)
            yield BenchmarkImage(benchmark, item_id, data)


def read(folder: Path, problems: list[str]) -> Iterator[BenchmarkImage]:
    yield from read_original(folder, problems)
    yield from read_hf_parquet(sorted(folder.glob("data/test-*.parquet")), BENCHMARK, problems)
