"""Absent datasets cost next to nothing: the same run over the full catalog (219 + 7 demo entries, only the
demo data present) and over the demo catalog alone (`GMAI_CATALOG_DIR=assets/demo`).

Each run is what a user types, in a fresh output root and a fresh SQLite instance (`deploy/dagster.sqlite.yaml`,
as `make demo` uses), with the default multiprocess executor (one process per launched step):

- `build_dataset_job`: every catalogued source through the release (the job where absent datasets are selected);
- `annotations`: `dagster asset materialize --select '*annotations'` (sources, normalized tables, annotations);
- `demo_job`: the demo end to end, training included (selects only the demo's sources in both catalogs).

The figure is the ratio full / demo per run kind (target: at most about 1.5x), wall-clock and CPU seconds
(user + system of the whole process tree: on a machine shared with other work the CPU figure is the steadier
one), with the steps each run launched, skipped and failed and the events it wrote, read back from the
instance, and the wall-clock split at RUN_START (before it: the CLI, loading the definitions, creating the
run, which writes one "planned" event per asset and per asset check selected). Runs alternate between the
two catalogs so that a machine that gets busier hurts both sides alike.

    python bench/partial_catalog.py                       # build_dataset_job x2, annotations x2, demo_job x1
    python bench/partial_catalog.py --runs build_dataset_job:3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from process_tree import adopt_orphans, reap  # bench/, the script's folder

REPO = Path(__file__).resolve().parent.parent
DAGSTER = Path(sys.executable).parent / "dagster"
RUNS = {
    "build_dataset_job": ["job", "execute", "-m", "gmai_pipeline.definitions", "-j", "build_dataset_job"],
    "annotations": ["asset", "materialize", "-m", "gmai_pipeline.definitions", "--select", "*annotations"],
    "demo_job": ["job", "execute", "-m", "gmai_pipeline.definitions", "-j", "demo_job"],
}
CATALOGS = {"demo_catalog": str(REPO / "assets" / "demo"), "full_catalog": None}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _step_counts(home: Path, started_at: float) -> dict:
    """Steps and events of the one run in `home`, and how the wall-clock splits around RUN_START."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home)  # the template's event log lives under $DAGSTER_HOME/storage
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        records = instance.all_logs(run.run_id)
        kinds = Counter(r.dagster_event.event_type_value for r in records if r.dagster_event)
        start = next(
            r.timestamp
            for r in records
            if r.dagster_event and r.dagster_event.event_type_value == "PIPELINE_START"
        )
        end = max(r.timestamp for r in records)
        return {
            "status": run.status.value,
            "steps_launched": kinds["STEP_START"],
            "steps_skipped": kinds["STEP_SKIPPED"],
            "steps_failed": kinds["STEP_FAILURE"],
            "materializations": kinds["ASSET_MATERIALIZATION"],
            "events": len(records),
            "events_by_kind": dict(kinds.most_common()),
            # Dagster writes one "planned" event per asset and per asset check of the run when it creates it.
            "planned_events": kinds["ASSET_MATERIALIZATION_PLANNED"]
            + kinds["ASSET_CHECK_EVALUATION_PLANNED"],
            "before_run_start_s": round(start - started_at, 1),  # CLI, definitions, run creation
            "run_s": round(end - start, 1),
        }


def run_once(kind: str, catalog: str, keep: bool, instance_root: Path | None = None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"partial-{kind}-{catalog}-"))
    home, out = Path(tempfile.mkdtemp(prefix="dagster_home-", dir=instance_root or tmp)), tmp / "out"
    shutil.copy(REPO / "deploy" / "dagster.sqlite.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GMAI_") and k != "DAGSTER_HOME"}
    env.update({"DAGSTER_HOME": str(home), "GMAI_OUTPUT_ROOT": str(out), "PYTHONPATH": str(REPO)})
    if CATALOGS[catalog]:
        env["GMAI_CATALOG_DIR"] = CATALOGS[catalog]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started_at = time.time()
    started = time.monotonic()
    proc = subprocess.run([str(DAGSTER), *RUNS[kind]], cwd=tmp, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    reap()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the whole tree: step processes are waited for
    if proc.returncode != 0:
        raise SystemExit(
            f"{kind} over the {catalog} failed (kept {tmp}):\n{(proc.stdout + proc.stderr)[-4000:]}"
        )
    result = {
        "run": kind,
        "catalog": catalog,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        **_step_counts(home, started_at),
    }
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs",
        default="build_dataset_job:2,annotations:2,demo_job:1",
        help=f"comma-separated kind[:repeats], kinds: {', '.join(RUNS)}; the median of the repeats is kept",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "partial_catalog-cpu.json")
    parser.add_argument("--keep", action="store_true", help="keep each run's output root and instance")
    parser.add_argument(
        "--instance-root",
        type=Path,
        help="where the SQLite instances go (default: beside each output root); e.g. /dev/shm to take the "
        "disk's sync latency (other tenants' I/O on a shared VM) out of the instance writes",
    )
    args = parser.parse_args()
    plan = [(k, int(n or 1)) for k, _, n in (item.partition(":") for item in args.runs.split(","))]

    adopt_orphans()
    load_start = os.getloadavg()
    measured: list[dict] = []
    turn = 0
    for kind, repeats in plan:
        for _ in range(repeats):
            # Alternate which catalog goes first, so a machine that gets busier hurts both sides alike.
            for catalog in list(CATALOGS) if turn % 2 == 0 else list(reversed(CATALOGS)):
                r = run_once(kind, catalog, args.keep, args.instance_root)
                print(json.dumps(r), flush=True)
                measured.append(r)
            turn += 1

    def median(kind: str, catalog: str, field: str) -> float:
        return statistics.median(r[field] for r in measured if (r["run"], r["catalog"]) == (kind, catalog))

    summary = []
    for kind, repeats in plan:
        row: dict = {"run": kind, "repeats": repeats}
        for field, label in (("seconds", "s"), ("cpu_seconds", "cpu_s")):
            demo, full = median(kind, "demo_catalog", field), median(kind, "full_catalog", field)
            row |= {f"demo_catalog_{label}": demo, f"full_catalog_{label}": full}
            row[f"ratio_{label}"] = round(full / demo, 3)
        summary.append(row)
    report = {
        "what": "the same run over the full catalog (only the demo data present) and over the demo catalog alone",
        "target": "ratio (full / demo) <= ~1.5",
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "dagster": __import__("dagster").__version__,
            "load_average_at_start": list(load_start),
            "load_average_at_end": list(os.getloadavg()),
            "instance_root": str(args.instance_root or "beside each output root (disk)"),
        },
        "summary": summary,
        "runs": measured,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for s in summary:
        print(
            f"{s['run']}: wall {s['demo_catalog_s']} -> {s['full_catalog_s']} s ({s['ratio_s']}x), "
            f"CPU {s['demo_catalog_cpu_s']} -> {s['full_catalog_cpu_s']} s ({s['ratio_cpu_s']}x)"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
