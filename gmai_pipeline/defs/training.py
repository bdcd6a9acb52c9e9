"""The three GMAI-VL training stages as assets, launched on a GPU cluster resource through Dagster Pipes.

gmai_vl_stage1 -> gmai_vl_stage2 -> stage3_scores -> (stage3_mix) -> gmai_vl_stage3, each stage after its
mixture (stage{N}_mix). stage3_scores is the paper's stage III filter input: the stage II model's confidence
on each stage III candidate (training_jobs.score), which stage3_mix (defs/release.py) filters by. The
training code (training_jobs/) runs outside this process and reports loss, lr, tokens/s, MFU, pack fill,
the effective batch and checkpoint paths back as the materialization's metadata. Backends: `local` (a
subprocess: python or torchrun; tests and the demo) and `slurm` (sbatch from
training_jobs/launch/sbatch.template, polled, log streamed, scancel'd when the run is terminated; Pipes
files on a shared filesystem). Why not dagster-slurm, and why no Kubernetes backend: README, "Where steps
run".

Where a stage runs is the `gpu_cluster` resource (resources/<GMAI_PROFILE>/gpu_cluster.yaml); what it trains
with is the profile's training.yaml per stage (gmai_pipeline/training_plan.py), overridable in the stage's
run config. Before anything is submitted a stage refuses: a profile with no model folder (naming
GMAI_MODEL_DIR), and packing with an LLM whose attention does not keep packed samples apart.
"""

import hashlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from abc import abstractmethod
from pathlib import Path

import dagster as dg
from pydantic import Field

from gmai_pipeline import training_cluster as tc
from gmai_pipeline import training_plan as plan
from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.defs.common import catalog
from gmai_pipeline.defs.resources import PipelineStorage
from gmai_pipeline.profiles import MissingVariableError, load_resource_config, profile_name
from gmai_pipeline.release.mixtures import iter_score_candidates, load_mixtures, model_judged, provenance_path
from gmai_pipeline.release.records import ReleaseError, ReleaseRecords
from gmai_pipeline.settings import PROJECT_ROOT
from gmai_pipeline.storage import OutputLayout, atomic_path, atomic_write_text

GROUP = "training"
STAGES = (1, 2, 3)
# The training group: the stages, stage III's scoring pass and stage3_mix (defs/release.py), which the stage II
# model's scores filter, so it can only be made inside training.
TRAINING_KEYS = ("gmai_vl_stage1", "gmai_vl_stage2", "stage3_scores", "stage3_mix", "gmai_vl_stage3")


class GpuCluster(dg.ConfigurableResource):
    """Where a training job runs; one subclass per backend, chosen by the profile's gpu_cluster.yaml
    (`backend: local | slurm`). What it trains with is not here: the profile's training.yaml per stage, and
    the stage asset's config."""

    gpus_per_node: int = Field(default=0, description="0: CPU (gloo); torchrun starts max(1, this) processes")
    python: str = Field(default="", description="interpreter on the nodes (default: this one)")
    workdir: str = Field(default="", description="repository root on the nodes (default: this checkout)")
    retries: int = Field(
        default=0, description=">0: retry a failed stage, always resuming from its last checkpoint"
    )

    @property
    @abstractmethod
    def backend(self) -> str:
        """The profile's name for this backend, reported in each stage's metadata."""

    @abstractmethod
    def world_size(self) -> int:
        """Processes a launch starts: the effective batch is computed from it before submitting."""

    @abstractmethod
    def run_stage(
        self,
        context: dg.AssetExecutionContext,
        args: list[str],
        out_dir: Path,
        module: str = "training_jobs.train",
    ) -> dg.MaterializeResult:
        """Run `python -m <module> <args>` where this resource says, reporting through Pipes."""

    def _python(self) -> str:
        return self.python or sys.executable

    def _env(self) -> dict[str, str]:
        # Not configuration read by an asset: the few variables the launched training process inherits
        # (GMAI_PEAK_FLOPS for its MFU figure, HF_HOME, the GPUs it may use); every path is an argument.
        keep = ("GMAI_PEAK_FLOPS", "HF_HOME", "CUDA_VISIBLE_DEVICES")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [self.workdir or str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])
        )
        env["HF_HUB_OFFLINE"] = "1"  # nothing is downloaded at run time
        return env


class LocalGpuCluster(GpuCluster):
    """This machine: a subprocess (tests, the demo, one GPU box), through Dagster Pipes."""

    launcher: str = Field(default="python", description="python (one process) or torchrun")

    @property
    def backend(self) -> str:
        return "local"

    def world_size(self) -> int:
        return 1 if self.launcher == "python" else max(self.gpus_per_node, 1)

    def run_stage(
        self,
        context: dg.AssetExecutionContext,
        args: list[str],
        out_dir: Path,
        module: str = "training_jobs.train",
    ) -> dg.MaterializeResult:
        return self._run_local(context, args, module)

    def _run_local(
        self, context: dg.AssetExecutionContext, args: list[str], module: str
    ) -> dg.MaterializeResult:
        cmd = tc.launch_command(
            args, self.launcher, max(self.gpus_per_node, 1), self._python(), module=module
        )
        context.log.info("launching: " + " ".join(cmd))
        client = dg.PipesSubprocessClient(cwd=self.workdir or str(PROJECT_ROOT))
        # The client passes this process's environment on; a bare python launch is a world of one on a fresh
        # port whatever torch.distributed variables are set here (torchrun sets its own for its workers).
        single = (
            {
                "RANK": "0",
                "LOCAL_RANK": "0",
                "WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(_free_port()),
            }
            if self.launcher == "python"
            else {}
        )
        return client.run(
            context=context, command=cmd, env={**self._env(), **single}
        ).get_materialize_result()


class SlurmGpuCluster(GpuCluster):
    """A Slurm cluster whose login node runs Dagster: sbatch, polled, log streamed, scancel'd on termination;
    Pipes files on a shared filesystem."""

    nodes: int = 1
    cpus_per_task: int = 2
    partition: str = ""
    time_limit: str = "24:00:00"
    setup: str = Field(default="", description="shell lines before launch on the node (module load, venv)")
    container: str = Field(default="", description="launch prefix, e.g. 'apptainer exec --nv gmai.sif'")
    shared_dir: str = Field(
        default="", description="shared filesystem for Pipes files and logs (default: output)"
    )
    poll_seconds: float = 2.0

    @property
    def backend(self) -> str:
        return "slurm"

    def world_size(self) -> int:
        return self.nodes * max(self.gpus_per_node, 1)

    def run_stage(
        self,
        context: dg.AssetExecutionContext,
        args: list[str],
        out_dir: Path,
        module: str = "training_jobs.train",
    ) -> dg.MaterializeResult:
        return self._run_slurm(context, args, out_dir, module)

    def _run_slurm(
        self, context: dg.AssetExecutionContext, args: list[str], out_dir: Path, module: str
    ) -> dg.MaterializeResult:
        tag = uuid.uuid4().hex[:6]
        shared = Path(self.shared_dir or out_dir) / "slurm" / f"{context.run.run_id[:8]}-{tag}"
        shared.mkdir(parents=True, exist_ok=True)
        log_path = shared / "job.log"
        with dg.open_pipes_session(
            context=context,
            context_injector=dg.PipesFileContextInjector(str(shared / "context.json")),
            message_reader=dg.PipesFileMessageReader(str(shared / "messages.jsonl")),
        ) as session:
            job = tc.SlurmJob(
                job_name=f"gmai-{context.asset_key.to_user_string()}",
                nodes=self.nodes,
                gpus_per_node=self.gpus_per_node,
                cpus_per_task=self.cpus_per_task,
                time_limit=self.time_limit,
                partition=self.partition,
                log_path=log_path,
                workdir=Path(self.workdir or PROJECT_ROOT),
                setup=self.setup,
                container=self.container,
                python=self._python(),
                env={**self._env(), **session.get_bootstrap_env_vars()},
                train_args=args,
                master_port=20000 + int(tag, 16) % 10000,  # concurrent jobs on one node must not collide
                module=module,
            )
            script = shared / "job.sbatch"
            script.write_text(tc.render_sbatch(job))
            job_id = tc.sbatch(script, env=_launch_environ())
            context.log.info(f"submitted Slurm job {job_id}: {script}")
            state = self._wait(context, job_id, log_path)
        if state != "COMPLETED":
            raise dg.Failure(
                f"Slurm job {job_id} ended {state}; log {log_path}",
                metadata={"log": dg.MetadataValue.path(str(log_path))},
            )
        results = session.get_results()
        mat = next((r for r in results if isinstance(r, dg.MaterializeResult)), None)
        if mat is None:
            raise dg.Failure(f"Slurm job {job_id} completed but reported no metrics; log {log_path}")
        return dg.MaterializeResult(
            metadata={
                **(mat.metadata or {}),
                "slurm_job_id": job_id,
                "slurm_log": dg.MetadataValue.path(str(log_path)),
            }
        )

    def _wait(self, context: dg.AssetExecutionContext, job_id: str, log_path: Path) -> str:
        """Poll until a terminal state, forwarding new log lines; scancel if the Dagster run is terminated."""
        pos, state, unknown = 0, None, 0
        try:
            with dg.raise_execution_interrupts():
                while True:
                    pos = _forward_log(context, log_path, pos)
                    state = tc.job_state(job_id)
                    if state in tc.TERMINAL:
                        break
                    unknown = unknown + 1 if state is None else 0
                    if unknown >= 5:  # no accounting and the controller forgot it: it ended
                        state = "COMPLETED" if _pipes_closed(log_path.parent) else "UNKNOWN"
                        break
                    time.sleep(self.poll_seconds)
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
            context.log.warning(f"run terminated: cancelling Slurm job {job_id}")
            tc.scancel(job_id)
            raise
        _forward_log(context, log_path, pos)
        context.log.info(f"Slurm job {job_id}: {state}")
        return state


DIST_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_environ() -> dict[str, str]:
    """This process's environment minus torch.distributed variables a previous in-process run may have left:
    what a local launch hands its subprocess (not configuration read by the asset)."""
    return {k: v for k, v in os.environ.items() if k not in DIST_VARS}  # handed to the process, not read


def _forward_log(context: dg.AssetExecutionContext, path: Path, pos: int) -> int:
    if not path.exists():
        return pos
    with open(path, encoding="utf-8", errors="replace") as f:
        f.seek(pos)
        for line in f.read().splitlines():
            if line.strip() and "Writing model shards" not in line:
                context.log.debug(line[:2000])
        return f.tell()


def _pipes_closed(folder: Path) -> bool:
    path = folder / "messages.jsonl"
    return path.exists() and any(
        json.loads(line).get("method") == "closed" for line in path.read_text().splitlines() if line.strip()
    )


class StageConfig(dg.Config):
    """Per-run overrides of the profile's training.yaml for this stage (unset: the profile's value)."""

    resume: bool = Field(default=False, description="continue from this stage's last checkpoint")
    base_model: str | None = Field(
        default=None, description="stage I: a model folder (or 'tiny' in the demo)"
    )
    max_length: int | None = Field(default=None, description="packed row length in tokens")
    micro_batch: int | None = Field(default=None, description="rows per GPU per micro-step")
    grad_accum: int | None = Field(default=None, description="micro-steps per optimizer step")
    global_batch_rows: int | None = Field(default=None, description="rows per optimizer step")
    packing: bool | None = None
    max_samples: int | None = None
    save_steps: int | None = None
    grad_checkpointing: bool | None = None
    liger: bool | None = None
    compile: bool | None = None
    extra_args: list[str] = Field(
        default_factory=list, description="training_jobs.train flags; later flags win"
    )

    def overrides(self) -> dict:
        keys = set(plan.StageKnobs.model_fields) - {"extra_args"}
        return {k: getattr(self, k) for k in keys if getattr(self, k, None) is not None}


class ScoreConfig(dg.Config):
    """Overrides for the stage III scoring pass (unset: stage III's row length and micro-batch, packing)."""

    max_length: int | None = None
    micro_batch: int | None = None
    packing: bool | None = None


def _mixture(stage: int, out: OutputLayout) -> tuple[Path, dict]:
    folder = out.mixtures
    data, meta_path = folder / f"stage{stage}.jsonl", provenance_path(folder, f"stage{stage}")
    if not data.exists() or not meta_path.exists():
        raise dg.Failure(f"stage{stage}_mix not materialized: expected {data} and {meta_path}")
    return data, json.loads(meta_path.read_text())


def _refuse(message: str) -> dg.Failure:
    """A configuration error: retrying cannot help, so the retry policy must not resubmit it."""
    return dg.Failure(message, allow_retries=False)


def _profile() -> plan.TrainingProfile:
    """The profile's training.yaml, or a failure that names what to set, before anything is launched."""
    try:
        return plan.load_training_profile()
    except MissingVariableError as exc:
        raise _refuse(
            f"{exc.variable} is not set: the {profile_name()!r} profile trains for "
            f"real and needs a model folder ({exc.hint}; {exc.path}). Nothing was submitted."
        ) from None
    except plan.TrainingPlanError as exc:
        raise _refuse(str(exc)) from None


def _export(stage: int, out: OutputLayout) -> Path:
    folder = out.training / f"stage{stage}" / "export"
    if not (folder / "llm").exists():
        raise _refuse(f"stage {stage} has no export at {folder}: materialize gmai_vl_stage{stage} first")
    return folder


def _check(what) -> object:
    try:
        return what()
    except plan.TrainingPlanError as exc:
        raise _refuse(f"{exc} Nothing was submitted.") from None


def _stage_asset(
    stage: int, retries: int, init_stage: int | None = None, name: str | None = None, group: str = GROUP
) -> dg.AssetsDefinition:
    """Stage `stage` trained from stage `init_stage`'s export (default: the stage before it).

    `init_stage` other than stage - 1 is the paper's Table 7 ablation (stage III straight after stage I);
    such an asset writes to training/<name>/ so the main chain's exports stay as they are.
    """
    init_stage = stage - 1 if init_stage is None else init_stage
    name = name or f"gmai_vl_stage{stage}"
    folder = f"stage{stage}" if name == f"gmai_vl_stage{stage}" else name.removeprefix("gmai_vl_")
    deps: list = [dg.AssetKey(f"stage{stage}_mix")]
    if init_stage > 0:
        deps.append(dg.AssetKey(f"gmai_vl_stage{init_stage}"))
    what = {
        1: "projector only, lr 1e-3, 1 epoch",
        2: "projector + vision encoder, lr 1e-4, 1 epoch",
        3: "everything, lr 1e-5, 2 epochs",
    }[stage]

    after = "" if init_stage == stage - 1 else f", started from stage {init_stage}'s export (ablation)"

    @dg.asset(
        name=name,
        deps=deps,
        pool="gpu",
        group_name=group,
        kinds={"pytorch", "deepspeed"},
        retry_policy=dg.RetryPolicy(max_retries=retries) if retries else None,
        description=f"GMAI-VL stage {'I' * stage if stage < 3 else 'III'}: {what}{after}. Outputs "
        f"training/{folder}/export (hand-off) and checkpoints/ (resume). Knobs: the profile's "
        "training.yaml, overridable here.",
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: StageConfig,
        gpu_cluster: GpuCluster,
        storage: PipelineStorage,
    ):
        profile = _profile()
        if config.base_model is not None:
            profile = profile.model_copy(update={"base_model": config.base_model})
        knobs = _check(lambda: profile.knobs(stage, config.overrides()))
        if init_stage == 0:
            model_dir = _check(lambda: plan.check_base_model(profile))
            init_from = None
        else:
            model_dir = init_from = _export(init_stage, storage.layout())
        _check(lambda: plan.check_packing(model_dir, profile.trust_remote_code, knobs.packing))
        world = gpu_cluster.world_size()
        batch = _check(lambda: plan.effective_batch(knobs, world))
        context.log.info(
            f"stage {stage} effective batch: {batch['formula']} of {knobs.max_length} tokens "
            f"(packing {'on' if knobs.packing else 'off'}; samples per row are counted once the rows are planned)"
        )
        data, meta = _mixture(stage, storage.layout())
        out = storage.layout().training / folder
        # Resume only together with retries (a retry resumes) or when asked; a fresh run starts clean.
        resume = config.resume or gpu_cluster.retries > 0
        if not resume:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        options = {**knobs.train_options(world), "trust_remote_code": profile.trust_remote_code}
        args = tc.train_args(
            stage,
            data,
            Path(meta["image_root"]),
            out,
            init_from,
            str(model_dir) if init_from is None and model_dir else "tiny",
            options,
            resume,
        )
        args += [*knobs.extra_args, *config.extra_args]
        result = gpu_cluster.run_stage(context, args, out)
        extra = {
            "mixture_samples": meta.get("samples"),
            "mixture_ids_sha256": meta.get("ids_sha256"),
            "backend": gpu_cluster.backend,
            "effective_batch": batch["formula"],
        }
        return dg.MaterializeResult(
            metadata={**(result.metadata or {}), **{k: v for k, v in extra.items() if v is not None}}
        )

    return _asset


SCORES_DIR = "stage3_scores"


@dg.asset(
    name="stage3_scores",
    deps=[dg.AssetKey("gmai_vl_stage2"), dg.AssetKey("release_records")],
    pool="gpu",
    group_name=GROUP,
    kinds={"pytorch"},
    description="Stage III's filter input, as the paper: the stage II model's confidence (exp(-mean answer-token "
    "loss), same chat template and packing as training) on every stage III candidate of a component with a "
    "`model_confidence` rule in the mixtures YAML. training/stage3_scores/scores.jsonl; stage3_mix applies "
    "the rule and keeps the table beside the mix.",
)
def stage3_scores(
    context: dg.AssetExecutionContext, config: ScoreConfig, gpu_cluster: GpuCluster, storage: PipelineStorage
) -> dg.MaterializeResult:
    out = storage.layout()
    folder = out.training / SCORES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    mixtures, mixtures_path = load_mixtures()
    judged = model_judged(mixtures, "stage3")
    try:
        records = ReleaseRecords(out)
    except ReleaseError as exc:
        raise dg.Failure(str(exc)) from None
    data = folder / "candidates.jsonl"
    ids = hashlib.sha256()
    n = 0
    with atomic_path(data) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in iter_score_candidates("stage3", records, mixtures):  # id order: the table's
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            ids.update((("\n" if n else "") + record["id"]).encode("utf-8"))
            n += 1
    meta = {
        "candidates": n,
        "ids_sha256": ids.hexdigest(),  # = mixtures.ids_sha256 of the ids (they come sorted)
        "components": judged,
        "mixtures": str(mixtures_path),
    }
    if not judged:
        atomic_write_text(folder / "scores.jsonl", "")
        atomic_write_text(folder / "candidates.meta.json", json.dumps(meta, indent=2) + "\n")
        context.log.info(
            f"no stage3 component of {mixtures_path} has a model_confidence rule: nothing to score"
        )
        return dg.MaterializeResult(metadata={"candidates": 0, "components": "none"})
    if not n:
        raise dg.Failure(
            f"stage3 components {judged} of {mixtures_path} have no candidates among {len(records)} released "
            "records: materialize release_records, or check the components' kinds and languages"
        )
    profile = _profile()
    knobs = _check(lambda: profile.knobs(3, config.model_dump(exclude_none=True)))
    model = _export(2, out)
    _check(lambda: plan.check_packing(model, profile.trust_remote_code, knobs.packing))
    args = [
        "--model",
        str(model),
        "--data",
        str(data),
        "--image-root",
        str(out.images),
        "--output",
        str(folder),
    ]
    args += ["--max-length", str(knobs.max_length), "--micro-batch", str(knobs.micro_batch)]
    args += [] if knobs.packing else ["--no-packing"]
    args += ["--trust-remote-code"] if profile.trust_remote_code else []
    args += ["--max-samples", str(knobs.max_samples)] if knobs.max_samples else []  # the demo's few samples
    (folder / "scores.jsonl").unlink(missing_ok=True)  # never read scores of an earlier model
    result = gpu_cluster.run_stage(context, args, folder, module="training_jobs.score")
    lines = (
        (folder / "scores.jsonl").read_text(encoding="utf-8").splitlines()
        if (folder / "scores.jsonl").exists()
        else []
    )
    if len(lines) != n:
        raise dg.Failure(f"{folder / 'scores.jsonl'} has {len(lines)} lines for {n} candidates")
    atomic_write_text(folder / "candidates.meta.json", json.dumps(meta, indent=2) + "\n")
    return dg.MaterializeResult(
        metadata={
            **(result.metadata or {}),
            "candidates_ids_sha256": meta["ids_sha256"],
            "components": ", ".join(judged),
            "model": dg.MetadataValue.path(str(model)),
            "backend": gpu_cluster.backend,
        }
    )


stage_asset = _stage_asset  # defs/evaluation.py builds the Table 7 ablation's stage 1+3 with it


GPU_CLUSTERS: dict[str, type[GpuCluster]] = {"local": LocalGpuCluster, "slurm": SlurmGpuCluster}


def gpu_cluster_from_profile(profile: str | None = None) -> GpuCluster:
    """The profile's gpu_cluster.yaml as the class of its `backend`; numbers that came through
    ${VAR:-default} strings become numbers. A key the backend does not have is refused, not ignored."""
    cfg = load_resource_config("gpu_cluster", profile)
    where = f"gpu_cluster.yaml of profile {profile or profile_name()!r}"
    moved = sorted(set(cfg) & {*plan.StageKnobs.model_fields, "base_model", "trust_remote_code"})
    if moved:
        raise ValueError(
            f"{where} sets {moved}: what a stage trains with moved to training.yaml beside it (per stage; see "
            "resources/slurm/training.yaml)"
        )
    backend = cfg.pop("backend", "local")
    if backend not in GPU_CLUSTERS:
        raise ValueError(f"{where}: backend {backend!r} is not one of {', '.join(GPU_CLUSTERS)}")
    cls = GPU_CLUSTERS[backend]
    unknown = sorted(set(cfg) - set(cls.model_fields))
    if unknown:
        raise ValueError(f"{where}: the {backend} backend has no setting {unknown}")
    for key, field in cls.model_fields.items():
        if key in cfg and field.annotation in (int, float) and isinstance(cfg[key], str):
            cfg[key] = field.annotation(cfg[key])
    return cls(**cfg)


def build_defs(sources: list[SourceDataset]) -> dg.Definitions:
    cluster = gpu_cluster_from_profile()
    assets = [_stage_asset(n, cluster.retries) for n in STAGES]
    return dg.Definitions(assets=[*assets, stage3_scores], resources={"gpu_cluster": cluster})


train_job = dg.define_asset_job(
    "train_job",
    selection=dg.AssetSelection.groups(GROUP),
    description="The three GMAI-VL training stages on the GPU cluster resource, with stage III's "
    "scoring pass (the stage II model's confidence) and mixture between stages II and III.",
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(build_defs(catalog()), dg.Definitions(jobs=[train_job]))
