"""Dataset report: numbers equal independent counts on the fixture; charts are valid PNGs; the card is written."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from release_fixtures import demo_rows, write_generated

from gmai_pipeline.release.records import load_records
from gmai_pipeline.release.report import (
    DIMENSIONS,
    TASK_LABELS,
    build_report,
    dataset_card,
    hf_features,
    table3_markdown,
)
from gmai_pipeline.storage import OutputLayout

LICENCES = {
    "demo_fundus_folder": "CC-BY-4.0",
    "demo_chest_coco": "CC0-1.0",
}  # demo_brain_msd left out on purpose


def test_report_numbers_match_independent_counts(output_root: Path) -> None:
    layout = OutputLayout(output_root)
    rows = demo_rows(layout, images_per_source=4)
    write_generated(layout, rows)
    pq.write_table(
        pa.table(
            {
                "sample_id": ["a", "b", "c"],
                "image": ["images/2d/cls/ct/x/a.png", "images/2d/cls/ct/x/b.png", "images/2d/cls/ct/x/c.png"],
                "benchmark": ["vqa_rad", "vqa_rad", "slake"],
                "method": ["md5", "dhash", "md5"],
            }
        ),
        layout.decontamination_report,
    )
    loaded = load_records(layout)
    report = build_report(loaded.rows, LICENCES, layout.decontamination_report, layout.release / "report")

    for dim in DIMENSIONS:
        expected = Counter(TASK_LABELS[r[dim]] if dim == "task_type" else r[dim] for r in rows)
        got = dict(zip(report.shares[dim]["value"], report.shares[dim]["samples"], strict=True))
        assert got == dict(expected)
        for value, share in zip(report.shares[dim]["value"], report.shares[dim]["share_pct"], strict=True):
            assert share == round(100 * expected[value] / len(rows), 1)
    sources = report.sources.set_index("dataset")
    for name, n in Counter(r["dataset"] for r in rows).items():
        assert sources.loc[name, "records"] == n
        assert sources.loc[name, "images"] == len({r["image"] for r in rows if r["dataset"] == name})
        assert sources.loc[name, "licence"] == LICENCES.get(name, "unknown (not in catalog)")
        assert sources.loc[name, "vqa_en"] == sum(r["dataset"] == name and r["kind"] == "vqa" for r in rows)
    gen = report.generators.groupby("prompt_version")["records"].sum().to_dict()
    assert gen == dict(Counter(r["prompt_version"] for r in rows))
    assert report.decontamination["removed"] == 3
    assert report.decontamination["by"] == {
        "benchmark": {"vqa_rad": 2, "slake": 1},
        "method": {"md5": 2, "dhash": 1},
    }
    assert report.totals == {"records": len(rows), "images": len({r["image"] for r in rows}), "sources": 3}

    for dim, path in report.charts.items():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", dim
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.size[0] > 300 and im.size[1] > 100

    card = dataset_card(
        report, {"shards": []}, {"GMAI-MM-Caption-en": 3}, layout.release, hf_features(loaded.rows)
    )
    assert table3_markdown(report) in card and "CC-BY-4.0" in card and "template" in card
    assert "(report/modality.png)" in card and "vqa_rad" in card


def test_report_without_decontamination_says_so(output_root: Path) -> None:
    layout = OutputLayout(output_root)
    write_generated(layout, demo_rows(layout, images_per_source=1))
    rows = load_records(layout).rows
    report = build_report(rows, {}, layout.decontamination_report, layout.release / "report")
    assert report.decontamination == {"present": False, "path": str(layout.decontamination_report)}
    card = dataset_card(report, {"shards": []}, {}, layout.release, hf_features(rows))
    assert "has not been checked against the benchmarks" in card
