"""Decontamination assets: `annotations` -> `benchmark_hashes` -> `decontaminated` (+ a blocking check).

`annotations` holds whichever datasets are usable now (`gmai_pipeline.availability`), and its
non-blocking check `present_datasets_in_release` fails the run naming present datasets left out.

Thin over `gmai_pipeline.decontaminate`; data passes as files under the output root.
"""

import dagster as dg
import pandas as pd

from gmai_pipeline import decontaminate as dc
from gmai_pipeline.availability import Inventory, failures_message, take_inventory
from gmai_pipeline.benchmarks import REGISTRY
from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.defs.common import ANNOTATIONS, catalog, md_table
from gmai_pipeline.defs.resources import PipelineStorage
from gmai_pipeline.partitions import SHARD_KEYS

GROUP = "decontamination"
RELEASE_CHECK = "present_datasets_in_release"
POLICY = (
    "Absent datasets (no raw folder) are listed with their download URLs, not failures. A present dataset that "
    "fails is left out, the release is built from the others, and the check present_datasets_in_release "
    "then fails the run naming it."
)
BENCHMARK_HASHES = dg.AssetKey("benchmark_hashes")
DECONTAMINATED = dg.AssetKey("decontaminated")
OVERLAP_CHECK = "no_benchmark_overlap"


class DecontaminationConfig(dg.Config):
    threshold: int = dc.DEFAULT_THRESHOLD  # dHash bits (of 64) within which two images are the same picture
    phash_veto: int | None = (
        dc.DEFAULT_PHASH_VETO
    )  # reject a dHash match whose pHash is further apart; None: off
    workers: int | None = None  # hashing processes; default: the CPUs available


def _counts_table(counts: dict[str, int], key: str, value: str) -> dg.MetadataValue:
    df = pd.DataFrame(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])), columns=[key, value])
    return md_table(df, max_rows=50)


def _problems(context: dg.AssetExecutionContext, problems: list[str]) -> dg.MetadataValue:
    for p in problems[:50]:
        context.log.warning(p)
    if len(problems) > 50:
        context.log.warning(f"... and {len(problems) - 50} more problems")
    return dg.MetadataValue.md("\n".join(f"- {p}" for p in problems[:20]) if problems else "none")


def _absent_table(inv: Inventory) -> dg.MetadataValue:
    df = pd.DataFrame(
        [(a.dataset, a.url, a.folder, a.license) for a in inv.absent],
        columns=["dataset", "download", "expected folder", "licence"],
    )
    return md_table(df, max_rows=len(df))


def _failed_table(inv: Inventory) -> dg.MetadataValue:
    df = pd.DataFrame(
        [(f.dataset, f.stage, f.at, f.message) for f in inv.failed],
        columns=["dataset", "stage", "since", "reason"],
    )
    return md_table(df, max_rows=len(df))


def _names(names: list[str]) -> str:
    return ", ".join(names) or "none"


def build_annotations(sources: list[SourceDataset]) -> dg.AssetsDefinition:
    """A graph asset whose one op takes every `normalized/*` as a fan-in: it runs when at least one was
    produced in this run (absent and failed datasets produce none), where a plain asset's deps would
    skip it as soon as any one is missing."""
    names = [s.name for s in sources]
    inputs = {f"n{i}": dg.AssetKey(["normalized", n]) for i, n in enumerate(names)}

    @dg.op(
        name="union_normalized",
        ins={"after": dg.In(dg.Nothing)},
        out=dg.Out(dg.Nothing),
        description="Streams the usable normalized/<dataset> tables into annotations.parquet.",
    )
    def union_normalized(context: dg.OpExecutionContext, storage: PipelineStorage) -> None:
        out = storage.layout()
        inv = take_inventory(sources, storage.raw, out)
        context.log.info(f"annotations: {inv.summary()}")
        for f in inv.failed:
            context.log.error(f"left out (failed): {f.line()}")
        if inv.pending:
            context.log.warning(
                f"present but not normalized yet (materialize their normalized/* assets): {_names(inv.pending)}"
            )
        if not inv.included:
            raise dg.Failure(
                description=f"no dataset can go into annotations ({inv.summary()}). "
                + (failures_message(inv.failed) if inv.failed else "Download a dataset (see source/* pages).")
            )
        counts = dc.union_normalized(out, inv.included)
        context.add_output_metadata(
            {
                "dagster/row_count": sum(counts.values()),
                "rows": sum(counts.values()),
                "datasets": len(inv.included),
                "rows_per_dataset": _counts_table(
                    {n: counts.get(n, 0) for n in inv.included}, "dataset", "rows"
                ),
                "datasets_absent": len(inv.absent),
                "absent_datasets": _absent_table(inv) if inv.absent else "none",
                "datasets_failed": len(inv.failed),
                "failed_datasets": _failed_table(inv) if inv.failed else "none",
                "present_not_normalized": _names(inv.pending),
                "included_without_raw_folder": _names(inv.without_raw),
                "policy": POLICY,
                "path": str(out.annotations),
            }
        )

    @dg.graph_asset(
        key=ANNOTATIONS,
        group_name=GROUP,
        ins={arg: dg.AssetIn(key=key, dagster_type=dg.Nothing) for arg, key in inputs.items()},
        kinds={"parquet"},
        description="Union of the usable normalized/<dataset> tables (NORMALIZED_SCHEMA), streamed. "
        + POLICY,
    )
    def annotations(**normalized):
        return union_normalized(after=list(normalized.values()))

    return annotations


def build_release_check(sources: list[SourceDataset]) -> dg.AssetChecksDefinition:
    """The run's verdict on partial data, in a step nothing depends on: it fails (and fails the run)
    naming every present dataset left out, after the rest of the release was built from the others."""

    @dg.asset_check(
        asset=ANNOTATIONS,
        name=RELEASE_CHECK,
        blocking=False,
        description="Every dataset whose raw folder is present is in annotations. Fails the run, naming each "
        "present dataset that failed (and why), once everything else is built; absent datasets are listed, "
        "never a failure.",
    )
    def present_datasets_in_release(context: dg.AssetCheckExecutionContext, storage: PipelineStorage):
        inv = take_inventory(sources, storage.raw, storage.layout())
        tags = {"gmai/datasets_absent": str(len(inv.absent)), "gmai/datasets_failed": str(len(inv.failed))}
        if inv.failed:
            tags["gmai/failed_datasets"] = ",".join(f.dataset for f in inv.failed)[:1000]
        context.instance.add_run_tags(context.run.run_id, tags)  # shown in the UI's run list
        yield dg.AssetCheckResult(
            passed=not inv.failed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=failures_message(inv.failed, len(inv.absent)) if inv.failed else inv.summary(),
            metadata={
                "datasets_included": len(inv.included),
                "datasets_absent": len(inv.absent),
                "datasets_failed": len(inv.failed),
                "failed_datasets": _failed_table(inv) if inv.failed else "none",
                "present_not_normalized": _names(inv.pending),
            },
        )
        if inv.failed:
            raise dg.Failure(description=failures_message(inv.failed, len(inv.absent)))

    return present_datasets_in_release


@dg.asset(
    key=BENCHMARK_HASHES,
    group_name=GROUP,
    kinds={"parquet"},
    description=(
        "Byte MD5, decoded-pixel MD5, dHash and pHash of every image of every benchmark present under "
        "$GMAI_BENCHMARK_ROOT (folders: " + ", ".join(f"`{s.folder}/` ({s.layout})" for s in REGISTRY) + "; "
        "or VLMEvalKit's flat LMUData/ TSVs, `_local.tsv` included). A benchmark present but yielding no "
        "image fails the step."
    ),
)
def benchmark_hashes(context: dg.AssetExecutionContext, storage: PipelineStorage) -> dg.MaterializeResult:
    root = storage.ensure_benchmarks(context.log.info)
    if not root.is_dir():
        context.log.warning(f"benchmark root {root} does not exist: no benchmark is present")
    report = dc.hash_benchmarks(root, storage.layout())
    for spec in report.missing:
        context.log.info(
            f"benchmark {spec.name} not present (expected {root / spec.folder}/ ({spec.layout}) or VLMEvalKit "
            f"TSVs {', '.join(spec.tsv_patterns)} in {root}): skipped"
        )
    for line in report.ignored:
        context.log.warning(f"not read: {line}")
    problems = _problems(context, report.problems)
    if not report.ok:
        # A benchmark that is there but yields nothing must not pass as "checked": nothing would be removed.
        raise dg.Failure(
            "benchmarks present but yielding no image (fix the files, or move them out of "
            f"{root}):\n" + "\n".join(f"- {e}" for e in report.empty),
            metadata={
                "empty": dg.MetadataValue.md("\n".join(f"- {e}" for e in report.empty)),
                "problems_preview": problems,
            },
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sum(report.images.values()),
            "images": sum(report.images.values()),
            "images_per_benchmark": _counts_table(report.images, "benchmark", "images"),
            "images_per_file": _counts_table(report.sources, "file or folder", "images"),
            "benchmarks_present": ", ".join(report.present) or "none",
            "benchmarks_not_present_skipped": ", ".join(s.name for s in report.missing) or "none",
            "files_not_read": dg.MetadataValue.md("\n".join(f"- {e}" for e in report.ignored) or "none"),
            "benchmark_root": str(root),
            "problems": len(report.problems),
            "problems_preview": problems,
        }
    )


@dg.asset(
    key=DECONTAMINATED,
    group_name=GROUP,
    deps=[ANNOTATIONS, BENCHMARK_HASHES],
    kinds={"parquet"},
    description=(
        "annotations minus every sample whose image matches a benchmark image by byte MD5, pixel MD5 or "
        "dHash distance <= threshold (pHash as second opinion); a match on one slice removes the whole "
        "volume. Removed rows: decontamination_report.parquet. Each kept row carries its generation shard "
        "(`shard`), in row groups of one shard, so a generation partition reads only its rows."
    ),
    check_specs=[
        dg.AssetCheckSpec(
            OVERLAP_CHECK,
            asset=DECONTAMINATED,
            blocking=True,
            description="Zero byte-MD5 and zero pixel-MD5 overlap between the kept images and benchmark_hashes.",
        )
    ],
)
def decontaminated(
    context: dg.AssetExecutionContext, config: DecontaminationConfig, storage: PipelineStorage
):
    out = storage.layout()
    run = dc.decontaminate(out, config.threshold, config.phash_veto, config.workers)
    for err in run.hash_errors:
        context.log.warning(f"training image not hashed: {err}")
    result, counts = run.result, run.hash_counts
    preview_md: dg.MetadataValue | str = "no matches"
    if run.preview_png is not None:
        preview_md = dg.MetadataValue.md(dc.data_url_markdown(run.preview_png.read_bytes()))
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": result.kept,
            "kept_rows": result.kept,
            "removed_rows": result.removed,
            "removed_volumes": result.volumes_removed,
            "matched_training_images": run.matched_images,
            "removed_per_benchmark": _counts_table(result.removed_by_benchmark, "benchmark", "rows"),
            "removed_per_method": _counts_table(result.removed_by_method, "method", "rows"),
            "removed_per_benchmark_and_method": md_table(run.by_benchmark_and_method, 50),
            "matched_pairs_preview": preview_md,
            "preview_png": str(run.preview_png) if run.preview_png else "none",
            "threshold_bits": config.threshold,
            "phash_veto_bits": config.phash_veto if config.phash_veto is not None else "off",
            "training_images": counts["images"],
            "training_hashes_cached": counts["cached"],
            "training_hashes_computed": counts["computed"],
            "training_hash_errors": counts["errors"],
            "generation_shards": len(SHARD_KEYS),
            "report": str(out.decontamination_report),
        }
    )
    ov = dc.overlap(out)
    yield dg.AssetCheckResult(
        check_name=OVERLAP_CHECK,
        asset_key=DECONTAMINATED,
        passed=ov.ok,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "md5_overlap": len(ov.md5),
            "pixel_md5_overlap": len(ov.pixel_md5),
            "kept_images_without_hash": ov.unhashed,
            "examples": ", ".join((ov.md5 + ov.pixel_md5)[:5]) or "none",
        },
    )


def build_defs(sources: list[SourceDataset]) -> dg.Definitions:
    return dg.Definitions(
        assets=[build_annotations(sources), benchmark_hashes, decontaminated],
        asset_checks=[build_release_check(sources)],
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs(catalog())
