"""The Dagster layer of generation: partitioned assets over a run's partition range, metadata, the check."""

from __future__ import annotations

import dataclasses

import dagster as dg
import pyarrow.parquet as pq
from fake_openai import FakeOpenAI, sample_ids_in, write_fixture
from run_storage import stored_text

from gmai_pipeline.defs import generation
from gmai_pipeline.defs.generation import ALL_SHARDS_TAGS, TEMPLATE_NOTE, LLMResource
from gmai_pipeline.generation.pipeline import LLMConfig
from gmai_pipeline.partitions import SHARD_KEYS
from gmai_pipeline.storage import OutputLayout


def _fixture(root) -> list[dict]:
    spec = []
    for shard, prefix in (("000", "ds_a"), ("002", "ds_a"), ("005", "ds_b")):
        for i, sid in enumerate(sample_ids_in(shard, 3, prefix)):
            spec.append(
                {
                    "sample_id": sid,
                    "dataset": prefix,
                    "label": f"lesion{i}",
                    "bbox": [1, 1, 9, 9] if i == 1 else None,
                }
            )
    return write_fixture(root, spec)


def _materialize(llm: LLMResource, storage) -> dg.ExecuteInProcessResult:
    assets = generation.build_defs([]).assets
    with dg.DagsterInstance.ephemeral() as instance:
        return dg.materialize(
            assets, resources={"llm": llm, "storage": storage}, tags=ALL_SHARDS_TAGS, instance=instance
        )


def _meta(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)][:1]
    return event.step_materialization_data.materialization.metadata


def test_assets_definition_shape():
    defs = generation.build_defs([])
    for a in defs.assets:
        assert a.group_names_by_key[a.key] == "generation"
        assert a.partitions_def.get_partition_keys() == SHARD_KEYS
        assert a.backfill_policy == dg.BackfillPolicy.single_run()
        assert a.op.pool == "llm"
    keys = {a.key.to_user_string(): a for a in defs.assets}
    assert set(keys) == {"captions", "vqa", "translations"}
    assert {d.to_user_string() for d in keys["translations"].dependency_keys} == {"captions", "vqa"}
    assert dg.AssetKey("decontaminated") in keys["captions"].dependency_keys


def test_llm_resource_from_profiles_keeps_the_key_out(monkeypatch):
    monkeypatch.delenv("GMAI_LLM_BACKEND", raising=False)
    monkeypatch.delenv("GMAI_LLM_MODEL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-appear")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    assert LLMResource.from_profile("demo").backend == "template"
    for profile in ("local", "slurm"):
        llm = LLMResource.from_profile(profile)
        assert llm.backend in ("openai", "openai_batch") and llm.model.startswith("gpt-4o-")
        assert isinstance(llm.base_url, dg.EnvVar) and llm.config().base_url == "http://127.0.0.1:8000/v1"
        assert "sk-must-not-appear" not in repr(llm) and "sk-must-not-appear" not in str(llm.config())
    monkeypatch.setenv("GMAI_LLM_BACKEND", "openai_batch")
    monkeypatch.setenv("GMAI_LLM_MODEL", "gpt-4o-mini-2024-07-18")
    llm = LLMResource.from_profile("local")
    assert (llm.backend, llm.model) == ("openai_batch", "gpt-4o-mini-2024-07-18")


def test_llm_resource_fields_are_llm_config_fields():
    """What a profile's llm.yaml sets reaches the generation code: each resource field is an LLMConfig field,
    the default resource is the default config, and a non-default value survives `config()`."""
    config_fields = {f.name for f in dataclasses.fields(LLMConfig)}
    assert not set(LLMResource.model_fields) - config_fields
    assert LLMResource().config() == LLMConfig()
    cfg = LLMResource(backend="openai", model="gpt-4o-2024-08-06", chunk_size=7, base_url="").config()
    assert (cfg.backend, cfg.model, cfg.chunk_size, cfg.base_url) == ("openai", "gpt-4o-2024-08-06", 7, None)


def test_template_run_over_all_partitions(output_root, storage):
    rows = _fixture(output_root)
    result = _materialize(LLMResource(), storage)
    assert result.success
    layout = OutputLayout(output_root)
    captions = [r for k in SHARD_KEYS for r in pq.read_table(layout.generated("captions", k)).to_pylist()]
    assert len(captions) == len(rows)
    meta = _meta(result, "captions")
    assert meta["generator"].value == TEMPLATE_NOTE and meta["backend"].value == "template"
    assert meta["inputs"].value == len(rows) and meta["quarantined"].value == 0
    assert meta["requests_sent"].value == 0 and meta["label_mention_rate"].value == 1.0
    assert "samples" in meta and "estimated_cost_usd" in meta and "failures_by_reason" in meta
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 3 and all(c.passed for c in checks)
    zh = _meta(result, "translations")
    assert zh["generated"].value > 0 and zh["generated"].value == zh["inputs"].value


def test_openai_materialization_twice_second_sends_nothing(output_root, storage, monkeypatch):
    _fixture(output_root)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-in-metadata")
    with FakeOpenAI() as fake:
        llm = LLMResource(
            backend="openai", model="gpt-4o-mini-2024-07-18", base_url=fake.base_url, max_retries=2
        )
        first = _materialize(llm, storage)
        sent = fake.counts["chat"]
        assert first.success and sent > 0
        meta = _meta(first, "vqa")
        assert (
            meta["requests_sent"].value == 9
            and meta["tokens_in"].value > 0
            and meta["estimated_cost_usd"].value > 0
        )
        assert "sk-never-in-metadata" not in str(
            {a: _meta(first, a) for a in ("captions", "vqa", "translations")}
        )
        second = _materialize(llm, storage)
        assert second.success and fake.counts["chat"] == sent
        assert (
            _meta(second, "captions")["cache_hits"].value == 9
            and _meta(second, "captions")["requests_sent"].value == 0
        )


def test_endpoint_credentials_never_stored_or_shown(tmp_path, output_root, storage, monkeypatch):
    """Hardening point 4: a password in OPENAI_BASE_URL reaches the endpoint, never the run storage."""
    import os

    password, key = "Pw-9f3Kq2-zebra", "sk-test-Zq81Lm4Nv0Xc7Bb2"
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("GMAI_LLM_BACKEND", raising=False)
    monkeypatch.delenv("GMAI_LLM_MODEL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    spec = [
        {"sample_id": s, "dataset": "ds_a", "label": "lesion", "bbox": None}
        for s in sample_ids_in("000", 3, "ds_a")
    ]
    write_fixture(output_root, spec)
    with FakeOpenAI() as fake:
        url = fake.base_url.replace("http://", f"http://gmai-user:{password}@")
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        llm = LLMResource.from_profile("local")
        assets = generation.build_defs([]).assets
        with dg.DagsterInstance.get() as instance:
            result = dg.materialize(
                [a for a in assets if a.key == dg.AssetKey("captions")],
                resources={"llm": llm, "storage": storage},
                partition_key="000",
                instance=instance,
            )
            assert result.success
            run_config = str(instance.get_run_by_id(result.run_id).run_config)
            logs = "\n".join(str(e) for e in instance.all_logs(result.run_id))
    assert fake.counts["chat"] == 3  # the endpoint (and its credentials) were used
    assert len(pq.read_table(OutputLayout(output_root).generated("captions", "000"))) == 3
    # Everything Dagster stored (SQLite run, event and schedule storage with their compressed
    # snapshots, compute logs) and everything the asset wrote.
    text = stored_text(home, output_root)
    assert "== " + str(home / "history" / "runs.db") in text and "OPENAI_BASE_URL" in text
    assert password not in text and key not in text
    assert password not in run_config and password not in logs and key not in logs
    assert os.environ["OPENAI_BASE_URL"] == url  # nothing rewrote the variable itself
