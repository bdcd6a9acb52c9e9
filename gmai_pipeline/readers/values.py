"""Per-input values from declarations: a field, a column, a rule, or a fixed value (`layouts.ValueSource`)."""

from __future__ import annotations

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
