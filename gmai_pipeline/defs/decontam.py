"""Decontamination assets: `annotations` -> `benchmark_hashes` -> `decontaminated` (+ a blocking check).

Thin over `gmai_pipeline.decontaminate`; data passes as files under the output root.
"""

import dagster as dg
import pandas as pd

from gmai_pipeline import decontaminate as dc
from gmai_pipeline.benchmarks import REGISTRY
from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.defs.common import layout, md_table
from gmai_pipeline.partitions import SHARD_KEYS
from gmai_pipeline.settings import get_settings

GROUP = "decontamination"
ANNOTATIONS = dg.AssetKey("annotations")
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


def build_annotations(sources: list[SourceDataset]) -> dg.AssetsDefinition:
    names = [s.name for s in sources]

    @dg.asset(
        key=ANNOTATIONS,
        group_name=GROUP,
        deps=[dg.AssetKey(["normalized", n]) for n in names],
        kinds={"parquet"},
        description="Union of every normalized/<dataset> table that exists (NORMALIZED_SCHEMA), streamed.",
    )
    def annotations(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        out = layout()
        counts = dc.union_normalized(out, names)
        absent = [n for n in names if not out.normalized(n).exists()]
        if absent:
            context.log.info(
                f"{len(absent)} datasets have no normalized table yet (not materialized): left out"
            )
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": sum(counts.values()),
                "rows": sum(counts.values()),
                "datasets": len(counts),
                "rows_per_dataset": _counts_table(counts, "dataset", "rows"),
                "datasets_without_normalized_table": len(absent),
                "path": str(out.annotations),
            }
        )

    return annotations


@dg.asset(
    key=BENCHMARK_HASHES,
    group_name=GROUP,
    kinds={"parquet"},
    description=(
        "Byte MD5, decoded-pixel MD5, dHash and pHash of every image of every benchmark present under "
        "$GMAI_BENCHMARK_ROOT (folders: " + ", ".join(f"`{s.folder}/` ({s.layout})" for s in REGISTRY) + ")."
    ),
)
def benchmark_hashes(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    settings = get_settings()
    root = settings.benchmark_root
    if settings.is_demo_benchmarks and not root.exists():
        from gmai_pipeline.demo import ensure_demo_benchmarks

        ensure_demo_benchmarks(root)
        context.log.info(f"generated demo benchmarks in {root}")
    if not root.is_dir():
        context.log.warning(f"benchmark root {root} does not exist: no benchmark is present")
    report = dc.hash_benchmarks(root, layout())
    for spec in report.missing:
        context.log.info(
            f"benchmark {spec.name} not present (expected {root / spec.folder}/: {spec.layout}): skipped"
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sum(report.images.values()),
            "images": sum(report.images.values()),
            "images_per_benchmark": _counts_table(report.images, "benchmark", "images"),
            "benchmarks_present": ", ".join(report.present) or "none",
            "benchmarks_not_present_skipped": ", ".join(s.name for s in report.missing) or "none",
            "benchmark_root": str(root),
            "problems": len(report.problems),
            "problems_preview": _problems(context, report.problems),
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
def decontaminated(context: dg.AssetExecutionContext, config: DecontaminationConfig):
    out = layout()
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
    return dg.Definitions(assets=[build_annotations(sources), benchmark_hashes, decontaminated])
