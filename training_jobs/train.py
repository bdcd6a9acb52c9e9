"""One GMAI-VL training stage: `python -m training_jobs.train --stage 1 --data mix.jsonl --image-root DIR ...`

Launch with torchrun (or Slurm + torchrun) for several processes; a bare `python -m` runs one process.
The same DeepSpeed ZeRO-2 engine runs on CUDA (NCCL, bf16 weights + fp32 master copies) and on CPU
(gloo, fp32), so the CPU tests exercise the real code path.

Outputs under --output:  checkpoints/<tag>/ (DeepSpeed, resumable: model, optimizer, scheduler,
data position in client_state) · export/ (the hand-off: model.save(), what stage N+1 --init-from's)
· metrics.json · skipped.jsonl (records not trained on, with reasons).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import time
from pathlib import Path

import torch

CONFIGS = Path(__file__).parent / "configs"
STAGE_DEFAULTS = {1: {"lr": 1e-3, "epochs": 1}, 2: {"lr": 1e-4, "epochs": 1}, 3: {"lr": 1e-5, "epochs": 2}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training_jobs.train", description=__doc__.splitlines()[0])
    p.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    p.add_argument("--data", type=Path, required=True, help="mixture JSONL (LLaVA records)")
    p.add_argument(
        "--image-root", type=Path, required=True, help="folder the records' `image` paths are relative to"
    )
    p.add_argument("--init-from", default="none", help="previous stage's export/ folder, or 'none'")
    p.add_argument(
        "--model-config",
        default="tiny",
        help="'tiny' (built here) or a model folder (vision/ llm/ tokenizer/)",
    )
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=1, help="packed rows per GPU per micro-step")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--epochs", type=int, default=None, help="default per stage: 1, 1, 2")
    p.add_argument("--lr", type=float, default=None, help="default per stage: 1e-3, 1e-4, 1e-5")
    p.add_argument("--warmup-ratio", type=float, default=0.03)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint under --output")
    p.add_argument("--deepspeed-config", type=Path, default=CONFIGS / "zero2.json")
    p.add_argument("--pack-window", type=int, default=4096, help="samples per first-fit-decreasing window")
    p.add_argument(
        "--no-packing",
        dest="packing",
        action="store_false",
        help="one sample per row (padded): for an LLM whose attention does not isolate packed samples",
    )
    p.add_argument(
        "--loss",
        choices=("token", "sqrt"),
        default="token",
        help="per-token mean, or InternVL sqrt weighting",
    )
    p.add_argument("--template", default=None, help="chat template (default: the model's, internlm2)")
    p.add_argument(
        "--lengths",
        type=Path,
        default=None,
        help="token lengths of --data (training_jobs.lengths; default: <data stem>.lengths.parquet beside it)",
    )
    p.add_argument("--trust-remote-code", action="store_true", help="needed for InternLM2.5")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument(
        "--liger",
        action="store_true",
        help="liger-kernel's fused RMSNorm/SwiGLU/RoPE/linear cross-entropy (CUDA; pip install liger-kernel)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each LLM decoder layer; rows are padded to --max-length (static shapes)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--save-steps", type=int, default=0, help="checkpoint every N optimizer steps (0: at the end)"
    )
    p.add_argument("--keep-checkpoints", type=int, default=2)
    p.add_argument(
        "--stop-after-steps", type=int, default=0, help="checkpoint and stop after N steps (pre-emption)"
    )
    p.add_argument(
        "--peak-flops", type=float, default=None, help="per-device peak for MFU (default: table/measured)"
    )
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument(
        "--num-workers", type=int, default=None, help="image-decoding workers (default: 4 on GPU, 0 on CPU)"
    )
    p.add_argument(
        "--max-samples", type=int, default=0, help="train on the first N usable samples (demo, smoke)"
    )
    args = p.parse_args(argv)
    defaults = STAGE_DEFAULTS[args.stage]
    args.lr = defaults["lr"] if args.lr is None else args.lr
    args.epochs = defaults["epochs"] if args.epochs is None else args.epochs
    if args.num_workers is None:
        args.num_workers = 4 if torch.cuda.is_available() and args.device != "cpu" else 0
    return args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    """torchrun sets RANK/WORLD_SIZE/MASTER_*; a bare `python -m` becomes a world of one."""
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cuda = torch.cuda.is_available() and device_pref != "cpu"
    if device_pref == "cuda" and not cuda:
        raise SystemExit("--device cuda but torch sees no GPU")
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", auto_mpi_discovery=False)
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), device


def deepspeed_config(path: Path, micro_batch: int, grad_accum: int, world: int, bf16: bool) -> dict:
    cfg = json.loads(Path(path).read_text())
    fill = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world,
    }
    for key, value in fill.items():
        if cfg.get(key, "auto") == "auto":
            cfg[key] = value
    if cfg.get("bf16", {}).get("enabled") == "auto":
        cfg["bf16"]["enabled"] = bf16
    return cfg


def epoch_plans(lengths: list[int], args, world: int) -> list[dict]:
    """Per epoch: packed rows and the number of micro-steps (a multiple of grad-accum; the last global
    batch wraps around to the epoch's first rows so every rank does the same number of steps)."""
    from training_jobs.packing import fill_ratio, plan_epoch

    per_step = world * args.micro_batch * args.grad_accum
    method = "ffd" if args.packing else "single"
    plans = []
    for epoch in range(args.epochs):
        rows = plan_epoch(
            lengths, args.max_length, args.seed, epoch, args.pack_window, method, group=args.micro_batch
        )
        steps = math.ceil(len(rows) / per_step)
        plans.append(
            {
                "rows": rows,
                "micro_steps": steps * args.grad_accum,
                "fill": fill_ratio(rows, lengths, args.max_length),
                "wrapped": steps * per_step - len(rows),
            }
        )
    return plans


PACKING_FIX = (
    "Convert the model to a transformers-native architecture (InternLM2: InternLM's tools/convert2llama.py "
    "rewrites it in the Llama layout; training_jobs/README.md, 'Real models'), or train with --no-packing"
)


def effective_batch(rows: list[list[int]], samples: int, world: int, args) -> dict:
    """Rows and (mean) samples per optimizer step: the paper counts its batch in rows of packed samples."""
    per_row = samples / max(len(rows), 1)
    n = world * args.micro_batch * args.grad_accum
    return {"rows": n, "samples_per_row": per_row, "samples": n * per_row}


def apply_kernels(model, args) -> list[str]:
    """--liger / --compile on the loaded model; returns what was applied."""
    applied = []
    if args.liger:
        try:
            model.use_liger()
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        applied.append("liger")
    if args.compile:
        model.compile_decoder()
        applied.append("compile")
    return applied


def resolve_model_dir(args, rank: int, world: int) -> Path:
    if args.init_from and args.init_from != "none":
        return Path(args.init_from)
    if args.model_config != "tiny":
        return Path(args.model_config)
    from training_jobs.data import iter_texts
    from training_jobs.tiny import build_tiny

    base = args.output / "base_model"
    if rank == 0 and not (base / "llm").exists():
        tmp = args.output / "base_model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny(tmp, iter_texts(args.data), seed=args.seed, template=args.template or "internlm2")
        tmp.rename(base)
    if world > 1:
        torch.distributed.barrier()
    return base


class MicroBatches(torch.utils.data.Dataset):
    """This rank's collated micro-batches for a range of micro-steps: image decoding runs in DataLoader workers.

    Micro-step m takes rows [m*world*mb + rank*mb, +mb) of the epoch's plan, wrapping around at the end.
    """

    def __init__(
        self, ds, rows, steps: range, rank, world, micro_batch, pad_id, flatten, sqrt_weights, pad_to=None
    ):
        self.ds, self.rows, self.steps = ds, rows, steps
        self.rank, self.world, self.mb = rank, world, micro_batch
        self.pad_id, self.flatten, self.sqrt, self.pad_to = pad_id, flatten, sqrt_weights, pad_to

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, k: int) -> dict:
        from training_jobs.packing import collate

        base = self.steps[k] * self.world * self.mb + self.rank * self.mb
        picked = [self.rows[(base + j) % len(self.rows)] for j in range(self.mb)]
        samples = [[self.ds.sample(i) for i in r] for r in picked]
        batch = collate(
            samples,
            self.pad_id,
            self.ds.pixels,
            flatten=self.flatten,
            sqrt_weights=self.sqrt,
            pad_to=self.pad_to,
        )
        batch["n_rows"] = len(picked)
        return batch


def _prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    tags = sorted((p for p in ckpt_dir.glob("step*") if p.is_dir()), key=lambda p: int(p.name[4:]))
    for old in tags[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rank, world, device = setup_distributed(args.device)
    from training_jobs.reporting import Reporter

    reporter = Reporter(rank)
    try:
        result = train(args, rank, world, device, reporter)
    except BaseException as exc:
        reporter.close(exc)
        raise
    reporter.close()
    return result


def train(args, rank: int, world: int, device: torch.device, reporter) -> dict:
    import deepspeed
    import torch.distributed as dist
    from transformers import get_cosine_schedule_with_warmup

    from training_jobs.data import Dataset
    from training_jobs.lengths import lengths_path
    from training_jobs.metrics import device_name, peak_flops, shape_of, step_flops
    from training_jobs.model import (
        count_params,
        load_model,
        packing_isolation_problem,
        pick_attention,
        set_stage,
    )

    args.output.mkdir(parents=True, exist_ok=True)
    bf16 = device.type == "cuda"
    attn = pick_attention(device)
    model_dir = resolve_model_dir(args, rank, world)
    model, tokenizer = load_model(model_dir, attn, args.trust_remote_code, seed=args.seed)
    template = args.template or model.meta.get("template", "internlm2")
    model.meta["template"] = template
    trainable = set_stage(model, args.stage)
    if args.grad_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    lengths = args.lengths or lengths_path(args.data)
    if not lengths.is_file():
        reporter.info(
            f"no token lengths beside the mixture ({lengths}): tokenizing every record before step 1"
        )
    ds = Dataset(
        args.data,
        args.image_root,
        tokenizer,
        template,
        model.num_image_tokens,
        model.image_size,
        args.max_length,
        lengths=lengths if lengths.is_file() else None,
        log=reporter.warning,  # a lengths file made for another tokenizer or template
    )
    if args.max_samples and len(ds.samples) > args.max_samples:
        reporter.info(f"--max-samples: training on the first {args.max_samples} of {len(ds.samples)} samples")
        ds.samples = ds.samples[: args.max_samples]
    if not ds.samples:
        raise SystemExit(f"no usable samples in {args.data} ({len(ds.skipped)} skipped)")
    if rank == 0:
        with open(args.output / "skipped.jsonl", "w") as f:
            for row in ds.skipped:
                f.write(json.dumps(row) + "\n")
    pad_id = next(
        (t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0
    )  # never supervised
    plans = epoch_plans(ds.lengths, args, world)
    total_steps = sum(p["micro_steps"] for p in plans) // args.grad_accum
    warmup = math.ceil(args.warmup_ratio * total_steps)

    optimizer = torch.optim.AdamW(
        trainable, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    ds_cfg = deepspeed_config(args.deepspeed_config, args.micro_batch, args.grad_accum, world, bf16)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, model_parameters=trainable, config=ds_cfg
    )
    flatten = attn == "flash_attention_2"
    if args.packing:  # on the device and dtype it trains in, with the kernel it trains with
        problem = packing_isolation_problem(model, device, flatten)
        if problem:
            raise SystemExit(f"refusing to pack: {problem}. {PACKING_FIX}")
    kernels = apply_kernels(model, args)
    ckpt_dir = args.output / "checkpoints"
    epoch0, micro0, step = 0, 0, 0
    history: list[dict] = []
    if args.resume and (ckpt_dir / "latest").exists():
        path, client = engine.load_checkpoint(str(ckpt_dir))
        if client.get("data_fingerprint") != ds.fingerprint():
            raise SystemExit(f"checkpoint {path} was trained on different data; refusing to resume")
        epoch0, micro0, step = client["epoch"], client["micro_step"], client["step"]
        history = client.get("history", [])
        reporter.info(f"resumed from {path}: epoch {epoch0}, micro-step {micro0}, optimizer step {step}")
    elif args.resume:
        reporter.info("--resume: no checkpoint yet, starting fresh")

    shape = shape_of(model)
    peak, peak_src = peak_flops(device, args.peak_flops)
    if world > 1:  # one figure for all ranks (a CPU measurement differs per process)
        t = torch.tensor([peak], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
        dist.broadcast(t, 0)
        peak = float(t)
    llm_trained, vision_trained = args.stage == 3, args.stage >= 2
    eff = effective_batch(plans[0]["rows"], len(ds), world, args)
    reporter.info(
        f"stage {args.stage} on {device_name(device)} x{world}: attention={attn}, bf16={bf16}, "
        f"kernels={'+'.join(kernels) or 'none'}, trainable {count_params(model, True):,} of "
        f"{count_params(model):,} params, {len(ds)} samples ({len(ds.skipped)} skipped, {len(ds.truncated)} "
        f"truncated), {total_steps} steps, pack fill {plans[0]['fill']:.3f}, peak {peak:.3g} ({peak_src})"
    )
    reporter.info(
        f"effective batch: {world} GPUs x {args.micro_batch} x {args.grad_accum} = {eff['rows']} rows of "
        f"{args.max_length} tokens, about {eff['samples']:.0f} samples per optimizer step "
        f"({eff['samples_per_row']:.2f} samples per row, packing {'on' if args.packing else 'off'})"
    )

    def save(epoch: int, micro: int) -> Path:
        tag = f"step{step}"
        client = {
            "epoch": epoch,
            "micro_step": micro,
            "step": step,
            "data_fingerprint": ds.fingerprint(),
            "history": history,
            "seed": args.seed,
        }
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client)
        if rank == 0:
            _prune_checkpoints(ckpt_dir, args.keep_checkpoints)
        return ckpt_dir / tag

    last_ckpt, stopped, position = None, False, (epoch0, micro0)
    acc = {"loss": 0.0, "tokens": 0, "supervised": 0, "flops": 0.0, "rows": 0}
    t0 = time.perf_counter()
    for epoch in range(epoch0, args.epochs):
        plan = plans[epoch]
        rows = plan["rows"]
        start = micro0 if epoch == epoch0 else 0
        micro_batches = MicroBatches(
            ds,
            rows,
            range(start, plan["micro_steps"]),
            rank,
            world,
            args.micro_batch,
            pad_id,
            flatten,
            args.loss == "sqrt",
            pad_to=(args.max_length * (args.micro_batch if flatten else 1)) if args.compile else None,
        )
        loader = torch.utils.data.DataLoader(
            micro_batches, batch_size=None, num_workers=args.num_workers, pin_memory=device.type == "cuda"
        )
        for micro, batch in zip(micro_batches.steps, loader, strict=True):
            picked = batch["n_rows"]
            kwargs = {}
            if flatten:
                cu = batch["cu_seqlens"].to(device)
                longest = max(batch["seq_lens"])
                kwargs = {
                    "cu_seq_lens_q": cu,
                    "cu_seq_lens_k": cu,
                    "max_length_q": longest,
                    "max_length_k": longest,
                }
            pv = batch["pixel_values"]
            out = engine(
                input_ids=batch["input_ids"].to(device),
                position_ids=batch["position_ids"].to(device),
                labels=batch["labels"].to(device),
                pixel_values=pv.to(device) if pv is not None else None,
                loss_weights=batch["loss_weights"].to(device),
                **kwargs,
            )
            loss = out["loss"]
            # Text-only rows in stage I have nothing trainable on their path: a zero gradient keeps ranks in step.
            if not loss.requires_grad:
                loss = loss + 0.0 * sum(p.sum() for p in trainable)
            engine.backward(loss)
            engine.step()
            acc["loss"] += float(out["loss"].detach()) / args.grad_accum
            acc["tokens"] += batch["n_real_tokens"]
            acc["supervised"] += int(out["n_tokens"])
            acc["rows"] += picked
            acc["flops"] += step_flops(
                shape, batch["seq_lens"], int(out["n_tokens"]), batch["n_images"], llm_trained, vision_trained
            )
            if (micro + 1) % args.grad_accum:
                continue
            step += 1
            position = (epoch, micro + 1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            totals = torch.tensor(
                [acc["loss"], acc["tokens"], acc["flops"], acc["rows"]], dtype=torch.float64
            )
            if world > 1:
                dist.all_reduce(totals)
            loss, tokens, flops, n = totals.tolist()
            rec = {
                "step": step,
                "epoch": epoch,
                "loss": loss / world,
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s_per_gpu": tokens / dt / world,
                "mfu": flops / dt / world / peak,
                "pack_fill": tokens / (n * args.max_length),
                "seconds": dt,
            }
            history.append(rec)
            if step % args.log_every == 0 or step == total_steps:
                reporter.info(
                    "step {step}/{total} epoch {epoch} loss {loss:.4f} lr {lr:.3g} tok/s/gpu {tps:.0f} "
                    "mfu {mfu:.3%} fill {fill:.3f}".format(
                        total=total_steps, tps=rec["tokens_per_s_per_gpu"], fill=rec["pack_fill"], **rec
                    )
                )
            if args.save_steps and step % args.save_steps == 0:
                last_ckpt = save(*position)
            if args.stop_after_steps and step >= args.stop_after_steps:
                stopped = True
                break
            acc = dict.fromkeys(acc, 0)
            t0 = time.perf_counter()
        if stopped:
            break
    if not (last_ckpt and last_ckpt.name == f"step{step}"):
        last_ckpt = save(*position)

    export = None
    if not stopped and rank == 0:
        export = args.output / "export"
        tmp = args.output / "export.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.meta.update({"stage": args.stage, "trained_steps": step})
        model.save(tmp, tokenizer)
        shutil.rmtree(export, ignore_errors=True)
        tmp.rename(export)
    timed = history[1:] or history  # the first step carries warm-up (allocation, kernel selection)
    summary = {
        "stage": args.stage,
        "steps": step,
        "total_steps": total_steps,
        "samples": len(ds),
        "skipped": len(ds.skipped),
        "truncated": len(ds.truncated),
        "token_lengths": ds.lengths_source,
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "final_lr": history[-1]["lr"] if history else None,
        "tokens_per_s_per_gpu": statistics.median(r["tokens_per_s_per_gpu"] for r in timed)
        if timed
        else None,
        "mfu": statistics.median(r["mfu"] for r in timed) if timed else None,
        "pack_fill_plan": plans[0]["fill"],
        "world_size": world,
        "micro_batch": args.micro_batch,
        "grad_accum": args.grad_accum,
        "max_length": args.max_length,
        "packing": args.packing,
        "global_batch_rows": eff["rows"],
        "global_batch_samples": round(eff["samples"], 1),
        "samples_per_row": round(eff["samples_per_row"], 3),
        "kernels": "+".join(kernels) or "none",
        "device": device_name(device),
        "peak_flops": peak,
        "peak_source": peak_src,
        "attention": attn,
        "checkpoint": str(last_ckpt),
        "export": str(export) if export else None,
        "stopped_early": stopped,
        "history": history,
    }
    if rank == 0:
        (args.output / "metrics.json").write_text(json.dumps(summary, indent=2))
        meta = {k: v for k, v in summary.items() if k != "history" and v is not None}
        meta["checkpoint"] = {"raw_value": str(last_ckpt), "type": "path"}
        if export:
            meta["export"] = {"raw_value": str(export), "type": "path"}
        meta["loss_curve"] = {"raw_value": [round(r["loss"], 5) for r in history], "type": "json"}
        reporter.materialize(meta)
    return summary


if __name__ == "__main__":
    main()
