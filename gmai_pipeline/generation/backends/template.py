"""The offline `template` backend: deterministic text built from <modality, label, department, bbox>.

It answers the same requests the model would get, in the same formats (plain caption, region
caption starting "This region", VQA JSON, translation JSON), so the demo exercises every stage.
Its text is not model output and says nothing the annotation does not: every record made from it
carries generator "template:<version>". Its "translation" is a phrase-table rendering of its own
English sentences (labels kept in their original form); English it did not write is refused.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from gmai_pipeline import safe_yaml
from gmai_pipeline.generation import prompts
from gmai_pipeline.generation.backends import Result
from gmai_pipeline.generation.requests import Completion, Failure, GenRequest
from gmai_pipeline.quarantine import Reason

VERSION_FILE = "template_v1.yaml"


@lru_cache(maxsize=1)
def phrase_table() -> dict[str, Any]:
    return safe_yaml.load(prompts.PROMPTS_DIR / VERSION_FILE)


def position(bbox: list[int], width: int, height: int) -> str:
    """Coarse 3x3 position of the box centre: 'upper left' ... 'central' ... 'lower right'."""
    cx = (bbox[0] + bbox[2]) / 2 / max(width, 1)
    cy = (bbox[1] + bbox[3]) / 2 / max(height, 1)
    row = "upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else ""
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    return " ".join(p for p in (row, col) if p) or "central"


def _article(word: str) -> str:
    return "an" if word[:1].upper() in "AEIOU" or word.split("-")[0] in ("MR", "X", "MRI") else "a"


def _names(f: dict[str, Any]) -> dict[str, Any]:
    table = phrase_table()
    bbox = f.get("bbox")
    out = {
        "mod": f["modality"],
        "a_mod": f"{_article(f['modality'])} {f['modality']}",
        "dept": f["department"],
        "label": f["label"],
        "w": f["width"],
        "h": f["height"],
        "mod_zh": table["modality_zh"].get(f["modality"], f["modality"]),
        "dept_zh": table["department_zh"].get(f["department"], f["department"]),
    }
    if bbox is not None:
        x0, y0, x1, y1 = bbox
        pos = position(bbox, f["width"], f["height"])
        out |= {
            "box": prompts.format_bbox(bbox),
            "pos": pos,
            "pos_zh": table["position_zh"][pos],
            "pct": round(100 * (x1 - x0) * (y1 - y0) / max(f["width"] * f["height"], 1), 1),
        }
    return out


def caption(f: dict[str, Any]) -> tuple[str, str]:
    n = _names(f)
    if f.get("bbox") is not None:
        return (
            f"This region, the box {n['box']} in a {n['w']} x {n['h']} pixel {n['mod']} image from {n['dept']}, "
            f"is annotated as {n['label']}. It lies in the {n['pos']} part of the image and covers about "
            f"{n['pct']}% of its area.",
            f"该区域为一张来自{n['dept_zh']}的 {n['w']} x {n['h']} 像素{n['mod_zh']}图像中的方框 {n['box']}，"
            f"标注为 {n['label']}。它位于图像的{n['pos_zh']}，约占图像面积的 {n['pct']}%。",
        )
    return (
        f"This {n['mod']} image from {n['dept']} is annotated as {n['label']}. "
        f"The label applies to the whole image of {n['w']} x {n['h']} pixels.",
        f"这是一张来自{n['dept_zh']}的{n['mod_zh']}图像，标注为 {n['label']}。该标注适用于整幅 {n['w']} x {n['h']} 像素的图像。",
    )


def vqa_pairs(f: dict[str, Any]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """[((q_en, a_en), (q_zh, a_zh)), ...]: three pairs, the label first."""
    n = _names(f)
    if f.get("bbox") is not None:
        return [
            (
                (
                    f"What is annotated in the region {n['box']}?",
                    f"The region {n['box']} is annotated as {n['label']}.",
                ),
                (f"区域 {n['box']} 中标注了什么？", f"区域 {n['box']} 标注为 {n['label']}。"),
            ),
            (
                ("Which imaging modality was used to acquire this image?", f"This is {n['a_mod']} image."),
                ("这张图像使用了哪种成像方式？", f"这是一张{n['mod_zh']}图像。"),
            ),
            (
                (
                    f"Where is the {n['label']} located in the image?",
                    f"It lies in the {n['pos']} part of the image, inside the box {n['box']}.",
                ),
                (f"{n['label']} 位于图像的什么位置？", f"它位于图像的{n['pos_zh']}，在方框 {n['box']} 内。"),
            ),
        ]
    return [
        (
            ("What is annotated in this image?", f"The image is annotated as {n['label']}."),
            ("这张图像中标注了什么？", f"这张图像标注为 {n['label']}。"),
        ),
        (
            ("Which imaging modality was used to acquire this image?", f"This is {n['a_mod']} image."),
            ("这张图像使用了哪种成像方式？", f"这是一张{n['mod_zh']}图像。"),
        ),
        (
            ("Which clinical department does this image belong to?", f"It belongs to {n['dept']}."),
            ("这张图像属于哪个临床科室？", f"它属于{n['dept_zh']}。"),
        ),
    ]


def turns(kind: str, f: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The English and Chinese turns (no `<image>` marker) this backend writes for a record."""
    if kind == "vqa":
        en = [t for (q, a), _ in vqa_pairs(f) for t in (q, a)]
        zh = [t for _, (q, a) in vqa_pairs(f) for t in (q, a)]
        return en, zh
    cap_en, cap_zh = caption(f)
    sid, bbox = f["sample_id"], f.get("bbox")
    return [prompts.instruction(kind, sid, bbox, "en"), cap_en], [
        prompts.instruction(kind, sid, bbox, "zh"),
        cap_zh,
    ]


class TemplateBackend:
    name = "template"
    is_local = True

    def __init__(self, model: str = "template-v1"):
        self.model = model
        self.requests_sent = 0

    def answer(self, request: GenRequest) -> Result:
        f = request.fields
        if request.task in ("caption", "region_caption"):
            return Completion(content=caption(f)[0], model=self.model)
        if request.task == "vqa":
            pairs = [{"question": q, "answer": a} for (q, a), _ in vqa_pairs(f)]
            return Completion(content=json.dumps({"pairs": pairs}, ensure_ascii=False), model=self.model)
        if request.task == "translate":
            en, zh = turns(f["kind"], f)
            if list(f["turns"]) != en:
                return Failure(
                    Reason.TEMPLATE_CANNOT_TRANSLATE,
                    "the English text was not written by the template backend",
                )
            return Completion(content=json.dumps({"turns": zh}, ensure_ascii=False), model=self.model)
        return Failure(Reason.UNKNOWN_TASK, request.task)

    def run(self, requests: list[GenRequest]) -> dict[str, Result]:
        return {r.key: self.answer(r) for r in requests}
