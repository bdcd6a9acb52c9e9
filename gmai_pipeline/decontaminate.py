"""Decontamination: remove from the training annotations every sample whose image is a benchmark image.

Three ways a training image can be a benchmark image (`hashing`; the distances are what `tests/test_hashing.py` checks):
- `md5`: the same file bytes (the paper's method);
- `pixel_md5`: the same decoded pixels in another container or compression level;
- `dhash`: the same picture re-encoded (VLMEvalKit stores benchmarks as JPEG quality 75) or
  resized: dHash within `threshold` bits (default 6 of 64), confirmed by pHash not being far off
  (`phash_veto`, default 22 bits: random pairs sit near 32, JPEG re-encodes near 0-2, symmetric
  images up to ~15).
Neighbouring slices of a volume are near-duplicates of each other, so a match on one slice
removes the whole source volume (every row with the same dataset and source_path). Every removed
row is reported with the benchmark item it matched, the method and the distance.

`decontaminate` runs the whole stage (training hashes, matching, removal, report, preview) and is what
the Dagster layer (`gmai_pipeline/defs/decontam.py`) calls; the steps stay public for tests and tools.
Tables are streamed in batches: memory follows the distinct images and the matches, not the rows.
"""

from __future__ import annotations

import base64
import io
import multiprocessing as mp
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from gmai_pipeline import neardup, partitions
from gmai_pipeline.benchmarks import BenchmarkSpec, is_present, locate_all, present, unclaimed_tsvs
from gmai_pipeline.hashing import ImageDecodeError, ImageHashes, hash_image
from gmai_pipeline.schemas import DECONTAMINATED_SCHEMA, NORMALIZED_SCHEMA
from gmai_pipeline.storage import OutputLayout, atomic_path, atomic_write_bytes, iter_row_groups, write_table

DEFAULT_THRESHOLD = 6
DEFAULT_PHASH_VETO = 22
# strongest first: a sample's reported match is the strongest. "unhashable": the stored training image
# could not be decoded, so it cannot be shown clean; it is removed (and reported) rather than kept unchecked.
METHODS = ("md5", "pixel_md5", "dhash", "unhashable")
THUMB_PX = 96
BATCH_ROWS = 16_384  # rows of a table in memory at once while streaming it

BENCHMARK_HASH_SCHEMA = pa.schema(
    [
        ("benchmark", pa.string()),
        ("item_id", pa.string()),
        ("md5", pa.string()),
        ("pixel_md5", pa.string()),
        ("dhash", pa.int64()),  # uint64 bit pattern as int64; null for near-flat images
        ("phash", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
THUMB_SCHEMA = pa.schema([("benchmark", pa.string()), ("item_id", pa.string()), ("thumbnail", pa.binary())])
TRAINING_HASH_SCHEMA = pa.schema(
    [
        ("image_md5", pa.string()),  # key: the normalized table's image_md5
        ("pixel_md5", pa.string()),
        ("dhash", pa.int64()),
        ("phash", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("error", pa.string()),  # why the stored image could not be hashed (then the rest is null)
    ]
)
REPORT_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("dataset", pa.string()),
        ("source_path", pa.string()),
        ("image", pa.string()),
        ("benchmark", pa.string()),
        ("item_id", pa.string()),
        ("method", pa.string()),
        ("distance", pa.int32()),  # Hamming distance of the dHashes; 0 for md5 / pixel_md5
        ("phash_distance", pa.int32()),  # second opinion, null when a hash is missing
        ("direct", pa.bool_()),  # False: removed because another slice of the same volume matched
        ("matched_image", pa.string()),  # the training image that matched (itself when direct)
    ]
)


def work_dir(layout: OutputLayout) -> Path:
    """Side files of this stage: the training-hash cache, benchmark thumbnails, the preview."""
    return layout.root / "decontamination"


def training_hash_cache(layout: OutputLayout) -> Path:
    return work_dir(layout) / "training_hashes.parquet"


def benchmark_thumbnails(layout: OutputLayout) -> Path:
    return work_dir(layout) / "benchmark_thumbnails.parquet"


def preview_png(layout: OutputLayout) -> Path:
    return work_dir(layout) / "matched_pairs.png"


# --------------------------------------------------------------------------------------------
# annotations: union of the normalized tables


def _batches(path: Path, columns: list[str]) -> Iterator[pa.Table]:
    """A Parquet file as tables of at most BATCH_ROWS rows, a row group at a time (no read-ahead: a
    dataset scanner's read-ahead of 16 batches held a million rows)."""
    yield from iter_row_groups(path, columns, BATCH_ROWS)


def union_normalized(layout: OutputLayout, datasets: Iterable[str]) -> dict[str, int]:
    """Stream every existing normalized/<dataset>.parquet into annotations.parquet; rows per dataset.

    Datasets whose table does not exist yet (not materialized) are left out, and not counted.
    """
    paths = [layout.normalized(name) for name in datasets if layout.normalized(name).exists()]
    counts: dict[str, int] = {}
    with atomic_path(layout.annotations) as tmp, pq.ParquetWriter(tmp, NORMALIZED_SCHEMA) as writer:
        for path in paths:
            for table in _batches(path, NORMALIZED_SCHEMA.names):
                table = table.cast(NORMALIZED_SCHEMA)
                writer.write_table(table)
                for entry in pc.value_counts(table.column("dataset").drop_null()).to_pylist():
                    name = str(entry["values"])
                    counts[name] = counts.get(name, 0) + int(entry["counts"])
    return counts


# --------------------------------------------------------------------------------------------
# hashing many images, in parallel


def _hash_bytes(data: bytes) -> ImageHashes | str:
    try:
        return hash_image(data)
    except ImageDecodeError as exc:
        return str(exc)


def _hash_path(path: str) -> ImageHashes | str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return _hash_bytes(data)


def _map_chunk(fn: Callable, chunk: list) -> list:
    return [fn(x) for x in chunk]


def parallel_map(fn: Callable, items: Iterable, workers: int, chunksize: int = 16) -> Iterator:
    """fn over items, in order, on a fork pool (workers inherit loaded modules: no re-import).

    Unlike Pool.imap, at most 4 chunks per worker are in flight, so a streamed 9 GB benchmark
    never piles up in the task queue.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    max_pending = 4 * workers
    pool = mp.get_context("fork").Pool(workers, initializer=_worker_init)
    try:
        window: deque = deque()
        chunk: list = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= chunksize:
                window.append(pool.apply_async(_map_chunk, (fn, chunk)))
                chunk = []
                if len(window) >= max_pending:
                    yield from window.popleft().get()
        if chunk:
            window.append(pool.apply_async(_map_chunk, (fn, chunk)))
        while window:
            yield from window.popleft().get()
        pool.close()
        pool.join()
    finally:
        pool.terminate()


def _worker_init() -> None:
    """Forked workers must not run the parent's signal handlers (Dagster's raise on SIGTERM)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# benchmark_hashes


@dataclass
class BenchmarkHashReport:
    images: dict[str, int] = field(
        default_factory=dict
    )  # benchmark (VLMEvalKit dataset name) -> images hashed
    present: list[str] = field(default_factory=list)  # registry names found
    missing: list[BenchmarkSpec] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)  # file or layout folder read -> images hashed
    empty: list[str] = field(
        default_factory=list
    )  # present benchmarks / files that yielded no image: blocking
    ignored: list[str] = field(default_factory=list)  # root TSVs no benchmark claims, train-split TSVs

    @property
    def ok(self) -> bool:
        return not self.empty


def _thumbnail(data: bytes) -> bytes:
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))
    img = img.convert("RGB")
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _hash_item(item: tuple[str, str, bytes, str, str]) -> tuple:
    benchmark, item_id, data, spec, source = item
    hashed = _hash_bytes(data)
    thumb = _thumbnail(data) if isinstance(hashed, ImageHashes) else None
    return benchmark, item_id, hashed, thumb, spec, source


def hash_benchmarks(root: Path, layout: OutputLayout, workers: int | None = None) -> BenchmarkHashReport:
    """Hash every image of every benchmark present under root into benchmark_hashes.parquet.

    Also writes a small JPEG thumbnail per image (side file) so the match preview never has to
    re-read a 9 GB TSV.
    """
    workers = default_workers() if workers is None else workers
    locations = [loc for loc in locate_all(root) if is_present(loc)]
    report = BenchmarkHashReport(present=[loc.spec.name for loc in locations], missing=present(root)[1])
    report.ignored = [f"{p} (no benchmark of this name)" for p in unclaimed_tsvs(root)]
    report.ignored += [f"{p} (train split)" for loc in locations for p in loc.ignored]
    per_spec: dict[str, int] = {loc.spec.name: 0 for loc in locations}

    def items() -> Iterator[tuple[str, str, bytes, str, str]]:
        for loc in locations:
            for source in loc.sources:
                report.sources.setdefault(str(source.path), 0)
                for item in source.read(report.problems):
                    yield (*item, loc.spec.name, str(source.path))

    rows, thumbs = [], []
    with (
        atomic_path(layout.benchmark_hashes) as tmp,
        pq.ParquetWriter(tmp, BENCHMARK_HASH_SCHEMA) as writer,
        atomic_path(benchmark_thumbnails(layout)) as tmp_thumbs,
        pq.ParquetWriter(tmp_thumbs, THUMB_SCHEMA) as thumb_writer,
    ):
        for benchmark, item_id, hashed, thumb, spec, source in parallel_map(_hash_item, items(), workers):
            if isinstance(hashed, str):
                report.problems.append(f"{benchmark}: item {item_id}: undecodable image ({hashed})")
                continue
            report.images[benchmark] = report.images.get(benchmark, 0) + 1
            report.sources[source] += 1
            per_spec[spec] += 1
            rows.append(
                {
                    "benchmark": benchmark,
                    "item_id": item_id,
                    "md5": hashed.md5,
                    "pixel_md5": hashed.pixel_md5,
                    "dhash": hashed.dhash,
                    "phash": hashed.phash,
                    "width": hashed.width,
                    "height": hashed.height,
                }
            )
            thumbs.append({"benchmark": benchmark, "item_id": item_id, "thumbnail": thumb})
            if len(rows) >= 4096:
                writer.write_table(pa.Table.from_pylist(rows, schema=BENCHMARK_HASH_SCHEMA))
                thumb_writer.write_table(pa.Table.from_pylist(thumbs, schema=THUMB_SCHEMA))
                rows, thumbs = [], []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=BENCHMARK_HASH_SCHEMA))
            thumb_writer.write_table(pa.Table.from_pylist(thumbs, schema=THUMB_SCHEMA))
    for loc in locations:
        if not loc.sources:
            report.empty.append(
                f"{loc.spec.name}: {loc.describe()} holds none of the layouts read ({loc.spec.layout})"
            )
        elif per_spec[loc.spec.name] == 0:
            report.empty.append(f"{loc.spec.name}: {loc.describe()} yielded no benchmark image")
    report.empty += [f"{path}: yielded no benchmark image" for path, n in report.sources.items() if n == 0]
    return report


def read_hashes(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A hash table as pandas with nullable Int64 (float64 would round 64-bit hashes)."""
    return pq.read_table(path, columns=columns).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


# --------------------------------------------------------------------------------------------
# training hashes (cached by image_md5)


def training_images(annotations: Path) -> pd.DataFrame:
    """Distinct stored images of the annotations: image_md5 -> its first image path (streamed)."""
    first: dict[str | None, str] = {}
    for batch in iter_row_groups(annotations, ["image_md5", "image"], BATCH_ROWS):
        for md5, image in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
            first.setdefault(md5, image)
    return pd.DataFrame({"image_md5": list(first), "image": list(first.values())}, dtype=object)


def hash_training_images(
    annotations: Path, layout: OutputLayout, workers: int | None = None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Hashes of every distinct training image, computing only those not in the cache.

    Returns (hashes keyed by image_md5 for the current annotations, counts: cached/computed/errors).
    """
    workers = default_workers() if workers is None else workers
    images = training_images(annotations)
    cache_path = training_hash_cache(layout)
    cached = (
        read_hashes(cache_path)
        if cache_path.exists()
        else TRAINING_HASH_SCHEMA.empty_table().to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    )
    known = set(cached["image_md5"])
    todo = images[~images["image_md5"].isin(known)]
    paths = [str(layout.root / p) for p in todo["image"]]
    fresh = []
    for md5, path, hashed in zip(
        todo["image_md5"], paths, parallel_map(_hash_path, paths, workers, chunksize=8), strict=True
    ):
        if isinstance(hashed, str):
            fresh.append({"image_md5": md5, "error": f"{path}: {hashed}"})
        elif hashed.md5 != md5:
            fresh.append(
                {"image_md5": md5, "error": f"{path}: file MD5 {hashed.md5} != image_md5 (store changed)"}
            )
        else:
            fresh.append(
                {
                    "image_md5": md5,
                    "pixel_md5": hashed.pixel_md5,
                    "dhash": hashed.dhash,
                    "phash": hashed.phash,
                    "width": hashed.width,
                    "height": hashed.height,
                }
            )
    if fresh:
        merged = pa.concat_tables(
            [pa.Table.from_pandas(cached, schema=TRAINING_HASH_SCHEMA, preserve_index=False),
             pa.Table.from_pylist(fresh, schema=TRAINING_HASH_SCHEMA)]
        )  # fmt: skip
        write_table(cache_path, merged)
        cached = merged.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    current = cached[cached["image_md5"].isin(set(images["image_md5"]))].reset_index(drop=True)
    counts = {
        "images": len(images),
        "cached": len(images) - len(todo),
        "computed": len(todo),
        "errors": int(current["error"].notna().sum()),
    }
    return current, counts


# --------------------------------------------------------------------------------------------
# matching


def _as_int64(values) -> np.ndarray:
    return np.asarray(pd.Series(values).astype("int64").to_numpy(), dtype=np.int64)


def find_matches(
    train: pd.DataFrame,
    bench: pd.DataFrame,
    threshold: int = DEFAULT_THRESHOLD,
    phash_veto: int | None = DEFAULT_PHASH_VETO,
) -> pd.DataFrame:
    """The strongest benchmark match of each contaminated training image.

    train: image_md5, pixel_md5, dhash, phash. bench: benchmark, item_id, md5, pixel_md5, dhash, phash.
    Returns image_md5, benchmark, item_id, method, distance, phash_distance (one row per image_md5).
    """
    cols = ["image_md5", "benchmark", "item_id", "method", "distance", "phash_distance"]
    parts = []
    by_md5 = train[["image_md5"]].merge(bench, left_on="image_md5", right_on="md5")
    parts.append(by_md5.assign(method="md5", distance=0, phash_distance=0))
    valid_px = train[train["pixel_md5"].notna()][["image_md5", "pixel_md5"]]
    by_px = valid_px.merge(bench, on="pixel_md5")
    parts.append(by_px.assign(method="pixel_md5", distance=0, phash_distance=0))

    t = train[train["dhash"].notna()].reset_index(drop=True)
    b = bench[bench["dhash"].notna()].reset_index(drop=True)
    if len(t) and len(b):
        found = neardup.search(_as_int64(t["dhash"]), _as_int64(b["dhash"]), threshold)
        ti, bi = found.index, found.query
        pairs = pd.DataFrame(
            {
                "image_md5": t["image_md5"].to_numpy()[ti],
                "benchmark": b["benchmark"].to_numpy()[bi],
                "item_id": b["item_id"].to_numpy()[bi],
                "method": "dhash",
                "distance": found.distance.astype(int),
            }
        )
        tp = t["phash"].to_numpy(dtype=object)[ti]
        bp = b["phash"].to_numpy(dtype=object)[bi]
        ok = np.asarray(pd.notna(tp) & pd.notna(bp), dtype=bool)
        pd_dist = np.full(len(pairs), -1, dtype=np.int64)
        if ok.any():
            pd_dist[ok] = np.bitwise_count(
                neardup.as_uint64(_as_int64(tp[ok])) ^ neardup.as_uint64(_as_int64(bp[ok]))
            )
        pairs["phash_distance"] = pd.array(np.where(pd_dist < 0, None, pd_dist), dtype="Int64")
        if phash_veto is not None:
            pairs = pairs[~(pairs["phash_distance"].fillna(0) > phash_veto)]
        parts.append(pairs)
    allm = (
        pd.concat([p[cols] for p in parts if len(p)], ignore_index=True)
        if any(len(p) for p in parts)
        else None
    )
    if allm is None:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    return strongest(allm)


def strongest(matches: pd.DataFrame) -> pd.DataFrame:
    """One row per image_md5: the strongest method, then the smallest distance."""
    if matches.empty:
        return matches.reset_index(drop=True)
    m = matches.assign(rank=matches["method"].map({m: i for i, m in enumerate(METHODS)}))
    m = m.sort_values(
        ["image_md5", "rank", "distance", "benchmark", "item_id"], kind="stable", na_position="last"
    )
    return m.drop_duplicates("image_md5").drop(columns="rank").reset_index(drop=True)


def unhashable(train: pd.DataFrame) -> pd.DataFrame:
    """Match rows for training images whose hashing failed (see METHODS)."""
    bad = train[train["error"].notna()]
    return pd.DataFrame(
        {
            "image_md5": bad["image_md5"].to_numpy(),
            "benchmark": None,
            "item_id": None,
            "method": "unhashable",
            "distance": None,
            "phash_distance": None,
        }
    )


# --------------------------------------------------------------------------------------------
# applying the matches: whole volumes out, report in


@dataclass
class DecontaminationResult:
    kept: int
    removed: int
    removed_by_benchmark: dict[str, int]
    removed_by_method: dict[str, int]
    volumes_removed: int


def _volume_key(table: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(table["dataset"], table["source_path"].fill_null(""), "\x1f")


def _int_or_none(value) -> int | None:
    return None if pd.isna(value) else int(value)


def _matched_rows(annotations: Path, hit_md5: pa.Array) -> pa.Table:
    """The annotation rows whose image matched (few), read batch by batch."""
    columns = ["dataset", "source_path", "image_md5", "sample_id", "image"]
    parts = []
    for table in iter_row_groups(annotations, columns, BATCH_ROWS):
        table = table.filter(pc.fill_null(pc.is_in(table["image_md5"], value_set=hit_md5), False))
        if table.num_rows:
            parts.append(table)
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return pa.concat_tables(parts)


def apply_matches(
    annotations: Path, matches: pd.DataFrame, layout: OutputLayout, n_shards: int = partitions.N_SHARDS
) -> DecontaminationResult:
    """Write decontaminated.parquet (kept rows, with their generation shard, in row groups of one shard)
    and decontamination_report.parquet (removed rows)."""
    hit_md5 = pa.array(matches["image_md5"].astype(str).tolist(), type=pa.string())
    matched = _matched_rows(annotations, hit_md5).to_pandas().merge(matches, on="image_md5")
    matched["volume"] = matched["dataset"] + "\x1f" + matched["source_path"].fillna("")
    matched["rank"] = matched["method"].map({m: i for i, m in enumerate(METHODS)})
    best = (
        matched.sort_values(["volume", "rank", "distance", "sample_id"], kind="stable")
        .drop_duplicates("volume")
        .set_index("volume")
    )
    direct = matches.set_index("image_md5")
    volumes = pa.array(list(best.index), type=pa.string())

    report_rows = []
    kept = 0
    schema = partitions.sharded_schema(DECONTAMINATED_SCHEMA, n_shards)
    with atomic_path(layout.decontaminated) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        sharded = partitions.ShardedWriter(writer)
        for table in _batches(annotations, NORMALIZED_SCHEMA.names):
            table = table.cast(NORMALIZED_SCHEMA)
            hit = pc.fill_null(pc.is_in(_volume_key(table), value_set=volumes), False)
            keep = table.filter(pc.invert(hit))
            sharded.write(partitions.with_shard_column(keep, n_shards).cast(schema))
            kept += keep.num_rows
            for row in table.filter(hit).to_pylist():
                volume = f"{row['dataset']}\x1f{row['source_path'] or ''}"
                own = row["image_md5"] in direct.index
                m = direct.loc[row["image_md5"]] if own else best.loc[volume]
                report_rows.append(
                    {
                        "sample_id": row["sample_id"],
                        "dataset": row["dataset"],
                        "source_path": row["source_path"],
                        "image": row["image"],
                        "benchmark": m["benchmark"],
                        "item_id": m["item_id"],
                        "method": m["method"],
                        "distance": _int_or_none(m["distance"]),
                        "phash_distance": _int_or_none(m["phash_distance"]),
                        "direct": bool(own),
                        "matched_image": row["image"] if own else best.loc[volume, "image"],
                    }
                )
        sharded.flush()
    write_table(layout.decontamination_report, pa.Table.from_pylist(report_rows, schema=REPORT_SCHEMA))
    report = pd.DataFrame(report_rows, columns=REPORT_SCHEMA.names)
    return DecontaminationResult(
        kept=kept,
        removed=len(report),
        removed_by_benchmark={
            str(k): int(v) for k, v in report["benchmark"].fillna("(none: unhashable)").value_counts().items()
        },
        removed_by_method={str(k): int(v) for k, v in report["method"].value_counts().items()},
        volumes_removed=len(best),
    )


# --------------------------------------------------------------------------------------------
# the blocking check: independent of the matcher


@dataclass
class Overlap:
    md5: list[str]
    pixel_md5: list[str]
    unhashed: int  # kept images with no training hash (cannot be checked: counts as a failure)

    @property
    def ok(self) -> bool:
        return not self.md5 and not self.pixel_md5 and self.unhashed == 0


def overlap(layout: OutputLayout) -> Overlap:
    """Byte-MD5 and pixel-MD5 overlap between decontaminated.parquet and benchmark_hashes.parquet.

    Pixel MD5s of kept images come from the training-hash cache; a kept image missing from it
    (or whose hashing failed) is counted as unhashed rather than assumed clean. The kept table is
    streamed; set operations run in Arrow (no Python set of millions of strings).
    """
    bench = pq.read_table(layout.benchmark_hashes, columns=["md5", "pixel_md5"])
    bench_md5 = pc.unique(bench.column("md5"))
    bench_px = pc.unique(bench.column("pixel_md5").drop_null())
    cache_path = training_hash_cache(layout)
    if cache_path.exists():
        cache = pq.read_table(cache_path, columns=["image_md5", "pixel_md5"])
        cache = cache.filter(pc.is_valid(cache["pixel_md5"]))
    else:
        cache = pa.table({"image_md5": pa.array([], pa.string()), "pixel_md5": pa.array([], pa.string())})
    hashed = pc.unique(cache["image_md5"])
    # cache entries whose pixels are a benchmark's: an overlap if any of them is kept
    suspects = cache.filter(pc.is_in(cache["pixel_md5"], value_set=bench_px))
    suspect_md5 = pc.unique(suspects["image_md5"])
    md5_hits: set[str] = set()
    kept_suspects: set[str] = set()
    unhashed: set[str | None] = set()
    for batch in iter_row_groups(layout.decontaminated, ["image_md5"], BATCH_ROWS):
        kept = pc.unique(batch.column(0))
        md5_hits.update(kept.filter(pc.is_in(kept, value_set=bench_md5)).to_pylist())
        kept_suspects.update(kept.filter(pc.is_in(kept, value_set=suspect_md5)).to_pylist())
        unhashed.update(
            kept.filter(pc.invert(pc.fill_null(pc.is_in(kept, value_set=hashed), False))).to_pylist()
        )
    px = suspects.filter(
        pc.is_in(suspects["image_md5"], value_set=pa.array(sorted(kept_suspects), pa.string()))
    )
    return Overlap(
        md5=sorted(md5_hits),
        pixel_md5=sorted(set(px["pixel_md5"].to_pylist())),
        unhashed=len(unhashed),
    )


# --------------------------------------------------------------------------------------------
# preview of matched pairs


def _fit(img: Image.Image, px: int) -> Image.Image:
    img = img.convert("RGB")
    img.thumbnail((px, px))
    return img


def preview(
    layout: OutputLayout, report: pd.DataFrame, max_pairs: int = 8, px: int = THUMB_PX
) -> bytes | None:
    """PNG montage: training image | benchmark image, one matched pair per line, captioned."""
    direct = report[report["direct"]].drop_duplicates(["benchmark", "item_id"]).head(max_pairs)
    if direct.empty:
        return None
    want = set(zip(direct["benchmark"], direct["item_id"], strict=True))
    thumbs: dict[tuple[str, str], bytes] = {}
    thumbs_path = benchmark_thumbnails(layout)
    if thumbs_path.exists():
        for batch in iter_row_groups(thumbs_path, None, 4096):
            for rec in batch.to_pylist():
                if (rec["benchmark"], rec["item_id"]) in want:
                    thumbs[(rec["benchmark"], rec["item_id"])] = rec["thumbnail"]
    line_h, caption_w = px + 8, 260
    canvas = Image.new("RGB", (2 * px + caption_w + 24, line_h * len(direct) + 8), "white")
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(direct.itertuples()):
        y = 4 + i * line_h
        try:
            with Image.open(layout.root / row.image) as im:
                canvas.paste(_fit(im, px), (4, y))
        except OSError:
            draw.text((4, y), "training image unreadable", fill="red")
        data = thumbs.get((row.benchmark, row.item_id))
        if data:
            canvas.paste(_fit(Image.open(io.BytesIO(data)), px), (px + 12, y))
        caption = f"{row.dataset}\n{row.source_path}\n= {row.benchmark} #{row.item_id}\n{row.method} d={row.distance}"
        draw.multiline_text((2 * px + 20, y + 4), caption, fill="black")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_url_markdown(png: bytes, alt: str = "matched pairs") -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


# --------------------------------------------------------------------------------------------
# the stage as one call


@dataclass
class Decontamination:
    """What one decontamination run did (the Dagster layer turns it into metadata)."""

    result: DecontaminationResult
    hash_counts: dict[str, int]  # images, cached, computed, errors
    hash_errors: list[str]  # why some training images could not be hashed (first 20)
    matched_images: int  # distinct training images that matched (or could not be hashed)
    by_benchmark_and_method: pd.DataFrame  # removed rows per (benchmark, method)
    preview_png: Path | None  # the montage of matched pairs, None when nothing matched


def decontaminate(
    layout: OutputLayout,
    threshold: int = DEFAULT_THRESHOLD,
    phash_veto: int | None = DEFAULT_PHASH_VETO,
    workers: int | None = None,
) -> Decontamination:
    """annotations.parquet + benchmark_hashes.parquet -> decontaminated.parquet, the report and the preview.

    Hashes the training images not in the cache, matches them against the benchmarks (MD5, pixel MD5,
    dHash with the pHash veto), removes every matched image's whole volume, and treats an image that
    cannot be hashed as a match (it cannot be shown clean).
    """
    for path, asset in ((layout.annotations, "annotations"), (layout.benchmark_hashes, "benchmark_hashes")):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: materialize `{asset}` first")
    train, counts = hash_training_images(layout.annotations, layout, workers)
    bench = read_hashes(layout.benchmark_hashes)
    found = find_matches(train, bench, threshold, phash_veto)
    matches = strongest(pd.concat([found, unhashable(train)], ignore_index=True))
    result = apply_matches(layout.annotations, matches, layout)
    report = pq.read_table(layout.decontamination_report).to_pandas()
    png = preview(layout, report)
    if png is not None:
        atomic_write_bytes(preview_png(layout), png)
    else:
        preview_png(layout).unlink(missing_ok=True)  # no match now: an old montage would mislead
    by_pair = (
        report.groupby(["benchmark", "method"]).size().reset_index(name="rows")
        if len(report)
        else pd.DataFrame(columns=["benchmark", "method", "rows"])
    )
    return Decontamination(
        result=result,
        hash_counts=counts,
        hash_errors=[str(e) for e in train["error"].dropna().head(20)],
        matched_images=len(matches),
        by_benchmark_and_method=by_pair,
        preview_png=preview_png(layout) if png is not None else None,
    )
