"""Tiny random-init model for tests and the demo: a BPE tokenizer trained here, tiny CLIP + Llama configs.

Nothing is downloaded: the tokenizer learns from the mixture's own text, the weights are random
(seeded). The result has the same on-disk layout as a real model directory (see model.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from training_jobs.chat import special_tokens
from training_jobs.model import VL_CONFIG

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, template: str = "internlm2"):
    """Byte-level BPE (GPT-2 style) on the given text; chat-template markers are single special tokens."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    extra = special_tokens(template)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS + extra,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=extra,
    )


def tiny_configs(
    vocab_size: int, image_size: int = 336, patch_size: int = 14
) -> tuple[CLIPVisionConfig, LlamaConfig]:
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    llm = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    return vision, llm


def build_tiny(
    out_dir: Path,
    texts: Iterable[str],
    seed: int = 0,
    image_size: int = 336,
    template: str = "internlm2",
    vocab_size: int = 512,
) -> Path:
    """Write a tiny model directory (vision/, llm/, tokenizer/, vl_config.json); same seed -> same weights."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, template=template)
    vcfg, lcfg = tiny_configs(len(tokenizer), image_size=image_size)
    torch.manual_seed(seed)
    CLIPVisionModel(vcfg).save_pretrained(out_dir / "vision")
    LlamaForCausalLM(lcfg).save_pretrained(out_dir / "llm")
    tokenizer.save_pretrained(out_dir / "tokenizer")
    (out_dir / VL_CONFIG).write_text(
        json.dumps({"vision_feature_layer": -2, "template": template, "tiny": True})
    )
    return out_dir
