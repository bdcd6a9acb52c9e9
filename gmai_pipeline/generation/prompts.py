"""Versioned prompt templates in `assets/prompts/` and their rendering.

A prompt file is never edited once used: a new wording is a new file and a bump of `current` in
`index.yaml`, so every record's `prompt_version` names the exact text it was made with.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from string import Template
from typing import Any

from gmai_pipeline import safe_yaml
from gmai_pipeline.settings import ASSETS_DIR

PROMPTS_DIR = ASSETS_DIR / "prompts"
TASKS = ("caption", "region_caption", "vqa", "translate")


@lru_cache(maxsize=4)
def load_index(folder: Path = PROMPTS_DIR) -> dict[str, Any]:
    return safe_yaml.load(folder / "index.yaml")


@lru_cache(maxsize=32)
def load_template(version: str, folder: Path = PROMPTS_DIR) -> str:
    path = folder / f"{version}.txt"
    if not path.exists():
        raise FileNotFoundError(f"prompt template {path} not found (named in {folder / 'index.yaml'})")
    return path.read_text().strip()


def current_version(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task '{task}' (expected one of {', '.join(TASKS)})")
    return load_index()["current"][task]


def format_bbox(bbox: list[int] | tuple[int, ...] | None) -> str:
    return "[" + ", ".join(str(int(v)) for v in bbox) + "]" if bbox is not None else ""


def render(task: str, fields: dict[str, Any], version: str | None = None) -> tuple[str, str]:
    """(version, text) of the task's prompt filled with annotation fields; a missing field is an error."""
    version = version or current_version(task)
    values = {k: ("" if v is None else str(v)) for k, v in fields.items()}
    values["bbox"] = format_bbox(fields.get("bbox"))
    return version, Template(load_template(version)).substitute(values)


def _pick(seed: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(seed.encode("utf-8")).digest()[:4], "big") % n


def instruction(kind: str, sample_id: str, bbox: list[int] | None, lang: str = "en") -> str:
    """The human turn before a caption (without the `<image>` marker); deterministic per sample."""
    options = load_index()["instructions"][kind]
    i = _pick(f"{sample_id}#{kind}", len(options["en"]))
    return Template(options[lang][i]).substitute(bbox=format_bbox(bbox))


def instruction_translation(kind: str, english: str, bbox: list[int] | None) -> str | None:
    """The Chinese instruction parallel to an English one from the index, or None if it is not one of ours."""
    options = load_index()["instructions"].get(kind)
    if not options:
        return None
    for en, zh in zip(options["en"], options["zh"], strict=True):
        if Template(en).substitute(bbox=format_bbox(bbox)) == english:
            return Template(zh).substitute(bbox=format_bbox(bbox))
    return None


def label_terms(label: str) -> list[str]:
    """The label and its listed synonyms, lower case: any of them counts as mentioning the label."""
    base = re.sub(r"[_\s]+", " ", label).strip().lower()
    synonyms = load_index().get("synonyms") or {}
    terms = [base, *synonyms.get(base, [])]
    return [t.lower() for t in terms if t]
