"""Training mixtures: the stage-III filter drops exactly what it should; files in the training format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from release_fixtures import SOURCES, demo_rows, row, write_generated, write_image

from gmai_pipeline.release.mixtures import (
    answer_length,
    build_mixture,
    copies,
    load_mixtures,
    provenance_path,
    read_text_dialogue,
    write_mixture,
)
from gmai_pipeline.release.records import load_records
from gmai_pipeline.storage import OutputLayout


def config_file(tmp_path: Path, text_file: Path, stage3_extra: dict | None = None) -> Path:
    captions = {"kinds": ["caption", "region_caption"], "languages": ["en", "zh"]}
    stage3 = {
        "instruct": {
            "kinds": ["vqa"],
            "filter": {"min_answer_words": 3, "min_answer_chars": 4, "min_confidence": 0.5},
        },
        "captions": {**captions, "filter": {"min_answer_words": 5, "min_answer_chars": 6}},
        "text_dialogue": {"text_files": [str(text_file)]},
        **(stage3_extra or {}),
    }
    cfg = {
        "seed": "test",
        "stages": {
            "stage1": {"components": {"captions": captions}},
            "stage2": {"components": {"captions": captions}},
            "stage3": {"components": stage3},
        },
    }
    path = tmp_path / "mixtures.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def text_file(tmp_path: Path, extra_lines: list[str] = ()) -> Path:
    path = tmp_path / "dialogue.jsonl"
    lines = [
        json.dumps(
            {
                "conversations": [
                    {"from": "human", "value": "What is an MRI?"},
                    {"from": "gpt", "value": "A scan."},
                ]
            }
        ),
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "超声有辐射吗？"},
                    {"role": "assistant", "content": "没有电离辐射。"},
                ]
            },
            ensure_ascii=False,
        ),
        *extra_lines,
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_answer_length_is_cjk_aware() -> None:
    assert answer_length("The optic disc is pale.") == (5, "words")
    assert answer_length("视盘苍白") == (4, "chars")
    assert answer_length("这是CT图像") == (5, "chars")  # 4 CJK characters + 1 Latin word
    assert answer_length("CT, MR and X-Ray: 好") == (5, "words")  # mostly Latin


def test_stage3_filter_drops_exactly_the_crafted_samples(output_root: Path, tmp_path: Path) -> None:
    layout = OutputLayout(output_root)
    src = SOURCES[0]
    image, md5 = write_image(layout, src, 0, (16, 16))
    cases = {  # suffix -> (kind, language, answer, confidence, expected drop reason)
        "w3": ("vqa", "en", "It is glaucoma.", 0.9, None),  # exactly 3 words
        "w2": ("vqa", "en", "Glaucoma, yes", 0.9, "short_answer"),  # 2 words
        "c4": ("vqa", "zh", "青光眼征", 0.9, None),  # exactly 4 CJK characters
        "c3": ("vqa", "zh", "青光眼", 0.9, "short_answer"),
        "p50": ("vqa", "en", "It is glaucoma.", 0.5, None),  # confidence at the threshold
        "p49": ("vqa", "en", "It is glaucoma.", 0.49, "low_confidence"),
        "pnull": ("vqa", "en", "It is glaucoma.", None, None),  # no confidence: kept
        "cap5": ("caption", "en", "This image shows optic cupping.", None, None),  # 5 words
        "cap4": ("caption", "en", "This image shows cupping.", None, "short_answer"),
        "capzh": ("caption", "zh", "视盘凹陷扩大", None, None),  # 6 characters
        "capzh5": ("caption", "zh", "视盘凹陷大", None, "short_answer"),
        "capconf": (
            "caption",
            "en",
            "This image shows optic cupping.",
            0.1,
            None,
        ),  # captions: no confidence rule
    }
    rows = [
        row(src, image, md5, (16, 16), k, lang, "Q?", a, confidence=c, suffix=f"#{s}")
        for s, (k, lang, a, c, _) in cases.items()
    ]
    write_generated(layout, rows)
    loaded = load_records(layout)
    assert len(loaded.rows) == len(cases) and not loaded.rejected
    config, path = load_mixtures(config_file(tmp_path, text_file(tmp_path)))
    mix = build_mixture("stage3", loaded.rows, config, path)

    expected_kept = {
        r["id"] for r, (_, _, _, _, reason) in zip(rows, cases.values(), strict=True) if reason is None
    }
    mixed_images = {r["id"] for r in mix.records if "image" in r}
    assert mixed_images == expected_kept
    assert mix.components["instruct"]["dropped"] == {"low_confidence": 1, "short_answer": 2}
    assert mix.components["captions"]["dropped"] == {"short_answer": 2}
    assert mix.components["text_dialogue"]["samples"] == 2

    stage1 = build_mixture("stage1", loaded.rows, config, path)
    assert {r["id"] for r in stage1.records} == {
        r["id"] for r in rows if r["kind"] == "caption"
    }  # unfiltered


def test_mixture_files_are_the_training_format(output_root: Path, tmp_path: Path) -> None:
    layout = OutputLayout(output_root)
    rows = demo_rows(layout)
    write_generated(layout, rows)
    loaded = load_records(layout)
    config, path = load_mixtures(
        config_file(
            tmp_path,
            text_file(
                tmp_path,
                [
                    "not json",
                    json.dumps(
                        {
                            "conversations": [
                                {"from": "human", "value": "<image>\nWhat?"},
                                {"from": "gpt", "value": "x"},
                            ]
                        }
                    ),
                ],
            ),
        )
    )
    for stage in ("stage1", "stage2", "stage3"):
        mix = build_mixture(stage, loaded.rows, config, path)
        meta = write_mixture(mix, layout.mixtures, layout.images, path)
        lines = [
            json.loads(x)
            for x in (layout.mixtures / f"{stage}.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        ids = [r["id"] for r in lines]
        on_disk = json.loads(provenance_path(layout.mixtures, stage).read_text())
        assert on_disk == meta
        assert meta["image_root"] == str(layout.images.resolve()) and meta["samples"] == len(lines)
        assert meta["ids_sha256"] == hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
        for r in lines:
            if "image" in r:
                assert (layout.images / r["image"]).is_file() and not r["image"].startswith("images/")
                assert r["conversations"][0]["value"].startswith("<image>\n") and {"width", "height"} <= set(
                    r
                )
            else:
                assert r["kind"] == "text_dialogue" and all(
                    "<image>" not in t["value"] for t in r["conversations"]
                )
        if stage != "stage3":
            assert sorted(ids) == sorted(x["id"] for x in rows if x["kind"] != "vqa")
    assert {r["reason"] for r in mix.rejected} == {"bad_text_dialogue"} and len(mix.rejected) == 2
    zh = [r for r in mix.records if r["kind"] == "text_dialogue" and r["language"] == "zh"]
    assert zh and zh[0]["conversations"][0]["value"].startswith("Be brief.")


def test_sample_ratio_is_deterministic_and_repeats(output_root: Path, tmp_path: Path) -> None:
    assert [copies("x", 2.0, "s"), copies("x", 0.0, "s")] == [2, 0]
    n = sum(copies(f"id{i}", 0.5, "s") for i in range(2000))
    assert 900 < n < 1100 and n == sum(copies(f"id{i}", 0.5, "s") for i in range(2000))
    layout = OutputLayout(output_root)
    write_generated(layout, demo_rows(layout))
    loaded = load_records(layout)
    extra = {"vqa_twice": {"kinds": ["vqa"], "sample_ratio": 2.0}}
    config, path = load_mixtures(config_file(tmp_path, text_file(tmp_path), extra))
    mix = build_mixture("stage3", loaded.rows, config, path)
    assert mix.components["vqa_twice"]["samples"] == 2 * sum(r.record["kind"] == "vqa" for r in loaded.rows)


def test_default_config_and_demo_text_load() -> None:
    config, path = load_mixtures()
    assert set(config.stages) >= {"stage1", "stage2", "stage3"}
    files = [(path.parent / f) for c in config.stages["stage3"].components.values() for f in c.text_files]
    records, rejected = read_text_dialogue(files)
    assert len(records) >= 10 and not rejected
    assert {r["language"] for r in records} == {"en", "zh"}


def test_missing_text_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_text_dialogue([tmp_path / "nope.jsonl"])


def _lines(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_text_dialogue_formats_load(tmp_path: Path) -> None:
    """ShareGPT (from/value, JSON array), LLaVA JSONL, OpenAI messages with content parts, JSONL in a .json."""
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(
        json.dumps(
            [
                {
                    "id": "sg-1",
                    "conversations": [
                        {"from": "system", "value": "You are a radiologist."},
                        {"from": "human", "value": "What is a Hounsfield unit?"},
                        {"from": "gpt", "value": "A CT density unit: water is 0, air -1000."},
                        {"from": "user", "value": "And bone?"},
                        {"from": "assistant", "value": "Several hundred to over 1000."},
                    ],
                },
                {
                    "system": "Answer in Chinese.",
                    "conversations": [
                        {"from": "human", "value": "CT?"},
                        {"from": "gpt", "value": "计算机断层扫描。"},
                    ],
                },
            ],
            ensure_ascii=False,
            indent=2,
        ),
        encoding="utf-8",
    )
    openai = _lines(
        tmp_path / "openai.json",  # JSON Lines despite the suffix, as many exports are
        [
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "Is MRI "}, {"type": "text", "text": "loud?"}],
                    },
                    {"role": "assistant", "content": "Yes, the gradient coils knock."},
                ]
            }
        ],
    )
    records, rejected = read_text_dialogue([sharegpt, openai])
    assert not rejected and [len(r["conversations"]) for r in records] == [4, 2, 2]
    first = records[0]["conversations"]
    assert first[0] == {"from": "human", "value": "You are a radiologist.\n\nWhat is a Hounsfield unit?"}
    assert [t["from"] for t in first] == ["human", "gpt", "human", "gpt"] and records[0]["id"] == "sg-1"
    assert (
        records[1]["conversations"][0]["value"].startswith("Answer in Chinese.")
        and records[1]["language"] == "zh"
    )
    assert records[2]["conversations"][0]["value"] == "Is MRI loud?" and records[2]["dataset"] == "openai"
    assert all(r["kind"] == "text_dialogue" and "image" not in r for r in records)


def test_bad_text_dialogue_records_are_rejected_naming_file_and_line(tmp_path: Path) -> None:
    ok = {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}
    bad = {
        "role 'tool' is not one of": {
            "messages": [{"role": "user", "content": "Q?"}, {"role": "tool", "content": "{}"}]
        },
        "expected a gpt turn, found 'human'": {
            "conversations": [{"from": "human", "value": "Q?"}, {"from": "human", "value": "Q?"}]
        },
        "last turn is the user's": {"messages": [{"role": "user", "content": "Q?"}]},
        "must not name an image": {**ok, "image": "x.png"},
        "must not contain <image>": {
            "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]
        },
        "only text content parts": {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                {"role": "assistant", "content": "A."},
            ]
        },
        "empty or non-text": {
            "conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": "A."}]
        },
        "expected `conversations`": {"text": "Q? A."},
        "must be a JSON object": ["Q?", "A."],
        "id 'dup' already used at": {**ok, "id": "dup"},
    }
    path = tmp_path / "mixed.json"  # a JSON array, one record per few lines: errors name the record's line
    items = [{**ok, "id": "dup"}, *bad.values(), ok]
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in items) + "\n]\n")
    records, rejected = read_text_dialogue([path])
    assert len(records) == 2 and len(rejected) == len(bad)
    for (why, _), rej, line in zip(bad.items(), rejected, range(3, 3 + len(bad)), strict=True):
        assert (
            rej["id"] == f"{path}:{line}"
            and rej["detail"].startswith(f"{path}:{line}: ")
            and why in rej["detail"]
        )
    jsonl = tmp_path / "lines.jsonl"
    jsonl.write_text(json.dumps(ok) + "\n\n{not json\n" + json.dumps({**ok, "id": "x"}) + "\n")
    records, rejected = read_text_dialogue([jsonl])
    assert (
        len(records) == 2
        and [r["id"] for r in rejected] == [f"{jsonl}:3"]
        and "not valid JSON" in rejected[0]["detail"]
    )


def test_unreadable_or_empty_text_dialogue_files_fail_loudly(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"conversations": []},\n  {"conversations": [\n')
    with pytest.raises(ValueError, match=rf"{broken}:4: not valid JSON"):
        read_text_dialogue([broken])
    nothing = _lines(tmp_path / "nothing.jsonl", [{"messages": [{"role": "user", "content": "Q?"}]}])
    with pytest.raises(ValueError, match="holds no usable dialogue \\(1 records rejected\\)"):
        read_text_dialogue([nothing])
    prose = tmp_path / "prose.json"
    prose.write_text("just words\n")
    with pytest.raises(ValueError, match="neither a JSON array of records nor JSON Lines"):
        read_text_dialogue([prose])
