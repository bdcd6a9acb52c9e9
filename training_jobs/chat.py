"""Chat templates and tokenization of LLaVA records, with labels only on the assistant's turns.

Each turn is tokenized on its own and the pieces concatenated, so the boundary between prompt
(label -100) and answer (labels = ids) is exact whatever the tokenizer merges. `<image>` in a human
turn becomes `num_image_tokens` copies of IMAGE_TOKEN_INDEX, a negative id outside every vocabulary
(LLaVA's convention), so no embedding matrix has to be resized; the model swaps in image features.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class ChatTemplate:
    system: str  # formatted with {system}; "" for none
    user: str  # formatted with {value}; ends where the assistant's answer starts
    assistant: str  # formatted with {value}; the whole string is supervised
    default_system: str = ""
    bos: bool = False  # prepend the tokenizer's BOS token (unsupervised)


TEMPLATES: dict[str, ChatTemplate] = {
    # InternLM2 / InternLM2.5 chat format (GMAI-VL's LLM).
    "internlm2": ChatTemplate(
        system="<|im_start|>system\n{system}<|im_end|>\n",
        user="<|im_start|>user\n{value}<|im_end|>\n<|im_start|>assistant\n",
        assistant="{value}<|im_end|>\n",
        default_system="You are a helpful medical assistant.",
        bos=True,
    ),
    # LLaVA's pretraining format: the image then the caption, nothing else.
    "plain": ChatTemplate(system="", user="{value}", assistant="{value}\n"),
}


def special_tokens(template: str) -> list[str]:
    return ["<|im_start|>", "<|im_end|>"] if template == "internlm2" else []


def _encode_text(tokenizer, text: str, num_image_tokens: int, image_only: bool) -> list[int]:
    """Text with each `<image>` expanded; `image_only` keeps just the image tokens (the plain template)."""
    ids: list[int] = []
    for i, part in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            ids.extend([IMAGE_TOKEN_INDEX] * num_image_tokens)
        if part and not image_only:
            ids.extend(tokenizer.encode(part, add_special_tokens=False))
    return ids


def tokenize_conversation(
    tokenizer,
    conversations: list[dict],
    template: str = "internlm2",
    num_image_tokens: int = 576,
    system: str | None = None,
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one LLaVA record; labels are IGNORE_INDEX except on gpt turns."""
    tpl = TEMPLATES[template]
    ids: list[int] = []
    labels: list[int] = []
    if tpl.bos and tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
    sys_text = tpl.default_system if system is None else system
    if tpl.system and sys_text:
        piece = tokenizer.encode(tpl.system.format(system=sys_text), add_special_tokens=False)
        ids += piece
        labels += [IGNORE_INDEX] * len(piece)
    plain = template == "plain"
    for turn in conversations:
        role, value = turn["from"], turn["value"]
        if role in ("human", "user"):
            piece = _encode_text(tokenizer, tpl.user.format(value=value), num_image_tokens, plain)
            ids += piece
            labels += [IGNORE_INDEX] * len(piece)
        elif role in ("gpt", "assistant"):
            piece = tokenizer.encode(tpl.assistant.format(value=value), add_special_tokens=False)
            ids += piece
            labels += piece
        else:
            raise ValueError(f"unknown conversation role {role!r}")
    return ids, labels
