"""The dataset report: the paper's Table 3 for our data, sources with licences, generators, decontamination,
charts, and a dataset card (`README.md` beside the shards) that a person could publish.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from gmai_pipeline.release.records import ReleaseRow
from gmai_pipeline.storage import atomic_write_bytes, atomic_write_text

# Table 3 of the paper: dimension -> column of the annotation.
DIMENSIONS = {
    "task_type": "Task Type",
    "modality": "Modality",
    "department": "Department",
    "clinical_task": "Clinical Task",
}
TASK_LABELS = {
    "2d_cls": "2D Classification",
    "2d_det": "2D Detection",
    "2d_seg": "2D Segmentation",
    "3d_seg": "3D Segmentation",
}


@dataclass
class Report:
    shares: dict[str, pd.DataFrame]  # dimension -> value, samples, share_pct
    sources: pd.DataFrame
    generators: pd.DataFrame
    subsets: pd.DataFrame  # kind x language
    decontamination: dict[str, Any]
    charts: dict[str, Path] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)


def dimension_value(row: ReleaseRow, dimension: str) -> str:
    value = getattr(row, dimension) or "unknown"
    return TASK_LABELS.get(value, value) if dimension == "task_type" else value


def share_table(rows: list[ReleaseRow], dimension: str) -> pd.DataFrame:
    """Samples and share (%) per value of one Table 3 dimension, largest first (ties by name)."""
    counts = Counter(dimension_value(r, dimension) for r in rows)
    total = sum(counts.values())
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return pd.DataFrame(
        [{"value": v, "samples": n, "share_pct": round(100.0 * n / total, 1)} for v, n in ordered],
        columns=["value", "samples", "share_pct"],
    )


def source_table(rows: list[ReleaseRow], licences: dict[str, str]) -> pd.DataFrame:
    by: dict[str, dict[str, Any]] = {}
    images: dict[str, set[str]] = {}
    for r in rows:
        d = r.record["dataset"]
        entry = by.setdefault(
            d, {"dataset": d, "licence": licences.get(d, "unknown (not in catalog)"), "records": 0}
        )
        entry["records"] += 1
        key = f"{r.record['kind']}_{r.record['language']}"
        entry[key] = entry.get(key, 0) + 1
        images.setdefault(d, set()).add(r.image_md5 or str(r.image_path))
    for d, entry in by.items():
        entry["images"] = len(images[d])
    df = pd.DataFrame(sorted(by.values(), key=lambda e: e["dataset"]))
    if df.empty:
        return pd.DataFrame(columns=["dataset", "licence", "records", "images"])
    counts = sorted(c for c in df.columns if c not in ("dataset", "licence", "records", "images"))
    return df[["dataset", "licence", "records", "images", *counts]].fillna(0).astype({c: int for c in counts})


def generator_table(rows: list[ReleaseRow]) -> pd.DataFrame:
    counts = Counter(
        (r.record["generator"], r.record.get("prompt_version", ""), r.record["kind"], r.record["language"])
        for r in rows
    )
    return pd.DataFrame(
        [
            {"generator": g, "prompt_version": p, "kind": k, "language": lang, "records": n}
            for (g, p, k, lang), n in sorted(counts.items())
        ],
        columns=["generator", "prompt_version", "kind", "language", "records"],
    )


def subset_table(rows: list[ReleaseRow]) -> pd.DataFrame:
    counts = Counter((r.record["kind"], r.record["language"]) for r in rows)
    return pd.DataFrame(
        [{"kind": k, "language": lang, "records": n} for (k, lang), n in sorted(counts.items())],
        columns=["kind", "language", "records"],
    )


def decontamination_summary(path: Path) -> dict[str, Any]:
    """Removed samples in total and per benchmark/method/dataset (whichever columns the report has)."""
    if not path.exists():
        return {"present": False, "path": str(path)}
    df = pq.read_table(path).to_pandas()
    summary: dict[str, Any] = {"present": True, "path": str(path), "removed": len(df), "by": {}}
    if "direct" in df.columns:  # decontam removes whole volumes: say which rows matched themselves
        df = df.assign(match=df["direct"].map({True: "image matched", False: "same volume as a match"}))
    for column in ("benchmark", "method", "dataset", "match"):
        if column in df.columns:
            counts = df[column].fillna("unknown").value_counts()
            summary["by"][column] = {
                str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            }
    return summary


def bar_chart(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Horizontal bar chart of shares, written atomically as PNG (Agg canvas, no pyplot state)."""
    height = 1.2 + 0.35 * max(len(table), 1)
    from matplotlib.figure import Figure  # imported on first chart: keeps Dagster code loads fast

    fig = Figure(figsize=(7, height), dpi=100)
    ax = fig.add_subplot()
    values = list(reversed(table["value"].tolist()))
    shares = list(reversed(table["share_pct"].tolist()))
    ax.barh(values, shares, color="#3b6ea8")
    for y, s in enumerate(shares):
        ax.text(s, y, f" {s:.1f}%", va="center", fontsize=8)
    ax.set_xlabel("share of samples (%)")
    ax.set_title(title)
    ax.set_xlim(0, max([*shares, 1.0]) * 1.18)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def build_report(
    rows: list[ReleaseRow], licences: dict[str, str], decontamination_report: Path, chart_dir: Path
) -> Report:
    shares = {dim: share_table(rows, dim) for dim in DIMENSIONS}
    report = Report(
        shares=shares,
        sources=source_table(rows, licences),
        generators=generator_table(rows),
        subsets=subset_table(rows),
        decontamination=decontamination_summary(decontamination_report),
    )
    for dim, title in DIMENSIONS.items():
        report.charts[dim] = bar_chart(shares[dim], f"{title} (share of samples)", chart_dir / f"{dim}.png")
    report.totals = {
        "records": len(rows),
        "images": len({r.image_md5 or str(r.image_path) for r in rows}),
        "sources": len(report.sources),
    }
    return report


def png_data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def md(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False) if len(df) else "_(none)_"


def table3_markdown(report: Report) -> str:
    """The paper's Table 3 layout: Dimension | Value | Percentage."""
    lines = ["| Dimension | Value | Samples | Percentage |", "|---|---|---:|---:|"]
    for dim, title in DIMENSIONS.items():
        for i, r in enumerate(report.shares[dim].itertuples()):
            lines.append(f"| {title if i == 0 else ''} | {r.value} | {r.samples} | {r.share_pct:.1f}% |")
    return "\n".join(lines)


def decontamination_markdown(summary: dict[str, Any]) -> str:
    if not summary["present"]:
        return (
            "No decontamination report was found; this release has not been checked against the benchmarks."
        )
    parts = [f"{summary['removed']} samples removed because their image matched a benchmark image."]
    for column, counts in summary["by"].items():
        table = pd.DataFrame([{column: k, "removed": v} for k, v in counts.items()])
        parts.append(f"By {column}:\n\n{md(table)}")
    return "\n\n".join(parts)


def dataset_card(report: Report, index: dict[str, Any], subsets: dict[str, int], card_dir: Path) -> str:
    """The README.md published next to the shards."""
    template = [g for g in report.generators["generator"].unique() if str(g).startswith("template:")]
    warning = (
        "\n> **Note:** records generated with the offline `template` backend are deterministic text built from "
        "the annotations, not model output: " + ", ".join(f"`{g}`" for g in template) + ".\n"
        if template
        else ""
    )
    charts = "\n".join(
        f"![{title}]({path.relative_to(card_dir).as_posix()})"
        for (dim, title), path in zip(DIMENSIONS.items(), report.charts.values(), strict=True)
    )
    subset_df = pd.DataFrame([{"file": f"annotations/{k}.jsonl", "records": v} for k, v in subsets.items()])
    shard_df = pd.DataFrame(index.get("shards", []), columns=["name", "samples", "bytes", "sha256"])
    return f"""---
license: other
language: [en, zh]
task_categories: [visual-question-answering, image-to-text]
tags: [medical, multimodal, webdataset, llava]
---

# GMAI-VL-style medical multimodal instruction data

{report.totals["records"]} training records on {report.totals["images"]} images from {report.totals["sources"]} public
medical imaging sources, built by annotation-guided generation as in GMAI-VL-5.5M (captions of whole images, region
captions of annotated boxes, VQA pairs, and Chinese translations). Every record is traceable to its source dataset
and image through its `id` (`{{dim}}#{{task}}#{{modality}}#{{dataset}}#{{path}}#...`).
{warning}
## Licences

Images keep the licence of their source dataset; check it before use. Generated text follows the terms of the
generator that wrote it (see "Generators").

{md(report.sources)}

## Distribution (Table 3 of the GMAI-VL paper, for this data)

{table3_markdown(report)}

{charts}

## Subsets

{md(report.subsets)}

## Generators and prompt versions

{md(report.generators)}

## Decontamination

{decontamination_markdown(report.decontamination)}

## Files

- `shards/*.tar`: WebDataset shards; each sample is the stored image (`.png`, `.jpg`, ...) and its record (`.json`).
  `shards.json` lists every shard with its sample count, size and SHA-256: verify a download with `sha256sum`.
- `annotations/*.jsonl`: the same records as LLaVA/XTuner JSONL, image paths relative to the `images/` root.
- `meta.json`: XTuner/InternVL meta list (`image_dir`, `annotations`, `sample_ratio`, `length`, `data_augment`);
  its paths are absolute on the machine that built it: point `image_dir` and `annotations` at your copy.

{md(subset_df)}

{md(shard_df)}

Record format: `{{"id", "image", "conversations": [{{"from": "human", "value": "<image>\\n..."}}, {{"from": "gpt", "value": "..."}}], "width", "height", "dataset", "language", "kind", "generator", "prompt_version"}}`.

```python
import webdataset as wds
ds = wds.WebDataset("shards/gmai-vl-{{000000..{max(len(shard_df) - 1, 0):06d}}}.tar", shardshuffle=False).decode("pil")
```
"""


def write_card(text: str, path: Path) -> Path:
    atomic_write_text(path, text)
    return path
