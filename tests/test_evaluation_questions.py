"""Question sets from every benchmark layout: evaluation splits only, VLMEvalKit's names, prompts and images."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from test_benchmark_layouts import make_lmudata

from gmai_pipeline.demo import ensure_demo_benchmarks
from gmai_pipeline.evaluation.questions import iter_questions, typed_frame, write_question_set


def _questions(qdir: Path, name: str) -> list[dict]:
    return list(iter_questions(qdir, name))


def test_demo_benchmarks_become_one_question_set_per_evaluation_split(tmp_path: Path):
    bench = ensure_demo_benchmarks(tmp_path / "bench")
    qs = write_question_set(bench, tmp_path / "q")
    assert not qs.empty and not qs.problems
    counts = {n: d["questions"] for n, d in qs.datasets.items()}
    # VQA-RAD: the 5 test_* questions of 6; SLAKE: English only (4 of 5); MMMU: dev + validation.
    assert counts == {"GMAI-MMBench_VAL": 9, "OmniMedVQA": 5, "VQA-RAD_TEST": 5, "SLAKE_TEST": 4, "PMC-VQA_TEST": 3,
                      "PathVQA_TEST": 3, "MMMU_DEV_VAL": 4}  # fmt: skip
    for name, info in qs.datasets.items():
        questions = _questions(tmp_path / "q", name)
        assert len(questions) == info["questions"] == len({q["index"] for q in questions}), name
        for q in questions:
            assert q["prompt"].count("<image>") == len(q["images"]) >= 1, (name, q)
            for path in q["images"]:
                Image.open(path).verify()
    omni = typed_frame(tmp_path / "q" / "OmniMedVQA.rows.tsv").set_index("index")
    # the original JSON's gt_answer is option text: the row carries its letter, as VLMEvalKit's TSV does
    assert (
        omni.loc["DemoSet_0002", "answer"] == "B"
        and omni.loc["DemoSet_0002", "category"] == "Disease Diagnosis"
    )
    pmc = _questions(tmp_path / "q", "PMC-VQA_TEST")[0]["prompt"]
    assert "A. CT\nB. MRI\nC. Ultrasound\nD. PET\n" in pmc  # "A:CT" choices read as their text
    # the short back-reference row of GMAI-MMBench shows the image of the row it names
    mm = {q["index"]: q for q in _questions(tmp_path / "q", "GMAI-MMBench_VAL")}
    assert mm["4"]["images"] == mm["5"]["images"]


def test_lmudata_folder_questions(tmp_path: Path):
    root = tmp_path / "LMUData"
    make_lmudata(root, moved_from=Path("/home/someone/LMUData"))
    qs = write_question_set(root, tmp_path / "q")
    assert set(qs.datasets) == {
        "GMAI-MMBench_VAL",
        "GMAI-MMBench_TEST",
        "OmniMedVQA",
        "PathVQA_VAL",
        "MMMU_DEV_VAL",
    }
    # the row with an empty image cell is skipped (VLMEvalKit's skip_noimg), not reported
    assert qs.datasets["GMAI-MMBench_VAL"]["questions"] == 3
    assert qs.datasets["GMAI-MMBench_VAL"]["skipped_no_image"] == 1
    # TEST parts from `_local.tsv` image_path (absolute paths of a moved LMUData, and relative ones) resolve
    test = _questions(tmp_path / "q", "GMAI-MMBench_TEST")
    assert [Path(q["images"][0]).name for q in test] == ["7.jpg", "8.jpg"]
    assert not qs.datasets["GMAI-MMBench_TEST"]["answered"]  # no answers in TEST: predictions only
    assert any("GMAI-MMBench_TEST: no answers" in p for p in qs.problems)
    # omnimedbench_part_1.tsv (VLMEvalKit's name) wins over the original JSON for the one OmniMedVQA dataset
    assert qs.datasets["OmniMedVQA"]["sources"] == [str(root / "omnimedbench_part_1.tsv")]
    mmmu = _questions(tmp_path / "q", "MMMU_DEV_VAL")[0]
    assert mmmu["prompt"].startswith("Question: <image> <image>?") and len(mmmu["images"]) == 2
    index = json.loads((tmp_path / "q" / "index.json").read_text())
    assert index["datasets"] == qs.datasets
