"""Inference and evaluation end to end: tiny trained models on benchmark files in their real formats.

- batched generation decodes every question exactly as it would alone (left padding, KV cache);
- the ablation job on the demo benchmarks: stages 1, 1+2, 1+3, 1+2+3 trained from one tiny base through the
  GPU-cluster resource (local backend, Pipes), each evaluated, one prediction per question, VLMEvalKit's
  result files, the score tables, and the Table 7 comparison with all four rows;
- an external corpus in the mix: its benchmark copies are removed before training, a mixture without our
  own records ("w/o our data") trains and is evaluated.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from PIL import Image
from training_fixtures import write_mixture

from gmai_pipeline.defs import decontam, evaluation, external, release, training
from gmai_pipeline.demo import ensure_demo_benchmarks
from gmai_pipeline.demo.benchmarks import FUNDUS_EXACT, OMNI_DATASET
from gmai_pipeline.evaluation.report import ABLATION_ROWS
from gmai_pipeline.evaluation.run import read_predictions
from gmai_pipeline.storage import OutputLayout
from training_jobs.data import iter_texts
from training_jobs.infer import Generator
from training_jobs.infer import main as infer_main
from training_jobs.tiny import build_tiny

FAST = {"max_length": 512, "micro_batch": 1, "grad_accum": 2, "max_samples": 6}


def _image(path: Path, seed: int, size=(48, 40)) -> Path:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        path
    )
    return path


def test_batched_generation_equals_one_question_at_a_time(tmp_path: Path, capsys):
    model = build_tiny(
        tmp_path / "m", ["What is shown in this image? A CT of the liver."] * 20, image_size=112
    )
    gen = Generator(model, "cpu")
    a, b = _image(tmp_path / "a.png", 1), _image(tmp_path / "b.png", 2, (30, 60))
    prompts = ["<image>\nWhat is shown?", "Describe the organ without an image, please, in detail.",
               "<image>\nCompare with <image> and answer."]  # fmt: skip
    images = [[a], [], [b, a]]
    batched = gen.generate(prompts, images, max_new_tokens=12)
    alone = [gen.generate([p], [i], max_new_tokens=12)[0] for p, i in zip(prompts, images, strict=True)]
    assert batched == alone and all(isinstance(x, str) for x in batched)
    with pytest.raises(ValueError, match="1 <image> for 2 images"):
        gen.generate(["<image> one"], [[a, b]])
    answer = infer_main(["--model", str(model), "--image", str(a), "--question", "What is shown?",
                         "--max-new-tokens", "5", "--device", "cpu"])  # fmt: skip
    assert capsys.readouterr().out.splitlines()[0] == answer


def _assets(*keys: str) -> list[dg.AssetsDefinition]:
    defs = dg.Definitions.merge(
        training.build_defs([]), evaluation.build_defs([]), external.build_defs([]), release.build_defs([]),
        dg.Definitions(assets=[decontam.benchmark_hashes]),
    )  # fmt: skip
    by_key = {a.key.to_user_string(): a for a in defs.assets}
    return [by_key[k] for k in keys]


def _meta(result: dg.ExecuteInProcessResult, key: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    return event.materialization.metadata


@pytest.mark.slow
def test_ablation_job_on_the_demo_benchmarks(output_root: Path, storage):
    mixtures = OutputLayout(output_root).mixtures
    for stage in (1, 2, 3):
        write_mixture(mixtures, stage=stage, n=8, text_only=1, seed=stage)
    base = build_tiny(output_root / "tiny", iter_texts(mixtures / "stage1.jsonl"), image_size=112)
    cluster = training.LocalGpuCluster(base_model=str(base), **FAST)
    keys = ["gmai_vl_stage1", "gmai_vl_stage2", "gmai_vl_stage3", "gmai_vl_stage1_3", "benchmark_questions",
            "eval_stage1", "eval_stage2", "eval_stage3", "eval_stage1_3", "stage_ablation"]  # fmt: skip
    smoke = {"config": {"limit": 2}}  # stage 1 answers everything; the others two questions per dataset
    run_config = {"ops": {k: smoke for k in ("eval_stage2", "eval_stage3", "eval_stage1_3")}}
    result = dg.materialize(
        _assets(*keys), resources={"gpu_cluster": cluster, "storage": storage}, run_config=run_config
    )
    assert result.success

    questions = evaluation.questions_dir(storage)
    index = json.loads((questions / "index.json").read_text())["datasets"]
    assert len(index) == 7  # every demo benchmark, in its real format
    preds = evaluation.evaluation_dir(storage) / "GMAI-VL-stage1" / "predictions"
    for name, info in index.items():
        got = read_predictions(preds, name)
        asked = [json.loads(line)["index"] for line in (questions / f"{name}.jsonl").read_text().splitlines()]
        assert sorted(got) == sorted(asked) and len(asked) == info["questions"], name  # one prediction each
        assert (
            evaluation.vlmevalkit_dir(storage) / "GMAI-VL-stage1" / f"GMAI-VL-stage1_{name}.xlsx"
        ).is_file()
    meta = _meta(result, "eval_stage1")
    table = meta["scores"].value
    assert {r.data["dataset"] for r in table.records} == set(index)
    assert all(0 <= r.data["score"] <= 100 for r in table.records)
    assert meta["questions"].value == sum(d["questions"] for d in index.values())
    assert meta["questions_per_s"].value > 0  # reported back through Pipes by training_jobs.evaluate
    assert "data:image/png;base64," in meta["scores_chart"].value
    for t in ("table4", "table5", "table6", "table8"):
        assert "(paper)" in meta[t].value, t

    ablation = _meta(result, "stage_ablation")
    rows = {r.data["model"]: r.data for r in ablation["table7_table"].value.records}
    assert list(rows) == list(ABLATION_ROWS)
    for name, row in rows.items():
        assert row["OmniMedVQA (paper)"] > 80 and row["MMMU_val (ours)"] is not None, name
        assert 0 <= row["GMAI_MMBench_val (ours)"] <= 100
        assert row["GMAI_MMBench_test (ours)"] is None  # the demo has no TEST split: no score, not a zero
    assert (output_root / "training" / "stage1_3" / "export" / "llm").is_dir()  # 1+3 trained from stage 1
    init = json.loads((output_root / "training" / "stage1_3" / "metrics.json").read_text())
    assert init["stage"] == 3


@pytest.mark.slow
def test_external_corpus_is_decontaminated_then_trained_and_evaluated(
    output_root: Path, storage, monkeypatch
):
    bench = ensure_demo_benchmarks(output_root / "demo_benchmarks")
    corpus = output_root.parent / "corpus"
    exact = (
        bench / "OmniMedVQA" / "Images" / OMNI_DATASET / "dermo_0001.png"
    )  # a benchmark image, byte for byte
    (corpus / "images").mkdir(parents=True)
    (corpus / "images" / "copy.png").write_bytes(exact.read_bytes())
    from gmai_pipeline.demo.images2d import fundus_files

    fundus = Image.open(io.BytesIO(fundus_files()[FUNDUS_EXACT])).convert("RGB")  # GMAI-MMBench_VAL item 1
    fundus.save(
        corpus / "images" / "reencoded.jpg", quality=60
    )  # re-encoded: only the perceptual hash sees it
    for i in range(3):
        _image(corpus / "images" / f"own_{i}.png", 100 + i)

    def rec(i, image, text):
        return {"id": f"r{i}", **({"image": image} if image else {}),
                "conversations": [{"from": "human", "value": "Describe the image." if image else "What is a CT?"},
                                  {"from": "gpt", "value": text}]}  # fmt: skip

    records = [rec(0, "copy.png", "A pigmented lesion."), rec(1, "reencoded.jpg", "A fundus photograph."),
               *(rec(2 + i, f"own_{i}.png", f"A synthetic scan number {i} of the abdomen.") for i in range(3)),
               rec(5, None, "Computed tomography uses X-rays to image the body in slices."),
               rec(6, "missing.png", "No such file.")]  # fmt: skip
    (corpus / "llava.json").write_text(json.dumps(records))  # LLaVA's form: one JSON array
    mix_file = output_root.parent / "mixtures.yaml"
    mix_file.write_text(
        "corpora:\n  ext: {annotations: corpus/llava.json, image_folder: corpus/images}\n"
        "stages:\n"
        + "".join(
            f"  stage{n}:\n    components:\n      ext: {{corpus: ext, sample_ratio: 1.0}}\n"
            for n in (1, 2, 3)
        )
    )  # a mixture without our data ("w/o our data")
    monkeypatch.setenv("GMAI_MIXTURES_FILE", str(mix_file))
    base = build_tiny(
        output_root / "tiny", ["Describe the image. A synthetic scan of the abdomen."] * 30, image_size=112
    )
    cluster = training.LocalGpuCluster(base_model=str(base), **FAST)
    keys = [
        "benchmark_hashes",
        "external_corpora",
        "stage1_mix",
        "gmai_vl_stage1",
        "benchmark_questions",
        "eval_stage1",
    ]
    result = dg.materialize(_assets(*keys), resources={"gpu_cluster": cluster, "storage": storage})
    assert result.success
    (check,) = [
        c for c in result.get_asset_check_evaluations() if c.asset_key.to_user_string() == "external_corpora"
    ]
    assert check.passed

    out = output_root / "external"
    removed = pq.read_table(out / "ext.removed.parquet").to_pandas().set_index("id")
    assert dict(removed["method"]) == {"ext#r0": "md5", "ext#r1": "dhash"}
    assert removed.loc["ext#r0", "benchmark"] == "OmniMedVQA" and removed.loc["ext#r1", "item_id"] == "1"
    rejected = pq.read_table(out / "ext.rejected.parquet").to_pylist()
    assert len(rejected) == 1 and "missing.png" in rejected[0]["detail"]
    mixed = [
        json.loads(line)
        for line in (OutputLayout(output_root).mixtures / "stage1.jsonl").read_text().splitlines()
    ]
    assert sorted(r["id"] for r in mixed) == ["ext#r2", "ext#r3", "ext#r4", "ext#r5"]
    trained = _meta(result, "gmai_vl_stage1")
    assert trained["samples"].value == 4 and trained["mixture_samples"].value == 4
    scores = _meta(result, "eval_stage1")["scores"].value.records
    assert len(scores) == 7 and not any(
        math.isnan(r.data["score"]) for r in scores if r.data["score"] is not None
    )


def test_evaluation_assets_jobs_and_what_automation_leaves_alone():
    from gmai_pipeline.definitions import defs as load_defs
    from gmai_pipeline.defs.evaluation import gpu_selection

    defs = load_defs()

    def job(name: str) -> set[str]:
        return {k.to_user_string() for k in defs.resolve_job_def(name).asset_layer.selected_asset_keys}

    graph = defs.resolve_asset_graph()
    for n in (1, 2, 3):
        node = graph.get(dg.AssetKey(f"eval_stage{n}"))
        assert {k.to_user_string() for k in node.parent_keys} == {f"gmai_vl_stage{n}", "benchmark_questions"}
        assert node.pools == {"gpu"}
    s13 = graph.get(dg.AssetKey("gmai_vl_stage1_3"))
    assert {k.to_user_string() for k in s13.parent_keys} == {"stage3_mix", "gmai_vl_stage1"}
    assert {"eval_stage1", "eval_stage2", "eval_stage3", "benchmark_questions"} <= job("demo_job")
    assert not {"gmai_vl_stage1_3", "eval_stage1_3", "stage_ablation"} & job("demo_job")
    assert job("evaluate_job") == {"benchmark_questions", "eval_stage1", "eval_stage2", "eval_stage3"}
    assert {"gmai_vl_stage1_3", "eval_stage1_3", "stage_ablation", "gmai_vl_stage3"} <= job("ablation_job")
    assert "external_corpora" in {
        k.to_user_string() for k in graph.get(dg.AssetKey("stage3_mix")).parent_keys
    }
    # what the raw-data sensor leaves to a person: training and everything needing a trained model
    left_alone = {k.to_user_string() for k in gpu_selection().resolve(graph)}
    # stage3_scores and stage3_mix need the stage II model (its confidence judges stage III's candidates)
    assert left_alone == {"gmai_vl_stage1", "gmai_vl_stage2", "stage3_scores", "stage3_mix", "gmai_vl_stage3",
                          "gmai_vl_stage1_3", "eval_stage1", "eval_stage2", "eval_stage3", "eval_stage1_3",
                          "stage_ablation"}  # fmt: skip
