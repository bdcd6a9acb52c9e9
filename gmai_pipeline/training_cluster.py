"""Launching training on a cluster, as plain Python: command lines, the sbatch script, Slurm's answers.

The Dagster layer (defs/training.py) is thin over this; everything here is unit-testable without Slurm.
Polling prefers `sacct` (needs accounting); without slurmdbd, sacct may answer nothing, so `squeue`
and `scontrol show job` are asked next, and a job no command knows any more is read as finished, its
exit code taken from the log's Pipes messages (the training process reports its own result).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gmai_pipeline.settings import PROJECT_ROOT

SBATCH_TEMPLATE = PROJECT_ROOT / "training_jobs" / "launch" / "sbatch.template"
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
}
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


def train_args(
    stage: int,
    data: Path,
    image_root: Path,
    output: Path,
    init_from: Path | None = None,
    model_config: str = "tiny",
    options: Mapping[str, object] | None = None,
    resume: bool = False,
) -> list[str]:
    """Arguments of `python -m training_jobs.train`; options map flag names (max_length) to values (None: omit)."""
    args = [
        "--stage",
        str(stage),
        "--data",
        str(data),
        "--image-root",
        str(image_root),
        "--output",
        str(output),
        "--init-from",
        str(init_from) if init_from else "none",
        "--model-config",
        model_config,
    ]
    for key, value in (options or {}).items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    if resume:
        args.append("--resume")
    return args


def launch_command(
    args: Sequence[str],
    launcher: str = "python",
    nproc: int = 1,
    python: str | None = None,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    module: str = "training_jobs.train",
) -> list[str]:
    """`python -m <module> ...` or the torchrun equivalent (standalone on one node, c10d rendezvous on several).

    `module` is the entry point on the nodes: training_jobs.train (a stage), training_jobs.score (stage III's
    scoring pass) or training_jobs.evaluate (the evaluation assets)."""
    python = python or sys.executable
    if launcher == "python":
        return [python, "-m", module, *args]
    cmd = [python, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}"]
    cmd += (
        ["--standalone"]
        if nnodes == 1 and not rdzv_endpoint
        else ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    )
    return [*cmd, "-m", module, *args]


def render(template: str, fields: Mapping[str, object]) -> str:
    """Fill {{ name }} placeholders (bash keeps its own $VARS); an unknown placeholder is an error."""

    def sub(m: re.Match) -> str:
        if m.group(1) not in fields:
            raise KeyError(f"sbatch template needs '{m.group(1)}'")
        return str(fields[m.group(1)])

    return _PLACEHOLDER.sub(sub, template)


@dataclass(frozen=True)
class SlurmJob:
    job_name: str
    nodes: int
    gpus_per_node: int
    cpus_per_task: int
    time_limit: str
    partition: str
    log_path: Path
    workdir: Path
    setup: str  # shell lines run before the launch (module load, source venv/bin/activate)
    container: str  # prefix for the launch inside srun, e.g. "apptainer exec --nv img.sif"
    python: str
    env: Mapping[str, str]
    train_args: Sequence[str]
    master_port: int = 29500
    module: str = "training_jobs.train"  # the entry point the job runs


def render_sbatch(job: SlurmJob, template: Path = SBATCH_TEMPLATE) -> str:
    directives = []
    if job.partition:
        directives.append(f"#SBATCH --partition={job.partition}")
    if job.gpus_per_node:
        directives.append(f"#SBATCH --gpus-per-node={job.gpus_per_node}")
    nproc = job.gpus_per_node or 1
    launch = (
        f"{job.container} {shlex.quote(job.python)} -m torch.distributed.run --nnodes={job.nodes} "
        f'--nproc-per-node={nproc} --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" '
        f'--rdzv-id="$SLURM_JOB_ID" -m {job.module} {shlex.join(job.train_args)}'
    ).strip()
    fields = {
        "job_name": job.job_name,
        "nodes": job.nodes,
        "cpus_per_task": job.cpus_per_task,
        "time_limit": job.time_limit,
        "log_path": job.log_path,
        "directives": "\n".join(directives),
        "workdir": shlex.quote(str(job.workdir)),
        "setup": job.setup,
        "env": "\n".join(f"export {k}={shlex.quote(v)}" for k, v in job.env.items()),
        "master_port": job.master_port,
        "launch": launch,
    }
    return render(template.read_text(), fields)


def sbatch(script: Path, env: Mapping[str, str] | None = None) -> str:
    """Submit; returns the job id. The job inherits `env` (sbatch's default --export=ALL)."""
    res = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(f"sbatch failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout.strip().split(";")[0]


def parse_sacct(text: str, job_id: str) -> str | None:
    """State of the allocation from `sacct -j ID -n -P -o JobID,State,ExitCode` (None: sacct does not know it)."""
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0] == job_id:
            return parts[1].split()[0]  # "CANCELLED by 0" -> CANCELLED
    return None


def parse_scontrol(text: str) -> str | None:
    m = re.search(r"\bJobState=(\S+)", text)
    return m.group(1) if m else None


def job_state(job_id: str) -> str | None:
    """COMPLETED, RUNNING, ... or None when no Slurm command knows the job any more."""
    probes = [
        (
            ["sacct", "-j", job_id, "-n", "-P", "-X", "-o", "JobID,State,ExitCode"],
            lambda t: parse_sacct(t, job_id),
        ),
        (["scontrol", "show", "job", job_id], parse_scontrol),
        (["squeue", "-h", "-j", job_id, "-o", "%T"], lambda t: t.strip().split()[0] if t.strip() else None),
    ]
    for cmd, parse in probes:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if res.returncode == 0 and (state := parse(res.stdout)):
            return state
    return None


def scancel(job_id: str) -> None:
    subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
