"""Inference for a stage export: batched greedy generation with the KV cache, as the model was trained.

The prompt goes through the same chat template (`chat.tokenize_conversation`: one human turn, the
assistant's turn left open) and the images through the same LLaVA "pad" preprocessing
(`data.load_image`) as in training; `<image>` placeholders expand to the image tokens the vision tower
fills. A batch is left-padded, embedded once (`LlavaModel.embed`) and handed to the LLM's own
`generate` (greedy, KV cache), so every row decodes exactly as it would alone. bf16 on CUDA, fp32 on CPU.

    python -m training_jobs.infer --model training/stage3/export --image scan.png --question "What is shown?"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from training_jobs.chat import IMAGE_PLACEHOLDER, tokenize_conversation
from training_jobs.data import load_image
from training_jobs.model import load_model

TEMPLATE_STOPS = {"internlm2": ("<|im_end|>",)}


def pick_device(pref: str = "auto") -> torch.device:
    if pref == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU")
    if pref == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


class Generator:
    """A loaded stage export that answers batches of (prompt, images)."""

    def __init__(self, model_dir: Path, device: str | torch.device = "auto", trust_remote_code: bool = False):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model, self.tokenizer = load_model(
            Path(model_dir), "sdpa", trust_remote_code=trust_remote_code, dtype=dtype
        )
        self.model.to(self.device).eval()
        self.template = self.model.meta.get("template", "internlm2")
        tok = self.tokenizer
        self.pad_id = next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)
        stops = [tok.convert_tokens_to_ids(t) for t in TEMPLATE_STOPS.get(self.template, ())]
        self.stop_ids = [t for t in [*stops, tok.eos_token_id] if t is not None and t != tok.unk_token_id]

    def prompt_ids(self, prompt: str, n_images: int) -> list[int]:
        if prompt.count(IMAGE_PLACEHOLDER) != n_images:
            raise ValueError(
                f"prompt has {prompt.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} for {n_images} images"
            )
        ids, _ = tokenize_conversation(
            self.tokenizer, [{"from": "human", "value": prompt}], self.template, self.model.num_image_tokens
        )
        return ids

    @torch.inference_mode()
    def generate(self, prompts: list[str], images: list[list[Path]], max_new_tokens: int = 256) -> list[str]:
        """One answer per prompt; each prompt's `<image>` placeholders take its images in order."""
        rows = [self.prompt_ids(p, len(ims)) for p, ims in zip(prompts, images, strict=True)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row's next token sits at the same position
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        flat = [p for ims in images for p in ims]
        pixels = (
            torch.stack([load_image(Path(p), self.model.image_size) for p in flat]).to(self.device)
            if flat
            else None
        )
        ids, mask = ids.to(self.device), mask.to(self.device)
        embeds = self.model.embed(ids, pixels)
        out = self.model.llm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.stop_ids or None,
            pad_token_id=self.pad_id,
        )
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training_jobs.infer", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="a stage's export/ folder (or any model folder)")
    p.add_argument("--image", type=Path, action="append", default=[], help="an image (repeat for several)")
    p.add_argument(
        "--question", required=True, help="`<image>` marks where each image goes (default: before)"
    )
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--trust-remote-code", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    for image in args.image:
        if not image.is_file():
            raise SystemExit(f"image {image} does not exist")
    question = args.question
    if IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER * len(args.image) + ("\n" if args.image else "") + question
    gen = Generator(args.model, args.device, args.trust_remote_code)
    t0 = time.perf_counter()
    (answer,) = gen.generate([question], [args.image], args.max_new_tokens)
    print(answer)
    print(f"({time.perf_counter() - t0:.2f} s on {gen.device})", file=sys.stderr, flush=True)
    return answer


if __name__ == "__main__":
    main()
