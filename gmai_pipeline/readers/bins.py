"""Numeric labels binned into named classes (`label.bins`): LYSTO's lymphocyte counts per patch become
its scoring categories (0, 1-5, 6-10, 11-20, 21-50, 51-200, >200), the bin's `value` then going through
the catalog's labels like any raw label. Shared by the table readers and the HDF5 converter."""

from __future__ import annotations

import math

from gmai_pipeline.layouts import Bin


def bin_of(bins: tuple[Bin, ...], raw: str) -> tuple[str | None, str | None]:
    """(the bin's value, None), or (None, why) for a value that is not a number or falls in no bin."""
    text = str(raw).strip()
    try:
        x = float(text)
    except ValueError:
        return None, f"label {text[:40]!r} is not a number to bin"
    if not math.isfinite(x):
        return None, f"label {text[:40]!r} is not a finite number to bin"
    for b in bins:
        if (b.min is None or x >= b.min) and (b.max is None or x <= b.max):
            return b.value, None
    return None, f"label {text[:40]!r} falls in none of the declared bins"
