"""The profiles' per-stage training knobs and the checks that refuse unsafe runs (plain Python, no torch run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gmai_pipeline import training_plan as plan
from gmai_pipeline.defs.training import gpu_cluster_from_profile
from gmai_pipeline.profiles import MissingVariableError


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model folder as a real run has it (contents beyond the layout are not read by these checks)."""
    folder = tmp_path / "internvl-like"
    for part in ("vision", "llm", "tokenizer"):
        (folder / part).mkdir(parents=True)
    (folder / "llm" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


@pytest.mark.parametrize("profile", ["slurm", "local"])
def test_real_profiles_train_with_the_papers_batch_per_stage(profile, model_dir, monkeypatch):
    """Paper: rows of 2048 soft-packed; stage I 32 GPUs x 8 x 2, stages II and III 32 x 4 x 4 (512 rows)."""
    monkeypatch.setenv("GMAI_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("GMAI_GPUS", "8")
    monkeypatch.delenv("GMAI_SLURM_NODES", raising=False)
    cfg = plan.load_training_profile(profile)
    world = gpu_cluster_from_profile(profile).world_size()
    assert world == (32 if profile == "slurm" else 8)
    shapes = {}
    for stage in (1, 2, 3):
        knobs = cfg.knobs(stage)
        assert knobs.max_length == 2048 and knobs.packing
        batch = plan.effective_batch(knobs, world)
        shapes[stage] = (batch["micro_batch"], batch["grad_accum"], batch["rows"])
    if profile == "slurm":
        assert shapes == {1: (8, 2, 512), 2: (4, 4, 512), 3: (4, 4, 512)}
        assert batch["formula"] == "32 GPUs x 4 rows x 4 accumulation = 512 rows"
    else:  # the same 512 rows on 8 GPUs: more accumulation
        assert shapes == {1: (8, 8, 512), 2: (4, 16, 512), 3: (4, 16, 512)}
    assert cfg.knobs(3).grad_checkpointing and not cfg.knobs(1).grad_checkpointing
    assert plan.check_base_model(cfg) == model_dir and not cfg.trust_remote_code


def test_effective_batch_in_samples_and_overrides():
    cfg = plan.load_training_profile("demo")
    knobs = cfg.knobs(1)
    assert (knobs.max_length, knobs.micro_batch, knobs.accumulation(1)) == (1536, 1, 2)
    assert plan.effective_batch(knobs, 1, samples_per_row=2.25)["samples"] == 4.5
    # An override in one form replaces the other form of the batch from the profile.
    real = plan.TrainingProfile(
        base_model="x", defaults={"global_batch_rows": 512}, stages={"stage1": {"micro_batch": 8}}
    )
    assert real.knobs(1).accumulation(32) == 2
    assert real.knobs(1, {"grad_accum": 3}).accumulation(32) == 3
    with pytest.raises(plan.TrainingPlanError, match="not a multiple of 3 GPUs x micro_batch 8 = 24"):
        real.knobs(1).accumulation(3)  # 512 rows cannot be split over 3 GPUs x 8 rows
    with pytest.raises(plan.TrainingPlanError, match="micro_batch"):
        real.knobs(1, {"micro_batch": 0})


def test_non_demo_profile_without_model_folder_names_the_variable(monkeypatch, tmp_path, model_dir):
    monkeypatch.delenv("GMAI_MODEL_DIR", raising=False)
    for profile in ("slurm", "local"):
        with pytest.raises(MissingVariableError, match="set GMAI_MODEL_DIR") as info:
            plan.load_training_profile(profile)
        assert info.value.variable == "GMAI_MODEL_DIR"
    monkeypatch.setenv("GMAI_MODEL_DIR", "")  # set but empty is as good as unset
    with pytest.raises(MissingVariableError):
        plan.load_training_profile("slurm")
    for value, message in (
        ("tiny", "tiny random model is for the demo"),
        (str(tmp_path / "nope"), "(GMAI_MODEL_DIR) does not exist"),
        (str(model_dir / "llm"), "lacks vision/, llm/, tokenizer/"),
    ):
        monkeypatch.setenv("GMAI_MODEL_DIR", value)
        with pytest.raises(plan.TrainingPlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
            plan.check_base_model(plan.load_training_profile("slurm"))
    assert plan.check_base_model(plan.load_training_profile("demo")) is None  # the demo's tiny model


def _llm(folder: Path, **config) -> Path:
    (folder / "llm").mkdir(parents=True)
    (folder / "llm" / "config.json").write_text(json.dumps(config))
    return folder


def test_packing_is_refused_for_an_llm_transformers_does_not_run_itself(tmp_path):
    internlm2 = _llm(
        tmp_path / "internlm2",
        model_type="internlm2",
        auto_map={"AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
    )
    with pytest.raises(plan.TrainingPlanError, match="runs its own modelling code.*convert2llama"):
        plan.check_packing(internlm2, trust_remote_code=True, packing=True)
    plan.check_packing(internlm2, trust_remote_code=True, packing=False)  # unpacked: its own mask is fine
    with pytest.raises(plan.TrainingPlanError, match="cannot load.*internlm2.*convert2llama"):
        plan.check_packing(internlm2, trust_remote_code=False, packing=False)
    # After InternLM's convert2llama: a Llama config, no auto_map -> transformers' own packing-aware class.
    converted = _llm(tmp_path / "converted", model_type="llama", architectures=["LlamaForCausalLM"])
    plan.check_packing(converted, trust_remote_code=True, packing=True)
    plan.check_packing(None, trust_remote_code=False, packing=True)  # the tiny demo model


def test_training_knobs_left_in_gpu_cluster_yaml_are_pointed_at_training_yaml(tmp_path, monkeypatch):
    from gmai_pipeline import profiles
    from gmai_pipeline.defs import training as training_defs

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "gpu_cluster.yaml").write_text("backend: local\nmax_length: 4096\nbase_model: tiny\n")
    monkeypatch.setattr(
        training_defs, "load_resource_config", lambda r, p: profiles.load_resource_config(r, p, root=tmp_path)
    )
    with pytest.raises(ValueError, match=r"\['base_model', 'max_length'\].*moved to training.yaml"):
        gpu_cluster_from_profile("old")


def test_gpu_cluster_yaml_picks_a_backend_class_and_refuses_what_it_lacks(tmp_path, monkeypatch):
    from gmai_pipeline import profiles
    from gmai_pipeline.defs import training as training_defs

    monkeypatch.setattr(
        training_defs, "load_resource_config", lambda r, p: profiles.load_resource_config(r, p, root=tmp_path)
    )
    for name, text in (
        ("k8s", "backend: k8s\n"),
        ("mixed", "backend: slurm\nlauncher: torchrun\n"),
        ("good", "backend: slurm\nnodes: ${NODES:-2}\n"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "gpu_cluster.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"backend 'k8s' is not one of local, slurm"):
        gpu_cluster_from_profile("k8s")
    with pytest.raises(ValueError, match=r"the slurm backend has no setting \['launcher'\]"):
        gpu_cluster_from_profile("mixed")
    good = gpu_cluster_from_profile("good")
    assert isinstance(good, training_defs.SlurmGpuCluster) and good.nodes == 2 and good.world_size() == 2
