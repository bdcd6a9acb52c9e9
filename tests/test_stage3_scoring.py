"""Stage III as the paper: the stage II model scores the candidates, the mix drops the least confident by rule.

End to end on CPU: a tiny model overfit on most VQA samples, planted samples whose answers are random
tokens, the stage3_scores asset (training_jobs.score through the GPU-cluster resource's local backend) and
stage3_mix, which must drop exactly the planted samples and keep every decision in a Parquet table.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml
from release_fixtures import SOURCES, row, write_generated, write_image

from gmai_pipeline.defs.release import build_mix_asset, release_records
from gmai_pipeline.defs.training import LocalGpuCluster, stage3_scores
from gmai_pipeline.release.mixtures import (
    ModelConfidence,
    StaleScoresError,
    build_mixture,
    judge,
    load_mixtures,
    provenance_path,
    read_scores,
)
from gmai_pipeline.release.records import load_records
from gmai_pipeline.storage import OutputLayout
from training_jobs import train
from training_jobs.tiny import build_tiny

GOOD_ANSWER = "The optic disc is pale with a large cup, as seen in glaucoma."


def _scores(confidences: dict[str, float | None]) -> dict[str, dict]:
    return {
        k: {"id": k, "status": "scored", "confidence": c, "mean_loss": 0.0, "answer_tokens": 5}
        if c is not None
        else {"id": k, "status": "image_missing"}
        for k, c in confidences.items()
    }


def test_rule_drops_below_threshold_and_the_lowest_fraction_exactly():
    records = [{"id": k, "kind": "vqa", "language": "en"} for k in "abcdefghij"]
    conf = {
        "a": 0.9,
        "b": 0.1,
        "c": 0.3,
        "d": 0.3,
        "e": 0.8,
        "f": 0.7,
        "g": 0.05,
        "h": 0.6,
        "i": None,
        "j": 0.5,
    }
    scores = _scores(conf)
    kept, dropped, table = judge("stage3", "vqa", ModelConfidence(min=0.3), records, scores)
    assert {r["id"] for r in records} - {r["id"] for r in kept} == {"b", "g"}  # 0.3 itself is kept
    assert dropped == Counter(model_confidence_below_min=2, unscored_kept=1)
    # 9 scored: floor(0.34 x 9) = 3 least confident (g, b, then the tie c/d broken by id: c)
    kept, dropped, table = judge("stage3", "vqa", ModelConfidence(drop_lowest_fraction=0.34), records, scores)
    assert {r["id"] for r in records} - {r["id"] for r in kept} == {"g", "b", "c"}
    by_id = {t["id"]: t for t in table}
    assert by_id["g"]["rank"] == 1 and by_id["c"]["rank"] == 3 and by_id["d"]["rank"] == 4
    assert by_id["i"]["kept"] and by_id["i"]["status"] == "image_missing" and by_id["i"]["rank"] is None
    assert by_id["c"]["drop_reason"] == "model_confidence_lowest_fraction"
    with pytest.raises(StaleScoresError, match="rematerialize stage3_scores"):
        judge("stage3", "vqa", ModelConfidence(min=0.3), [*records, {"id": "new"}], scores)
    with pytest.raises(ValueError, match="min and/or drop_lowest_fraction"):
        ModelConfidence()


def _release(layout: OutputLayout, n_good: int, n_planted: int) -> tuple[set[str], set[str]]:
    """VQA rows: n_good with one answer the model will learn, n_planted with random-token answers."""
    rng = random.Random(7)
    letters = "bcdfghjklmnpqrstvwxz"
    src = SOURCES[0]
    rows, planted = [], set()
    for i in range(n_good + n_planted):
        image, md5 = write_image(layout, src, i, (24, 24))
        if i < n_good:
            answer = GOOD_ANSWER
        else:
            answer = " ".join("".join(rng.choices(letters, k=rng.randint(3, 8))) for _ in range(12))
        r = row(src, image, md5, (24, 24), "vqa", "en", "What does the optic disc show?", answer)
        rows.append(r)
        if i >= n_good:
            planted.add(r["id"])
    write_generated(layout, rows)
    return {r["id"] for r in rows} - planted, planted


def _overfit_stage2_export(layout: OutputLayout, good: set[str], tmp: Path) -> Path:
    """Stand-in for the stage II model: the tiny model trained until it is confident on the good answers."""
    loaded = load_records(layout)
    records = [r.record for r in loaded.rows]
    data = tmp / "good.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records if r["id"] in good))
    texts = [t["value"].replace("<image>", "") for r in records for t in r["conversations"]]
    tiny = build_tiny(tmp / "tiny", texts, image_size=112)
    out = layout.training / "stage2"
    opts = ["--lr", "1e-2", "--epochs", "12", "--warmup-ratio", "0", "--max-length", "512"]
    train.main(
        ["--stage", "3", "--data", str(data), "--image-root", str(layout.images), "--output", str(out)]
        + ["--model-config", str(tiny), "--peak-flops", "1e10", *opts]
    )
    return out / "export"


def _mixtures_yaml(path: Path, dialogue: Path, rule: dict) -> Path:
    captions = {"captions": {"kinds": ["caption"]}}
    instruct = {"kinds": ["vqa"], "filter": {"model_confidence": rule}}
    stage3 = {"instruct": instruct, "text_dialogue": {"text_files": [str(dialogue)]}}
    stages = {"stage1": captions, "stage2": captions, "stage3": stage3}
    path.write_text(yaml.safe_dump({"stages": {k: {"components": v} for k, v in stages.items()}}))
    return path


@pytest.mark.slow
def test_scoring_pass_drops_exactly_the_planted_low_confidence_samples(
    output_root, storage, tmp_path, monkeypatch
):
    layout = OutputLayout(output_root)
    good, planted = _release(layout, n_good=6, n_planted=2)
    _overfit_stage2_export(layout, good, tmp_path)
    dialogue = tmp_path / "dialogue.json"
    dialogue.write_text(
        json.dumps(
            [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}]
        )
    )
    mixtures = _mixtures_yaml(tmp_path / "mixtures.yaml", dialogue, {"drop_lowest_fraction": 0.25})  # 2 of 8
    monkeypatch.setenv("GMAI_MIXTURES_FILE", str(mixtures))
    result = dg.materialize(
        [release_records, stage3_scores, build_mix_asset("stage3")],
        resources={"gpu_cluster": LocalGpuCluster(), "storage": storage},
    )
    assert result.success
    score_md = result.asset_materializations_for_node("stage3_scores")[0].metadata
    assert score_md["scored"].value == 8 and score_md["candidates"].value == 8

    mix = [json.loads(x) for x in (layout.mixtures / "stage3.jsonl").read_text().splitlines()]
    assert {r["id"] for r in mix if r["kind"] == "vqa"} == good  # exactly the planted ones dropped
    assert sum(r["kind"] == "text_dialogue" for r in mix) == 1
    table = pq.read_table(layout.mixtures / "stage3.scores.parquet").to_pylist()
    assert len(table) == 8 and {t["id"] for t in table if not t["kept"]} == planted
    assert {t["rank"] for t in table if t["id"] in planted} == {1, 2}  # the least confident, by the model
    assert all(t["drop_reason"] == "model_confidence_lowest_fraction" for t in table if not t["kept"])
    meta = json.loads(provenance_path(layout.mixtures, "stage3").read_text())
    assert meta["components"]["instruct"]["dropped"] == {"model_confidence_lowest_fraction": 2}

    # The same scores under a threshold between the two groups: again exactly the planted samples.
    scores = read_scores(layout.training / "stage3_scores" / "scores.jsonl")
    low = max(scores[i]["confidence"] for i in planted)
    high = min(scores[i]["confidence"] for i in good)
    assert low < high
    config, path = load_mixtures(_mixtures_yaml(tmp_path / "m2.yaml", dialogue, {"min": (low + high) / 2}))
    again = build_mixture("stage3", load_records(layout).rows, config, path, scores=scores)
    assert {r["id"] for r in again.records if r["kind"] == "vqa"} == good
