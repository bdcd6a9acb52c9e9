"""The dataset report: the paper's Table 3 for our data, sources with licences, generators, decontamination,
charts, and a dataset card (`README.md` of the release folder) that a person could publish: its YAML
declares the shards' configuration and features, so Hugging Face `datasets` loads every sample.
"""

from __future__ import annotations

import base64
import hashlib
import io
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from gmai_pipeline.release.annotations import SUBSETS, subset_of
from gmai_pipeline.release.records import ReleaseRow
from gmai_pipeline.release.shards import image_extension
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
    subset_counts: dict[str, int] = field(default_factory=dict)  # records per annotation file
    features: list[dict[str, Any]] = field(default_factory=list)  # the card's dataset_info.features


def dimension_value(row: ReleaseRow, dimension: str) -> str:
    value = getattr(row, dimension) or "unknown"
    return TASK_LABELS.get(value, value) if dimension == "task_type" else value


def _image_key(row: ReleaseRow) -> int:
    """64 bits of the image's identity (its MD5, else its path): distinct images are counted as numbers."""
    text = row.image_md5 or row.image_file
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class _Distinct:
    """Distinct 64-bit keys, 8 bytes each, reduced to unique values as they come."""

    def __init__(self) -> None:
        self.unique = np.zeros(0, np.uint64)
        self.chunk = array("Q")

    def add(self, key: int) -> None:
        self.chunk.append(key)
        if len(self.chunk) >= 1 << 18:
            self._reduce()

    def _reduce(self) -> None:
        if len(self.chunk):
            new = np.frombuffer(self.chunk, dtype=np.uint64)
            self.unique = np.union1d(self.unique, new)
            self.chunk = array("Q")

    def __len__(self) -> int:
        self._reduce()
        return len(self.unique)


class Tally:
    """Everything the report counts, in one pass over the released rows (memory: the counts, not the rows)."""

    def __init__(self) -> None:
        self.records = 0
        self.shares = {dim: Counter() for dim in DIMENSIONS}
        self.by_source: dict[str, Counter] = {}
        self.images = _Distinct()
        self.source_images: dict[str, _Distinct] = {}
        self.generators: Counter = Counter()
        self.subsets: Counter = Counter()
        self.files: Counter = Counter()
        self.record_keys: set[str] = set()
        self.extensions: set[str] = set()

    def add(self, row: ReleaseRow) -> None:
        rec = row.record
        self.records += 1
        for dim, counts in self.shares.items():
            counts[dimension_value(row, dim)] += 1
        source = self.by_source.setdefault(rec["dataset"], Counter())
        source["records"] += 1
        source[f"{rec['kind']}_{rec['language']}"] += 1
        key = _image_key(row)
        self.images.add(key)
        self.source_images.setdefault(rec["dataset"], _Distinct()).add(key)
        self.generators[(rec["generator"], rec.get("prompt_version", ""), rec["kind"], rec["language"])] += 1
        self.subsets[(rec["kind"], rec["language"])] += 1
        self.files[subset_of(rec)] += 1
        self.record_keys.update(rec)
        self.extensions.add(image_extension(row.image_file))

    @classmethod
    def of(cls, rows: Iterable[ReleaseRow]) -> Tally:
        tally = cls()
        for row in rows:
            tally.add(row)
        return tally


def _share_table(counts: Counter) -> pd.DataFrame:
    total = sum(counts.values())
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return pd.DataFrame(
        [{"value": v, "samples": n, "share_pct": round(100.0 * n / total, 1)} for v, n in ordered],
        columns=["value", "samples", "share_pct"],
    )


def share_table(rows: Iterable[ReleaseRow], dimension: str) -> pd.DataFrame:
    """Samples and share (%) per value of one Table 3 dimension, largest first (ties by name)."""
    return _share_table(Counter(dimension_value(r, dimension) for r in rows))


def _source_table(tally: Tally, licences: dict[str, str]) -> pd.DataFrame:
    entries = [
        {
            "dataset": d,
            "licence": licences.get(d, "unknown (not in catalog)"),
            **counts,
            "images": len(tally.source_images[d]),
        }
        for d, counts in sorted(tally.by_source.items())
    ]
    df = pd.DataFrame(entries)
    if df.empty:
        return pd.DataFrame(columns=["dataset", "licence", "records", "images"])
    counts = sorted(c for c in df.columns if c not in ("dataset", "licence", "records", "images"))
    return df[["dataset", "licence", "records", "images", *counts]].fillna(0).astype({c: int for c in counts})


def source_table(rows: Iterable[ReleaseRow], licences: dict[str, str]) -> pd.DataFrame:
    return _source_table(Tally.of(rows), licences)


def _generator_table(counts: Counter) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"generator": g, "prompt_version": p, "kind": k, "language": lang, "records": n}
            for (g, p, k, lang), n in sorted(counts.items())
        ],
        columns=["generator", "prompt_version", "kind", "language", "records"],
    )


def generator_table(rows: Iterable[ReleaseRow]) -> pd.DataFrame:
    return _generator_table(Tally.of(rows).generators)


def _subset_table(counts: Counter) -> pd.DataFrame:
    return pd.DataFrame(
        [{"kind": k, "language": lang, "records": n} for (k, lang), n in sorted(counts.items())],
        columns=["kind", "language", "records"],
    )


def subset_table(rows: Iterable[ReleaseRow]) -> pd.DataFrame:
    return _subset_table(Tally.of(rows).subsets)


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
    rows: Iterable[ReleaseRow], licences: dict[str, str], decontamination_report: Path, chart_dir: Path
) -> Report:
    """The report from one pass over `rows` (a list, or `ReleaseRecords` streamed from the table)."""
    tally = Tally.of(rows)
    shares = {dim: _share_table(tally.shares[dim]) for dim in DIMENSIONS}
    report = Report(
        shares=shares,
        sources=_source_table(tally, licences),
        generators=_generator_table(tally.generators),
        subsets=_subset_table(tally.subsets),
        decontamination=decontamination_summary(decontamination_report),
        subset_counts={name: tally.files.get(name, 0) for name in SUBSETS},
        features=_features(tally.record_keys, tally.extensions),
    )
    for dim, title in DIMENSIONS.items():
        report.charts[dim] = bar_chart(shares[dim], f"{title} (share of samples)", chart_dir / f"{dim}.png")
    report.totals = {"records": tally.records, "images": len(tally.images), "sources": len(report.sources)}
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


# Hugging Face `datasets` features of a shard sample's `.json` record, by key, in the order a record is written.
# Declared in the card so every sample loads with the same columns: `datasets` otherwise infers them from
# the first few samples of the first shard and drops (or refuses) image formats that appear later.
RECORD_FEATURES: dict[str, dict[str, Any]] = {
    "id": {"dtype": "string"},
    "image": {"dtype": "string"},
    "conversations": {"list": [{"name": "from", "dtype": "string"}, {"name": "value", "dtype": "string"}]},
    "width": {"dtype": "int64"},
    "height": {"dtype": "int64"},
    "dataset": {"dtype": "string"},
    "language": {"dtype": "string"},
    "kind": {"dtype": "string"},
    "generator": {"dtype": "string"},
    "prompt_version": {"dtype": "string"},
}
SHARD_GLOB = "shards/*.tar"


def hf_features(rows: Iterable[ReleaseRow]) -> list[dict[str, Any]]:
    """The card's `dataset_info.features`: one image column per image extension in the shards (bytes kept
    as stored: the GMAI-VL-5.5M MD5 identity), the record as a struct, and WebDataset's key and URL.

    A record key without a declared type is an error: `datasets` would drop it without a word.
    """
    tally = Tally.of(rows)
    return _features(tally.record_keys, tally.extensions)


def _features(keys: set[str], extensions: set[str]) -> list[dict[str, Any]]:
    unknown = sorted(keys - set(RECORD_FEATURES))
    if unknown:
        raise ValueError(
            f"record keys {unknown} have no Hugging Face feature type: add them to RECORD_FEATURES"
        )
    record = [{"name": k, **RECORD_FEATURES[k]} for k in RECORD_FEATURES if k in keys]
    return [
        *({"name": ext, "dtype": "image"} for ext in sorted(extensions)),
        {"name": "json", "struct": record},
        {"name": "__key__", "dtype": "string"},
        {"name": "__url__", "dtype": "string"},
    ]


def card_yaml(report: Report, features: list[dict[str, Any]]) -> str:
    """The card's YAML header: Hub metadata, the shards as the `train` split, and their features."""
    meta = {
        "license": "other",
        "language": ["en", "zh"],
        "task_categories": ["visual-question-answering", "image-to-text"],
        "tags": ["medical", "multimodal", "webdataset", "llava"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": SHARD_GLOB}]}],
        "dataset_info": {
            "config_name": "default",
            "features": features,
            "splits": [{"name": "train", "num_examples": report.totals["records"]}],
        },
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def files_markdown(image_columns: list[str]) -> str:
    """Which tool reads which file of the release, and how (the same text as the repository README)."""
    cast = "\n".join(
        f'ds = ds.cast_column("{c}", Image(decode=False))  # the stored bytes' for c in image_columns
    )
    columns = ", ".join(f"`{c}`" for c in image_columns)
    return f"""Every path below is relative to this folder, and so is every path inside the metas and annotation
files (`image` is relative to `images/`). InternVL and XTuner resolve a meta's paths against the working
directory: run them from this folder, or make the metas' paths absolute for where this copy lives with
`python -m gmai_pipeline.release.trainer_metas .` (gmai-pipeline).

| file | read by | what |
|---|---|---|
| `shards/*.tar`, `shards.json` | WebDataset, Hugging Face `datasets` | each sample: the stored image (`.png`, `.jpg`, ...: original bytes) and its record (`.json`); `shards.json` lists each shard's samples, size and SHA-256 (check a download with `sha256sum shards/*.tar`) |
| `README.md` (this card) | Hugging Face `datasets` | YAML `configs` (the shards are the `train` split) and `dataset_info.features` (columns {columns}, `json`, `__key__`, `__url__`: declared, not inferred) |
| `internvl_meta.json` | InternVL (`--meta_path`) | `root`, `annotation`, `data_augment`, `repeat_time`, `length` per subset |
| `xtuner_meta.json` | XTuner / GMAI-VL (`--datasets`) | `image_dir`, `annotations`, `sample_ratio`, `length`, `data_augment` per subset |
| `llava.json` | LLaVA (`--data_path`) | every record in one JSON array |
| `annotations/*.jsonl` | InternVL, XTuner (through the metas) | one record per line per subset |
| `images/` | every JSON route (`image` is relative to it) | the released images only; rebuild it from the shards with `python -m gmai_pipeline.release.images unpack .` (gmai-pipeline) where it did not travel |
| `mixtures/stageN.{{internvl_meta,xtuner_meta}}.json`, `mixtures/stageN/*.jsonl` | InternVL, XTuner | the stage mixtures, each component's ratio in the tool's field (`repeat_time`, `sample_ratio`) |
| `mixtures/stageN.llava.json` | LLaVA | the stage's samples as sampled |
| `mixtures/stageN.jsonl`, `mixtures/stageN.provenance.json` | `training_jobs` of gmai-pipeline | the stage's samples; what they are (count, SHA-256 of the ids, components) |

```python
import webdataset as wds
ds = wds.WebDataset("shards/gmai-vl-{{000000..NNNNNN}}.tar", shardshuffle=False).decode("pil")

from datasets import Image, load_dataset, load_dataset_builder
ds = load_dataset(".", split="train")  # this folder, or its Hub repository id: the card's configs and features
# the shards alone, with the features this card declares:
features = load_dataset_builder(".").info.features
ds = load_dataset("webdataset", data_files={{"train": "{SHARD_GLOB}"}}, features=features, split="train")
{cast}
```

```bash
# InternVL (OpenGVLab/InternVL internvl_chat/), from this folder, with your model and output flags:
torchrun --nproc_per_node=8 $INTERNVL/internvl_chat/internvl/train/internvl_chat_finetune.py --meta_path internvl_meta.json ...
# XTuner lite as GMAI-VL runs it (uni-medical/GMAI-VL README), from this folder:
torchrun --nproc_per_node=8 $GMAI_VL/tools/llava/llava_sft.py --datasets xtuner_meta.json ...
# LLaVA (haotian-liu/LLaVA):
python $LLAVA/llava/train/train_mem.py --data_path llava.json --image_folder images ...
```"""


def dataset_card(
    report: Report,
    index: dict[str, Any],
    subsets: dict[str, int],
    card_dir: Path,
    features: list[dict[str, Any]],
) -> str:
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
    image_columns = [f["name"] for f in features if f.get("dtype") == "image"]
    files = files_markdown(image_columns).replace("NNNNNN", f"{max(len(shard_df) - 1, 0):06d}")
    return f"""{card_yaml(report, features)}
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

## Files, and which tool reads them

{files}

{md(subset_df)}

{md(shard_df)}

Record format: `{{"id", "image", "conversations": [{{"from": "human", "value": "<image>\\n..."}}, {{"from": "gpt", "value": "..."}}], "width", "height", "dataset", "language", "kind", "generator", "prompt_version"}}`.
"""


def write_card(text: str, path: Path) -> Path:
    atomic_write_text(path, text)
    return path
