"""Evaluation: `benchmark_questions` -> `eval_stage{1,2,3}` (one per training stage) and the Table 7 ablation.

Thin over `gmai_pipeline.evaluation`. Each evaluation asset runs `training_jobs.evaluate` on the GPU cluster
resource the way the stages train (Pipes; local subprocess/torchrun or Slurm), then scores the predictions
here as VLMEvalKit's exact-matching evaluator does and writes its result files under
`evaluation/vlmevalkit/<model>/`. The ablation (`ablation_job`): stage III trained straight from stage I
(`gmai_vl_stage1_3`), evaluated like the others, and `stage_ablation` puts stage1, 1+2, 1+3 and 1+2+3 beside
the paper's Table 7.
"""

import hashlib
import math
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from gmai_pipeline.defs import training
from gmai_pipeline.defs.common import catalog
from gmai_pipeline.defs.decontam import BENCHMARK_HASHES
from gmai_pipeline.defs.resources import PipelineStorage
from gmai_pipeline.evaluation import paper
from gmai_pipeline.evaluation.questions import read_question_set, write_question_set
from gmai_pipeline.evaluation.report import (
    ABLATION_ROWS,
    ablation_chart,
    ablation_table,
    chart_png,
    markdown,
    read_table7_row,
)
from gmai_pipeline.evaluation.run import SUMMARY_FILE, score_stage
from gmai_pipeline.storage import atomic_write_bytes, atomic_write_text

GROUP = "evaluation"
# The paper's Table 7: stage III straight after stage I, its evaluation, and the comparison (`ablation_job`).
ABLATION_GROUP = "ablation"
QUESTIONS = dg.AssetKey("benchmark_questions")
ABLATION = dg.AssetKey("stage_ablation")
# (asset, training asset it evaluates, its training folder, model name, Table 7 row)
EVALUATED = (
    ("eval_stage1", "gmai_vl_stage1", "stage1", "GMAI-VL-stage1", "stage1"),
    ("eval_stage2", "gmai_vl_stage2", "stage2", "GMAI-VL-stage1+2", "stage1+2"),
    ("eval_stage3", "gmai_vl_stage3", "stage3", "GMAI-VL-stage1+2+3", "stage1+2+3"),
    ("eval_stage1_3", "gmai_vl_stage1_3", "stage1_3", "GMAI-VL-stage1+3", "stage1+3"),
)
EVAL_KEYS = tuple(e[0] for e in EVALUATED[:3])
ABLATION_KEYS = ("gmai_vl_stage1_3", "eval_stage1_3", "stage_ablation")
DEMO_MAX_NEW_TOKENS = 24


def evaluation_dir(storage: PipelineStorage) -> Path:
    return storage.output / "evaluation"


def questions_dir(storage: PipelineStorage) -> Path:
    return evaluation_dir(storage) / "questions"


def vlmevalkit_dir(storage: PipelineStorage) -> Path:
    return evaluation_dir(storage) / "vlmevalkit"


def _bullets(lines: list[str], limit: int = 30) -> dg.MetadataValue:
    shown = [f"- {x}" for x in lines[:limit]] + (
        [f"- ... and {len(lines) - limit} more"] if len(lines) > limit else []
    )
    return dg.MetadataValue.md("\n".join(shown) or "none")


def _table(df: pd.DataFrame) -> dg.MetadataValue:
    """A Dagster table (sortable in the UI); floats rounded, NaN as empty."""
    df = df.copy()
    columns = []
    for c in df.columns:
        kind = (
            "float"
            if pd.api.types.is_float_dtype(df[c])
            else "int"
            if pd.api.types.is_integer_dtype(df[c])
            else "string"
        )
        columns.append(dg.TableColumn(str(c), kind))
    records = []
    for rec in df.to_dict(orient="records"):
        clean = {}
        for k, v in rec.items():
            if isinstance(v, float):
                clean[str(k)] = None if math.isnan(v) else round(v, 2)
            elif isinstance(v, int | str | bool) or v is None:
                clean[str(k)] = v
            else:
                clean[str(k)] = str(v)
        records.append(dg.TableRecord(clean))
    return dg.MetadataValue.table(records, dg.TableSchema(columns=columns))


def _png_md(png: bytes, alt: str) -> dg.MetadataValue:
    import base64

    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})")


@dg.asset(
    key=QUESTIONS,
    group_name=GROUP,
    deps=[BENCHMARK_HASHES],
    kinds={"json"},
    description="Every benchmark present under $GMAI_BENCHMARK_ROOT as evaluation question sets: the evaluation "
    "splits, VLMEvalKit's prompts, images decoded to files (evaluation/questions/). The same files "
    "benchmark_hashes checked the training data against. A present benchmark without a usable question fails.",
)
def benchmark_questions(context: dg.AssetExecutionContext, storage: PipelineStorage) -> dg.MaterializeResult:
    root = storage.ensure_benchmarks(context.log.info)
    qs = write_question_set(root, questions_dir(storage))
    for p in qs.problems[:50]:
        context.log.warning(p)
    if qs.empty:
        raise dg.Failure(
            f"benchmarks present under {root} but yielding no question to evaluate: {', '.join(qs.empty)} "
            "(see the warnings above for each file; fix or remove them)",
            metadata={"problems": _bullets(qs.problems)},
        )
    if not qs.datasets:
        raise dg.Failure(f"no benchmark found under {root} (GMAI_BENCHMARK_ROOT): nothing to evaluate on")
    table = pd.DataFrame(
        [{"dataset": n, "benchmark": d["benchmark"], "task": d["task"], "questions": d["questions"],
          "answered": d["answered"], "rows_without_image_skipped": d["skipped_no_image"]}
         for n, d in qs.datasets.items()]
    )  # fmt: skip
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": qs.questions,
            "questions": qs.questions,
            "datasets": _table(table),
            "benchmark_root": str(root),
            "problems": len(qs.problems),
            "problems_preview": _bullets(qs.problems),
            "path": dg.MetadataValue.path(str(questions_dir(storage))),
        }
    )


class EvalConfig(dg.Config):
    batch_size: int | None = Field(
        default=None, description="questions per generate call (default: 32 GPU, 8 CPU)"
    )
    max_new_tokens: int | None = Field(
        default=None, description=f"default 256 ({DEMO_MAX_NEW_TOKENS} on the demo)"
    )
    limit: int = Field(
        default=0, description="first N questions per dataset only (a smoke run; scored as a subset)"
    )
    extra_args: list[str] = Field(default_factory=list, description="more training_jobs.evaluate flags")


def _fingerprint(export: Path, question_index: Path) -> str:
    """Predictions are kept for a resume only while the model files and the question set are the same."""
    h = hashlib.sha256(question_index.read_bytes())
    for p in sorted(export.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(export)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _eval_asset(name: str, trained: str, folder: str, model: str, row: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=name,
        deps=[dg.AssetKey(trained), QUESTIONS],
        pool="gpu",
        group_name=ABLATION_GROUP if name in ABLATION_KEYS else GROUP,
        kinds={"pytorch", "xlsx"},
        description=f"{trained} ({model}) on every benchmark question set, prompted and scored as VLMEvalKit does "
        "by default with exact matching (no LLM judge); VLMEvalKit result files in "
        f"evaluation/vlmevalkit/{model}/; per-benchmark scores and the paper's breakdowns (Tables 4-8).",
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: EvalConfig,
        gpu_cluster: training.GpuCluster,
        storage: PipelineStorage,
    ):
        export = storage.layout().training / folder / "export"
        if not (export / "llm").is_dir():
            raise dg.Failure(f"{trained} has no export at {export}: materialize {trained} first")
        qdir = questions_dir(storage)
        read_question_set(qdir)  # fails with the fix when benchmark_questions was not materialized
        out = evaluation_dir(storage) / model
        preds = out / "predictions"
        stamp = _fingerprint(export, qdir / "index.json")
        if (preds / "FINGERPRINT").is_file() and (preds / "FINGERPRINT").read_text() != stamp:
            context.log.info(
                f"{export} or the question set changed since the last predictions: starting over"
            )
            shutil.rmtree(preds)
        preds.mkdir(parents=True, exist_ok=True)
        atomic_write_text(preds / "FINGERPRINT", stamp)
        max_new = config.max_new_tokens or (DEMO_MAX_NEW_TOKENS if storage.demo_raw else 256)
        args = ["--model", str(export), "--questions", str(qdir), "--output", str(preds),
                "--max-new-tokens", str(max_new), "--model-name", model]  # fmt: skip
        if config.batch_size:
            args += ["--batch-size", str(config.batch_size)]
        if config.limit:
            args += ["--limit", str(config.limit)]
        if training._profile().trust_remote_code:  # the profile's training.yaml, as the stages read it
            args.append("--trust-remote-code")
        if gpu_cluster.gpus_per_node == 0:
            args += ["--device", "cpu"]
        args += config.extra_args
        launched = gpu_cluster.run_stage(context, args, out, module="training_jobs.evaluate")
        scores, summary = score_stage(qdir, preds, vlmevalkit_dir(storage), model, subset=bool(config.limit))
        png = chart_png(summary)
        atomic_write_bytes(out / "scores.png", png)
        bench = summary.benchmarks
        metadata: dict[str, dg.RawMetadataValue] = {
            **(launched.metadata or {}),
            "model": model,
            "questions": int(sum(s.questions for s in scores)),
            "scored_questions": int(sum(s.scored for s in scores)),
            "scores": _table(bench),
            "scores_chart": _png_md(png, f"{model} scores"),
            "judge": "none: VLMEvalKit exact matching (can_infer); unparseable answers count wrong",
            "results": dg.MetadataValue.path(str(vlmevalkit_dir(storage) / model)),
        }
        for key, title in (("table4", "Table 4 (medical VQA)"), ("table5", "Table 5 (OmniMedVQA by question type)"),
                           ("table6", "Table 6 (GMAI-MMBench by clinical task)"),
                           ("table8", "Table 8 (MMMU Health & Medicine)")):  # fmt: skip
            if key in summary.tables:
                metadata[key] = dg.MetadataValue.md(
                    f"**{title}**, ours vs {paper.CITATION}\n\n" + markdown(summary.tables[key])
                )
        for rec in bench.to_dict(orient="records"):  # numeric entries: the UI plots them across runs
            if isinstance(rec.get("score"), float) and not math.isnan(rec["score"]):
                metadata[f"score/{rec['dataset']}"] = float(rec["score"])
        metadata["table7_row"] = dg.MetadataValue.json({row: summary.table7_row})
        return dg.MaterializeResult(metadata=metadata)

    return _asset


@dg.asset(
    key=ABLATION,
    group_name=ABLATION_GROUP,
    deps=[dg.AssetKey(e[0]) for e in EVALUATED],
    kinds={"csv", "png"},
    description="The paper's Table 7 (training strategy) for our models: stage1, stage1+2, stage1+3 and "
    f"stage1+2+3 from one base, beside the published figures ({paper.CITATION}).",
)
def stage_ablation(context: dg.AssetExecutionContext, storage: PipelineStorage) -> dg.MaterializeResult:
    rows, missing = {}, []
    for _, trained, _, model, row in EVALUATED:
        path = vlmevalkit_dir(storage) / model / SUMMARY_FILE
        if not path.is_file():
            missing.append(f"{row}: {path} (materialize {trained} and its evaluation)")
            continue
        rows[row] = read_table7_row(path)
    if missing:
        raise dg.Failure("Table 7 needs all four evaluated models; missing:\n" + "\n".join(missing))
    table = ablation_table(rows)
    folder = evaluation_dir(storage) / "ablation"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "table7.csv", table.to_csv(index=False))
    atomic_write_text(folder / "table7.md", markdown(table) + f"\n\nPaper: {paper.CITATION}, Table 7.\n")
    png = ablation_chart(table)
    atomic_write_bytes(folder / "table7.png", png)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "table7": dg.MetadataValue.md(markdown(table)),
            "table7_table": _table(table),
            "chart": _png_md(png, "Table 7"),
            "rows": ", ".join(ABLATION_ROWS),
            "paper": paper.CITATION,
            "path": dg.MetadataValue.path(str(folder / "table7.csv")),
        }
    )


def build_defs(sources) -> dg.Definitions:
    cluster = training.gpu_cluster_from_profile()
    stage1_3 = training.stage_asset(
        3, cluster.retries, init_stage=1, name="gmai_vl_stage1_3", group=ABLATION_GROUP
    )
    evals = [_eval_asset(*e) for e in EVALUATED]
    return dg.Definitions(assets=[benchmark_questions, stage1_3, *evals, stage_ablation])


def gpu_selection() -> dg.AssetSelection:
    """Training and everything that needs a trained model (evaluation, the ablation): left to a person."""
    return dg.AssetSelection.groups(training.GROUP, ABLATION_GROUP).downstream()


evaluate_job = dg.define_asset_job(
    "evaluate_job",
    selection=dg.AssetSelection.groups(GROUP),
    description="The benchmark question sets and each trained stage evaluated on them (VLMEvalKit's "
    "prompts and exact-matching scores), on the GPU cluster resource.",
)
ablation_job = dg.define_asset_job(
    "ablation_job",
    selection=dg.AssetSelection.groups(training.GROUP, GROUP, ABLATION_GROUP),
    description="The paper's Table 7: stage 1, 1+2, 1+3 and 1+2+3 trained from one base, each evaluated, "
    "and the comparison with the published figures.",
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(build_defs(catalog()), dg.Definitions(jobs=[evaluate_job, ablation_job]))
