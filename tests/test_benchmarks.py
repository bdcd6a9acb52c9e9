"""Benchmark readers, each on small files written here in the benchmark's real layout."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from gmai_pipeline.benchmarks import REGISTRY, present, read_all, read_benchmark, vlmevalkit_tsv

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def img_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (40, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def spec(name: str):
    return next(s for s in REGISTRY if s.name == name)


def items(name: str, root: Path) -> tuple[list[tuple[str, str, bytes]], list[str]]:
    problems: list[str] = []
    return [tuple(i) for i in read_benchmark(spec(name), root, problems)], problems


def write_tsv(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["index", "image", "question", "A", "B", "C", "D", "E", "answer", "category"])
        w.writerows(rows)


def test_vlmevalkit_tsv_with_back_reference_multi_image_and_newlines(tmp_path: Path):
    folder = tmp_path / "GMAI-MMBench"
    folder.mkdir()
    a, b, c, d = (img_bytes(i) for i in range(4))
    b64 = lambda x: base64.b64encode(x).decode()  # noqa: E731
    write_tsv(
        folder / "GMAI-MMBench_VAL.tsv",
        [
            ["0", b64(a), "What is shown?\tTabbed\nand multi-line", "x", "y", "z", "w", "", "A", "CT"],
            ["1", "0", "Same picture, another question", "x", "y", "z", "w", "", "B", "CT"],  # back-reference
            ["2", b64(b), "q", "x", "y", "", "", "", "A", "MR"],
            ["3", str([b64(c), b64(d)]), "two images", "x", "y", "", "", "", "A", "US"],
            ["4", "99", "refers to a missing row", "x", "y", "", "", "", "A", "US"],
        ],
    )
    got, problems = items("GMAI-MMBench", tmp_path)
    assert got == [
        ("GMAI-MMBench_VAL", "0", a),
        ("GMAI-MMBench_VAL", "2", b),
        ("GMAI-MMBench_VAL", "3:0", c),
        ("GMAI-MMBench_VAL", "3:1", d),
    ]
    assert len(problems) == 1 and "'99'" in problems[0] and "GMAI-MMBench_VAL.tsv" in problems[0]


def test_vlmevalkit_tsv_streams_rows_larger_than_default_csv_limit(tmp_path: Path):
    big = img_bytes(7, fmt="PNG", size=(300, 300))  # base64 > 131072 chars: the csv module's default limit
    assert len(base64.b64encode(big)) > 131072
    path = tmp_path / "PathVQA_TEST.tsv"
    write_tsv(path, [["10", base64.b64encode(big).decode(), "q", "a", "b", "", "", "", "A", "p"]])
    reader = vlmevalkit_tsv.read_tsv(path, [])
    assert next(reader) == ("PathVQA_TEST", "10", big)  # a generator: nothing read before it is asked


def test_omnimedvqa_original_layout(tmp_path: Path):
    root = tmp_path / "OmniMedVQA"
    images = {"Images/Chest CT Scan/a.png": img_bytes(1, "PNG"), "Images/Chest CT Scan/b.jpg": img_bytes(2)}
    for rel, data in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    qa = lambda qid, path, **kw: {  # noqa: E731
        "question_id": qid, "question_type": "Disease Diagnosis", "question": "?", "gt_answer": "x",
        "option_A": "x", "option_B": "y", "image_path": path, **kw,
    }  # fmt: skip
    (root / "QA_information" / "Open-access").mkdir(parents=True)
    (root / "QA_information" / "Restricted-access").mkdir(parents=True)
    (root / "QA_information" / "Open-access" / "Chest CT Scan.json").write_text(
        json.dumps(
            [
                qa("ct_0001", "Images/Chest CT Scan/a.png", modality_type="CT"),
                qa("ct_0002", "Images/Chest CT Scan/a.png", modality_type="CT"),  # same image again
                qa("ct_0003", "Images/Chest CT Scan/missing.png", modality_type="CT"),
            ]
        )
    )
    (root / "QA_information" / "Restricted-access" / "Other.json").write_text(
        json.dumps([qa("r_0001", "Images/Chest CT Scan/b.jpg", modality="CT")])
    )
    got, problems = items("OmniMedVQA", tmp_path)
    assert got == [
        ("OmniMedVQA", "ct_0001", images["Images/Chest CT Scan/a.png"]),
        ("OmniMedVQA", "r_0001", images["Images/Chest CT Scan/b.jpg"]),
    ]
    assert len(problems) == 1 and "missing.png" in problems[0]


def test_vqa_rad_osf_json_test_split_only(tmp_path: Path):
    root = tmp_path / "VQA-RAD"
    (root / "VQA_RAD Image Folder").mkdir(parents=True)
    for name, seed in (("synpic100.jpg", 1), ("synpic200.jpg", 2), ("synpic300.jpg", 3)):
        (root / "VQA_RAD Image Folder" / name).write_bytes(img_bytes(seed))
    questions = [
        {
            "qid": 1,
            "image_name": "synpic100.jpg",
            "phrase_type": "freeform",
            "question": "?",
            "answer": "yes",
        },
        {
            "qid": 2,
            "image_name": "synpic200.jpg",
            "phrase_type": "test_freeform",
            "question": "?",
            "answer": "no",
        },
        {
            "qid": 3,
            "image_name": "synpic200.jpg",
            "phrase_type": "test_para",
            "question": "?",
            "answer": "no",
        },
        {
            "qid": 4,
            "image_name": "synpic300.jpg",
            "phrase_type": "test_para",
            "question": "?",
            "answer": "no",
        },
    ]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(questions))
    got, problems = items("VQA-RAD", tmp_path)
    assert [(b, i) for b, i, _ in got] == [("VQA-RAD", "2"), ("VQA-RAD", "4")]
    assert got[0][2] == img_bytes(2) and not problems


def test_vqa_rad_hf_parquet_mirror(tmp_path: Path):
    data = tmp_path / "VQA-RAD" / "data"
    data.mkdir(parents=True)
    a, b = img_bytes(5), img_bytes(6)
    table = pa.table(
        {
            "image": pa.array([{"bytes": a, "path": None}, {"bytes": a, "path": None}, {"bytes": b, "path": None}],
                              type=IMAGE_STRUCT),
            "question": ["q1", "q2", "q3"],
            "answer": ["yes", "no", "yes"],
        }
    )  # fmt: skip
    pq.write_table(table, data / "test-00000-of-00001-abc.parquet")
    pq.write_table(table, data / "train-00000-of-00001-abc.parquet")  # never read
    got, _ = items("VQA-RAD", tmp_path)
    assert got == [("VQA-RAD", "test:0", a), ("VQA-RAD", "test:2", b)]


def test_slake_test_json(tmp_path: Path):
    root = tmp_path / "SLAKE" / "Slake1.0"
    for folder, seed in (("xmlab0", 1), ("xmlab1", 2)):
        (root / "imgs" / folder).mkdir(parents=True)
        (root / "imgs" / folder / "source.jpg").write_bytes(img_bytes(seed))
    rows = [
        {
            "qid": 11,
            "img_id": 0,
            "img_name": "xmlab0/source.jpg",
            "question": "?",
            "answer": "a",
            "q_lang": "en",
        },
        {
            "qid": 12,
            "img_id": 0,
            "img_name": "xmlab0/source.jpg",
            "question": "？",
            "answer": "甲",
            "q_lang": "zh",
        },
        {
            "qid": 13,
            "img_id": 1,
            "img_name": "xmlab1/source.jpg",
            "question": "?",
            "answer": "b",
            "q_lang": "en",
        },
    ]
    (root / "test.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (root / "train.json").write_text(json.dumps([dict(rows[0], qid=1)]), encoding="utf-8")
    got, problems = items("SLAKE", tmp_path)
    assert got == [("SLAKE", "11", img_bytes(1)), ("SLAKE", "13", img_bytes(2))] and not problems


def test_pmc_vqa_test_csv(tmp_path: Path):
    root = tmp_path / "PMC-VQA"
    (root / "images").mkdir(parents=True)
    (root / "images" / "PMC1_Fig1_0.jpg").write_bytes(img_bytes(1))
    (root / "images" / "PMC2_Fig3_1.jpg").write_bytes(img_bytes(2))
    header = [
        "index",
        "Figure_path",
        "Question",
        "Answer",
        "Choice A",
        "Choice B",
        "Choice C",
        "Choice D",
        "Answer_label",
    ]
    with open(root / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerow([0, "PMC1_Fig1_0.jpg", "What, exactly?", "CT", "A:CT", "B:MR", "C:US", "D:PET", "A"])
        w.writerow([1, "PMC1_Fig1_0.jpg", "Again?", "MR", "A:CT", "B:MR", "C:US", "D:PET", "B"])
        w.writerow([2, "PMC2_Fig3_1.jpg", "?", "US", "A:CT", "B:MR", "C:US", "D:PET", "C"])
        w.writerow([3, "PMC9_gone.jpg", "?", "US", "A:CT", "B:MR", "C:US", "D:PET", "C"])
    with open(root / "train.csv", "w", newline="") as f:  # never read
        csv.writer(f).writerows([header, [0, "PMC1_Fig1_0.jpg", "q", "a", "", "", "", "", "A"]])
    got, problems = items("PMC-VQA", tmp_path)
    assert got == [("PMC-VQA", "PMC1_Fig1_0.jpg", img_bytes(1)), ("PMC-VQA", "PMC2_Fig3_1.jpg", img_bytes(2))]
    assert len(problems) == 1 and "PMC9_gone.jpg" in problems[0]


def test_pathvqa_hf_parquet_and_original_folder(tmp_path: Path):
    root = tmp_path / "PathVQA"
    (root / "data").mkdir(parents=True)
    a = img_bytes(3)
    pq.write_table(
        pa.table({"image": pa.array([{"bytes": a, "path": "x.jpg"}], type=IMAGE_STRUCT), "question": ["q"],
                  "answer": ["yes"]}),
        root / "data" / "test-00000-of-00002.parquet",
    )  # fmt: skip
    (root / "pvqa" / "images" / "test").mkdir(parents=True)
    (root / "pvqa" / "images" / "train").mkdir(parents=True)
    (root / "pvqa" / "images" / "test" / "test_0001.jpg").write_bytes(img_bytes(4))
    (root / "pvqa" / "images" / "train" / "train_0001.jpg").write_bytes(img_bytes(5))
    got, _ = items("PathVQA", tmp_path)
    assert got == [("PathVQA", "test:0", a), ("PathVQA", "test_0001", img_bytes(4))]


def test_mmmu_health_and_medicine_parquet(tmp_path: Path):
    a, b, c = img_bytes(1, "PNG"), img_bytes(2, "PNG"), img_bytes(3, "PNG")
    cols = {f"image_{k}": pa.array([None, None], type=IMAGE_STRUCT) for k in range(1, 8)}
    cols["image_1"] = pa.array(
        [{"bytes": a, "path": "1.png"}, {"bytes": b, "path": "2.png"}], type=IMAGE_STRUCT
    )
    cols["image_2"] = pa.array([None, {"bytes": c, "path": "3.png"}], type=IMAGE_STRUCT)
    table = pa.table({"id": ["validation_Clinical_Medicine_1", "validation_Clinical_Medicine_2"],
                      "question": ["<image 1>?", "<image 1> <image 2>?"], **cols, "answer": ["A", "B"]})  # fmt: skip
    (tmp_path / "MMMU" / "Clinical_Medicine").mkdir(parents=True)
    (tmp_path / "MMMU" / "Art").mkdir(parents=True)
    pq.write_table(table, tmp_path / "MMMU" / "Clinical_Medicine" / "validation-00000-of-00001.parquet")
    pq.write_table(table, tmp_path / "MMMU" / "Art" / "validation-00000-of-00001.parquet")  # not H&M
    got, _ = items("MMMU", tmp_path)
    assert got == [
        ("MMMU", "validation_Clinical_Medicine_1:image_1", a),
        ("MMMU", "validation_Clinical_Medicine_2:image_1", b),
        ("MMMU", "validation_Clinical_Medicine_2:image_2", c),
    ]


def test_missing_benchmarks_are_skipped_and_named(tmp_path: Path):
    (tmp_path / "SLAKE").mkdir()
    (tmp_path / "SLAKE" / "test.json").write_text("[]")
    found, missing = present(tmp_path)
    assert [s.name for s in found] == ["SLAKE"]
    assert {s.name for s in missing} == {s.name for s in REGISTRY} - {"SLAKE"}
    problems: list[str] = []
    assert list(read_all(tmp_path, problems)) == [] and not problems
    assert present(tmp_path / "nowhere") == ([], list(REGISTRY))
