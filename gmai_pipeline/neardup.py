"""Near-duplicate search on 64-bit hashes: every pair within Hamming distance d, without all pairs.

Multi-index hashing (Norouzi et al., "Fast Search in Hamming Space with Multi-Index Hashing"):
split the 64 bits into m bands. If two hashes differ in at most d bits, some band differs in at
most floor(d / m) bits (pigeonhole). So for each band we look up the query's band value and its
neighbours within r = floor(d / m) bits in a table of the indexed hashes, and verify every
candidate with a full 64-bit popcount. With m = d + 1 bands the lookup is exact (r = 0); fewer,
wider bands probe a few neighbours but see far fewer false candidates, which wins once the index
holds millions of hashes (`bench/decontaminate.py` measures both). The result is exact: the same
pairs as brute force.

Everything is vectorised with numpy: per band, a direct-address table (counts -> offsets) over
the band values, queries processed in chunks and candidates verified in slices, so memory stays
bounded (a few hundred MB) whatever the index size or the skew of the hashes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations

import numpy as np

BITS = 64
MAX_TABLE_BITS = 22  # widest band with a direct-address table; wider bands use a sorted array
PROBE_BUDGET = 1 << 22
CANDIDATE_BUDGET = 1 << 23  # candidates verified at once (~40 bytes each)
PROBE_COST = 3.0  # one table probe costs about three candidate verifications (measured, bench/)  # probes (query x neighbour) per chunk: bounds temporary memory


@dataclass(frozen=True)
class Matches:
    """Parallel arrays, one entry per pair: query position, index position, Hamming distance."""

    query: np.ndarray  # int64
    index: np.ndarray  # int64
    distance: np.ndarray  # int8

    def __len__(self) -> int:
        return len(self.query)


def as_uint64(hashes: np.ndarray | list[int]) -> np.ndarray:
    """int64 bit patterns (as stored in Parquet) or Python ints -> uint64 without changing bits."""
    arr = np.asarray(hashes)
    if arr.dtype == np.uint64:
        return arr
    if arr.dtype == object:
        return np.array([int(v) & 0xFFFFFFFFFFFFFFFF for v in arr], dtype=np.uint64)
    return arr.astype(np.int64, copy=False).view(np.uint64)


def band_widths(m: int) -> list[int]:
    w, extra = divmod(BITS, m)
    return [w + 1] * extra + [w] * (m - extra)


def neighbour_masks(width: int, radius: int) -> np.ndarray:
    """All width-bit values with at most `radius` bits set (the XOR masks to probe)."""
    masks = [0]
    for k in range(1, radius + 1):
        masks.extend(sum(1 << b for b in bits) for bits in combinations(range(width), k))
    return np.array(masks, dtype=np.uint64)


def choose_bands(n_index: int, max_distance: int) -> int:
    """Pick m minimising probes + expected random candidates per query (uniform-hash cost model)."""
    best_m, best_cost = max_distance + 1, math.inf
    for m in range(1, max_distance + 2):
        r = max_distance // m
        cost = 0.0
        for w in band_widths(m):
            if w > 40:
                cost = math.inf
                break
            probes = sum(math.comb(w, k) for k in range(r + 1))
            cost += probes * (PROBE_COST + n_index / 2.0**w)
        if cost < best_cost:
            best_m, best_cost = m, cost
    return best_m


class _Band:
    def __init__(self, hashes: np.ndarray, shift: int, width: int, radius: int):
        self.shift, self.width = shift, width
        self.mask = np.uint64((1 << width) - 1)
        self.probes = neighbour_masks(width, radius)
        keys = self.keys(hashes)
        self.order = np.argsort(keys, kind="stable").astype(np.int64)
        self.sorted_hashes = hashes[self.order]  # candidates of one probe are contiguous here
        if width <= MAX_TABLE_BITS:
            counts = np.bincount(keys.astype(np.int64), minlength=1 << width)
            self.offsets = np.zeros(len(counts) + 1, dtype=np.int64)
            np.cumsum(counts, out=self.offsets[1:])
            self.sorted_keys = None
        else:
            self.offsets = None
            self.sorted_keys = keys[self.order]

    def keys(self, hashes: np.ndarray) -> np.ndarray:
        return (hashes >> np.uint64(self.shift)) & self.mask

    def ranges(self, probe_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.offsets is not None:
            k = probe_keys.astype(np.int64)
            return self.offsets[k], self.offsets[k + 1]
        lo = np.searchsorted(self.sorted_keys, probe_keys, side="left")
        hi = np.searchsorted(self.sorted_keys, probe_keys, side="right")
        return lo, hi


class MultiIndex:
    """An index over `hashes` answering "which indexed hashes are within max_distance of each query"."""

    def __init__(self, hashes: np.ndarray | list[int], max_distance: int, bands: int | None = None):
        if not 0 <= max_distance < BITS:
            raise ValueError(f"max_distance must be in 0..63, got {max_distance}")
        self.hashes = as_uint64(hashes)
        self.max_distance = max_distance
        self.m = bands or choose_bands(len(self.hashes), max_distance)
        radius = max_distance // self.m
        self.bands: list[_Band] = []
        shift = BITS
        for w in band_widths(self.m):
            shift -= w
            self.bands.append(_Band(self.hashes, shift, w, radius))

    def __len__(self) -> int:
        return len(self.hashes)

    def query(self, queries: np.ndarray | list[int]) -> Matches:
        q = as_uint64(queries)
        parts = list(self._query_chunks(q))
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return Matches(empty, empty.copy(), np.zeros(0, dtype=np.int8))
        qi = np.concatenate([p[0] for p in parts])
        ii = np.concatenate([p[1] for p in parts])
        dist = np.concatenate([p[2] for p in parts])
        # a pair close in several bands is found once per band: keep one
        key = qi * max(len(self.hashes), 1) + ii
        _, first = np.unique(key, return_index=True)
        return Matches(qi[first], ii[first], dist[first].astype(np.int8))

    def _query_chunks(self, q: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if len(q) == 0 or len(self.hashes) == 0:
            return
        per_query = max(len(b.probes) for b in self.bands)
        chunk = max(1, PROBE_BUDGET // per_query)
        for start in range(0, len(q), chunk):
            qc = q[start : start + chunk]
            for band in self.bands:
                for found in self._probe(band, qc):
                    yield found[0] + start, found[1], found[2]

    def _probe(self, band: _Band, qc: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        nprobe = len(band.probes)
        probe_keys = (band.keys(qc)[:, None] ^ band.probes[None, :]).ravel()
        lo, hi = band.ranges(probe_keys)
        counts = hi - lo
        hit = counts > 0
        if not hit.any():
            return
        lo, counts = lo[hit], counts[hit]
        qidx = (np.flatnonzero(hit) // nprobe).astype(np.int64)
        # verify in slices of about CANDIDATE_BUDGET candidates: memory stays bounded even when
        # real (skewed) hashes crowd a few buckets
        ends = np.cumsum(counts)
        cuts = np.searchsorted(
            ends, np.arange(CANDIDATE_BUDGET, int(ends[-1]), CANDIDATE_BUDGET), side="left"
        )
        bounds = np.unique(np.concatenate([[0], cuts + 1, [len(counts)]]).clip(0, len(counts)))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            seg_lo, seg_counts = lo[a:b], counts[a:b]
            total = int(seg_counts.sum())
            # expand each (query, [lo, hi)) range into one row per candidate
            starts = np.cumsum(seg_counts) - seg_counts
            pos = np.repeat(seg_lo - starts, seg_counts) + np.arange(total, dtype=np.int64)
            cq = np.repeat(qidx[a:b], seg_counts)
            dist = np.bitwise_count(band.sorted_hashes[pos] ^ qc[cq])
            ok = dist <= self.max_distance
            yield cq[ok], band.order[pos[ok]], dist[ok]


def search(index_hashes, query_hashes, max_distance: int, bands: int | None = None) -> Matches:
    """All (query, index) pairs within max_distance. Indexes the larger side (fewer probes), same result."""
    a, b = as_uint64(index_hashes), as_uint64(query_hashes)
    if len(b) > len(a):
        found = MultiIndex(b, max_distance, bands).query(a)
        return Matches(found.index, found.query, found.distance)
    return MultiIndex(a, max_distance, bands).query(b)
