"""CSV / TSV / XLSX tables as label, split and box sources (`reader.table`), and split list files.

Only the columns a declaration uses are kept in memory, so a 100k-row metadata table costs a few
columns, not the whole sheet. The functions take the file's bytes, read by the caller through
`ReaderContext.read` (verified against the manifest), never a path. Errors name the file and the problem (`TableError`), and become one
quarantined input: a table that cannot be read is visible, never an empty dataset.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gmai_pipeline.quarantine import Reason

DELIMITERS = (",", ";", "\t", "|")


class TableError(Exception):
    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class Table:
    rel: str
    header: list[str]
    rows: list[tuple[int, dict[str | int, str]]]  # (line or sheet row number, wanted column -> cell)


def _delimiter(first_line: str, rel: str, declared: str | None) -> str:
    if declared:
        return declared
    if rel.lower().endswith((".tsv", ".tab")):
        return "\t"
    counts = {d: first_line.count(d) for d in DELIMITERS}
    best = max(counts, key=counts.get)  # type: ignore[arg-type]
    return best if counts[best] else ","


def _csv_rows(data: bytes, rel: str, delimiter: str | None) -> Iterator[tuple[int, list[str]]]:
    with io.StringIO(data.decode("utf-8-sig"), newline="") as f:
        first = f.readline()
        f.seek(0)
        if first.startswith("\ufeff"):  # utf-8-sig already strips a BOM; a second one would be data
            first = first[1:]
        reader = csv.reader(f, delimiter=_delimiter(first, rel, delimiter))
        yield from enumerate(reader, start=1)


def _xlsx_rows(data: bytes, sheet: str | None) -> Iterator[tuple[int, list[str]]]:
    import openpyxl

    wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        ws = wb[sheet] if sheet else wb.worksheets[0]
        for line, values in enumerate(ws.iter_rows(values_only=True), start=1):
            yield line, ["" if v is None else str(v) for v in values]
    finally:
        wb.close()


def raw_rows(data: bytes, rel: str, delimiter: str | None = None, sheet: str | None = None):
    """(row number, cells) of a CSV/TSV or XLSX file's bytes; TableError when it cannot be parsed."""
    try:
        if rel.lower().endswith((".xlsx", ".xlsm")):
            yield from _xlsx_rows(data, sheet)
        else:
            yield from _csv_rows(data, rel, delimiter)
    except KeyError:
        raise TableError(Reason.UNREADABLE, f"{rel}: no sheet named {sheet!r}") from None
    except (UnicodeDecodeError, csv.Error, OSError, ValueError) as exc:
        raise TableError(
            Reason.UNREADABLE, f"{rel}: not a readable table ({type(exc).__name__}: {exc})"
        ) from None
    except Exception as exc:  # openpyxl raises its own types for a damaged workbook
        raise TableError(
            Reason.UNREADABLE, f"{rel}: not a readable workbook ({type(exc).__name__})"
        ) from None


def read_table(
    data: bytes,
    rel: str,
    wanted: Iterable[str | int],
    *,
    delimiter: str | None = None,
    sheet: str | None = None,
    names: tuple[str, ...] = (),
    header_row: bool = True,
) -> Table:
    """The wanted columns (names or 0-based indices) of every data row; TableError naming what is missing.

    `header_row=False`: the first line is data too (MRNet's `train-acl.csv`: `0000,0`); columns are
    `names` or indices."""
    rows_iter = raw_rows(data, rel, delimiter, sheet)
    header = list(names)
    try:
        line, first = next(rows_iter)
    except StopIteration:
        raise TableError(Reason.UNREADABLE, f"{rel}: the table is empty") from None
    header_from_file = [c.strip() for c in first] if header_row else [str(i) for i in range(len(first))]
    if not header_row:
        rows_iter = itertools.chain([(line, first)], rows_iter)
    if not header:
        header = header_from_file
    index: dict[str | int, int] = {}
    missing = []
    for col in dict.fromkeys(wanted):
        if isinstance(col, int):
            if col >= len(header) and col >= len(header_from_file):
                missing.append(col)
            index[col] = col
        elif col in header:
            index[col] = header.index(col)
        else:
            missing.append(col)
    if missing:
        raise TableError(
            Reason.UNREADABLE,
            f"{rel}: column(s) {missing} not in the header {header} (set table.names to rename)",
        )
    rows = []
    for line, cells in rows_iter:
        if not any(c.strip() for c in cells):
            continue
        rows.append((line, {k: (cells[i].strip() if i < len(cells) else "") for k, i in index.items()}))
    return Table(rel, header, rows)


def read_list(data: bytes, rel: str) -> list[str]:
    """Entries of a split list file's bytes (one name per line, blank lines ignored)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TableError(
            Reason.UNREADABLE, f"{rel}: not a readable list file ({type(exc).__name__})"
        ) from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]
