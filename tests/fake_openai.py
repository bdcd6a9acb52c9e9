"""A real local HTTP server speaking the OpenAI endpoints generation uses, with scriptable faults.

`/v1/chat/completions`, `/v1/files` (upload, retrieve, content), `/v1/batches` (create, retrieve).
Each chat request (online, or a line of a batch) takes the next behaviour from `behaviours`
(default "valid"): "valid", "invalid" (unparseable JSON, or a caption that breaks the rules),
"429" (with Retry-After), "500", "slow" (answers after `slow_s`, past the client's timeout),
"not_json" (HTTP 200 with an HTML page, as a misconfigured proxy sends) and "wrong_shape"
(HTTP 200 with JSON that is not a chat completion).
Every request is counted and every request body is kept, so tests can assert what was sent.
Used by tests and by bench/generate.py; binds 127.0.0.1 on a free port, runs in a thread.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter, deque
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LABEL = re.compile(r'(?:labeled as|the medical term) "([^"]+)"')
N_TURNS = re.compile(r"same number of turns \((\d+)\)")


def _prompt_text(body: dict[str, Any]) -> str:
    parts = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += [c.get("text", "") for c in content or [] if c.get("type") == "text"]
    return "\n".join(parts)


def _format_name(body: dict[str, Any]) -> str:
    return ((body.get("response_format") or {}).get("json_schema") or {}).get("name", "")


def answer_for(body: dict[str, Any], behaviour: str) -> str:
    """A plausible answer to a generation request, or a broken one for behaviour 'invalid'."""
    prompt = _prompt_text(body)
    label = (LABEL.search(prompt) or [None, "the finding"])[1]
    name = _format_name(body)
    if behaviour == "invalid":
        return '{"pairs": [{"question": "unterminated' if name else "Bad."
    if name == "vqa_pairs":
        pairs = [
            {"question": "What abnormality is visible?", "answer": f"The image shows features of {label}."},
            {"question": "Where is it?", "answer": "It is in the centre of the image."},
        ]
        return json.dumps({"pairs": pairs})
    if name == "translation":
        n = int((N_TURNS.search(prompt) or [None, "2"])[1])
        return json.dumps(
            {"turns": [f"第{i + 1}句的中文翻译，可见 {label} 的表现。" for i in range(n)]}, ensure_ascii=False
        )
    if 'start the description with the words "this region"' in prompt.lower():
        return f"This region shows a well-defined area whose appearance is consistent with {label}, with smooth margins."
    return (
        f"The image shows the typical appearance of {label}, with the surrounding structures clearly visible."
    )


def completion(body: dict[str, Any], content: str) -> dict[str, Any]:
    prompt = _prompt_text(body)
    images = sum(
        1
        for m in body.get("messages", [])
        for c in (m.get("content") or [])
        if isinstance(c, dict) and c.get("type") == "image_url"
    )
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": "stop",
    }
    if body.get("logprobs"):
        choice["logprobs"] = {
            "content": [
                {"token": t, "logprob": -0.1, "bytes": None, "top_logprobs": []} for t in content.split()[:20]
            ]
        }
    prompt_tokens, completion_tokens = len(prompt) // 4 + 85 * images, max(1, len(content) // 4)
    return {
        "id": f"chatcmpl-{random.randrange(1 << 30)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


# HTTP 200 bodies that are not chat completions (a str is sent as text/html, as proxies do).
MALFORMED: dict[str, Any] = {
    "not_json": "<html><body><h1>502 Bad Gateway</h1></body></html>",
    "wrong_shape": {"object": "chat.completion", "choices": "rate limit exceeded, try later"},
}


class FakeOpenAI:
    def __init__(
        self,
        latency_s: float = 0.0,
        slow_s: float = 1.0,
        retry_after: str = "0.05",
        out_of_order: bool = True,
    ):
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.out_of_order = out_of_order
        self.hold_batches = False  # retrieve answers "in_progress" while True
        self.behaviours: deque[str] = deque()
        self.counts: Counter[str] = Counter()
        self.bodies: list[
            bytes
        ] = []  # every request body received (chat JSON, multipart uploads, batch create)
        self.chat_log: list[tuple[str, float]] = []  # (behaviour, time) per chat request
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_line_order: list[list[str]] = []  # custom_ids in output order, per completed batch
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> FakeOpenAI:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def script(self, *behaviours: str) -> None:
        self.behaviours.extend(behaviours)

    def next_behaviour(self) -> str:
        with self._lock:
            return self.behaviours.popleft() if self.behaviours else "valid"

    # -- endpoints ------------------------------------------------------------------------------
    def chat(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        behaviour = self.next_behaviour()
        with self._lock:
            self.counts["chat"] += 1
            self.chat_log.append((behaviour, time.monotonic()))
        if self.latency_s:
            time.sleep(self.latency_s)
        if behaviour == "429":
            return (
                429,
                {"error": {"message": "rate limited", "type": "requests", "code": "rate_limit_exceeded"}},
                {"Retry-After": self.retry_after},
            )
        if behaviour == "500":
            return 500, {"error": {"message": "internal error", "type": "server_error"}}, {}
        if behaviour == "slow":
            time.sleep(self.slow_s)
        if behaviour in MALFORMED:
            return 200, MALFORMED[behaviour], {}
        return 200, completion(body, answer_for(body, behaviour)), {}

    def upload(self, content_type: str, raw: bytes) -> dict[str, Any]:
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
        )
        fields: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True))
        filename, data = fields["file"]
        with self._lock:
            self.counts["files.create"] += 1
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = {
                "data": data,
                "filename": filename,
                "purpose": fields["purpose"][1].decode(),
            }
        return self._file_object(file_id)

    def _file_object(self, file_id: str) -> dict[str, Any]:
        f = self.files[file_id]
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(f["data"]),
            "created_at": int(time.time()),
            "filename": f["filename"] or "upload.jsonl",
            "purpose": f["purpose"],
            "status": "processed",
        }

    def create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.counts["batches.create"] += 1
            batch_id = f"batch_{len(self.batches) + 1}"
            self.batches[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": body["endpoint"],
                "input_file_id": body["input_file_id"],
                "completion_window": body["completion_window"],
                "status": "validating",
                "created_at": int(time.time()),
                "output_file_id": None,
                "error_file_id": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "metadata": body.get("metadata"),
            }
            return dict(self.batches[batch_id])

    def retrieve_batch(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            self.counts["batches.retrieve"] += 1
            batch = self.batches[batch_id]
        if self.hold_batches:
            batch["status"] = "in_progress"
        elif batch["status"] != "completed":
            self._process(batch)
        return dict(batch)

    def _process(self, batch: dict[str, Any]) -> None:
        lines = [
            json.loads(x)
            for x in self.files[batch["input_file_id"]]["data"].decode().splitlines()
            if x.strip()
        ]
        out, err = [], []
        for line in lines:
            behaviour = self.next_behaviour()
            with self._lock:
                self.counts["batch_lines"] += 1
            if behaviour in MALFORMED:
                out.append(
                    {
                        "id": f"req_{line['custom_id'][:8]}",
                        "custom_id": line["custom_id"],
                        "response": {"status_code": 200, "request_id": "r", "body": MALFORMED[behaviour]},
                        "error": None,
                    }
                )
            elif behaviour in ("429", "500", "slow"):
                code = 500 if behaviour != "429" else 429
                err.append(
                    {
                        "id": f"req_{line['custom_id'][:8]}",
                        "custom_id": line["custom_id"],
                        "response": {
                            "status_code": code,
                            "body": {"error": {"message": "failed", "code": behaviour}},
                        },
                        "error": None,
                    }
                )
            else:
                body = completion(line["body"], answer_for(line["body"], behaviour))
                out.append(
                    {
                        "id": f"req_{line['custom_id'][:8]}",
                        "custom_id": line["custom_id"],
                        "response": {"status_code": 200, "request_id": "r", "body": body},
                        "error": None,
                    }
                )
        if self.out_of_order:
            random.Random(len(lines)).shuffle(out)
            out.reverse()
        self.batch_line_order.append([o["custom_id"] for o in out])
        with self._lock:
            for kind, items in (("output_file_id", out), ("error_file_id", err)):
                if items:
                    file_id = f"file-{len(self.files) + 1}"
                    data = "".join(json.dumps(i) + "\n" for i in items).encode()
                    self.files[file_id] = {
                        "data": data,
                        "filename": f"{kind}.jsonl",
                        "purpose": "batch_output",
                    }
                    batch[kind] = file_id
            batch["status"] = "completed"
            batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall
    fake: FakeOpenAI

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(
        self, status: int, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> None:
        if raw is None and isinstance(payload, str):  # a text page where JSON was expected
            data, content_type = payload.encode(), "text/html"
        elif raw is not None:
            data, content_type = raw, "application/octet-stream"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): that is the point of "slow"

    def _body(self) -> bytes:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.fake._lock:
            self.fake.bodies.append(raw)
        return raw

    def do_POST(self) -> None:  # noqa: N802
        raw = self._body()
        if self.path == "/v1/chat/completions":
            self._send(*self.fake.chat(json.loads(raw)))
        elif self.path == "/v1/files":
            self._send(200, self.fake.upload(self.headers["Content-Type"], raw))
        elif self.path == "/v1/batches":
            self._send(200, self.fake.create_batch(json.loads(raw)))
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/_fake/counts":  # for a client in another process (bench/generate.py)
            self._send(200, dict(self.fake.counts))
            return
        m = re.fullmatch(r"/v1/files/([^/]+)(/content)?", self.path)
        if m and m[1] in self.fake.files:
            self.fake.counts["files.content" if m[2] else "files.retrieve"] += 1
            if m[2]:
                self._send(200, None, raw=self.fake.files[m[1]]["data"])
            else:
                self._send(200, self.fake._file_object(m[1]))
            return
        m = re.fullmatch(r"/v1/batches/([^/]+)", self.path)
        if m and m[1] in self.fake.batches:
            self._send(200, self.fake.retrieve_batch(m[1]))
            return
        self._send(404, {"error": {"message": f"no route {self.path}"}})


def serve_forever(latency_s: float) -> None:
    """Run the fake in this process until killed; prints its base URL on the first line of stdout."""
    with FakeOpenAI(latency_s=latency_s) as fake:
        print(fake.base_url, flush=True)
        threading.Event().wait()


# ---------------------------------------------------------------------------------------------
# Fixture data: a tiny `decontaminated` table with real PNGs, for tests and bench/generate.py

# Values stamped into source paths and sample ids (the way a careless reader could carry a DICOM
# header into a path); none of them may appear in any request body.
LEAK_MARKERS = ("PATIENT_DOE^JOHN", "PID-4242-SECRET", "StudyDate-19700101")


def sample_ids_in(partition: str, n: int, prefix: str, n_shards: int | None = None) -> list[str]:
    """`n` GMAI-style sample ids that hash to `partition` (so a test can target one shard)."""
    from gmai_pipeline.partitions import N_SHARDS, shard_of

    out, i = [], 0
    while len(out) < n:
        sid = f"2d#cls#X-Ray#{prefix}#{LEAK_MARKERS[0]}#{LEAK_MARKERS[1]}#{LEAK_MARKERS[2]}#img{i:05d}.png"
        if shard_of(sid, n_shards or N_SHARDS) == partition:
            out.append(sid)
        i += 1
    return out


def write_fixture(root, rows_spec: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write tiny PNGs under `root/images/...` and `root/decontaminated.parquet`; returns the rows.

    rows_spec items: sample_id, dataset, label, bbox (or None); optional modality, department.
    """
    from pathlib import Path

    import pyarrow as pa
    from PIL import Image

    from gmai_pipeline.schemas import NORMALIZED_SCHEMA
    from gmai_pipeline.storage import md5_file, write_table

    root = Path(root)
    rows = []
    for i, spec in enumerate(rows_spec):
        rel = f"images/2d/cls/X-Ray/{spec['dataset']}/{i:05d}.png"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (32, 24), color=(i * 37) % 256).save(path)
        sid = spec["sample_id"]
        rows.append(
            {
                "sample_id": sid,
                "dataset": spec["dataset"],
                "source_path": sid.split("#", 4)[-1].replace("#", "/"),
                "slice_axis": None,
                "slice_index": None,
                "split": "train",
                "image": rel,
                "image_md5": md5_file(path),
                "width": 32,
                "height": 24,
                "modality": spec.get("modality", "X-Ray"),
                "label": spec["label"],
                "department": spec.get("department", "Pulmonary Medicine"),
                "task_type": "2d_det" if spec.get("bbox") else "2d_cls",
                "clinical_task": "Disease Diagnosis",
                "bbox": spec.get("bbox"),
            }
        )
    write_table(root / "decontaminated.parquet", pa.Table.from_pylist(rows, schema=NORMALIZED_SCHEMA))
    return rows


if __name__ == "__main__":
    import sys

    serve_forever(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0)
