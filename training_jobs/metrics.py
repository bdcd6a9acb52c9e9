"""Model FLOPs per step and MFU (PaLM, arXiv:2204.02311, appendix B; `karpathy/nanoGPT:model.py` `estimate_mfu`).

Per real token: the LLM costs 6N when trained and 4N when frozen (forward 2N, backward to the
activations 2N, no weight gradients); the output head is counted only on supervised tokens, the only
place our forward computes it. Attention adds 12·L·d·S per token (forward + backward, S = the token's
own sample length, the PaLM/nanoGPT convention without the causal halving) and is the same whether
the LLM is frozen or not. The vision encoder costs 6N_v per patch token when trained and 2N_v when
frozen (it runs without a graph), plus its own attention; the projector is always trained (6N_p).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),  # SXM / HBM3
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("A10G", 125e12),
)


@dataclass(frozen=True)
class Shape:
    llm_trunk: int  # LLM parameters without input embedding and output head
    llm_head: int
    llm_layers: int
    llm_dim: int
    vision: int
    vision_layers: int
    vision_dim: int
    vision_tokens: int  # per image, CLS included
    projector: int


def shape_of(model) -> Shape:
    emb = model.llm.get_input_embeddings().weight.numel()
    head = model.llm.get_output_embeddings().weight.numel()
    total = sum(p.numel() for p in model.llm.parameters())
    tied = model.llm.get_input_embeddings().weight is model.llm.get_output_embeddings().weight
    lc, vc = model.llm.config, model.vision.config
    return Shape(
        llm_trunk=total - emb - (0 if tied else head),
        llm_head=head,
        llm_layers=lc.num_hidden_layers,
        llm_dim=lc.hidden_size,
        vision=sum(p.numel() for p in model.vision.parameters()),
        vision_layers=vc.num_hidden_layers,
        vision_dim=vc.hidden_size,
        vision_tokens=model.num_image_tokens + 1,
        projector=sum(p.numel() for p in model.projector.parameters()),
    )


def step_flops(
    shape: Shape,
    seq_lens: Sequence[int],
    supervised: int,
    images: int,
    llm_trained: bool,
    vision_trained: bool,
) -> float:
    """Model FLOPs of one forward+backward over these samples."""
    tokens = sum(seq_lens)
    k_llm = 6 if llm_trained else 4
    flops = k_llm * shape.llm_trunk * tokens + k_llm * shape.llm_head * supervised
    flops += 12 * shape.llm_layers * shape.llm_dim * sum(s * s for s in seq_lens)
    vt = shape.vision_tokens
    k_vis, k_vis_attn = (6, 12) if vision_trained else (2, 4)
    flops += images * (
        k_vis * shape.vision * vt + k_vis_attn * shape.vision_layers * shape.vision_dim * vt * vt
    )
    flops += 6 * shape.projector * images * (vt - 1)
    return float(flops)


def measure_cpu_peak(seconds: float = 0.5, n: int = 512) -> float:
    """fp32 matmul FLOP/s on this CPU: the CPU 'peak' when none is configured (a measurement, not a spec)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
    return 2 * n**3 * k / (time.perf_counter() - t0)


def peak_flops(device: torch.device, configured: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s per device, where the number came from)."""
    configured = configured or (
        float(os.environ["GMAI_PEAK_FLOPS"]) if os.environ.get("GMAI_PEAK_FLOPS") else None
    )
    if configured:
        return configured, "configured"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_BF16:
            if key in name:
                return value, f"table: {name} bf16 dense"
        return 989e12, f"unknown card {name}: assumed 989 TFLOP/s"
    return measure_cpu_peak(), "measured: CPU fp32 matmul"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu-{platform.machine()}"
