"""What each training stage trains with, as plain Python: the profile's per-stage knobs, the batch they make,
and the checks that refuse an unsafe run before anything is submitted.

The knobs live in `resources/<profile>/training.yaml`, apart from where the stages run (`gpu_cluster.yaml`):

    base_model: ${GMAI_MODEL_DIR:?a folder with vision/ llm/ tokenizer/}
    defaults: {max_length: 2048, packing: true}
    stages:
      stage1: {micro_batch: 8, global_batch_rows: 512}     # 512 / (world x 8) accumulation steps
      stage2: {micro_batch: 4, grad_accum: 4}

A stage's knobs are `defaults` overlaid with its own entry, then with the asset's run config. The batch is
given either as `grad_accum` or as `global_batch_rows` (the accumulation is then derived from the world size,
so the same profile keeps the paper's batch on 8 or 32 GPUs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gmai_pipeline.profiles import load_resource_config
from gmai_pipeline.settings import PROJECT_ROOT

STAGE_KEYS = ("stage1", "stage2", "stage3")
MODEL_VARIABLE = "GMAI_MODEL_DIR"
CONVERT2LLAMA = (
    "InternLM's tools/convert2llama.py (github.com/InternLM/InternLM: "
    "`python tools/convert2llama.py --src <model>/llm --tgt <model>/llm-llama`, then use llm-llama as both "
    "llm/ and tokenizer/), which rewrites InternLM2 weights in the Llama layout that transformers runs natively"
)


class TrainingPlanError(ValueError):
    """A stage that must not be launched as configured; the message says what to change."""


class StageKnobs(BaseModel):
    """The flags of `python -m training_jobs.train` that a profile sets per stage."""

    model_config = ConfigDict(extra="forbid")
    max_length: int = Field(2048, ge=64, description="packed row length in tokens")
    micro_batch: int = Field(1, ge=1, description="rows per GPU per micro-step")
    grad_accum: int | None = Field(None, ge=1, description="micro-steps per optimizer step")
    global_batch_rows: int | None = Field(None, ge=1, description="rows per optimizer step (accum derived)")
    packing: bool = Field(True, description="soft packing; off: one sample per row, padded")
    max_samples: int = Field(0, ge=0, description="train on the first N samples only (demo); 0: all")
    save_steps: int = Field(0, ge=0)
    grad_checkpointing: bool = False
    liger: bool = Field(False, description="liger-kernel's fused RMSNorm/SwiGLU/RoPE/linear-CE (CUDA)")
    compile: bool = Field(False, description="torch.compile the LLM's decoder layers")
    extra_args: list[str] = Field(default_factory=list, description="more training_jobs.train flags")

    def accumulation(self, world: int) -> int:
        """Micro-steps per optimizer step for `world` processes; refuses a batch that does not divide."""
        if self.global_batch_rows is None:
            return self.grad_accum or 1
        per_micro = world * self.micro_batch
        accum, rest = divmod(self.global_batch_rows, per_micro)
        if rest or accum < 1:
            raise TrainingPlanError(
                f"global_batch_rows {self.global_batch_rows} is not a multiple of {world} GPUs x micro_batch "
                f"{self.micro_batch} = {per_micro}: change one of them in the profile"
            )
        if self.grad_accum is not None and self.grad_accum != accum:
            raise TrainingPlanError(
                f"grad_accum {self.grad_accum} contradicts global_batch_rows {self.global_batch_rows} on "
                f"{world} GPUs x micro_batch {self.micro_batch} (that needs {accum}): set only one"
            )
        return accum

    def train_options(self, world: int) -> dict[str, Any]:
        """Flag name -> value for `training_cluster.train_args` (None/False: flag omitted)."""
        return {
            "max_length": self.max_length,
            "micro_batch": self.micro_batch,
            "grad_accum": self.accumulation(world),
            "max_samples": self.max_samples or None,
            "save_steps": self.save_steps or None,
            "no_packing": not self.packing,
            "grad_checkpointing": self.grad_checkpointing,
            "liger": self.liger,
            "compile": self.compile,
        }


class TrainingProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_model: str = Field(description="stage I's model: a folder with vision/ llm/ tokenizer/, or 'tiny'")
    allow_tiny: bool = Field(False, description="the demo's random tiny model is acceptable (demo only)")
    trust_remote_code: bool = Field(False, description="run the model folder's own modelling code")
    defaults: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
    source: str = Field("", description="the file this came from (for messages)")

    def knobs(self, stage: int | str, overrides: Mapping[str, Any] | None = None) -> StageKnobs:
        key = stage if isinstance(stage, str) else f"stage{stage}"
        if key not in STAGE_KEYS:
            raise TrainingPlanError(f"unknown stage {stage!r}")
        merged: dict[str, Any] = {}
        for layer in (self.defaults, self.stages.get(key, {}), overrides or {}):
            layer = {k: v for k, v in layer.items() if v is not None}
            # The batch is given one way per layer: a layer that sets one form replaces the other.
            for one, other in (("grad_accum", "global_batch_rows"), ("global_batch_rows", "grad_accum")):
                if one in layer and other not in layer:
                    merged.pop(other, None)
            merged.update(layer)
        try:
            return StageKnobs(**merged)
        except ValidationError as exc:
            raise TrainingPlanError(f"{self.source or 'training profile'}: {key}: {exc}") from None


def load_training_profile(profile: str | None = None, root: Path | None = None) -> TrainingProfile:
    """`resources/<profile>/training.yaml`; a `${GMAI_MODEL_DIR:?...}` left unset raises MissingVariableError."""
    kwargs = {"root": root} if root else {}
    cfg = load_resource_config("training", profile, **kwargs)
    if not cfg:
        raise TrainingPlanError(f"profile {profile!r} has no training.yaml: the stages' knobs are undefined")
    unknown = set(cfg.get("stages", {})) - set(STAGE_KEYS)
    if unknown:
        raise TrainingPlanError(f"training.yaml of profile {profile!r}: unknown stages {sorted(unknown)}")
    for key in ("allow_tiny", "trust_remote_code"):  # booleans that came through ${VAR:-x} strings
        if isinstance(cfg.get(key), str):
            cfg[key] = cfg[key].strip().lower() in ("1", "true", "yes", "on")
    return TrainingProfile(**cfg, source=f"training.yaml of profile {profile!r}")


def effective_batch(knobs: StageKnobs, world: int, samples_per_row: float | None = None) -> dict[str, Any]:
    """Rows (and, once the rows are planned, samples) per optimizer step, with the formula a person checks."""
    accum = knobs.accumulation(world)
    rows = world * knobs.micro_batch * accum
    out: dict[str, Any] = {
        "world": world,
        "micro_batch": knobs.micro_batch,
        "grad_accum": accum,
        "rows": rows,
        "formula": f"{world} GPUs x {knobs.micro_batch} rows x {accum} accumulation = {rows} rows",
    }
    if samples_per_row is not None:
        out["samples_per_row"] = samples_per_row
        out["samples"] = rows * samples_per_row
    return out


# --- refusing unsafe runs ----------------------------------------------------------------------------------


def check_base_model(profile: TrainingProfile) -> Path | None:
    """The model folder stage I starts from (None: the tiny demo model); refuses a missing or partial folder."""
    value = profile.base_model.strip()
    if value in ("", "tiny"):
        if profile.allow_tiny:
            return None
        raise TrainingPlanError(
            f"{profile.source}: base_model is {value or 'empty'!r}, but this profile trains for real and the "
            f"tiny random model is for the demo: set {MODEL_VARIABLE} to a model folder with vision/ llm/ "
            "tokenizer/ (training_jobs/README.md, 'Real models')"
        )
    folder = Path(value)
    missing = [part for part in ("vision", "llm", "tokenizer") if not (folder / part).is_dir()]
    if not folder.is_dir() or missing:
        what = "does not exist" if not folder.is_dir() else f"lacks {', '.join(p + '/' for p in missing)}"
        raise TrainingPlanError(
            f"{profile.source}: base_model {folder} ({MODEL_VARIABLE}) {what}: a model folder holds vision/ "
            "(CLIPVisionModel.save_pretrained), llm/ and tokenizer/ (training_jobs/README.md, 'Real models')"
        )
    return folder


def native_llm_problem(llm_dir: Path, trust_remote_code: bool) -> tuple[str | None, bool]:
    """(problem, loadable) for the causal LM in `llm_dir`, decided from its config as transformers would.

    problem is None when transformers will build one of its own classes (which isolate packed samples given
    restarting position ids); otherwise it says which class would run and how to get a native one.
    loadable is False when the folder cannot be loaded at all as configured.
    """
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config_path = Path(llm_dir) / "config.json"
    if not config_path.is_file():
        return f"{config_path} does not exist", False
    cfg = json.loads(config_path.read_text())
    model_type = cfg.get("model_type", "")
    remote = (cfg.get("auto_map") or {}).get("AutoModelForCausalLM")
    hint = f"; convert it with {CONVERT2LLAMA}" if model_type.startswith("internlm") else ""
    if remote and trust_remote_code:
        return (
            f"{llm_dir} runs its own modelling code ({remote}, model_type {model_type!r}), which builds its own "
            f"causal mask: packed samples would attend to each other{hint}",
            True,
        )
    if model_type not in CONFIG_MAPPING or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        loadable = bool(remote and trust_remote_code)
        return (
            f"{llm_dir}: transformers has no causal LM of its own for model_type {model_type!r}"
            + (hint or "; it needs trust_remote_code, whose attention does not isolate packed samples"),
            loadable,
        )
    return None, True


def check_packing(model_dir: Path | None, trust_remote_code: bool, packing: bool) -> None:
    """Refuse, before launch, a packed run whose LLM would let packed samples attend to each other.

    training_jobs.train checks again on the class it actually loads (and probes it); this catches the
    common case (InternLM2 shipped with its own code) without spending a cluster allocation on it.
    """
    if model_dir is None:  # the tiny model is a transformers Llama
        return
    problem, loadable = native_llm_problem(Path(model_dir) / "llm", trust_remote_code)
    if problem and not loadable:
        raise TrainingPlanError(f"cannot load the model: {problem}")
    if problem and packing:
        raise TrainingPlanError(
            f"packing is on but {problem}. Either convert the model (above), or set `packing: false` for "
            "the stages in training.yaml (one sample per row; slower)"
        )


def lengths_file(data: Path) -> Path:
    """Where `training_jobs.lengths` writes a mixture's token lengths (and where training looks for them)."""
    return data.with_name(f"{data.stem}.lengths.parquet")


def token_lengths(data: Path, stage: int, profile: TrainingProfile, python: str = sys.executable) -> str:
    """Measure a mixture's token lengths with the tokenizer the stage will train with, once, beside the mixture,
    so training ranks plan their rows without tokenizing it. Returns what happened, for the mixture's metadata.

    Every stage trains with stage I's tokenizer (stages II and III start from stage I's export, which keeps
    it), so that is the profile's base model. Training checks the file against its own tokenizer and template
    and tokenizes itself (saying why) when they differ, so a file made here can be wrong, never harmful.
    """
    out = lengths_file(data)
    out.unlink(missing_ok=True)  # never leave the lengths of an earlier mixture beside this one
    model = check_base_model(profile)
    if model is None:
        return "not computed: the demo's tiny model (and its tokenizer) is built when stage I starts"
    extra = profile.knobs(stage).extra_args
    template = extra[extra.index("--template") + 1 :][:1] if "--template" in extra else []
    cmd = [python, "-m", "training_jobs.lengths", "--data", str(data), "--model", str(model)]
    cmd += [*(["--template", *template] if template else []), "--output", str(out)]
    cmd += ["--trust-remote-code"] if profile.trust_remote_code else []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise TrainingPlanError(f"measuring token lengths of {data} failed: {done.stderr.strip()[-2000:]}")
    return f"computed with {model / 'tokenizer'}"
