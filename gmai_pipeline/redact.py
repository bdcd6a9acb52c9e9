"""Secrets out of anything shown or stored: URL credentials, API keys, values of secret variables.

Secrets come from the environment (README, "Credentials"); configuration that Dagster stores (run config,
resource config, the definitions snapshot the UI shows) holds only the *name* of the variable
(`dg.EnvVar`, see `profiles.env_reference`). Text built from exceptions or URLs at run time
goes through `redact` before it reaches a log line, a table or metadata, because an SDK or HTTP
error may quote the URL it was given, and `http://user:password@host/v1` carries its password.
"""

from __future__ import annotations

import contextlib
import os
import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# scheme://user:password@ or scheme://token@ (userinfo ends at the last @ before the host)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
# Provider key shapes: OpenAI (sk-..., sk-proj-...), bearer tokens in a header dump.
_KEYS = re.compile(r"\b(sk-[A-Za-z0-9_-]{8,}|Bearer\s+[A-Za-z0-9._~+/=-]{8,})")
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|_URL|_DSN)$", re.IGNORECASE)
MIN_SECRET_LEN = 6


def has_credentials(url: str) -> bool:
    """True when a URL carries a user name or password (`scheme://user:pass@host`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return bool(_USERINFO.search(url))
    return bool(parts.username or parts.password)


def redact_url(url: str) -> str:
    """The URL with its user info replaced by `***` (host, port and path kept for diagnosis)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub(lambda m: m["scheme"] + MASK + "@", url)
    if not (parts.username or parts.password):
        return url
    host = parts.hostname or ""
    netloc = f"{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _secret_values() -> list[str]:
    """Values of environment variables whose names say they hold a secret (longest first)."""
    values = set()
    for name, value in os.environ.items():
        if _SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LEN:
            values.add(value)
            if "://" in value:  # a URL: its password alone may be quoted (e.g. by a parser)
                with contextlib.suppress(ValueError):
                    parts = urlsplit(value)
                    values.update(v for v in (parts.password, parts.username) if v and len(v) >= 3)
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with URL credentials, key-shaped tokens and secret environment values masked."""
    if not text:
        return text
    out = _USERINFO.sub(lambda m: m["scheme"] + MASK + "@", text)
    out = _KEYS.sub(MASK, out)
    for value in _secret_values():
        if "://" in value:
            out = out.replace(value, redact_url(value))
        out = out.replace(value, MASK)
    return out
