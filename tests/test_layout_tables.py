"""Tables as label, split and box sources, and DICOM as an image format, on real download layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from layout_fixtures import NIH_CLS, dicom_file, entry, nih, photo
from normalize_fixtures import pattern, reasons, run, write_image

from gmai_pipeline.manifest import scan
from gmai_pipeline.normalize import normalize_source, shown_names


def run_on(source, raw: Path, manifest: list[dict], out: Path):
    """Normalize against a given manifest: (report, rows, quarantine rows)."""
    report = normalize_source(source, raw, manifest, out)
    q = pq.read_table(out / "quarantine" / f"{source.name}.parquet").to_pylist()
    return report, pq.read_table(out / "normalized" / f"{source.name}.parquet").to_pylist(), q


def test_nih_multi_labels_split_lists_and_lookup_across_folders(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "nih"
    nih(raw)
    source = entry(tmp_path, "nih", "2d_cls", NIH_CLS)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (5, 4)  # one input per label; the test-list image is excluded
    assert reasons(qrows) == {"split_excluded": 1}
    got = sorted((r["source_path"], r["label"]) for r in rows)
    assert got == [
        ("images_001/images/00000001_000.png", "cardiomegaly"),
        ("images_001/images/00000001_001.png", "cardiomegaly"),
        ("images_001/images/00000001_001.png", "emphysema"),
        ("images_002/images/00000002_000.png", "no finding"),
    ]
    assert len({r["image"] for r in rows if r["source_path"].endswith("001_001.png")}) == 1  # stored once


def test_nih_boxes_by_column_index_xywh(tmp_path: Path) -> None:
    """BBox_List_2017.csv's header is `Image Index,Finding Label,Bbox [x,y,w,h],,,` (torchxrayvision reads it
    with its own names): boxes by column index."""
    raw = tmp_path / "raw" / "nih"
    nih(raw)
    source = entry(
        tmp_path,
        "nih_boxes",
        "2d_det",
        """
        reader:
          kind: layout
          images: "images_*/images/*.png"
          table: {file: BBox_List_2017.csv, image: 0}
          label: {column: 1}
          boxes: {columns: [2, 3, 4, 5], format: xywh}
        """,
        modality="X-Ray",
        department="Pulmonary Medicine",
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert sorted((r["source_path"].rsplit("/", 1)[-1], r["label"], r["bbox"]) for r in rows) == [
        ("00000001_000.png", "Cardiomegaly", [10, 12, 41, 32]),
        ("00000001_001.png", "Cardiomegaly", [5, 6, 15, 16]),
    ]
    assert reasons(qrows) == {"box_outside_image": 1, "unreferenced_file": 2}


def _chexpert(raw: Path) -> None:
    """CheXpert-v1.0-small/{train,valid}.csv whose Path column starts with CheXpert-v1.0-small/ (header as in
    torchxrayvision's chexpert_train.csv.gz; IMSY-DKFZ/mml:plugins/tasks/src/mml_tasks/creators/classification/chexpert.py
    joins the download folder with row["Path"]); -1 means uncertain."""
    top = raw / "CheXpert-v1.0-small"
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Edema,Pleural Effusion\n"
    train = [
        ("train/patient00001/study1/view1_frontal.jpg", "1.0,,,0.0"),
        ("train/patient00002/study2/view1_frontal.jpg", ",-1.0,1.0,"),
        ("train/patient00002/study1/view1_frontal.jpg", ",,,"),
    ]
    valid = [("valid/patient64541/study1/view1_frontal.jpg", "0.0,1.0,0.0,1.0")]
    for name, rows in (("train.csv", train), ("valid.csv", valid)):
        text = header + "".join(f"CheXpert-v1.0-small/{p},Female,68,Frontal,AP,{v}\n" for p, v in rows)
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_text(text)
        for i, (p, _) in enumerate(rows):
            photo(top / p, seed=i + 10 * len(rows), size=(32, 32), rgb=False, quality=90)


def test_chexpert_one_hot_columns_with_an_uncertainty_policy(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "chexpert"
    _chexpert(raw)
    source = entry(
        tmp_path,
        "chexpert",
        "2d_cls",
        """
        reader:
          kind: layout
          images: "{split}/{patient}/{study}/{view}.jpg"
          table: {file: [train.csv, valid.csv], image: Path}
          label:
            columns: [No Finding, Cardiomegaly, Edema, Pleural Effusion]
            uncertain: {values: ["-1.0", "-1"], policy: quarantine}
        labels: {No Finding: no finding, Cardiomegaly: cardiomegaly, Edema: pulmonary edema, Pleural Effusion: pleural effusion}
        splits: [train, val]
        """,
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert report.layout_root == "CheXpert-v1.0-small"
    got = sorted((r["source_path"].split("/", 2)[2], r["label"], r["split"]) for r in rows)
    assert got == [
        ("patient00001/study1/view1_frontal.jpg", "no finding", "train"),
        ("patient00002/study2/view1_frontal.jpg", "pulmonary edema", "train"),
        ("patient64541/study1/view1_frontal.jpg", "cardiomegaly", "val"),
        ("patient64541/study1/view1_frontal.jpg", "pleural effusion", "val"),
    ]
    assert reasons(qrows) == {"uncertain_label": 1, "missing_label": 1}  # -1 cardiomegaly; an all-blank row


def test_isic2019_one_hot_ground_truth_and_images_by_id(tmp_path: Path) -> None:
    """ISIC_2019_Training_GroundTruth.csv (image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK; 1.0/0.0) beside
    ISIC_2019_Training_Input/<image>.jpg (JBuendia98/ISIC2019_TFM:data/README.md; the ISIC 2019 challenge page)."""
    raw = tmp_path / "raw" / "isic2019"
    cols = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    lines = ["image," + ",".join(cols) + "\n"]
    for i, (ident, hot) in enumerate(
        (("ISIC_0000000", "NV"), ("ISIC_0000002", "MEL"), ("ISIC_0000004_downsampled", "MEL"))
    ):
        photo(raw / "ISIC_2019_Training_Input" / f"{ident}.jpg", seed=i, quality=90)
        lines.append(ident + "," + ",".join("1.0" if c == hot else "0.0" for c in cols) + "\n")
    (raw / "ISIC_2019_Training_Input" / "LICENSE.txt").write_text("CC-BY-NC")
    (raw / "ISIC_2019_Training_GroundTruth.csv").write_text("".join(lines))
    (raw / "ISIC_2019_Training_Metadata.csv").write_text(
        "image,age_approx,anatom_site_general,lesion_id,sex\n"
    )
    source = entry(
        tmp_path,
        "isic2019",
        "2d_cls",
        """
        reader:
          kind: layout
          images: "ISIC_2019_Training_Input/*.jpg"
          table: {file: ISIC_2019_Training_GroundTruth.csv, image: image}
          label: {columns: [MEL, NV, BCC, AK, BKL, DF, VASC, SCC, UNK]}
        labels: {MEL: melanoma, NV: melanocytic nevus}
        """,
        modality="Dermoscopy",
        department="Dermatology",
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.kept, qrows) == (3, [])
    assert sorted(r["label"] for r in rows) == ["melanocytic nevus", "melanoma", "melanoma"]


def test_ham10000_metadata_table_with_images_in_two_folders(tmp_path: Path) -> None:
    """HAM10000_metadata.csv (lesion_id,image_id,dx,dx_type,age,sex,localization) with the images split over
    HAM10000_images_part_1/ and HAM10000_images_part_2/ (Kaggle kmader/skin-cancer-mnist-ham10000;
    Harvard Dataverse doi:10.7910/DVN/DBW86T)."""
    raw = tmp_path / "raw" / "ham10000"
    meta = ["lesion_id,image_id,dx,dx_type,age,sex,localization\n"]
    for i, (part, ident, dx) in enumerate(
        (("1", "ISIC_0027419", "bkl"), ("2", "ISIC_0031633", "nv"), ("2", "ISIC_0032417", "mel"))
    ):
        photo(raw / f"HAM10000_images_part_{part}" / f"{ident}.jpg", seed=i, quality=90)
        meta.append(f"HAM_000{i},{ident},{dx},histo,80.0,male,scalp\n")
    (raw / "HAM10000_metadata.csv").write_text("".join(meta))
    source = entry(
        tmp_path,
        "ham10000",
        "2d_cls",
        """
        reader:
          kind: layout
          images: ["HAM10000_images_part_1/*.jpg", "HAM10000_images_part_2/*.jpg"]
          table: {file: HAM10000_metadata.csv, image: image_id}
          label: {column: dx}
        labels: {bkl: benign keratosis-like lesion, nv: melanocytic nevus, mel: melanoma}
        """,
        modality="Dermoscopy",
        department="Dermatology",
    )
    report, rows, _ = run(source, raw, tmp_path / "out")
    assert report.kept == 3
    assert {r["source_path"].split("/")[0] for r in rows} == {
        "HAM10000_images_part_1",
        "HAM10000_images_part_2",
    }


def test_layout_reads_are_verified_against_the_scan(tmp_path: Path) -> None:
    """The hardening promise holds for the layout reader: after the scan, an image swapped for a link is
    refused (never followed), an edited image is `content_changed`, and an edited label table is one
    `content_changed` input (its images then have no row), each naming the file; the rest goes on."""
    from normalize_fixtures import NormalizeReport

    raw = tmp_path / "raw" / "ham"
    for i in range(4):
        photo(raw / "images" / f"ISIC_{i:07d}.jpg", seed=i, quality=90)
    (raw / "meta.csv").write_text("image_id,dx\n" + "".join(f"ISIC_{i:07d},nv\n" for i in range(4)))
    source = entry(
        tmp_path,
        "ham",
        "2d_cls",
        """
        reader:
          kind: layout
          images: "images/*.jpg"
          table: {file: meta.csv, image: image_id}
          label: {column: dx}
        labels: {nv: melanocytic nevus}
        """,
        modality="Dermoscopy",
        department="Dermatology",
    )
    rows = scan(raw, shown=shown_names(source))
    (raw / "images" / "ISIC_0000001.jpg").unlink()
    (raw / "images" / "ISIC_0000001.jpg").symlink_to(raw / "images" / "ISIC_0000000.jpg")
    photo(raw / "images" / "ISIC_0000002.jpg", seed=9, quality=90)
    report: NormalizeReport = normalize_source(source, raw, rows, tmp_path / "out")
    q = {
        r["source_path"]: r
        for r in pq.read_table(tmp_path / "out" / "quarantine" / "ham.parquet").to_pylist()
    }
    assert (report.kept, {k: v["reason"] for k, v in q.items()}) == (
        2,
        {
            "images/ISIC_0000001.jpg": "path_refused",  # the manifest row: never read through the link
            "ISIC_0000001": "missing_file",  # the table row naming it: no usable file left
            "images/ISIC_0000002.jpg": "content_changed",
        },
    )
    assert all(k in v["detail"] for k, v in q.items())
    (raw / "meta.csv").write_text("image_id,dx\n" + "".join(f"ISIC_{i:07d},mel\n" for i in range(4)))
    report = normalize_source(source, raw, rows, tmp_path / "out2")
    q2 = pq.read_table(tmp_path / "out2" / "quarantine" / "ham.parquet").to_pylist()
    assert report.kept == 0 and report.inputs == report.quarantined
    assert {r["reason"] for r in q2 if r["source_path"] == "meta.csv"} == {"content_changed"}


def test_odir5k_xlsx_table(tmp_path: Path) -> None:
    """ODIR-5K on Kaggle: ODIR-5K/ODIR-5K/data.xlsx (ID, Patient Age, Patient Sex, Left-Fundus, Right-Fundus,
    Left-Diagnostic Keywords, ...) and ODIR-5K/ODIR-5K/Training Images/<n>_left.jpg (Xritsos/RetViT:EDA/EDA.py);
    keywords are separated by a full-width comma."""
    import openpyxl

    raw = tmp_path / "raw" / "odir"
    top = raw / "ODIR-5K" / "ODIR-5K"
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords"])
    ws.append([0, 69, "Female", "0_left.jpg", "0_right.jpg", "cataract"])
    ws.append([1, 57, "Male", "1_left.jpg", "1_right.jpg", "normal fundus"])
    ws.append([2, 42, "Male", "2_left.jpg", "2_right.jpg", "moderate non proliferative retinopathy，drusen"])
    top.mkdir(parents=True)
    wb.save(top / "data.xlsx")
    for i in range(3):
        photo(top / "Training Images" / f"{i}_left.jpg", seed=i, quality=90)
    source = entry(
        tmp_path,
        "odir",
        "2d_cls",
        """
        reader:
          kind: layout
          images: "Training Images/*_left.jpg"
          table: {file: data.xlsx, image: Left-Fundus}
          label: {column: Left-Diagnostic Keywords, delimiter: "，"}
        """,
        modality="Fundus",
        department="Ophthalmology",
    )
    report, rows, _ = run(source, raw, tmp_path / "out")
    assert report.layout_root == "ODIR-5K/ODIR-5K"
    assert sorted(r["label"] for r in rows) == [
        "cataract",
        "drusen",
        "moderate non proliferative retinopathy",
        "normal fundus",
    ]


# ------------------------------------------------------------------ detection from tables, DICOM images


def _vindr(raw: Path) -> None:
    """Kaggle vinbigdata-chest-xray-abnormalities-detection: train.csv (image_id,class_name,class_id,rad_id,
    x_min,y_min,x_max,y_max; `No finding` rows have empty boxes; three radiologists per image) and
    train/<image_id>.dicom (mlmed/torchxrayvision:torchxrayvision/datasets.py VinBrain_Dataset)."""
    a, b = "9a5094b2563a1ef3ff50dc5c7ff71345", "50a418190bc3fb1ef1633bf9678929b3"
    dicom_file(raw / "train" / f"{a}.dicom", pattern(64, 64, seed=1).astype(np.uint16) * 16, modality="DX")
    dicom_file(raw / "train" / f"{b}.dicom", pattern(64, 64, seed=2).astype(np.uint16) * 16, modality="DX")
    (raw / "train.csv").write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        f"{a},Cardiomegaly,3,R10,20.0,30.0,50.0,50.0\n"
        f"{a},Cardiomegaly,3,R9,22.0,30.0,52.0,52.0\n"
        f"{a},No finding,14,R8,,,,\n"
        f"{a},Nodule/Mass,8,R9,2.0,2.0,8.0,9.0\n"
        f"{b},No finding,14,R11,,,,\n"
        f"{b},No finding,14,R7,,,,\n"
    )


VINDR = """
reader:
  kind: layout
  images: "train/*.dicom"
  table: {file: train.csv, image: image_id}
  label: {column: class_name}
  boxes:
    columns: [x_min, y_min, x_max, y_max]
    format: xyxy
    no_finding: {class_name: No finding}
  annotators: {column: rad_id, policy: POLICY}
  filters: FILTERS
labels: {Cardiomegaly: cardiomegaly, Nodule/Mass: nodule or mass, No finding: no finding}
"""


@pytest.mark.parametrize(
    ("policy", "filters", "kept", "quarantined"),
    [
        ("merge", "{}", 2, {"no_finding": 1}),
        ("all", "{}", 3, {"no_finding": 3}),
        ("first", "{}", 0, {"no_finding": 2}),
        ("all", "{rad_id: [R9]}", 2, {}),  # only R9's rows: image b, with none, is filtered out, not an input
    ],
)
def test_vindr_dicom_boxes_no_finding_rows_and_annotator_policy(
    tmp_path, policy, filters, kept, quarantined
) -> None:
    raw = tmp_path / "raw" / "vindr"
    _vindr(raw)
    source = entry(
        tmp_path,
        "vindr",
        "2d_det",
        VINDR.replace("POLICY", policy).replace("FILTERS", filters),
        modality="X-Ray",
        department="Pulmonary Medicine",
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.kept, reasons(qrows)) == (kept, quarantined)
    assert all(r["image"].endswith(".png") for r in rows)
    if policy == "merge":
        cardio = [r["bbox"] for r in rows if r["label"] == "cardiomegaly"]
        assert cardio == [[21, 30, 51, 51]]  # the two radiologists' boxes, averaged


def test_rsna_pneumonia_dicom_named_by_patient_id_is_pseudonymous(tmp_path: Path) -> None:
    """Kaggle rsna-pneumonia-detection-challenge: stage_2_train_labels.csv (patientId,x,y,width,height,Target;
    Target 0 rows have no box) and stage_2_train_images/<patientId>.dcm, whose PatientID is the same id
    (torchxrayvision RSNA_Pneumonia_Dataset; its kaggle_stage_2_train_labels.csv.zip)."""
    raw = tmp_path / "raw" / "rsna"
    sick, healthy = "00436515-870c-4b36-a041-de91049b9ab4", "0004cfab-14fd-4e49-80ba-63a80b6bddd6"
    for i, pid in enumerate((sick, healthy)):
        dicom_file(raw / "stage_2_train_images" / f"{pid}.dcm", pattern(64, 64, seed=i) * 8, patient_id=pid)
    (raw / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\n"
        f"{healthy},,,,,0\n"
        f"{sick},10.0,12.0,20.0,30.0,1\n"
        f"{sick},40.0,5.0,12.0,20.0,1\n"
    )
    source = entry(
        tmp_path,
        "rsna",
        "2d_det",
        """
        reader:
          kind: layout
          images: "stage_2_train_images/*.dcm"
          table: {file: stage_2_train_labels.csv, image: patientId}
          label: {column: Target}
          boxes: {columns: [x, y, width, height], format: xywh, no_finding: {Target: "0"}}
        labels: {"1": lung opacity}
        """,
        modality="X-Ray",
        department="Pulmonary Medicine",
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.kept, reasons(qrows)) == (2, {"no_finding": 1})
    assert sorted(r["bbox"] for r in rows) == [[10, 12, 30, 42], [40, 5, 52, 25]]
    out = tmp_path / "out"
    written = (
        b"".join(p.read_bytes() for p in out.rglob("*.parquet"))
        + "".join(str(p) for p in out.rglob("*")).encode()
    )
    manifest = str(scan(raw, shown=shown_names(source)))  # what manifests/rsna.parquet and the UI show
    for pid in (sick, healthy):
        assert pid.encode() not in written and pid.split("-")[0].encode() not in written
        assert pid not in manifest and pid.split("-")[0] not in manifest
    # A manifest scanned before DICOM names were masked in every 2D reader still matches its files.
    old, _, old_q = run_on(source, raw, scan(raw), tmp_path / "old")
    assert old.kept == report.kept and reasons(old_q) == {"no_finding": 1}


def _dicom_layouts(raw: Path, kind: str) -> dict:
    """One DICOM image laid out for each classic 2D reader."""
    px = pattern(48, 48, seed=3).astype(np.uint16) * 16
    if kind == "image_folder":
        dicom_file(raw / "pneumonia" / "a.dcm", px)
        return {"kind": "image_folder"}
    if kind == "csv_labels":
        dicom_file(raw / "images" / "a.dcm", px)
        (raw / "labels.csv").write_text("image,label\na.dcm,pneumonia\n")
        return {"kind": "csv_labels", "image_dir": "images"}
    if kind == "coco":
        dicom_file(raw / "images" / "a.dcm", px)
        (raw / "annotations.json").write_text(
            '{"images": [{"id": 1, "file_name": "a.dcm"}], "categories": [{"id": 1, "name": "pneumonia"}],'
            '"annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 10]}]}'
        )
        return {"kind": "coco", "image_dir": "images"}
    if kind == "voc":
        dicom_file(raw / "JPEGImages" / "a.dcm", px)
        (raw / "Annotations").mkdir(parents=True)
        (raw / "Annotations" / "a.xml").write_text(
            "<annotation><filename>a.dcm</filename><object><name>pneumonia</name><bndbox><xmin>5</xmin>"
            "<ymin>5</ymin><xmax>14</xmax><ymax>14</ymax></bndbox></object></annotation>"
        )
        return {"kind": "voc"}
    if kind == "yolo":
        dicom_file(raw / "images" / "a.dcm", px)
        (raw / "labels").mkdir(parents=True)
        (raw / "labels" / "a.txt").write_text("0 0.25 0.25 0.2 0.2\n")
        (raw / "classes.txt").write_text("pneumonia\n")
        return {"kind": "yolo"}
    dicom_file(raw / "images" / "a.dcm", px)
    mask = np.zeros((48, 48), np.uint8)
    mask[10:30, 10:30] = 1
    write_image(raw / "masks" / "a.png", mask)
    return {"kind": "mask_pairs"}


@pytest.mark.parametrize("kind", ["image_folder", "csv_labels", "coco", "voc", "yolo", "mask_pairs"])
def test_every_2d_reader_reads_dicom_under_the_privacy_rules(tmp_path: Path, kind: str) -> None:
    """The classic kinds on DICOM images (as CBIS-DDSM, RSNA and VinDr ship them): pixels become a PNG, a file
    whose name holds its PatientID is pseudonymous, a burned-in-text risk is quarantined."""
    from normalize_fixtures import make_source

    raw = tmp_path / "raw" / "ds"
    reader = _dicom_layouts(raw, kind)
    task = {"coco": "2d_det", "voc": "2d_det", "yolo": "2d_det", "mask_pairs": "2d_seg"}.get(kind, "2d_cls")
    labels = {"1": "pneumonia"} if kind == "mask_pairs" else {"pneumonia": "pneumonia"}
    source = make_source("ds", task, reader, labels=labels, modality="X-Ray", department="Pulmonary Medicine")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert report.kept == 1 and qrows == [], qrows
    assert rows[0]["image"].endswith("a.png") and rows[0]["width"] == 48

    folder = next(p.parent for p in raw.rglob("a.dcm"))
    (folder / "a.dcm").rename(folder / "PAT-7731.dcm")
    dicom_file(folder / "PAT-7731.dcm", pattern(48, 48, seed=3).astype(np.uint16) * 16, patient_id="PAT-7731")
    for p in raw.rglob("*"):
        if p.is_file() and p.suffix in (".csv", ".json", ".xml") or p.name == "a.txt" or p.name == "a.png":
            if p.suffix in (".csv", ".json", ".xml"):
                p.write_text(p.read_text().replace("a.dcm", "PAT-7731.dcm"))
            else:
                p.rename(p.with_name("PAT-7731" + p.suffix))
    report, rows, qrows = run(source, raw, tmp_path / "out2")
    assert report.kept == 1, qrows
    assert "PAT-7731" not in rows[0]["source_path"] and "PAT-7731" not in rows[0]["image"]

    risky = {"modality": "US", "BurnedInAnnotation": "", "patient_id": "PAT-7731"}
    dicom_file(folder / "PAT-7731.dcm", pattern(48, 48, seed=3).astype(np.uint16) * 16, **risky)
    report, _, qrows = run(source, raw, tmp_path / "out3")
    assert reasons(qrows) == {"burned_in_text_risk": 1} and "PAT-7731" not in qrows[0]["detail"]
    if kind == "mask_pairs":  # a mask named after the image is shown as pseudonymously as the image
        dicom_file(
            folder / "PAT-7731.dcm", pattern(48, 48, seed=3).astype(np.uint16) * 16, patient_id="PAT-7731"
        )
        write_image(raw / "masks" / "PAT-7731.png", np.zeros((48, 48), np.uint8))
        _, _, qrows = run(source, raw, tmp_path / "out4")
        assert reasons(qrows) == {"empty_mask": 1} and "PAT-7731" not in str(qrows)


def test_unknown_table_column_is_a_clear_quarantined_input(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "nih"
    nih(raw)
    source = entry(tmp_path, "nih", "2d_cls", NIH_CLS.replace("column: Finding Labels", "column: Findings"))
    report, _, qrows = run(source, raw, tmp_path / "out")
    table = [q for q in qrows if q["source_path"] == "Data_Entry_2017.csv"]
    assert table and "['Findings'] not in the header" in table[0]["detail"]
    assert pq.read_metadata(tmp_path / "out" / "normalized" / "nih.parquet").num_rows == 0


def test_siim_covid19_boxes_as_a_list_in_one_cell(tmp_path: Path) -> None:
    """Kaggle siim-covid19-detection: train_image_level.csv (id,boxes,label,StudyInstanceUID) whose `boxes`
    cell is a Python list of {'x','y','width','height'} dicts and whose id is `<image>_image`, with the DICOM
    files at train/<study>/<series>/<image>.dcm (b02202050/2021-SIIM-COVID19-Detection:README.md; public
    notebooks glob train/*/*/*.dcm and parse `boxes` with ast)."""
    raw = tmp_path / "raw" / "siim_covid"
    a, b = "65761e66de9f", "000c9c05fd14"
    dicom_file(raw / "train" / "00086460a852" / "9e8302230c91" / f"{a}.dcm", pattern(64, 64, seed=5) * 8)
    dicom_file(raw / "train" / "000c9c05fd14" / "e555410bd2cd" / f"{b}.dcm", pattern(64, 64, seed=6) * 8)
    (raw / "train_image_level.csv").write_text(
        "id,boxes,label,StudyInstanceUID\n"
        f"{a}_image,\"[{{'x': 10.5, 'y': 4.0, 'width': 20.0, 'height': 30.0}}, {{'x': 40.0, 'y': 8.0, 'width': 12.0, "
        f"'height': 20.0}}]\",opacity 1 10.5 4 30.5 34 opacity 1 40 8 52 28,00086460a852\n"
        f"{b}_image,,none 1 0 0 1 1,000c9c05fd14\n"
    )
    source = entry(
        tmp_path,
        "siim_covid",
        "2d_det",
        """
        reader:
          kind: layout
          images: "train/{study}/{series}/{stem}.dcm"
          table: {file: train_image_level.csv, image: id, image_pattern: "{stem}_image"}
          label: {value: opacity}
          boxes: {column: boxes, format: xywh, no_finding: {label: {glob: "none *"}}}
        labels: {opacity: lung opacity}
        """,
        modality="X-Ray",
        department="Pulmonary Medicine",
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.kept, reasons(qrows)) == (2, {"no_finding": 1})
    assert sorted(r["bbox"] for r in rows) == [[10, 4, 31, 34], [40, 8, 52, 28]]
    assert {r["label"] for r in rows} == {"lung opacity"}


def test_a_table_without_a_header_row_keeps_its_first_line(tmp_path: Path) -> None:
    """OIA-DDR ships DR_grading/{train,valid,test}.txt as `<file> <grade>` lines with no header
    (nkicsl/DDR-dataset README); the first image of each list is data, not a header."""
    raw = tmp_path / "raw" / "ddr"
    lines = {
        "train": [("007-0004-000.jpg", 0), ("007-0007-000.jpg", 2)],
        "valid": [("20170413102628830.jpg", 4)],
    }
    seed = 0
    for split, items in lines.items():
        for file, _ in items:
            seed += 1
            photo(raw / "DR_grading" / split / file, seed=seed)
        (raw / "DR_grading" / f"{split}.txt").write_text("".join(f"{f} {g}\n" for f, g in items))
    body = """
        reader:
          kind: layout
          images: "DR_grading/{split}/{file}"
          split: "{split}"
          table: {file: [DR_grading/train.txt, DR_grading/valid.txt], image: image, names: [image, grade],
                  delimiter: " ", header: false}
          label: {column: grade}
        labels: {"0": no diabetic retinopathy, "2": moderate DR, "4": proliferative DR}
        """
    source = entry(tmp_path, "ddr", "2d_cls", body, modality="Fundus", department="Ophthalmology")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert sorted((r["source_path"].split("/")[-1], r["label"]) for r in rows) == [
        ("007-0004-000.jpg", "no diabetic retinopathy"),
        ("007-0007-000.jpg", "moderate DR"),
    ]
    assert reasons(qrows) == {"split_excluded": 1}
