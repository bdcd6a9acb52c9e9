"""imgannotool XML markings as detection boxes: DIARETDB1 v2.1's real layout (`ddb1_v02_01/images/diaretdb1_image<nnn>.png`,
`groundtruth/diaretdb1_image<nnn>_0<k>.xml` per expert k, `_plain.xml` variants, split lists
`ddb1_v02_01_{train,test}.txt`; markinglist/marking with markingtype, confidencelevel and a polygon or circle region),
normalized from the manifest `scan()` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from layout_fixtures import entry
from normalize_fixtures import reasons, run
from PIL import Image

from gmai_pipeline.layouts import LayoutReader

DIARETDB = """
reader:
  kind: layout
  images: "images/{image}.png"
  masks: "groundtruth/{image}_0{expert:[1-4]}.xml"
  split: {lists: {train: ddb1_v02_01_train.txt, test: ddb1_v02_01_test.txt}}
  convert: {kind: imgannot, min_confidence: moderate}
labels: {Haemorrhages: haemorrhage, Hard_exudates: hard exudate, Red_small_dots: red small dot (microaneurysm)}
"""


def polygon(kind: str, conf: str, pts: list[tuple[int, int]]) -> str:
    coords = "".join(f"<coords2d>{x},{y}</coords2d>" for x, y in pts)
    cx, cy = pts[0]
    return (
        f"<marking><polygonregion><centroid><coords2d>{cx},{cy}</coords2d></centroid>{coords}</polygonregion>"
        f"<representativepoint><coords2d>{cx},{cy}</coords2d></representativepoint>"
        f"<confidencelevel>{conf}</confidencelevel><markingtype>{kind}</markingtype></marking>"
    )


def circle(kind: str, conf: str, c: tuple[int, int], r: int) -> str:
    return (
        f"<marking><circleregion><centroid><coords2d>{c[0]},{c[1]}</coords2d></centroid>"
        f'<radius direction="x">{r}</radius><radius direction="y">{r}</radius></circleregion>'
        f"<representativepoint><coords2d>{c[0]},{c[1]}</coords2d></representativepoint>"
        f"<confidencelevel>{conf}</confidencelevel><markingtype>{kind}</markingtype></marking>"
    )


def point(kind: str, conf: str) -> str:
    return (
        "<marking><representativepoint><coords2d>5,5</coords2d></representativepoint>"
        f"<confidencelevel>{conf}</confidencelevel><markingtype>{kind}</markingtype></marking>"
    )


def imgannot(path: Path, image: str, markings: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<imgannotooldata><header><creator>expert</creator>'
        '<software version="0.4.1">imgannotool</software></header>'
        f"<imagename>{image}.png</imagename><imagesize><width>48</width><height>40</height></imagesize>"
        f"<markinglist>{''.join(markings)}</markinglist></imgannotooldata>",
        encoding="utf-8",
    )


def test_diaretdb_markings_are_boxes_above_the_declared_confidence(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "diaretdb"
    t = raw / "ddb1_v02_01"  # the zip's top folder: skipped on its own
    for i, name in enumerate(("diaretdb1_image001", "diaretdb1_image002", "diaretdb1_image003")):
        (t / "images").mkdir(parents=True, exist_ok=True)
        px = (np.indices((40, 48)).sum(0)[..., None] * (i + 2) * np.array([1, 2, 3]) % 251).astype(np.uint8)
        Image.fromarray(px).save(t / "images" / f"{name}.png")
    g = t / "groundtruth"
    imgannot(
        g / "diaretdb1_image001_01.xml",
        "diaretdb1_image001",
        [
            polygon("Hard_exudates", "High", [(10, 4), (20, 6), (14, 12)]),
            circle("Red_small_dots", "Moderate", (30, 30), 3),
            circle("Haemorrhages", "Low", (5, 30), 4),  # below min_confidence
            point("Haemorrhages", "High"),  # no region: not an area
        ],
    )
    imgannot(
        g / "diaretdb1_image001_02.xml", "diaretdb1_image001", [circle("Haemorrhages", "High", (46, 2), 5)]
    )
    imgannot(g / "diaretdb1_image001_03.xml", "diaretdb1_image001", [])  # this expert marked nothing
    imgannot(g / "diaretdb1_image001_01_plain.xml", "diaretdb1_image001", [point("Disc", "High")])  # not read
    imgannot(
        g / "diaretdb1_image002_01.xml", "diaretdb1_image002", [circle("Haemorrhages", "High", (9, 9), 2)]
    )
    (t / "ddb1_v02_01_train.txt").write_text("diaretdb1_image001.png\ndiaretdb1_image003.png\n")
    (t / "ddb1_v02_01_test.txt").write_text("diaretdb1_image002.png\n")
    source = entry(tmp_path, "diaretdb", "2d_det", DIARETDB)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert reasons(qrows) == {
        "low_confidence": 1,
        "not_an_area": 1,
        "no_finding": 1,
        "split_excluded": 1,
        "missing_file": 1,
    }
    assert report.inputs == 3 + 5  # three boxes kept; five quarantined
    low = next(q for q in qrows if q["reason"] == "low_confidence")
    assert low["source_path"] == "ddb1_v02_01/groundtruth/diaretdb1_image001_01.xml"
    assert "'low', below min_confidence moderate" in low["detail"]
    assert next(q for q in qrows if q["reason"] == "missing_file")["source_path"].endswith(
        "diaretdb1_image003.png"
    )
    got = sorted((r["label"], tuple(r["bbox"])) for r in rows)
    assert got == [
        ("haemorrhage", (41, 0, 48, 7)),  # the circle clipped to the image
        ("hard exudate", (10, 4, 20, 12)),
        ("red small dot (microaneurysm)", (27, 27, 33, 33)),
    ]
    assert {r["split"] for r in rows} == {"train"}


def test_imgannot_needs_its_annotation_files_and_a_stated_confidence() -> None:
    with pytest.raises(ValueError, match="min_confidence"):
        LayoutReader.model_validate(
            {
                "kind": "layout",
                "images": "images/{i}.png",
                "masks": "gt/{i}.xml",
                "convert": {"kind": "imgannot"},
            }
        )
