"""A 3D dataset normalized as 1 partition and as 2 partitions on a 2-worker multiprocess executor.

    .venv/bin/python bench/partitions.py [--cases 40] [--shape 512 512 64] [--workdir /dev/shm]

Generates `--cases` CT cases in MSD's layout (imagesTr/ct_NNN.nii.gz, int16 anatomy-like texture
plus noise, and labelsTr/ct_NNN.nii.gz with two structures through every slice), writes a catalog
entry for them (`kind: msd`, `axes: [2]`) once with `partitions: 1` and once with `partitions: 2`,
and for each runs, through Dagster's multiprocess executor (`max_concurrent: 2`) on a temporary
instance: first `source/<name>` (the manifest, not timed), then every `normalized/*` asset of the
entry, timed. With one partition that is one step (`normalized/<name>`); with two, the parts
`normalized/<name>/p000` and `p001` run side by side and `normalized/<name>` joins them.

Each configuration runs in a process of its own (as each `dagster job execute` does), its steps forked
from a forkserver that preloaded what they import, as the code location's executor does. Reported per
configuration: the run's wall time, the CPU time of its process tree (scan run included), each step's in-step normalization time and process CPU time (asset metadata), and
the load average around it; then the wall-time ratio (2 partitions / 1). Both outputs are compared:
the same sample ids, the same image files (MD5) and the same quarantine. Results go to
bench/results/partitions-cpu.json. The ratio cannot quite reach 0.5: a stable hash of the case id
splits the cases only about evenly (the larger part bounds the run), each step is a process of its
own, and the join reads both parts and runs the check after them; on a machine whose two cores are
shared with other work (load average above 2) the parts also compete with that work. The summary
gives the larger part's share of the cases (`larger_part_share`): the ratio two perfect workers reach.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from process_tree import adopt_orphans, reap  # noqa: E402  (bench/, the script's folder)

NAME = "bench_ct"
ENTRY = """name: bench_ct
title: synthetic CT cases (bench/partitions.py)
url: https://example.org/bench_ct
license: unknown
modality: CT
department: Oncology
task_type: 3d_seg
clinical_task: Organ Recognition
reader: {{kind: msd, axes: [2]}}
labels: {{'1': liver, '2': tumor}}
partitions: {partitions}
provenance:
  source: bench/partitions.py
"""
# As the code location's executor runs steps (gmai_pipeline.definitions.multiprocess_executor): forked from a
# forkserver that imported what the steps need; this bench's one-entry definitions are cheap to build.
PRELOAD = [
    "dagster",
    "nibabel",
    "gmai_pipeline.normalize",
    "gmai_pipeline.defs.sources",
    "gmai_pipeline.defs.normalize",
]
RUN_CONFIG = {
    "execution": {
        "config": {
            "multiprocess": {
                "max_concurrent": 2,
                "start_method": {"forkserver": {"preload_modules": PRELOAD}},
            }
        }
    },
    "loggers": {"console": {"config": {"log_level": "WARNING"}}},
}


def make_cases(raw: Path, cases: int, shape: tuple[int, int, int]) -> None:
    import nibabel as nib

    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir(parents=True)
    y, x = np.mgrid[-1 : 1 : shape[0] * 1j, -1 : 1 : shape[1] * 1j]
    body = (x**2 / 0.8 + y**2 / 0.6 < 1)[..., None]
    for i in range(cases):
        rng = np.random.default_rng(i)
        z = np.linspace(0, np.pi, shape[2])[None, None, :]
        tissue = 40 + 60 * np.sin(7 * x[..., None] + i + z) * np.cos(5 * y[..., None] - z)
        volume = np.where(body, tissue, -1000) + rng.normal(0, 8, shape)
        label = np.zeros(shape, np.uint8)
        label[(((x - 0.2) ** 2 + (y + 0.1) ** 2) < 0.12 - 0.002 * (i % 5))[..., None].repeat(shape[2], 2)] = 1
        label[(((x + 0.35) ** 2 + (y - 0.3) ** 2) < 0.02)[..., None].repeat(shape[2], 2)] = 2
        nib.save(
            nib.Nifti1Image(volume.astype(np.int16), np.eye(4)), str(raw / "imagesTr" / f"ct_{i:03d}.nii.gz")
        )
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(raw / "labelsTr" / f"ct_{i:03d}.nii.gz"))


def _defs():
    import dagster as dg

    from gmai_pipeline.catalog import load_catalog
    from gmai_pipeline.defs import normalize, sources
    from gmai_pipeline.defs.resources import PipelineStorage

    catalog = load_catalog()  # GMAI_CATALOG_DIR: this run's one entry
    assets = [*sources.build_defs(catalog).assets, *normalize.build_defs(catalog).assets]
    storage = PipelineStorage(
        output_root=os.environ["GMAI_OUTPUT_ROOT"], raw_root=os.environ["GMAI_RAW_ROOT"]
    )
    return dg.Definitions(
        assets=assets,
        resources={"storage": storage},  # the roots run() sets for this run's step processes
        jobs=[
            dg.define_asset_job("scan", selection=dg.AssetSelection.key_prefixes(["source"])),
            dg.define_asset_job("normalize", selection=dg.AssetSelection.key_prefixes(["normalized"])),
        ],
    )


def scan_job():
    return _defs().resolve_job_def("scan")


def normalize_job():
    return _defs().resolve_job_def("normalize")


def run(work: Path, raw_root: Path, partitions: int) -> dict:
    import dagster as dg

    home = work / f"p{partitions}"
    (home / "catalog").mkdir(parents=True)
    (home / "catalog" / f"{NAME}.yaml").write_text(ENTRY.format(partitions=partitions))
    os.environ.update(
        {
            "GMAI_CATALOG_DIR": str(home / "catalog"),
            "GMAI_RAW_ROOT": str(raw_root),
            "GMAI_OUTPUT_ROOT": str(home / "out"),
        }
    )
    (home / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(home / "dagster")) as instance:
        scanned = dg.execute_job(dg.reconstructable(scan_job), instance=instance, run_config=RUN_CONFIG)
        assert scanned.success, "source scan failed"
        load_before = os.getloadavg()
        start = time.perf_counter()
        result = dg.execute_job(dg.reconstructable(normalize_job), instance=instance, run_config=RUN_CONFIG)
        wall = time.perf_counter() - start
        assert result.success, "normalization failed"
        steps = {}
        for event in result.get_asset_materialization_events():
            mat = event.step_materialization_data.materialization
            meta = {
                k: v.value
                for k, v in mat.metadata.items()
                if k in ("seconds", "cpu_seconds", "inputs", "kept")
            }
            steps[mat.asset_key.to_user_string()] = meta
    return {
        "partitions": partitions,
        "wall_s": round(wall, 2),
        "steps": steps,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "out": str(home / "out"),
    }


def _larger_part_share(run: dict, cases: int) -> float:
    parts = [m["inputs"] for key, m in run["steps"].items() if key.rsplit("/", 1)[-1].startswith("p")]
    return max(parts) / cases


def _run_in_child(work: Path, raw_root: Path, partitions: int) -> dict:
    """One configuration in a process of its own, as each `dagster job execute` is: the executor's forkserver
    (one per Python process) then starts with this configuration's environment."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(partitions),
        "--child-work",
        str(work),
        "--child-raw",
        str(raw_root),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the {partitions}-partition run failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    reap()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The whole tree of the configuration (its scan run included): the step processes are forked from a
    # forkserver this process adopts (subreaper), so their CPU time counts here.
    result["process_tree_cpu_s"] = round(
        after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 2
    )
    return result


def _digest(out: Path) -> dict:
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "normalized" / f"{NAME}.parquet", columns=["sample_id", "image", "image_md5"])
    q = pq.read_table(out / "quarantine" / f"{NAME}.parquet").to_pylist()
    return {
        "rows": sorted(zip(*(rows.column(c).to_pylist() for c in rows.column_names), strict=True)),
        "quarantine": sorted((r["source_path"], r["reason"]) for r in q),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 64))
    ap.add_argument("--workdir", default=None, help="where data and outputs go (e.g. /dev/shm)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "partitions-cpu.json"))
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-raw", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run(args.child_work, args.child_raw, args.child)), flush=True)
        return
    adopt_orphans()
    work = Path(tempfile.mkdtemp(prefix="gmai-partitions-", dir=args.workdir))
    try:
        raw_root = work / "raw"
        t = time.perf_counter()
        make_cases(raw_root / NAME, args.cases, tuple(args.shape))
        print(
            f"generated {args.cases} cases of {tuple(args.shape)} in {time.perf_counter() - t:.1f}s",
            flush=True,
        )
        runs = []
        for partitions in (1, 2):
            r = _run_in_child(work, raw_root, partitions)
            print(json.dumps({k: v for k, v in r.items() if k != "out"}), flush=True)
            runs.append(r)
        one, two = (_digest(Path(r["out"])) for r in runs)
        identical = one == two
        assert identical, "the two runs' tables differ"
        ratio = runs[1]["wall_s"] / runs[0]["wall_s"]
        load = max(max(r["load_average_before"][0], r["load_average_after"][0]) for r in runs)
        result = {
            "what": "one 3D dataset normalized as 1 and as 2 partitions, Dagster multiprocess executor, "
            "max_concurrent 2 (bench/partitions.py)",
            "target": "wall time of 2 partitions close to half of 1",
            "machine": {
                "host": socket.gethostname(),
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "cores_shared": load > 2,
                "max_load_average_1min": round(load, 2),
            },
            "data": {
                "cases": args.cases,
                "shape": list(args.shape),
                "dtype": "int16",
                "rows": len(one["rows"]),
            },
            "summary": {
                "wall_1_partition_s": runs[0]["wall_s"],
                "wall_2_partitions_s": runs[1]["wall_s"],
                "ratio_2_over_1": round(ratio, 3),
                # The best two workers can do: the larger part's share of the cases bounds the run.
                "larger_part_share": round(_larger_part_share(runs[1], args.cases), 3),
                "identical_rows_images_quarantine": identical,
            },
            "runs": [{k: v for k, v in r.items() if k != "out"} for r in runs],
        }
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["summary"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
