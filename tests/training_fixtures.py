"""Small LLaVA-format mixtures for the training tests: random images plus short medical-sounding text."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

MODALITIES = ["CT", "MRI", "X-ray", "ultrasound", "fundus photograph", "dermoscopy", "histopathology"]
ORGANS = ["liver", "lung", "brain", "kidney", "heart", "retina", "skin", "breast", "spleen", "knee"]
FINDINGS = ["no abnormality", "a small nodule", "a large lesion", "an effusion", "a fracture", "inflammation"]


def write_mixture(folder: Path, stage: int = 1, n: int = 12, text_only: int = 2, seed: int = 0) -> Path:
    """stage{N}.jsonl + stage{N}.provenance.json + images/ under `folder` (the release helper's contract)."""
    rng = random.Random(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        mod, organ, finding = rng.choice(MODALITIES), rng.choice(ORGANS), rng.choice(FINDINGS)
        words = rng.randint(4, 30)
        answer = f"This {mod} image of the {organ} shows {finding}. " + " ".join(
            rng.choice(ORGANS + FINDINGS) for _ in range(words)
        )
        if i < n - text_only:
            w, h = rng.randint(40, 90), rng.randint(40, 90)
            arr = np.random.default_rng(seed * 1000 + i).integers(0, 255, (h, w, 3), dtype=np.uint8)
            rel = f"2d/cls/{mod}/img{i:03d}.png"
            (images / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(images / rel)
            human = f"<image>\nDescribe the {mod} image."
            records.append(
                {
                    "id": f"s{stage}-{i}",
                    "image": rel,
                    "width": w,
                    "height": h,
                    "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}],
                }
            )
        else:
            records.append(
                {
                    "id": f"s{stage}-t{i}",
                    "conversations": [
                        {"from": "human", "value": f"What does {finding} in the {organ} mean?"},
                        {"from": "gpt", "value": answer},
                    ],
                }
            )
    path = folder / f"stage{stage}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    ids = "\n".join(r["id"] for r in records)
    meta = {
        "image_root": str(images.resolve()),
        "samples": len(records),
        "ids_sha256": hashlib.sha256(ids.encode()).hexdigest(),
        "components": {"fixture": len(records)},
    }
    (folder / f"stage{stage}.provenance.json").write_text(json.dumps(meta))
    return path


CONFIGURATION_LEAKY = '''"""Configuration of the leaky test model (remote code, as InternLM2 ships its own)."""
from transformers import LlamaConfig


class LeakyConfig(LlamaConfig):
    model_type = "leaky_llama"
'''

MODELING_LEAKY = '''"""Remote modelling code shaped like InternLM2's: the decoder builds its own causal mask
over the whole row (from an all-ones padding mask), ignoring restarting position ids, so packed samples
attend to each other."""
import torch
from transformers import LlamaForCausalLM, LlamaModel

from .configuration_leaky import LeakyConfig


class LeakyModel(LlamaModel):
    config_class = LeakyConfig

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs):
        x = input_ids if inputs_embeds is None else inputs_embeds
        own = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        return super().forward(input_ids=input_ids, attention_mask=own, inputs_embeds=inputs_embeds, **kwargs)


class LeakyForCausalLM(LlamaForCausalLM):
    config_class = LeakyConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = LeakyModel(config)
        self.post_init()
'''


def write_leaky_model(tiny_dir: Path, out_dir: Path) -> Path:
    """A copy of a tiny model folder whose llm/ is remote code (`auto_map`) that does not isolate packed
    samples: what an unconverted InternLM2 folder looks like to the training code."""
    import shutil

    shutil.copytree(tiny_dir, out_dir)
    llm = out_dir / "llm"
    (llm / "configuration_leaky.py").write_text(CONFIGURATION_LEAKY)
    (llm / "modeling_leaky.py").write_text(MODELING_LEAKY)
    cfg = json.loads((llm / "config.json").read_text())
    cfg.update(
        model_type="leaky_llama",
        architectures=["LeakyForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_leaky.LeakyConfig",
            "AutoModelForCausalLM": "modeling_leaky.LeakyForCausalLM",
        },
    )
    (llm / "config.json").write_text(json.dumps(cfg, indent=2))
    return out_dir
