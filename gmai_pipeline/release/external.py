"""External image-text corpora in the training mixtures (the paper's 11.7M mix, its "w/o our data" baseline).

A corpus is declared once in `mixtures.yaml` and used by stage components with a ratio:

```yaml
corpora:
  pmc_vqa_train:
    annotations: /data/PMC-VQA/train_llava.json   # LLaVA/ShareGPT records: a JSON array or JSONL
    image_folder: /data/PMC-VQA/images            # the records' `image` paths are relative to it
stages:
  stage3:
    components:
      pmc_vqa: {corpus: pmc_vqa_train, sample_ratio: 1.0}
```

Records are LLaVA's (`{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}`; ShareGPT's
`user`/`assistant` roles are read as human/gpt; a record without `image` is text-only). Each record is
checked like ours (`release.loader.check_record`); an image path that is absolute, leaves the image
folder or is missing rejects the record with the reason (`<corpus>.rejected.parquet`, quarantine schema).

Their images are decontaminated exactly as ours (`decontaminate.find_matches`: byte MD5, decoded-pixel
MD5, dHash with the pHash veto, against `benchmark_hashes`); a record whose image matches, or cannot be
decoded, is removed (`<corpus>.removed.parquet`: what matched what). The kept records, with absolute
image paths, are `<corpus>.jsonl` under `$GMAI_OUTPUT_ROOT/external/`: what the stage mixtures read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from gmai_pipeline.quarantine import Reason
from gmai_pipeline.release.loader import check_record
from gmai_pipeline.release.records import IMAGE_TOKEN
from gmai_pipeline.schemas import QUARANTINE_SCHEMA
from gmai_pipeline.storage import atomic_path, write_table

KIND = "external"
ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}
REMOVED_SCHEMA = pa.schema(
    [("id", pa.string()), ("image", pa.string()), ("image_md5", pa.string()), ("benchmark", pa.string()),
     ("item_id", pa.string()), ("method", pa.string()), ("distance", pa.int64())]
)  # fmt: skip


class ExternalCorpus(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    annotations: str
    image_folder: str = ""
    language: str | None = None  # default: guessed per record (zh when mostly CJK)


def resolve(path: str, config_path: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (Path(config_path).parent / p).resolve()


def iter_raw(path: Path) -> Iterator[tuple[int, Any]]:
    """(position, record) from a JSON array (LLaVA's `json.load`) or JSON Lines; a bad JSONL line is yielded as an error."""
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        data = json.loads(path.read_text(encoding="utf-8"))
        yield from enumerate(data, 1)
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield n, ValueError(f"not JSON ({exc})")


def to_record(raw: Any, name: str, n: int, image_folder: Path | None, language: str | None) -> dict[str, Any]:
    """One corpus record -> our training record; raises ValueError with the reason."""
    from gmai_pipeline.release.mixtures import is_cjk_text

    if isinstance(raw, Exception):
        raise raw
    if not isinstance(raw, dict):
        raise ValueError("a record must be a JSON object")
    turns = []
    for t in raw.get("conversations") or []:
        role = ROLES.get(str(t.get("from", "")).lower())
        if role is None or not isinstance(t.get("value"), str):
            raise ValueError(f"turn {t!r:.80} is not a human/gpt turn with a text value")
        turns.append({"from": role, "value": t["value"]})
    if not turns:
        raise ValueError("no `conversations`")
    record: dict[str, Any] = {"id": f"{name}#{raw.get('id', n)}", "conversations": turns}
    image = raw.get("image")
    if isinstance(image, list):
        if len(image) != 1:
            raise ValueError(f"{len(image)} images in one record (training takes one)")
        image = image[0]
    if image:
        rel = Path(str(image))
        if image_folder is None:
            raise ValueError("the record names an image but the corpus has no image_folder")
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"image path {image!r} must be relative to the image folder")
        path = image_folder / rel
        if path.is_symlink() or not path.resolve().is_relative_to(image_folder.resolve()):
            raise ValueError(f"image {image!r} leaves the image folder (symlink)")
        if not path.is_file():
            raise ValueError(f"image {path} not found")
        if not any(IMAGE_TOKEN in t["value"] for t in turns):  # LLaVA: the image goes before the first turn
            turns[0]["value"] = f"{IMAGE_TOKEN}\n{turns[0]['value']}"
        record["image"] = str(path.resolve())
        for key in ("width", "height"):
            if isinstance(raw.get(key), int):
                record[key] = raw[key]
    text = " ".join(t["value"] for t in turns)
    record.update({"dataset": name, "language": language or ("zh" if is_cjk_text(text) else "en"), "kind": KIND,
                   "generator": str(raw.get("generator") or "external")})  # fmt: skip
    check_record(record, f"{name} record {n}")
    return record


def read_corpus(name: str, corpus: ExternalCorpus, config_path: Path) -> tuple[list[dict], list[dict]]:
    """(records, rejected rows in the quarantine schema); a missing annotation file is an error."""
    path = resolve(corpus.annotations, config_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"external corpus {name}: annotation file {path} does not exist (mixtures.yaml)"
        )
    folder = resolve(corpus.image_folder, config_path) if corpus.image_folder else None
    if folder is not None and not folder.is_dir():
        raise FileNotFoundError(
            f"external corpus {name}: image folder {folder} does not exist (mixtures.yaml)"
        )
    records, rejected, seen = [], [], set()
    for n, raw in iter_raw(path):
        try:
            rec = to_record(raw, name, n, folder, corpus.language)
            if rec["id"] in seen:
                raise ValueError(f"id {rec['id']} repeats an earlier record")
            seen.add(rec["id"])
            records.append(rec)
        except ValueError as exc:
            rejected.append({"dataset": name, "source_path": f"{path}:{n}", "step": "external_corpus",
                             "reason": Reason.BAD_RECORD, "detail": str(exc)})  # fmt: skip
    return records, rejected


@dataclass
class CorpusResult:
    name: str
    records: int
    kept: list[dict]
    removed: pd.DataFrame  # REMOVED_SCHEMA
    rejected: list[dict]
    images: int = 0
    removed_by_method: dict[str, int] = field(default_factory=dict)
    overlap: list[str] = field(
        default_factory=list
    )  # kept images with a benchmark's byte/pixel MD5: must be none


def decontaminate(
    records: list[dict], bench: pd.DataFrame, workers: int, threshold: int, phash_veto
) -> tuple[list[dict], pd.DataFrame, int, list[str]]:
    """(kept records, removed rows, distinct images hashed, kept images still overlapping: must be none).

    The same hashes and matcher as our own images (`decontaminate.find_matches`, `strongest`)."""
    from gmai_pipeline import decontaminate as dc

    paths = sorted({r["image"] for r in records if "image" in r})
    rows = []
    for path, hashed in zip(paths, dc.parallel_map(dc._hash_path, paths, workers, chunksize=8), strict=True):
        if isinstance(hashed, str):
            rows.append({"path": path, "image_md5": f"unhashable:{path}", "error": hashed})
        else:
            rows.append({"path": path, "image_md5": hashed.md5, "pixel_md5": hashed.pixel_md5,
                         "dhash": hashed.dhash, "phash": hashed.phash, "error": None})  # fmt: skip
    train = pd.DataFrame(rows, columns=["path", "image_md5", "pixel_md5", "dhash", "phash", "error"])
    for col in ("dhash", "phash"):
        train[col] = train[col].astype("Int64")
    ok = train[train["error"].isna()]
    matches = (
        dc.strongest(dc.find_matches(ok, bench, threshold, phash_veto)) if len(ok) and len(bench) else None
    )
    bad: dict[str, dict] = {}
    by_md5: dict[str, list[str]] = {}
    for md5, path in zip(ok["image_md5"], ok["path"], strict=True):
        by_md5.setdefault(md5, []).append(path)  # two files with the same bytes are both removed
    if matches is not None:
        for m in matches.itertuples():
            for path in by_md5[m.image_md5]:
                bad[path] = {"image_md5": m.image_md5, "benchmark": m.benchmark, "item_id": str(m.item_id),
                             "method": m.method, "distance": int(m.distance)}  # fmt: skip
    for row in train[train["error"].notna()].itertuples():
        bad[row.path] = {"image_md5": None, "benchmark": None, "item_id": None, "method": "unhashable",
                         "distance": None}  # fmt: skip
    kept = [r for r in records if r.get("image") not in bad]
    removed = pd.DataFrame(
        [{"id": r["id"], "image": r["image"], **bad[r["image"]]} for r in records if r.get("image") in bad],
        columns=REMOVED_SCHEMA.names,
    )
    # The blocking check's question, asked of what is kept: any byte- or pixel-MD5 equal to a benchmark image's?
    left = ok[~ok["path"].isin(set(bad))]
    md5s, px = (
        set(bench["md5"]) if len(bench) else set(),
        set(bench["pixel_md5"].dropna()) if len(bench) else set(),
    )
    still = sorted(left.loc[left["image_md5"].isin(md5s) | left["pixel_md5"].isin(px), "path"])
    return kept, removed, len(paths), still


def process(
    name: str, corpus: ExternalCorpus, config_path: Path, bench: pd.DataFrame, out_dir: Path, workers: int,
    threshold: int, phash_veto,
) -> CorpusResult:  # fmt: skip
    records, rejected = read_corpus(name, corpus, config_path)
    kept, removed, images, still = decontaminate(records, bench, workers, threshold, phash_veto)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / f"{name}.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in kept:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    write_table(
        out_dir / f"{name}.removed.parquet",
        pa.Table.from_pandas(removed, schema=REMOVED_SCHEMA, preserve_index=False),
    )
    write_table(
        out_dir / f"{name}.rejected.parquet", pa.Table.from_pylist(rejected, schema=QUARANTINE_SCHEMA)
    )
    by_method = {str(k): int(v) for k, v in removed["method"].value_counts().items()} if len(removed) else {}
    return CorpusResult(name, len(records), kept, removed, rejected, images, by_method, still)


def clean_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.jsonl"


def load_clean(out_dir: Path | None, name: str) -> list[dict]:
    """The decontaminated records of a corpus; fails with the fix when `external_corpora` has not run."""
    path = clean_path(out_dir, name) if out_dir is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"external corpus {name} has not been decontaminated yet ({path} missing): materialize external_corpora"
        )
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
