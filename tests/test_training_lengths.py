"""Token lengths computed once beside the mixture: training plans from them without tokenizing, and falls
back (saying so) when they were made for another tokenizer, template or file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_fixtures import write_mixture

import training_jobs.data as data_mod
from training_jobs import lengths as lengths_mod
from training_jobs import train
from training_jobs.data import Dataset, iter_texts
from training_jobs.lengths import lengths_path
from training_jobs.model import load_tokenizer_and_image_tokens
from training_jobs.tiny import build_tiny

MAXLEN = 160  # some samples truncated, some too long (64 image tokens at 112 px)


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    path = write_mixture(tmp_path_factory.mktemp("mix"), stage=1, n=14, text_only=3)
    lines = path.read_text().splitlines()
    bad = [
        {"id": "no-answer", "conversations": [{"from": "human", "value": "Hi?"}]},
        {"id": "gone", "image": "2d/cls/none.png", "conversations": json.loads(lines[0])["conversations"]},
        {"id": "two", "image": json.loads(lines[0])["image"], "conversations": [
            {"from": "human", "value": "<image><image>\nTwo?"}, {"from": "gpt", "value": "No."}]},
        {"id": "long", "conversations": [{"from": "human", "value": "Why? " * 200}, {"from": "gpt", "value": "So."}]},
    ]  # fmt: skip
    path.write_text("\n".join([*lines, *(json.dumps(r) for r in bad)]) + "\n")
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory, mix) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model", iter_texts(mix), seed=0, image_size=112)


def _dataset(mix: Path, model: Path, template: str = "internlm2", **kw) -> Dataset:
    tok, n_img = load_tokenizer_and_image_tokens(model)
    return Dataset(mix, mix.parent / "images", tok, template, n_img, 112, MAXLEN, **kw)


def test_lengths_give_the_same_samples_without_tokenizing(mix: Path, model: Path, monkeypatch) -> None:
    lengths_mod.main(["--data", str(mix), "--model", str(model), "--workers", "2"])
    assert lengths_path(mix).is_file()
    eager = _dataset(mix, model)
    assert eager.truncated and {s["reason"] for s in eager.skipped} >= {
        "no_answer",
        "image_missing",
        "too_long",
    }
    calls = []
    real = data_mod.tokenize_conversation
    monkeypatch.setattr(data_mod, "tokenize_conversation", lambda *a, **k: calls.append(1) or real(*a, **k))
    lazy = _dataset(mix, model, lengths=lengths_path(mix), log=pytest.fail)
    assert lazy.lengths_source == "precomputed" and not calls  # planned without tokenizing anything
    assert lazy.lengths == eager.lengths and lazy.fingerprint() == eager.fingerprint()
    assert lazy.skipped == eager.skipped and lazy.truncated == eager.truncated
    for i in range(len(eager)):
        a, b = lazy.sample(i), eager.sample(i)
        assert (a.id, a.input_ids, a.labels, a.image) == (b.id, b.input_ids, b.labels, b.image)
    assert len(calls) == len(eager)  # each sample tokenized once, when it was asked for


def test_other_template_or_changed_file_falls_back_loudly(mix: Path, model: Path, tmp_path: Path) -> None:
    lengths_mod.main(["--data", str(mix), "--model", str(model), "--template", "plain", "--workers", "1"])
    warnings: list[str] = []
    ds = _dataset(mix, model, lengths=lengths_path(mix), log=warnings.append)
    assert ds.lengths_source == "computed" and ds.lengths == _dataset(mix, model).lengths
    assert len(warnings) == 1 and "another tokenizer or template" in warnings[0] and "'plain'" in warnings[0]

    copy = tmp_path / "stage1.jsonl"
    copy.write_bytes(mix.read_bytes())
    lengths_mod.main(["--data", str(copy), "--model", str(model), "--workers", "1"])
    copy.write_text(copy.read_text().replace("Describe", "Explain"))  # the mixture was rewritten since
    warnings.clear()
    tok, n_img = load_tokenizer_and_image_tokens(model)
    ds = Dataset(copy, mix.parent / "images", tok, "internlm2", n_img, 112, MAXLEN,
                 lengths=lengths_path(copy), log=warnings.append)  # fmt: skip
    assert ds.lengths_source == "computed" and "another version" in warnings[0]


def test_training_reads_the_lengths_beside_the_mixture(mix: Path, model: Path, tmp_path: Path) -> None:
    lengths_mod.main(["--data", str(mix), "--model", str(model), "--workers", "1"])
    args = ["--stage", "1", "--data", str(mix), "--image-root", str(mix.parent / "images"), "--output",
            str(tmp_path / "out"), "--model-config", str(model), "--max-length", str(MAXLEN),
            "--peak-flops", "1e10", "--stop-after-steps", "1"]  # fmt: skip
    assert train.main(args)["token_lengths"] == "precomputed"


def test_the_mixture_asset_measures_lengths_with_the_profiles_tokenizer(
    output_root: Path, storage, model: Path, monkeypatch
) -> None:
    import dagster as dg
    from release_fixtures import demo_rows, write_generated

    from gmai_pipeline.defs.release import build_mix_asset, release_images, release_records
    from gmai_pipeline.storage import OutputLayout

    layout = OutputLayout(output_root)
    write_generated(layout, demo_rows(layout))
    monkeypatch.setenv("GMAI_PROFILE", "local")
    monkeypatch.setenv("GMAI_MODEL_DIR", str(model))
    result = dg.materialize(
        [release_records, release_images, build_mix_asset("stage1")], resources={"storage": storage}
    )
    assert result.success
    md = result.asset_materializations_for_node("stage1_mix")[0].metadata
    assert md["token_lengths"].value == f"computed with {model / 'tokenizer'}"
    data = layout.mixtures / "stage1.jsonl"
    tok, n_img = load_tokenizer_and_image_tokens(model)
    ds = Dataset(
        data, layout.release / "images", tok, "internlm2", n_img, 112, 2048, lengths=lengths_path(data)
    )
    assert ds.lengths_source == "precomputed" and len(ds) == len(data.read_text().splitlines())

    monkeypatch.setenv("GMAI_PROFILE", "demo")  # the tiny model is built by stage I: nothing to measure with
    result = dg.materialize(
        [release_records, release_images, build_mix_asset("stage1")], resources={"storage": storage}
    )
    md = result.asset_materializations_for_node("stage1_mix")[0].metadata
    assert md["token_lengths"].value.startswith("not computed") and not lengths_path(data).exists()
