"""Training code on CPU: chat labels, packing, packed-vs-single equivalence, stage freezing, exact resume,
overfitting. The training runs go through the real DeepSpeed ZeRO-2 engine (gloo) in this process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import write_mixture

from training_jobs import train
from training_jobs.chat import IGNORE_INDEX, IMAGE_TOKEN_INDEX, tokenize_conversation
from training_jobs.data import Dataset, iter_texts, load_image
from training_jobs.model import load_model
from training_jobs.packing import collate, fill_ratio, pack_ffd, plan_epoch
from training_jobs.tiny import build_tiny

MAXLEN = 512  # two or three tiny samples (64 image tokens at 112 px + text) per row


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    return write_mixture(tmp_path_factory.mktemp("mix"), stage=1, n=10, text_only=2)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, mix) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model", iter_texts(mix), seed=0, image_size=112)


def _run(mix: Path, out: Path, stage: int, init_from: Path | str, *extra: str) -> dict:
    init = ["--init-from", str(init_from)] if stage > 1 else ["--model-config", str(init_from)]
    common = ["--image-root", str(mix.parent / "images"), "--max-length", str(MAXLEN), "--peak-flops", "1e10"]
    args = ["--stage", str(stage), "--data", str(mix), "--output", str(out), "--grad-accum", "2", *common]
    return train.main([*args, *init, *extra])


def _weights(export: Path) -> dict[str, torch.Tensor]:
    out = {}
    for part in ("vision", "llm"):
        out.update({f"{part}.{k}": v for k, v in load_file(str(export / part / "model.safetensors")).items()})
    out.update({f"projector.{k}": v for k, v in load_file(str(export / "projector.safetensors")).items()})
    return out


def test_labels_only_on_answers_and_image_tokens_expanded(tiny_dir):
    _, tok = load_model(tiny_dir)
    convs = [
        {"from": "human", "value": "<image>\nWhat is shown?"},
        {"from": "gpt", "value": "A liver CT."},
        {"from": "human", "value": "Any lesion?"},
        {"from": "gpt", "value": "No."},
    ]
    ids, labels = tokenize_conversation(tok, convs, "internlm2", num_image_tokens=9)
    assert ids.count(IMAGE_TOKEN_INDEX) == 9 and len(ids) == len(labels)
    supervised = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX])
    assert supervised == "A liver CT.<|im_end|>\nNo.<|im_end|>\n"
    assert all(lab == IGNORE_INDEX for t, lab in zip(ids, labels, strict=True) if t == IMAGE_TOKEN_INDEX)


def test_dataset_skips_with_reasons_and_preprocesses_images(tmp_path, tiny_dir, mix):
    model, tok = load_model(tiny_dir)
    bad = tmp_path / "bad.jsonl"
    recs = [json.loads(line) for line in mix.read_text().splitlines()][:2]
    recs[0]["image"] = "nope.png"
    recs.append(
        {
            "id": "orphan",
            "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "x"}],
        }
    )
    bad.write_text("".join(json.dumps(r) + "\n" for r in recs))
    ds = Dataset(
        bad,
        mix.parent / "images",
        tok,
        num_image_tokens=model.num_image_tokens,
        image_size=model.image_size,
        max_length=MAXLEN,
    )
    assert [s.id for s in ds.samples] == [recs[1]["id"]]
    assert {r["reason"] for r in ds.skipped} == {"image_missing", "placeholder_without_image"}
    longest = max(
        len(s)
        for s in Dataset(
            mix,
            mix.parent / "images",
            tok,
            num_image_tokens=model.num_image_tokens,
            image_size=model.image_size,
            max_length=10_000,
        ).samples
    )
    short = Dataset(
        mix,
        mix.parent / "images",
        tok,
        num_image_tokens=model.num_image_tokens,
        image_size=model.image_size,
        max_length=longest - 3,
    )  # cuts answer text: truncated
    assert short.truncated and all(len(s) <= longest - 3 for s in short.samples)
    assert (
        not Dataset(
            mix,
            mix.parent / "images",
            tok,
            num_image_tokens=model.num_image_tokens,
            image_size=model.image_size,
            max_length=100,
        )
        .samples[0]
        .image
    )  # image rows skipped
    px = load_image(ds.samples[0].image, 336)  # the real encoder's size
    assert px.shape == (3, 336, 336) and px.dtype == torch.float32 and -2.5 < float(px.mean()) < 2.5


def test_packing_ffd_deterministic_and_fills_rows_better_than_arrival_order():
    lengths = (576 + np.random.default_rng(0).integers(32, 801, 3000)).tolist()
    rows = plan_epoch(lengths, 2048, seed=7, epoch=0, window=1000)
    assert rows == plan_epoch(lengths, 2048, seed=7, epoch=0, window=1000)
    assert rows != plan_epoch(lengths, 2048, seed=7, epoch=1, window=1000)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))  # every sample once, never split
    assert all(sum(lengths[i] for i in r) <= 2048 for r in rows)
    ffd = fill_ratio(rows, lengths, 2048)
    arrival = fill_ratio(plan_epoch(lengths, 2048, 7, 0, 1000, method="arrival"), lengths, 2048)
    assert ffd > 0.97 and arrival < 0.8, (ffd, arrival)
    assert pack_ffd([5000, 10], 2048) == [
        [0],
        [1],
    ]  # an over-long item (never produced by Dataset) stands alone


def test_packed_row_equals_samples_one_by_one(tiny_dir, mix):
    model, tok = load_model(tiny_dir)
    model.eval()
    ds = Dataset(
        mix,
        mix.parent / "images",
        tok,
        num_image_tokens=model.num_image_tokens,
        image_size=model.image_size,
        max_length=MAXLEN,
    )
    samples = [ds.samples[0], ds.samples[-1], ds.samples[1]]  # image, text-only, image
    assert samples[1].image is None
    with torch.no_grad():
        singles = [
            model(**_inputs(collate([[s]], tok.pad_token_id, ds.pixels)), return_logits=True) for s in samples
        ]
        packed_batch = collate([samples[:2], samples[2:]], tok.pad_token_id, ds.pixels)  # 2 rows, 2nd padded
        packed = model(**_inputs(packed_batch), return_logits=True)
    off = 0
    for s, single in zip(samples[:2], singles[:2], strict=True):
        n = len(s)
        torch.testing.assert_close(
            packed["logits"][0, off : off + n], single["logits"][0], atol=1e-5, rtol=1e-5
        )
        off += n
    n = len(samples[2])
    torch.testing.assert_close(packed["logits"][1, :n], singles[2]["logits"][0], atol=1e-5, rtol=1e-5)
    total = sum(float(o["loss"]) * int(o["n_tokens"]) for o in singles)
    assert int(packed["n_tokens"]) == sum(int(o["n_tokens"]) for o in singles)
    assert float(packed["loss"]) == pytest.approx(total / int(packed["n_tokens"]), abs=1e-5)
    # sqrt weighting (InternVL): each sample weighs by its supervised-token count^-1/2
    with torch.no_grad():
        sq = model(
            **_inputs(collate([samples[:2], samples[2:]], tok.pad_token_id, ds.pixels, sqrt_weights=True))
        )
    w = [int(o["n_tokens"]) ** -0.5 for o in singles]
    expect = sum(wi * float(o["loss"]) * int(o["n_tokens"]) for wi, o in zip(w, singles, strict=True))
    assert float(sq["loss"]) == pytest.approx(
        expect / sum(wi * int(o["n_tokens"]) for wi, o in zip(w, singles, strict=True)), abs=1e-5
    )


def _inputs(batch: dict) -> dict:
    keys = ("input_ids", "position_ids", "labels", "pixel_values", "loss_weights")
    return {k: batch[k] for k in keys}


def test_stage1_trains_only_projector_stage2_leaves_llm(tmp_path, tiny_dir, mix):
    s1 = _run(mix, tmp_path / "s1", 1, tiny_dir, "--lr", "1e-2")
    e1 = _weights(Path(s1["export"]))
    model, _ = load_model(tiny_dir)
    start = {f"vision.{k}": v for k, v in model.vision.state_dict().items()}
    start |= {f"llm.{k}": v for k, v in model.llm.state_dict().items()}
    changed = {k for k, v in start.items() if not torch.equal(v, e1[k])}
    assert not changed, f"stage I changed frozen weights: {sorted(changed)[:5]}"
    assert s1["steps"] >= 2 and s1["mfu"] > 0 and s1["tokens_per_s_per_gpu"] > 0
    s2 = _run(mix, tmp_path / "s2", 2, Path(s1["export"]), "--lr", "1e-2")
    e2 = _weights(Path(s2["export"]))
    assert all(torch.equal(e1[k], e2[k]) for k in e1 if k.startswith("llm."))
    assert any(not torch.equal(e1[k], e2[k]) for k in e1 if k.startswith("vision."))
    assert any(not torch.equal(e1[k], e2[k]) for k in e1 if k.startswith("projector."))


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, tiny_dir, mix):
    opts = ("--lr", "1e-3", "--epochs", "2", "--grad-accum", "1", "--max-samples", "6")
    full = _run(mix, tmp_path / "full", 3, tiny_dir, *opts)
    part = _run(mix, tmp_path / "part", 3, tiny_dir, *opts, "--stop-after-steps", "3")
    assert part["stopped_early"] and part["steps"] == 3 and part["export"] is None
    resumed = _run(mix, tmp_path / "part", 3, tiny_dir, *opts, "--resume")
    assert full["steps"] == resumed["steps"] > 3
    assert full["history"][2]["epoch"] == full["history"][3]["epoch"] == 1  # stopped inside the second epoch
    full_losses = [r["loss"] for r in full["history"]]
    assert [r["loss"] for r in resumed["history"]] == pytest.approx(full_losses, abs=1e-6)
    assert [r["lr"] for r in resumed["history"]] == pytest.approx([r["lr"] for r in full["history"]])
    a, b = _weights(Path(full["export"])), _weights(Path(resumed["export"]))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_tiny_model_overfits_a_few_samples(tmp_path, tiny_dir, mix):
    opts = (
        "--lr",
        "1e-2",
        "--epochs",
        "16",
        "--max-samples",
        "2",
        "--grad-accum",
        "1",
        "--warmup-ratio",
        "0",
    )
    res = _run(mix, tmp_path / "o", 3, tiny_dir, *opts)
    losses = [r["loss"] for r in res["history"]]
    assert len(losses) == 16 and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_train_step_bench_smoke_on_cpu(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_train_step", Path(__file__).parent.parent / "bench" / "train_step.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(
        [
            "--device",
            "cpu",
            "--llm-shape",
            "tiny",
            "--stage",
            "3",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    doc = json.loads(out.read_text())
    res = doc["results"]
    for mode in ("padded", "packed", "bound"):
        assert res[f"tiny/stage3/{mode}"]["real_tokens_per_s"] > 0 and res[f"tiny/stage3/{mode}"]["mfu"] > 0
    assert res["tiny/stage3/padded"]["waste"] > 0  # padding to the longest sample wastes slots
    assert "packed_over_bound" in res["tiny/stage3/summary"] and doc["peak_source"].startswith("measured")


def test_unpacked_plan_is_one_sample_per_row_grouped_by_length():
    lengths = [int(x) for x in np.random.default_rng(1).integers(20, 400, 37)]
    rows = plan_epoch(lengths, 512, seed=3, epoch=0, method="single", group=4)
    assert sorted(i for r in rows for i in r) == list(range(37)) and all(len(r) == 1 for r in rows)
    assert rows == plan_epoch(lengths, 512, seed=3, epoch=0, method="single", group=4)
    blocks = [[lengths[r[0]] for r in rows[k : k + 4]] for k in range(0, 36, 4)]
    padding = sum(max(b) * len(b) - sum(b) for b in blocks)
    shuffled = [lengths[i] for i in np.random.default_rng(0).permutation(37)][:36]  # no grouping
    assert padding < sum(max(shuffled[k : k + 4]) * 4 - sum(shuffled[k : k + 4]) for k in range(0, 36, 4)) / 2


def test_scoring_pass_packed_equals_sample_by_sample(tmp_path, tiny_dir, mix):
    from training_jobs import score

    def run(*extra):
        out = tmp_path / f"s{len(extra)}"
        score.main(
            ["--model", str(tiny_dir), "--data", str(mix), "--image-root", str(mix.parent / "images")]
            + ["--output", str(out), "--max-length", str(MAXLEN), "--micro-batch", "2", *extra]
        )
        return {r["id"]: r for r in map(json.loads, (out / "scores.jsonl").read_text().splitlines())}

    packed, single = run(), run("--no-packing")
    assert len(packed) == 10 and packed.keys() == single.keys()
    for k, r in packed.items():
        assert r["status"] == "scored" and r["answer_tokens"] == single[k]["answer_tokens"] > 0
        assert r["mean_loss"] == pytest.approx(single[k]["mean_loss"], abs=1e-5)
        assert r["confidence"] == pytest.approx(np.exp(-r["mean_loss"]))


def test_probe_catches_attention_that_ignores_restarting_positions(tiny_dir):
    from training_jobs.model import packing_isolation_problem

    model, _ = load_model(tiny_dir)
    assert packing_isolation_problem(model, torch.device("cpu")) is None
    own = model.trunk.forward  # a transformers class whose forward builds a plain causal mask over the row

    def leaky(*args, inputs_embeds, **kwargs):
        kwargs["attention_mask"] = torch.ones(inputs_embeds.shape[:2], dtype=torch.long)
        return own(*args, inputs_embeds=inputs_embeds, **kwargs)

    model.trunk.forward = leaky
    problem = packing_isolation_problem(model, torch.device("cpu"))
    assert problem and "lets packed samples attend to each other" in problem


@pytest.fixture
def leaky_dir(tmp_path, tiny_dir, monkeypatch):
    import transformers.dynamic_module_utils as dynamic
    from training_fixtures import write_leaky_model

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))  # remote code lands here
    return write_leaky_model(tiny_dir, tmp_path / "leaky")


def test_remote_code_llm_is_refused_for_packing_and_trains_unpacked(tmp_path, leaky_dir, mix):
    opts = ("--trust-remote-code", "--max-samples", "4", "--grad-accum", "1")
    with pytest.raises(SystemExit, match="refusing to pack: LeakyForCausalLM .* is remote modelling code"):
        _run(mix, tmp_path / "packed", 3, leaky_dir, *opts)
    res = _run(mix, tmp_path / "single", 3, leaky_dir, *opts, "--no-packing")
    assert res["steps"] == 8 and not res["packing"] and res["samples_per_row"] == 1.0  # 4 samples x 2 epochs


def test_liger_without_a_gpu_is_refused_clearly(tmp_path, tiny_dir, mix):
    with pytest.raises(SystemExit, match="liger"):
        _run(mix, tmp_path / "liger", 1, tiny_dir, "--liger", "--max-samples", "2")


@pytest.mark.slow
def test_compiled_decoder_trains_like_the_eager_one_on_cpu(tmp_path, tiny_dir, mix):
    opts = ("--lr", "1e-3", "--max-samples", "6", "--grad-accum", "1")
    eager = _run(mix, tmp_path / "eager", 3, tiny_dir, *opts)
    compiled = _run(mix, tmp_path / "compiled", 3, tiny_dir, *opts, "--compile")
    assert compiled["kernels"] == "compile" and eager["kernels"] == "none"
    assert [r["loss"] for r in compiled["history"]] == pytest.approx(
        [r["loss"] for r in eager["history"]], abs=1e-4
    )
