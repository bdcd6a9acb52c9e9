"""LLaVA on transformers: CLIP-style vision encoder -> 2-layer MLP projector -> any causal LM.

Image features are the penultimate encoder layer's patch tokens (CLS dropped), as in LLaVA-1.5.
Input ids carry IMAGE_TOKEN_INDEX once per image patch; `embed` swaps those positions for the
projected features. Packed rows pass restarting `position_ids` and no attention mask, so transformers
keeps attention inside each sample with whichever kernel the LLM was loaded with (`pick_attention`).

On-disk layout (both the model source and each stage's hand-off export):
  vision/  CLIPVisionModel.save_pretrained     llm/  AutoModelForCausalLM.save_pretrained
  tokenizer/                                   projector.safetensors (absent: random init)
  vl_config.json  {"vision_feature_layer", "template", ...}
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel

from training_jobs.chat import IGNORE_INDEX, IMAGE_TOKEN_INDEX

VL_CONFIG = "vl_config.json"


def pick_attention(device: torch.device) -> str:
    """flash-attn varlen when installed, flex_attention (document mask) on other GPUs, SDPA + block mask on CPU.

    flex_attention has no backward on CPU (torch 2.13), so CPU always takes SDPA with the per-sample
    block-diagonal mask that transformers builds from restarting position ids.
    """
    if device.type == "cuda":
        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
        return "flex_attention"
    return "sdpa"


class Projector(nn.Sequential):
    """LLaVA-1.5's mlp2x_gelu."""

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))


class LlavaModel(nn.Module):
    def __init__(
        self, vision: CLIPVisionModel, llm: nn.Module, projector: Projector, meta: dict | None = None
    ):
        super().__init__()
        self.vision, self.llm, self.projector = vision, llm, projector
        self.meta = dict(meta or {})
        self.vision_feature_layer = int(self.meta.get("vision_feature_layer", -2))
        self.fused_ce: nn.Module | None = None  # liger's fused linear cross-entropy (use_liger)

    # --- shape facts -------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    @property
    def num_image_tokens(self) -> int:
        return (self.vision.config.image_size // self.vision.config.patch_size) ** 2

    @property
    def trunk(self) -> nn.Module:
        """The decoder without its output head (`model` for Llama/Qwen/InternLM2)."""
        return self.llm.base_model

    # --- forward -----------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(images, 3, H, W) -> (images, patches, llm_dim). No graph through a frozen encoder."""
        frozen = not any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            out = self.vision(pixel_values.to(self.vision.dtype), output_hidden_states=True)
            feats = out.hidden_states[self.vision_feature_layer][:, 1:]
        return self.projector(feats.to(self.projector[0].weight.dtype))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        is_image = input_ids == IMAGE_TOKEN_INDEX
        embeds = self.llm.get_input_embeddings()(input_ids.clamp(min=0))
        if pixel_values is not None and pixel_values.shape[0] > 0:
            feats = self.image_features(pixel_values).to(embeds.dtype)
            if feats.shape[0] * feats.shape[1] != int(is_image.sum()):
                raise ValueError(
                    f"{int(is_image.sum())} image tokens for {feats.shape[0]} images x {feats.shape[1]}"
                )
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]))
        elif bool(is_image.any()):
            raise ValueError("image tokens without pixel values")
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        loss_weights: torch.Tensor | None = None,
        return_logits: bool = False,
        return_token_loss: bool = False,
        **attn_kwargs,
    ) -> dict[str, torch.Tensor]:
        """Loss = weighted mean of next-token CE over supervised tokens (weights 1: per-token mean).

        No attention mask: restarting position ids mark the samples (transformers >= 4.5x).
        Logits are computed only where a label exists unless `return_logits`, which keeps the
        image tokens' vocabulary-sized logits out of memory during training. `return_token_loss` adds
        `token_loss` (per supervised token) and `keep` (where they sit in labels[:, 1:]): per-sample scores.
        """
        embeds = self.embed(input_ids, pixel_values)
        hidden = self.trunk(
            inputs_embeds=embeds,
            position_ids=position_ids,
            attention_mask=None,
            use_cache=False,
            **attn_kwargs,
        ).last_hidden_state
        head = self.llm.get_output_embeddings()
        out: dict[str, torch.Tensor] = {}
        if return_logits:
            out["logits"] = head(hidden).float()
        if labels is not None:
            targets = labels[:, 1:].clone()
            targets[position_ids[:, 1:] == 0] = IGNORE_INDEX  # never predict across a sample boundary
            keep = targets != IGNORE_INDEX
            if self.fused_ce is not None:  # logits never materialised (liger, CUDA)
                token_loss = self.fused_ce(head.weight, hidden[:, :-1][keep], targets[keep]).float()
            else:
                logits = head(hidden[:, :-1][keep]).float()
                token_loss = F.cross_entropy(logits, targets[keep], reduction="none")
            weights = (
                torch.ones_like(token_loss) if loss_weights is None else loss_weights[:, 1:][keep].float()
            )
            out["loss"] = (token_loss * weights).sum() / weights.sum().clamp(min=1e-12)
            out["n_tokens"] = keep.sum()
            if return_token_loss:
                out["token_loss"], out["keep"] = token_loss.detach(), keep
        return out

    # --- faster kernels (optional) -----------------------------------------------------------
    def use_liger(self) -> None:
        """liger-kernel's Triton kernels in the LLM: RMSNorm, SwiGLU, RoPE, and the fused linear
        cross-entropy in `forward`. CUDA only (Triton has no CPU backend); `pip install liger-kernel`."""
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
            from liger_kernel.transformers.monkey_patch import (
                MODEL_TYPE_TO_APPLY_LIGER_FN,
                _apply_liger_kernel_to_instance,
            )
        except ImportError as exc:
            raise RuntimeError(
                f"--liger needs liger-kernel (pip install 'liger-kernel>=0.8.2'): {exc}"
            ) from None
        if next(self.llm.parameters()).device.type != "cuda":
            raise RuntimeError("--liger runs Triton kernels, which need a CUDA GPU (no CPU path)")
        model_type = self.llm.config.model_type
        if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:  # liger would only log it and patch nothing
            raise RuntimeError(f"liger-kernel has no kernels for model_type {model_type!r}")
        _apply_liger_kernel_to_instance(
            model=self.llm, rope=True, rms_norm=True, swiglu=True, fused_linear_cross_entropy=False
        )
        self.fused_ce = LigerFusedLinearCrossEntropyLoss(reduction="none")
        self.meta["kernels"] = sorted({*self.meta.get("kernels", []), "liger"})

    def compile_decoder(self, **options) -> int:
        """torch.compile each decoder layer (regional compilation: one graph reused by every layer, so it
        compiles in seconds, and the attention kernel the layer was loaded with stays). Returns the layers."""
        layers = getattr(self.trunk, "layers", None)
        if layers is None:
            raise RuntimeError(f"{type(self.trunk).__name__} has no `layers` to compile")
        for layer in layers:
            layer.compile(**options)
        return len(layers)

    # --- persistence -------------------------------------------------------------------------
    def save(self, out_dir: Path, tokenizer=None) -> Path:
        """HF-style hand-off: each part's save_pretrained plus the projector and our small config."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.vision.save_pretrained(out_dir / "vision")
        self.llm.save_pretrained(out_dir / "llm")
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.projector.state_dict().items()},
            str(out_dir / "projector.safetensors"),
        )
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir / "tokenizer")
        (out_dir / VL_CONFIG).write_text(json.dumps(self.meta, indent=2, sort_keys=True))
        return out_dir


def load_tokenizer_and_image_tokens(path: Path, trust_remote_code: bool = False) -> tuple[object, int]:
    """The tokenizer and the image token count of a model folder, without loading any weights."""
    path = Path(path)
    vision = CLIPVisionConfig.from_pretrained(path / "vision")
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", trust_remote_code=trust_remote_code)
    return tokenizer, (vision.image_size // vision.patch_size) ** 2


def load_model(
    path: Path,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[LlavaModel, object]:
    """(model, tokenizer) from a model directory or a stage export; a missing projector is random-initialised."""
    path = Path(path)
    meta = json.loads((path / VL_CONFIG).read_text()) if (path / VL_CONFIG).exists() else {}
    vision = CLIPVisionModel.from_pretrained(path / "vision", dtype=dtype, attn_implementation="sdpa")
    llm = AutoModelForCausalLM.from_pretrained(
        path / "llm",
        dtype=dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
    )
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", trust_remote_code=trust_remote_code)
    torch.manual_seed(seed)
    projector = Projector(vision.config.hidden_size, llm.config.hidden_size).to(dtype)
    if (path / "projector.safetensors").exists():
        projector.load_state_dict(load_file(str(path / "projector.safetensors")))
    meta.setdefault("vision_feature_layer", -2)
    meta.setdefault("template", "internlm2")
    return LlavaModel(vision, llm, projector, meta), tokenizer


def packing_isolation_problem(model: LlavaModel, device: torch.device, flatten: bool = False) -> str | None:
    """Why packed samples would not stay isolated in this model's LLM (None: they do).

    Decided on the class actually loaded: remote modelling code (not a transformers class) is refused,
    since it builds its own masks; a transformers class is probed: sample B's hidden states must not change
    when the sample packed before it changes (they are bit-identical when attention is kept per sample).
    """
    cls = type(model.llm)
    if not cls.__module__.startswith("transformers."):
        return (
            f"{cls.__name__} ({cls.__module__}) is remote modelling code, which builds its own attention mask, "
            "so packed samples would attend to each other"
        )
    vocab = model.llm.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    a1, a2, b = (torch.randint(4, vocab, (n,), generator=g) for n in (24, 24, 16))
    impl = getattr(model.llm.config, "_attn_implementation", "?")

    def sample_b(first: torch.Tensor) -> torch.Tensor:
        ids = torch.cat([first, b])[None].to(device)
        pos = torch.cat([torch.arange(len(first)), torch.arange(len(b))])[None].to(device)
        kwargs = {}
        if flatten:
            cu = torch.tensor([0, len(first), len(first) + len(b)], dtype=torch.int32, device=device)
            kwargs = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 24, "max_length_k": 24}
        hidden = model.trunk(
            inputs_embeds=model.embed(ids, None),
            position_ids=pos,
            attention_mask=None,
            use_cache=False,
            **kwargs,
        ).last_hidden_state
        return hidden[0, len(first) :].float()

    try:
        with torch.no_grad():
            h1, h2 = sample_b(a1), sample_b(a2)
    except Exception as exc:  # noqa: BLE001 - any failure means packing is not supported
        return f"{cls.__name__} with attn_implementation={impl} failed on a packed row: {exc}"
    leak = float((h1 - h2).abs().max() / h1.abs().max().clamp(min=1e-12))
    if leak > 1e-3:
        return (
            f"{cls.__name__} with attn_implementation={impl} lets packed samples attend to each other "
            f"(a sample's hidden states moved by {leak:.2g} of their scale when the sample before it changed)"
        )
    return None


STAGE_TRAINABLE = {1: ("projector",), 2: ("projector", "vision"), 3: ("projector", "vision", "llm")}


def set_stage(model: LlavaModel, stage: int) -> list[nn.Parameter]:
    """Freeze per GMAI-VL: I projector; II projector + vision encoder; III everything. Returns trainables."""
    trainable = STAGE_TRAINABLE[stage]
    for name, part in (("vision", model.vision), ("llm", model.llm), ("projector", model.projector)):
        part.requires_grad_(name in trainable)
    return [p for p in model.parameters() if p.requires_grad]


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
