"""LLaVA/XTuner annotation files of the release: one JSONL per subset and a meta list.

Subsets follow GMAI-VL-5.5M's release (`annotations/GMAI-MM-{Caption,Percept,Instruct}-*.jsonl`;
we spell "Instruct" correctly) plus the Chinese translations as their own subset. Image paths are
relative to the images root that the meta list names as `image_dir`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gmai_pipeline.release.records import ReleaseRow
from gmai_pipeline.storage import atomic_path, atomic_write_text

# subset name -> (kinds, language); every released record falls in exactly one subset.
SUBSETS: dict[str, tuple[tuple[str, ...], str]] = {
    "GMAI-MM-Caption-en": (("caption",), "en"),
    "GMAI-MM-Percept-en": (("region_caption",), "en"),
    "GMAI-MM-Instruct-en": (("vqa",), "en"),
    "GMAI-MM-Chinese-zh": (("caption", "region_caption", "vqa"), "zh"),
}
# Flips and rotations can swap left and right in a medical image: augmentation stays off by default.
DATA_AUGMENT = False


def subset_of(record: dict[str, Any]) -> str:
    for name, (kinds, language) in SUBSETS.items():
        if record["kind"] in kinds and record["language"] == language:
            return name
    raise ValueError(
        f"record {record['id']}: no subset for kind {record['kind']!r}, language {record['language']!r}"
    )


def jsonl_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_annotations(
    rows: list[ReleaseRow], annotation_dir: Path, image_root: Path, meta_path: Path
) -> dict[str, int]:
    """Write every subset (empty subsets too, so the layout never varies) and the meta list; returns counts."""
    annotation_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[dict[str, Any]]] = {name: [] for name in SUBSETS}
    for row in rows:
        groups[subset_of(row.record)].append(row.record)
    meta = {}
    for name, records in groups.items():
        path = annotation_dir / f"{name}.jsonl"
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.writelines(jsonl_line(r) for r in records)
        meta[name] = {
            "image_dir": str(Path(image_root).resolve()),
            "annotations": str(path.resolve()),
            "sample_ratio": 1.0,
            "length": len(records),
            "data_augment": DATA_AUGMENT,
        }
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return {name: len(records) for name, records in groups.items()}
