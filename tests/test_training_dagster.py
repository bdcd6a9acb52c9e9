"""The Dagster layer: a tiny stage through the GPU-cluster resource (local subprocess, real Slurm) and Pipes;
the plain-Python cluster helpers (command lines, sbatch script, sacct/scontrol parsing)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
from slurm_cluster import SlurmCluster, missing_binaries
from training_fixtures import write_mixture

from gmai_pipeline import training_cluster as tc
from gmai_pipeline.defs import training as training_defs
from gmai_pipeline.defs.training import LocalGpuCluster, SlurmGpuCluster, build_defs, gpu_cluster_from_profile
from gmai_pipeline.storage import OutputLayout
from training_jobs.data import iter_texts
from training_jobs.tiny import build_tiny

FAST = {"max_length": 512, "micro_batch": 1, "grad_accum": 2, "max_samples": 6}


def _run_config(stage: int = 1, **config) -> dict:
    return {"ops": {f"gmai_vl_stage{stage}": {"config": {**FAST, **config}}}}


@pytest.fixture
def stage1_inputs(output_root: Path) -> Path:
    """The release helper's contract: mixtures/stage1.jsonl + .provenance.json; plus a 112 px tiny model folder."""
    mix = write_mixture(OutputLayout(output_root).mixtures, stage=1, n=8, text_only=1)
    return build_tiny(output_root / "tiny_model", iter_texts(mix), image_size=112)


def _stage_assets() -> dict[str, dg.AssetsDefinition]:
    return {a.key.to_user_string(): a for a in build_defs([]).assets}


def _materialization_metadata(result: dg.ExecuteInProcessResult) -> dict:
    events = result.get_asset_materialization_events()
    assert len(events) == 1
    return events[0].materialization.metadata


def _check_metrics(meta: dict, output_root: Path) -> None:
    for key in (
        "final_loss",
        "first_loss",
        "final_lr",
        "tokens_per_s_per_gpu",
        "mfu",
        "pack_fill_plan",
        "steps",
    ):
        assert key in meta, f"missing {key}: {sorted(meta)}"
    assert meta["mfu"].value > 0 and meta["tokens_per_s_per_gpu"].value > 0
    assert 0 < meta["pack_fill_plan"].value <= 1
    export = Path(meta["export"].value)
    assert export == OutputLayout(output_root).training / "stage1" / "export" and (export / "llm").is_dir()
    assert Path(meta["checkpoint"].value).is_dir()


def test_local_backend_runs_stage1_through_pipes(output_root, storage, stage1_inputs):
    cluster = LocalGpuCluster()
    result = dg.materialize(
        [_stage_assets()["gmai_vl_stage1"]],
        resources={"gpu_cluster": cluster, "storage": storage},
        run_config=_run_config(base_model=str(stage1_inputs)),
    )
    assert result.success
    meta = _materialization_metadata(result)
    _check_metrics(meta, output_root)
    assert meta["backend"].value == "local" and meta["mixture_samples"].value == 8
    # The effective batch a person checks against the paper: rows per optimizer step, and samples in them.
    assert meta["effective_batch"].value == "1 GPUs x 1 rows x 2 accumulation = 2 rows"
    assert meta["global_batch_rows"].value == 2 and meta["micro_batch"].value == 1
    per_row = meta["samples_per_row"].value
    assert 1 < per_row <= 6 and meta["global_batch_samples"].value == pytest.approx(2 * per_row, abs=0.1)


def test_stage_assets_shape_and_profiles():
    assets = _stage_assets()
    assert sorted(assets) == ["gmai_vl_stage1", "gmai_vl_stage2", "gmai_vl_stage3", "stage3_scores"]
    s2 = assets["gmai_vl_stage2"]
    deps = {k.to_user_string() for k in s2.asset_deps[s2.key]}
    assert deps == {"stage2_mix", "gmai_vl_stage1"}
    scores = assets["stage3_scores"]
    assert {k.to_user_string() for k in scores.asset_deps[scores.key]} == {
        "gmai_vl_stage2",
        "release_records",
    }
    assert s2.op.pool == "gpu" and s2.op.retry_policy is None and s2.group_names_by_key[s2.key] == "training"
    assert gpu_cluster_from_profile("demo").backend == "local"
    slurm = gpu_cluster_from_profile("slurm")
    assert slurm.backend == "slurm" and slurm.retries > 0 and isinstance(slurm.nodes, int)


def test_command_lines_and_sbatch_rendering(tmp_path):
    args = tc.train_args(
        2,
        Path("/d/m.jsonl"),
        Path("/img"),
        Path("/o"),
        Path("/o1/export"),
        "tiny",
        {"max_length": 4096, "trust_remote_code": True, "grad_checkpointing": False},
        resume=True,
    )
    assert args[-4:] == ["--max-length", "4096", "--trust-remote-code", "--resume"]
    assert "--grad-checkpointing" not in args
    assert tc.launch_command(["--x"], python="py", module="training_jobs.score") == [
        "py",
        "-m",
        "training_jobs.score",
        "--x",
    ]
    cmd = tc.launch_command(args, "torchrun", nproc=8, python="py")
    assert cmd[:6] == [
        "py",
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=8",
        "--standalone",
    ]
    job = tc.SlurmJob(
        "gmai-s2",
        4,
        8,
        64,
        "48:00:00",
        "gpu",
        tmp_path / "job.log",
        Path("/repo"),
        "module load cuda",
        "apptainer exec --nv img.sif",
        "/venv/bin/python",
        {"DAGSTER_PIPES_CONTEXT": "abc'd"},
        args,
    )
    script = tc.render_sbatch(job)
    assert "#SBATCH --nodes=4" in script and "#SBATCH --gpus-per-node=8" in script
    assert "#SBATCH --partition=gpu" in script and "{{" not in script
    assert "export DAGSTER_PIPES_CONTEXT='abc'\"'\"'d'" in script
    assert (
        "srun --kill-on-bad-exit=1 apptainer exec --nv img.sif /venv/bin/python -m torch.distributed.run"
        in script
    )
    assert '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"' in script and "--nproc-per-node=8" in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid bash
    with pytest.raises(KeyError):
        tc.render("{{ nope }}", {})


def test_slurm_state_parsing():
    sacct = "41|COMPLETED|0:0\n41.batch|COMPLETED|0:0\n42|CANCELLED by 0|0:15\n"
    assert tc.parse_sacct(sacct, "41") == "COMPLETED" and tc.parse_sacct(sacct, "42") == "CANCELLED"
    assert tc.parse_sacct("", "41") is None
    assert tc.parse_scontrol("JobId=7 JobName=x\n   JobState=RUNNING Reason=None") == "RUNNING"


@pytest.fixture
def slurm(tmp_path_factory, monkeypatch):
    missing = missing_binaries()
    if missing and not os.environ.get("CI"):
        pytest.skip(f"Slurm not installed ({', '.join(missing)}): apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("the single-node Slurm fixture starts munged/slurmctld/slurmd as root")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    yield cluster
    cluster.stop()


@pytest.mark.services
@pytest.mark.slow
def test_slurm_backend_round_trip(output_root, storage, stage1_inputs, slurm):
    cluster = SlurmGpuCluster(cpus_per_task=1, time_limit="00:10:00", poll_seconds=1.0)
    result = dg.materialize(
        [_stage_assets()["gmai_vl_stage1"]],
        resources={"gpu_cluster": cluster, "storage": storage},
        run_config=_run_config(base_model=str(stage1_inputs)),
    )
    assert result.success
    meta = _materialization_metadata(result)
    _check_metrics(meta, output_root)
    job_id = meta["slurm_job_id"].value
    assert tc.job_state(job_id) == "COMPLETED"
    assert "step 1/" in Path(meta["slurm_log"].value).read_text()


def test_slurm_wait_cancels_the_job_when_the_run_is_terminated(monkeypatch, tmp_path):
    cancelled = []
    monkeypatch.setattr(tc, "job_state", lambda job_id: "RUNNING")
    monkeypatch.setattr(tc, "scancel", cancelled.append)

    def interrupted(_seconds):
        raise dg.DagsterExecutionInterruptedError("terminated")

    monkeypatch.setattr(training_defs, "time", SimpleNamespace(sleep=interrupted))
    context = dg.build_asset_context()
    with pytest.raises(dg.DagsterExecutionInterruptedError):
        SlurmGpuCluster()._wait(context, "77", tmp_path / "job.log")
    assert cancelled == ["77"]


def _refusal(result: dg.ExecuteInProcessResult, node: str) -> str:
    assert not result.success
    return result.failure_data_for_node(node).error.message


def test_real_profile_without_model_folder_fails_before_submitting(
    output_root, storage, monkeypatch, tmp_path
):
    """GMAI_PROFILE=slurm with GMAI_MODEL_DIR unset (or pointing at nothing) must not train the tiny model."""
    submitted = []
    monkeypatch.setattr(tc, "sbatch", lambda *a, **k: submitted.append(a) or "1")
    monkeypatch.setenv("GMAI_PROFILE", "slurm")
    monkeypatch.delenv("GMAI_MODEL_DIR", raising=False)
    asset = _stage_assets()["gmai_vl_stage1"]
    cluster = SlurmGpuCluster()

    def run(**config):
        return dg.materialize(
            [asset],
            resources={"gpu_cluster": cluster, "storage": storage},
            run_config={"ops": {"gmai_vl_stage1": {"config": config}}},
            raise_on_error=False,
        )

    message = _refusal(run(), "gmai_vl_stage1")
    assert "GMAI_MODEL_DIR is not set" in message and "Nothing was submitted" in message
    assert "resources/slurm/training.yaml" in message
    monkeypatch.setenv("GMAI_MODEL_DIR", str(tmp_path / "no-such-model"))
    assert "no-such-model (GMAI_MODEL_DIR) does not exist" in _refusal(run(), "gmai_vl_stage1")
    monkeypatch.setenv("GMAI_MODEL_DIR", "tiny")
    assert "the tiny random model is for the demo" in _refusal(run(), "gmai_vl_stage1")
    half = tmp_path / "half"
    (half / "llm").mkdir(parents=True)
    assert "lacks vision/, tokenizer/" in _refusal(run(base_model=str(half)), "gmai_vl_stage1")
    assert submitted == []


def test_packing_with_a_non_isolating_model_is_refused_before_launch(
    output_root, storage, stage1_inputs, monkeypatch
):
    """A model folder whose LLM is remote code (InternLM2 unconverted) with packing on: refused, nothing run."""
    from training_fixtures import write_leaky_model

    from gmai_pipeline import training_plan as plan

    leaky = write_leaky_model(stage1_inputs, output_root / "leaky_model")
    launched = []
    monkeypatch.setattr(LocalGpuCluster, "run_stage", lambda self, *a, **k: launched.append(a))
    profile = plan.TrainingProfile(base_model=str(leaky), trust_remote_code=True, defaults=FAST)
    monkeypatch.setattr(training_defs.plan, "load_training_profile", lambda: profile)
    asset = _stage_assets()["gmai_vl_stage1"]
    result = dg.materialize(
        [asset], resources={"gpu_cluster": LocalGpuCluster(), "storage": storage}, raise_on_error=False
    )
    message = _refusal(result, "gmai_vl_stage1")
    assert "packing is on but" in message and "runs its own modelling code" in message
    assert "packing: false" in message and launched == []
    # Packing off: the same model is accepted and launched.
    result = dg.materialize(
        [asset],
        resources={"gpu_cluster": LocalGpuCluster(), "storage": storage},
        run_config=_run_config(packing=False),
        raise_on_error=False,
    )
    assert len(launched) == 1 and "--no-packing" in launched[0][1] and "--trust-remote-code" in launched[0][1]
