"""GENERATED_SCHEMA rows -> LLaVA/XTuner training records (DESIGN.md "Training records").

One loader for shards, annotation files, mixtures and the report, so all four see exactly the
same records: sorted by id, checked once, and rejected rows listed with a reason (never dropped).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gmai_pipeline.partitions import SHARD_KEYS
from gmai_pipeline.schemas import GENERATED_SCHEMA
from gmai_pipeline.storage import OutputLayout

GENERATED_KINDS = ("captions", "vqa", "translations")
IMAGE_TOKEN = "<image>"
# Keys of a training record, in the order they are written (the contract, then provenance).
RECORD_KEYS = ("id", "image", "conversations", "width", "height", "dataset", "language", "kind", "generator")


@dataclass(frozen=True)
class ReleaseRow:
    """One training record plus what the release needs beside it (file location, annotation fields)."""

    record: dict[str, Any]
    image_path: Path  # absolute path of the stored image
    image_md5: str
    sample_id: str
    modality: str
    department: str
    task_type: str
    clinical_task: str
    confidence: float | None

    @property
    def id(self) -> str:
        return self.record["id"]


@dataclass
class LoadedRecords:
    rows: list[ReleaseRow]
    rejected: list[dict[str, str]] = field(default_factory=list)  # QUARANTINE_SCHEMA rows
    missing_inputs: list[str] = field(default_factory=list)  # partition files that do not exist
    inputs: int = 0


class ReleaseError(ValueError):
    """The generated tables cannot be released as they are (message says which file or record)."""


def image_relative_to_root(image: str) -> str:
    """`images/2d/cls/...` (relative to the output root) -> `2d/cls/...` (relative to the images root)."""
    return image[len("images/") :] if image.startswith("images/") else image


def check_conversations(conversations: Any) -> str | None:
    """None when the turns are valid LLaVA image turns, else the reason code."""
    if not isinstance(conversations, list) or len(conversations) < 2 or len(conversations) % 2:
        return "bad_turn_count"
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or set(turn) != {"from", "value"} or not isinstance(turn["value"], str):
            return "bad_turn_shape"
        if turn["from"] != ("human" if i % 2 == 0 else "gpt"):
            return "bad_role_order"
        if not turn["value"].strip():
            return "empty_turn"
    tokens = sum(t["value"].count(IMAGE_TOKEN) for t in conversations)
    if tokens != 1 or not conversations[0]["value"].startswith(IMAGE_TOKEN):
        return "image_token"
    return None


def to_record(row: dict[str, Any], conversations: list[dict[str, str]]) -> dict[str, Any]:
    record = {
        "id": row["id"],
        "image": image_relative_to_root(row["image"]),
        "conversations": conversations,
        "width": int(row["width"]),
        "height": int(row["height"]),
        "dataset": row["dataset"],
        "language": row["language"],
        "kind": row["kind"],
        "generator": row["generator"],
    }
    if row.get("prompt_version"):
        record["prompt_version"] = row["prompt_version"]
    return record


def input_paths(layout: OutputLayout, partitions: Iterable[str] = SHARD_KEYS) -> list[Path]:
    return [layout.generated(kind, p) for kind in GENERATED_KINDS for p in partitions]


def _reject(rejected: list[dict[str, str]], row: dict[str, Any], reason: str, detail: str) -> None:
    """A QUARANTINE_SCHEMA row: the record stays out of the release, and says why."""
    rejected.append(
        {
            "dataset": row.get("dataset") or "unknown",
            "source_path": row.get("image") or "",
            "step": "release",
            "reason": reason,
            "detail": detail,
        }
    )


def removed_images(layout: OutputLayout) -> set[str]:
    """Images (relative to the output root) that decontamination removed: benchmark matches and their volumes."""
    path = layout.decontamination_report
    if not path.exists():
        return set()
    table = pq.read_table(path)
    if "image" not in table.column_names:
        raise ReleaseError(f"{path}: no `image` column; rerun the decontaminated asset to rewrite it")
    return set(table["image"].to_pylist())


def load_records(layout: OutputLayout, partitions: Iterable[str] = SHARD_KEYS) -> LoadedRecords:
    """Every generated row of every partition as a ReleaseRow, sorted by id.

    Rejects (with reason): conversations that do not parse or break the LLaVA turn rules, a missing
    image file, an image decontamination removed (generated tables older than the last
    decontamination), and a second row with an id already seen.
    """
    out = LoadedRecords(rows=[])
    seen: set[str] = set()
    removed = removed_images(layout)
    columns = [f.name for f in GENERATED_SCHEMA]
    for path in input_paths(layout, partitions):
        if not path.exists():
            out.missing_inputs.append(str(path.relative_to(layout.root)))
            continue
        table = pq.read_table(path, columns=columns)
        for row in table.to_pylist():
            out.inputs += 1
            where = f"{path.relative_to(layout.root)}: id {row['id']}"
            try:
                conversations = json.loads(row["conversations"] or "")
            except json.JSONDecodeError as exc:
                _reject(out.rejected, row, "conversations_not_json", f"{where}: {exc}")
                continue
            reason = check_conversations(conversations)
            if reason:
                _reject(out.rejected, row, reason, f"{where}: conversations break the LLaVA turn rules")
                continue
            if row["id"] in seen:
                _reject(out.rejected, row, "duplicate_id", f"{where}: id already released")
                continue
            if row["image"] in removed:
                _reject(
                    out.rejected,
                    row,
                    "benchmark_match",
                    f"{where}: image {row['image']} was removed by decontamination (regenerate this partition)",
                )
                continue
            image_path = layout.root / row["image"]
            if not row["image"].startswith("images/") or not image_path.is_file():
                _reject(out.rejected, row, "missing_image", f"{where}: no image file {row['image']}")
                continue
            seen.add(row["id"])
            out.rows.append(
                ReleaseRow(
                    record=to_record(row, conversations),
                    image_path=image_path,
                    image_md5=row["image_md5"] or "",
                    sample_id=row["sample_id"],
                    modality=row["modality"],
                    department=row["department"],
                    task_type=row["task_type"],
                    clinical_task=row["clinical_task"],
                    confidence=row["confidence"],
                )
            )
    out.rows.sort(key=lambda r: r.id)
    return out


# Built once, not per call as json.dumps with options does.
_CANONICAL = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def record_json(record: dict[str, Any]) -> bytes:
    """Canonical bytes of a record: the same record always gives the same bytes (shard hashes stay stable)."""
    return _CANONICAL.encode(record).encode("utf-8")


def generated_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> a GENERATED_SCHEMA table (tests and the benchmark build their inputs with it)."""
    return pa.Table.from_pylist(rows, schema=GENERATED_SCHEMA)
