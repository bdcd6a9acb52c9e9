"""Training-step throughput and MFU per stage: padded micro-batches vs packed rows vs the bound, in one run.

    python bench/train_step.py                       # CUDA: 1.8b and 7b shapes, stages 1-3; CPU: tiny
    python bench/train_step.py --llm-shape 1.8b --stage 3 --quick
    python bench/train_step.py --device cpu --llm-shape tiny --quick   # smoke test

Samples: 576 image tokens + a caption of 32-800 text tokens (uniform), random init, bf16 on CUDA (fp32 on
CPU), plain torch AdamW on the stage's trainable parameters, the LlavaModel of training_jobs (CLIP ViT-L/14
336 px shape + MLP projector + a Llama-architecture LLM of InternLM2-1.8B / InternLM2.5-7B shape).
Modes, all at the same token budget per step:
  padded      samples in arrival order, right-padded to the longest in the micro-batch (causal, no mask needed)
  packed      rows of --row-length packed first-fit-decreasing, position ids restart per sample, attention
              kept inside samples by the training path's kernel (flash-attn varlen > flex_attention > SDPA mask)
  packed_sdpa the same rows with transformers' SDPA block mask (CUDA only, for comparison)
  bound       the same rows with plain causal attention over the whole row (no mask): what a perfect
              varlen kernel approaches
  packed+K    packed, with kernel variant K (--kernels): liger (liger-kernel's RMSNorm, SwiGLU, RoPE and
              fused linear cross-entropy, CUDA only), compile (torch.compile per decoder layer), liger+compile
Real tokens/s counts only sample tokens (no padding). Results: bench/results/train_step-<device>.json.
A time budget (--budget-s) skips what is left rather than overrun; every skip and error is recorded.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training_jobs.chat import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402
from training_jobs.data import Sample  # noqa: E402
from training_jobs.metrics import device_name, peak_flops, shape_of, step_flops  # noqa: E402
from training_jobs.model import LlavaModel, Projector, pick_attention, set_stage  # noqa: E402
from training_jobs.packing import collate, fill_ratio, pack_ffd  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LLM_SHAPES = {  # Llama-architecture stand-ins with InternLM2's dimensions
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
    ),
    "1.8b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=8,
        vocab_size=92544,
    ),
    "7b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=92544,
    ),
}
VISION_SHAPES = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2),
    "vit-l-336": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
}


def build_model(llm_shape: str, device: torch.device, dtype: torch.dtype, attn: str) -> LlavaModel:
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    vis = VISION_SHAPES["tiny" if llm_shape == "tiny" else "vit-l-336"]
    vcfg = CLIPVisionConfig(image_size=336, patch_size=14, **vis)
    lcfg = LlamaConfig(max_position_embeddings=8192, tie_word_embeddings=False, **LLM_SHAPES[llm_shape])
    vcfg._attn_implementation = "sdpa"
    lcfg._attn_implementation = attn
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in the training dtype: no fp32 copy of a 7B model
    try:
        with device:
            vision, llm = CLIPVisionModel(vcfg), LlamaForCausalLM(lcfg)
            proj = Projector(vcfg.hidden_size, lcfg.hidden_size)
    finally:
        torch.set_default_dtype(prev)
    return LlavaModel(vision, llm, proj, {"vision_feature_layer": -2})


def make_samples(n: int, vocab: int, seed: int, image_tokens: int = 576) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = int(rng.integers(32, 801))
        prompt = rng.integers(4, vocab, 8).tolist()
        caption = rng.integers(4, vocab, text).tolist()
        ids = [1] + [IMAGE_TOKEN_INDEX] * image_tokens + prompt + caption
        labels = [IGNORE_INDEX] * (1 + image_tokens + len(prompt)) + caption
        out.append(Sample(f"b{i}", ids, labels, Path("synthetic")))
    return out


def batches(
    mode: str, samples: list[Sample], row_length: int, rows_per_step: int, steps: int
) -> list[list[list]]:
    """Each step: a list of rows (lists of samples); the same token budget per step for every mode."""
    if mode == "padded":
        per_step = max(1, round(rows_per_step * row_length / np.mean([len(s) for s in samples])))
        return [[[s] for s in samples[i * per_step : (i + 1) * per_step]] for i in range(steps)]
    rows = pack_ffd([len(s) for s in samples], row_length)
    rows = sorted(rows, key=lambda r: -sum(len(samples[i]) for i in r))  # the full rows first
    return [
        [[samples[i] for i in rows[k * rows_per_step + j]] for j in range(rows_per_step)]
        for k in range(steps)
    ]


def run_mode(
    model, optimizer, mode, steps_rows, device, shape, stage, peak, warmup, pad_id, pixels, row_length, attn
):
    llm_trained, vision_trained = stage == 3, stage >= 2
    times, real, slots, flops = [], 0, 0, 0.0
    varlen = (
        mode == "packed" and attn == "flash_attention_2"
    )  # the training path: one flattened row + cu_seqlens
    for k, rows in enumerate(steps_rows):
        b = collate(rows, pad_id, pixels, flatten=varlen)
        ids = b["input_ids"].to(device)
        pos = b["position_ids"].to(device)
        kwargs = {}
        if varlen:
            cu, longest = b["cu_seqlens"].to(device), max(b["seq_lens"])
            kwargs = {
                "cu_seq_lens_q": cu,
                "cu_seq_lens_k": cu,
                "max_length_q": longest,
                "max_length_k": longest,
            }
        if mode in ("padded", "bound"):  # right padding/whole rows: plain causal, no mask is built
            pos = torch.arange(ids.shape[1], device=device).expand_as(ids)
        if (
            mode != "padded" and not varlen and ids.shape[1] < row_length
        ):  # static row shape (compiled kernels)
            extra = row_length - ids.shape[1]
            ids = torch.nn.functional.pad(ids, (0, extra), value=pad_id)
            b["labels"] = torch.nn.functional.pad(b["labels"], (0, extra), value=IGNORE_INDEX)
            tail = torch.arange(extra, device=device).expand(ids.shape[0], -1)
            pos = torch.cat([pos, tail if mode != "bound" else tail + pos.shape[1]], dim=1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = model(
            input_ids=ids,
            position_ids=pos,
            labels=b["labels"].to(device),
            pixel_values=b["pixel_values"],
            **kwargs,
        )
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        if k >= warmup:
            times.append(dt)
            real += b["n_real_tokens"]
            slots += ids.numel()
            flops += step_flops(
                shape, b["seq_lens"], int(out["n_tokens"]), b["n_images"], llm_trained, vision_trained
            )
    total = sum(times)
    return {
        "real_tokens_per_s": real / total,
        "mfu": flops / total / peak,
        "step_s": float(np.median(times)),
        "steps_timed": len(times),
        "real_tokens_per_step": real / len(times),
        "waste": 1 - real / slots,  # padding share of the token slots computed
    }


KERNEL_ORDER = ("none", "compile", "liger", "liger+compile")  # liger patches transformers' Llama for good


def with_kernels(model: LlavaModel, variant: str) -> LlavaModel:
    """Apply a kernel variant the way training_jobs.train does (--liger, --compile)."""
    if "liger" in variant:
        model.use_liger()
    if "compile" in variant:
        model.compile_decoder()
    return model


def bench_shape(llm_shape, stages, device, dtype, args, peak, deadline, results):
    attn = pick_attention(device)
    t0 = time.perf_counter()
    model = build_model(llm_shape, device, dtype, attn)
    shape = shape_of(model)
    vocab = LLM_SHAPES[llm_shape]["vocab_size"]
    row_length = args.row_length
    rows_per_step = args.rows_per_step or 2  # 8192 tokens per step, as the H200 reference's 8x1024
    n_samples = (args.warmup + args.steps) * rows_per_step * (row_length // 900 + 2) + 64
    samples = make_samples(n_samples, vocab, seed=0)
    lengths = [len(s) for s in samples]
    pixels_cache = torch.randn(3, 336, 336, device=device, dtype=dtype)
    modes = [m for m in ("padded", "packed", "bound") if m in args.modes]
    if device.type == "cuda" and attn != "sdpa" and "packed_sdpa" in args.modes:
        modes.append("packed_sdpa")
    plan = {
        m: batches(
            m if m != "packed_sdpa" and m != "bound" else "packed",
            samples,
            row_length,
            rows_per_step,
            args.warmup + args.steps,
        )
        for m in ("padded", "packed", "bound", "packed_sdpa")
    }
    info = {
        "llm_shape": llm_shape,
        "attention": attn,
        "build_s": round(time.perf_counter() - t0, 1),
        "row_length": row_length,
        "rows_per_step": rows_per_step,
        "pack_fill_ffd": fill_ratio(pack_ffd(lengths, row_length), lengths, row_length),
        "samples_per_row_ffd": len(lengths) / len(pack_ffd(lengths, row_length)),
        "kernels": ["none", *args.kernels],
        "params": {
            "llm": shape.llm_trunk + shape.llm_head,
            "vision": shape.vision,
            "projector": shape.projector,
        },
    }
    print(json.dumps(info), flush=True)

    def measure(model, variant: str, modes: list[str], stage: int) -> None:
        """One stage's measurements on one model: freeze as the stage, then each mode in turn."""
        trainable = set_stage(model, stage)
        ckpt = stage == 3 and llm_shape == "7b" and device.type == "cuda"
        if ckpt:
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
        for mode in modes:
            key = f"{llm_shape}/stage{stage}/{mode}" + (f"+{variant}" if variant != "none" else "")
            if time.perf_counter() > deadline:
                results[key] = {"skipped": "time budget"}
                continue
            impl = "sdpa" if mode in ("packed_sdpa", "padded", "bound") else attn
            model.llm.set_attn_implementation(impl)
            try:
                r = run_mode(
                    model,
                    optimizer,
                    mode,
                    plan[mode],
                    device,
                    shape,
                    stage,
                    peak,
                    args.warmup,
                    0,
                    lambda s: pixels_cache,
                    row_length,
                    attn,
                )
                r.update(attention=impl, grad_checkpointing=ckpt, kernels=variant)
                results[key] = r
            except torch.OutOfMemoryError as exc:
                results[key] = {"error": f"OOM: {str(exc)[:200]}"}
            except Exception as exc:  # a kernel path that fails must not lose the other figures
                results[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            optimizer.zero_grad(set_to_none=True)
            if "error" in results[key] and device.type == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
            print(key, json.dumps(results[key]), flush=True)
        if ckpt:
            model.llm.gradient_checkpointing_disable()
        del optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()

    variants = [v for v in KERNEL_ORDER if v == "none" or v in args.kernels]
    for variant in variants:
        if variant != "none":  # a fresh model: kernels patch modules in place
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
            try:
                model = with_kernels(build_model(llm_shape, device, dtype, attn), variant)
            except Exception as exc:  # e.g. liger-kernel not installed: recorded, the rest goes on
                for stage in stages:
                    results[f"{llm_shape}/stage{stage}/packed+{variant}"] = {
                        "error": f"{type(exc).__name__}: {str(exc)[:300]}"
                    }
                model = None
                continue
        for stage in stages:
            measure(model, variant, modes if variant == "none" else ["packed"], stage)
    for stage in stages:
        base = f"{llm_shape}/stage{stage}"
        p, b, pad = (results.get(f"{base}/{m}", {}) for m in ("packed", "bound", "padded"))
        if "real_tokens_per_s" in p and "real_tokens_per_s" in b:
            summary = {"packed_over_bound": p["real_tokens_per_s"] / b["real_tokens_per_s"]}
            if "real_tokens_per_s" in pad:
                summary["packed_over_padded"] = p["real_tokens_per_s"] / pad["real_tokens_per_s"]
                summary["bound_over_padded"] = b["real_tokens_per_s"] / pad["real_tokens_per_s"]
            for v in variants[1:]:
                r = results.get(f"{base}/packed+{v}", {})
                if "real_tokens_per_s" in r:
                    summary[f"packed+{v}_over_bound"] = r["real_tokens_per_s"] / b["real_tokens_per_s"]
                    summary[f"packed+{v}_mfu"] = r["mfu"]
            results[f"{base}/summary"] = summary
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return info


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llm-shape", nargs="+", choices=sorted(LLM_SHAPES), default=None)
    p.add_argument("--stage", nargs="+", type=int, choices=(1, 2, 3), default=[1, 2, 3])
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--quick", action="store_true", help="fewer steps (smoke test / a first look)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument(
        "--row-length", type=int, default=None, help="packed row length (default 4096 on CUDA, 2048 on CPU)"
    )
    p.add_argument("--rows-per-step", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=330.0, help="skip what is left after this many seconds")
    p.add_argument("--peak-flops", type=float, default=None)
    p.add_argument(
        "--modes",
        nargs="+",
        choices=("padded", "packed", "bound", "packed_sdpa"),
        default=["padded", "packed", "bound", "packed_sdpa"],
        help="baseline measurements (packed_sdpa: CUDA only)",
    )
    p.add_argument(
        "--kernels",
        nargs="+",
        choices=KERNEL_ORDER[1:],
        default=[],
        help="also measure the packed mode with these kernel variants, each on a fresh model (CUDA for liger)",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not cuda:
        raise SystemExit("--device cuda but torch sees no GPU")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    shapes = args.llm_shape or (["1.8b", "7b"] if cuda else ["tiny"])
    args.steps = args.steps or (3 if args.quick else 6)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.row_length = args.row_length or (4096 if cuda else 2048)
    if args.row_length < 576 + 9 + 800:
        raise SystemExit("--row-length must hold the longest sample (1385 tokens)")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16 if cuda else torch.float32
    peak, peak_src = peak_flops(device, args.peak_flops)
    deadline = time.perf_counter() + args.budget_s
    results: dict = {}
    infos = []
    start = time.perf_counter()
    for shape in shapes:
        infos.append(bench_shape(shape, args.stage, device, dtype, args, peak, deadline, results))
    name = device_name(device)
    import transformers

    doc = {
        "device": name,
        "dtype": str(dtype),
        "peak_flops": peak,
        "peak_source": peak_src,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "shapes": infos,
        "results": results,
        "wall_s": round(time.perf_counter() - start, 1),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = args.out or RESULTS / f"train_step-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {out} ({doc['wall_s']} s)")
    return out


if __name__ == "__main__":
    main()
