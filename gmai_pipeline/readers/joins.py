"""Table joins beyond "the cell equals the field" (`table.join.cell`, `table.join.table_by`).

PAPILA keys its clinical sheets `#002` for `FundusImages/RET002OD.jpg`, and keeps the right eyes in
`patient_data_od.xlsx` and the left in `patient_data_os.xlsx` (jusiro/FLAIR:local_data/
prepare_partitions.py adequate_09_papila): the key is read out of the cell through its pattern, and
each input looks its row up only in the table its field chooses, so a left eye never takes the right
eye's diagnosis. Rows whose cell does not fit the pattern are counted, not joined.
"""

from __future__ import annotations

import re


def key_reader(cell: str | None):
    """The function reading the key out of a cell (None where the cell does not fit the pattern)."""
    if cell is None:
        return lambda text: text
    head, tail = cell.split("{key}")
    pattern = re.compile(re.escape(head) + "(.+?)" + re.escape(tail))

    def read(text: str) -> str | None:
        m = pattern.fullmatch(text.strip())
        return m.group(1) if m else None

    return read


def joined(ctx, join, tables, found) -> dict[str, dict]:
    """{input path: its row}: rows keyed by (table, key) when `table_by` chooses the table, else by key
    (several tables merged, first value per column winning, as plain joins are)."""
    read = key_reader(join.cell)
    by_key: dict[tuple[str | None, str], dict] = {}
    for t in tables:
        where = t.rel if join.table_by is not None else None
        for _, row in t.rows:
            key = read(row[join.column])
            if key is None:
                ctx.counters["table_rows_key_not_matched"] += 1
                continue
            merged = by_key.setdefault((where, key), {})
            for k, v in row.items():
                merged.setdefault(k, v)
    out = {}
    for f in found:
        where = None
        if join.table_by is not None:
            file = join.table_by.files.get(f.fields.get(join.table_by.field, ""))
            if file is None:
                continue
            where = ctx.at(file)
        row = by_key.get((where, f.fields.get(join.field)))
        if row is not None:
            out[f.rel] = row
    return out
