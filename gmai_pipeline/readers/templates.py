"""Path templates with named fields, and the conditions and rules that test field/column values.

A template is written against the layout root (`gmai_pipeline.layouts.FileSet` gives the syntax):
`{case}/{case}_frame{n}.nii.gz` compiles to one regular expression whose named groups are the fields,
so matching a file is one `fullmatch` and a field used twice must repeat the same text.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping

from gmai_pipeline.layouts import FIELD_TOKEN, Condition, Rule

DEFAULT_FIELD = r"[^/]+?"
DIGITS = re.compile(r"\d+")
_DYNAMIC = re.compile(r"\{|\*|\?")


class Template:
    """One compiled path template."""

    def __init__(self, text: str, patterns: Mapping[str, str] | None = None):
        self.text = text
        self.fields: list[str] = []
        self.regex = re.compile(self._compile(text, patterns or {}))
        cut = _DYNAMIC.search(text)
        literal = text if cut is None else text[: cut.start()]
        self.prefix = literal.rsplit("/", 1)[0] if "/" in literal else ""  # a folder every match is under
        self.literal = cut is None  # no field and no wildcard: names exactly one path

    def _compile(self, text: str, patterns: Mapping[str, str]) -> str:
        out, i = [], 0
        while i < len(text):
            m = FIELD_TOKEN.match(text, i)
            if m:
                name, inline = m.group(1), m.group(2)
                if name in self.fields:
                    out.append(f"(?P={name})")
                else:
                    self.fields.append(name)
                    out.append(f"(?P<{name}>{inline or patterns.get(name) or DEFAULT_FIELD})")
                i = m.end()
            elif text.startswith("**/", i):
                out.append(r"(?:[^/]+/)*")
                i += 3
            elif text[i] == "*":
                out.append(r"[^/]*")
                i += 1
            elif text[i] == "?":
                out.append(r"[^/]")
                i += 1
            else:
                out.append(re.escape(text[i]))
                i += 1
        return "".join(out)

    def match(self, rel: str) -> dict[str, str] | None:
        m = self.regex.fullmatch(rel)
        return m.groupdict() if m else None


def number(value: str) -> float | None:
    """A value as a number: itself when numeric, else its last run of digits (`amos_0507` -> 507)."""
    try:
        return float(value)
    except ValueError:
        runs = DIGITS.findall(value)
        return float(runs[-1]) if runs else None


def holds(cond: Condition, value: str | None) -> bool:
    """Whether one value satisfies a condition; a missing value satisfies only `not_in`."""
    if value is None:
        return cond.in_ is None and cond.min is None and cond.max is None and not cond.glob and not cond.regex
    v = value.strip()
    if cond.in_ is not None and v not in cond.in_:
        return False
    if cond.not_in is not None and v in cond.not_in:
        return False
    if cond.min is not None or cond.max is not None:
        n = number(v)
        if n is None or (cond.min is not None and n < cond.min) or (cond.max is not None and n > cond.max):
            return False
    if cond.glob and not fnmatch.fnmatchcase(v, cond.glob):
        return False
    return not (cond.regex and not re.fullmatch(cond.regex, v))


def all_hold(conditions: Mapping[str, Condition], values: Mapping[str, str | None]) -> str | None:
    """None when every condition holds, else the first key that fails (for counters and messages)."""
    for key, cond in conditions.items():
        if not holds(cond, values.get(key)):
            return key
    return None


def first_rule(rules: Iterable[Rule], values: Mapping[str, str | None]) -> str | None:
    for rule in rules:
        if all_hold(rule.when, values) is None:
            return rule.value
    return None


def matches_any(rel: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, g) for g in globs)
