"""Scoring a prediction file the way VLMEvalKit's evaluator reads it, plus the short-answer protocol.

Multiple choice follows `ImageMCQDataset.evaluate_heuristic` / `GMAIMMBenchDataset.evaluate` with
`--judge exact_matching` (`open-compass/VLMEvalKit:vlmeval/dataset/image_mcq.py`): the prediction file
is read back with pandas, predictions become `str(x)` (an empty cell reads as `nan`), column names are
lower-cased except single capital letters, the ground truth comes from the benchmark's own rows,
MMMU's open questions are turned into two options (`MMMU_preproc`: A = the answer, B = "Other Answers";
a non-letter answer counts as A), and each row's option is `can_infer(prediction, choices)` or `Z`
(`multiple_choice.py::extract_answer_from_item`, `eval_vanilla`). Accuracy tables are `report_acc`'s
(per `split`, `Overall`, then per `l2-category` and `category` value) and GMAI-MMBench's
`report_acc_by_groups` for `clinical vqa task`, `department`, `perceptual granularity`.

Short answers (VQA-RAD, SLAKE, PathVQA), which VLMEvalKit scores only with an LLM judge: a closed
question (`answer_type` CLOSED, or a yes/no answer where there is no such column) is right when
`YOrN_Extraction` of the prediction equals the yes/no answer, or, for other closed answers, when the
normalised answer appears as whole words in the normalised prediction; an open question scores the
recall of its answer's words (LLaVA-Med). `Overall` is the mean over all questions.
"""

from __future__ import annotations

import ast
import string
from collections import defaultdict

import numpy as np
import pandas as pd

from gmai_pipeline.evaluation.matching import (
    can_infer,
    is_yes_no,
    normalize_word,
    token_recall,
    yes_or_no,
)

LETTERS = list(string.ascii_uppercase)
GMAI_GROUPS = ("clinical vqa task", "department", "perceptual granularity")


def vlmeval_index(values) -> list:
    """Indices as VLMEvalKit keeps them: ints when every one is an int literal, else strings."""
    values = [str(v) for v in values]

    def is_int(v: str) -> bool:
        try:
            return isinstance(ast.literal_eval(v), int)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return False

    return [int(v) for v in values] if values and all(is_int(v) for v in values) else values


def prepare(data: pd.DataFrame) -> pd.DataFrame:
    """What `evaluate` does to a loaded prediction file before matching."""
    data = data.copy()
    data["index"] = vlmeval_index(data["index"])
    data = data.sort_values(by="index")
    data["prediction"] = [str(x) for x in data["prediction"]]
    for k in list(data.keys()):
        data[k.lower() if k not in LETTERS else k] = data.pop(k)
    return data


def build_choices(item: pd.Series) -> dict:
    return {ch: item[ch] for ch in LETTERS if ch in item and not pd.isna(item[ch])}


def mmmu_preproc(data: pd.DataFrame) -> pd.DataFrame:
    if "A" not in data or "B" not in data:
        return data
    a, b, ans = list(data["A"]), list(data["B"]), list(data["answer"])
    for i in range(len(data)):
        if pd.isna(a[i]):
            a[i], b[i] = ans[i], "Other Answers"
    data["A"], data["B"] = a, b
    return data


def score_mcq(data: pd.DataFrame, meta: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Rows of `data` (a prediction file as read back) that have a ground truth, with `hit` and `log`."""
    data = prepare(data)
    answers = dict(zip(vlmeval_index(meta["index"]), meta["answer"], strict=True))
    if "MMMU" in dataset:
        data = mmmu_preproc(data)
        answers = {k: (v if v in LETTERS else "A") for k, v in answers.items()}
    data = data[data["index"].isin(answers)].copy()
    data["GT"] = [answers[i] for i in data["index"]]
    hits, logs, opts = [], [], []
    for _, item in data.iterrows():
        choices = build_choices(item)
        ret = can_infer(item["prediction"], choices)
        opt = ret or "Z"
        log = (
            item["prediction"]
            if ret
            else "Failed in Prefetch, no GPT-based answer matching under `exact_matching` policy."
        )
        hits.append(int(opt == item["GT"]))
        logs.append(f"Match Log: {log}. ")
        opts.append(opt)
    data["hit"], data["log"], data["extracted"] = hits, logs, opts
    return data.drop(columns=["GT"])


def _contains_words(prediction: str, answer: str) -> bool:
    pred, ans = normalize_word(prediction.lower()).split(), normalize_word(answer.lower()).split()
    return bool(ans) and any(pred[i : i + len(ans)] == ans for i in range(len(pred) - len(ans) + 1))


def question_kind(item: pd.Series) -> str:
    t = str(item.get("answer_type", "")).strip().upper()
    if t in ("CLOSED", "OPEN"):
        return t.lower()
    return "closed" if is_yes_no(item["answer"]) else "open"


def score_vqa(data: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    data = prepare(data)
    answered = set(vlmeval_index(meta.loc[meta["answer"].notna(), "index"]))
    data = data[data["index"].isin(answered)].copy()
    hits, logs, kinds = [], [], []
    for _, item in data.iterrows():
        kind, answer, pred = question_kind(item), str(item["answer"]), item["prediction"]
        if kind == "closed" and is_yes_no(answer):
            got = yes_or_no(pred)
            hit, log = float(got.lower() == answer.strip().lower()), f"yes/no: {got}"
        elif kind == "closed":
            hit, log = float(_contains_words(pred, answer)), "closed: answer words in prediction"
        else:
            hit = token_recall(pred, answer)
            log = f"open: recall {hit:.3f}"
        hits.append(hit)
        logs.append(log)
        kinds.append(kind)
    data["hit"], data["log"], data["kind"] = hits, logs, kinds
    return data


# --- accuracy tables ------------------------------------------------------------------------------------


def _splits(df: pd.DataFrame) -> list:
    return sorted(set(df["split"]), key=str) if "split" in df else ["none"]


def report_acc(df: pd.DataFrame) -> pd.DataFrame:
    """VLMEvalKit's `report_acc`: a row per split, `Overall` then one column per l2-category/category value."""
    df = df.copy()
    if "split" not in df:
        df["split"] = "none"
    res: dict[str, list] = defaultdict(list)
    res["split"] = _splits(df)
    res["Overall"] = [np.mean(df[df["split"] == sp]["hit"]) for sp in res["split"]]
    for group in ("l2-category", "category"):
        if group not in df:
            continue
        for ab in sorted(set(df[group]), key=str):
            sub = df[df[group] == ab]
            res[str(ab)] = [np.mean(sub[sub["split"] == sp]["hit"]) for sp in res["split"]]
    return pd.DataFrame(res)


def report_acc_by_groups(df: pd.DataFrame, group: str) -> pd.DataFrame:
    """GMAI-MMBench's per-column table (`GMAIMMBenchDataset.report_acc_by_groups`)."""
    df = df.copy()
    if "split" not in df:
        df["split"] = "none"
    res: dict[str, list] = {"split": _splits(df)}
    res["Overall"] = [np.mean(df[df["split"] == sp]["hit"]) for sp in res["split"]]
    for ab in sorted({("None" if isinstance(v, float) and pd.isna(v) else v) for v in df[group]}, key=str):
        sub = df[df[group] == ab]
        res[str(ab)] = [np.mean(sub[sub["split"] == sp]["hit"]) for sp in res["split"]]
    return pd.DataFrame(res)


def report_vqa(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    if "split" not in df:
        df["split"] = "none"
    rows = []
    for sp in _splits(df):
        sub = df[df["split"] == sp]
        closed, open_ = sub[sub["kind"] == "closed"], sub[sub["kind"] == "open"]
        rows.append({"split": sp, "Overall": np.mean(sub["hit"]) if len(sub) else np.nan,
                     "closed": np.mean(closed["hit"]) if len(closed) else np.nan,
                     "open": np.mean(open_["hit"]) if len(open_) else np.nan,
                     "closed_questions": len(closed), "open_questions": len(open_)})  # fmt: skip
    return pd.DataFrame(rows)
