"""Stage III's scoring pass: how confident the stage II model is on each stage III candidate.

    python -m training_jobs.score --model training/stage2/export --data candidates.jsonl \
        --image-root images --output training/stage3_scores

The paper drops instruction samples "with extremely lower confidence in the previous stages"; this measures
that confidence with the model trained so far. Per candidate: the mean cross-entropy of its answer tokens
(`mean_loss`) and `confidence` = exp(-mean_loss), the geometric mean of the answer tokens' probabilities.
A sample is scored exactly as training sees it: the same chat template and truncation (`data.Dataset`), the
same packed rows and attention path (`packing`, `train.MicroBatches`), the model in its training dtype. A
candidate training would skip (missing image, too long) is listed with the reason instead of a score.

Outputs under --output: scores.jsonl (one line per candidate: id, status "scored" or the skip reason,
mean_loss, confidence, answer_tokens, truncated), metrics.json; under Dagster one materialization through
Pipes with the counts and loss quantiles. Several processes (torchrun) split the rows; rank 0 merges.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from training_jobs.chat import IGNORE_INDEX


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training_jobs.score", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="the stage II export/ folder")
    p.add_argument("--data", type=Path, required=True, help="candidates (LLaVA JSONL)")
    p.add_argument("--image-root", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--max-length", type=int, default=2048, help="as stage III trains")
    p.add_argument("--micro-batch", type=int, default=4, help="packed rows per forward pass")
    p.add_argument("--no-packing", dest="packing", action="store_false", help="one sample per row")
    p.add_argument("--template", default=None, help="chat template (default: the model's)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--max-samples",
        type=int,
        default=0,
        help="score the first N candidates only, the others listed as not_scored (the demo); 0: all",
    )
    p.add_argument(
        "--num-workers", type=int, default=None, help="image-decoding workers (4 on GPU, 0 on CPU)"
    )
    args = p.parse_args(argv)
    if args.num_workers is None:
        args.num_workers = 4 if torch.cuda.is_available() and args.device != "cpu" else 0
    return args


def sample_losses(out: dict, batch: dict, picked: list[list], flatten: bool) -> dict[str, tuple[float, int]]:
    """{sample id: (summed answer-token loss, answer tokens)} from one forward's per-token losses."""
    rows = [[s for row in picked for s in row]] if flatten else picked
    keep = out["keep"].cpu()
    doc = batch["doc_ids"][:, 1:][keep]  # the sample (within its row) each supervised target belongs to
    row = torch.arange(keep.shape[0])[:, None].expand_as(keep)[keep]
    width = int(doc.max()) + 1 if doc.numel() else 1
    keys, inverse = torch.unique(row * width + doc, return_inverse=True)
    totals = torch.zeros(len(keys), dtype=torch.float64).index_add_(
        0, inverse, out["token_loss"].cpu().double()
    )
    counts = torch.bincount(inverse, minlength=len(keys))
    return {
        rows[k // width][k % width].id: (total, count)
        for k, total, count in zip(keys.tolist(), totals.tolist(), counts.tolist(), strict=True)
    }


def main(argv: list[str] | None = None) -> dict:
    from training_jobs.reporting import Reporter
    from training_jobs.train import setup_distributed

    args = parse_args(argv)
    rank, world, device = setup_distributed(args.device)
    reporter = Reporter(rank)
    try:
        result = score(args, rank, world, device, reporter)
    except BaseException as exc:
        reporter.close(exc)
        raise
    reporter.close()
    return result


def score(args, rank: int, world: int, device: torch.device, reporter) -> dict:
    import torch.distributed as dist

    from training_jobs.data import Dataset
    from training_jobs.model import load_model, packing_isolation_problem, pick_attention
    from training_jobs.packing import plan_epoch
    from training_jobs.train import PACKING_FIX, MicroBatches

    t0 = time.perf_counter()
    attn = pick_attention(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, tokenizer = load_model(args.model, attn, args.trust_remote_code, dtype=dtype)
    model.to(device).eval()
    template = args.template or model.meta.get("template", "internlm2")
    flatten = attn == "flash_attention_2"
    if args.packing and (problem := packing_isolation_problem(model, device, flatten)):
        raise SystemExit(f"refusing to pack: {problem}. {PACKING_FIX}")
    ds = Dataset(
        args.data,
        args.image_root,
        tokenizer,
        template,
        model.num_image_tokens,
        model.image_size,
        args.max_length,
    )
    not_scored = []
    if args.max_samples and len(ds.samples) > args.max_samples:
        reporter.info(f"--max-samples: scoring the first {args.max_samples} of {len(ds.samples)} candidates")
        not_scored, ds.samples = ds.samples[args.max_samples :], ds.samples[: args.max_samples]
    rows = plan_epoch(
        ds.lengths, args.max_length, 0, 0, method="ffd" if args.packing else "single", group=args.micro_batch
    )
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    steps = math.ceil(len(rows) / (world * args.micro_batch)) if rows else 0
    batches = MicroBatches(ds, rows, range(steps), rank, world, args.micro_batch, pad_id, flatten, False)
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, num_workers=args.num_workers, pin_memory=device.type == "cuda"
    )
    sums: dict[str, tuple[float, int]] = {}
    last_log = time.perf_counter()
    with torch.no_grad():
        for step, batch in zip(batches.steps, loader, strict=True):
            if rank == 0 and time.perf_counter() - last_log > 30:
                last_log = time.perf_counter()
                reporter.info(f"scoring: step {step + 1} of {steps} ({len(sums)} samples so far)")
            base = step * world * args.micro_batch + rank * args.micro_batch
            picked = [[ds.samples[i] for i in rows[(base + j) % len(rows)]] for j in range(args.micro_batch)]
            kwargs = {}
            if flatten:
                cu = batch["cu_seqlens"].to(device)
                longest = max(batch["seq_lens"])
                kwargs = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
            pv = batch["pixel_values"]
            out = model(
                input_ids=batch["input_ids"].to(device),
                position_ids=batch["position_ids"].to(device),
                labels=batch["labels"].to(device),
                pixel_values=pv.to(device) if pv is not None else None,
                return_token_loss=True,
                **kwargs,
            )
            sums.update(sample_losses(out, batch, picked, flatten))  # a wrapped-around row: same numbers
    parts = args.output / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    (parts / f"rank{rank}.json").write_text(json.dumps(sums))
    if world > 1:
        dist.barrier()
    if rank != 0:
        return {}
    for r in range(world):
        for sid, value in json.loads((parts / f"rank{r}.json").read_text()).items():
            sums.setdefault(sid, tuple(value))
    truncated = set(ds.truncated)
    lines = []
    for s in ds.samples:
        supervised = sum(1 for x in s.labels[1:] if x != IGNORE_INDEX)  # label 0 is never predicted
        total, count = sums.get(s.id, (float("nan"), 0))
        if count != supervised:
            raise RuntimeError(f"sample {s.id}: {count} of {supervised} answer tokens scored (rows lost?)")
        mean = total / count
        lines.append(
            {
                "id": s.id,
                "status": "scored",
                "mean_loss": mean,
                "confidence": math.exp(-mean),
                "answer_tokens": count,
                "truncated": s.id in truncated,
            }
        )
    for skipped in ds.skipped:
        lines.append({"id": skipped["id"], "status": skipped["reason"], "detail": skipped["detail"]})
    for s in not_scored:
        lines.append({"id": s.id, "status": "not_scored", "detail": "--max-samples"})
    tmp = args.output / "scores.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(tmp, args.output / "scores.jsonl")
    shutil.rmtree(parts, ignore_errors=True)
    losses = sorted(x["mean_loss"] for x in lines if x["status"] == "scored")
    summary = {
        "candidates": len(lines),
        "scored": len(losses),
        "skipped": len(ds.skipped),
        "not_scored": len(not_scored),
        "truncated": len(truncated),
        "mean_loss_median": statistics.median(losses) if losses else None,
        "mean_loss_p95": losses[min(len(losses) - 1, int(0.95 * len(losses)))] if losses else None,
        "mean_loss_max": losses[-1] if losses else None,
        "rows": len(rows),
        "packing": args.packing,
        "attention": attn,
        "world_size": world,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (args.output / "metrics.json").write_text(json.dumps(summary, indent=2))
    meta = {k: v for k, v in summary.items() if v is not None}
    meta["scores"] = {"raw_value": str(args.output / "scores.jsonl"), "type": "path"}
    reporter.info(
        f"scored {len(losses)} of {len(lines)} candidates with {args.model} ({len(ds.skipped)} skipped)"
    )
    reporter.materialize(meta)
    return summary


if __name__ == "__main__":
    main()
