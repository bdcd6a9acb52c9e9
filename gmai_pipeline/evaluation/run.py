"""One stage's predictions -> VLMEvalKit result files, score tables and the stage summary."""

from __future__ import annotations

import json
from pathlib import Path

from gmai_pipeline.evaluation.questions import read_question_set, typed_frame
from gmai_pipeline.evaluation.report import StageSummary, summarize, write_summary
from gmai_pipeline.evaluation.results import DatasetScore, write_and_score

SUMMARY_FILE = "summary.json"


def read_predictions(folder: Path, dataset: str) -> dict[str, str]:
    """`<dataset>.rank*.jsonl` parts (one per process) -> index: prediction; a question answered twice differently is an error."""
    merged: dict[str, str] = {}
    for part in sorted(Path(folder).glob(f"{dataset}.rank*.jsonl")):
        with open(part, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash; the job rewrites it on resume
                index, pred = str(rec["index"]), str(rec["prediction"])
                if merged.get(index, pred) != pred:
                    raise ValueError(f"{part}:{n}: question {index} has two different predictions")
                merged[index] = pred
    return merged


def score_stage(
    question_dir: Path, prediction_dir: Path, work_dir: Path, model: str, subset: bool = False
) -> tuple[list[DatasetScore], StageSummary]:
    """Every dataset of the question set; each question must have exactly one prediction unless `subset`."""
    qs = read_question_set(question_dir)
    scores = []
    for name, info in qs.datasets.items():
        meta = typed_frame(Path(question_dir) / f"{name}.rows.tsv")
        predictions = read_predictions(prediction_dir, name)
        if subset:
            meta = meta[meta["index"].isin(predictions)].reset_index(drop=True)
        scores.append(
            write_and_score(meta, predictions, work_dir, model, name, info["benchmark"], info["task"])
        )
    summary = summarize(model, scores)
    write_summary(Path(work_dir) / model / SUMMARY_FILE, summary)
    return scores, summary
