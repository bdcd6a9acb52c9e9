"""Checks on an answer before it becomes a training record; a failure is a stable reason code.

The label mention is measured (and reported), not required: a faithful description may name a
finding by what it looks like. Everything else here is a hard rule of the prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gmai_pipeline.generation.prompts import label_terms
from gmai_pipeline.generation.translate import MIN_CJK_SHARE, cjk_share, keeps_term
from gmai_pipeline.quarantine import Reason

MIN_CAPTION_WORDS = 5
MAX_VQA_PAIRS = 3
REGION_PREFIX = "This region"


@dataclass
class Checked:
    ok: bool
    turns: list[
        str
    ]  # the assistant side (captions: [text]; VQA: [q1, a1, q2, a2...]; translation: all turns)
    reason: Reason | str = ""  # a `Reason` when not ok (or a Failure's family code)
    detail: str = ""
    label_mentioned: bool = False


def mentions_label(text: str, label: str) -> bool:
    lowered = text.lower()
    return any(term in lowered for term in label_terms(label))


def _bad(reason: Reason, detail: str) -> Checked:
    return Checked(False, [], reason, detail[:300])


def check_caption(content: str, label: str, region: bool) -> Checked:
    text = content.strip()
    if not text:
        return _bad(Reason.EMPTY, "empty caption")
    if len(text.split()) < MIN_CAPTION_WORDS:
        return _bad(Reason.TOO_SHORT, f"{len(text.split())} words")
    if region and not text.startswith(REGION_PREFIX):
        return _bad(Reason.MISSING_THIS_REGION, f"starts with {text[:40]!r}")
    return Checked(True, [text], label_mentioned=mentions_label(text, label))


def _parse_json(content: str) -> Any:
    text = content.strip()
    if text.startswith("```"):  # tolerate a fenced block from servers without structured output
        text = text.strip("`").removeprefix("json").strip()
    return json.loads(text)


def check_vqa(content: str, label: str) -> Checked:
    try:
        data = _parse_json(content)
    except (json.JSONDecodeError, ValueError) as exc:
        return _bad(Reason.INVALID_JSON, str(exc))
    pairs = data.get("pairs") if isinstance(data, dict) and "pairs" in data else data
    if isinstance(pairs, dict):
        pairs = [pairs]  # the paper's single {'question', 'answer'} object
    if not isinstance(pairs, list) or not all(isinstance(p, dict) for p in pairs):
        return _bad(Reason.SCHEMA_MISMATCH, "expected {'pairs': [{'question', 'answer'}]}")
    if not 1 <= len(pairs) <= MAX_VQA_PAIRS:
        return _bad(Reason.PAIR_COUNT, f"{len(pairs)} pairs (expected 1-{MAX_VQA_PAIRS})")
    turns: list[str] = []
    for p in pairs:
        q, a = p.get("question"), p.get("answer")
        if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip():
            return _bad(Reason.EMPTY_QUESTION_OR_ANSWER, json.dumps(p, ensure_ascii=False)[:200])
        turns += [q.strip(), a.strip()]
    return Checked(True, turns, label_mentioned=any(mentions_label(a, label) for a in turns[1::2]))


def check_translation(content: str, english: list[str], label: str) -> Checked:
    try:
        data = _parse_json(content)
    except (json.JSONDecodeError, ValueError) as exc:
        return _bad(Reason.INVALID_JSON, str(exc))
    turns = data.get("turns") if isinstance(data, dict) else None
    if not isinstance(turns, list) or not all(isinstance(t, str) and t.strip() for t in turns):
        return _bad(Reason.SCHEMA_MISMATCH, "expected {'turns': [non-empty strings]}")
    if len(turns) != len(english):
        return _bad(Reason.TURN_COUNT_MISMATCH, f"{len(turns)} turns for {len(english)}")
    joined = "\n".join(turns)
    share = cjk_share(joined, label_terms(label))
    if share < MIN_CJK_SHARE:
        return _bad(Reason.NOT_CHINESE, f"CJK share {share:.2f} < {MIN_CJK_SHARE}")
    if any(mentions_label(t, label) for t in english) and not keeps_term(joined, label):
        return _bad(Reason.MEDICAL_TERM_MISSING, f"label {label!r} not kept")
    turns = [t.strip() for t in turns]
    return Checked(True, turns, label_mentioned=any(mentions_label(t, label) for t in turns[1::2]))


def check(task: str, content: str, fields: dict[str, Any]) -> Checked:
    label = fields["label"]
    if task in ("caption", "region_caption"):
        return check_caption(content, label, region=task == "region_caption")
    if task == "vqa":
        return check_vqa(content, label)
    if task == "translate":
        return check_translation(content, list(fields["turns"]), label)
    raise ValueError(f"unknown task {task}")
