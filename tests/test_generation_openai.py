"""The openai and openai_batch backends, driven through the real `openai` SDK against a local fake server.

Every test ends with the accounting rule: generated + quarantined = inputs, nothing lost.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fake_openai import LEAK_MARKERS, FakeOpenAI, sample_ids_in, write_fixture

from gmai_pipeline.generation import pipeline
from gmai_pipeline.generation.backends.openai_batch import BatchPending
from gmai_pipeline.generation.backends.openai_online import OpenAIOnline
from gmai_pipeline.storage import OutputLayout, md5_bytes

N = 6
MODEL = "gpt-4o-2024-08-06"


@pytest.fixture
def fake():
    with FakeOpenAI(slow_s=1.2) as server:
        yield server


@pytest.fixture
def rows(tmp_path: Path) -> list[dict]:
    """N rows in shard 000 with distinct labels (a wrong join would show), half with boxes."""
    ids = sample_ids_in("000", N, "ds_open")
    spec = [
        {
            "sample_id": sid,
            "dataset": "ds_open",
            "label": f"finding{i}",
            "bbox": [1, 2, 12 + i, 14] if i % 2 else None,
        }
        for i, sid in enumerate(ids)
    ]
    return write_fixture(tmp_path, spec)


def _cfg(fake: FakeOpenAI, **kw) -> pipeline.LLMConfig:
    base = {
        "backend": "openai",
        "model": MODEL,
        "base_url": fake.base_url,
        "max_in_flight": 1,
        "timeout_s": 5.0,
        "max_retries": 2,
        "batch_poll_s": 0.02,
        "batch_max_wait_s": 10.0,
    }
    return pipeline.LLMConfig(**(base | kw))


def _generate(
    layout: OutputLayout, cfg: pipeline.LLMConfig, asset: str = "captions", allowed=None, backend=None
):
    backend = backend or pipeline.make_backend(cfg, layout, api_key="sk-test-not-a-secret")
    report = pipeline.generate_partition(asset, "000", layout, cfg, backend, allowed or {"ds_open": True})
    inputs, generated, quarantined = pipeline.accounted(layout, asset, "000", cfg)
    assert (report.inputs, report.generated, report.quarantined) == (inputs, generated, quarantined)
    assert generated + quarantined == inputs  # nothing lost
    return report


def empty_cache(layout: OutputLayout) -> None:
    """Forget every cached answer and batch (the cache database and the Batch API's state files)."""
    for path in [*layout.llm_cache.glob("responses.sqlite*"), *layout.llm_cache.rglob("*.json")]:
        path.unlink()


def _records(layout: OutputLayout, asset: str = "captions") -> list[dict]:
    return pq.read_table(layout.generated(asset, "000")).to_pylist()


def test_valid_answers_then_rerun_sends_nothing(tmp_path: Path, fake: FakeOpenAI, rows: list[dict]):
    layout = OutputLayout(tmp_path)
    cfg = _cfg(fake, max_in_flight=4)
    first = _generate(layout, cfg)
    vqa = _generate(layout, cfg, "vqa")
    assert first.generated == vqa.generated == N and fake.counts["chat"] == 2 * N
    assert first.requests_sent == N and first.tokens_in > 0 and first.tokens_out > 0 and first.cost_usd > 0
    records = _records(layout) + _records(layout, "vqa")
    by_sample = {r["id"]: r for r in records}
    for r in records:
        assert r["generator"] == f"openai:{MODEL}" and r["confidence"] == pytest.approx(0.905, abs=1e-3)
        assert r["label"] in r["conversations"]  # each answer joined to its own request
        assert r["label_mentioned"]
    assert len(by_sample) == 2 * N
    assert all(
        json.loads(r["conversations"])[1]["value"].startswith("This region")
        for r in records
        if r["kind"] == "region_caption"
    )
    # A second materialization: every answer from the cache, zero requests, identical tables.
    before = _records(layout), _records(layout, "vqa")
    again, again_vqa = _generate(layout, cfg), _generate(layout, cfg, "vqa")
    assert fake.counts["chat"] == 2 * N
    assert (
        again.requests_sent == again_vqa.requests_sent == 0 and again.cache_hits == again_vqa.cache_hits == N
    )
    assert (_records(layout), _records(layout, "vqa")) == before


def test_invalid_answer_retried_once_then_quarantined(tmp_path: Path, fake: FakeOpenAI, rows: list[dict]):
    layout = OutputLayout(tmp_path)
    # One request at a time, so the script is consumed in row order: rows 1 and 2 answer invalid JSON,
    # then the retry of row 1 is invalid again (quarantined) and the retry of row 2 is valid.
    fake.script("invalid", "invalid", *["valid"] * (N - 2), "invalid", "valid")
    report = _generate(layout, _cfg(fake), "vqa")
    assert fake.counts["chat"] == N + 2 and report.retried == 2
    assert report.generated == N - 1 and dict(report.failures) == {"invalid_json": 1}
    quarantine = pq.read_table(layout.generation_quarantine("vqa", "000")).to_pylist()
    assert quarantine[0]["source_path"] == rows[0]["sample_id"] and quarantine[0]["step"] == "generate_vqa"
    retried = [r for r in _records(layout, "vqa") if r["prompt_version"] == "vqa_v1+retry1"]
    assert [r["sample_id"] for r in retried] == [rows[1]["sample_id"]]
    # The invalid answers are cached too: a re-run replays the same decisions without a request.
    again = _generate(layout, _cfg(fake), "vqa")
    assert fake.counts["chat"] == N + 2 and again.generated == N - 1 and again.quarantined == 1


def test_429_with_retry_after_then_success(tmp_path: Path, fake: FakeOpenAI, rows: list[dict]):
    layout = OutputLayout(tmp_path)
    fake.script("429", "429")
    report = _generate(layout, _cfg(fake))
    assert [b for b, _ in fake.chat_log[:3]] == ["429", "429", "valid"]
    assert fake.counts["chat"] == N + 2 and report.generated == N and not report.failures


def test_500_then_success_is_retried_by_the_sdk(tmp_path: Path, fake: FakeOpenAI, rows: list[dict]):
    layout = OutputLayout(tmp_path)
    fake.script("500")
    report = _generate(layout, _cfg(fake))
    assert fake.counts["chat"] == N + 1 and report.generated == N and not report.failures


def test_persistent_errors_are_quarantined_not_cached_and_retried_next_run(
    tmp_path: Path, fake: FakeOpenAI, rows
):
    layout = OutputLayout(tmp_path)
    fake.script("500", "500", "500")  # one request fails all three attempts (max_retries=2)
    report = _generate(layout, _cfg(fake))
    assert report.generated == N - 1 and dict(report.failures) == {"http_500": 1}
    again = _generate(layout, _cfg(fake))
    assert again.requests_sent == 1 and again.generated == N and again.cache_hits == N - 1


def test_timeout_retried_then_quarantined(tmp_path: Path, fake: FakeOpenAI, rows: list[dict]):
    layout = OutputLayout(tmp_path)
    fake.script("slow")  # past the 0.4 s timeout once: the SDK retries and succeeds
    report = _generate(layout, _cfg(fake, timeout_s=0.4, max_retries=1))
    assert report.generated == N and fake.counts["chat"] == N + 1
    fake.script("slow", "slow")
    empty_cache(layout)
    report = _generate(layout, _cfg(fake, timeout_s=0.4, max_retries=1))
    assert dict(report.failures) == {"timeout": 1} and report.generated == N - 1


def test_no_path_or_header_value_in_any_request(tmp_path: Path, fake: FakeOpenAI, rows: list[dict]):
    layout = OutputLayout(tmp_path)
    cfg = _cfg(fake, translate_fraction=1.0)
    for asset in ("captions", "vqa"):
        _generate(layout, cfg, asset)
    zh = pipeline.translate_partition(
        "000", layout, cfg, pipeline.make_backend(cfg, layout, api_key="k"), {"ds_open": True}
    )
    assert zh.generated == 2 * N and zh.requests_sent == 2 * N
    assert len(fake.bodies) == 4 * N
    # The Batch path too: the uploaded JSONL (multipart body) and the batch creation.
    empty_cache(layout)
    _generate(layout, _cfg(fake, backend="openai_batch"), "vqa")
    assert fake.counts["files.create"] == 1 and len(fake.bodies) == 4 * N + 2
    forbidden = [
        *LEAK_MARKERS,
        str(tmp_path),
        "images/2d",
        ".png",
        *(r["sample_id"] for r in rows),
        *(r["source_path"] for r in rows),
        "sk-test-not-a-secret",
    ]
    for raw in fake.bodies:
        text = raw.decode("utf-8")
        for value in forbidden:
            assert value not in text
    # The image sent is exactly the stored file (its MD5 is the one in the cache key).
    stored = {md5_bytes((tmp_path / r["image"]).read_bytes()) for r in rows}
    sent = set()
    for raw in fake.bodies:
        for url in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", raw.decode()):
            sent.add(md5_bytes(base64.b64decode(url)))
    assert sent == stored


def test_source_without_licence_never_goes_to_a_remote_endpoint(tmp_path: Path, rows: list[dict]):
    layout = OutputLayout(tmp_path)
    # A non-loopback name that cannot resolve: if anything were sent, the run would fail with connection errors.
    cfg = pipeline.LLMConfig(
        backend="openai", model=MODEL, base_url="http://api.example.invalid/v1", max_retries=0, timeout_s=1
    )
    report = _generate(layout, cfg, allowed={"ds_open": False})
    assert report.requests_sent == 0 and report.held_back == N and report.generated == 0
    quarantine = pq.read_table(layout.generation_quarantine("captions", "000")).to_pylist()
    assert {q["reason"] for q in quarantine} == {"held_back_licence"} and len(quarantine) == N


def test_licensed_sources_go_out_and_unlicensed_stay(tmp_path: Path, fake: FakeOpenAI, monkeypatch):
    ids = sample_ids_in("000", 4, "mixed")
    write_fixture(
        tmp_path,
        [
            {"sample_id": s, "dataset": "open" if i < 2 else "closed", "label": f"l{i}", "bbox": None}
            for i, s in enumerate(ids)
        ],
    )
    layout = OutputLayout(tmp_path)
    monkeypatch.setattr(
        OpenAIOnline, "is_local", property(lambda self: False)
    )  # treat the fake as a remote endpoint
    report = _generate(layout, _cfg(fake), allowed={"open": True, "closed": False})
    assert fake.counts["chat"] == 2 and report.held_back == 2 and report.generated == 2
    assert {r["dataset"] for r in _records(layout)} == {"open"}


def test_batch_out_of_order_split_and_joined(tmp_path: Path, fake: FakeOpenAI, rows: list[dict]):
    layout = OutputLayout(tmp_path)
    cfg = _cfg(fake, backend="openai_batch", batch_max_requests=4)
    report = _generate(layout, cfg)
    assert (
        fake.counts["batches.create"] == 2 and fake.counts["files.create"] == 2 and fake.counts["chat"] == 0
    )
    assert report.generated == N and report.requests_sent == N
    keys = {r["request_sha256"] for r in _records(layout)}
    assert any(
        order != sorted(order) for order in fake.batch_line_order
    )  # the output really came out of order
    assert set().union(*fake.batch_line_order) == keys  # custom_id is the cache key
    for r in _records(layout):
        assert r["label"] in r["conversations"] and r["generator"] == f"openai_batch:{MODEL}"
    assert report.cost_usd == pytest.approx(
        pipeline.estimate_usd(MODEL, report.tokens_in, report.tokens_out) / 2
    )
    again = _generate(layout, cfg)
    assert fake.counts["batches.create"] == 2 and again.requests_sent == 0 and again.cache_hits == N


def test_batch_error_lines_and_invalid_answers(tmp_path: Path, fake: FakeOpenAI, rows: list[dict]):
    layout = OutputLayout(tmp_path)
    fake.out_of_order = False
    fake.script("500", "invalid")  # line 1 fails (error file), line 2 invalid -> retried in a second batch
    report = _generate(layout, _cfg(fake, backend="openai_batch"), "vqa")
    assert fake.counts["batches.create"] == 2 and report.retried == 1
    assert report.generated == N - 1 and dict(report.failures) == {"http_500": 1}


def test_batch_resumes_after_restart_without_paying_twice(tmp_path: Path, fake: FakeOpenAI, rows: list[dict]):
    layout = OutputLayout(tmp_path)
    fake.hold_batches = True
    # Three chunks of two rows: a run that cannot wait still submits every chunk before it stops.
    cfg = _cfg(fake, backend="openai_batch", batch_max_wait_s=0.0, chunk_size=2)
    with pytest.raises(BatchPending):
        _generate(layout, cfg)
    assert (
        fake.counts["batches.create"] == 3 and len(list((layout.llm_cache / "batches").glob("*.json"))) == 3
    )
    assert not layout.generated("captions", "000").exists()  # no half-written table
    with pytest.raises(BatchPending):  # a restart while the batches still run: polled, not resubmitted
        _generate(layout, cfg)
    assert fake.counts["batches.create"] == 3
    fake.hold_batches = False
    backend = pipeline.make_backend(cfg, layout, api_key="k")
    report = _generate(layout, cfg, backend=backend)
    assert fake.counts["batches.create"] == 3 and fake.counts["files.create"] == 3
    assert backend.batches_resumed == 3 and report.generated == N and report.requests_sent == 0


@pytest.mark.parametrize("backend", ["openai", "openai_batch"])
def test_malformed_200_bodies_are_invalid_answers_and_good_ones_stay_cached(
    tmp_path: Path, fake: FakeOpenAI, rows: list[dict], backend: str
):
    """Hardening point 2: an HTML page or JSON of another shape behind HTTP 200 fails only its request."""
    layout = OutputLayout(tmp_path)
    # Row order (one request in flight; a batch answers lines in key order, so only counts matter):
    # two malformed answers, the rest valid; the retry of one is malformed again, the other valid.
    fake.script("not_json", "wrong_shape", *["valid"] * (N - 2), "wrong_shape", "valid")
    cfg = _cfg(fake, backend=backend)
    report = _generate(layout, cfg)
    assert report.generated == N - 1 and report.quarantined == 1 and report.retried == 2
    assert dict(report.failures) == {"malformed_response": 1}
    quarantine = pq.read_table(layout.generation_quarantine("captions", "000")).to_pylist()
    assert quarantine[0]["reason"] == "malformed_response"
    assert quarantine[0]["source_path"] in {r["sample_id"] for r in rows}
    assert "502 Bad Gateway" not in quarantine[0]["detail"] and "rate limit" not in quarantine[0]["detail"]
    sent = fake.counts["chat"] + fake.counts["batch_lines"]
    assert sent == N + 2
    # A re-run pays again only for the two requests whose answers were malformed (those are never
    # cached); the N - 2 good answers of the same chunk come from the cache.
    again = _generate(layout, cfg)
    assert fake.counts["chat"] + fake.counts["batch_lines"] == sent + 2
    assert again.generated == N and again.cache_hits == N - 2 and again.requests_sent == 2
