"""VLMEvalKit benchmark TSV (GMAI-MMBench, and OmniMedVQA/PathVQA as VLMEvalKit ships them).

Columns `index`, `image` (base64 of a JPEG re-save), `question`, `A`..`E`, `answer`, grouping
columns. An `image` cell of 64 characters or fewer is the `index` of another row whose image it
reuses (VLMEvalKit `load_dataset` resolves it the same way); such rows add no new image and are
skipped, but a reference to an index that never appears is reported. A cell that looks like a
Python list (`['...', '...']`) holds several images (multi-image items); each is yielded as
`<index>:<k>`.

The file is read row by row with the csv module (field size limit raised: one cell is a whole
image), never loaded whole; GMAI-MMBench VAL alone is 9.34 GB. The benchmark name is the file
stem, which is VLMEvalKit's dataset name (`GMAI-MMBench_VAL`, `PathVQA_TEST`).
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import sys
from collections.abc import Iterator
from pathlib import Path

from gmai_pipeline.benchmarks.base import BenchmarkImage

BACKREF_MAX = 64


def tsv_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.tsv") if p.is_file())


def _cells(cell: str) -> list[str]:
    text = cell.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return [text]
        if isinstance(value, list):
            return [str(v) for v in value]
    return [text]


def read_tsv(path: Path, problems: list[str], benchmark: str | None = None) -> Iterator[BenchmarkImage]:
    """Stream the distinct images of one VLMEvalKit TSV."""
    benchmark = benchmark or path.stem
    csv.field_size_limit(sys.maxsize)
    seen: set[str] = set()
    refs: dict[str, str] = {}  # referenced index -> first row referring to it
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            problems.append(f"{benchmark}: {path}: empty file")
            return
        if "index" not in header or "image" not in header:
            problems.append(f"{benchmark}: {path}: no `index`/`image` columns (header {header[:6]})")
            return
        i_index, i_image = header.index("index"), header.index("image")
        for line, row in enumerate(reader, start=2):
            if len(row) <= max(i_index, i_image):
                problems.append(
                    f"{benchmark}: {path}: line {line}: {len(row)} fields, expected {len(header)}"
                )
                continue
            index = row[i_index].strip()
            seen.add(index)
            cells = _cells(row[i_image])
            for k, cell in enumerate(cells):
                item_id = index if len(cells) == 1 else f"{index}:{k}"
                if len(cell) <= BACKREF_MAX:
                    refs.setdefault(cell, item_id)
                    continue
                try:
                    data = base64.b64decode(cell, validate=False)
                except (binascii.Error, ValueError) as exc:
                    problems.append(f"{benchmark}: {path}: item {item_id}: image is not base64 ({exc})")
                    continue
                yield BenchmarkImage(benchmark, item_id, data)
    for target, item_id in refs.items():
        if target not in seen:
            problems.append(
                f"{benchmark}: {path}: item {item_id} refers to image of index {target!r}, which is absent"
            )


def read(folder: Path, problems: list[str]) -> Iterator[BenchmarkImage]:
    for path in tsv_files(folder):
        yield from read_tsv(path, problems)
