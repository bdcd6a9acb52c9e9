"""Release stage: `instruction_shards`, `stage{1,2,3}_mix`, `dataset_report` (thin over gmai_pipeline.release)."""

import os
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.defs.common import layout, md_table
from gmai_pipeline.release.annotations import subset_counts, write_annotations
from gmai_pipeline.release.images import IMAGES_DIR, sync_images
from gmai_pipeline.release.mixtures import (
    StaleScoresError,
    build_mixture,
    load_mixtures,
    model_judged,
    read_scores,
    write_mixture,
)
from gmai_pipeline.release.records import LoadedRecords, ReleaseError, load_records
from gmai_pipeline.release.report import (
    DIMENSIONS,
    build_report,
    dataset_card,
    decontamination_markdown,
    hf_features,
    md,
    png_data_url,
    table3_markdown,
    write_card,
)
from gmai_pipeline.release.shards import DEFAULT_TARGET_BYTES, read_index, verify_shards, write_shards
from gmai_pipeline.release.trainer_metas import write_release_metas, write_stage_metas
from gmai_pipeline.schemas import QUARANTINE_SCHEMA
from gmai_pipeline.settings import get_settings
from gmai_pipeline.storage import OutputLayout, write_table

GROUP = "release"
GENERATED_DEPS = [dg.AssetKey("captions"), dg.AssetKey("vqa"), dg.AssetKey("translations")]
DEMO_TARGET_BYTES = 1_000_000


class ShardConfig(dg.Config):
    target_shard_mb: float | None = None  # default: $GMAI_SHARD_TARGET_MB, else 1000 (1 MB on the demo)
    verify: str = "sha256"  # how kept shards are checked on a rerun: "sha256" or "size"
    workers: int | None = None  # shards written at once; default: one per core, at most 4
    direct_io: bool = True  # write around the page cache (O_DIRECT) where the filesystem allows it


class Stage3Config(dg.Config):
    text_dialogue_files: list[str] | None = None  # overrides the text files listed in the mixtures YAML


def target_bytes(config: ShardConfig) -> int:
    if config.target_shard_mb is not None:
        return int(config.target_shard_mb * 1e6)
    if "GMAI_SHARD_TARGET_MB" in os.environ:
        return int(float(os.environ["GMAI_SHARD_TARGET_MB"]) * 1e6)
    return DEMO_TARGET_BYTES if get_settings().is_demo_raw else DEFAULT_TARGET_BYTES


def _load(context: dg.AssetExecutionContext, out: OutputLayout) -> LoadedRecords:
    loaded = load_records(out)
    if loaded.missing_inputs:
        context.log.warning(
            f"generated tables not found (not materialized yet?): {', '.join(loaded.missing_inputs)}"
        )
    if not loaded.rows:
        raise ReleaseError(
            f"no releasable records under {out.root / 'generated'}: materialize captions, vqa and translations first "
            f"({loaded.inputs} rows read, {len(loaded.rejected)} rejected)"
        )
    return loaded


@dg.asset(
    group_name=GROUP,
    deps=GENERATED_DEPS,
    kinds={"webdataset", "json"},
    description="The release folder: WebDataset tar shards of every generated record (image + LLaVA/XTuner "
    "`.json`) with the `shards.json` index (SHA-256), annotation JSONL per subset, `llava.json`, the InternVL and "
    "XTuner metas, and `images/` (hard links to the released images only). Crash-safe and resumable.",
)
def instruction_shards(context: dg.AssetExecutionContext, config: ShardConfig) -> dg.MaterializeResult:
    out = layout()
    loaded = _load(context, out)
    write_table(
        out.release / "rejected.parquet", pa.Table.from_pylist(loaded.rejected, schema=QUARANTINE_SCHEMA)
    )
    for r in loaded.rejected[:20]:
        context.log.warning(f"not released: {r['reason']}: {r['detail']}")
    result = write_shards(
        loaded.rows,
        out.release / "shards",
        target_bytes(config),
        verify=config.verify,
        workers=config.workers,
        direct=config.direct_io,
        log=context.log.info,
    )
    subsets = write_annotations(loaded.rows, out.release)
    metas = write_release_metas(out.release, subsets)
    images = sync_images(loaded.rows, out.release / IMAGES_DIR)
    for rel in images.removed[:20]:
        context.log.info(f"images/{rel}: no longer released, removed")
    return dg.MaterializeResult(
        metadata={
            "shards": len(result.shards),
            "samples": result.samples,
            "bytes": result.bytes,
            "MB/s": round(result.mb_per_s, 1),
            "shards_written": result.written,
            "shards_kept": result.kept,
            "stale_removed": len(result.removed),
            "inputs": loaded.inputs,
            "rejected": len(loaded.rejected),
            "missing_inputs": len(loaded.missing_inputs),
            "subsets": md_table(pd.DataFrame([{"subset": k, "records": v} for k, v in subsets.items()])),
            "images": images.images,
            "images_linked": images.linked,
            "images_copied": images.copied,
            "images_removed": len(images.removed),
            "internvl_meta": dg.MetadataValue.path(str(metas["internvl"])),
            "xtuner_meta": dg.MetadataValue.path(str(metas["xtuner"])),
            "index": dg.MetadataValue.path(str(out.release / "shards.json")),
            "shard_index": md_table(pd.DataFrame(result.shards)[["name", "samples", "bytes", "sha256"]], 50),
        }
    )


@dg.asset_check(
    asset=instruction_shards, description="Every indexed shard exists with its indexed size; no stray .tar."
)
def shards_match_index() -> dg.AssetCheckResult:
    shard_dir = layout().release / "shards"
    index = read_index(shard_dir)
    problems = verify_shards(shard_dir, hash_files=False)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"shards": len(index["shards"]), "problems": "\n".join(problems) or "none"},
    )


def build_mix_asset(stage: str) -> dg.AssetsDefinition:
    def compute(context: dg.AssetExecutionContext, text_files: list[str] | None) -> dg.MaterializeResult:
        out = layout()
        config, path = load_mixtures()
        # A mixture without our records ("w/o our data": only external corpora and text) needs no release.
        ours = any(c.kinds for c in config.stages[stage].components.values())
        # Stage III is judged by the stage II model: the stage3_scores asset wrote its scores.
        judged = model_judged(config, stage)
        try:
            scores = read_scores(out.training / "stage3_scores" / "scores.jsonl") if judged else None
            mixture = build_mixture(
                stage,
                _load(context, out).rows if ours else [],
                config,
                path,
                [Path(p) for p in text_files] if text_files is not None else None,
                scores,
                external_dir=out.root / "external",
            )
        except StaleScoresError as exc:
            raise dg.Failure(str(exc)) from None
        for r in mixture.rejected[:20]:
            context.log.warning(f"{stage}: not mixed: {r['detail']}")
        meta = write_mixture(mixture, out.mixtures, out.release / IMAGES_DIR, path)
        tools = write_stage_metas(mixture, out.release)
        components = pd.DataFrame(
            [
                {
                    "component": name,
                    "candidates": c["candidates"],
                    "samples": c["samples"],
                    "sample_ratio": c["sample_ratio"],
                    **{f"dropped_{k}": v for k, v in c["dropped"].items()},
                }
                for name, c in meta["components"].items()
            ]
        ).fillna(0)
        return dg.MaterializeResult(
            metadata={
                "samples": meta["samples"],
                "ids_sha256": meta["ids_sha256"],
                "components": md_table(components),
                "rejected_text_lines": len(mixture.rejected),
                "mixture": dg.MetadataValue.path(str(out.mixtures / f"{stage}.jsonl")),
                **{kind: dg.MetadataValue.path(str(p)) for kind, p in tools.items()},
                "config": dg.MetadataValue.path(str(path)),
                **(
                    {"scores_table": dg.MetadataValue.path(meta["scores_table"])}
                    if "scores_table" in meta
                    else {}
                ),
            }
        )

    description = {
        "stage1": "Stage I mixture (projector alignment): all captions and region captions.",
        "stage2": "Stage II mixture (deep alignment): all captions and region captions.",
        "stage3": "Stage III mixture (instruction tuning): VQA and captions without short samples and those the "
        "stage II model is least confident on (stage3_scores; decisions in mixtures/stage3.scores.parquet), plus "
        "text-only medical dialogue.",
    }[stage]
    spec = dict(
        name=f"{stage}_mix",
        group_name=GROUP,
        deps=[
            instruction_shards,
            dg.AssetKey("external_corpora"),
            *([dg.AssetKey("stage3_scores")] if stage == "stage3" else []),
        ],
        kinds={"json", "parquet"} if stage == "stage3" else {"json"},
        description=description,
    )
    if stage == "stage3":

        @dg.asset(**spec)
        def _mix3(context: dg.AssetExecutionContext, config: Stage3Config) -> dg.MaterializeResult:
            return compute(context, config.text_dialogue_files)

        return _mix3

    @dg.asset(**spec)
    def _mix(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return compute(context, None)

    return _mix


def build_report_asset(sources: list[SourceDataset]) -> dg.AssetsDefinition:
    licences = {s.name: s.license for s in sources}

    @dg.asset(
        group_name=GROUP,
        deps=[instruction_shards, dg.AssetKey("decontaminated")],
        kinds={"markdown", "png"},
        description="Table 3 of the paper for our data, sources with licences, generators and prompt versions, "
        "decontamination summary, charts; written as the dataset card `release/README.md`.",
    )
    def dataset_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        out = layout()
        loaded = _load(context, out)
        report = build_report(loaded.rows, licences, out.decontamination_report, out.release / "report")
        index = read_index(out.release / "shards")
        card_text = dataset_card(
            report, index, subset_counts(loaded.rows), out.release, hf_features(loaded.rows)
        )
        card = write_card(card_text, out.release / "README.md")
        metadata: dict[str, dg.RawMetadataValue] = {
            "records": report.totals["records"],
            "images": report.totals["images"],
            "sources": report.totals["sources"],
            "table3": dg.MetadataValue.md(table3_markdown(report)),
            "sources_licences": dg.MetadataValue.md(md(report.sources)),
            "generators": dg.MetadataValue.md(md(report.generators)),
            "decontamination": dg.MetadataValue.md(decontamination_markdown(report.decontamination)),
            "card": dg.MetadataValue.path(str(card)),
        }
        for dim, title in DIMENSIONS.items():
            metadata[f"chart_{dim}"] = dg.MetadataValue.md(f"![{title}]({png_data_url(report.charts[dim])})")
        return dg.MaterializeResult(metadata=metadata)

    return dataset_report


def build_defs(sources: list[SourceDataset]) -> dg.Definitions:
    return dg.Definitions(
        assets=[
            instruction_shards,
            *(build_mix_asset(s) for s in ("stage1", "stage2", "stage3")),
            build_report_asset(sources),
        ],
        asset_checks=[shards_match_index],
    )
