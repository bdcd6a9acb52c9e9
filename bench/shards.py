"""Shard write throughput next to the raw sequential write speed of the same disk, measured in the same run.

Each repeat runs three writers in a rotating order: `write_shards` on a synthetic release (noise PNGs,
one caption record each; planning, image reads, tar framing, SHA-256 and fsync all included), and
plain `os.write` of one 8 MiB buffer into the same number of files of the same sizes, each fsynced once
like a shard, both through the page cache ("buffered") and bypassing it ("direct", O_DIRECT, as the
shard writer does where it can). Raw speed of a repeat = the faster of the two plain writers, so the
ratio is against the best the disk does, not the slower mode. Ratio = median shard MB/s / median raw
MB/s; acceptance >= 0.7. Writes bench/results/shards-cpu.json (or --out).

    .venv/bin/python bench/shards.py [--total-mb 1024] [--shard-mb 64] [--image-kb 256] [--repeats 7] [--dir data]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the synthetic release is the tests' fixture builder

from release_fixtures import SOURCES, row, write_generated, write_image  # noqa: E402

from gmai_pipeline.release.records import load_records  # noqa: E402
from gmai_pipeline.release.shards import default_workers, open_for_shard, write_shards  # noqa: E402
from gmai_pipeline.storage import OutputLayout  # noqa: E402

BUFFER = 8 << 20


def build_release(root: Path, total_bytes: int, image_bytes: int) -> list:
    layout = OutputLayout(root)
    side = max(8, int((image_bytes / 3) ** 0.5))
    n = max(1, total_bytes // (side * side * 3))
    rows = []
    for i in range(n):
        source = SOURCES[i % len(SOURCES)]
        image, md5 = write_image(layout, source, i, (side, side))
        answer = (
            f"This image is a {source.modality} image from {source.department} with findings of {source.label}. "
            * 4
        )
        rows.append(
            row(source, image, md5, (side, side), "caption", "en", "Describe the image in detail.", answer)
        )
    write_generated(layout, rows)
    return load_records(layout).rows


def raw_write(folder: Path, sizes: list[int], direct: bool) -> float:
    """Seconds to write files of `sizes` with large plain writes, one fsync per file (the shard policy).

    direct: O_DIRECT from a page-aligned buffer; each file is cut to whole 4 KiB blocks (at most 4 KiB less).
    """
    folder.mkdir(parents=True)
    buf = mmap.mmap(-1, BUFFER)  # page aligned, as O_DIRECT needs
    buf.write(os.urandom(BUFFER))
    view = memoryview(buf)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    t0 = time.perf_counter()
    for i, size in enumerate(sizes):
        fd = os.open(folder / f"raw-{i:06d}.bin", flags, 0o644)
        left = size - size % 4096 if direct else size
        while left:
            left -= os.write(fd, view[: min(left, BUFFER)])
        os.fsync(fd)
        os.close(fd)
    seconds = time.perf_counter() - t0
    view.release()
    buf.close()
    return seconds


def direct_supported(folder: Path) -> bool:
    """Whether this filesystem takes O_DIRECT, asked the way the shard writer asks."""
    fd, direct = open_for_shard(folder / "probe-direct", direct=True)
    os.close(fd)
    (folder / "probe-direct").unlink()
    return direct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--total-mb", type=float, default=1024)
    ap.add_argument("--shard-mb", type=float, default=64)
    ap.add_argument("--image-kb", type=float, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("GMAI_OUTPUT_ROOT", ROOT / "data")))
    ap.add_argument(
        "--workers", type=int, default=None, help="shards written at once (default: write_shards default)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shards-cpu.json")
    args = ap.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-shards-", dir=args.dir))
    target = int(args.shard_mb * 1e6)
    try:
        rows = build_release(work / "out", int(args.total_mb * 1e6), int(args.image_kb * 1e3))
        modes = ["buffered", "direct"] if direct_supported(work) else ["buffered"]
        warm = write_shards(rows, work / "warm" / "shards", target, workers=args.workers)  # untimed
        sizes = [e["bytes"] for e in warm.shards]
        shutil.rmtree(work / "warm")
        writers = ["shards", *modes]
        runs = []
        for rep in range(args.repeats):
            order = writers[rep % len(writers) :] + writers[: rep % len(writers)]  # each goes first in turn
            run: dict = {"order": order}
            for what in order:
                c0 = time.process_time()  # CPU of every thread of this process: shows CPU- vs disk-bound
                if what == "shards":
                    t0 = time.perf_counter()
                    result = write_shards(rows, work / f"s{rep}" / "shards", target, workers=args.workers)
                    seconds = time.perf_counter() - t0
                    run["shard_mb_s"] = result.bytes / 1e6 / seconds
                    run["shard_cpu_s_per_gb"] = (time.process_time() - c0) / (result.bytes / 1e9)
                    run["shard_bytes"] = result.bytes
                    run["shards"] = len(result.shards)
                    shutil.rmtree(work / f"s{rep}")
                else:
                    seconds = raw_write(work / f"r{rep}", sizes, direct=what == "direct")
                    run[f"raw_{what}_mb_s"] = sum(sizes) / 1e6 / seconds
                    run[f"raw_{what}_cpu_s_per_gb"] = (time.process_time() - c0) / (sum(sizes) / 1e9)
                    shutil.rmtree(work / f"r{rep}")
            run["raw_mb_s"] = max(run[f"raw_{m}_mb_s"] for m in modes)
            run["ratio"] = run["shard_mb_s"] / run["raw_mb_s"]
            runs.append(run)
            raw_text = ", ".join(f"raw {m} {run[f'raw_{m}_mb_s']:.0f} MB/s" for m in modes)
            print(f"repeat {rep}: shards {run['shard_mb_s']:.0f} MB/s, {raw_text}, ratio {run['ratio']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    shard = statistics.median(r["shard_mb_s"] for r in runs)
    raw = statistics.median(r["raw_mb_s"] for r in runs)
    summary = {
        "bench": "shards",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "disk_dir": str(args.dir.resolve()),
        },
        "params": {
            "total_mb": args.total_mb,
            "shard_mb": args.shard_mb,
            "image_kb": args.image_kb,
            "repeats": args.repeats,
            "samples": len(rows),
            "workers": args.workers or default_workers(),
            "fsync": "once per file, all writers",
            "raw_modes": modes,
            "write_buffer_bytes": BUFFER,
        },
        "runs": runs,
        "shard_mb_s_median": round(shard, 1),
        "raw_mb_s_median": round(raw, 1),
        **{
            f"raw_{m}_mb_s_median": round(statistics.median(r[f"raw_{m}_mb_s"] for r in runs), 1)
            for m in modes
        },
        "ratio": round(shard / raw, 3),
        "ratio_of_repeats_median": round(statistics.median(r["ratio"] for r in runs), 3),
        "ratio_of_repeats_min": round(min(r["ratio"] for r in runs), 3),
        "shard_cpu_s_per_gb_median": round(statistics.median(r["shard_cpu_s_per_gb"] for r in runs), 3),
        **{
            f"raw_{m}_cpu_s_per_gb_median": round(
                statistics.median(r[f"raw_{m}_cpu_s_per_gb"] for r in runs), 3
            )
            for m in modes
        },
        "load_average_1m": round(os.getloadavg()[0], 2),
        "acceptance": 0.7,
        "passed": shard / raw >= 0.7,
        "note": "raw speed of a repeat is the faster of buffered and direct plain writes; images are read "
        "from the page cache (written just before); raw writes reuse one random buffer; the machine is "
        "shared, so writers rotate which goes first and medians are reported",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("shard_mb_s_median", "raw_mb_s_median", "ratio", "passed")}))


if __name__ == "__main__":
    main()
