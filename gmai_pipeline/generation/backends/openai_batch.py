"""The Batch API: half price, results within 24 h, out of order (joined on `custom_id` = cache key).

Requests are sorted by key and split greedily into files of at most 50,000 lines and 200 MB, so
the same request set always gives the same plan. Each created batch id is written to a state file
named after the request set (`llm_cache/batches/<set sha256>.json`) the moment it exists: a
restarted run with the same misses finds its batches and polls them instead of paying twice.
If the batches are not done within `max_wait_s`, `BatchPending` says so and the state stays.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gmai_pipeline.generation.backends import Result, is_local_url
from gmai_pipeline.generation.requests import CHAT_URL, Failure, GenRequest, parse_completion
from gmai_pipeline.quarantine import Reason, batch_failure, http_failure
from gmai_pipeline.storage import atomic_write_text

if TYPE_CHECKING:  # the SDK is imported on first use: it costs ~0.5 s of every Dagster code load
    import openai

MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
TERMINAL = ("completed", "failed", "expired", "cancelled")


class BatchPending(RuntimeError):
    """Batches were submitted but are not finished yet; re-run later to collect them (nothing is resent)."""


def request_set_id(model: str, keys: list[str]) -> str:
    return hashlib.sha256("\n".join([model, *sorted(keys)]).encode("utf-8")).hexdigest()


def jsonl_line(request: GenRequest) -> bytes:
    line = {"custom_id": request.key, "method": "POST", "url": CHAT_URL, "body": request.body()}
    return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def plan_chunks(requests: list[GenRequest], max_requests: int, max_bytes: int) -> list[list[GenRequest]]:
    """Greedy split of key-sorted requests; a single line over max_bytes is an error (it would never fit)."""
    chunks: list[list[GenRequest]] = []
    current: list[GenRequest] = []
    size = 0
    for request in sorted(requests, key=lambda r: r.key):
        n = len(jsonl_line(request))
        if n > max_bytes:
            raise ValueError(f"request {request.key} is {n} bytes, over the batch file limit of {max_bytes}")
        if current and (len(current) >= max_requests or size + n > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(request)
        size += n
    if current:
        chunks.append(current)
    return chunks


class OpenAIBatch:
    name = "openai_batch"

    def __init__(
        self,
        model: str,
        state_dir: Path,
        base_url: str | None = None,
        api_key: str | None = None,
        poll_s: float = 60.0,
        max_wait_s: float = 26 * 3600.0,
        max_requests: int = MAX_REQUESTS,
        max_bytes: int = MAX_BYTES,
        timeout_s: float = 600.0,
        max_retries: int = 8,
    ):
        self.model = model
        self.state_dir = Path(state_dir)
        self.base_url = base_url or None
        self._api_key = api_key or "EMPTY"
        self.poll_s = poll_s
        self.max_wait_s = max_wait_s
        self.max_requests = min(max_requests, MAX_REQUESTS)
        self.max_bytes = min(max_bytes, MAX_BYTES)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.requests_sent = 0
        self.batches_created = 0
        self.batches_resumed = 0

    @property
    def is_local(self) -> bool:
        return is_local_url(self.base_url)

    def client(self) -> openai.OpenAI:
        import openai

        return openai.OpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            timeout=self.timeout_s,
            max_retries=self.max_retries,
        )

    def _state_path(self, set_id: str) -> Path:
        return self.state_dir / f"{set_id}.json"

    def _save(self, path: Path, state: dict[str, Any]) -> None:
        atomic_write_text(path, json.dumps(state, indent=1))

    def submit(self, client: openai.OpenAI, requests: list[GenRequest]) -> tuple[Path, dict[str, Any]]:
        """Create (or find) the batches of this request set; the state file is updated after each one."""
        set_id = request_set_id(self.model, [r.key for r in requests])
        path = self._state_path(set_id)
        state = json.loads(path.read_text()) if path.exists() else {}
        if not state or state.get("collected"):
            # Collected before and missing again: those requests failed; submit them afresh.
            state = {"model": self.model, "batches": {}}
        for i, chunk in enumerate(plan_chunks(requests, self.max_requests, self.max_bytes)):
            if str(i) in state["batches"]:
                self.batches_resumed += 1
                continue
            data = b"".join(jsonl_line(r) for r in chunk)
            uploaded = client.files.create(
                file=(f"gmai-{set_id[:12]}-{i:04d}.jsonl", io.BytesIO(data)), purpose="batch"
            )
            batch = client.batches.create(
                input_file_id=uploaded.id,
                endpoint=CHAT_URL,
                completion_window="24h",
                metadata={"request_set": set_id[:16], "chunk": str(i)},
            )
            state["batches"][str(i)] = {
                "batch_id": batch.id,
                "input_file_id": uploaded.id,
                "requests": len(chunk),
            }
            self._save(path, state)
            self.batches_created += 1
            self.requests_sent += len(chunk)
        return path, state

    def _wait(self, client: openai.OpenAI, batch_ids: list[str]) -> dict[str, Any]:
        deadline = time.monotonic() + self.max_wait_s
        done: dict[str, Any] = {}
        while True:
            for batch_id in batch_ids:
                if batch_id not in done:
                    batch = client.batches.retrieve(batch_id)
                    if batch.status in TERMINAL:
                        done[batch_id] = batch
            if len(done) == len(batch_ids):
                return done
            if time.monotonic() >= deadline:
                pending = [b for b in batch_ids if b not in done]
                raise BatchPending(
                    f"{len(pending)} batch(es) still running ({', '.join(pending)}); re-run to collect"
                )
            time.sleep(self.poll_s)

    @staticmethod
    def _parse(text: str) -> dict[str, Result]:
        results: dict[str, Result] = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                continue  # no custom_id to join on: its request ends as "batch_missing" below
            if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
                continue
            response = item.get("response") if isinstance(item.get("response"), dict) else {}
            status = response.get("status_code")
            body = response.get("body")
            if status == 200 and body:
                results[item["custom_id"]] = parse_completion(body)
            else:
                error = item.get("error") or (body.get("error") if isinstance(body, dict) else None)
                error = error if isinstance(error, dict) else {}
                code = http_failure(status) if isinstance(status, int) else Reason.BATCH_ERROR
                results[item["custom_id"]] = Failure(
                    code, str(error.get("code") or error.get("message") or "")[:200]
                )
        return results

    def run(self, requests: list[GenRequest]) -> dict[str, Result]:
        if not requests:
            return {}
        with self.client() as client:
            path, state = self.submit(client, requests)
            ids = [b["batch_id"] for b in state["batches"].values()]
            finished = self._wait(client, ids)
            results: dict[str, Result] = {}
            for batch_id, batch in finished.items():
                for file_id in (batch.output_file_id, batch.error_file_id):
                    if file_id:
                        results.update(self._parse(client.files.content(file_id).text))
                if batch.status != "completed":
                    state.setdefault("ended", {})[batch_id] = batch.status
            state["collected"] = True
            self._save(path, state)
        statuses = {b.status for b in finished.values()}
        ended = statuses - {"completed"}
        missing = batch_failure(ended) if ended else Reason.BATCH_MISSING
        return {
            r.key: results.get(r.key) or Failure(missing, "no line for this custom_id in the batch output")
            for r in requests
        }
