"""Dagster layer of generation: the LLM resource, the `captions`, `vqa`, `translations` assets and `generate_job`.

Thin over `gmai_pipeline.generation`: each asset loops over the partitions of its run (a backfill
or the demo job passes a range), writes its tables under the output root and reports metadata.
Unpartitioned jobs that include these assets are tagged with `ALL_SHARDS_TAGS` (the whole partition
range), so one run processes every shard (assets read `context.partition_keys`).
"""

import os
import warnings
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from gmai_pipeline import partitions
from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.defs.common import catalog, md_table
from gmai_pipeline.defs.resources import PipelineStorage, bind_env
from gmai_pipeline.generation import pipeline
from gmai_pipeline.generation.backends.openai_batch import BatchPending
from gmai_pipeline.generation.pipeline import HELD_BACK, LLMConfig, Report
from gmai_pipeline.profiles import profile_name, raw_resource_config
from gmai_pipeline.redact import has_credentials, redact_url
from gmai_pipeline.settings import RESOURCES_DIR
from gmai_pipeline.storage import OutputLayout

GROUP = "generation"
GENERATION_KEYS = ("captions", "vqa", "translations")
PARTITIONS = dg.StaticPartitionsDefinition(partitions.SHARD_KEYS)
ALL_SHARDS_TAGS = {
    "dagster/asset_partition_range_start": partitions.SHARD_KEYS[0],
    "dagster/asset_partition_range_end": partitions.SHARD_KEYS[-1],
}
TEMPLATE_NOTE = "template (offline, not model output)"
_SECRET_KEYS = ("api_key", "key", "token", "secret", "password")


class LLMResource(dg.ConfigurableResource):
    """Which backend and model generate text. The API key is never a field: the SDK backends read
    `OPENAI_API_KEY` from the environment when they start."""

    backend: str = "template"
    model: str = "template-v1"
    base_url: str = ""
    max_in_flight: int = 16
    timeout_s: float = 120.0
    max_retries: int = 8
    temperature: float = 0.2
    max_tokens: int = 1024
    image_detail: str = "low"
    logprobs: bool = True
    batch_poll_s: float = 60.0
    batch_max_wait_s: float = 26 * 3600.0
    chunk_size: int = 2000
    translate_fraction: float = 0.3

    @classmethod
    def from_profile(cls, profile: str | None = None, root: Path = RESOURCES_DIR) -> "LLMResource":
        """`resources/<profile>/llm.yaml`, then `GMAI_LLM_BACKEND` / `GMAI_LLM_MODEL` when set.

        A text setting written as `${VAR}` / `${VAR:-default}` becomes `dg.EnvVar(VAR)` while VAR is
        set: the run reads it when it starts, and the stored configuration (run storage, the UI)
        holds only the variable's name, so `OPENAI_BASE_URL=http://user:password@host/v1` is never
        saved. A literal endpoint URL with credentials in a profile is refused.
        """
        raw = raw_resource_config("llm", profile, root)
        cfg: dict[str, Any] = {}
        for key, value in raw.items():
            if key.lower() in _SECRET_KEYS or key not in cls.model_fields:
                continue
            cfg[key] = bind_env(value, cls.model_fields[key].annotation)
        literal = cfg.get("base_url")
        if isinstance(literal, str) and not isinstance(literal, dg.EnvVar) and has_credentials(literal):
            raise ValueError(
                f"{root / (profile or profile_name()) / 'llm.yaml'}: base_url carries credentials "
                f"({redact_url(literal)}); write base_url: ${{OPENAI_BASE_URL:-}} and set the variable"
            )
        # Read when the definitions load (DESIGN "Contracts"), never in an asset: the run config shows the value.
        if os.environ.get("GMAI_LLM_BACKEND"):
            cfg["backend"] = os.environ["GMAI_LLM_BACKEND"]
        if os.environ.get("GMAI_LLM_MODEL"):
            cfg["model"] = os.environ["GMAI_LLM_MODEL"]
        return cls(**{k: v for k, v in cfg.items() if v is not None})

    def config(self) -> LLMConfig:
        """The domain's LLMConfig from this resource's fields: the resource declares which LLMConfig fields a
        profile may set (tests/test_generation_assets.py checks every one is an LLMConfig field), so a
        field added to one is not silently dropped by a hand-written copy."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        if isinstance(self.base_url, dg.EnvVar):
            values["base_url"] = self.base_url.get_value("")
        values["base_url"] = values["base_url"] or None  # "": the SDK default endpoint
        values["image_detail"] = values["image_detail"] or None
        return LLMConfig(**values)


def _metadata(reports: list[Report], cfg: LLMConfig) -> dict[str, Any]:
    total = Report(
        "all", reports[0].asset if reports else "", reports[0].backend if reports else cfg.backend, ""
    )
    for r in reports:
        for name in ("inputs", "generated", "quarantined", "requests_sent", "cache_hits", "retried"):
            setattr(total, name, getattr(total, name) + getattr(r, name))
        for name in ("tokens_in", "tokens_out", "label_mentioned", "held_back"):
            setattr(total, name, getattr(total, name) + getattr(r, name))
        total.failures.update(r.failures)
        total.by_kind.update(r.by_kind)
    model = reports[0].model if reports else cfg.model
    total.model = model
    cost = total.cost_usd
    samples = [s for r in reports for s in r.samples][:3]
    is_template = total.backend == "template"
    meta: dict[str, Any] = {
        "backend": total.backend,
        "model": model,
        "generator": TEMPLATE_NOTE if is_template else f"{total.backend}:{model} (model output)",
        "partitions": ", ".join(r.partition for r in reports),
        "inputs": total.inputs,
        "generated": total.generated,
        "quarantined": total.quarantined,
        "requests_sent": total.requests_sent,
        "cache_hits": total.cache_hits,
        "retried_invalid": total.retried,
        "tokens_in": total.tokens_in,
        "tokens_out": total.tokens_out,
        "estimated_cost_usd": dg.MetadataValue.float(round(cost, 4))
        if cost is not None
        else "unknown (no price)",
        "price_table": "resources/prices.yaml (unverified)",
        "label_mention_rate": dg.MetadataValue.float(
            round(total.label_mentioned / total.generated, 4) if total.generated else 0.0
        ),
        "held_back_licence": total.held_back,
        "by_kind": dg.MetadataValue.json(dict(total.by_kind)),
        "failures_by_reason": dg.MetadataValue.json(dict(total.failures)),
        "per_partition": md_table(
            pd.DataFrame(
                [
                    {
                        "partition": r.partition,
                        "inputs": r.inputs,
                        "generated": r.generated,
                        "quarantined": r.quarantined,
                        "held_back": r.held_back,
                        "requests": r.requests_sent,
                        "cache_hits": r.cache_hits,
                    }
                    for r in reports
                ]
            ),
            max_rows=len(partitions.SHARD_KEYS),
        ),
        "samples": md_table(
            pd.DataFrame(
                [
                    {
                        "id": s["id"],
                        "kind": s["kind"],
                        "lang": s["language"],
                        "conversation": s["conversations"][:400],
                    }
                    for s in samples
                ]
            )
        ),
    }
    if total.held_back:
        meta["held_back_note"] = (
            f"{total.held_back} sample(s) from sources without external_llm_allowed were not sent to the "
            f"non-local endpoint; they are in the generation quarantine with reason '{HELD_BACK}'"
        )
    return meta


def _check(asset: str, keys: list[str], cfg: LLMConfig, out: OutputLayout) -> dg.AssetCheckResult:
    """generated + quarantined = inputs, recounted from the files on disk for every partition of the run."""
    rows = []
    for key in keys:
        inputs, generated, quarantined = pipeline.accounted(out, asset, key, cfg)
        rows.append({"partition": key, "inputs": inputs, "generated": generated, "quarantined": quarantined})
    bad = [r for r in rows if r["generated"] + r["quarantined"] != r["inputs"]]
    return dg.AssetCheckResult(
        check_name="accounted_for",
        passed=not bad,
        metadata={"partitions": md_table(pd.DataFrame(rows), max_rows=len(rows)), "unbalanced": len(bad)},
    )


def _run(
    context: dg.AssetExecutionContext,
    asset: str,
    llm: LLMResource,
    storage: PipelineStorage,
    allowed: dict[str, bool],
) -> dg.MaterializeResult:
    cfg = llm.config()
    out = storage.layout()
    backend = pipeline.make_backend(cfg, out)
    reports, pending = [], []
    for key in context.partition_keys:
        try:
            if asset == "translations":
                report = pipeline.translate_partition(key, out, cfg, backend, allowed, log=context.log.info)
            else:
                report = pipeline.generate_partition(
                    asset, key, out, cfg, backend, allowed, log=context.log.info
                )
        except BatchPending as exc:  # submit every partition's batches before giving up on this run
            context.log.info(str(exc))
            pending.append(key)
            continue
        context.log.info(
            f"{asset} {key}: {report.generated} generated, {report.quarantined} quarantined, "
            f"{report.requests_sent} requests, {report.cache_hits} cache hits"
        )
        reports.append(report)
    if pending:
        raise dg.Failure(
            description=f"Batch API results pending for partition(s) {', '.join(pending)}; their batches are "
            "submitted and recorded under llm_cache/batches: re-run later to collect them (nothing is sent twice).",
            metadata={"pending_partitions": ", ".join(pending), "finished_partitions": len(reports)},
        )
    return dg.MaterializeResult(
        metadata=_metadata(reports, cfg), check_results=[_check(asset, context.partition_keys, cfg, out)]
    )


def build_defs(sources: list[SourceDataset]) -> dg.Definitions:
    # `backfill_policy` is beta in Dagster 1.13; we rely on it knowingly (one run per backfill range).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _build_defs(sources)


def _build_defs(sources: list[SourceDataset]) -> dg.Definitions:
    allowed = {s.name: s.external_llm_allowed for s in sources}
    common: dict[str, Any] = {
        "group_name": GROUP,
        "partitions_def": PARTITIONS,
        "backfill_policy": dg.BackfillPolicy.single_run(),
        "pool": "llm",
        "kinds": {"openai", "parquet"},
    }

    @dg.asset(
        name="captions",
        deps=[dg.AssetKey("decontaminated")],
        description="Whole-image captions (classification rows) and region captions starting 'This region' "
        "(rows with a box), annotation-guided (GMAI-VL Table 2).",
        check_specs=[
            dg.AssetCheckSpec(
                "accounted_for", asset="captions", description="generated + quarantined = inputs"
            )
        ],
        **common,
    )
    def captions(
        context: dg.AssetExecutionContext, llm: LLMResource, storage: PipelineStorage
    ) -> dg.MaterializeResult:
        return _run(context, "captions", llm, storage, allowed)

    @dg.asset(
        name="vqa",
        deps=[dg.AssetKey("decontaminated")],
        description="1-3 question/answer pairs per annotation as a multi-turn conversation (JSON-schema output).",
        check_specs=[
            dg.AssetCheckSpec("accounted_for", asset="vqa", description="generated + quarantined = inputs")
        ],
        **common,
    )
    def vqa(
        context: dg.AssetExecutionContext, llm: LLMResource, storage: PipelineStorage
    ) -> dg.MaterializeResult:
        return _run(context, "vqa", llm, storage, allowed)

    @dg.asset(
        name="translations",
        deps=[dg.AssetKey("captions"), dg.AssetKey("vqa")],
        description="Chinese versions of a deterministic ~30% (by hash of the record id) of the English records; "
        "checked for CJK share, the label kept in English.",
        check_specs=[
            dg.AssetCheckSpec(
                "accounted_for", asset="translations", description="translated + quarantined = selected"
            )
        ],
        **common,
    )
    def translations(
        context: dg.AssetExecutionContext, llm: LLMResource, storage: PipelineStorage
    ) -> dg.MaterializeResult:
        return _run(context, "translations", llm, storage, allowed)

    return dg.Definitions(assets=[captions, vqa, translations], resources={"llm": LLMResource.from_profile()})


generate_job = dg.define_asset_job(
    "generate_job",
    selection=dg.AssetSelection.groups(GROUP),
    description="Captions, VQA and translations for one or more generation shards. Backfill it "
    "(`dagster job backfill -m gmai_pipeline.definitions -j generate_job --all --noprompt`); cached responses "
    "make finished shards free.",
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(build_defs(catalog()), dg.Definitions(jobs=[generate_job]))
