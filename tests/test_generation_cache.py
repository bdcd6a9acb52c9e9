"""The response cache: one SQLite database in WAL mode, shared by concurrent processes, migrating old caches."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from pathlib import Path

import pytest

from gmai_pipeline.generation.cache import DB_NAME, UNREADABLE_DIR, ResponseCache
from gmai_pipeline.generation.requests import Completion


def key(i: int, salt: str = "") -> str:
    return hashlib.sha256(f"{salt}{i}".encode()).hexdigest()


def answer(i: int) -> Completion:
    return Completion(content=f"answer {i} 中文", tokens_in=i, tokens_out=2 * i, mean_prob=0.5, model="m")


def write_legacy(root: Path, keys: list[str]) -> None:
    """The per-request files earlier versions wrote: llm_cache/<k[:2]>/<k[2:4]>/<key>.json."""
    for i, k in enumerate(keys):
        path = root / k[:2] / k[2:4] / f"{k}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": k, "response": answer(i).to_json()}, ensure_ascii=False))


def test_many_answers_in_a_few_files(tmp_path: Path) -> None:
    root = tmp_path / "llm_cache"
    n = 20_000
    with ResponseCache(root) as cache:
        for start in range(0, n, 2000):  # a chunk per transaction, as generation writes them
            cache.put_many((key(i), answer(i)) for i in range(start, start + 2000))
        assert len(cache) == n
        assert {p.name for p in cache.files()} <= {DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"}
    again = ResponseCache(root)
    got = again.get_many(key(i) for i in (0, 7, n - 1))
    assert got[key(7)] == Completion(**{**answer(7).__dict__, "cached": True})
    assert again.get(key(n)) is None and key(5) in again and key(n) not in again
    again.put(key(5), answer(99))  # a later answer for the same request replaces it
    assert again.get(key(5)).content == "answer 99 中文"


def test_a_run_that_never_asks_creates_nothing(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "llm_cache")
    cache.close()
    assert not (tmp_path / "llm_cache").exists()


def test_per_request_files_are_migrated_on_first_use(tmp_path: Path) -> None:
    root = tmp_path / "llm_cache"
    keys = [key(i) for i in range(300)]
    write_legacy(root, keys)
    (root / "ab" / "cd").mkdir(parents=True, exist_ok=True)
    (root / "ab" / "cd" / f"{'ab' + 'cd' + '0' * 60}.json").write_text("{not json")  # a torn write
    (root / "batches").mkdir()
    (root / "batches" / "state.json").write_text("{}")  # the Batch API's state: not cache entries
    logs: list[str] = []
    cache = ResponseCache(root, log=logs.append)
    assert cache.get(keys[42]).content == "answer 42 中文" and len(cache) == 300
    assert not [p for p in root.iterdir() if len(p.name) == 2]  # no per-request folder left
    assert (root / UNREADABLE_DIR / "ab" / "cd").is_dir() and (root / "batches" / "state.json").is_file()
    assert logs and "moved 300 cached answers" in logs[0] and "1 files were not cache entries" in logs[0]
    cache.close()


def _writer(root: str, salt: str, n: int, chunk: int, barrier) -> None:
    """One process: a generation partition (chunks of `chunk`) or a Batch API collect (one big chunk)."""
    cache = ResponseCache(Path(root))
    barrier.wait()
    for start in range(0, n, chunk):
        cache.put_many((key(i, salt), answer(i)) for i in range(start, min(n, start + chunk)))
        cache.put_many([(key(0, "shared"), answer(0))])  # every process also writes one common request
        assert cache.get(key(start, salt)) is not None
    cache.close()


def test_concurrent_partitions_and_a_batch_collect_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "llm_cache"
    legacy = [key(i, "old") for i in range(500)]
    write_legacy(root, legacy)  # the first users race to migrate it: one does, the others wait
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(3)
    procs = [
        ctx.Process(target=_writer, args=(str(root), "p000", 3000, 100, barrier)),
        ctx.Process(target=_writer, args=(str(root), "p001", 3000, 100, barrier)),
        ctx.Process(target=_writer, args=(str(root), "collect", 3000, 3000, barrier)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    with ResponseCache(root) as cache:
        assert len(cache) == 3 * 3000 + 500 + 1
        for salt in ("p000", "p001", "collect"):
            got = cache.get_many(key(i, salt) for i in range(3000))
            assert len(got) == 3000 and got[key(1234, salt)].content == "answer 1234 中文"
        assert len(cache.get_many(legacy)) == 500


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "llm_cache"
    root.mkdir()
    (root / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RuntimeError, match="not a usable response cache"):
        ResponseCache(root).get(key(1))
