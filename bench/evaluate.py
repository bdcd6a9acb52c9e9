"""Evaluation throughput: our batched evaluation against a plain one-question-at-a-time `generate` loop.

Same model, same questions (the demo's seven benchmarks in their real formats, repeated), same greedy
decoding and `max_new_tokens`. "Batched" is the evaluation job's own path (`training_jobs.evaluate.answer_dataset`:
questions sorted by prompt length, batches of `--batch-size`, left padding, one `generate` call per
batch with the KV cache); "loop" calls `generate` once per question (batch 1, KV cache too: the plain
Hugging Face loop). Random-init models never stop early, so both generate exactly `max_new_tokens` per
question. Repeats alternate the order; figures are medians. Also reports how many answers are identical.

Shapes: `tiny` is the demo's model (CLIP 336 px -> 576 image tokens, a 2-layer 64-wide Llama); `small`
a wider, deeper decoder (4 layers, 256 wide, 2k vocabulary) on 112 px images (64 image tokens), where
decoding rather than the image prefill dominates. (On a CPU, prefill is compute-bound and batching does not
shrink it; with 576 image tokens and a real decoder a CPU run takes hours, which is what the GPU is for.) Writes bench/results/evaluate-<device>.json (or --out).

    .venv/bin/python bench/evaluate.py [--shapes tiny small] [--repeats 3] [--batch-size 8] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gmai_pipeline.demo import ensure_demo_benchmarks  # noqa: E402
from gmai_pipeline.evaluation.questions import iter_questions, write_question_set  # noqa: E402
from training_jobs.evaluate import answer_dataset  # noqa: E402
from training_jobs.infer import Generator  # noqa: E402
from training_jobs.tiny import build_tiny, tiny_configs, train_tokenizer  # noqa: E402


def build_model(folder: Path, shape: str, texts: list[str]) -> Path:
    if shape == "tiny":
        return build_tiny(folder, texts, image_size=336)
    from transformers import CLIPVisionModel, LlamaForCausalLM

    from training_jobs.model import VL_CONFIG

    tok = train_tokenizer(texts, vocab_size=2048)
    vision, llm = tiny_configs(len(tok), image_size=112)  # 64 image tokens: decoding, not prefill, dominates
    llm.hidden_size, llm.intermediate_size, llm.num_hidden_layers = 256, 704, 4
    llm.num_attention_heads, llm.num_key_value_heads = 8, 4
    torch.manual_seed(0)
    CLIPVisionModel(vision).save_pretrained(folder / "vision")
    LlamaForCausalLM(llm).save_pretrained(folder / "llm")
    tok.save_pretrained(folder / "tokenizer")
    (folder / VL_CONFIG).write_text(json.dumps({"vision_feature_layer": -2, "template": "internlm2"}))
    return folder


def run_batched(
    gen: Generator, questions: list[dict], work: Path, batch: int, max_new: int
) -> tuple[float, dict]:
    part = work / "batched.rank0.jsonl"
    part.unlink(missing_ok=True)
    t0 = time.perf_counter()
    answer_dataset(gen, questions, part, batch, max_new, lambda _: None)
    dt = time.perf_counter() - t0
    out = {
        json.loads(line)["index"]: json.loads(line)["prediction"] for line in part.read_text().splitlines()
    }
    return dt, out


def run_loop(gen: Generator, questions: list[dict], max_new: int) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = {q["index"]: gen.generate([q["prompt"]], [q["images"]], max_new)[0] for q in questions}
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--copies", type=int, default=2, help="times the demo question set is repeated")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        qs = write_question_set(ensure_demo_benchmarks(tmp / "bench"), tmp / "q")
        base = [
            dict(q, index=f"{name}:{q['index']}")
            for name in qs.datasets
            for q in iter_questions(tmp / "q", name)
        ]
        questions = [dict(q, index=f"{k}:{q['index']}") for k in range(args.copies) for q in base]
        texts = [q["prompt"] for q in base] * 4
        results = {}
        for shape in args.shapes:
            gen = Generator(build_model(tmp / f"model-{shape}", shape, texts), args.device)
            runs = []
            for r in range(args.repeats):
                order = ("batched", "loop") if r % 2 == 0 else ("loop", "batched")
                run = {"order": list(order)}
                for which in order:
                    if which == "batched":
                        dt, got = run_batched(gen, questions, tmp, args.batch_size, args.max_new_tokens)
                    else:
                        dt, got = run_loop(gen, questions, args.max_new_tokens)
                    run[f"{which}_s"] = round(dt, 3)
                    run[f"{which}_questions_per_s"] = round(len(questions) / dt, 3)
                    run[f"_{which}"] = got
                same = sum(run["_batched"][k] == run["_loop"][k] for k in run["_batched"])
                run["identical_answers"] = f"{same}/{len(questions)}"
                del run["_batched"], run["_loop"]
                runs.append(run)
                print(shape, run, flush=True)
            b = statistics.median(x["batched_questions_per_s"] for x in runs)
            lo = statistics.median(x["loop_questions_per_s"] for x in runs)
            results[shape] = {
                "params_million": round(sum(p.numel() for p in gen.model.parameters()) / 1e6, 2),
                "image_tokens": gen.model.num_image_tokens,
                "runs": runs,
                "batched_questions_per_s_median": b,
                "loop_questions_per_s_median": lo,
                "speedup": round(b / lo, 2),
            }
    device = gen.device.type
    report = {
        "bench": "evaluate",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "torch_threads": torch.get_num_threads(), "load_average_1m": round(os.getloadavg()[0], 2)},
        "params": {"questions": len(questions), "datasets": len(qs.datasets), "batch_size": args.batch_size,
                   "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "decoding": "greedy, KV cache"},
        "shapes": results,
    }  # fmt: skip
    out = args.out or ROOT / "bench" / "results" / f"evaluate-{device}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({s: {k: v for k, v in r.items() if k != "runs"} for s, r in results.items()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
