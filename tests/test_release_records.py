"""The release-records table: checked once, sorted by id, read by every release output as it streams by."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from release_fixtures import demo_rows, write_generated

from gmai_pipeline.release import records as records_mod
from gmai_pipeline.release.images import sync_images
from gmai_pipeline.release.mixtures import build_mixture, load_mixtures, score_candidates, write_mixture
from gmai_pipeline.release.records import ReleaseError, ReleaseRecords, load_records, write_release_records
from gmai_pipeline.release.shards import write_shards
from gmai_pipeline.release.stage_mix import write_stage_mixture
from gmai_pipeline.release.trainer_metas import write_stage_metas
from gmai_pipeline.storage import OutputLayout


@pytest.fixture
def layout(output_root: Path, monkeypatch: pytest.MonkeyPatch) -> OutputLayout:
    """A synthetic generated set with bad rows and duplicates, sorted in many small runs."""
    monkeypatch.setattr(records_mod, "RUN_ROWS", 7)  # many runs, merged a few rows at a time
    monkeypatch.setattr(records_mod, "RUN_BATCH", 3)
    monkeypatch.setattr(records_mod, "OUT_ROWS", 5)
    layout = OutputLayout(output_root)
    rows = demo_rows(layout, images_per_source=5)
    rows[0] = {**rows[0], "conversations": "not json"}
    rows += [{**rows[3]}, {**rows[9], "image": "images/nowhere.png"}]  # a duplicate; one more of an id
    write_generated(layout, rows)
    return layout


def test_table_holds_what_load_records_returns(layout: OutputLayout) -> None:
    stats = write_release_records(layout)
    loaded = load_records(layout)
    table = ReleaseRecords(layout)
    assert [r.record for r in table] == [r.record for r in loaded.rows] and len(table) == len(loaded.rows)
    ids = [r.id for r in table]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert pq.ParquetFile(layout.release_records).metadata.num_row_groups > 1
    rejected = pq.read_table(layout.release / "rejected.parquet").to_pylist()
    assert sorted(r["reason"] for r in rejected) == sorted(r["reason"] for r in loaded.rejected)
    assert sorted(r["reason"] for r in rejected) == ["conversations_not_json", "duplicate_id", "duplicate_id"]
    assert stats.inputs == loaded.inputs == stats.released + sum(stats.rejected.values())
    assert not list(layout.root.glob(".release_records.*"))  # the spilled runs are gone


def test_readers_need_the_table(output_root: Path) -> None:
    with pytest.raises(ReleaseError, match="materialize `release_records`"):
        ReleaseRecords(OutputLayout(output_root))


def test_outputs_from_the_table_equal_outputs_from_rows_in_memory(
    layout: OutputLayout, tmp_path: Path
) -> None:
    write_release_records(layout)
    table, rows = ReleaseRecords(layout), load_records(layout).rows
    a = write_shards(table, tmp_path / "a" / "shards", 20_000)
    b = write_shards(rows, tmp_path / "b" / "shards", 20_000)
    assert a.shards == b.shards and len(a.shards) > 1

    images = tmp_path / "images"
    (images / "stale" / "old.png").parent.mkdir(parents=True)
    (images / "stale" / "old.png").write_bytes(b"x")
    first = sync_images(table, images)
    assert first.linked == len({r.record["image"] for r in rows}) and first.removed == ["stale/old.png"]
    assert sync_images(table, images).kept == first.linked
    assert {p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file()} == {
        r.record["image"] for r in rows
    }


def _files(folder: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.suffix == ".parquet":
            out[rel] = pq.read_table(path).to_pylist()
        elif path.name.endswith(".provenance.json"):
            meta = json.loads(path.read_text())
            paths = {k: os.path.basename(meta[k]) for k in ("image_root", "scores_table") if k in meta}
            out[rel] = {**meta, **paths}
        else:
            out[rel] = path.read_bytes()
    return out


def test_streamed_stage_mixtures_equal_the_in_memory_ones(layout: OutputLayout, tmp_path: Path) -> None:
    write_release_records(layout)
    rows = load_records(layout).rows
    config, path = load_mixtures()
    raw = yaml.safe_load(path.read_text())
    raw["stages"]["stage2"]["components"]["captions"]["sample_ratio"] = 1.5  # repeats and extra copies
    raw["stages"]["stage1"]["components"]["captions"]["sample_ratio"] = 0.5
    for comp in raw["stages"]["stage3"]["components"].values():
        comp.get("text_files", []).__setitem__(
            slice(None), [str(path.parent / f) for f in comp.get("text_files", [])]
        )
    (tmp_path / "mixtures.yaml").write_text(yaml.safe_dump(raw))
    config, path = load_mixtures(tmp_path / "mixtures.yaml")
    candidates = score_candidates("stage3", rows, config)
    scores = {
        r["id"]: {"id": r["id"], "status": "scored", "mean_loss": i / 10, "confidence": 1 / (1 + i)}
        for i, r in enumerate(candidates)
    }
    scores[candidates[0]["id"]] = {"id": candidates[0]["id"], "status": "image_missing"}
    for stage in ("stage1", "stage2", "stage3"):
        judged = scores if stage == "stage3" else None
        memory = tmp_path / "memory" / stage
        mix = build_mixture(stage, rows, config, path, scores=judged)
        expected_meta = write_mixture(mix, memory / "mixtures", memory / "images", path)
        write_stage_metas(mix, memory)
        streamed = tmp_path / "streamed" / stage
        got = write_stage_mixture(
            stage, ReleaseRecords(layout), config, path, streamed / "mixtures", streamed, streamed / "images",
            scores=judged,
        )  # fmt: skip
        assert got.meta["ids_sha256"] == expected_meta["ids_sha256"] and got.meta["samples"] == len(
            mix.records
        )
        assert _files(streamed) == _files(memory)
