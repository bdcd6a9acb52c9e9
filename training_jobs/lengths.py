"""Token lengths of a mixture, computed once beside it, so training ranks plan their rows without tokenizing.

    python -m training_jobs.lengths --data mixtures/stage1.jsonl --model MODEL_DIR [--template internlm2]

writes `stage1.lengths.parquet` beside the JSONL: one row per record line (`id`, the line's byte `offset` and
`nbytes`, `tokens` before truncation with the image expanded, `last_image` and `first_label` (the positions
truncation must keep), `image`, and `skip`, why training cannot use the record). Training reads it instead of
tokenizing every record before step 1 and tokenizes each sample when its micro-batch is built.

The file's metadata names what the lengths depend on: a fingerprint of the tokenizer (its full serialized
form), the chat template (its text), the image token count and LENGTHS_VERSION (the tokenization code), and
the SHA-256 of the JSONL. Training compares them with its own; any difference is reported as a warning and
training computes the lengths itself, as it did without the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from training_jobs.chat import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN_INDEX,
    TEMPLATES,
    tokenize_conversation,
)

LENGTHS_VERSION = "1"  # bump when chat.tokenize_conversation, `conversation_of` or the truncation rule change
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("offset", pa.int64()),  # byte offset of the record's line in the JSONL
        ("nbytes", pa.int32()),  # bytes of the line, newline included
        ("tokens", pa.int32()),  # before truncation; 0 when skipped
        ("last_image", pa.int32()),  # position of the last image token, -1 for none
        ("first_label", pa.int32()),  # position of the first supervised token, -1 for none
        ("image", pa.string()),  # relative to the image root, null for text only
        ("skip", pa.string()),  # why training cannot use it (checked before tokenizing), null if usable
    ]
)
CHUNK = 2048


def lengths_path(data: Path) -> Path:
    return Path(data).with_name(Path(data).stem + ".lengths.parquet")


def conversation_of(rec: dict) -> tuple[list[dict] | None, str | None]:
    """(turns to tokenize, None) or (None, why the record cannot be trained on); the image's file is not checked."""
    convs = [dict(t) for t in rec.get("conversations") or []]
    if not any(t.get("from") in ("gpt", "assistant") for t in convs):
        return None, "no_answer"
    n_placeholders = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in convs)
    if rec.get("image"):
        if n_placeholders == 0:  # LLaVA's convention: the image goes before the first human turn
            convs[0]["value"] = IMAGE_PLACEHOLDER + "\n" + convs[0]["value"]
        elif n_placeholders > 1:
            return None, "multiple_image_placeholders"
    elif n_placeholders:
        return None, "placeholder_without_image"
    return convs, None


def fingerprint(tokenizer, template: str, num_image_tokens: int) -> str:
    """What the lengths depend on besides the data: the tokenizer, the template, the image tokens, the code."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        tok = backend.to_str()
    else:  # a slow tokenizer: its vocabulary and special tokens
        tok = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens])
    parts = [
        LENGTHS_VERSION,
        type(tokenizer).__name__,
        str(tokenizer.bos_token_id),
        repr(TEMPLATES[template]),
    ]
    parts += [str(num_image_tokens), tok]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def measure(rec: dict, tokenizer, template: str, num_image_tokens: int) -> dict[str, Any]:
    convs, skip = conversation_of(rec)
    out = {"id": str(rec.get("id")), "image": rec.get("image") or None, "skip": skip}
    if skip:
        return out | {"tokens": 0, "last_image": -1, "first_label": -1}
    ids, labels = tokenize_conversation(tokenizer, convs, template, num_image_tokens)
    last_image = max((i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX), default=-1)
    first_label = next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), -1)
    return out | {"tokens": len(ids), "last_image": last_image, "first_label": first_label}


def _lines(path: Path) -> Iterator[list[tuple[int, bytes]]]:
    """Chunks of (offset, line) of the non-empty lines."""
    chunk, offset = [], 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                chunk.append((offset, line))
            offset += len(line)
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


_worker: dict[str, Any] = {}


def _init_worker(tokenizer, template: str, num_image_tokens: int) -> None:
    _worker.update(tokenizer=tokenizer, template=template, num_image_tokens=num_image_tokens)


def _measure_chunk(chunk: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
    tok, template, n_img = _worker["tokenizer"], _worker["template"], _worker["num_image_tokens"]
    out = []
    for offset, line in chunk:
        row = measure(json.loads(line), tok, template, n_img)
        out.append(row | {"offset": offset, "nbytes": len(line)})
    return out


def write_lengths(
    data: Path, tokenizer, template: str, num_image_tokens: int, output: Path | None = None, workers: int = 1
) -> Path:
    """Measure every record of `data` (on `workers` processes) into its lengths file.

    The workers are spawned and get the tokenizer pickled: a fast tokenizer runs a Rust thread pool, and a
    process forked from one that holds it (or any other thread's lock) can hang forever on a lock no thread
    of its own will release."""
    output = Path(output or lengths_path(data))
    meta = {
        "fingerprint": fingerprint(tokenizer, template, num_image_tokens),
        "template": template,
        "num_image_tokens": str(num_image_tokens),
        "lengths_version": LENGTHS_VERSION,
        "data_sha256": sha256_file(data),
        "data_bytes": str(os.path.getsize(data)),
    }
    schema = SCHEMA.with_metadata({f"gmai.{k}": v for k, v in meta.items()})
    _init_worker(tokenizer, template, num_image_tokens)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            if workers > 1:
                init = (tokenizer, template, num_image_tokens)
                with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=init) as pool:
                    for rows in pool.imap(_measure_chunk, _lines(data)):
                        writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            else:
                for chunk in _lines(data):
                    writer.write_table(pa.Table.from_pylist(_measure_chunk(chunk), schema=schema))
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def read_lengths(
    path: Path, data: Path, tokenizer, template: str, num_image_tokens: int
) -> tuple[pa.Table | None, str]:
    """(table, "") when the lengths file was made for this data, tokenizer, template and image size; else
    (None, why not), and training must tokenize."""
    if not path.is_file():
        return None, f"no lengths file {path}"
    meta = {
        k.decode().removeprefix("gmai."): v.decode() for k, v in (pq.read_schema(path).metadata or {}).items()
    }
    if meta.get("fingerprint") != fingerprint(tokenizer, template, num_image_tokens):
        made = f"template {meta.get('template')!r}, {meta.get('num_image_tokens')} image tokens"
        return None, (
            f"{path} was computed with another tokenizer or template ({made}, lengths version "
            f"{meta.get('lengths_version')}; now template {template!r}, {num_image_tokens} image tokens, version "
            f"{LENGTHS_VERSION})"
        )
    if meta.get("data_bytes") != str(os.path.getsize(data)) or meta.get("data_sha256") != sha256_file(data):
        return None, f"{path} was computed for another version of {data} (rematerialize the mixture)"
    return pq.read_table(path), ""


def main(argv: list[str] | None = None) -> None:
    from training_jobs.model import VL_CONFIG, load_tokenizer_and_image_tokens

    p = argparse.ArgumentParser(prog="python -m training_jobs.lengths", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="mixture JSONL")
    p.add_argument("--model", type=Path, required=True, help="model folder (tokenizer/, vision/)")
    p.add_argument("--template", default=None, help="chat template (default: the model's, internlm2)")
    p.add_argument("--output", type=Path, default=None, help="default: <data stem>.lengths.parquet beside it")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--trust-remote-code", action="store_true")
    args = p.parse_args(argv)
    tokenizer, num_image_tokens = load_tokenizer_and_image_tokens(args.model, args.trust_remote_code)
    meta = json.loads((args.model / VL_CONFIG).read_text()) if (args.model / VL_CONFIG).exists() else {}
    template = args.template or meta.get("template", "internlm2")
    out = write_lengths(args.data, tokenizer, template, num_image_tokens, args.output, args.workers)
    print(f"{out}: {pq.ParquetFile(out).metadata.num_rows} records measured with template {template}")


if __name__ == "__main__":
    main()
