"""Jobs: named selections over the asset graph, the ones a user looks for in the UI and the CLI.

- `demo_job`: the demo sources end to end in one run.
- `demo_ingest_job`: the demo's per-dataset steps only (`source/*`, `normalized/*`): a quick check of an
  instance or an executor (the Postgres and Celery tests run it).
- `build_dataset_job`: sources through the dataset release (shards, stage I and II mixes, report); no training.
- `generate_job`: the partitioned generation assets (captions, VQA, translations); backfill its shards.
- `train_job`: the three training stages, with stage III's scoring pass and mixture between II and III
  (the stage II model judges stage III's candidates, so that mixture can only be made inside training).
- `evaluate_job`: the benchmark question sets and the evaluation of each of the three stages.
- `ablation_job`: the paper's Table 7: stages 1, 1+2, 1+3 and 1+2+3 trained from one base, evaluated, compared.

Every job that builds `annotations` builds the release from whichever datasets are usable: absent
ones are listed, failed ones left out and named by annotations' `present_datasets_in_release` check,
which fails the run once the rest is built (README, "Partial downloads and failing datasets"). All
`source/*` assets are one subsettable step (`sources`), so the 219 entries a user has not downloaded
cost no step launch in `build_dataset_job`.

Unpartitioned jobs that include partitioned assets are tagged with the whole generation partition
range, so one run processes every shard (assets read `context.partition_keys`).

Selections are by key prefix, which matches the exact key and resolves to nothing (instead of
failing definition loading) while a stage is not in the graph yet; tests/test_ops_schedules.py
checks that each job holds the keys it is meant to once the graph is complete.

The executor comes from `GMAI_EXECUTOR`: unset/`multiprocess` (Dagster's default: one process per
step on this machine), `in_process`, `celery` (dagster-celery; broker and result backend from
`GMAI_CELERY_BROKER_URL` / `GMAI_CELERY_BACKEND_URL`, workers started with `deploy/celery.yaml`) or
`k8s` (dagster-k8s, one Kubernetes Job per step; `pip install dagster-k8s`).
"""

from __future__ import annotations

import os

import dagster as dg

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.partitions import SHARD_KEYS

ALL_SHARDS_TAGS = {
    "dagster/asset_partition_range_start": SHARD_KEYS[0],
    "dagster/asset_partition_range_end": SHARD_KEYS[-1],
}

GENERATION_KEYS = ("captions", "vqa", "translations")
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
# stage3_mix is filtered by the stage II model's scores (stage3_scores), so it runs with the training stages.
TRAINING_KEYS = ("gmai_vl_stage1", "gmai_vl_stage2", "stage3_scores", "stage3_mix", "gmai_vl_stage3")
EVALUATION_KEYS = ("benchmark_questions", "eval_stage1", "eval_stage2", "eval_stage3")
ABLATION_KEYS = ("gmai_vl_stage1_3", "eval_stage1_3", "stage_ablation")
EXECUTORS = ("multiprocess", "in_process", "celery", "k8s")


def select(*names: str | list[str]) -> dg.AssetSelection:
    """The assets with these keys (a key given as a string is one path component)."""
    return dg.AssetSelection.key_prefixes(*[[n] if isinstance(n, str) else list(n) for n in names])


def training_selection() -> dg.AssetSelection:
    return select(*TRAINING_KEYS)


def gpu_selection() -> dg.AssetSelection:
    """Training and everything that needs a trained model (evaluation, the ablation): left to a person."""
    return select(*TRAINING_KEYS, *ABLATION_KEYS).downstream()


def per_dataset_selection() -> dg.AssetSelection:
    return dg.AssetSelection.key_prefixes(["source"], ["normalized"])


def demo_selection(catalog: list[SourceDataset]) -> dg.AssetSelection:
    """The demo sources, everything downstream, and the shared inputs that needs (e.g. `benchmark_hashes`),
    but no other dataset's `source/*` or `normalized/*`."""
    demo_sources = dg.AssetSelection.assets(*[["source", s.name] for s in catalog if s.demo])
    downstream = demo_sources.downstream() - select(*ABLATION_KEYS)  # the ablation: `ablation_job`
    return downstream | (downstream.upstream() - per_dataset_selection())


def demo_ingest_selection(catalog: list[SourceDataset]) -> dg.AssetSelection:
    demo = [s.name for s in catalog if s.demo]
    return select(*[["source", n] for n in demo], *[["normalized", n] for n in demo])


def build_dataset_selection() -> dg.AssetSelection:
    return select(*RELEASE_KEYS).upstream() - training_selection()


def executor_from_env() -> dg.ExecutorDefinition | None:
    """The executor named by `GMAI_EXECUTOR` (None: the Definitions' default, multiprocess)."""
    kind = os.environ.get("GMAI_EXECUTOR", "multiprocess").strip() or "multiprocess"
    if kind not in EXECUTORS:
        raise ValueError(f"GMAI_EXECUTOR={kind!r} is not one of {', '.join(EXECUTORS)}")
    if kind == "multiprocess":
        return None
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "celery":
        from dagster_celery import celery_executor

        # Read from the environment when the run starts: a broker URL may carry a password, and
        # configured literals would show in the UI's run config.
        return celery_executor.configured(
            {
                "broker": {"env": "GMAI_CELERY_BROKER_URL"},
                "backend": {"env": "GMAI_CELERY_BACKEND_URL"},
            },
            name="celery",
        )
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as exc:  # pragma: no cover - depends on an optional package
        raise ImportError(
            "GMAI_EXECUTOR=k8s needs dagster-k8s: pip install 'dagster-k8s>=0.29,<0.30'"
        ) from exc
    return k8s_job_executor


def build_jobs(catalog: list[SourceDataset]) -> list[dg.UnresolvedAssetJobDefinition]:
    executor = executor_from_env()
    return [
        dg.define_asset_job(
            "demo_job",
            selection=demo_selection(catalog),
            description="The embedded demo end to end: sources -> normalized -> decontaminated -> generated -> "
            "translated -> shards -> three tiny training stages.",
            tags=ALL_SHARDS_TAGS,
            executor_def=executor,
        ),
        dg.define_asset_job(
            "demo_ingest_job",
            selection=demo_ingest_selection(catalog),
            description="The demo's per-dataset steps only (source/* and normalized/*): a quick check of an "
            "instance or an executor.",
            executor_def=executor,
        ),
        dg.define_asset_job(
            "build_dataset_job",
            selection=build_dataset_selection(),
            description="Every catalogued source through the dataset release: manifests, normalized tables, "
            "decontamination, captions/VQA/translations (all shards), instruction shards, stage I and II mixes "
            "and the dataset report. No training (stage III's mix needs the stage II model: train_job).",
            tags=ALL_SHARDS_TAGS,
            executor_def=executor,
        ),
        dg.define_asset_job(
            "generate_job",
            selection=select(*GENERATION_KEYS),
            description="Captions, VQA and translations for one or more generation shards. Backfill it "
            "(`dagster job backfill -m gmai_pipeline -j generate_job --all --noprompt`); cached responses make "
            "finished shards free.",
            executor_def=executor,
        ),
        dg.define_asset_job(
            "train_job",
            selection=training_selection(),
            description="The three GMAI-VL training stages on the GPU cluster resource, with stage III's "
            "scoring pass (the stage II model's confidence) and mixture between stages II and III.",
            executor_def=executor,
        ),
        dg.define_asset_job(
            "evaluate_job",
            selection=select(*EVALUATION_KEYS),
            description="The benchmark question sets and each trained stage evaluated on them (VLMEvalKit's "
            "prompts and exact-matching scores), on the GPU cluster resource.",
            executor_def=executor,
        ),
        dg.define_asset_job(
            "ablation_job",
            selection=select(*TRAINING_KEYS, *EVALUATION_KEYS, *ABLATION_KEYS),
            description="The paper's Table 7: stage 1, 1+2, 1+3 and 1+2+3 trained from one base, each evaluated, "
            "and the comparison with the published figures.",
            executor_def=executor,
        ),
    ]
