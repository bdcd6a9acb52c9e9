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
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

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
        **attn_kwargs,
    ) -> dict[str, torch.Tensor]:
        """Loss = weighted mean of next-token CE over supervised tokens (weights 1: per-token mean).

        No attention mask: restarting position ids mark the samples (transformers >= 4.5x).
        Logits are computed only where a label exists unless `return_logits`, which keeps the
        image tokens' vocabulary-sized logits out of memory during training.
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
            logits = head(hidden[:, :-1][keep]).float()
            token_loss = F.cross_entropy(logits, targets[keep], reduction="none")
            weights = (
                torch.ones_like(token_loss) if loss_weights is None else loss_weights[:, 1:][keep].float()
            )
            out["loss"] = (token_loss * weights).sum() / weights.sum().clamp(min=1e-12)
            out["n_tokens"] = keep.sum()
        return out

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


STAGE_TRAINABLE = {1: ("projector",), 2: ("projector", "vision"), 3: ("projector", "vision", "llm")}


def set_stage(model: LlavaModel, stage: int) -> list[nn.Parameter]:
    """Freeze per GMAI-VL: I projector; II projector + vision encoder; III everything. Returns trainables."""
    trainable = STAGE_TRAINABLE[stage]
    for name, part in (("vision", model.vision), ("llm", model.llm), ("projector", model.projector)):
        part.requires_grad_(name in trainable)
    return [p for p in model.parameters() if p.requires_grad]


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
