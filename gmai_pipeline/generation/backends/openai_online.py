"""Chat completions through the `openai` SDK (OpenAI or any compatible server, e.g. vLLM).

Async with a bounded number of requests in flight (the semaphore is our own rate limit; the
endpoint's 429s are handled by the SDK, which honours Retry-After). `max_retries` is raised for
bulk work; what still fails after the retries becomes a Failure with a stable reason code and is
not cached, so the next run tries it again. The API key is passed to the client, never logged.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gmai_pipeline.generation.backends import Result, is_local_url
from gmai_pipeline.generation.requests import Failure, GenRequest, parse_completion
from gmai_pipeline.quarantine import Reason, http_failure
from gmai_pipeline.redact import redact

if TYPE_CHECKING:  # the SDK is imported on first use: it costs ~0.5 s of every Dagster code load
    import openai


def failure_from_exception(exc: Exception) -> Failure:
    """Stable reason codes; the detail never carries headers or the key (SDK messages do not either)."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return Failure(Reason.TIMEOUT, "no response within the timeout, after the SDK's retries")
    if isinstance(exc, openai.RateLimitError):
        return Failure(Reason.RATE_LIMITED, "HTTP 429 after the SDK's retries")
    if isinstance(exc, openai.APIStatusError):
        return Failure(http_failure(exc.status_code), type(exc).__name__)
    if isinstance(exc, openai.APIConnectionError):
        return Failure(Reason.CONNECTION_ERROR, type(exc).__name__)
    return Failure(Reason.REQUEST_ERROR, f"{type(exc).__name__}: {redact(str(exc))[:200]}")


class OpenAIOnline:
    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        max_in_flight: int = 16,
        timeout_s: float = 120.0,
        max_retries: int = 8,
    ):
        self.model = model
        self.base_url = base_url or None
        self._api_key = api_key or "EMPTY"  # local servers (vLLM) accept any key
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.requests_sent = 0

    @property
    def is_local(self) -> bool:
        return is_local_url(self.base_url)

    def client(self) -> openai.AsyncOpenAI:
        import openai

        return openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            timeout=self.timeout_s,
            max_retries=self.max_retries,
        )

    async def _run(self, requests: list[GenRequest]) -> dict[str, Result]:
        limit = asyncio.Semaphore(self.max_in_flight)
        async with self.client() as client:

            async def one(request: GenRequest) -> tuple[str, Result]:
                async with limit:
                    self.requests_sent += 1
                    try:
                        # The raw body, parsed and shape-checked here: the SDK's own parse hands back a
                        # bare string for a non-JSON 200 and builds objects of any shape without checking.
                        raw = await client.chat.completions.with_raw_response.create(**request.body())
                    except Exception as exc:  # every failure becomes a reason code, nothing is lost
                        return request.key, failure_from_exception(exc)
                    return request.key, parse_completion(raw.content)

            results = await asyncio.gather(*(one(r) for r in requests))
        return dict(results)

    def run(self, requests: list[GenRequest]) -> dict[str, Result]:
        return asyncio.run(self._run(requests)) if requests else {}
