"""Answer every benchmark question of a question set with a stage export: `python -m training_jobs.evaluate ...`

Reads `<questions>/index.json` and `<dataset>.jsonl` (`index`, `prompt` with `<image>` placeholders, `images`:
absolute paths), written by `gmai_pipeline.evaluation.questions` on the Dagster side; writes
`<output>/<dataset>.rank<r>.jsonl` lines `{"index", "prediction"}`. Scoring happens back on the Dagster
side, so this job needs only torch and transformers (and dagster-pipes to report).

Batches are formed from questions of similar prompt length (fewer pad tokens) and generated greedily with
the KV cache (`infer.Generator`). Under torchrun every process takes every world-size-th question of each
dataset. A rerun skips questions already answered in its part file (resume after pre-emption).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training_jobs.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="a stage's export/ folder")
    p.add_argument("--questions", type=Path, required=True, help="a question set folder (index.json)")
    p.add_argument("--output", type=Path, required=True, help="folder for the prediction part files")
    p.add_argument("--datasets", nargs="*", default=None, help="only these datasets (default: all)")
    p.add_argument("--batch-size", type=int, default=None, help="questions per generate call (GPU 32, CPU 8)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--limit", type=int, default=0, help="first N questions per dataset (smoke runs)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--model-name", default="", help="for the report only")
    return p.parse_args(argv)


def read_jsonl(path: Path) -> list[dict]:
    out = []
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash: everything after it is redone
    return out


def batches(questions: list[dict], size: int, length) -> list[list[dict]]:
    """Questions sorted by prompt length (ties by position), cut into batches of `size`."""
    order = sorted(range(len(questions)), key=lambda i: (length(questions[i]), i))
    return [[questions[i] for i in order[k : k + size]] for k in range(0, len(order), size)]


def answer_dataset(gen, questions: list[dict], part: Path, batch_size: int, max_new_tokens: int, log) -> int:
    done = {str(r["index"]) for r in read_jsonl(part)}
    todo = [q for q in questions if str(q["index"]) not in done]
    if done:
        # Rewrite the kept lines so a half-written last line from a crash is gone.
        kept = [r for r in read_jsonl(part) if str(r["index"]) in done]
        part.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    lengths = {id(q): len(gen.prompt_ids(q["prompt"], len(q["images"]))) for q in todo}
    with open(part, "a", encoding="utf-8") as f:
        for k, batch in enumerate(batches(todo, batch_size, lambda q: lengths[id(q)])):
            answers = gen.generate([q["prompt"] for q in batch], [q["images"] for q in batch], max_new_tokens)
            for q, a in zip(batch, answers, strict=True):
                f.write(json.dumps({"index": q["index"], "prediction": a}, ensure_ascii=False) + "\n")
            f.flush()
            if (k + 1) % 10 == 0:
                log(f"{part.name}: {min((k + 1) * batch_size, len(todo))}/{len(todo)} questions")
    return len(todo)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    from training_jobs.reporting import Reporter

    reporter = Reporter(rank)
    try:
        if torch.cuda.is_available() and args.device != "cpu":
            torch.cuda.set_device(local)
        result = run(args, rank, world, reporter)
    except BaseException as exc:
        reporter.close(exc)
        raise
    reporter.close()
    return result


def run(args, rank: int, world: int, reporter) -> dict:
    from training_jobs.infer import Generator

    index_path = args.questions / "index.json"
    if not index_path.is_file():
        raise SystemExit(f"no question set at {args.questions} (index.json missing)")
    datasets = json.loads(index_path.read_text())["datasets"]
    names = [n for n in datasets if args.datasets is None or n in args.datasets]
    gen = Generator(args.model, args.device, args.trust_remote_code)
    batch_size = args.batch_size or (32 if gen.device.type == "cuda" else 8)
    args.output.mkdir(parents=True, exist_ok=True)
    reporter.info(
        f"evaluating {args.model} on {len(names)} datasets, {gen.device}, batch {batch_size}, "
        f"max_new_tokens {args.max_new_tokens}, rank {rank}/{world}"
    )
    totals, t0 = {}, time.perf_counter()
    for name in names:
        with open(args.questions / f"{name}.jsonl", encoding="utf-8") as f:
            questions = [json.loads(line) for line in f if line.strip()]
        if args.limit:
            questions = questions[: args.limit]
        mine = questions[rank::world]
        t = time.perf_counter()
        answered = answer_dataset(
            gen,
            mine,
            args.output / f"{name}.rank{rank}.jsonl",
            batch_size,
            args.max_new_tokens,
            reporter.info,
        )
        dt = time.perf_counter() - t
        totals[name] = answered
        reporter.info(
            f"{name}: {answered} answered in {dt:.1f} s ({len(mine) - answered} kept from a previous run)"
        )
    seconds = time.perf_counter() - t0
    answered = sum(totals.values())
    summary = {
        "model": str(args.model),
        "model_name": args.model_name,
        "datasets": len(names),
        "questions_answered": answered,
        "seconds": round(seconds, 2),
        "questions_per_s": round(answered / seconds, 3) if seconds and answered else 0.0,
        "batch_size": batch_size,
        "max_new_tokens": args.max_new_tokens,
        "device": str(gen.device),
        "world_size": world,
        "predictions": {"raw_value": str(args.output), "type": "path"},
    }
    if rank == 0:
        reporter.materialize(summary)
    return summary


if __name__ == "__main__":
    main()
