"""Mixture JSONL -> tokenized samples (labels on answers only) and 336 px normalised image tensors.

Records follow LLaVA/XTuner: {"id", "image" (relative to the image root; absent for text-only),
"conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}.
A record that cannot be used is skipped with a reason and listed (`Dataset.skipped`), never dropped silently.
Samples longer than max_length are truncated when the cut leaves the image intact and at least one
answer token; otherwise they are skipped ("too_long").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training_jobs.chat import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX, tokenize_conversation

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Sample:
    id: str
    input_ids: list[int]
    labels: list[int]
    image: Path | None

    def __len__(self) -> int:
        return len(self.input_ids)


def load_image(path: Path, size: int = 336) -> torch.Tensor:
    """LLaVA-1.5 'pad' preprocessing: pad to a square with the mean colour, resize, CLIP-normalise. (3, size, size)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), tuple(int(255 * m) for m in CLIP_MEAN))
        canvas.paste(im, ((side - w) // 2, (side - h) // 2))
        canvas = canvas.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(canvas, dtype=np.float32) / 255.0
    arr = (arr - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def iter_texts(path: Path) -> Iterator[str]:
    """Every conversation string in a mixture (tokenizer training for the tiny model)."""
    for rec in read_jsonl(path):
        for turn in rec.get("conversations", []):
            yield turn["value"].replace(IMAGE_PLACEHOLDER, "")


class Dataset:
    def __init__(
        self,
        jsonl: Path,
        image_root: Path,
        tokenizer,
        template: str = "internlm2",
        num_image_tokens: int = 576,
        image_size: int = 336,
        max_length: int = 2048,
    ):
        self.image_root, self.image_size = Path(image_root), image_size
        self.samples: list[Sample] = []
        self.skipped: list[dict] = []
        self.truncated: list[str] = []
        for rec in read_jsonl(jsonl):
            self._add(rec, tokenizer, template, num_image_tokens, max_length)

    def _skip(self, rec: dict, reason: str, detail: str = "") -> None:
        self.skipped.append({"id": str(rec.get("id")), "reason": reason, "detail": detail})

    def _add(self, rec: dict, tokenizer, template: str, num_image_tokens: int, max_length: int) -> None:
        convs = [dict(t) for t in rec.get("conversations") or []]
        if not any(t.get("from") in ("gpt", "assistant") for t in convs):
            return self._skip(rec, "no_answer")
        n_placeholders = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in convs)
        image = None
        if rec.get("image"):
            image = self.image_root / rec["image"]
            if not image.is_file():
                return self._skip(rec, "image_missing", str(image))
            if n_placeholders == 0:  # LLaVA's convention: the image goes before the first human turn
                convs[0]["value"] = IMAGE_PLACEHOLDER + "\n" + convs[0]["value"]
            elif n_placeholders > 1:
                return self._skip(rec, "multiple_image_placeholders")
        elif n_placeholders:
            return self._skip(rec, "placeholder_without_image")
        ids, labels = tokenize_conversation(tokenizer, convs, template, num_image_tokens)
        if len(ids) > max_length:
            last_image = max((i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX), default=-1)
            kept_labels = [x for x in labels[:max_length] if x != IGNORE_INDEX]
            if last_image >= max_length or not kept_labels:
                return self._skip(rec, "too_long", f"{len(ids)} tokens > max_length {max_length}")
            ids, labels = ids[:max_length], labels[:max_length]
            self.truncated.append(str(rec.get("id")))
        self.samples.append(Sample(str(rec.get("id")), ids, labels, image))

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> list[int]:
        return [len(s) for s in self.samples]

    def fingerprint(self) -> str:
        """Ids and lengths: a resumed run refuses a different dataset."""
        h = hashlib.sha256()
        for s in self.samples:
            h.update(f"{s.id}\t{len(s)}\n".encode())
        return h.hexdigest()

    def pixels(self, sample: Sample) -> torch.Tensor:
        return load_image(sample.image, self.image_size)
