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
