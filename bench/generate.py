"""Generation benchmark: online throughput against a fixed-latency OpenAI-compatible server, the cost of
re-running a finished partition, and the request/token/cost estimate for 5.5M samples.

    .venv/bin/python bench/generate.py [--latency 0.05] [--out bench/results/generate-cpu.json]

Throughput is measured through the real `openai` SDK (AsyncOpenAI, our bounded semaphore) against the
local fake server (tests/fake_openai.py) answering after `latency` seconds; the bound is
concurrency / latency. The estimate uses prompt lengths rendered from our own templates
(~4 characters per token), the image-token figures and prices of resources/prices.yaml (unverified).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai import FakeOpenAI, sample_ids_in, write_fixture  # noqa: E402

from gmai_pipeline.generation import pipeline, prompts  # noqa: E402
from gmai_pipeline.generation.backends.openai_online import OpenAIOnline  # noqa: E402
from gmai_pipeline.generation.cost import load_prices, price_of  # noqa: E402
from gmai_pipeline.generation.requests import GenRequest, ImageRef  # noqa: E402
from gmai_pipeline.storage import OutputLayout  # noqa: E402

LEVELS = (1, 4, 16, 64)


class ServerProcess:
    """The fake server in its own process, so the client measured here does not share a GIL with it."""

    def __init__(self, base_url: str):
        self.base_url = base_url

    @property
    def counts(self) -> dict[str, int]:
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/_fake/counts") as response:
            return {"chat": 0} | json.loads(response.read())


@contextlib.contextmanager
def server_process(latency: float) -> Iterator[ServerProcess]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_openai.py"), str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield ServerProcess(proc.stdout.readline().strip())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def throughput(fake: ServerProcess, image: ImageRef, concurrency: int, latency: float) -> dict:
    n = max(60, 16 * concurrency)
    backend = OpenAIOnline(
        "gpt-4o-2024-08-06", fake.base_url, "bench", max_in_flight=concurrency, timeout_s=30, max_retries=2
    )
    requests = [
        GenRequest(
            "caption", backend.model, "bench", f"bench c={concurrency} #{i}", {"max_tokens": 64}, image=image
        )
        for i in range(n)
    ]
    before = fake.counts["chat"]
    t0, c0 = time.perf_counter(), time.process_time()
    results = backend.run(requests)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert all(not hasattr(r, "reason") for r in results.values()), "a bench request failed"
    rps = n / seconds
    bound = concurrency / latency
    return {
        "concurrency": concurrency,
        "requests": n,
        "server_requests": fake.counts["chat"] - before,
        "seconds": round(seconds, 3),
        "requests_per_s": round(rps, 1),
        "bound_requests_per_s": round(bound, 1),
        "fraction_of_bound": round(rps / bound, 3),
        "client_cpu_ms_per_request": round(1000 * cpu / n, 2),
    }


def rerun_cost(fake: FakeOpenAI | ServerProcess, n_rows: int = 200) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ids = sample_ids_in("000", n_rows, "bench")
        write_fixture(
            tmp,
            [
                {
                    "sample_id": s,
                    "dataset": "bench",
                    "label": f"label{i % 7}",
                    "bbox": [1, 1, 20, 20] if i % 3 == 0 else None,
                }
                for i, s in enumerate(ids)
            ],
        )
        layout = OutputLayout(Path(tmp))
        cfg = pipeline.LLMConfig(
            backend="openai", model="gpt-4o-2024-08-06", base_url=fake.base_url, max_in_flight=16
        )
        runs = []
        for attempt in ("first", "rerun"):
            before = fake.counts["chat"]
            t0 = time.perf_counter()
            report = pipeline.generate_partition(
                "captions", "000", layout, cfg, pipeline.make_backend(cfg, layout, "bench"), {"bench": True}
            )
            runs.append(
                {
                    "run": attempt,
                    "rows": report.inputs,
                    "generated": report.generated,
                    "requests_sent": report.requests_sent,
                    "server_requests": fake.counts["chat"] - before,
                    "cache_hits": report.cache_hits,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            )
        return {"partition_rows": n_rows, "max_in_flight": 16, "runs": runs}


def prompt_tokens() -> dict[str, int]:
    """Text tokens of our prompts for typical fields (~4 characters per token, no tokenizer offline)."""
    fields = {
        "modality": "X-Ray",
        "department": "Pulmonary Medicine",
        "label": "Pneumothorax",
        "clinical_task": "Disease Diagnosis",
        "bbox": [179, 164, 500, 434],
        "width": 1024,
        "height": 1024,
        "region": "",
    }
    out = {task: len(prompts.render(task, fields)[1]) // 4 for task in ("caption", "region_caption", "vqa")}
    out["translate"] = (
        len(prompts.render("translate", {"label": "Pneumothorax", "n_turns": 2, "turns": ""})[1]) // 4
    )
    return out


def estimate(samples: int = 5_500_000) -> dict:
    """Requests, tokens and cost for `samples` annotation rows (assumptions listed in the output)."""
    p = prompt_tokens()
    prices = load_prices()
    a = {
        "samples": samples,
        "requests_per_sample": "1 caption or region caption + 1 VQA + 0.3 x 2 translations = 2.6",
        "retry_rate_invalid": 0.02,
        "caption_text_in": round((p["caption"] + p["region_caption"]) / 2),
        "vqa_text_in": p["vqa"],
        "caption_out": 200,  # the paper's region-caption example is ~150 words
        "vqa_out": 150,  # 2-3 pairs
        "translate_in": p["translate"] + 190,  # prompt + the English turns (avg of caption and VQA)
        "translate_out": 230,  # Chinese ~1.3x the English tokens
        "image_detail": "low",
        "tokens_per_char": 0.25,
    }
    gen_requests = 2 * samples * (1 + a["retry_rate_invalid"])
    tr_requests = 0.3 * 2 * samples * (1 + a["retry_rate_invalid"])
    out = {"assumptions": a, "requests": round(gen_requests + tr_requests), "models": {}}
    for model in ("gpt-4o", "gpt-4o-mini"):
        entry = price_of(model, prices)
        image = entry["image_tokens_low_detail"]
        tin = gen_requests / 2 * (a["caption_text_in"] + image) + gen_requests / 2 * (
            a["vqa_text_in"] + image
        )
        tin += tr_requests * a["translate_in"]
        tout = gen_requests / 2 * (a["caption_out"] + a["vqa_out"]) + tr_requests * a["translate_out"]
        online = tin / 1e6 * entry["input_per_1m"] + tout / 1e6 * entry["output_per_1m"]
        out["models"][model] = {
            "image_tokens_per_request": image,
            "tokens_in": round(tin),
            "tokens_out": round(tout),
            "usd_online": round(online),
            "usd_batch": round(online * (1 - prices["batch_discount"])),
        }
    out["prices"] = "resources/prices.yaml (" + prices.get("status", "") + ")"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "generate-cpu.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, server_process(args.latency) as fake:
        write_fixture(tmp, [{"sample_id": "bench", "dataset": "bench", "label": "x", "bbox": None}])
        image = ImageRef.from_file(next(Path(tmp).rglob("*.png")))
        throughput(fake, image, 4, args.latency)  # warm-up: the SDK's lazy imports and first connection
        levels = [throughput(fake, image, c, args.latency) for c in LEVELS]
        rerun = rerun_cost(fake)
    result = {
        "machine": f"{platform.machine()} {platform.system()} python {platform.python_version()}",
        "server_latency_s": args.latency,
        "throughput": levels,
        "rerun_finished_partition": rerun,
        "estimate_5p5m": estimate(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for lv in levels:
        print(
            f"concurrency {lv['concurrency']:>3}: {lv['requests_per_s']:>7} req/s (bound {lv['bound_requests_per_s']}, "
            f"{lv['fraction_of_bound']:.0%}), client CPU {lv['client_cpu_ms_per_request']} ms/request"
        )
    print("rerun:", rerun["runs"][-1])
    print(json.dumps(result["estimate_5p5m"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
