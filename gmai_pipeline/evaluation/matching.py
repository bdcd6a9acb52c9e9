"""Answer extraction and matching, rule for rule as the evaluators the paper's numbers come from.

Multiple choice follows VLMEvalKit's exact-matching path (`--judge exact_matching`, i.e. no LLM
judge): `open-compass/VLMEvalKit:vlmeval/utils/matching_util.py` `can_infer_option`, `can_infer_text`,
`can_infer`, used by `vlmeval/dataset/utils/multiple_choice.py::extract_answer_from_item` (a prediction
nothing can be inferred from scores as option `Z`, i.e. wrong). VLMEvalKit's default for MCQ
benchmarks is to ask an LLM judge (gpt-4o-mini) only when these rules fail; we do not call one by
default, so an unparseable answer counts wrong here where a judge might rescue it.

Yes/no questions follow `vlmeval/dataset/utils/yorn.py::YOrN_Extraction` (with `vlmeval/smp/misc.py::
process_punctuation`). Open short answers are scored by token recall after LLaVA-Med's normalisation
(`microsoft/LLaVA-Med@b9a98a7:llava/eval/run_eval.py`, `eval_metrics/evaluate_metrics.py::
calculate_f1score`, `eval_metrics/glossary.py::normalize_word`), the metric LLaVA-Med and later papers
report as "open" accuracy on VQA-RAD, SLAKE and PathVQA. (LLaVA-Med's contraction table is not
applied: it only rewrites contractions such as "dont" -> "don't" in both strings alike.)
"""

from __future__ import annotations

import os
import re
import string
from collections import Counter

FAIL_MSG = "Failed to obtain answer via API"
REJECTIONS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
# "The correct answer is **B**." / "The answer is C." (matching_util._VERBOSE_ANSWER_RE)
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
_OPTION_PUNCT = ".()[],:;!*#{}"


def _count_choice(splits: list[str], choices, prefix: str = "", suffix: str = "") -> int:
    return sum(1 for c in choices if prefix + c + suffix in splits)


def can_infer_option(answer: str, choices: dict[str, str]) -> str | bool:
    """The option letter the answer names, 'Z' for a refusal or an explicit Z, False when none is clear."""
    verbose = os.environ.get("VERBOSE", 0)
    if FAIL_MSG in answer:
        return False
    for err in REJECTIONS:
        if err in answer:
            return "Z"
    answer_mod = answer
    for c in _OPTION_PUNCT:
        answer_mod = answer_mod.replace(c, " ")
    splits = [x.strip() for x in answer_mod.split()]
    count = _count_choice(splits, choices)
    if count == 1:
        for ch in choices:
            if "A" in splits and len(splits) > 3 and verbose:
                return False  # "A" may be the article (VLMEvalKit only guards this when VERBOSE is set)
            if ch in splits and splits.index(ch) > (len(splits) - 5):
                return ch
    elif count == 0 and _count_choice(splits, {"Z", ""}) == 1:
        return "Z"
    match = _VERBOSE_ANSWER.search(answer or "")
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return False


def can_infer_text(answer: str, choices: dict[str, str]) -> str | bool:
    """The one option whose text appears in a short answer (case-insensitive), else False."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return False
    for k in choices:
        if k not in string.ascii_uppercase:
            raise ValueError(f"option label {k!r} is not a capital letter")
    cands = [k for k, v in choices.items() if str(v).lower() in answer]
    return cands[0] if len(cands) == 1 else False


def can_infer(answer: object, choices: dict[str, str]) -> str | bool:
    answer = str(answer)
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


def extract_option(prediction: object, choices: dict[str, str]) -> str:
    """What `extract_answer_from_item` returns without a judge: the letter, or 'Z' when nothing is inferred."""
    return can_infer(prediction, choices) or "Z"


# --- yes / no -------------------------------------------------------------------------------------------

_PUNCT = [
    ";",
    r"/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP = re.compile(r"(?<!\d)\.(?!\d)")


def process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or (re.search(_COMMA_STRIP, text) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, re.UNICODE)  # (re.UNICODE lands in `count`, as upstream)


def yes_or_no(prediction: object) -> str:
    """'Yes', 'No' or 'Unknown' (both or neither word present)."""
    words = process_punctuation(str(prediction).lower()).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "yes" not in words and "no" in words:
        return "No"
    return "Unknown"


def is_yes_no(answer: object) -> bool:
    return str(answer).strip().lower() in ("yes", "no")


# --- open short answers (LLaVA-Med) ---------------------------------------------------------------------

_MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
               "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
_ARTICLES = ("a", "an", "the")
_MED_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: LLaVA-Med's pattern, kept for identical results


def normalize_word(token: str) -> str:
    _token = token
    for p in _PUNCT:
        if (p + " " in token or " " + p in token) or (re.search(_COMMA_STRIP, token) is not None):
            _token = _token.replace(p, "")
        else:
            _token = _token.replace(p, " ")
    token = _MED_PERIOD_STRIP.sub("", _token, re.UNICODE)
    words = [_MANUAL_MAP.get(w, w) for w in token.lower().split()]
    return " ".join(w for w in words if w not in _ARTICLES).replace(",", "")


def token_recall(prediction: object, answer: object) -> float:
    """Share of the answer's words (with multiplicity) found in the prediction, after normalisation."""
    pred = Counter(normalize_word(normalize_word(str(prediction).lower())).split())
    ref = Counter(normalize_word(normalize_word(str(answer).lower())).split())
    if not pred or not ref:
        return 0.0
    tp = sum(pred[w] for w in ref if w in pred)
    fn = sum(ref[w] for w in ref if w not in pred)
    return tp / (tp + fn) if tp else 0.0
