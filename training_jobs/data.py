"""Mixture JSONL -> tokenized samples (labels on answers only) and 336 px normalised image tensors.

Records follow LLaVA/XTuner: {"id", "image" (relative to the image root; absent for text-only),
"conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}.
A record that cannot be used is skipped with a reason and listed (`Dataset.skipped`), never dropped silently.
Samples longer than max_length are truncated when the cut leaves the image intact and at least one
answer token; otherwise they are skipped ("too_long"). With the mixture's lengths file
(`training_jobs.lengths`) the same decisions are made from the stored lengths, without tokenizing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
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


@dataclass
class LazySample:
    """A sample known by its length only (from the mixture's lengths file); tokenized when it is batched."""

    id: str
    length: int
    image: Path | None
    offset: int  # of the record's line in the JSONL
    nbytes: int

    def __len__(self) -> int:
        return self.length


class Dataset:
    """The usable samples of a mixture JSONL, with their token lengths (what the row planner needs).

    With `lengths` (the mixture's `<stage>.lengths.parquet`, made for this file, tokenizer and template),
    nothing is tokenized here: each sample is read and tokenized when its micro-batch is built (`sample`).
    Without it, or when it was made for something else (reported through `log`), every record is tokenized
    now, as before.
    """

    def __init__(
        self,
        jsonl: Path,
        image_root: Path,
        tokenizer,
        template: str = "internlm2",
        num_image_tokens: int = 576,
        image_size: int = 336,
        max_length: int = 2048,
        lengths: Path | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.jsonl, self.image_root, self.image_size = Path(jsonl), Path(image_root), image_size
        self.tokenizer, self.template, self.num_image_tokens = tokenizer, template, num_image_tokens
        self.max_length = max_length
        self.samples: list[Sample | LazySample] = []
        self.skipped: list[dict] = []
        self.truncated: list[str] = []
        self.lengths_source = "computed"
        self._fd: tuple[int, int] | None = None  # (pid, fd): a DataLoader worker opens its own
        table = None
        if lengths is not None:
            from training_jobs.lengths import read_lengths

            table, why = read_lengths(Path(lengths), self.jsonl, tokenizer, template, num_image_tokens)
            if table is None and log is not None:
                log(f"token lengths not precomputed for {self.jsonl}: {why}; tokenizing every record now")
        if table is not None:
            self._from_lengths(table)
            self.lengths_source = "precomputed"
            return
        for rec in read_jsonl(jsonl):
            self._add(rec, tokenizer, template, num_image_tokens, max_length)

    def _skip(self, rec: dict, reason: str, detail: str = "") -> None:
        self.skipped.append({"id": str(rec.get("id")), "reason": reason, "detail": detail})

    def _image(self, rec: dict) -> tuple[Path | None, str | None]:
        if not rec.get("image"):
            return None, None
        image = self.image_root / rec["image"]
        return image, (None if image.is_file() else str(image))

    def _add(self, rec: dict, tokenizer, template: str, num_image_tokens: int, max_length: int) -> None:
        from training_jobs.lengths import conversation_of

        convs, skip = conversation_of(rec)
        image, missing = self._image(rec)
        if skip == "no_answer":
            return self._skip(rec, skip)
        if missing:
            return self._skip(rec, "image_missing", missing)
        if skip:
            return self._skip(rec, skip)
        ids, labels = tokenize_conversation(tokenizer, convs, template, num_image_tokens)
        if len(ids) > max_length:
            last_image = max((i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX), default=-1)
            kept_labels = [x for x in labels[:max_length] if x != IGNORE_INDEX]
            if last_image >= max_length or not kept_labels:
                return self._skip(rec, "too_long", f"{len(ids)} tokens > max_length {max_length}")
            ids, labels = ids[:max_length], labels[:max_length]
            self.truncated.append(str(rec.get("id")))
        self.samples.append(Sample(str(rec.get("id")), ids, labels, image))

    def _from_lengths(self, table) -> None:
        """The same samples, skips and truncations `_add` would give, from the precomputed lengths."""
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        for k, rid in enumerate(cols["id"]):
            rec = {"id": rid, "image": cols["image"][k]}
            skip = cols["skip"][k]
            image, missing = self._image(rec)
            if skip == "no_answer":
                self._skip(rec, skip)
                continue
            if missing:
                self._skip(rec, "image_missing", missing)
                continue
            if skip:
                self._skip(rec, skip)
                continue
            n = cols["tokens"][k]
            if n > self.max_length:
                first_label = cols["first_label"][k]
                if cols["last_image"][k] >= self.max_length or not 0 <= first_label < self.max_length:
                    self._skip(rec, "too_long", f"{n} tokens > max_length {self.max_length}")
                    continue
                n = self.max_length
                self.truncated.append(rid)
            self.samples.append(LazySample(rid, n, image, cols["offset"][k], cols["nbytes"][k]))

    def sample(self, i: int) -> Sample:
        """Sample i with its tokens (tokenized now when its length came from the lengths file)."""
        s = self.samples[i]
        if isinstance(s, Sample):
            return s
        from training_jobs.lengths import conversation_of

        pid = os.getpid()
        if self._fd is None or self._fd[0] != pid:
            self._fd = (pid, os.open(self.jsonl, os.O_RDONLY))
        rec = json.loads(os.pread(self._fd[1], s.nbytes, s.offset))
        convs, _ = conversation_of(rec)
        if str(rec.get("id")) != s.id or convs is None:
            raise RuntimeError(f"{self.jsonl}: the record at byte {s.offset} is not {s.id}: the file changed")
        ids, labels = tokenize_conversation(self.tokenizer, convs, self.template, self.num_image_tokens)
        ids, labels = ids[: self.max_length], labels[: self.max_length]
        if len(ids) != s.length:
            raise RuntimeError(
                f"{self.jsonl}: {s.id} has {len(ids)} tokens, its lengths file said {s.length}: the tokenizer changed"
            )
        return Sample(s.id, ids, labels, s.image)

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
