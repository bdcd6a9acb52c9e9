"""Benchmarks kept the way users keep them: VLMEvalKit's flat LMUData/ folder, `_local.tsv`, nested archives.

The folder is built here in VLMEvalKit's own names and columns (`vlmeval/dataset/image_mcq.py`,
`image_shortqa.py`, `vlmeval/smp/file.py::localize_df`); training images are planted in it and
decontamination must find every copy. A benchmark that is present but yields nothing stops the release.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import skimage
from PIL import Image

from gmai_pipeline import decontaminate as dc
from gmai_pipeline.benchmarks import locate_all, present
from gmai_pipeline.defs import decontam
from gmai_pipeline.defs.resources import PipelineStorage
from gmai_pipeline.schemas import NORMALIZED_SCHEMA
from gmai_pipeline.storage import OutputLayout, md5_bytes

DATA = Path(skimage.__file__).parent / "data"
TRAIN = (
    "retina.jpg",
    "ihc.png",
    "coins.png",
    "camera.png",
    "moon.png",
    "cell.png",
    "horse.png",
    "coffee.png",
)
COLUMNS = ["index", "image", "question", "A", "B", "C", "D", "answer", "category"]


def _jpeg(name: str) -> bytes:
    buf = io.BytesIO()
    Image.open(DATA / name).convert("RGB").save(buf, format="JPEG", quality=75)  # VLMEvalKit's re-save
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _tsv(
    path: Path, rows: list[list[str]], columns: list[str] = COLUMNS, raw_line: bytes | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    data = buf.getvalue().encode()
    path.write_bytes(data + (raw_line or b""))


def make_training(out: Path) -> None:
    """One normalized table holding the eight training pictures, byte for byte as stored."""
    rows = []
    for name in TRAIN:
        data = (DATA / name).read_bytes()
        rel = f"images/2d/cls/ct/train_ds/{name}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        img = Image.open(DATA / name)
        rows.append({
            "sample_id": f"2d#cls#ct#train_ds#{name}", "dataset": "train_ds", "source_path": name,
            "slice_axis": None, "slice_index": None, "split": "train", "image": rel, "image_md5": md5_bytes(data),
            "width": img.width, "height": img.height, "modality": "CT", "label": "x", "department": "Radiology",
            "task_type": "2d_cls", "clinical_task": "Disease Diagnosis", "bbox": None,
        })  # fmt: skip
    layout = OutputLayout(out)
    layout.normalized("train_ds").parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=NORMALIZED_SCHEMA), layout.normalized("train_ds"))


def make_lmudata(root: Path, moved_from: Path) -> dict[str, str]:
    """A flat LMUData/ folder; returns training picture -> the benchmark dataset that copies it."""
    planted = {}
    # GMAI-MMBench VAL as downloaded: base64 JPEGs, an empty image cell (skipped, as VLMEvalKit's skip_noimg),
    # a back-reference, and a line with a byte that is not UTF-8 (reported, row kept).
    _tsv(
        root / "GMAI-MMBench_VAL.tsv",
        [
            ["1", _b64(_jpeg("retina.jpg")), "Which finding?", "a", "b", "c", "d", "A", "Fundus"],
            ["2", "", "no image in this row", "a", "b", "", "", "B", "Fundus"],
            ["3", "1", "Same picture again?", "a", "b", "", "", "B", "Fundus"],
        ],
        raw_line=b"4\t" + _b64(_jpeg("astronaut.png")).encode() + b"\tCaf\xe9?\ta\tb\t\t\tA\tX\n",
    )
    planted["retina.jpg"] = "GMAI-MMBench_VAL"
    # GMAI-MMBench TEST part 1 only as VLMEvalKit's `_local.tsv`: image_path columns written as absolute paths
    # of an LMUData that has since moved (VLMEvalKit's localize_df writes LMUDataRoot()/images/<dataset>/<i>.jpg).
    part = "GMAI_mm_bench_TEST_part_1"
    (root / "images" / part).mkdir(parents=True)
    (root / "images" / part / "7.jpg").write_bytes(_jpeg("ihc.png"))
    (root / "images" / part / "8.jpg").write_bytes(_jpeg("chelsea.png"))
    local_cols = [c if c != "image" else "image_path" for c in COLUMNS]
    _tsv(
        root / f"{part}_local.tsv",
        [
            ["7", str(moved_from / "images" / part / "7.jpg"), "q", "a", "b", "", "", "", "CT"],
            ["8", "8.jpg", "q", "a", "b", "", "", "", "CT"],  # relative to LMUData/images/<dataset>/
        ],
        columns=local_cols,
    )
    planted["ihc.png"] = part
    # OmniMedVQA as VLMEvalKit names its parts, with the `_local.tsv` beside it (same questions: read once).
    _tsv(
        root / "omnimedbench_part_1.tsv", [["0", _b64(_jpeg("coins.png")), "q", "a", "b", "", "", "A", "MR"]]
    )
    _tsv(root / "omnimedbench_part_1_local.tsv", [["0", "/gone/0.jpg", "q", "a", "b", "", "", "A", "MR"]],
         columns=local_cols)  # fmt: skip
    planted["coins.png"] = "omnimedbench_part_1"
    # PathVQA validation (VLMEvalKit's PathVQA_VAL) and a train split that must never be read.
    short = ["index", "image", "question", "answer", "category"]
    _tsv(
        root / "PathVQA_VAL.tsv",
        [["0", _b64(_jpeg("camera.png")), "Is this a slide?", "yes", "yes/no"]],
        short,
    )
    _tsv(root / "PathVQA_TRAIN.tsv", [["0", _b64(_jpeg("cell.png")), "q", "no", "yes/no"]], short)
    planted["camera.png"] = "PathVQA_VAL"
    # MMMU as VLMEvalKit keeps it in its own folder; a multi-image cell.
    _tsv(root / "MMMU" / "MMMU_DEV_VAL.tsv",
         [["1", str([_b64(_jpeg("moon.png")), _b64(_jpeg("page.png"))]), "<image 1> <image 2>?", "a", "b", "", "",
           "A", "Clinical_Medicine"]])  # fmt: skip
    planted["moon.png"] = "MMMU_DEV_VAL"
    # OmniMedVQA's original release unpacked one level deeper than its folder.
    deep = root / "OmniMedVQA" / "OmniMedVQA"
    (deep / "Images" / "S").mkdir(parents=True)
    (deep / "Images" / "S" / "h.png").write_bytes((DATA / "horse.png").read_bytes())
    (deep / "QA_information" / "Open-access").mkdir(parents=True)
    qa = [
        {
            "question_id": "S_0",
            "question": "?",
            "gt_answer": "a",
            "option_A": "a",
            "image_path": "Images/S/h.png",
        }
    ]
    (deep / "QA_information" / "Open-access" / "S.json").write_text(json.dumps(qa))
    planted["horse.png"] = "OmniMedVQA"
    # A benchmark VLMEvalKit does not know: reported, not read.
    _tsv(root / "MMBench_DEV_EN.tsv", [["0", _b64(_jpeg("coffee.png")), "q", "a", "b", "", "", "A", "x"]])
    return planted


def test_lmudata_folder_finds_every_planted_copy(tmp_path: Path):
    out, root = tmp_path / "out", tmp_path / "LMUData"
    make_training(out)
    planted = make_lmudata(root, moved_from=Path("/home/someone/LMUData"))
    found, _ = present(root)
    assert {s.name for s in found} == {"GMAI-MMBench", "OmniMedVQA", "PathVQA", "MMMU"}
    sources = {loc.spec.name: sorted(s.path.name for s in loc.sources) for loc in locate_all(root)}
    assert sources["OmniMedVQA"] == ["OmniMedVQA", "omnimedbench_part_1.tsv"]  # the _local twin is skipped
    assert sources["PathVQA"] == ["PathVQA_VAL.tsv"]

    layout = OutputLayout(out)
    dc.union_normalized(layout, ["train_ds"])
    report = dc.hash_benchmarks(root, layout, workers=1)
    assert report.ok, report.empty
    assert report.images == {
        "GMAI-MMBench_VAL": 2, "GMAI_mm_bench_TEST_part_1": 2, "omnimedbench_part_1": 1, "PathVQA_VAL": 1,
        "MMMU_DEV_VAL": 2, "OmniMedVQA": 1,
    }  # fmt: skip
    assert any("MMBench_DEV_EN.tsv" in i for i in report.ignored)
    assert any("PathVQA_TRAIN.tsv" in i and "train split" in i for i in report.ignored)
    (bad,) = report.problems  # the one non-UTF-8 line, named by file and line; its image was still hashed
    assert "GMAI-MMBench_VAL.tsv: line 5" in bad and "not UTF-8" in bad

    train, _ = dc.hash_training_images(layout.annotations, layout, workers=1)
    matches = dc.strongest(dc.find_matches(train, dc.read_hashes(layout.benchmark_hashes)))
    dc.apply_matches(layout.annotations, matches, layout)
    removed = pq.read_table(layout.decontamination_report).to_pandas()
    assert dict(zip(removed.source_path, removed.benchmark, strict=True)) == planted
    kept = set(pq.read_table(layout.decontaminated).to_pandas().source_path)
    assert kept == set(TRAIN) - set(planted)  # cell.png (only in a train split) and coffee.png stay


@dg.asset(deps=[decontam.DECONTAMINATED])
def downstream_release() -> None:
    """Stands in for everything after decontamination."""


def test_present_but_empty_benchmark_stops_the_release(output_root: Path, tmp_path: Path):
    make_training(output_root)
    root = tmp_path / "LMUData"
    make_lmudata(root, moved_from=Path("/elsewhere"))
    # SLAKE's folder holds only a test.json whose images are not there, and a `_local.tsv` points nowhere.
    (root / "SLAKE").mkdir()
    (root / "SLAKE" / "test.json").write_text(json.dumps([{"qid": 1, "img_name": "xmlab0/source.jpg"}]))
    _tsv(root / "PMC-VQA_local.tsv", [["0", "/gone/0.jpg", "q", "a", "b", "", "", "A", "x"]],
         columns=[c if c != "image" else "image_path" for c in COLUMNS])  # fmt: skip
    assets = [decontam.build_annotations([SimpleNamespace(name="train_ds")]), decontam.benchmark_hashes,
              decontam.decontaminated, downstream_release]  # fmt: skip
    result = dg.materialize(
        assets,
        raise_on_error=False,
        run_config={"ops": {"decontaminated": {"config": {"workers": 1}}}},
        resources={
            "storage": PipelineStorage(output_root=str(output_root), benchmark_root=str(root), demo=True)
        },
    )
    assert not result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"annotations"}  # no hashes, no decontaminated table, nothing downstream
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert f"{root / 'SLAKE'}" in message and "PMC-VQA_local.tsv" in message
