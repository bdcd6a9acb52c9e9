"""Scoring on hand-written predictions whose verdicts are known, through the real files.

Benchmark files in their real formats -> question set -> predictions written by hand -> VLMEvalKit's result
files -> read back and scored. The multiple-choice verdicts are those of VLMEvalKit's exact-matching rules
(`vlmeval/utils/matching_util.py::can_infer`): a lone lower-case letter or an answer buried in the middle of
an explanation is "no answer" (option Z) there, so it is wrong here too.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gmai_pipeline.evaluation import matching
from gmai_pipeline.evaluation.questions import MCQ_SUFFIX, SHORT_SUFFIX, iter_questions, write_question_set
from gmai_pipeline.evaluation.run import score_stage

OPTIONS = ["Hard exudates", "Normal fundus", "Papilledema", "Retinal detachment"]
BURIED = ("Looking closely at the vessels, the disc and the macula, I see no exudates, no haemorrhages and no "
          "swelling, so I would pick option B as the most fitting of the four choices offered.")  # fmt: skip
MCQ_CASES = [  # (prediction, right?) for a question whose answer is B. "Normal fundus"
    ("B", True),
    ("(B)", True),
    ("B. Normal fundus", True),
    ("Normal fundus", True),  # the option's text only
    ("normal fundus", True),  # ... in lower case
    ("the answer is b", True),  # lower case, said as an answer
    ("b", False),  # a lone lower-case letter is no option to VLMEvalKit
    ("The answer is B. The optic disc is sharp and there are no exudates anywhere in the retina.", True),
    (BURIED, False),  # buried mid-explanation: VLMEvalKit infers nothing (Z)
    ("B is correct", True),
    ("A", False),
    ("A or B", False),  # two options named: no answer
    ("I cannot tell from this image.", False),  # no answer at all
    ("Cannot determine the answer", False),  # a refusal: Z
    ("", False),  # empty: read back as "nan"
]
VQA_CASES = [  # (question, answer, answer_type, prediction, expected score)
    ("Is there a mass?", "yes", "CLOSED", "Yes, there is a mass.", 1.0),
    ("Is there a mass?", "yes", "CLOSED", "No.", 0.0),
    ("Is there a mass?", "yes", "CLOSED", "yes and no", 0.0),  # both: unknown
    ("Is it normal?", "no", "CLOSED", "no", 1.0),
    ("Which side?", "right", "CLOSED", "It is on the right side", 1.0),  # closed, not yes/no: words present
    ("Where is the lesion?", "left lobe", "OPEN", "The lesion is in the left lobe of the liver", 1.0),
    ("Where is the lesion?", "left lobe", "OPEN", "lobe", 0.5),  # recall of the answer's words
    ("Where is the lesion?", "left lobe", "OPEN", "liver", 0.0),
]


def _jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _tsv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def make_benchmarks(root: Path) -> None:
    b64 = base64.b64encode(_jpeg(0)).decode()
    header = ["index", "image", "question", "A", "B", "C", "D", "E", "answer", "category", "clinical vqa task",
              "department", "perceptual granularity"]  # fmt: skip
    rows = [[i, b64 if i == 0 else "0", "Which finding is visible?", *OPTIONS, "", "B", "Fundus",
             "Disease Diagnosis" if i % 2 else "Attribute Recognition", "Ophthalmology", "Image Level"]
            for i in range(len(MCQ_CASES))]  # fmt: skip
    _tsv(root / "GMAI-MMBench_VAL.tsv", header, rows)  # flat, as in VLMEvalKit's LMUData
    mmmu = ["index", "image", "question", "A", "B", "C", "answer", "split", "category", "l2-category"]
    _tsv(root / "MMMU" / "MMMU_DEV_VAL.tsv", mmmu, [
        [1, b64, "How many lesions are in <image 1>?", "", "", "", "2", "validation", "Clinical_Medicine", "Health_and_Medicine"],
        [2, b64, "How many lesions are in <image 1>?", "", "", "", "2", "validation", "Clinical_Medicine", "Health_and_Medicine"],
        [3, b64, "<image 1> Which organ?", "Heart", "Liver", "Lung", "B", "validation", "Public_Health", "Health_and_Medicine"],
        [4, b64, "Which style?", "Baroque", "Gothic", "", "A", "validation", "Art", "Art_and_Design"],  # not H&M
    ])  # fmt: skip
    rad = root / "VQA-RAD"
    (rad / "VQA_RAD Image Folder").mkdir(parents=True)
    (rad / "VQA_RAD Image Folder" / "synpic1.jpg").write_bytes(_jpeg(1))
    qa = [{"qid": 10 + i, "image_name": "synpic1.jpg", "question": q, "answer": a, "answer_type": t,
           "phrase_type": "test_freeform"} for i, (q, a, t, _, _) in enumerate(VQA_CASES)]  # fmt: skip
    qa.append({"qid": 99, "image_name": "synpic1.jpg", "question": "train?", "answer": "no", "answer_type": "CLOSED",
               "phrase_type": "freeform"})  # a training question: not evaluated  # fmt: skip
    (rad / "VQA_RAD Dataset Public.json").write_text(json.dumps(qa))


def _write_predictions(folder: Path, dataset: str, predictions: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"index": k, "prediction": v}) for k, v in predictions.items()]
    (folder / f"{dataset}.rank0.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def scored(tmp_path: Path):
    bench, qdir, preds, work = tmp_path / "LMUData", tmp_path / "q", tmp_path / "preds", tmp_path / "vlmeval"
    make_benchmarks(bench)
    qs = write_question_set(bench, qdir)
    assert set(qs.datasets) == {"GMAI-MMBench_VAL", "MMMU_DEV_VAL", "VQA-RAD_TEST"} and not qs.empty
    _write_predictions(preds, "GMAI-MMBench_VAL", {str(i): p for i, (p, _) in enumerate(MCQ_CASES)})
    _write_predictions(preds, "MMMU_DEV_VAL", {"1": "2", "2": "3", "3": "B. Liver"})
    _write_predictions(preds, "VQA-RAD_TEST", {str(10 + i): c[3] for i, c in enumerate(VQA_CASES)})
    scores, summary = score_stage(qdir, preds, work, "tiny-model")
    return {s.dataset: s for s in scores}, summary, qdir, work


def test_multiple_choice_verdicts_follow_vlmevalkit(scored):
    scores, summary, _, work = scored
    rows = scores["GMAI-MMBench_VAL"].rows.set_index("index")
    got = {i: bool(rows.loc[i, "hit"]) for i in rows.index}
    assert got == {i: right for i, (_, right) in enumerate(MCQ_CASES)}
    assert rows.loc[8, "extracted"] == "Z" and rows.loc[6, "extracted"] == "Z"  # buried / lone "b": no answer
    want = 100 * sum(r for _, r in MCQ_CASES) / len(MCQ_CASES)
    line = summary.benchmarks.set_index("dataset").loc["GMAI-MMBench_VAL"]
    assert line["score"] == pytest.approx(want, abs=0.01) and line["questions"] == len(MCQ_CASES)
    task = scores["GMAI-MMBench_VAL"].groups["clinical vqa task"]
    assert {"split", "Overall", "Disease Diagnosis", "Attribute Recognition"} <= set(task.columns)
    # VLMEvalKit's layout: <model>/<model>_<dataset>.xlsx with a prediction column, and its score files.
    model_dir = work / "tiny-model"
    pred = pd.read_excel(model_dir / "tiny-model_GMAI-MMBench_VAL.xlsx")
    assert list(pred.columns)[-1] == "prediction" and "image" not in pred and pred["index"].dtype.kind == "i"
    acc = pd.read_csv(model_dir / "tiny-model_GMAI-MMBench_VAL_acc.csv")
    assert list(acc.columns[:2]) == ["split", "Overall"] and acc["Overall"][0] == pytest.approx(want / 100)
    for name in ("_exact_matching_result.xlsx", "_clinical vqa task_acc.csv", "_department_acc.csv"):
        assert (model_dir / f"tiny-model_GMAI-MMBench_VAL{name}").is_file()


def test_mmmu_open_questions_and_health_medicine_only(scored):
    scores, summary, qdir, _ = scored
    rows = scores["MMMU_DEV_VAL"].rows.set_index("index")
    assert sorted(rows.index) == [1, 2, 3]  # the Art question is not Health & Medicine
    assert [bool(rows.loc[i, "hit"]) for i in (1, 2, 3)] == [True, False, True]  # open: A = the answer
    prompts = {q["index"]: q for q in iter_questions(qdir, "MMMU_DEV_VAL")}
    assert prompts["3"]["prompt"] == (
        "Question: <image> Which organ?\nOptions:\nA. Heart\nB. Liver\nC. Lung\n" + MCQ_SUFFIX
    )  # VLMEvalKit's MCQ prompt, the image where the text names it
    assert prompts["1"]["prompt"] == "Question: How many lesions are in <image>?\n"  # no options listed
    assert summary.tables["table8"].iloc[0]["CM"] == 50.0


def test_closed_and_open_short_answers(scored):
    scores, summary, qdir, _ = scored
    rows = scores["VQA-RAD_TEST"].rows.set_index("index")
    assert sorted(rows.index) == [10 + i for i in range(len(VQA_CASES))]  # the training question is left out
    for i, (*_, want) in enumerate(VQA_CASES):
        assert rows.loc[10 + i, "hit"] == pytest.approx(want), VQA_CASES[i]
    closed = [c[4] for c in VQA_CASES if c[2] == "CLOSED"]
    open_ = [c[4] for c in VQA_CASES if c[2] == "OPEN"]
    line = summary.benchmarks.set_index("dataset").loc["VQA-RAD_TEST"]
    assert line["closed"] == pytest.approx(100 * np.mean(closed), abs=0.01)
    assert line["open_recall"] == pytest.approx(100 * np.mean(open_), abs=0.01)
    assert line["score"] == line["closed"]  # Table 4's one figure: closed-question accuracy
    first = next(iter_questions(qdir, "VQA-RAD_TEST"))
    assert first["prompt"] == "<image>\nIs there a mass?" + SHORT_SUFFIX


def test_a_missing_prediction_is_an_error(tmp_path: Path):
    bench, qdir, preds = tmp_path / "b", tmp_path / "q", tmp_path / "p"
    make_benchmarks(bench)
    write_question_set(bench, qdir)
    _write_predictions(preds, "GMAI-MMBench_VAL", {"0": "B"})
    with pytest.raises(ValueError, match="have no prediction"):
        score_stage(qdir, preds, tmp_path / "w", "m")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Yes.", "Yes"),
        ("no, it is not", "No"),
        ("yes/no", "Unknown"),
        ("maybe", "Unknown"),
        ("Not known", "Unknown"),
    ],
)
def test_yes_no_extraction(text: str, want: str):
    assert matching.yes_or_no(text) == want


def test_open_recall_normalises_like_llava_med():
    assert matching.token_recall("Two lesions.", "2 lesions") == 1.0  # number words, punctuation
    assert matching.token_recall("the left lung", "left, lung") == 1.0  # articles, commas
    assert matching.token_recall("", "lung") == 0.0
