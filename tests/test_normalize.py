"""The driver and the Dagster layer: batches, progress, checks that can fail, metadata, failure, demo."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from normalize_fixtures import make_source, pattern, run, write_image
from storage_fixtures import storage_at

from gmai_pipeline.defs.common import group_name
from gmai_pipeline.defs.normalize import IN_RELEASE, PROPERTIES, build_normalized_asset, normalized_key
from gmai_pipeline.defs.sources import build_source_asset
from gmai_pipeline.manifest import scan
from gmai_pipeline.normalize import normalize_source, verify_outputs
from gmai_pipeline.schemas import NORMALIZED_SCHEMA, QUARANTINE_SCHEMA


def _folder_dataset(raw: Path, n: int = 10) -> None:
    for i in range(n):
        write_image(raw / ("a" if i % 2 else "b") / f"{i}.png", pattern(16, 16, seed=i))


def test_rows_stream_in_batches_and_progress_is_reported(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    _folder_dataset(raw)
    seen = []
    source = make_source("ds", "2d_cls", {"kind": "image_folder"})
    report, rows, _ = run(
        source, raw, tmp_path / "out", batch_rows=3, progress=seen.append, progress_every=0.0
    )
    assert (
        len(rows) == 10 and pq.ParquetFile(tmp_path / "out" / "normalized" / "ds.parquet").num_row_groups >= 3
    )
    assert seen and seen[-1].inputs >= 9
    assert pq.read_schema(tmp_path / "out" / "normalized" / "ds.parquet").equals(NORMALIZED_SCHEMA)
    assert pq.read_schema(tmp_path / "out" / "quarantine" / "ds.parquet").equals(QUARANTINE_SCHEMA)


def test_checks_fail_on_tampered_tables(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    write_image(raw / "images" / "a.png", pattern(20, 20))
    (raw / "annotations.json").write_text(
        '{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "polyp"}],'
        '"annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]}'
    )
    source = make_source("ds", "2d_det", {"kind": "coco", "image_dir": "images"})
    out = tmp_path / "out"
    report = normalize_source(source, raw, scan(raw), out)
    assert all(c.passed for c in verify_outputs(out, source, report).values())
    path = out / "normalized" / "ds.parquet"
    row = pq.read_table(path).to_pylist()[0]
    bad = [
        {**row, "bbox": [0, 0, 21, 5]},
        {**row, "label": " "},
        {**row, "modality": "Radiograph"},
    ]
    pq.write_table(pa.Table.from_pylist(bad, schema=NORMALIZED_SCHEMA), path)
    checks = verify_outputs(out, source, report)
    assert (
        not checks["boxes_inside_image"].passed and checks["boxes_inside_image"].metadata["violations"] == 1
    )
    assert not checks["labels_non_empty"].passed
    assert not checks["modality_department_in_vocabulary"].passed
    assert not checks["inputs_accounted"].passed  # 3 rows now, 1 input


def test_asset_materializes_with_metadata_checks_and_preview(
    tmp_path: Path, output_root: Path, monkeypatch
) -> None:
    raw_root = tmp_path / "raw"
    _folder_dataset(raw_root / "ds", 6)
    (raw_root / "ds" / "a" / "broken.png").write_bytes(b"nope")
    storage = storage_at(output_root, raw_root=raw_root)
    source = make_source("ds", "2d_cls", {"kind": "image_folder"})
    asset = build_normalized_asset(source)
    assert asset.key == normalized_key("ds")
    assert dg.AssetKey(["source", "ds"]) in asset.dependency_keys
    assert asset.group_names_by_key[asset.key] == group_name(source)
    assert {c.name for c in asset.check_specs} == {IN_RELEASE}  # one verdict; the properties in its metadata
    result = dg.materialize([build_source_asset(source), asset], resources={"storage": storage})
    assert result.success
    meta = result.asset_materializations_for_node("normalized__ds")[0].metadata
    assert (meta["inputs"].value, meta["kept"].value, meta["quarantined"].value) == (7, 6, 1)
    assert meta["dagster/row_count"].value == 6
    assert "unreadable" in meta["quarantine_by_reason"].value and "| a " in meta["label_distribution"].value
    assert meta["preview"].value.startswith("![preview](data:image/jpeg;base64,")
    assert (output_root / "previews" / "ds.png").is_file()
    (verdict,) = result.get_asset_check_evaluations()
    assert verdict.check_name == IN_RELEASE and verdict.passed
    assert {name: verdict.metadata[name].value for name in PROPERTIES} == dict.fromkeys(PROPERTIES, "passed")
    assert verdict.metadata["inputs_accounted/inputs"].value == 7
    assert re.search(r"\| boxes_inside_image +\| passed +\|", verdict.metadata["properties"].value)


def test_asset_fails_only_when_nothing_is_readable(tmp_path: Path, output_root: Path, monkeypatch) -> None:
    raw_root = tmp_path / "raw"
    (raw_root / "bad" / "x").mkdir(parents=True)
    for i in range(3):
        (raw_root / "bad" / "x" / f"{i}.jpg").write_bytes(b"\xff\xd8 not really" * (i + 1))
    storage = storage_at(output_root, raw_root=raw_root)
    source = make_source("bad", "2d_cls", {"kind": "image_folder"})
    result = dg.materialize(
        [build_source_asset(source), build_normalized_asset(source)],
        raise_on_error=False,
        resources={"storage": storage},
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "none of 3 inputs" in message and "unreadable (3)" in message
    assert (
        pq.read_metadata(output_root / "quarantine" / "bad.parquet").num_rows == 3
    )  # still written, for the user


@pytest.mark.slow
def test_demo_sources_materialize_with_all_checks_passing(storage, output_root: Path) -> None:
    from gmai_pipeline.catalog import load_catalog
    from gmai_pipeline.settings import DEMO_CATALOG_DIR

    demo = [s for s in load_catalog((DEMO_CATALOG_DIR,)) if s.demo]
    assert demo
    assets = [build_source_asset(s) for s in demo] + [build_normalized_asset(s) for s in demo]
    result = dg.materialize(assets, resources={"storage": storage})
    assert result.success
    evals = result.get_asset_check_evaluations()
    assert {(e.asset_key, e.check_name) for e in evals} == {
        (normalized_key(s.name), IN_RELEASE) for s in demo
    }
    assert all(e.metadata[name].value == "passed" for e in evals for name in PROPERTIES)
    assert all(e.passed for e in evals), [
        (e.asset_key, e.check_name, e.metadata) for e in evals if not e.passed
    ]
    for s in demo:
        meta = result.asset_materializations_for_node(f"normalized__{s.name}")[0].metadata
        assert (
            meta["kept"].value > 0 and meta["inputs"].value == meta["kept"].value + meta["quarantined"].value
        )


def test_threaded_run_equals_sequential_run(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "ds"
    _folder_dataset(raw, 40)
    (raw / "a" / "bad.png").write_bytes(b"broken")
    (raw / "b" / "dup.png").write_bytes((raw / "b" / "0.png").read_bytes())
    source = make_source("ds", "2d_cls", {"kind": "image_folder"})
    _, seq_rows, seq_q = run(source, raw, tmp_path / "seq", workers=1)
    _, par_rows, par_q = run(source, raw, tmp_path / "par", workers=4)
    assert seq_rows == par_rows and seq_q == par_q and len(seq_rows) == 40
