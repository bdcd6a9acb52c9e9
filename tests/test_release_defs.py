"""The release assets materialize on a synthetic generated set, with the metadata the UI shows."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
from release_fixtures import demo_rows, write_generated

from gmai_pipeline.defs import release
from gmai_pipeline.release.mixtures import load_mixtures, score_candidates
from gmai_pipeline.release.records import load_records
from gmai_pipeline.release.shards import read_index, verify_shards
from gmai_pipeline.storage import OutputLayout


def test_release_assets_materialize(output_root: Path, storage) -> None:
    layout = OutputLayout(output_root)
    rows = demo_rows(layout)
    write_generated(layout, rows)
    # stage3_mix filters by the stage II model's scores (the stage3_scores asset); here: made-up ones.
    config, _ = load_mixtures()
    candidates = score_candidates("stage3", load_records(layout).rows, config)
    (layout.training / "stage3_scores").mkdir(parents=True)
    (layout.training / "stage3_scores" / "scores.jsonl").write_text(
        "".join(
            json.dumps({"id": r["id"], "status": "scored", "mean_loss": i / 10, "confidence": 1 / (1 + i)})
            + "\n"
            for i, r in enumerate(candidates)
        )
    )
    defs = release.build_defs([])
    assets = list(defs.assets)
    result = dg.materialize(
        [*assets, *defs.asset_checks],
        run_config={"ops": {"instruction_shards": {"config": {"target_shard_mb": 0.01}}}},
        resources={"storage": storage},
    )
    assert result.success
    shard_md = result.asset_materializations_for_node("instruction_shards")[0].metadata
    assert shard_md["samples"].value == len(rows) and shard_md["shards"].value == len(
        read_index(layout.release / "shards")["shards"]
    )
    assert shard_md["shards"].value > 1 and "MB/s" in shard_md
    assert verify_shards(layout.release / "shards") == []
    for stage in ("stage1", "stage2", "stage3"):
        md = result.asset_materializations_for_node(f"{stage}_mix")[0].metadata
        meta = json.loads((layout.mixtures / f"{stage}.provenance.json").read_text())
        assert md["samples"].value == meta["samples"] > 0 and md["ids_sha256"].value == meta["ids_sha256"]
    assert (layout.mixtures / "stage3.scores.parquet").is_file() and "scores_table" in md
    report_md = result.asset_materializations_for_node("dataset_report")[0].metadata
    assert report_md["chart_modality"].value.startswith("![Modality](data:image/png;base64,iVBORw0KGgo")
    assert "| Task Type |" in report_md["table3"].value
    assert (layout.release / "README.md").is_file() and sorted(
        p.name for p in (layout.release / "report").glob("*.png")
    )
    assert {p.name for p in (layout.release / "annotations").glob("*.jsonl")} == {
        "GMAI-MM-Caption-en.jsonl",
        "GMAI-MM-Percept-en.jsonl",
        "GMAI-MM-Instruct-en.jsonl",
        "GMAI-MM-Chinese-zh.jsonl",
    }
    check = result.get_asset_check_evaluations()
    assert check and all(c.passed for c in check)
