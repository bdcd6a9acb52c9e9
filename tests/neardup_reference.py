"""The exhaustive all-pairs Hamming search: the reference `neardup.MultiIndex` is tested (and benchmarked) against."""

from __future__ import annotations

import numpy as np

from gmai_pipeline.neardup import Matches, as_uint64


def brute_force(index_hashes, query_hashes, max_distance: int) -> Matches:
    """All pairs by exhaustive comparison: the reference the index is tested against."""
    a, b = as_uint64(index_hashes), as_uint64(query_hashes)
    chunk = max(1, (1 << 23) // max(len(a), 1))  # ~64 MB of XORs at a time
    qs, xs, ds = [], [], []
    for start in range(0, len(b), chunk):
        d = np.bitwise_count(b[start : start + chunk, None] ^ a[None, :])
        qi, ii = np.nonzero(d <= max_distance)
        qs.append(qi + start)
        xs.append(ii)
        ds.append(d[qi, ii])
    if not qs:
        empty = np.zeros(0, dtype=np.int64)
        return Matches(empty, empty.copy(), np.zeros(0, dtype=np.int8))
    return Matches(
        np.concatenate(qs).astype(np.int64),
        np.concatenate(xs).astype(np.int64),
        np.concatenate(ds).astype(np.int8),
    )
