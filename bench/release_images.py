"""`release_images` alone at two sizes: peak RSS must stay flat, time must grow no faster than the images.

    .venv/bin/python bench/release_images.py [--sizes 100000 1000000] [--work DIR] [--out FILE]

`bench/scale.py` measures this stage after the whole pipeline (about 50 minutes for 100k and 1M samples);
this builds only what the stage reads: a `release_records.parquet` (GENERATED_SCHEMA, sorted by id, 2.5
records an image as captions, VQA and half of them translated) and a store of one image path per
sample, 1,000 to a folder, each a hard link to one of n / 8,192 small files (a million paths cost
directory entries, not disk; few enough links a file that the release's own stay under ext4's 65,000). For each size `sync_images` runs twice, each time in its own process: the first
run links every image into `release/images/`, the rerun finds them all in place. Each run reports its
wall time, CPU time and peak RSS (`ru_maxrss` of that process, imports included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SIZES = (100_000, 1_000_000)
RSS_LIMIT = 1.2
CONVERSATION = json.dumps(
    [{"from": "human", "value": "<image>\nWhat does this image show?"}, {"from": "gpt", "value": "A fundus."}]
)


def setup(root: Path, n: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gmai_pipeline.schemas import GENERATED_SCHEMA
    from gmai_pipeline.storage import OutputLayout

    layout = OutputLayout(root)
    pool = root / "pool"
    pool.mkdir(parents=True)
    pooled = []
    for k in range(max(16, n // 8192)):
        (pool / f"{k}.png").write_bytes(os.urandom(256))
        pooled.append(pool / f"{k}.png")
    folder = "images/2d/cls/fundus/demo_fundus"
    layout.release_records.parent.mkdir(parents=True, exist_ok=True)
    records, rows = 0, []
    with pq.ParquetWriter(layout.release_records, GENERATED_SCHEMA) as writer:
        for i in range(n):
            sub, name = f"{i // 1000:04d}", f"img{i:07d}.png"
            image = f"{folder}/{sub}/{name}"
            if i % 1000 == 0:
                (root / folder / sub).mkdir(parents=True)
            os.link(pooled[i % len(pooled)], root / image)
            sample = f"2d#cls#fundus#demo_fundus#{sub}#{name}"
            for kind, language in (("caption", "en"), ("vqa", "en"), ("vqa", "zh"))[: 2 + i % 2]:
                rid = f"{sample}#{kind}" + ("#zh" if language == "zh" else "")
                rows.append(_record(rid, sample, image, kind, language))
            if len(rows) >= 16_384:
                writer.write_table(pa.Table.from_pylist(rows, schema=GENERATED_SCHEMA))
                records, rows = records + len(rows), []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=GENERATED_SCHEMA))
            records += len(rows)
    return {"images": n, "records": records}


def _record(rid: str, sample: str, image: str, kind: str, language: str) -> dict:
    return {
        "id": rid,
        "sample_id": sample,
        "dataset": "demo_fundus",
        "image": image,
        "image_md5": "0" * 32,
        "width": 64,
        "height": 64,
        "modality": "Fundus",
        "label": "normal",
        "department": "Ophthalmology",
        "task_type": "2d_cls",
        "clinical_task": "screening",
        "bbox": None,
        "kind": kind,
        "language": language,
        "conversations": CONVERSATION,
        "generator": "template:bench",
        "prompt_version": "v1",
        "request_sha256": "0" * 64,
        "label_mentioned": True,
        "confidence": None,
        "source_record_id": None,
    }


def sync(root: Path) -> dict:
    from gmai_pipeline.release.images import sync_images
    from gmai_pipeline.release.records import ReleaseRecords
    from gmai_pipeline.storage import OutputLayout

    t0, c0 = time.perf_counter(), time.process_time()
    result = sync_images(ReleaseRecords(OutputLayout(root)), root / "release" / "images")
    return {
        "wall_s": round(time.perf_counter() - t0, 2),
        "cpu_s": round(time.process_time() - c0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "linked": result.linked,
        "copied": result.copied,
        "kept": result.kept,
        "removed": result.removed_count,
    }


def _child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_size(n: int, work: Path) -> dict:
    root = work / f"n{n}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    made = _child("_setup", str(root), str(n))
    first = _child("_sync", str(root))
    rerun = _child("_sync", str(root))
    print(f"{n:,} images: first {first}, rerun {rerun}", flush=True)
    shutil.rmtree(root)
    return {**made, "first": first, "rerun": rerun}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_setup":
        print(json.dumps(setup(Path(sys.argv[2]), int(sys.argv[3]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_sync":
        print(json.dumps(sync(Path(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=list(SIZES))
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".release-images-work")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "release_images-cpu.json")
    args = parser.parse_args()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    small, big = (run_size(n, args.work) for n in args.sizes)
    factor = big["images"] / small["images"]
    comparison = {
        run: {
            "rss_ratio": round(big[run]["peak_rss_mb"] / small[run]["peak_rss_mb"], 3),
            "cpu_ratio": round(big[run]["cpu_s"] / small[run]["cpu_s"], 2),
            "wall_ratio": round(big[run]["wall_s"] / small[run]["wall_s"], 2),
        }
        for run in ("first", "rerun")
    }
    result = {
        "machine": f"{platform.machine()} {platform.system()} python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs",
        "uptime_before": uptime,
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "runs": [small, big],
        "factor": factor,
        "comparison": comparison,
        "rss_within_limit": all(c["rss_ratio"] <= RSS_LIMIT for c in comparison.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(comparison, indent=1))


if __name__ == "__main__":
    main()
