"""VLMEvalKit benchmark TSVs, as `LMUData/` holds them: `<dataset>.tsv` and `<dataset>_local.tsv`.

Columns `index`, `image` (base64 of a JPEG re-save), `question`, `A`..`E`, `answer`, grouping columns.
Rules follow VLMEvalKit (`vlmeval/dataset/image_base.py::ImageBaseDataset.__init__`, `dump_image`;
`vlmeval/smp/file.py::localize_df`, `LMUDataRoot`):
- a row whose `image` cell is empty is skipped (`skip_noimg`), not an error;
- an `image` cell of 64 characters or fewer is the `index` of another row whose image it reuses; such
  rows add no new image, but a reference to an index that never appears is reported;
- a cell that looks like a Python list (`['...', '...']`) holds several images; each is `<index>:<k>`;
- `*_local.tsv` (written by VLMEvalKit's `LOCALIZE` for files over 1 GB) has `image_path` instead of
  `image`: absolute paths under `LMUData/images/<dataset>/` as written, or paths relative to that
  folder. A moved `LMUData` is found again: the part after `images/<dataset>/` is looked up beside
  the TSV.

The file is read row by row with the csv module (field size limit raised: one cell is a whole image),
never loaded whole; GMAI-MMBench VAL alone is 9.34 GB. Bytes that are not UTF-8 are reported with the
file and line and replaced (U+FFFD); the row is still used. The dataset name is the file stem without
`_local`, which is VLMEvalKit's dataset name (`GMAI-MMBench_VAL`, `PathVQA_TEST`).
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gmai_pipeline.benchmarks.base import BenchmarkImage, read_image_file

BACKREF_MAX = 64
LOCAL_SUFFIX = "_local"


def dataset_name(path: Path) -> str:
    """VLMEvalKit's dataset name of a TSV: `GMAI-MMBench_VAL_local.tsv` -> `GMAI-MMBench_VAL`."""
    stem = Path(path).stem
    return stem[: -len(LOCAL_SUFFIX)] if stem.endswith(LOCAL_SUFFIX) else stem


def tsv_files(folder: Path) -> list[Path]:
    """The TSVs of one folder, `X_local.tsv` dropped where `X.tsv` is beside it (same questions)."""
    files = sorted(p for p in Path(folder).glob("*.tsv") if p.is_file() and not p.name.startswith("."))
    return dedupe_local(files)


def dedupe_local(files: list[Path]) -> list[Path]:
    full = {(p.parent, p.stem) for p in files if not p.stem.endswith(LOCAL_SUFFIX)}
    return [p for p in files if not (p.stem.endswith(LOCAL_SUFFIX) and (p.parent, dataset_name(p)) in full)]


def cells(cell: str) -> list[str]:
    """One image cell -> its images (VLMEvalKit `toliststr`: a `[...]` cell is a list)."""
    text = cell.strip()
    if len(text) > 1 and text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return [text]
        if isinstance(value, list):
            return [str(v) for v in value]
    return [text] if text else []


@dataclass(frozen=True)
class TsvRow:
    line: int  # physical line where the row starts (1 = header)
    fields: dict[str, str]


def _clean(value: str) -> tuple[str, bool]:
    """(text, had undecodable bytes); surrogate-escaped bytes become U+FFFD."""
    if value.isascii():
        return value, False
    try:
        value.encode("utf-8")
        return value, False
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), True


def iter_rows(path: Path, problems: list[str], benchmark: str | None = None) -> Iterator[TsvRow]:
    """Rows of a VLMEvalKit TSV as {column: text}; short rows and undecodable bytes are reported."""
    benchmark = benchmark or dataset_name(path)
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            problems.append(f"{benchmark}: {path}: empty file")
            return
        header = [_clean(h)[0].strip() for h in header]
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(c.strip() for c in row):
                continue
            if len(row) < len(header):
                problems.append(
                    f"{benchmark}: {path}: line {line}: {len(row)} fields, expected {len(header)} "
                    "(the missing ones read as empty)"
                )
                row = row + [""] * (len(header) - len(row))
            fields, bad = {}, []
            for name, value in zip(header, row, strict=False):
                fields[name], undecodable = _clean(value)
                if undecodable:
                    bad.append(name)
            if bad:
                problems.append(
                    f"{benchmark}: {path}: line {line}: bytes that are not UTF-8 in {', '.join(bad)} "
                    "(replaced with U+FFFD; row kept)"
                )
            yield TsvRow(line, fields)


def image_root(path: Path) -> Path:
    """Where VLMEvalKit puts a dataset's decoded images: `LMUData/images/<dataset>/`."""
    return Path(path).parent / "images" / dataset_name(path)


def resolve_image_path(cell: str, tsv: Path) -> Path | None:
    """An `image_path` cell of a `_local.tsv` -> the file, wherever `LMUData` now lives (None: not found)."""
    name = dataset_name(tsv)
    given = Path(cell)
    candidates = [given] if given.is_absolute() else [image_root(tsv) / given, tsv.parent / given]
    if given.is_absolute():
        parts = given.parts
        for i in range(len(parts) - 2, -1, -1):  # .../images/<dataset>/<rest> -> beside this TSV
            if parts[i] == "images" and parts[i + 1] == name:
                candidates.append(image_root(tsv).joinpath(*parts[i + 2 :]))
                break
        candidates.append(image_root(tsv) / given.name)
    return next((c for c in candidates if c.is_file()), None)


def read_tsv(path: Path, problems: list[str], benchmark: str | None = None) -> Iterator[BenchmarkImage]:
    """Stream the distinct images of one VLMEvalKit TSV (`image` base64 or `_local` `image_path`)."""
    benchmark = benchmark or dataset_name(path)
    rows = iter_rows(path, problems, benchmark)
    first = next(rows, None)
    if first is None:
        return
    column = "image" if "image" in first.fields else "image_path" if "image_path" in first.fields else None
    if "index" not in first.fields or column is None:
        problems.append(
            f"{benchmark}: {path}: no `index` and `image`/`image_path` columns (header {list(first.fields)[:6]})"
        )
        return
    seen: set[str] = set()
    refs: dict[str, str] = {}  # referenced index -> first row referring to it
    for row in _chain(first, rows):
        index = row.fields["index"].strip()
        seen.add(index)
        images = cells(row.fields[column])
        for k, cell in enumerate(images):
            item_id = index if len(images) == 1 else f"{index}:{k}"
            if column == "image_path":
                found = resolve_image_path(cell, path)
                if found is None:
                    problems.append(
                        f"{benchmark}: {path}: line {row.line}: item {item_id}: image_path {cell!r} not found "
                        f"(looked beside the TSV in {image_root(path)})"
                    )
                    continue
                got = read_image_file(found, benchmark, item_id, problems)
                if got is not None:
                    yield got
                continue
            if len(cell) <= BACKREF_MAX:
                refs.setdefault(cell, item_id)
                continue
            try:
                data = base64.b64decode(cell, validate=False)
            except (binascii.Error, ValueError) as exc:
                problems.append(
                    f"{benchmark}: {path}: line {row.line}: item {item_id}: image is not base64 ({exc})"
                )
                continue
            yield BenchmarkImage(benchmark, item_id, data)
    for target, item_id in refs.items():
        if target not in seen:
            problems.append(
                f"{benchmark}: {path}: item {item_id} refers to image of index {target!r}, which is absent"
            )


def _chain(first: TsvRow, rest: Iterator[TsvRow]) -> Iterator[TsvRow]:
    yield first
    yield from rest


def read(folder: Path, problems: list[str]) -> Iterator[BenchmarkImage]:
    for path in tsv_files(folder):
        yield from read_tsv(path, problems)
