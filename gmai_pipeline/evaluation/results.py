"""Predictions and scores in VLMEvalKit's result layout, so its own evaluator can re-score them.

`<work_dir>/<model>/<model>_<dataset>.xlsx` (VLMEvalKit's default `PRED_FORMAT`; a `.tsv` beside it):
the benchmark's columns without `image`, in the benchmark's order, then `prediction`
(`vlmeval/inference.py::infer_data_job`). Written with XlsxWriter (`strings_to_formulas` off) as
VLMEvalKit's `dump` writes them, read back with pandas as its `load` reads them, then scored from what
was read (`scoring.py`). Scores: `<model>_<dataset>_exact_matching_result.xlsx` (per-row `hit`, `log`),
`<model>_<dataset>_acc.csv` (`report_acc`), and for GMAI-MMBench
`<model>_<dataset>_<group>_acc.csv` per grouping column. Re-scoring with VLMEvalKit:
`python run.py --data <dataset> --model <model> --mode eval --judge exact_matching --work-dir <work_dir>`
(needs the benchmark TSV in its `LMUData`; the layouts VLMEvalKit does not ship carry `answer` in the file).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gmai_pipeline.evaluation import scoring
from gmai_pipeline.storage import atomic_path

MAX_CELL = 32767  # Excel's cell limit: XlsxWriter cuts longer strings


def result_dir(work_dir: Path, model: str) -> Path:
    return Path(work_dir) / model


def prediction_path(work_dir: Path, model: str, dataset: str, fmt: str = "xlsx") -> Path:
    return result_dir(work_dir, model) / f"{model}_{dataset}.{fmt}"


def dump_xlsx(data: pd.DataFrame, path: Path) -> None:
    with (
        atomic_path(path) as tmp,
        pd.ExcelWriter(
            tmp, engine="xlsxwriter", engine_kwargs={"options": {"strings_to_formulas": False}}
        ) as w,
    ):
        data.to_excel(w, index=False)


def dump_tsv(data: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        data.to_csv(tmp, sep="\t", index=False, encoding="utf-8", quoting=csv.QUOTE_ALL)


def dump_csv(data: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        data.to_csv(tmp, index=False, encoding="utf-8", quoting=csv.QUOTE_ALL)


@dataclass
class DatasetScore:
    dataset: str
    benchmark: str
    task: str  # mcq | vqa
    questions: int
    scored: int  # questions with a ground truth
    rows: pd.DataFrame  # scored rows (index, hit, log, grouping columns)
    acc: pd.DataFrame  # report_acc / report_vqa table
    groups: dict[str, pd.DataFrame]  # GMAI-MMBench's per-column tables
    files: list[Path]


def write_and_score(
    meta: pd.DataFrame, predictions: dict[str, str], work_dir: Path, model: str, dataset: str, benchmark: str,
    task: str,
) -> DatasetScore:  # fmt: skip
    """Write `<model>_<dataset>.xlsx/.tsv`, read it back as VLMEvalKit does, score it, write the score files."""
    data = meta.copy()
    missing = [i for i in data["index"] if i not in predictions]
    if missing:
        raise ValueError(f"{dataset}: {len(missing)} questions have no prediction (first: {missing[:5]})")
    data["prediction"] = [predictions[i][:MAX_CELL] for i in data["index"]]
    data["index"] = scoring.vlmeval_index(data["index"])
    xlsx, tsv = (prediction_path(work_dir, model, dataset, f) for f in ("xlsx", "tsv"))
    dump_xlsx(data, xlsx)
    dump_tsv(data, tsv)
    files = [xlsx, tsv]
    answered = "answer" in meta and meta["answer"].notna().any()
    if not answered:
        return DatasetScore(dataset, benchmark, task, len(data), 0, data.iloc[0:0], pd.DataFrame(), {}, files)
    loaded = pd.read_excel(xlsx)  # VLMEvalKit's load() of an .xlsx
    if task == "mcq":
        rows = scoring.score_mcq(loaded, meta, dataset)
        acc = scoring.report_acc(rows)
    else:
        rows = scoring.score_vqa(loaded, meta)
        acc = scoring.report_vqa(rows)
    stem = f"{model}_{dataset}"
    result = result_dir(work_dir, model) / f"{stem}_exact_matching_result.xlsx"
    dump_xlsx(rows, result)
    acc_path = result_dir(work_dir, model) / f"{stem}_acc.csv"
    dump_csv(acc, acc_path)
    files += [result, acc_path]
    groups = {}
    if benchmark == "GMAI-MMBench":
        for group in scoring.GMAI_GROUPS:
            if group in rows:
                groups[group] = scoring.report_acc_by_groups(rows, group)
                path = result_dir(work_dir, model) / f"{stem}_{group}_acc.csv"
                dump_csv(groups[group], path)
                files.append(path)
    return DatasetScore(dataset, benchmark, task, len(data), len(rows), rows, acc, groups, files)
