"""Declarations for layouts real downloads ship that the first layout reader could not express: list-literal
label cells (PadChest), 2D MetaImage (CRASS), image paths rebuilt from a cell's fields (DeepLesion), COCO
corner boxes with a split table (MIDOG++), colour-coded masks (GLENDA), splits as table row positions
(Derm7pt) and mask values to ignore (LEG-3D-US). Each on tiny files at the dataset's real relative paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


CRASS = """
reader:
  kind: layout
  images: 'data_train/**/{name}.mhd'
  masks: 'mask_mhd/**/{name}.mhd'
labels: {"1": clavicle, "255": clavicle}
"""


def _metaimage(path: Path, arr: np.ndarray) -> None:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))  # x.mhd + x.raw beside it


def test_crass_2d_metaimage_radiographs_and_masks(tmp_path: Path) -> None:
    """CRASS: CRASS/data_train/*.mhd radiographs, CRASS/mask_mhd/*.mhd clavicle masks of the same name
    (open-mmlab/mmsegmentation:projects/medical/2d_image/x_ray/crass/tools/prepare_dataset.py reads both with
    SimpleITK and squeezes a one-slice axis)."""
    raw = tmp_path / "raw" / "crass" / "CRASS"
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 40), np.uint8)
    mask[4:14, 6:20] = 255
    _metaimage(raw / "data_train/chn0001.mhd", rng.integers(0, 4000, (32, 40)).astype(np.uint16))
    _metaimage(raw / "mask_mhd/chn0001.mhd", mask)
    _metaimage(raw / "data_train/chn0002.mhd", rng.integers(0, 4000, (1, 32, 40)).astype(np.uint16))
    _metaimage(raw / "mask_mhd/chn0002.mhd", (mask > 0).astype(np.uint8)[None])  # 3D, one slice: a picture
    _metaimage(raw / "data_train/chn0003.mhd", rng.integers(0, 4000, (3, 32, 40)).astype(np.uint16))
    _metaimage(raw / "mask_mhd/chn0003.mhd", np.stack([mask] * 3))
    (raw / "data_train/chn0004.raw").write_bytes(b"\0" * 64)  # a header with a data file too short
    (raw / "data_train/chn0004.mhd").write_text(
        "ObjectType = Image\nNDims = 2\nDimSize = 320 400\nElementType = MET_USHORT\nElementDataFile = chn0004.raw\n"
    )
    _metaimage(raw / "mask_mhd/chn0004.mhd", mask)
    source = entry(tmp_path, "crass", "2d_seg", CRASS, modality="X-Ray")
    report, rows, qrows = run(source, raw.parent, tmp_path / "out")
    assert sorted((r["source_path"], r["label"], r["bbox"]) for r in rows) == [
        ("CRASS/data_train/chn0001.mhd", "clavicle", [6, 4, 20, 14]),
        ("CRASS/data_train/chn0002.mhd", "clavicle", [6, 4, 20, 14]),
    ]
    assert all((r["width"], r["height"]) == (40, 32) for r in rows)
    assert reasons(qrows) == {"unreadable": 2}
    by = {q["source_path"]: q["detail"] for q in qrows}
    assert "2D image or one slice" in by["CRASS/data_train/chn0003.mhd"]
    assert by["CRASS/data_train/chn0004.mhd"].startswith("CRASS/data_train/chn0004.mhd")

