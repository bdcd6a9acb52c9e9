"""Per-input values from declarations: a field, a column, a rule, or a fixed value (`layouts.ValueSource`)."""

from __future__ import annotations

import ast
from collections.abc import Mapping

from gmai_pipeline.layouts import ValueSource
from gmai_pipeline.readers.templates import first_rule


def raw_value(src: ValueSource, values: Mapping) -> str | None:
    """The source's value before `map`/`default`: None when absent or empty."""
    if src.value is not None:
        raw = src.value
    elif src.field is not None:
        raw = values.get(src.field)
    elif src.column is not None:
        raw = values.get(src.column)
    else:
        raw = first_rule(src.rules, values)
    raw = raw.strip() if isinstance(raw, str) else raw
    return raw or None


def resolve(src: ValueSource, values: Mapping) -> str | None:
    """The value for one input: raw, else `default`; then through `map`."""
    raw = raw_value(src, values)
    if raw is None:
        raw = src.default
    return src.map.get(raw, raw) if raw is not None else None


def list_literal(cell: str, where: str) -> list[str] | str:
    """The strings of a cell written as a Python list literal (`['pleural effusion', 'cardiomegaly']`,
    PadChest's Labels); a str is the error. Only literals are evaluated (`ast.literal_eval`), and only a
    list or tuple of strings is a label list: a number, a dict or a bare word is the row's error."""
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return f"{where}: label cell {cell[:60]!r} is not a list literal"
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        return f"{where}: label cell {cell[:60]!r} is not a list of strings"
    return [v.strip() for v in value if v.strip()]
