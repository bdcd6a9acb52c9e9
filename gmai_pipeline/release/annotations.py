"""Annotation files of the release: one LLaVA-format JSONL per subset, and every record as one JSON array.

Subsets follow GMAI-VL-5.5M's release (`annotations/GMAI-MM-{Caption,Percept,Instruct}-*.jsonl`;
we spell "Instruct" correctly) plus the Chinese translations as their own subset. JSONL is what
InternVL, XTuner and `training_jobs` read; `llava.json` is for loaders that `json.load` one list
(LLaVA). Image paths are relative to the release's `images/` folder. The trainer metas over these
files are written by `gmai_pipeline.release.trainer_metas`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from gmai_pipeline.release.records import ReleaseRow
from gmai_pipeline.storage import atomic_path

ANNOTATIONS_DIR = "annotations"
LLAVA_JSON = "llava.json"
# subset name -> (kinds, language); every released record falls in exactly one subset.
SUBSETS: dict[str, tuple[tuple[str, ...], str]] = {
    "GMAI-MM-Caption-en": (("caption",), "en"),
    "GMAI-MM-Percept-en": (("region_caption",), "en"),
    "GMAI-MM-Instruct-en": (("vqa",), "en"),
    "GMAI-MM-Chinese-zh": (("caption", "region_caption", "vqa"), "zh"),
}
# Flips and rotations can swap left and right in a medical image: augmentation stays off by default.
DATA_AUGMENT = False
# Written by earlier versions: one meta that InternVL could not read, with absolute paths.
LEGACY_FILES = ("meta.json",)


def subset_of(record: dict[str, Any]) -> str:
    for name, (kinds, language) in SUBSETS.items():
        if record["kind"] in kinds and record["language"] == language:
            return name
    raise ValueError(
        f"record {record['id']}: no subset for kind {record['kind']!r}, language {record['language']!r}"
    )


def subset_counts(rows: Iterable[ReleaseRow]) -> dict[str, int]:
    counts = dict.fromkeys(SUBSETS, 0)
    for row in rows:
        counts[subset_of(row.record)] += 1
    return counts


def jsonl_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(jsonl_line(record))
            n += 1
    return n


def write_json_array(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """One JSON array, a record per line, streamed (millions of records never sit in one string)."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("[")
        for record in records:
            f.write(("\n" if n == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
            n += 1
        f.write("\n]\n" if n else "]\n")
    return n


def write_annotations(rows: Iterable[ReleaseRow], release_dir: Path) -> dict[str, int]:
    """`annotations/<subset>.jsonl` (every subset, empty ones too, so the layout never varies) and
    `llava.json`, each record serialized once for both, streamed; returns records per subset."""
    counts = dict.fromkeys(SUBSETS, 0)
    with contextlib.ExitStack() as stack:

        def open_atomic(path: Path) -> TextIO:
            return stack.enter_context(open(stack.enter_context(atomic_path(path)), "w", encoding="utf-8"))

        subsets = {name: open_atomic(release_dir / ANNOTATIONS_DIR / f"{name}.jsonl") for name in SUBSETS}
        array = open_atomic(release_dir / LLAVA_JSON)
        array.write("[")
        n = 0
        for row in rows:
            name = subset_of(row.record)
            text = json.dumps(row.record, ensure_ascii=False)
            subsets[name].write(text + "\n")
            array.write(("\n" if n == 0 else ",\n") + text)
            counts[name] += 1
            n += 1
        array.write("\n]\n" if n else "]\n")
    for name in LEGACY_FILES:
        (release_dir / name).unlink(missing_ok=True)
    return counts
