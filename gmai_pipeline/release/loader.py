"""A minimal LLaVA-style reader of the release's JSONL files (the round-trip test and training use it).

Map-style (`len`, indexing) so a torch `Dataset` can wrap it as is; images are returned as the
stored bytes (decode them where the model's processor runs).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gmai_pipeline.release.records import IMAGE_TOKEN


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not a JSON record: {exc}") from None


def check_record(record: dict[str, Any], where: str) -> None:
    """The LLaVA rules a trainer relies on: human/gpt turns, one `<image>` exactly when there is an image."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns or len(turns) % 2:
        raise ValueError(f"{where}: conversations must be human/gpt pairs")
    for i, turn in enumerate(turns):
        if turn.get("from") != ("human" if i % 2 == 0 else "gpt"):
            raise ValueError(f"{where}: turn {i} must be from {'human' if i % 2 == 0 else 'gpt'}")
    tokens = sum(str(t.get("value", "")).count(IMAGE_TOKEN) for t in turns)
    if tokens != (1 if "image" in record else 0):
        raise ValueError(
            f"{where}: {tokens} {IMAGE_TOKEN} tokens for {'an image' if 'image' in record else 'text only'}"
        )


class LlavaJsonl:
    """Records of one or more LLaVA JSONL files, with images read from `image_root`."""

    def __init__(self, paths: list[Path] | Path, image_root: Path):
        self.image_root = Path(image_root)
        self.records: list[dict[str, Any]] = []
        for path in [paths] if isinstance(paths, Path) else paths:
            for n, record in enumerate(read_jsonl(path), 1):
                check_record(record, f"{path}:{n}")
                self.records.append(record)

    @classmethod
    def from_meta(cls, meta_path: Path, base: Path) -> LlavaJsonl:
        """An XTuner meta (`{name: {image_dir, annotations, ...}}`): every listed file once, one image root.

        Relative paths resolve against `base` (the release folder, where the trainers run).
        """
        meta = json.loads(Path(meta_path).read_text())
        roots = {entry["image_dir"] for entry in meta.values()}
        if len(roots) != 1:
            raise ValueError(f"{meta_path}: expected one image_dir, found {sorted(roots)}")
        base = Path(base)
        return cls([base / entry["annotations"] for entry in meta.values()], base / roots.pop())

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        record = self.records[i]
        image = (self.image_root / record["image"]).read_bytes() if "image" in record else None
        return {**record, "image_bytes": image}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]
