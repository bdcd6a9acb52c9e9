"""Generation domain: prompts, request keys, checks, translation choice, the template backend end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fake_openai import sample_ids_in, write_fixture

from gmai_pipeline.generation import pipeline, prompts, translate, validate
from gmai_pipeline.generation.backends import is_local_url
from gmai_pipeline.generation.backends.openai_batch import jsonl_line, plan_chunks
from gmai_pipeline.generation.cost import estimate_usd
from gmai_pipeline.generation.requests import GenRequest, ImageRef
from gmai_pipeline.partitions import SHARD_KEYS
from gmai_pipeline.schemas import GENERATED_SCHEMA, QUARANTINE_SCHEMA
from gmai_pipeline.storage import OutputLayout, md5_file


def _rows_spec() -> list[dict]:
    """Rows spread over two shards: whole-image labels, two boxes on one image, a second source."""
    a = sample_ids_in("000", 3, "ds_open")
    b = sample_ids_in("003", 2, "ds_closed")
    return [
        {"sample_id": a[0], "dataset": "ds_open", "label": "pneumothorax", "bbox": None},
        {"sample_id": a[1], "dataset": "ds_open", "label": "nodule", "bbox": [2, 3, 20, 15]},
        {"sample_id": a[1], "dataset": "ds_open", "label": "nodule", "bbox": [1, 1, 6, 6]},
        {"sample_id": a[2], "dataset": "ds_open", "label": "normal", "bbox": None, "modality": "MR"},
        {
            "sample_id": b[0],
            "dataset": "ds_closed",
            "label": "polyp",
            "bbox": [4, 4, 12, 12],
            "modality": "Endoscopy",
        },
        {"sample_id": b[1], "dataset": "ds_closed", "label": "tumor", "bbox": None, "modality": "CT"},
    ]


def _run_all(layout: OutputLayout, cfg: pipeline.LLMConfig, allowed: dict[str, bool]) -> dict[str, list]:
    backend = pipeline.make_backend(cfg, layout)
    reports: dict[str, list] = {"captions": [], "vqa": [], "translations": []}
    for key in SHARD_KEYS:
        for asset in ("captions", "vqa"):
            reports[asset].append(pipeline.generate_partition(asset, key, layout, cfg, backend, allowed))
        reports["translations"].append(pipeline.translate_partition(key, layout, cfg, backend, allowed))
    return reports


def _table(layout: OutputLayout, asset: str) -> list[dict]:
    return [r for key in SHARD_KEYS for r in pq.read_table(layout.generated(asset, key)).to_pylist()]


# -- prompts and requests -----------------------------------------------------------------------


def test_prompts_follow_table2_rules_and_carry_no_identifiers():
    fields = {
        "modality": "X-Ray",
        "department": "Pulmonary Medicine",
        "label": "Pneumothorax",
        "clinical_task": "Disease Diagnosis",
        "bbox": [179, 164, 500, 434],
        "width": 600,
        "height": 500,
    }
    version, text = prompts.render("region_caption", fields)
    assert version == prompts.current_version("region_caption") == "region_caption_v1"
    assert "[179, 164, 500, 434]" in text and '"This region"' in text and '"Pneumothorax"' in text
    _, vqa = prompts.render("vqa", fields | {"region": ""})
    assert '{"pairs": [{"question"' in vqa and "$" not in vqa
    with pytest.raises(KeyError):
        prompts.render("caption", {"modality": "CT"})  # a missing field is an error, not an empty slot


def test_request_key_covers_what_changes_the_answer_and_nothing_else(tmp_path: Path):
    img = tmp_path / "a.png"
    write_fixture(tmp_path, [{"sample_id": "s1", "dataset": "d", "label": "x", "bbox": None}])
    img = tmp_path / "images/2d/cls/X-Ray/d/00000.png"
    ref = ImageRef.from_file(img)
    assert ref.md5 == md5_file(img)

    def req(**kw) -> GenRequest:
        base = {
            "task": "caption",
            "model": "gpt-4o-2024-08-06",
            "prompt_version": "caption_v1",
            "prompt": "p",
            "params": {"temperature": 0.2},
            "image": ref,
            "fields": {"sample_id": "s1"},
        }
        return GenRequest(**(base | kw))

    key = req().key
    assert len(key) == 64 and req().key == key
    assert req(fields={"sample_id": "another/path"}).key == key  # local-only fields are not part of the key
    for change in (
        {"model": "gpt-4o-mini"},
        {"prompt": "q"},
        {"prompt_version": "caption_v2"},
        {"params": {"temperature": 0.3}},
        {"image": None},
    ):
        assert req(**change).key != key
    body = json.dumps(req().body())
    assert "s1" not in body and str(tmp_path) not in body and "data:image/png;base64," in body


def test_batch_files_split_by_count_and_bytes(tmp_path: Path):
    reqs = [GenRequest("caption", "m", "v", f"prompt {i} " + "x" * 100, {}) for i in range(10)]
    assert [len(c) for c in plan_chunks(reqs, max_requests=4, max_bytes=10**6)] == [4, 4, 2]
    line = len(jsonl_line(reqs[0]))
    chunks = plan_chunks(reqs, max_requests=50_000, max_bytes=3 * line + 5)
    assert all(len(c) <= 3 for c in chunks) and sum(len(c) for c in chunks) == 10
    assert plan_chunks(list(reversed(reqs)), 4, 10**6) == plan_chunks(reqs, 4, 10**6)  # same set, same plan
    with pytest.raises(ValueError):
        plan_chunks(reqs, 4, line - 1)


def test_local_endpoint_detection():
    for url in (
        "http://127.0.0.1:8000/v1",
        "http://localhost:8000/v1",
        "http://[::1]:9/v1",
        "http://127.8.9.1/v1",
    ):
        assert is_local_url(url)
    for url in (
        None,
        "",
        "https://api.openai.com/v1",
        "http://api.example.invalid/v1",
        "http://10.0.0.5/v1",
        "http://localhost.example.com/v1",
    ):
        assert not is_local_url(url)


def test_cost_estimate_uses_price_table():
    assert estimate_usd("gpt-4o-2024-08-06", 1_000_000, 1_000_000) == pytest.approx(12.5)
    assert estimate_usd("gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)
    assert estimate_usd("gpt-4o", 1_000_000, 0, batch=True) == pytest.approx(1.25)
    assert estimate_usd("my-local-vllm-model", 10, 10) is None


# -- checks ---------------------------------------------------------------------------------------


def test_caption_and_vqa_checks():
    assert validate.check_caption("This region shows a bright pneumothorax area.", "Pneumothorax", True).ok
    assert (
        validate.check_caption("The region shows a bright pneumothorax area.", "Pneumothorax", True).reason
        == "missing_this_region"
    )
    assert validate.check_caption("Bad.", "x", False).reason == "too_short"
    ok = validate.check_caption("The lung shows a collapsed lung edge clearly here.", "pneumothorax", False)
    assert ok.ok and ok.label_mentioned  # a listed synonym counts
    assert not validate.check_caption(
        "The lung field looks dark on the right side.", "pneumothorax", False
    ).label_mentioned
    good = validate.check_vqa('{"pairs": [{"question": "Q?", "answer": "A polyp."}]}', "polyp")
    assert good.ok and good.turns == ["Q?", "A polyp."] and good.label_mentioned
    assert validate.check_vqa('{"pairs": [', "x").reason == "invalid_json"
    assert validate.check_vqa('{"pairs": []}', "x").reason == "pair_count"
    four = json.dumps({"pairs": [{"question": "q", "answer": "a"}] * 4})
    assert validate.check_vqa(four, "x").reason == "pair_count"
    assert (
        validate.check_vqa('{"pairs": [{"question": " ", "answer": "a"}]}', "x").reason
        == "empty_question_or_answer"
    )
    assert validate.check_vqa('{"question": "Q?", "answer": "A."}', "x").ok  # the paper's single-object form


def test_translation_checks_and_selection():
    en = ["Describe this image in detail.", "The image shows a pneumothorax."]
    zh = json.dumps({"turns": ["请详细描述这张图像。", "图像显示气胸 (Pneumothorax)。"]}, ensure_ascii=False)
    assert validate.check_translation(zh, en, "Pneumothorax").ok
    assert validate.check_translation(json.dumps({"turns": en}), en, "Pneumothorax").reason == "not_chinese"
    assert (
        validate.check_translation(json.dumps({"turns": ["只有一句。"]}, ensure_ascii=False), en, "x").reason
        == "turn_count_mismatch"
    )
    no_term = json.dumps({"turns": ["请详细描述这张图像。", "图像显示肺部异常。"]}, ensure_ascii=False)
    assert validate.check_translation(no_term, en, "Pneumothorax").reason == "medical_term_missing"
    assert translate.cjk_share("图像显示 Pneumothorax。", ["pneumothorax"]) == 1.0
    ids = [f"sample{i}#caption" for i in range(4000)]
    share = sum(translate.selected(i) for i in ids) / len(ids)
    assert 0.27 < share < 0.33
    assert [translate.selected(i) for i in ids[:50]] == [translate.selected(i) for i in ids[:50]]


# -- template backend, end to end ----------------------------------------------------------------


def test_template_backend_generates_everything_deterministically(tmp_path: Path):
    rows = write_fixture(tmp_path, _rows_spec())
    layout = OutputLayout(tmp_path)
    cfg = pipeline.LLMConfig(translate_fraction=0.5)
    allowed = {
        "ds_open": True,
        "ds_closed": False,
    }  # the template backend is local: licences do not hold it back
    reports = _run_all(layout, cfg, allowed)

    captions, vqa, zh = _table(layout, "captions"), _table(layout, "vqa"), _table(layout, "translations")
    assert len(captions) == len(vqa) == len(rows)
    for asset in ("captions", "vqa", "translations"):
        assert sum(r.quarantined for r in reports[asset]) == 0
        for key in SHARD_KEYS:
            assert pq.read_schema(layout.generated(asset, key)).equals(GENERATED_SCHEMA)
            assert pq.read_schema(layout.generation_quarantine(asset, key)).equals(QUARANTINE_SCHEMA)
            inputs, gen, quar = pipeline.accounted(layout, asset, key, cfg)
            assert gen + quar == inputs
    ids = [r["id"] for r in captions + vqa + zh]
    assert len(ids) == len(set(ids))
    kinds = {r["id"]: r["kind"] for r in captions}
    assert sorted(kinds.values()) == ["caption"] * 3 + ["region_caption"] * 3
    for r in captions + vqa + zh:
        turns = json.loads(r["conversations"])
        assert turns[0]["from"] == "human" and turns[0]["value"].startswith("<image>\n")
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert r["generator"] == "template:template-v1" and r["confidence"] is None
        assert len(r["request_sha256"]) == 64
        if r["kind"] == "region_caption" and r["language"] == "en":
            assert (
                turns[1]["value"].startswith("This region")
                and prompts.format_bbox(r["bbox"]) in turns[0]["value"]
            )
        if r["kind"] == "vqa":
            assert 2 <= len(turns) <= 6
    assert all(r["label_mentioned"] for r in captions + vqa)
    english = {r["id"]: r for r in captions + vqa}
    assert zh and all(
        r["id"] == r["source_record_id"] + "#zh" and r["source_record_id"] in english for r in zh
    )
    assert {r["source_record_id"] for r in zh} == {i for i in english if translate.selected(i, 0.5)}
    for r in zh:
        text = " ".join(t["value"] for t in json.loads(r["conversations"]))
        assert translate.cjk_share(text, prompts.label_terms(r["label"])) > 0.5 and r["label"] in text

    before = {a: _table(layout, a) for a in ("captions", "vqa", "translations")}
    again = _run_all(
        layout, cfg, allowed
    )  # deterministic: the same tables again, nothing stored in the cache
    assert sum(r.requests_sent + r.cache_hits for a in again.values() for r in a) == 0
    assert {a: _table(layout, a) for a in before} == before
    assert not layout.llm_cache.exists()


def test_missing_image_and_duplicate_annotation_are_quarantined(tmp_path: Path):
    spec = _rows_spec()[:3] + [_rows_spec()[1]]  # the same box and label twice
    rows = write_fixture(tmp_path, spec)
    (tmp_path / rows[0]["image"]).unlink()
    layout = OutputLayout(tmp_path)
    cfg = pipeline.LLMConfig()
    report = pipeline.generate_partition(
        "captions", "000", layout, cfg, pipeline.make_backend(cfg, layout), {}
    )
    assert report.inputs == 4 and report.generated == 2
    assert dict(report.failures) == {"image_missing": 1, "duplicate_annotation": 1}
    quarantine = pq.read_table(layout.generation_quarantine("captions", "000")).to_pylist()
    assert {q["reason"] for q in quarantine} == {"image_missing", "duplicate_annotation"}
    assert all(
        q["step"] == "generate_captions" and q["source_path"] in {r["sample_id"] for r in rows}
        for q in quarantine
    )


def test_missing_decontaminated_table_is_a_clear_error(tmp_path: Path):
    layout = OutputLayout(tmp_path)
    cfg = pipeline.LLMConfig()
    with pytest.raises(FileNotFoundError, match="decontaminated"):
        pipeline.generate_partition("vqa", "000", layout, cfg, pipeline.make_backend(cfg, layout), {})


def test_a_partition_reads_only_its_row_groups_of_decontaminated(tmp_path: Path, monkeypatch):
    """decontaminated carries each row's shard, in row groups of one shard: a partition reads its own."""
    import pandas as pd
    import pyarrow as pa

    from gmai_pipeline import decontaminate, partitions
    from gmai_pipeline.schemas import NORMALIZED_SCHEMA

    spec = [
        {"sample_id": f"2d#cls#x-ray#ds#img{i:04d}.png", "dataset": "ds", "label": "normal", "bbox": None}
        for i in range(400)
    ]
    rows = write_fixture(tmp_path, spec)  # also a decontaminated table without the column, as before
    layout = OutputLayout(tmp_path)
    legacy = {p: list(pipeline.partition_rows(layout, p)) for p in SHARD_KEYS}
    pq.write_table(
        pa.Table.from_pylist(rows, schema=NORMALIZED_SCHEMA), layout.annotations, row_group_size=50
    )
    none = pd.DataFrame({c: pd.Series(dtype=object) for c in ("image_md5", "benchmark", "item_id", "method")})
    monkeypatch.setattr(decontaminate, "BATCH_ROWS", 50)  # several row groups per shard
    monkeypatch.setattr(partitions, "ROW_GROUP_ROWS", 20)
    monkeypatch.setattr(partitions, "BUFFER_ROWS", 100)
    decontaminate.apply_matches(layout.annotations, none.assign(distance=None, phash_distance=None), layout)

    table = pq.read_table(layout.decontaminated)
    assert table["shard"].to_pylist() == [partitions.shard_of(r["sample_id"]) for r in table.to_pylist()]
    meta = pq.ParquetFile(layout.decontaminated).metadata
    groups = [set(pq.ParquetFile(layout.decontaminated).read_row_group(i)["shard"].to_pylist())
              for i in range(meta.num_row_groups)]  # fmt: skip
    assert meta.num_row_groups > len(SHARD_KEYS) and all(len(g) == 1 for g in groups)
    read: list[int] = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile, "read_row_group", lambda self, i, **kw: read.append(i) or real(self, i, **kw)
    )
    for p in SHARD_KEYS:
        read.clear()
        assert list(pipeline.partition_rows(layout, p)) == legacy[p]  # the same rows, in the same order
        assert sorted(read) == [i for i, g in enumerate(groups) if g == {p}]
        assert pipeline.count_partition_rows(layout, p) == len(legacy[p])


def test_a_shard_column_made_for_another_shard_count_is_refused(tmp_path: Path):
    import pandas as pd
    import pyarrow as pa

    from gmai_pipeline import decontaminate, partitions
    from gmai_pipeline.schemas import NORMALIZED_SCHEMA

    rows = write_fixture(tmp_path, _rows_spec())
    layout = OutputLayout(tmp_path)
    pq.write_table(pa.Table.from_pylist(rows, schema=NORMALIZED_SCHEMA), layout.annotations)
    none = pd.DataFrame({c: pd.Series(dtype=object) for c in ("image_md5", "benchmark", "item_id", "method")})
    matches = none.assign(distance=None, phash_distance=None)
    decontaminate.apply_matches(layout.annotations, matches, layout, n_shards=partitions.N_SHARDS + 1)
    with pytest.raises(partitions.StaleShardsError, match="rematerialize `decontaminated`"):
        list(pipeline.partition_rows(layout, "000"))
