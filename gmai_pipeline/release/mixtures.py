"""Per-stage training mixtures from `assets/mixtures.yaml`: which released records each stage trains on.

Each mixture is written as LLaVA JSONL (one full record per line, `image` relative to the images
root, text-only records without `image` and without `<image>`) plus `stageN.meta.json` holding the
image root, the sample count, the SHA-256 of the sorted id list and per-component counts, so a
training run can prove which samples it saw.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gmai_pipeline.release.external import ExternalCorpus, load_clean
from gmai_pipeline.release.loader import check_record
from gmai_pipeline.release.records import IMAGE_TOKEN, ReleaseRow
from gmai_pipeline.settings import ASSETS_DIR
from gmai_pipeline.storage import atomic_path, atomic_write_text

DEFAULT_MIXTURES_FILE = ASSETS_DIR / "mixtures.yaml"
STAGES = ("stage1", "stage2", "stage3")
TEXT_KIND = "text_dialogue"
# CJK ideographs, kana and hangul, and CJK punctuation/fullwidth forms.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


class QualityFilter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    min_answer_words: int = Field(0, ge=0)  # non-CJK answers: words
    min_answer_chars: int = Field(0, ge=0)  # CJK answers: CJK characters plus non-CJK words
    min_confidence: float | None = Field(None, ge=0, le=1)


class Component(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kinds: tuple[str, ...] = ()
    languages: tuple[str, ...] = ("en", "zh")
    text_files: tuple[str, ...] = ()
    corpus: str | None = None  # an external corpus declared under `corpora:` (release/external.py)
    sample_ratio: float = Field(1.0, ge=0)
    filter: QualityFilter | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Component:
        if sum((bool(self.kinds), bool(self.text_files), self.corpus is not None)) != 1:
            raise ValueError(
                "a component has one of kinds (released records), text_files (text dialogue) or corpus "
                "(an external corpus)"
            )
        return self


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = ""
    components: dict[str, Component]


class MixturesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: str = "gmai"
    corpora: dict[str, ExternalCorpus] = Field(default_factory=dict)
    stages: dict[str, Stage]

    @model_validator(mode="after")
    def _known_corpora(self) -> MixturesConfig:
        for stage, spec in self.stages.items():
            for name, comp in spec.components.items():
                if comp.corpus is not None and comp.corpus not in self.corpora:
                    raise ValueError(
                        f"{stage}.{name}: corpus {comp.corpus!r} is not declared under `corpora:`"
                    )
        return self


def mixtures_file() -> Path:
    return Path(os.environ.get("GMAI_MIXTURES_FILE", DEFAULT_MIXTURES_FILE)).resolve()


def load_mixtures(path: Path | None = None) -> tuple[MixturesConfig, Path]:
    path = Path(path) if path else mixtures_file()
    config = MixturesConfig.model_validate(yaml.safe_load(path.read_text()))
    missing = [s for s in STAGES if s not in config.stages]
    if missing:
        raise ValueError(f"{path}: stages {missing} are missing")
    return config, path


# --- answer quality -------------------------------------------------------------------------------------


def is_cjk_text(text: str) -> bool:
    """Mostly CJK: more CJK characters than Latin-script words."""
    cjk = len(_CJK.findall(text))
    return cjk > 0 and cjk >= len(_WORD.findall(_CJK.sub(" ", text)))


def answer_length(text: str) -> tuple[int, str]:
    """(length, unit): CJK text counts CJK characters plus other words ("chars"); other text counts words."""
    cjk = len(_CJK.findall(text))
    words = len(_WORD.findall(_CJK.sub(" ", text)))
    return (cjk + words, "chars") if is_cjk_text(text) else (words, "words")


def answers(record: dict[str, Any]) -> list[str]:
    return [t["value"] for t in record["conversations"] if t["from"] == "gpt"]


def drop_reason(row: ReleaseRow, rule: QualityFilter) -> str | None:
    """Why stage III drops this sample, or None to keep it. Confidence null is kept."""
    for text in answers(row.record):
        n, unit = answer_length(text)
        if n < (rule.min_answer_chars if unit == "chars" else rule.min_answer_words):
            return "short_answer"
    if (
        rule.min_confidence is not None
        and row.confidence is not None
        and row.confidence < rule.min_confidence
    ):
        return "low_confidence"
    return None


# --- sampling -------------------------------------------------------------------------------------------


def copies(record_id: str, ratio: float, seed: str) -> int:
    """How many times a record enters the mix: floor(ratio), plus one with probability frac(ratio), by hash."""
    whole, frac = int(math.floor(ratio)), ratio - math.floor(ratio)
    u = int.from_bytes(hashlib.sha256(f"{seed}\0{record_id}".encode()).digest()[:8], "big") / 2**64
    return whole + (1 if u < frac else 0)


def ids_sha256(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


# --- text-only dialogue ---------------------------------------------------------------------------------


def _turns(raw: dict[str, Any]) -> list[dict[str, str]]:
    """LLaVA `conversations` as they are, or OpenAI-style `messages` (system text joins the first user turn)."""
    if "conversations" in raw:
        return [{"from": t["from"], "value": t["value"]} for t in raw["conversations"]]
    system = [m["content"] for m in raw["messages"] if m["role"] == "system"]
    roles = {"user": "human", "assistant": "gpt"}
    turns = [
        {"from": roles[m["role"]], "value": m["content"]} for m in raw["messages"] if m["role"] != "system"
    ]
    if system and turns:
        turns[0]["value"] = "\n\n".join([*system, turns[0]["value"]])
    return turns


def text_record(raw: dict[str, Any], source: Path) -> dict[str, Any]:
    """A user-supplied dialogue line -> a text-only LLaVA record (no `image`, no `<image>`); raises ValueError."""
    if "image" in raw or "images" in raw:
        raise ValueError("text dialogue must not name an image")
    try:
        turns = _turns(raw)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"expected `conversations` or `messages` turns ({exc})") from None
    if any(IMAGE_TOKEN in t["value"] for t in turns):
        raise ValueError(f"text dialogue must not contain {IMAGE_TOKEN}")
    if any(not isinstance(t["value"], str) or not t["value"].strip() for t in turns):
        raise ValueError("empty turn")
    canonical = json.dumps(turns, ensure_ascii=False, sort_keys=True)
    record = {
        "id": str(
            raw.get("id") or f"text#{source.stem}#{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"
        ),
        "conversations": turns,
        "dataset": str(raw.get("dataset") or source.stem),
        "language": str(
            raw.get("language") or ("zh" if is_cjk_text(" ".join(t["value"] for t in turns)) else "en")
        ),
        "kind": TEXT_KIND,
        "generator": str(raw.get("generator") or "user-supplied"),
    }
    check_record(record, str(source))
    return record


def read_text_dialogue(paths: list[Path]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(records, rejected lines with reason); a missing file is an error, a bad line is a rejection."""
    records, rejected = [], []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"text dialogue file {path} does not exist (check assets/mixtures.yaml)")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(text_record(json.loads(line), path))
                except (ValueError, AttributeError) as exc:
                    rejected.append(
                        {"id": f"{path}:{n}", "reason": "bad_text_dialogue", "detail": f"{path}:{n}: {exc}"}
                    )
    return records, rejected


# --- building a mixture ---------------------------------------------------------------------------------


@dataclass
class Mixture:
    stage: str
    records: list[dict[str, Any]]
    components: dict[str, dict[str, Any]]
    rejected: list[dict[str, str]] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.records]


def resolve(path: str, config_path: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (config_path.parent / p).resolve()


def build_mixture(
    stage: str,
    rows: list[ReleaseRow],
    config: MixturesConfig,
    config_path: Path,
    text_files: list[Path] | None = None,
    external_dir: Path | None = None,
) -> Mixture:
    """Select, filter and sample the records of one stage; text_files overrides every text component's files.

    External corpora are read decontaminated from `external_dir` (`release.external`)."""
    spec = config.stages[stage]
    records: list[dict[str, Any]] = []
    components: dict[str, dict[str, Any]] = {}
    rejected: list[dict[str, str]] = []
    for name, comp in spec.components.items():
        dropped: Counter[str] = Counter()
        if comp.text_files:
            files = (
                text_files if text_files is not None else [resolve(p, config_path) for p in comp.text_files]
            )
            candidates, bad = read_text_dialogue(files)
            rejected += bad
            source = [str(f) for f in files]
        elif comp.corpus is not None:
            candidates = load_clean(external_dir, comp.corpus)
            source = f"corpus={comp.corpus} (decontaminated)"
        else:
            candidates = []
            for row in rows:
                if row.record["kind"] not in comp.kinds or row.record["language"] not in comp.languages:
                    continue
                reason = drop_reason(row, comp.filter) if comp.filter else None
                if reason:
                    dropped[reason] += 1
                else:
                    candidates.append(row.record)
            source = f"kinds={list(comp.kinds)} languages={list(comp.languages)}"
        chosen = [r for r in candidates for _ in range(copies(r["id"], comp.sample_ratio, config.seed))]
        records += chosen
        components[name] = {
            "source": source,
            "sample_ratio": comp.sample_ratio,
            "candidates": len(candidates) + sum(dropped.values()),
            "dropped": dict(sorted(dropped.items())),
            "samples": len(chosen),
            "filter": comp.filter.model_dump() if comp.filter else None,
        }
    records.sort(key=lambda r: r["id"])
    return Mixture(stage, records, components, rejected)


def write_mixture(mixture: Mixture, out_dir: Path, image_root: Path, config_path: Path) -> dict[str, Any]:
    """`<stage>.jsonl` and `<stage>.meta.json` (the format the training stages read); returns the meta."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / f"{mixture.stage}.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in mixture.records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    meta = {
        "image_root": str(Path(image_root).resolve()),
        "samples": len(mixture.records),
        "ids_sha256": ids_sha256(mixture.ids),
        "components": mixture.components,
        "config": str(config_path),
        "rejected": len(mixture.rejected),
    }
    atomic_write_text(
        out_dir / f"{mixture.stage}.meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n"
    )
    return meta
