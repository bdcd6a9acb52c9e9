"""Start real services for the `services` tests: PostgreSQL, Redis, the Dagster web UI, Celery workers.

Each runs on a free loopback port in a temporary folder, is started by the test and stopped by
it (its own process group, signalled by id). Debian's packages provide the servers (`.ci/run`
installs postgresql, redis-server and chromium); a missing binary skips the test with the reason on a
developer machine, and fails it under CI, where a skip would hide a broken install step.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DEPLOY = REPO / "deploy"


def missing_service(reason: str) -> None:
    """Skip on a developer machine; fail under CI (`CI` set), where the service must be installed."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it in .ci/run)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s\n{tail}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group this test started (by its id), then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def spawn(
    args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO, user: str | None = None
):
    """Start `args` in a new session (so the whole tree can be stopped), output to `log`."""
    if user:
        args = ["runuser", "-u", user, "--", *args]
    out = log.open("ab")
    return subprocess.Popen(
        args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
    )


def service_env(**extra: str) -> dict[str, str]:
    """This environment, the venv first on PATH, minus anything that would point Dagster elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "GMAI_", "PYTEST_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def install_dagster_yaml(template: str, dagster_home: Path) -> Path:
    """Copy a deploy/ template to $DAGSTER_HOME/dagster.yaml (the templates read secrets from the environment)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    target = dagster_home / "dagster.yaml"
    shutil.copyfile(DEPLOY / template, target)
    return target


# --- PostgreSQL --------------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if found:
        return found[0]
    path = shutil.which(name)
    if not path:
        missing_service(f"PostgreSQL's {name} not found (apt-get install postgresql)")
    return path


@dataclass
class Postgres:
    host: str
    port: int
    user: str
    password: str
    db: str
    log: Path

    def env(self) -> dict[str, str]:
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.db,
        }

    def connect(self):
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=self.db
        )


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A throwaway cluster: initdb in a temp folder, password auth on 127.0.0.1, one database for Dagster.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user.
    """
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    base = Path(tempfile.mkdtemp(prefix="gmai-pg-", dir="/tmp"))
    run_as = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            missing_service("running as root and there is no 'postgres' user to own the cluster")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        run_as = "postgres"
    data, log = base / "data", base / "postgres.log"
    superpass, password = "gmai-super-secret", "gmai-dagster-secret"
    pwfile = base / "pw"
    pwfile.write_text(superpass + "\n")
    if run_as:
        os.chown(pwfile, pwd.getpwnam(run_as).pw_uid, -1)

    def as_owner(args: list[str]) -> list[str]:
        return ["runuser", "-u", run_as, "--", *args] if run_as else args

    port = free_port()
    try:
        subprocess.run(
            as_owner([initdb, "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}", "--auth-local=trust",
                      "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale"]),
            check=True, capture_output=True, cwd=base,
        )  # fmt: skip
        opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        subprocess.run(
            as_owner([pg_ctl, "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start"]),
            check=True, capture_output=True, cwd=base,
        )  # fmt: skip
        import psycopg2

        admin = psycopg2.connect(
            host="127.0.0.1", port=port, user="postgres", password=superpass, dbname="postgres"
        )
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f"CREATE ROLE dagster LOGIN PASSWORD '{password}'")
            cur.execute("CREATE DATABASE dagster OWNER dagster")
        admin.close()
        yield Postgres("127.0.0.1", port, "dagster", password, "dagster", log)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                as_owner([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True, cwd=base
            )
        shutil.rmtree(base, ignore_errors=True)


# --- Redis -------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """redis-server on a free loopback port, no persistence; yields its base URL (`redis://127.0.0.1:PORT`)."""
    binary = shutil.which("redis-server")
    if not binary:
        missing_service("redis-server not found (apt-get install redis-server)")
    port = free_port()
    log = tmp / "redis.log"
    proc = spawn(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp),
         "--protected-mode", "yes"],
        log,
    )  # fmt: skip
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 30, "redis-server", log=log)
        assert proc.poll() is None, log.read_text()
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop_group(proc)


# --- Dagster web UI ----------------------------------------------------------------------------


def http_ok(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200
    return False


@contextlib.contextmanager
def dagster_dev(env: dict[str, str], log: Path, timeout: float = 240) -> Iterator[str]:
    """`dagster dev` (web server + daemon) for the code location on a free loopback port; yields the base URL."""
    port = free_port()
    proc = spawn(
        [
            str(VENV_BIN / "dagster"),
            "dev",
            "-w",
            str(REPO / "workspace.yaml"),  # location name gmai_pipeline, as users see it
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        log,
        env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: http_ok(f"{url}/server_info") or proc.poll() is not None, timeout, "dagster dev", 1.0, log
        )
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        yield url
    finally:
        stop_group(proc, timeout=30)
