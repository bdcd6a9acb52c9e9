"""Release stage, thin over gmai_pipeline.release: one asset per output, all reading one records table.

`release_records` checks every generated record once and writes the sorted, validated table (and the
rejected rows); `instruction_shards` (WebDataset shards + index), `release_annotations` (subset JSONL +
llava.json), `release_metas` (InternVL/XTuner metas over those files), `release_images` (the release's
`images/`), `stage{1,2,3}_mix` and `dataset_report` each write only what they declare, streaming the table.
`stage3_mix` is in the training group: the stage II model's scores filter it, so it runs with the stages.

`build_dataset_job` holds the release group and everything upstream: every catalogued source through the
release, no training. It builds the release from whichever datasets are usable: absent ones are listed,
failed ones left out and named by annotations' `present_datasets_in_release` check, which fails the run
once the rest is built (README, "Partial downloads and failing datasets"). All `source/*` assets are one
subsettable step (`sources`), so the entries a user has not downloaded cost no step launch.
"""

import os
from pathlib import Path

import dagster as dg
import pandas as pd

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.defs.common import catalog, md_table
from gmai_pipeline.defs.generation import ALL_SHARDS_TAGS, GENERATION_KEYS
from gmai_pipeline.defs.resources import PipelineStorage
from gmai_pipeline.defs.training import GROUP as TRAINING_GROUP
from gmai_pipeline.profiles import MissingVariableError
from gmai_pipeline.release.annotations import ANNOTATIONS_DIR, LLAVA_JSON, SUBSETS, write_annotations
from gmai_pipeline.release.images import IMAGES_DIR, sync_images
from gmai_pipeline.release.mixtures import StaleScoresError, load_mixtures, model_judged, read_scores
from gmai_pipeline.release.records import REJECTED_NAME, ReleaseError, ReleaseRecords, write_release_records
from gmai_pipeline.release.report import (
    DIMENSIONS,
    build_report,
    dataset_card,
    decontamination_markdown,
    md,
    png_data_url,
    table3_markdown,
    write_card,
)
from gmai_pipeline.release.shards import DEFAULT_TARGET_BYTES, read_index, verify_shards, write_shards
from gmai_pipeline.release.stage_mix import write_stage_mixture
from gmai_pipeline.release.trainer_metas import write_release_metas
from gmai_pipeline.storage import OutputLayout
from gmai_pipeline.training_plan import TrainingPlanError, lengths_file, load_training_profile, token_lengths

GROUP = "release"
GENERATED_DEPS = [dg.AssetKey(k) for k in GENERATION_KEYS]
RELEASE_KEYS = (
    "release_records",
    "instruction_shards",
    "release_annotations",
    "release_metas",
    "release_images",
    "stage1_mix",
    "stage2_mix",
    "dataset_report",
)
DEMO_TARGET_BYTES = 1_000_000


class ShardConfig(dg.Config):
    target_shard_mb: float | None = None  # default: $GMAI_SHARD_TARGET_MB, else 1000 (1 MB on the demo)
    verify: str = "sha256"  # how kept shards are checked on a rerun: "sha256" or "size"
    workers: int | None = None  # shards written at once; default: one per core, at most 4
    direct_io: bool = True  # write around the page cache (O_DIRECT) where the filesystem allows it


class Stage3Config(dg.Config):
    text_dialogue_files: list[str] | None = None  # overrides the text files listed in the mixtures YAML


def _env_shard_mb() -> float | None:
    """`GMAI_SHARD_TARGET_MB` (DESIGN "Contracts"), read once when the definitions load, not in the asset."""
    value = os.environ.get("GMAI_SHARD_TARGET_MB")  # load time: the documented user setting
    try:
        return float(value) if value else None
    except ValueError:
        raise ValueError(f"GMAI_SHARD_TARGET_MB={value!r} is not a number of megabytes") from None


ENV_SHARD_MB = _env_shard_mb()


def target_bytes(config: ShardConfig, storage: PipelineStorage) -> int:
    """The run's `target_shard_mb`, else `GMAI_SHARD_TARGET_MB` as the definitions loaded it, else 1000 MB
    (1 MB on the demo's raw data)."""
    mb = config.target_shard_mb if config.target_shard_mb is not None else ENV_SHARD_MB
    if mb is not None:
        return int(mb * 1e6)
    return DEMO_TARGET_BYTES if storage.demo_raw else DEFAULT_TARGET_BYTES


def _records(out: OutputLayout) -> ReleaseRecords:
    try:
        return ReleaseRecords(out)
    except ReleaseError as exc:
        raise dg.Failure(str(exc)) from None


@dg.asset(
    group_name=GROUP,
    deps=GENERATED_DEPS,
    kinds={"parquet"},
    description="Every generated record (captions, vqa, translations; all partitions) checked once: "
    "conversations that parse and follow the LLaVA turn rules, an image that exists and that decontamination did "
    "not remove, one row per id. release_records.parquet (sorted by id) is what every release output reads; "
    "release/rejected.parquet lists each rejected row with its reason.",
)
def release_records(context: dg.AssetExecutionContext, storage: PipelineStorage) -> dg.MaterializeResult:
    out = storage.layout()
    stats = write_release_records(out)
    if stats.missing_inputs:
        context.log.warning(
            f"generated tables not found (not materialized yet?): {', '.join(stats.missing_inputs)}"
        )
    for r in stats.examples:
        context.log.warning(f"not released: {r['reason']}: {r['detail']}")
    rejected = sum(stats.rejected.values())
    if not stats.released:
        raise ReleaseError(
            f"no releasable records under {out.root / 'generated'}: materialize captions, vqa and translations first "
            f"({stats.inputs} rows read, {rejected} rejected)"
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": stats.released,
            "records": stats.released,
            "inputs": stats.inputs,
            "rejected": rejected,
            "rejected_by_reason": dg.MetadataValue.json(dict(stats.rejected)),
            "missing_inputs": len(stats.missing_inputs),
            "table": dg.MetadataValue.path(str(out.release_records)),
            "rejected_table": dg.MetadataValue.path(str(out.release / REJECTED_NAME)),
        }
    )


@dg.asset(
    group_name=GROUP,
    deps=[release_records],
    kinds={"webdataset"},
    description="WebDataset tar shards of every released record (image + LLaVA/XTuner `.json`) with the "
    "`shards.json` index (SHA-256). Crash-safe and resumable.",
)
def instruction_shards(
    context: dg.AssetExecutionContext, config: ShardConfig, storage: PipelineStorage
) -> dg.MaterializeResult:
    out = storage.layout()
    records = _records(out)
    result = write_shards(
        records,
        out.release / "shards",
        target_bytes(config, storage),
        verify=config.verify,
        workers=config.workers,
        direct=config.direct_io,
        log=context.log.info,
    )
    return dg.MaterializeResult(
        metadata={
            "shards": len(result.shards),
            "samples": result.samples,
            "bytes": result.bytes,
            "MB/s": round(result.mb_per_s, 1),
            "shards_written": result.written,
            "shards_kept": result.kept,
            "stale_removed": len(result.removed),
            "index": dg.MetadataValue.path(str(out.release / "shards.json")),
            "shard_index": md_table(pd.DataFrame(result.shards)[["name", "samples", "bytes", "sha256"]], 50),
        }
    )


@dg.asset_check(
    asset=instruction_shards, description="Every indexed shard exists with its indexed size; no stray .tar."
)
def shards_match_index(storage: PipelineStorage) -> dg.AssetCheckResult:
    shard_dir = storage.layout().release / "shards"
    index = read_index(shard_dir)
    problems = verify_shards(shard_dir, hash_files=False)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"shards": len(index["shards"]), "problems": "\n".join(problems) or "none"},
    )


@dg.asset(
    group_name=GROUP,
    deps=[release_records],
    kinds={"json"},
    description="The annotation files: `annotations/<subset>.jsonl` (GMAI-MM-Caption/Percept/Instruct-en and the "
    "Chinese subset) and `llava.json` (every record in one JSON array), paths relative to the release's images/.",
)
def release_annotations(storage: PipelineStorage) -> dg.MaterializeResult:
    out = storage.layout()
    subsets = write_annotations(_records(out), out.release)
    return dg.MaterializeResult(
        metadata={
            "records": sum(subsets.values()),
            "subsets": md_table(pd.DataFrame([{"subset": k, "records": v} for k, v in subsets.items()])),
            "llava_json": dg.MetadataValue.path(str(out.release / LLAVA_JSON)),
        }
    )


def _lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))


@dg.asset(
    group_name=GROUP,
    deps=[release_annotations],
    kinds={"json"},
    description="`internvl_meta.json` and `xtuner_meta.json`: the InternVL and XTuner metas over the annotation "
    "files, with each file's record count.",
)
def release_metas(storage: PipelineStorage) -> dg.MaterializeResult:
    release = storage.layout().release
    files = {name: release / ANNOTATIONS_DIR / f"{name}.jsonl" for name in SUBSETS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise dg.Failure(f"annotation files not found: {', '.join(missing)}; materialize release_annotations")
    counts = {name: _lines(p) for name, p in files.items()}
    metas = write_release_metas(release, counts)
    return dg.MaterializeResult(
        metadata={
            "internvl_meta": dg.MetadataValue.path(str(metas["internvl"])),
            "xtuner_meta": dg.MetadataValue.path(str(metas["xtuner"])),
            "subsets": md_table(pd.DataFrame([{"subset": k, "records": v} for k, v in counts.items()])),
        }
    )


@dg.asset(
    group_name=GROUP,
    deps=[release_records],
    kinds={"folder"},
    description="The release's `images/`: exactly the released images (hard links into the output root's store, "
    "a copy where the filesystem cannot link); images no longer released are removed.",
)
def release_images(context: dg.AssetExecutionContext, storage: PipelineStorage) -> dg.MaterializeResult:
    out = storage.layout()
    images = sync_images(_records(out), out.release / IMAGES_DIR)
    for rel in images.removed[:20]:
        context.log.info(f"images/{rel}: no longer released, removed")
    return dg.MaterializeResult(
        metadata={
            "images": images.images,
            "images_linked": images.linked,
            "images_copied": images.copied,
            "images_kept": images.kept,
            "images_removed": images.removed_count,
            "folder": dg.MetadataValue.path(str(out.release / IMAGES_DIR)),
        }
    )


def _token_lengths(data: Path, stage: int) -> str:
    """The mixture's token lengths, measured once here so training ranks do not tokenize it before step 1."""
    try:
        return token_lengths(data, stage, load_training_profile())
    except (MissingVariableError, TrainingPlanError) as exc:
        lengths_file(data).unlink(missing_ok=True)
        return f"not computed ({exc}); training tokenizes the mixture itself"


def build_mix_asset(stage: str) -> dg.AssetsDefinition:
    def compute(
        context: dg.AssetExecutionContext, storage: PipelineStorage, text_files: list[str] | None
    ) -> dg.MaterializeResult:
        out = storage.layout()
        config, path = load_mixtures()
        # A mixture without our records ("w/o our data": only external corpora and text) needs no release.
        ours = any(c.kinds for c in config.stages[stage].components.values())
        records = _records(out) if ours else []
        # Stage III is judged by the stage II model: the stage3_scores asset wrote its scores.
        judged = model_judged(config, stage)
        try:
            scores = read_scores(out.training / "stage3_scores" / "scores.jsonl") if judged else None
            mix = write_stage_mixture(
                stage,
                records,
                config,
                path,
                out.mixtures,
                out.release,
                out.release / IMAGES_DIR,
                [Path(p) for p in text_files] if text_files is not None else None,
                scores,
                external_dir=out.root / "external",
            )
        except StaleScoresError as exc:
            raise dg.Failure(str(exc)) from None
        for r in mix.rejected[:20]:
            context.log.warning(f"{stage}: not mixed: {r['detail']}")
        lengths = _token_lengths(out.mixtures / f"{stage}.jsonl", int(stage[-1]))
        context.log.info(f"{stage} token lengths: {lengths}")
        meta = mix.meta
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
                "rejected_text_lines": len(mix.rejected),
                "mixture": dg.MetadataValue.path(str(out.mixtures / f"{stage}.jsonl")),
                **{kind: dg.MetadataValue.path(str(p)) for kind, p in mix.tools.items()},
                "config": dg.MetadataValue.path(str(path)),
                "token_lengths": lengths,
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
        group_name=TRAINING_GROUP if stage == "stage3" else GROUP,
        deps=[
            release_records,
            release_images,
            dg.AssetKey("external_corpora"),
            *([dg.AssetKey("stage3_scores")] if stage == "stage3" else []),
        ],
        kinds={"json", "parquet"} if stage == "stage3" else {"json"},
        description=description,
    )
    if stage == "stage3":

        @dg.asset(**spec)
        def _mix3(
            context: dg.AssetExecutionContext, config: Stage3Config, storage: PipelineStorage
        ) -> dg.MaterializeResult:
            return compute(context, storage, config.text_dialogue_files)

        return _mix3

    @dg.asset(**spec)
    def _mix(context: dg.AssetExecutionContext, storage: PipelineStorage) -> dg.MaterializeResult:
        return compute(context, storage, None)

    return _mix


def build_report_asset(sources: list[SourceDataset]) -> dg.AssetsDefinition:
    licences = {s.name: s.license for s in sources}

    @dg.asset(
        group_name=GROUP,
        deps=[release_records, instruction_shards, dg.AssetKey("decontaminated")],
        kinds={"markdown", "png"},
        description="Table 3 of the paper for our data, sources with licences, generators and prompt versions, "
        "decontamination summary, charts; written as the dataset card `release/README.md`.",
    )
    def dataset_report(context: dg.AssetExecutionContext, storage: PipelineStorage) -> dg.MaterializeResult:
        out = storage.layout()
        report = build_report(_records(out), licences, out.decontamination_report, out.release / "report")
        index = read_index(out.release / "shards")
        card_text = dataset_card(report, index, report.subset_counts, out.release, report.features)
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
            release_records,
            instruction_shards,
            release_annotations,
            release_metas,
            release_images,
            *(build_mix_asset(s) for s in ("stage1", "stage2", "stage3")),
            build_report_asset(sources),
        ],
        asset_checks=[shards_match_index],
    )


build_dataset_job = dg.define_asset_job(
    "build_dataset_job",
    selection=dg.AssetSelection.groups(GROUP).upstream(),
    description="Every catalogued source through the dataset release: manifests, normalized tables, "
    "decontamination, captions/VQA/translations (all shards), instruction shards, stage I and II mixes "
    "and the dataset report. No training (stage III's mix needs the stage II model: train_job).",
    tags=ALL_SHARDS_TAGS,
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(build_defs(catalog()), dg.Definitions(jobs=[build_dataset_job]))
