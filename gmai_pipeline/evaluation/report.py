"""Per-stage score tables in the paper's shapes (Tables 4-8), a chart, and the Table 7 ablation comparison.

Figures are percentages. A benchmark's `score` is VLMEvalKit's `Overall` accuracy for multiple choice
(MMMU: the validation split, Health & Medicine subjects only); for short-answer benchmarks it is the
closed-question accuracy (the one figure per benchmark the paper's Table 4 prints), with open-question
recall beside it. A split without answers (GMAI-MMBench TEST) has predictions but no score.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gmai_pipeline.evaluation import paper
from gmai_pipeline.evaluation.results import DatasetScore

TABLE4_BENCHMARKS = ("VQA-RAD", "SLAKE", "PMC-VQA", "PathVQA")


def _pct(x: object) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return round(100 * v, 2) if not math.isnan(v) else math.nan


def _row(acc: pd.DataFrame, split: str | None = None) -> pd.Series | None:
    if acc.empty:
        return None
    if split is not None and "split" in acc and (acc["split"] == split).any():
        return acc[acc["split"] == split].iloc[0]
    return acc.iloc[0]


def headline(score: DatasetScore) -> dict:
    """One line per dataset: score, and closed/open for short answers."""
    line = {"dataset": score.dataset, "benchmark": score.benchmark, "questions": score.questions,
            "scored": score.scored}  # fmt: skip
    row = _row(score.acc, "validation" if score.dataset.startswith("MMMU") else None)
    if row is None:
        return {**line, "score": math.nan, "note": "no answers: predictions only"}
    if score.task == "vqa":
        closed = _pct(row["closed"])
        return {**line, "score": closed if not math.isnan(closed) else _pct(row["Overall"]), "closed": closed,
                "open_recall": _pct(row["open"]), "overall": _pct(row["Overall"])}  # fmt: skip
    return {**line, "score": _pct(row["Overall"])}


def _by(score: DatasetScore | None, column: str, names: dict[str, str], split: str | None = None) -> dict:
    if score is None or score.acc.empty or column not in score.rows:
        return {}
    rows = score.rows
    if split is not None and "split" in rows:
        rows = rows[rows["split"] == split]
    out = {}
    for value, sub in rows.groupby(column, dropna=False):
        out[paper.abbreviate(value, names)] = _pct(np.mean(sub["hit"]))
    return out


@dataclass
class StageSummary:
    model: str
    benchmarks: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # "table4".."table8" in the paper's shapes
    table7_row: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"model": self.model, "benchmarks": self.benchmarks.to_dict(orient="records"),
             "tables": {k: v.to_dict(orient="records") for k, v in self.tables.items()},
             "table7_row": self.table7_row},
            indent=2, default=str,
        )  # fmt: skip


def summarize(model: str, scores: list[DatasetScore]) -> StageSummary:
    benchmarks = pd.DataFrame([headline(s) for s in scores])
    by_name = {s.dataset: s for s in scores}
    by_bench: dict[str, list[DatasetScore]] = {}
    for s in scores:
        by_bench.setdefault(s.benchmark, []).append(s)
    summary = StageSummary(model, benchmarks)
    head = {r["dataset"]: r for r in benchmarks.to_dict(orient="records")} if len(benchmarks) else {}

    t4 = {"model": model}
    for bench in TABLE4_BENCHMARKS:
        answered = [s for s in by_bench.get(bench, []) if s.scored]
        if answered:
            t4[bench] = head[answered[0].dataset]["score"]
    if len(t4) > 1:
        present = [t4[b] for b in ("VQA-RAD", "SLAKE", "PMC-VQA") if b in t4]
        t4["Avg."] = round(float(np.mean(present)), 2) if present else math.nan
        summary.tables["table4"] = _with_paper(t4, paper.TABLE4)

    omni = by_name.get("OmniMedVQA")
    if omni is not None and omni.scored:
        t5 = {
            "model": model,
            **_by(omni, "category", paper.OMNI_TYPES),
            "Overall": head["OmniMedVQA"]["score"],
        }
        summary.tables["table5"] = _with_paper(t5, paper.TABLE5)

    val, test = by_name.get("GMAI-MMBench_VAL"), by_name.get("GMAI-MMBench_TEST")
    if val is not None or test is not None:
        t6 = {"model": model,
              "Overall (val)": head["GMAI-MMBench_VAL"]["score"] if val is not None else math.nan,
              "Overall (test)": head["GMAI-MMBench_TEST"]["score"] if test is not None else math.nan,
              **_by(val, "clinical vqa task", paper.MMBENCH_TASKS)}  # fmt: skip
        summary.tables["table6"] = _with_paper(t6, paper.TABLE6)

    mmmu = by_name.get("MMMU_DEV_VAL")
    if mmmu is not None and mmmu.scored:
        t8 = {"model": model, **_by(mmmu, "category", paper.MMMU_SUBJECTS, split="validation"),
              "MMMU (H&M)": head["MMMU_DEV_VAL"]["score"]}  # fmt: skip
        summary.tables["table8"] = _with_paper(t8, paper.TABLE8)

    summary.table7_row = {
        "MMMU_val": head.get("MMMU_DEV_VAL", {}).get("score", math.nan),
        "OmniMedVQA": head.get("OmniMedVQA", {}).get("score", math.nan),
        "GMAI_MMBench_val": head.get("GMAI-MMBench_VAL", {}).get("score", math.nan),
        "GMAI_MMBench_test": head.get("GMAI-MMBench_TEST", {}).get("score", math.nan),
    }
    return summary


def _with_paper(ours: dict, published: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Our row first, then the paper's GMAI-VL rows; the paper's columns in its order, then values it has not."""
    rows = [ours] + [{"model": f"{name} (paper)", **vals} for name, vals in published.items()]
    columns = ["model", *(c for vals in published.values() for c in vals), *ours]
    return pd.DataFrame(rows).reindex(columns=list(dict.fromkeys(columns)))


def markdown(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".2f") if len(df) else "_(none)_"


def chart_png(summary: StageSummary) -> bytes:
    """Bar chart of each benchmark's score (percent), chance-level questions included as scored."""
    from matplotlib.figure import Figure  # imported on first chart: keeps Dagster code loads fast

    df = summary.benchmarks.dropna(subset=["score"]) if len(summary.benchmarks) else summary.benchmarks
    fig = Figure(figsize=(7, 3.2), dpi=100)
    ax = fig.subplots()
    if len(df):
        bars = ax.bar(df["dataset"], df["score"], color="#3b6ea8")
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("score (%)")
    ax.set_title(f"{summary.model}: benchmark scores")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# --- Table 7 --------------------------------------------------------------------------------------------

ABLATION_ROWS = ("stage1", "stage1+2", "stage1+3", "stage1+2+3")


def ablation_table(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Ours and the paper's Table 7, side by side: one line per training strategy, `ours`/`paper` per column."""
    lines = []
    for name in ABLATION_ROWS:
        ours = rows.get(name, {})
        line = {"model": name}
        for i, col in enumerate(paper.TABLE7_COLUMNS):
            line[f"{col} (ours)"] = ours.get(col, math.nan)
            line[f"{col} (paper)"] = paper.TABLE7[name][i]
        lines.append(line)
    return pd.DataFrame(lines)


def ablation_chart(table: pd.DataFrame) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.4), dpi=100)
    axes = fig.subplots(1, 2, sharey=True)
    x = np.arange(len(paper.TABLE7_COLUMNS))
    width = 0.2
    for ax, which in zip(axes, ("ours", "paper"), strict=True):
        for k, (_, row) in enumerate(table.iterrows()):
            vals = [row[f"{c} ({which})"] for c in paper.TABLE7_COLUMNS]
            ax.bar(
                x + (k - 1.5) * width, np.nan_to_num(np.asarray(vals, dtype=float)), width, label=row["model"]
            )
        ax.set_xticks(x, [c.replace("_", " ") for c in paper.TABLE7_COLUMNS], fontsize=7, rotation=15)
        ax.set_title("ours" if which == "ours" else "paper (Table 7)")
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("score (%)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_summary(path: Path, summary: StageSummary) -> None:
    from gmai_pipeline.storage import atomic_write_text

    atomic_write_text(path, summary.to_json())


def read_table7_row(path: Path) -> dict[str, float]:
    data = json.loads(Path(path).read_text())
    return {k: (math.nan if v is None else float(v)) for k, v in data["table7_row"].items()}
