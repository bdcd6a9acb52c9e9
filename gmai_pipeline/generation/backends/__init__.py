"""Backends turn a list of requests into {key: Completion | Failure}; the cache sits in front of them."""

from __future__ import annotations

import ipaddress
from typing import Protocol
from urllib.parse import urlparse

from gmai_pipeline.generation.requests import Completion, Failure, GenRequest

Result = Completion | Failure


class Backend(Protocol):
    name: str  # "template" | "openai" | "openai_batch"
    model: str
    requests_sent: int

    @property
    def is_local(self) -> bool:
        """True when nothing leaves this machine (template) or the endpoint is loopback."""
        ...

    def run(self, requests: list[GenRequest]) -> dict[str, Result]: ...


def is_local_url(base_url: str | None) -> bool:
    """Loopback only (localhost, 127.0.0.0/8, ::1); no DNS lookup, so an unknown name counts as remote.

    No base_url means the SDK default, api.openai.com: remote.
    """
    if not base_url:
        return False
    host = (urlparse(base_url if "://" in base_url else f"http://{base_url}").hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
