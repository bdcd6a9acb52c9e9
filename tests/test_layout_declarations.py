"""Declarations for layouts real downloads ship that the first layout reader could not express: list-literal
label cells (PadChest), 2D MetaImage (CRASS), image paths rebuilt from a cell's fields (DeepLesion), COCO
corner boxes with a split table (MIDOG++), colour-coded masks (GLENDA), splits as table row positions
(Derm7pt) and mask values to ignore (LEG-3D-US). Each on tiny files at the dataset's real relative paths."""

from __future__ import annotations

from pathlib import Path

from layout_fixtures import entry, photo
from normalize_fixtures import reasons, run

PADCHEST = """
reader:
  kind: layout
  images: '{ImageDir:\\d+}/*.png'
  table: {file: PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv, image: ImageID}
  label: {column: Labels, format: list_literal}
"""


def test_padchest_list_literal_labels(tmp_path: Path) -> None:
    """PadChest's Labels cells are Python list literals (mlmed/torchxrayvision:torchxrayvision/datasets.py
    PC_Dataset reads PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv; images in ImageDir folders 0-54)."""
    raw = tmp_path / "raw" / "padchest"
    ids = [f"21684011136696401281920706111201030714260225{i}_04-014-084.png" for i in range(4)]
    for i, name in enumerate(ids):
        photo(raw / str(i % 2) / name, seed=i, rgb=False)
    cells = [
        "['pleural effusion', 'cardiomegaly']",
        "['normal']",
        "{'pleural effusion': 1}",  # not a list: the row's error
        "['unchanged', ' loculated pleural effusion'",  # unbalanced: not a literal
    ]
    lines = ["ImageID,ImageDir,Projection,Labels"]
    lines += [f'{n},{i % 2},PA,"{c}"' for i, (n, c) in enumerate(zip(ids, cells, strict=True))]
    (raw / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv").write_text("\n".join(lines) + "\n")
    source = entry(tmp_path, "padchest", "2d_cls", PADCHEST, modality="X-Ray")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert sorted((r["source_path"], r["label"]) for r in rows) == [
        (f"0/{ids[0]}", "cardiomegaly"),
        (f"0/{ids[0]}", "pleural effusion"),
        (f"1/{ids[1]}", "normal"),
    ]
    assert reasons(qrows) == {"invalid_label": 2}
    details = sorted(q["detail"] for q in qrows)
    assert "line 4" in details[0] and "not a list of strings" in details[0]
    assert "line 5" in details[1] and "not a list literal" in details[1]
