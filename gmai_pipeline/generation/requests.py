"""The canonical request: what is sent, and the SHA-256 that names it (cache key and Batch custom_id).

The key covers everything that changes the answer (model snapshot, prompt version and exact text,
MD5 of the exact image bytes sent, parameters) and nothing that does not (paths, sample ids), so
moving data or re-sharding never pays twice. Only the body goes over the wire: the rendered image
and the prompt (annotation fields). `fields` and the image path stay on this machine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmai_pipeline.quarantine import Reason
from gmai_pipeline.storage import md5_bytes

CHAT_URL = "/v1/chat/completions"
MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
}

VQA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "pairs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                "required": ["question", "answer"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["pairs"],
    "additionalProperties": False,
}
TRANSLATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"turns": {"type": "array", "items": {"type": "string"}}},
    "required": ["turns"],
    "additionalProperties": False,
}


def json_schema_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


@dataclass(frozen=True)
class ImageRef:
    """A stored image: read at send time and checked against the MD5 that went into the key."""

    path: Path
    md5: str
    mime: str

    @classmethod
    def from_file(cls, path: Path) -> ImageRef:
        mime = MIME.get(path.suffix.lower())
        if mime is None:
            raise ValueError(f"{path.name}: unsupported image type for a data URL")
        return cls(path=path, md5=md5_bytes(path.read_bytes()), mime=mime)

    def data_url(self) -> str:
        data = self.path.read_bytes()
        if md5_bytes(data) != self.md5:
            raise ValueError(f"{self.path.name} changed since its request was keyed")
        return f"data:{self.mime};base64,{base64.b64encode(data).decode('ascii')}"


@dataclass
class GenRequest:
    task: str  # caption | region_caption | vqa | translate
    model: str
    prompt_version: str
    prompt: str
    params: dict[str, Any]
    image: ImageRef | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # local only: template backend and validation
    key: str = ""

    def __post_init__(self) -> None:
        self.key = request_key(self)

    def canonical(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "task": self.task,
            "prompt_version": self.prompt_version,
            "prompt": self.prompt,
            "image_md5": self.image.md5 if self.image else None,
            "params": self.params,
        }

    def body(self) -> dict[str, Any]:
        """The chat-completions body, exactly as sent online and inside a Batch JSONL line."""
        content: list[dict[str, Any]] = [{"type": "text", "text": self.prompt}]
        if self.image is not None:
            url: dict[str, Any] = {"url": self.image.data_url()}
            if self.params.get("image_detail"):
                url["detail"] = self.params["image_detail"]
            content.append({"type": "image_url", "image_url": url})
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": content}]}
        for name in ("temperature", "max_tokens", "seed"):
            if self.params.get(name) is not None:
                body[name] = self.params[name]
        if self.params.get("logprobs"):
            body["logprobs"] = True
        if self.task == "vqa":
            body["response_format"] = json_schema_format("vqa_pairs", VQA_SCHEMA)
        elif self.task == "translate":
            body["response_format"] = json_schema_format("translation", TRANSLATION_SCHEMA)
        return body


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(request: GenRequest) -> str:
    return hashlib.sha256(canonical_json(request.canonical()).encode("utf-8")).hexdigest()


@dataclass
class Completion:
    """One answer (live or from the cache)."""

    content: str
    tokens_in: int = 0
    tokens_out: int = 0
    mean_prob: float | None = None
    model: str = ""
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "mean_prob": self.mean_prob,
            "model": self.model,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], cached: bool = False) -> Completion:
        if not isinstance(data.get("content"), str):
            raise TypeError("cached response has no text content")
        return cls(
            content=data["content"],
            tokens_in=int(data.get("tokens_in") or 0),
            tokens_out=int(data.get("tokens_out") or 0),
            mean_prob=data.get("mean_prob"),
            model=data.get("model") or "",
            cached=cached,
        )


@dataclass
class Failure:
    """A request that got no usable answer from the endpoint (after the SDK's retries).

    `retry`: the endpoint answered, but with something that is not a chat completion (an HTML
    error page behind HTTP 200, JSON of another shape). That is handled like an invalid answer:
    asked once more, then quarantined; never cached, so a later run asks again.
    """

    reason: Reason | str  # a `Reason`, or a code of its families (`http_<status>`, `batch_<statuses>`)
    detail: str = ""
    retry: bool = False


MALFORMED = Reason.MALFORMED_RESPONSE


def _malformed(detail: str) -> Failure:
    return Failure(MALFORMED, detail, retry=True)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def parse_completion(body: Any) -> Completion | Failure:
    """A chat.completion JSON (online, or a Batch output line's body) -> Completion, checking its shape.

    Anything else becomes a retryable `malformed_response` Failure; the detail names what was wrong,
    never the body (it could echo the prompt).
    """
    if isinstance(body, bytes | bytearray | str):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _malformed("HTTP 200 but the body is not JSON")
    if not isinstance(body, dict):
        return _malformed(f"the body is JSON {type(body).__name__}, not an object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return _malformed("no 'choices' list of objects in the body")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        return _malformed("choices[0].message is not an object")
    content = message.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        return _malformed(f"choices[0].message.content is {type(content).__name__}, not text")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    model = body.get("model")
    return Completion(
        content=content,
        tokens_in=_count(usage.get("prompt_tokens")),
        tokens_out=_count(usage.get("completion_tokens")),
        mean_prob=mean_token_prob(choice.get("logprobs")),
        model=model if isinstance(model, str) else "",
    )


def mean_token_prob(logprobs: Any) -> float | None:
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(tokens, list):
        return None
    values = [
        t["logprob"]
        for t in tokens
        if isinstance(t, dict) and isinstance(t.get("logprob"), int | float) and math.isfinite(t["logprob"])
    ]
    return sum(math.exp(min(0.0, v)) for v in values) / len(values) if values else None
