"""Per-image labels from free-text finding keywords in a column chosen per image (`label.column_by`,
`label.keywords`).

ODIR-5K's table has one row per patient, and the truth of each eye is its own cell, Left- or
Right-Diagnostic Keywords, listing several findings separated by a full-width comma ("moderate non
proliferative retinopathy，hypertensive retinopathy"). The image's `eye` field picks the cell; each
keyword is matched against the declared patterns (first wins) to a raw label, the same keywords-to-
classes rule the ODIR annotation uses (JordiCorbilla/ocular-disease-intelligent-recognition-deep-learning:
odir_rule_engine.py). A pattern with `value: null` marks a keyword that is no finding (lens dust, low
image quality): it is dropped, and an image left with no finding is `missing_label`. A keyword no
pattern matches is `unknown_label`, named, never guessed.
"""

from __future__ import annotations

import re


def chosen_cell(spec, values: dict) -> tuple[str | None, str | None]:
    """(the cell of the column the input's field chooses, None) or (None, why)."""
    by = spec.column_by
    key = str(values.get(by.field) or "").strip()
    column = by.columns.get(key)
    if column is None:
        return None, f"{by.field} '{key[:40]}' names none of the label columns ({', '.join(by.columns)})"
    cell = values.get(column)
    cell = cell.strip() if isinstance(cell, str) else cell
    return (str(cell) if cell not in (None, "") else None), None


def keyword_labels(spec, parts: list[str]) -> tuple[list[str], str | None]:
    """(raw labels of the keywords, in order, without repeats; None) or ([], the unmatched keyword)."""
    out: list[str] = []
    for part in parts:
        for k in spec.keywords:
            if re.search(k.regex, part, re.IGNORECASE):
                if k.value is not None and k.value not in out:
                    out.append(k.value)
                break
        else:
            return [], part
    return out, None
