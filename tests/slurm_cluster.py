"""A real single-node Slurm for tests: munged + slurmctld + slurmd as root, configured in a temp folder.

Debian's `slurm-wlm` and `munge` (the CI script installs them). No slurmdbd: accounting is off, so
`sacct` has nothing to say and the GPU-cluster resource polls `scontrol show job` (MinJobAge keeps
finished jobs visible) — the fallback training_cluster.job_state documents. Completed jobs are also
written by jobcomp/filetxt to jobcomp.txt for inspection.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("slurmctld", "slurmd", "sbatch", "munged")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_ok() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        return (
            cred.returncode == 0
            and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _ensure_munged() -> subprocess.Popen | None:
    """Reuse a running munged; otherwise start one as the munge user on the default socket."""
    if _munge_ok():
        return None
    run = Path("/run/munge")
    run.mkdir(parents=True, exist_ok=True)
    shutil.chown(run, "munge", "munge")
    for d in ("/var/log/munge", "/var/lib/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o600)
    proc = subprocess.Popen(
        ["runuser", "-u", "munge", "--", "munged", "--foreground"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    for _ in range(50):
        if _munge_ok():
            return proc
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"munged did not start: {proc.stderr.read().decode() if proc.stderr else ''}")


class SlurmCluster:
    def __init__(self, root: Path, cpus: int = 2):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.cpus = cpus
        self.procs: list[subprocess.Popen] = []
        self.munged: subprocess.Popen | None = None

    def write_conf(self) -> None:
        for d in ("state", "spool"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        r = self.root
        self.conf.write_text(f"""\
ClusterName=gmaitest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={r}/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
MinJobAge=3600
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def start(self) -> SlurmCluster:
        self.write_conf()
        self.munged = _ensure_munged()
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for cmd in (
            ["slurmctld", "-D", "-i", "-f", str(self.conf)],
            ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)],
        ):
            log = open(self.root / f"{cmd[0]}.stdout", "w")  # noqa: SIM115 (closed with the process)
            self.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
            time.sleep(1.0)
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True
            ).stdout.strip()
            if out in ("idle", "mix", "alloc"):
                return self
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.5)
        self.stop()
        logs = "".join(
            (self.root / n).read_text()[-2000:]
            for n in ("slurmctld.log", "slurmd.log")
            if (self.root / n).exists()
        )
        raise RuntimeError(f"Slurm did not come up (sinfo said {out!r}):\n{logs}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []
        if self.munged:
            self.munged.terminate()
            self.munged = None
