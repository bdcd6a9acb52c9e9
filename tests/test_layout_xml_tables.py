"""XML documents as table rows: Open-i's Indiana University chest X-ray reports (`ecgen-radiology/<n>.xml`, MeSH/major
findings, parentImage ids naming `<id>.png`; mlmed/torchxrayvision:torchxrayvision/datasets.py `Openi_Dataset`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from layout_fixtures import entry
from normalize_fixtures import reasons, run
from PIL import Image

from gmai_pipeline.layouts import LayoutReader

OPENI = """
reader:
  kind: layout
  images: "*.png"
  table:
    file: "ecgen-radiology/*.xml"
    image: image_id
    xml: {rows: ".//parentImage", columns: {image_id: "@id", findings: {path: ".//MeSH/major", head: "/"}}}
  label: {column: findings, delimiter: "|"}
labels: {normal: no finding, Cardiomegaly: cardiomegaly, Pleural Effusion: pleural effusion,
         "Fractures, Bone": bone fracture}
"""


def report(path: Path, major: list[str], images: list[str], automatic: list[str] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh = "".join(f"<major>{m}</major>" for m in major) + "".join(
        f"<automatic>{a}</automatic>" for a in automatic
    )
    parents = "".join(
        f'<parentImage id="{i}"><figureId>F{k}</figureId><caption>Xray Chest PA and Lateral</caption>'
        f"<url>/hadoop/storage/radiology/extract/{i}.jpg</url></parentImage>"
        for k, i in enumerate(images, start=1)
    )
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<eCitation><meta type="rr"/><uId id="CXR1"/>'
        '<MedlineCitation Owner="Indiana University" Status="supplied"><Article PubModel="Electronic">'
        '<Abstract><AbstractText Label="FINDINGS">The heart is normal in size.</AbstractText></Abstract>'
        f"</Article></MedlineCitation><MeSH>{mesh}</MeSH>{parents}</eCitation>",
        encoding="utf-8",
    )


def test_openi_reports_label_their_images_by_mesh_major_descriptor(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "openi"
    names = [
        "CXR1_1_IM-0001-3001",
        "CXR1_1_IM-0001-4001",
        "CXR2_IM-0652-1001",
        "CXR2_IM-0652-2001",
        "CXR3_IM-1_1",
    ]
    raw.mkdir(parents=True)
    for i, n in enumerate(names):
        px = (np.indices((16, 16)).sum(0) * (i + 3) % 251).astype(np.uint8)
        Image.fromarray(px).save(raw / f"{n}.png")
    report(raw / "ecgen-radiology" / "1.xml", ["normal"], names[:2], ["normal"])
    report(
        raw / "ecgen-radiology" / "2.xml",
        ["Cardiomegaly/borderline", "Pulmonary Artery/enlarged", "Fractures, Bone/ribs/left"],
        names[2:4],
    )
    (raw / "ecgen-radiology" / "3.xml").write_text("<eCitation><MeSH><major>normal</major>", encoding="utf-8")
    source = entry(tmp_path, "openi_cxr", "2d_cls", OPENI)
    report_, rows, qrows = run(source, raw, tmp_path / "out")
    got = sorted((r["source_path"], r["label"]) for r in rows)
    assert got == [
        ("CXR1_1_IM-0001-3001.png", "no finding"),
        ("CXR1_1_IM-0001-4001.png", "no finding"),
        ("CXR2_IM-0652-1001.png", "bone fracture"),
        ("CXR2_IM-0652-1001.png", "cardiomegaly"),
        ("CXR2_IM-0652-2001.png", "bone fracture"),
        ("CXR2_IM-0652-2001.png", "cardiomegaly"),
    ]
    r = reasons(qrows)
    assert r.pop("unknown_label") == 2  # 'Pulmonary Artery' (an anatomy descriptor) on each image of report 2
    assert r.pop("unreadable") == 1  # the truncated 3.xml, named
    broken = next(q for q in qrows if q["reason"] == "unreadable")
    assert broken["source_path"] == "ecgen-radiology/3.xml" and "not well-formed XML" in broken["detail"]
    assert r == {"unreferenced_file": 1}  # CXR3_IM-1_1.png: named by no readable report


def test_xml_columns_must_be_declared() -> None:
    with pytest.raises(ValueError, match="columns"):
        LayoutReader.model_validate(
            {
                "kind": "layout",
                "images": "*.png",
                "table": {"file": "r/*.xml", "image": "id", "xml": {"rows": ".//parentImage"}},
                "label": {"column": "findings"},
            }
        )
