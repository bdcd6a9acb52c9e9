"""Stable hash shards of `sample_id`: the partitions of the generation assets.

The shard of a sample depends only on its id, so adding data moves no existing sample, and
the response cache (keyed by request, not shard) makes a change of shard count free.
"""

from __future__ import annotations

import hashlib
import os

N_SHARDS = int(os.environ.get("GMAI_GENERATION_SHARDS", "8"))
SHARD_KEYS = [f"{i:03d}" for i in range(N_SHARDS)]


def shard_of(sample_id: str, n_shards: int = N_SHARDS) -> str:
    digest = hashlib.sha256(sample_id.encode("utf-8")).digest()
    return f"{int.from_bytes(digest[:8], 'big') % n_shards:03d}"
