"""`external_corpora`: the image-text corpora `mixtures.yaml` adds, read, checked and decontaminated like ours.

Thin over `gmai_pipeline.release.external`. Output: `$GMAI_OUTPUT_ROOT/external/<corpus>.jsonl` (what the stage
mixtures read), `.removed.parquet` (benchmark matches), `.rejected.parquet` (unusable records); a blocking
check proves that no kept image has a benchmark image's byte or pixel MD5.
"""

import dagster as dg
import pandas as pd

from gmai_pipeline import decontaminate as dc
from gmai_pipeline.defs.common import catalog, md_table
from gmai_pipeline.defs.decontam import BENCHMARK_HASHES
from gmai_pipeline.defs.resources import PipelineStorage
from gmai_pipeline.release import external
from gmai_pipeline.release.mixtures import load_mixtures

EXTERNAL = dg.AssetKey("external_corpora")
CHECK = "no_benchmark_overlap_external"


class ExternalConfig(dg.Config):
    threshold: int = dc.DEFAULT_THRESHOLD
    phash_veto: int | None = dc.DEFAULT_PHASH_VETO
    workers: int | None = None


@dg.asset(
    key=EXTERNAL,
    group_name="release",
    deps=[BENCHMARK_HASHES],
    kinds={"json"},
    description="External LLaVA/ShareGPT image-text corpora declared under `corpora:` in mixtures.yaml: records "
    "checked, images decontaminated against benchmark_hashes like ours (MD5, pixel MD5, dHash/pHash), kept "
    "records in external/<corpus>.jsonl for the stage mixtures.",
    check_specs=[
        dg.AssetCheckSpec(
            CHECK,
            asset=EXTERNAL,
            blocking=True,
            description="No kept external image has a benchmark image's byte MD5 or pixel MD5.",
        )
    ],
)
def external_corpora(context: dg.AssetExecutionContext, config: ExternalConfig, storage: PipelineStorage):
    mixtures, path = load_mixtures()
    lay = storage.layout()
    out = lay.root / "external"
    bench = dc.read_hashes(lay.benchmark_hashes) if lay.benchmark_hashes.exists() else pd.DataFrame()
    if not len(bench) and mixtures.corpora:
        context.log.warning("benchmark_hashes is empty: external images are checked against no benchmark")
    workers = dc.default_workers() if config.workers is None else config.workers
    rows, overlap = [], []
    for name, corpus in mixtures.corpora.items():
        res = external.process(name, corpus, path, bench, out, workers, config.threshold, config.phash_veto)
        for r in res.rejected[:10]:
            context.log.warning(f"{name}: not used: {r['detail']}")
        rows.append({"corpus": name, "records": res.records, "images": res.images, "kept": len(res.kept),
                     "removed_benchmark_match": len(res.removed), "rejected": len(res.rejected),
                     **{f"removed_{k}": v for k, v in res.removed_by_method.items()}})  # fmt: skip
        overlap += res.overlap
    table = pd.DataFrame(rows).fillna(0) if rows else pd.DataFrame()
    yield dg.MaterializeResult(
        metadata={
            "corpora": len(rows),
            "corpora_table": md_table(table),
            "kept_records": int(table["kept"].sum()) if rows else 0,
            "removed_records": int(table["removed_benchmark_match"].sum()) if rows else 0,
            "mixtures_file": dg.MetadataValue.path(str(path)),
            "path": dg.MetadataValue.path(str(out)),
        }
    )
    yield dg.AssetCheckResult(
        check_name=CHECK,
        asset_key=EXTERNAL,
        passed=not overlap,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"overlap": len(overlap), "examples": ", ".join(overlap[:5]) or "none"},
    )


def build_defs(sources) -> dg.Definitions:
    return dg.Definitions(assets=[external_corpora])


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs(catalog())
