"""Declarations for layouts real downloads ship that the first layout reader could not express: list-literal
label cells (PadChest), 2D MetaImage (CRASS), image paths rebuilt from a cell's fields (DeepLesion), COCO
corner boxes with a split table (MIDOG++), colour-coded masks (GLENDA), splits as table row positions
(Derm7pt) and mask values to ignore (LEG-3D-US). Each on tiny files at the dataset's real relative paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from layout_fixtures import entry, photo
from normalize_fixtures import reasons, run, write_image, write_json

from gmai_pipeline.catalog import CatalogError

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


DEEPLESION = """
reader:
  kind: layout
  images: '**/Images_png/{series}/{slice}.png'
  table: {file: DL_info.csv, image: File_name, image_pattern: '{series}_{slice:\\d+}.png',
          image_path: 'Images_png/{series}/{slice}.png'}
  label: {column: Coarse_lesion_type}
  split: {column: Train_Val_Test, map: {"1": train, "2": val, "3": test}}
  boxes: {column: Bounding_boxes, format: xyxy}
labels: {"4": liver lesion, "5": lung lesion, "-1": lesion (type not labelled)}
"""


def test_deeplesion_image_path_rebuilt_from_cell_fields(tmp_path: Path) -> None:
    """DeepLesion's DL_info.csv names the key slice `000001_01_01_103.png` while the file is
    `Images_png/000001_01_01/103.png`, in one folder per zip (`Images_png_01/Images_png/...`)
    (neuro-ml/amid:amid/deeplesion.py splits File_name on `_` for patient/study/series;
    Bounding_boxes 'x1, y1, x2, y2'; Train_Val_Test 1/2/3)."""
    raw = tmp_path / "raw" / "deeplesion"
    photo(raw / "Images_png_01/Images_png/000001_01_01/103.png", seed=1, rgb=False)
    photo(raw / "Images_png_01/Images_png/000001_01_01/104.png", seed=2, rgb=False)
    photo(raw / "Images_png_02/Images_png/000047_08_01/011.png", seed=3, rgb=False)
    head = "File_name,Patient_index,Study_index,Series_ID,Key_slice_index,Bounding_boxes,Coarse_lesion_type,Train_Val_Test"
    rows = [
        '000001_01_01_103.png,1,1,1,103,"4.5, 6.0, 20.5, 18.0",4,1',
        '000001_01_01_103.png,1,1,1,103,"2.0, 30.0, 12.0, 40.0",5,1',
        '000047_08_01_011.png,47,8,1,11,"3.0, 3.0, 9.0, 9.0",-1,3',
        '000002_01_01_162.png,2,1,1,162,"3.0, 3.0, 9.0, 9.0",5,2',  # its zip not downloaded: missing
    ]
    (raw / "DL_info.csv").write_text("\n".join([head, *rows]) + "\n")
    source = entry(tmp_path, "deeplesion", "2d_det", DEEPLESION, modality="CT")
    report, rows_out, qrows = run(source, raw, tmp_path / "out")
    assert sorted((r["source_path"], r["label"], r["bbox"]) for r in rows_out) == [
        ("Images_png_01/Images_png/000001_01_01/103.png", "liver lesion", [4, 6, 21, 18]),
        ("Images_png_01/Images_png/000001_01_01/103.png", "lung lesion", [2, 30, 12, 40]),
    ]
    assert reasons(qrows) == {"split_excluded": 1, "missing_file": 1, "unreferenced_file": 1}
    missing = next(q for q in qrows if q["reason"] == "missing_file")
    assert missing["source_path"] == "Images_png/000002_01_01/162.png" and "line 5" in missing["detail"]


def test_image_path_uses_only_the_pattern_fields(tmp_path: Path) -> None:
    bad = DEEPLESION.replace("Images_png/{series}/{slice}.png'", "Images_png/{series}/{key}.png'")
    with pytest.raises(CatalogError, match="not in image_pattern: key"):
        entry(tmp_path, "deeplesion_bad", "2d_det", bad, modality="CT")


MIDOG = """
reader:
  kind: coco
  annotations: databases/MIDOG++.json
  image_dir: images
  bbox_format: xyxy
  split_table: {file: datasets_xvalidation.csv, key: Slide, column: Dataset, delimiter: ";"}
labels: {"1": mitotic figure, "2": non-mitotic figure}
"""


def _midog(raw: Path, split_rows: list[str]) -> None:
    """MIDOG++ (DeepMicroscopy/MIDOGpp:databases/MIDOG++.json: images NNN.tiff, corner-pair boxes 50 px wide;
    datasets_xvalidation.csv `Slide;Dataset;...`, Slide = image id)."""
    for i in (1, 2, 3):
        photo(raw / f"images/{i:03d}.tiff", seed=i, size=(60, 64))
    coco = {
        "images": [{"id": i, "file_name": f"{i:03d}.tiff", "width": 64, "height": 60} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "not mitotic figure"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 20, 50, 40]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [2, 2, 22, 22]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10, 10, 30, 30]},
            {"id": 4, "image_id": 3, "category_id": 1, "bbox": [10, 10, 30, 30]},
        ],
    }
    write_json(raw / "databases/MIDOG++.json", coco)
    (raw / "datasets_xvalidation.csv").write_text(
        "\n".join(["Slide;Dataset;Tumor;Species", *split_rows]) + "\n"
    )


def test_midog_corner_boxes_and_split_table(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "midogpp"
    _midog(raw, ["1;train;human breast cancer;human", "2;test;canine lymphoma;dog"])
    source = entry(tmp_path, "midogpp", "2d_det", MIDOG, modality="Microscopy")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert sorted((r["source_path"], r["label"], r["bbox"]) for r in rows) == [
        ("images/001.tiff", "mitotic figure", [30, 20, 50, 40]),  # corners, not x + width
        ("images/001.tiff", "non-mitotic figure", [2, 2, 22, 22]),
    ]
    assert reasons(qrows) == {"split_excluded": 1, "split_unknown": 1}  # 003 is in no row


def test_midog_without_its_split_table_trains_on_nothing(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "midogpp"
    _midog(raw, [])
    (raw / "datasets_xvalidation.csv").unlink()
    source = entry(tmp_path, "midogpp", "2d_det", MIDOG, modality="Microscopy")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert rows == [] and reasons(qrows) == {"missing_file": 1, "split_unknown": 4}


GLENDA = """
reader:
  kind: layout
  images: 'frames/{id}.jpg'
  masks: 'annots/**/{id}.png'
  colors:
    values: {'0,0,0': 0, '190,62,204': 1, '93,89,254': 2, '145,210,138': 3, '238,236,50': 4}
    unlisted: UNLISTED
labels: {"1": peritoneal endometriosis, "2": ovarian endometriosis, "3": deep infiltrating endometriosis,
         "4": uterine endometriosis}
"""


def _glenda(raw: Path) -> None:
    """GLENDA v1.5: Glenda_v1.5_classes/frames/<id>.jpg with RGB colour-coded annots/<id>.png, border pixels
    anti-aliased to near-black colours (IMSY-DKFZ/mml:plugins/tasks/src/mml_tasks/creators/segmentation/glenda.py
    class_mapping)."""
    top = raw / "Glenda_v1.5_classes"
    for i in (1, 2):
        photo(top / f"frames/c_{i}_v_{i}_f_{i}.jpg", seed=i, size=(32, 40))
    a = np.zeros((32, 40, 3), np.uint8)
    a[2:12, 4:20] = (190, 62, 204)
    a[20:30, 22:38] = (93, 89, 254)
    a[12, 4:20] = (3, 1, 4)  # anti-aliased border
    write_image(top / "annots/c_1_v_1_f_1.png", a)
    b = np.zeros((32, 40, 3), np.uint8)
    b[4:14, 4:14] = (238, 236, 50)
    b[20:30, 20:30] = (255, 128, 0)  # a colour GLENDA does not define
    write_image(top / "annots/sub/c_2_v_2_f_2.png", b)


def test_glenda_colour_coded_masks_give_boxes(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "glenda"
    _glenda(raw)
    source = entry(tmp_path, "glenda", "2d_det", GLENDA.replace("UNLISTED", "error"), modality="Endoscopy")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    # the near-black border is unlisted too: with `error`, both masks are refused, naming the colours
    assert rows == [] and reasons(qrows) == {"unsupported_mask": 2}
    assert any("(255,128,0)" in q["detail"] and "c_2_v_2_f_2.png" in q["detail"] for q in qrows)

    source = entry(
        tmp_path, "glenda", "2d_det", GLENDA.replace("UNLISTED", "background"), modality="Endoscopy"
    )
    report, rows, qrows = run(source, raw, tmp_path / "out2")
    assert sorted((r["source_path"].split("/", 1)[1], r["label"], r["bbox"]) for r in rows) == [
        ("frames/c_1_v_1_f_1.jpg", "ovarian endometriosis", [22, 20, 38, 30]),
        ("frames/c_1_v_1_f_1.jpg", "peritoneal endometriosis", [4, 2, 20, 12]),
        ("frames/c_2_v_2_f_2.jpg", "uterine endometriosis", [4, 4, 14, 14]),
    ]
    assert qrows == []


def test_colour_keys_are_rgb_triplets(tmp_path: Path) -> None:
    bad = GLENDA.replace("'93,89,254'", "'93,89'").replace("UNLISTED", "error")
    with pytest.raises(CatalogError, match="not an R,G,B triplet"):
        entry(tmp_path, "glenda_bad", "2d_det", bad, modality="Endoscopy")


DERM7PT = """
reader:
  kind: layout
  images: 'images/{folder}/{file}'
  table: {file: meta/meta.csv, image: derm, image_pattern: '{folder}/{file}', image_path: 'images/{folder}/{file}'}
  label: {column: diagnosis}
  split:
    rows: {files: {train: meta/train_indexes.csv, val: meta/valid_indexes.csv, test: meta/test_indexes.csv},
           column: indexes}
"""


def test_derm7pt_splits_list_table_row_positions(tmp_path: Path) -> None:
    """Derm7pt release_v0: meta/{train,valid,test}_indexes.csv list 0-based positions of meta/meta.csv rows
    (jeremykawahara/derm7pt:README.md minimal example reads them with pandas, column `indexes`)."""
    raw = tmp_path / "raw" / "derm7pt" / "release_v0"
    names = ["NEL/Nel026.jpg", "NEL/NEL025.JPG", "FAL/Fal004.jpg", "FAL/Fal009.jpg"]
    for i, n in enumerate(names):
        photo(raw / "images" / n, seed=i)
    meta = ["case_num,diagnosis,seven_point_score,clinic,derm"]
    meta += [
        f"{i + 1},{d},0,{n.replace('.', 'c.')},{n}"
        for i, (n, d) in enumerate(zip(names, ["blue nevus", "melanoma", "lentigo", "melanoma"], strict=True))
    ]
    (raw / "meta").mkdir()
    (raw / "meta/meta.csv").write_text("\n".join(meta) + "\n\n")
    (raw / "meta/train_indexes.csv").write_text("indexes\n0\n2\n")
    (raw / "meta/valid_indexes.csv").write_text("indexes\n1\n")
    (raw / "meta/test_indexes.csv").write_text("indexes\n3\n2\n")  # row 2 listed twice: test wins
    source = entry(tmp_path, "derm7pt", "2d_cls", DERM7PT, modality="Dermoscopy")
    report, rows, qrows = run(source, raw.parent, tmp_path / "out")
    assert [(r["source_path"], r["label"]) for r in rows] == [
        ("release_v0/images/NEL/Nel026.jpg", "blue nevus")
    ]
    assert reasons(qrows) == {"split_excluded": 3}
    assert {q["source_path"]: q["detail"].split("split ")[1][:6] for q in qrows} == {
        "release_v0/images/NEL/NEL025.JPG": "'val' ",
        "release_v0/images/FAL/Fal004.jpg": "'test'",
        "release_v0/images/FAL/Fal009.jpg": "'test'",
    }


LEG = """
reader:
  kind: layout
  images: '{split}/{subject}/x{n}.mha'
  masks: '{split}/{subject}/masksX{n}.mha'
  split: '{split}'
  ignore_values: [1, 50]
labels: {"100": soleus, "150": gastrocnemius medialis, "200": gastrocnemius lateralis}
"""


def test_leg_3d_us_ignored_mask_values(tmp_path: Path) -> None:
    """LEG-3D-US: <split>/<subject>/x*.mha with masks named by replacing x with masksX; values other than 100,
    150, 200 are not structures (constantinpape/torch-em:torch_em/data/datasets/medical/leg_3d_us.py zeroes them)."""
    raw = tmp_path / "raw" / "leg_3d_us"
    rng = np.random.default_rng(1)
    mask = np.zeros((12, 24, 24), np.uint8)  # SimpleITK order (z, y, x)
    mask[2:10, 2:10, 2:10] = 100
    mask[2:10, 12:22, 12:22] = 150
    mask[0:12, 0:2, 0:24] = 50  # a value the task does not define
    for split in ("train", "val"):
        _metaimage(raw / f"{split}/subject01/x1.mha", rng.integers(0, 255, mask.shape).astype(np.uint8))
        _metaimage(raw / f"{split}/subject01/masksX1.mha", mask)
    source = entry(tmp_path, "leg_3d_us", "3d_seg", LEG, modality="Ultrasound", department="Sports Medicine")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert {r["label"] for r in rows} == {"soleus", "gastrocnemius medialis"}
    assert reasons(qrows) == {"split_excluded": 1}
    assert report.counters["mask_pixels_ignored"] == 12 * 2 * 24

    source = entry(
        tmp_path,
        "leg_3d_us",
        "3d_seg",
        LEG.replace("[1, 50]", "unlisted"),
        modality="Ultrasound",
        department="Sports Medicine",
    )
    report, rows, qrows = run(source, raw, tmp_path / "out3")
    assert {r["label"] for r in rows} == {"soleus", "gastrocnemius medialis"}
    assert report.counters["mask_pixels_ignored"] == 12 * 2 * 24

    bad = LEG.replace("[1, 50]", "[1]")
    source = entry(tmp_path, "leg_3d_us", "3d_seg", bad, modality="Ultrasound", department="Sports Medicine")
    report, rows, qrows = run(source, raw, tmp_path / "out2")
    assert rows == [] and reasons(qrows) == {"unknown_label": 1, "split_excluded": 1}


def test_an_ignored_value_cannot_also_be_a_label(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="also in labels"):
        entry(tmp_path, "leg_bad", "3d_seg", LEG.replace("[1, 50]", "[100]"), modality="Ultrasound")


def test_2d_metaimage_in_a_classic_kind(tmp_path: Path) -> None:
    """The same 2D MetaImage decode in the classification path (`image_folder`: <class>/<image>), where a
    uint16 radiograph is percentile-scaled to 8 bits and keeps its size."""
    raw = tmp_path / "raw" / "mhd_cls"
    rng = np.random.default_rng(2)
    _metaimage(raw / "normal/case1.mhd", rng.integers(0, 4000, (30, 20)).astype(np.uint16))
    _metaimage(raw / "pneumonia/case2.mha", rng.integers(0, 4000, (1, 30, 20)).astype(np.uint16))
    source = entry(tmp_path, "mhd_cls", "2d_cls", "reader: {kind: image_folder}", modality="X-Ray")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert sorted((r["source_path"], r["label"], r["width"], r["height"]) for r in rows) == [
        ("normal/case1.mhd", "normal", 20, 30),
        ("pneumonia/case2.mha", "pneumonia", 20, 30),
    ]
    assert qrows == []
