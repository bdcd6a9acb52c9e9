"""Per-stage training mixtures from `assets/mixtures.yaml`: which released records each stage trains on.

Each mixture is written as LLaVA JSONL (one full record per line, `image` relative to the images
root, text-only records without `image` and without `<image>`) plus `stageN.provenance.json` holding the
image root, the sample count, the SHA-256 of the sorted id list and per-component counts, so a
training run can prove which samples it saw. The trainer metas of each stage (InternVL, XTuner, LLaVA)
are written from a Mixture by `gmai_pipeline.release.trainer_metas`.

Stage III judges its candidates as the paper does, by the model trained so far: `score_candidates` lists
what the stage II model must score (the `stage3_scores` asset runs `training_jobs.score`), and a component's
`filter.model_confidence` drops the least confident by threshold and/or fraction. Every decision is kept as
`<stage>.scores.parquet` beside the mix. Text-only dialogue comes from files in the common formats:
ShareGPT/LLaVA `conversations` (`from`/`value`) or OpenAI `messages` (`role`/`content`), as a JSON array or
JSON Lines; a bad record is rejected naming the file and line, the rest goes on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gmai_pipeline import safe_yaml
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.release.external import ExternalCorpus, load_clean
from gmai_pipeline.release.loader import check_record
from gmai_pipeline.release.records import IMAGE_TOKEN, ReleaseRecords, ReleaseRow
from gmai_pipeline.settings import ASSETS_DIR
from gmai_pipeline.storage import atomic_path, atomic_write_text, write_table

DEFAULT_MIXTURES_FILE = ASSETS_DIR / "mixtures.yaml"
STAGES = ("stage1", "stage2", "stage3")
TEXT_KIND = "text_dialogue"
# CJK ideographs, kana and hangul, and CJK punctuation/fullwidth forms.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


class ModelConfidence(BaseModel):
    """Drop by the stage II model's confidence on the sample, exp(-mean answer-token loss) (stage3_scores)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min: float | None = Field(None, ge=0, le=1)  # drop below this confidence
    drop_lowest_fraction: float | None = Field(None, ge=0, lt=1)  # drop this share of the scored, least first

    @model_validator(mode="after")
    def _some_rule(self) -> ModelConfidence:
        if self.min is None and self.drop_lowest_fraction is None:
            raise ValueError("model_confidence needs min and/or drop_lowest_fraction")
        return self


class QualityFilter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    min_answer_words: int = Field(0, ge=0)  # non-CJK answers: words
    min_answer_chars: int = Field(0, ge=0)  # CJK answers: CJK characters plus non-CJK words
    min_confidence: float | None = Field(None, ge=0, le=1)  # the generating LLM's token confidence
    model_confidence: ModelConfidence | None = None  # the stage II model's (the paper's rule)


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
        if (self.text_files or self.corpus is not None) and self.filter:
            raise ValueError("filter applies to released records (kinds), not to text_files or corpora")
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
    config = MixturesConfig.model_validate(safe_yaml.load(path))
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

# Role names of ShareGPT/LLaVA (`from`) and OpenAI (`role`) dialogue, as LLaMA-Factory's data formats list
# them (hiyouga/LLaMA-Factory:data/README.md), mapped to LLaVA's.
ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}


def _content(value: Any, where: str) -> str:
    """A turn's text: a string, or OpenAI's list of content parts with only text parts."""
    if isinstance(value, list):
        kinds = {p.get("type") if isinstance(p, dict) else type(p).__name__ for p in value}
        if kinds - {"text"}:
            raise ValueError(
                f"{where}: only text content parts are allowed in text dialogue, found {sorted(kinds)}"
            )
        value = "".join(p["text"] for p in value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: empty or non-text content")
    return value


def _turns(raw: dict[str, Any]) -> list[dict[str, str]]:
    """ShareGPT/LLaVA `conversations` or OpenAI `messages` -> LLaVA human/gpt turns; system text joins the
    first user turn (our chat template has one system prompt of its own). Raises ValueError saying why."""
    if "conversations" in raw:
        turns, role_key, text_key = raw["conversations"], "from", "value"
    elif "messages" in raw:
        turns, role_key, text_key = raw["messages"], "role", "content"
    else:
        raise ValueError("expected `conversations` (ShareGPT/LLaVA) or `messages` (OpenAI) turns")
    if not isinstance(turns, list) or not turns:
        raise ValueError("the turns must be a non-empty list")
    system = [raw["system"]] if isinstance(raw.get("system"), str) and raw["system"].strip() else []
    out: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {i} is not an object")
        # ShareGPT dumps use from/value; some converters write role/content inside `conversations` too.
        role = turn.get(role_key, turn.get("role" if role_key == "from" else "from"))
        text = turn[text_key] if text_key in turn else turn.get("content" if text_key == "value" else "value")
        if role not in ROLES:
            raise ValueError(f"turn {i}: role {role!r} is not one of {sorted(ROLES)}")
        value = _content(text, f"turn {i}")
        if ROLES[role] == "system":
            if out:
                raise ValueError(f"turn {i}: a system turn must come before the dialogue")
            system.append(value)
            continue
        expected = "human" if len(out) % 2 == 0 else "gpt"
        if ROLES[role] != expected:
            raise ValueError(f"turn {i}: expected a {expected} turn, found {role!r} (turns must alternate)")
        out.append({"from": expected, "value": value})
    if not out:
        raise ValueError("no dialogue turns")
    if out[-1]["from"] != "gpt":
        raise ValueError("the last turn is the user's: nothing to learn from it")
    if system:
        out[0]["value"] = "\n\n".join([*system, out[0]["value"]])
    return out


def text_record(raw: Any, source: Path) -> dict[str, Any]:
    """A user-supplied dialogue -> a text-only LLaVA record (no `image`, no `<image>`); raises ValueError."""
    if not isinstance(raw, dict):
        raise ValueError(f"a record must be a JSON object, not {type(raw).__name__}")
    if raw.get("image") or raw.get("images"):
        raise ValueError("text dialogue must not name an image")
    turns = _turns(raw)
    if any(IMAGE_TOKEN in t["value"] for t in turns):
        raise ValueError(f"text dialogue must not contain {IMAGE_TOKEN}")
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


def _json_array(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """(line, element) of a JSON array, element by element, so a bad record can be named by its line."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos, line = 1, 1  # just after the opening bracket

    def advance(to: int) -> None:
        nonlocal pos, line
        line += text.count("\n", pos, to)
        pos = to

    advance(ws.match(text, pos).end())
    if text.startswith("]", pos):
        return
    while True:
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix the file") from None
        yield line, item
        advance(ws.match(text, end).end())
        if text.startswith(",", pos):
            advance(ws.match(text, pos + 1).end())
            continue
        if text.startswith("]", pos) and not text[pos + 1 :].strip():
            return
        raise ValueError(f"{path}:{line}: expected ',' or the closing ']' of the array; fix the file")


def iter_dialogue_file(path: Path) -> Iterator[tuple[int, Any | ValueError]]:
    """(line, parsed record or the error) for a JSON array file or JSON Lines; the format is sniffed, as a
    `.json` file is often JSONL. A file that is not JSON at all raises ValueError naming it."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        start = len(text) - len(text.lstrip())
        first = text.count("\n", 0, start)
        for line, item in _json_array(text[start:], path):
            yield line + first, item
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            if n == 1 and path.suffix == ".json":
                raise ValueError(
                    f"{path}: neither a JSON array of records nor JSON Lines ({exc.msg} on line 1)"
                ) from None
            yield n, ValueError(f"not valid JSON ({exc.msg})")


def read_text_dialogue(paths: list[Path]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(records, rejected records with reason and `file:line`); a missing file, or one that yields no usable
    dialogue, is an error; a bad record is a rejection and the rest of the file goes on."""
    records: list[dict[str, Any]] = []
    rejected: list[dict[str, str]] = []
    first_seen: dict[str, str] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"text dialogue file {path} does not exist (check assets/mixtures.yaml)")
        before = len(records)
        for n, raw in iter_dialogue_file(path):
            where = f"{path}:{n}"
            try:
                if isinstance(raw, ValueError):
                    raise raw
                record = text_record(raw, path)
                if record["id"] in first_seen:
                    raise ValueError(f"id {record['id']!r} already used at {first_seen[record['id']]}")
            except ValueError as exc:
                rejected.append(
                    {"id": where, "reason": Reason.BAD_TEXT_DIALOGUE, "detail": f"{where}: {exc}"}
                )
                continue
            first_seen[record["id"]] = where
            records.append(record)
        if len(records) == before:
            bad = sum(1 for r in rejected if r["id"].startswith(f"{path}:"))
            raise ValueError(f"text dialogue file {path} holds no usable dialogue ({bad} records rejected)")
    return records, rejected


# --- building a mixture ---------------------------------------------------------------------------------

SCORES_SCHEMA = pa.schema(
    [
        ("stage", pa.string()),
        ("component", pa.string()),
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("kind", pa.string()),
        ("language", pa.string()),
        (
            "status",
            pa.string(),
        ),  # "scored", or why the scoring pass could not score it (training skips it too)
        ("mean_loss", pa.float64()),  # mean cross-entropy of the answer tokens under the stage II model
        ("confidence", pa.float64()),  # exp(-mean_loss)
        ("answer_tokens", pa.int64()),
        ("rank", pa.int64()),  # 1 = least confident scored candidate of its component
        ("kept", pa.bool_()),
        ("drop_reason", pa.string()),
    ]
)


class StaleScoresError(ValueError):
    """The model scores do not cover the stage's candidates (rematerialize stage3_scores)."""


@dataclass
class Mixture:
    stage: str
    records: list[dict[str, Any]]
    components: dict[str, dict[str, Any]]
    rejected: list[dict[str, str]] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)  # SCORES_SCHEMA rows (model-judged components)
    # Per component: its records after filtering (each once), and what sampling chose (repeats included).
    candidates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    chosen: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.records]


def resolve(path: str, config_path: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (config_path.parent / p).resolve()


def component_rows(rows: Iterable[ReleaseRow], comp: Component) -> Iterator[tuple[ReleaseRow, str | None]]:
    """The component's rows by kind and language, in the order of `rows`, each with the reason the
    answer-length/generator rule drops it (None: kept). From the release-records table, rows of other
    kinds and languages are skipped before they are read into Python."""
    if isinstance(rows, ReleaseRecords):
        selected: Iterable[ReleaseRow] = rows.rows(comp.kinds, comp.languages)
    else:
        selected = (
            r for r in rows if r.record["kind"] in comp.kinds and r.record["language"] in comp.languages
        )
    for row in selected:
        yield row, (drop_reason(row, comp.filter) if comp.filter else None)


def _prefiltered(rows: Iterable[ReleaseRow], comp: Component) -> tuple[list[ReleaseRow], Counter[str]]:
    """The component's rows by kind and language, minus what the answer-length/generator rules drop."""
    kept, dropped = [], Counter()
    for row, reason in component_rows(rows, comp):
        if reason:
            dropped[reason] += 1
        else:
            kept.append(row)
    return kept, dropped


def model_judged(config: MixturesConfig, stage: str) -> list[str]:
    """Components of `stage` whose filter asks the previous stage's model for its confidence."""
    comps = config.stages[stage].components
    return [n for n, c in comps.items() if c.filter is not None and c.filter.model_confidence is not None]


def iter_score_candidates(
    stage: str, rows: Iterable[ReleaseRow], config: MixturesConfig
) -> Iterator[dict[str, Any]]:
    """The records the previous stage's model must score for `stage`, once each, in the order of `rows`
    (id order from the release-records table): every candidate of a model-judged component that survives
    the length rule. One pass."""
    comps = [config.stages[stage].components[n] for n in model_judged(config, stage)]
    if not comps:
        return
    kinds = {k for c in comps for k in c.kinds}
    languages = {lang for c in comps for lang in c.languages}
    union = Component(kinds=tuple(sorted(kinds)), languages=tuple(sorted(languages)))
    for row, _ in component_rows(rows, union):
        rec = row.record
        if any(
            rec["kind"] in c.kinds
            and rec["language"] in c.languages
            and not (c.filter and drop_reason(row, c.filter))
            for c in comps
        ):
            yield rec


def score_candidates(stage: str, rows: Iterable[ReleaseRow], config: MixturesConfig) -> list[dict[str, Any]]:
    """`iter_score_candidates` as a list sorted by id (the input of training_jobs.score)."""
    found: dict[str, dict[str, Any]] = {}
    for record in iter_score_candidates(stage, rows, config):
        found.setdefault(record["id"], record)
    return [found[k] for k in sorted(found)]


def ranking(
    stage: str, name: str, records: Iterable[dict[str, Any]], scores: Mapping[str, dict]
) -> dict[str, int]:
    """Rank of each scored candidate, 1 = least confident (ties by id); an error if a candidate has no score."""
    scored: list[tuple[float, str]] = []
    for r in records:
        s = scores.get(r["id"])
        if s is None:
            raise StaleScoresError(
                f"{stage}/{name}: candidates have no model score (e.g. {r['id']!r}): the scores "
                "were made for other candidates; rematerialize stage3_scores"
            )
        if s["status"] == "scored":
            scored.append((s["confidence"], r["id"]))
    scored.sort()
    return {rid: k for k, (_, rid) in enumerate(scored, 1)}


def verdict(
    stage: str,
    name: str,
    rule: ModelConfidence,
    record: dict[str, Any],
    scores: Mapping[str, dict],
    rank: Mapping[str, int],
) -> tuple[str | None, dict[str, Any]]:
    """(drop reason or None, SCORES_SCHEMA row) of one candidate under `rule`, given the component's ranking.

    Below `min` drops; `drop_lowest_fraction` drops floor(fraction x scored) least confident (ties by id).
    A candidate the scorer could not score (e.g. its image is missing) is kept: training reports it.
    """
    n_lowest = math.floor((rule.drop_lowest_fraction or 0.0) * len(rank) + 1e-9)
    s = scores[record["id"]]
    reason = None
    if s["status"] == "scored":
        if rule.min is not None and s["confidence"] < rule.min:
            reason = "model_confidence_below_min"
        elif rank[record["id"]] <= n_lowest:
            reason = "model_confidence_lowest_fraction"
    return reason, {
        "stage": stage,
        "component": name,
        "id": record["id"],
        "dataset": record.get("dataset"),
        "kind": record.get("kind"),
        "language": record.get("language"),
        "status": s["status"],
        "mean_loss": s.get("mean_loss"),
        "confidence": s.get("confidence"),
        "answer_tokens": s.get("answer_tokens"),
        "rank": rank.get(record["id"]),
        "kept": reason is None,
        "drop_reason": reason,
    }


def judge(
    stage: str, name: str, rule: ModelConfidence, records: list[dict[str, Any]], scores: Mapping[str, dict]
) -> tuple[list[dict[str, Any]], Counter[str], list[dict[str, Any]]]:
    """(kept records, drop counts, SCORES_SCHEMA rows) under `rule` (see `verdict`)."""
    missing = [r["id"] for r in records if r["id"] not in scores]
    if missing:
        raise StaleScoresError(
            f"{stage}/{name}: {len(missing)} candidates have no model score (e.g. {missing[0]!r}): the scores "
            "were made for other candidates; rematerialize stage3_scores"
        )
    rank = ranking(stage, name, records, scores)
    kept, dropped, table = [], Counter(), []
    for r in records:
        reason, row = verdict(stage, name, rule, r, scores, rank)
        if reason:
            dropped[reason] += 1
        else:
            kept.append(r)
        table.append(row)
    unscored = len(records) - len(rank)
    return kept, Counter({**dropped, **({"unscored_kept": unscored} if unscored else {})}), table


def build_mixture(
    stage: str,
    rows: Iterable[ReleaseRow],
    config: MixturesConfig,
    config_path: Path,
    text_files: list[Path] | None = None,
    scores: Mapping[str, dict] | None = None,
    external_dir: Path | None = None,
) -> Mixture:
    """Select, filter and sample the records of one stage; text_files overrides every text component's files.

    `scores` ({id: a line of training_jobs.score's scores.jsonl}) is needed when a component of the stage
    has a `model_confidence` rule. External corpora are read decontaminated from `external_dir`
    (`release.external`).
    """
    spec = config.stages[stage]
    records: list[dict[str, Any]] = []
    components: dict[str, dict[str, Any]] = {}
    rejected: list[dict[str, str]] = []
    table: list[dict[str, Any]] = []
    mixture = Mixture(stage, records, components, rejected, table)
    for name, comp in spec.components.items():
        dropped: Counter[str] = Counter()
        if comp.text_files:
            files = (
                text_files if text_files is not None else [resolve(p, config_path) for p in comp.text_files]
            )
            candidates, bad = read_text_dialogue(files)
            rejected += bad
            source = [str(f) for f in files]
            considered = len(candidates)
        elif comp.corpus is not None:
            candidates = load_clean(external_dir, comp.corpus)
            source = f"corpus={comp.corpus} (decontaminated)"
            considered = len(candidates)
        else:
            kept_rows, dropped = _prefiltered(rows, comp)
            candidates = [r.record for r in kept_rows]
            considered = len(candidates) + sum(dropped.values())
            rule = comp.filter.model_confidence if comp.filter else None
            if rule is not None:
                if scores is None:
                    raise StaleScoresError(
                        f"{stage}/{name} is judged by the previous stage's model: materialize stage3_scores first"
                    )
                candidates, by_model, rows_table = judge(stage, name, rule, candidates, scores)
                dropped.update({k: v for k, v in by_model.items() if k != "unscored_kept"})
                table += rows_table
            source = f"kinds={list(comp.kinds)} languages={list(comp.languages)}"
        chosen = [r for r in candidates for _ in range(copies(r["id"], comp.sample_ratio, config.seed))]
        records += chosen
        mixture.candidates[name], mixture.chosen[name] = candidates, chosen
        components[name] = {
            "source": source,
            "sample_ratio": comp.sample_ratio,
            "candidates": considered,
            "dropped": dict(sorted(dropped.items())),
            "samples": len(chosen),
            "filter": comp.filter.model_dump() if comp.filter else None,
        }
    records.sort(key=lambda r: r["id"])
    return mixture


def provenance_path(out_dir: Path, stage: str) -> Path:
    """What a mixture holds and where its images are (read by the training stages); not a trainer meta."""
    return Path(out_dir) / f"{stage}.provenance.json"


def read_scores(path: Path) -> dict[str, dict[str, Any]]:
    """training_jobs.score's scores.jsonl -> {id: line}; refuses a file that is not what it wrote."""
    if not path.is_file():
        raise StaleScoresError(f"{path} does not exist: materialize stage3_scores")
    out: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "id" not in row or "status" not in row or (row["status"] == "scored" and "confidence" not in row):
            raise ValueError(f"{path}:{n}: not a training_jobs.score line: {line[:200]}")
        out[str(row["id"])] = row
    return out


def write_mixture(mixture: Mixture, out_dir: Path, image_root: Path, config_path: Path) -> dict[str, Any]:
    """`<stage>.jsonl` (what `training_jobs` reads), its provenance record and, for a model-judged stage,
    `<stage>.scores.parquet` (every judged candidate with its score and decision); returns the provenance."""
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
    scores_path = out_dir / f"{mixture.stage}.scores.parquet"
    if mixture.scores:
        write_table(scores_path, pa.Table.from_pylist(mixture.scores, schema=SCORES_SCHEMA))
        meta["scores_table"] = str(scores_path)
    elif scores_path.exists():
        scores_path.unlink()  # a stage no longer model-judged must not leave a stale table beside it
    atomic_write_text(
        provenance_path(out_dir, mixture.stage), json.dumps(meta, indent=2, ensure_ascii=False) + "\n"
    )
    return meta
