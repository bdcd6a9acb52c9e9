"""Scale benchmark: N synthetic samples through decontamination, template generation and the release.

    .venv/bin/python bench/scale.py [--sizes 100000 1000000] [--work DIR] [--out bench/results/scale-cpu.json]

For each size, a synthetic output root (`tests/release_fixtures.py`'s `write_scale_normalized`: three
sources in GMAI-VL-5.5M's mix, each sample its own image path hard-linked to one of 512 tiny PNGs per source,
and its own label variant and box, so nearly every sample makes its own requests) goes through the same
domain functions the assets call, one stage per subprocess:

    annotations -> benchmark_hashes -> decontaminated -> generate (captions, vqa, translations, every
    partition) -> generate_rerun -> release_records -> instruction_shards -> release_annotations (+ metas)
    -> release_images -> mixtures (stage I, II, III) -> dataset_report

Each stage runs in a child of a small measuring process, which reports the child's wall time, CPU time and
peak RSS (`resource.getrusage(RUSAGE_CHILDREN)`: the largest of the stage and any worker it started). The
`imports` stage only imports what the stages import: the floor under every RSS figure. Generation uses the
template backend's answers behind the response cache (a backend named `bench-template`, so answers are
cached as a real endpoint's would be), which counts what it is asked: the rerun must ask nothing.

Distinct images are few (3 x 512), so decontamination's image hashing is a fixed cost here (its rate is
bench/decontaminate.py's) and its memory, which follows the distinct images, is not what this measures;
what scales is every row, record, request and file. Bulky outputs a later stage does not read (shard tars, annotation files, the
mixtures) are deleted once their stage is measured (unless --keep), so a 1M run stays within ~15 GB.
Stage III's mixture uses assets/mixtures.yaml without the model-confidence rule (that needs the stage II
model, on a GPU).
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # synthetic inputs: the tests' fixture builder
SIZES = (100_000, 1_000_000)
STAGES = (
    "imports",
    "annotations",
    "benchmark_hashes",
    "decontaminated",
    "generate",
    "generate_rerun",
    "release_records",
    "instruction_shards",
    "release_annotations",
    "release_images",
    "stage1_mix",
    "stage2_mix",
    "stage3_mix",
    "dataset_report",
)
# What each stage writes that no later stage reads: measured, then deleted (unless --keep).
BULKY = {
    "instruction_shards": ("release/shards/*.tar",),
    "release_annotations": ("release/annotations/*.jsonl", "release/llava.json"),
    **{
        f"stage{k}_mix": (
            f"release/mixtures/stage{k}.jsonl",
            f"release/mixtures/stage{k}.llava.json",
            f"release/mixtures/stage{k}/*.jsonl",
        )
        for k in (1, 2, 3)
    },
}
SHARD_TARGET_MB = 64
TIME_LIMIT = 10.5  # 1M may cost at most this many times 100k
RSS_LIMIT = 1.2


# --- the stages (each runs in its own process) ----------------------------------------------------------


def _layout(root: Path):
    from gmai_pipeline.storage import OutputLayout

    return OutputLayout(root)


def _backend():
    from gmai_pipeline.generation.backends.template import TemplateBackend, phrase_table

    class BenchTemplate(TemplateBackend):
        """The template's answers, as if from an endpoint: cached, and counted as requests."""

        name = "bench-template"

        def run(self, requests):
            self.requests_sent += len(requests)
            return super().run(requests)

    return BenchTemplate(phrase_table()["version"])


def stage_imports(root: Path, n: int) -> dict:
    import gmai_pipeline.decontaminate  # noqa: F401
    import gmai_pipeline.generation.pipeline  # noqa: F401
    import gmai_pipeline.release.report  # noqa: F401
    import gmai_pipeline.release.stage_mix  # noqa: F401

    return {}


def stage_setup(root: Path, n: int) -> dict:
    from release_fixtures import SOURCES, pool_image, write_scale_normalized

    layout = _layout(root)
    counts = write_scale_normalized(layout, n)
    # A benchmark (SLAKE's layout) holding one pool image: every sample linked to it (and its volume) must go.
    bench = root / "benchmarks" / "SLAKE"
    (bench / "imgs" / "xmlab0").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pool_image(layout, SOURCES[0], 7)[0], bench / "imgs" / "xmlab0" / "source.png")
    items = [{"qid": 1, "img_id": 0, "img_name": "xmlab0/source.png", "question": "?", "answer": "a"}]
    (bench / "test.json").write_text(json.dumps(items))
    return {"rows": counts}


def stage_annotations(root: Path, n: int) -> dict:
    from release_fixtures import SCALE_MIX

    from gmai_pipeline import decontaminate as dc

    counts = dc.union_normalized(_layout(root), [s.name for s, _ in SCALE_MIX])
    return {"rows": sum(counts.values())}


def stage_benchmark_hashes(root: Path, n: int) -> dict:
    from gmai_pipeline import decontaminate as dc

    report = dc.hash_benchmarks(root / "benchmarks", _layout(root))
    return {"images": report.images}


def stage_decontaminated(root: Path, n: int) -> dict:
    from gmai_pipeline import decontaminate as dc

    layout = _layout(root)
    run = dc.decontaminate(layout)
    ov = dc.overlap(layout)
    return {
        "kept": run.result.kept,
        "removed": run.result.removed,
        "volumes_removed": run.result.volumes_removed,
        "images_hashed": run.hash_counts["computed"],
        "overlap_ok": ov.ok,
    }


def _generate(root: Path) -> dict:
    from gmai_pipeline.generation import pipeline
    from gmai_pipeline.generation.cache import ResponseCache
    from gmai_pipeline.partitions import SHARD_KEYS

    layout = _layout(root)
    cfg = pipeline.LLMConfig()
    backend = _backend()
    totals = {"inputs": 0, "generated": 0, "quarantined": 0, "requests_sent": 0, "cache_hits": 0}
    for asset in ("captions", "vqa", "translations"):
        for key in SHARD_KEYS:
            if asset == "translations":
                report = pipeline.translate_partition(key, layout, cfg, backend, {})
            else:
                report = pipeline.generate_partition(asset, key, layout, cfg, backend, {})
            for k in totals:
                totals[k] += getattr(report, k)
    with ResponseCache(layout.llm_cache) as cache:
        totals["cache_entries"] = len(cache)
        totals["cache_files"] = sorted(p.name for p in cache.files())
    return totals


def stage_generate(root: Path, n: int) -> dict:
    return _generate(root)


def stage_generate_rerun(root: Path, n: int) -> dict:
    return _generate(root)


def stage_release_records(root: Path, n: int) -> dict:
    from gmai_pipeline.release.records import write_release_records

    stats = write_release_records(_layout(root))
    return {"inputs": stats.inputs, "released": stats.released, "rejected": dict(stats.rejected)}


def _records(root: Path):
    from gmai_pipeline.release.records import ReleaseRecords

    return ReleaseRecords(_layout(root))


def stage_instruction_shards(root: Path, n: int) -> dict:
    from gmai_pipeline.release.shards import write_shards

    layout = _layout(root)
    result = write_shards(_records(root), layout.release / "shards", SHARD_TARGET_MB * 1_000_000)
    return {"shards": len(result.shards), "samples": result.samples, "bytes": result.bytes}


def stage_release_annotations(root: Path, n: int) -> dict:
    from gmai_pipeline.release.annotations import write_annotations
    from gmai_pipeline.release.trainer_metas import write_release_metas

    layout = _layout(root)
    subsets = write_annotations(_records(root), layout.release)
    write_release_metas(layout.release, subsets)
    return {"subsets": subsets}


def stage_release_images(root: Path, n: int) -> dict:
    from gmai_pipeline.release.images import sync_images

    result = sync_images(_records(root), _layout(root).release / "images")
    return {"linked": result.linked, "copied": result.copied, "kept": result.kept}


def _mixtures_file(root: Path) -> Path:
    import yaml

    from gmai_pipeline.release.mixtures import DEFAULT_MIXTURES_FILE

    raw = yaml.safe_load(DEFAULT_MIXTURES_FILE.read_text())
    for comp in raw["stages"]["stage3"]["components"].values():
        if comp.get("filter"):
            comp["filter"].pop("model_confidence", None)
        if comp.get("text_files"):
            comp["text_files"] = [str(DEFAULT_MIXTURES_FILE.parent / f) for f in comp["text_files"]]
    path = root / "mixtures.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _mix(root: Path, stage: str) -> dict:
    from gmai_pipeline.release.mixtures import load_mixtures
    from gmai_pipeline.release.stage_mix import write_stage_mixture

    layout = _layout(root)
    config, path = load_mixtures(_mixtures_file(root))
    mix = write_stage_mixture(
        stage, _records(root), config, path, layout.mixtures, layout.release, layout.release / "images"
    )
    return {"samples": mix.meta["samples"]}


def stage_stage1_mix(root: Path, n: int) -> dict:
    return _mix(root, "stage1")


def stage_stage2_mix(root: Path, n: int) -> dict:
    return _mix(root, "stage2")


def stage_stage3_mix(root: Path, n: int) -> dict:
    return _mix(root, "stage3")


def stage_dataset_report(root: Path, n: int) -> dict:
    from gmai_pipeline.release.report import build_report, dataset_card, write_card
    from gmai_pipeline.release.shards import read_index

    layout = _layout(root)
    report = build_report(_records(root), {}, layout.decontamination_report, layout.release / "report")
    card = dataset_card(
        report, read_index(layout.release / "shards"), report.subset_counts, layout.release, report.features
    )
    write_card(card, layout.release / "README.md")
    return {"records": report.totals["records"], "images": report.totals["images"]}


# --- measuring ------------------------------------------------------------------------------------------


def measure(stage: str, root: Path, n: int) -> dict:
    """Run one stage in a child process; its wall time, CPU time and peak RSS, and what it reported."""
    result_file = root / f".bench-{stage}.json"
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "_stage", stage, str(root), str(n)], check=True)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = json.loads(result_file.read_text())
    result_file.unlink()
    return {
        "stage": stage,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "load_1min_before": round(load_before[0], 2),
        **out,
    }


def _in_child(kind: str, *args: str) -> dict:
    """The measuring process: one per stage, so RUSAGE_CHILDREN is that stage's alone."""
    proc = subprocess.run(
        [sys.executable, __file__, kind, *args], check=True, stdout=subprocess.PIPE, text=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_size(n: int, work: Path, keep: bool) -> dict:
    root = work / f"n{n}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    print(f"--- {n:,} samples under {root}", flush=True)
    setup = _in_child("_measure", "setup", str(root), str(n))
    print(f"setup: {setup['wall_s']} s", flush=True)
    stages = []
    for stage in STAGES:
        got = _in_child("_measure", stage, str(root), str(n))
        bulky = [p for pattern in BULKY.get(stage, ()) for p in root.glob(pattern)]
        got["bulky_output_mb"] = round(sum(p.stat().st_size for p in bulky) / 1e6, 1)
        if not keep:
            for path in bulky:
                path.unlink()
        print(f"{stage}: {got['wall_s']} s, {got['peak_rss_mb']} MB", flush=True)
        stages.append(got)
    disk = subprocess.run(["du", "-sm", str(root)], capture_output=True, text=True).stdout.split()[0]
    if not keep:
        shutil.rmtree(root)
    return {"samples": n, "setup": setup, "stages": stages, "disk_mb": int(disk)}


def compare(runs: list[dict]) -> dict:
    """1M / 100k per stage and in total (time: wall; memory: peak RSS)."""
    small, big = runs[0], runs[-1]
    factor = big["samples"] / small["samples"]
    per = {}
    for a, b in zip(small["stages"], big["stages"], strict=True):
        per[a["stage"]] = {
            "wall_ratio": round(b["wall_s"] / a["wall_s"], 2) if a["wall_s"] else None,
            "cpu_ratio": round(b["cpu_s"] / a["cpu_s"], 2) if a["cpu_s"] else None,
            "rss_ratio": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
        }
    total_small = sum(s["wall_s"] for s in small["stages"])
    total_big = sum(s["wall_s"] for s in big["stages"])
    cpu_small = sum(s["cpu_s"] for s in small["stages"])
    cpu_big = sum(s["cpu_s"] for s in big["stages"])
    rss_max = max(v["rss_ratio"] for v in per.values())
    return {
        "factor": factor,
        "per_stage": per,
        "total_wall_ratio": round(total_big / total_small, 2),
        "total_cpu_ratio": round(cpu_big / cpu_small, 2),
        "max_rss_ratio": rss_max,
        "time_within_limit": total_big / total_small <= TIME_LIMIT * factor / 10,
        "rss_within_limit": rss_max <= RSS_LIMIT,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_stage":
        stage, root, n = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
        out = globals()[f"stage_{stage}"](root, n)
        (root / f".bench-{stage}.json").write_text(json.dumps(out))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":
        print(json.dumps(measure(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".scale-work")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale-cpu.json")
    parser.add_argument("--keep", action="store_true", help="keep each size's output root")
    args = parser.parse_args()
    os.environ["GMAI_GENERATION_SHARDS"] = "8"
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    disk = subprocess.run(["df", "-h", str(args.work.parent)], capture_output=True, text=True).stdout
    t0 = time.time()
    runs = [run_size(n, args.work, args.keep) for n in args.sizes]
    result = {
        "machine": f"{platform.machine()} {platform.system()} python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs",
        "uptime_before": uptime,
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "df_before": disk.strip().splitlines()[-1],
        "generation_shards": 8,
        "shard_target_mb": SHARD_TARGET_MB,
        "seconds_total": round(time.time() - t0, 1),
        "runs": runs,
        **({"comparison": compare(runs)} if len(runs) > 1 else {}),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result.get("comparison", {}), indent=1))


if __name__ == "__main__":
    main()
