"""Layouts as declarations: each test lays out tiny files at the real relative paths of a dataset that
ships that way (the evidence is named in the test), writes its catalog entry as YAML, and normalizes it
from the manifest the `source/<name>` asset writes (`scan`); some go through Dagster itself."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from layout_fixtures import box_label, ct_volume, disk_mask, entry, nifti, photo
from normalize_fixtures import reasons, run, write_image

from gmai_pipeline.imaging import ImageError
from gmai_pipeline.manifest import scan
from gmai_pipeline.readers.base import ReaderContext

# ------------------------------------------------------------------ 3D: templates, wrappers, archives


def test_acdc_frames_and_gt_by_template_inside_the_zip_top_folder(tmp_path: Path) -> None:
    """ACDC.zip unpacks to ACDC/database/{training,testing}/patientNNN/patientNNN_frameNN[_gt].nii.gz, beside
    patientNNN_4d.nii.gz and Info.cfg (constantinpape/torch-em:torch_em/data/datasets/medical/acdc.py)."""
    raw = tmp_path / "raw" / "acdc"
    db = raw / "ACDC" / "database"
    for split, patient in (("training", "patient001"), ("testing", "patient101")):
        for frame, seed in (("01", 1), ("12", 2)):
            nifti(
                db / split / patient / f"{patient}_frame{frame}.nii.gz", ct_volume(seed=seed, low=0, high=900)
            )
            lab = box_label(value=1)
            lab[8:12, 8:12, 1:4] = 3  # left ventricle inside the right-ventricle blob
            nifti(db / split / patient / f"{patient}_frame{frame}_gt.nii.gz", lab)
        nifti(db / split / patient / f"{patient}_4d.nii.gz", ct_volume((24, 24, 6, 3)))
        (db / split / patient / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: DCM\n")
    source = entry(
        tmp_path,
        "acdc",
        "3d_seg",
        r"""
        reader:
          kind: layout
          root: database
          images: '{split}/{case}/{case}_frame{n:\d+}.nii.gz'  # single quotes: YAML keeps the backslash
          masks: "{split}/{case}/{case}_frame{n}_gt.nii.gz"
          split: "{split}"
          axes: [2]
        labels: {"1": right ventricle, "2": myocardium, "3": left ventricle}
        """,
        modality="MR",
        department="Cardiovascular Surgery",
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert report.layout_root == "ACDC/database"  # the zip's top folder was descended into
    assert (report.inputs, report.kept) == (4, 2)
    assert reasons(qrows) == {"split_excluded": 2}  # the official test patients never reach training
    assert {r["source_path"] for r in rows} == {
        "ACDC/database/training/patient001/patient001_frame01.nii.gz",
        "ACDC/database/training/patient001/patient001_frame12.nii.gz",
    }
    assert {r["label"] for r in rows} == {"right ventricle", "left ventricle"}
    assert all(r["modality"] == "MR" and r["image"].startswith("images/3d/seg/mr/acdc/") for r in rows)
    assert "ACDC/database/training/patient001/patient001_4d.nii.gz" in report.ignored  # not an input
    assert report.cases == 2 and report.images == 4


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _nifti_bytes(arr: np.ndarray, tmp: Path) -> bytes:
    return nifti(tmp, arr).read_bytes()


BTCV = r"""
reader:
  kind: layout
  images: "RawData/Training/img/img{id}.nii.gz"
  masks: "RawData/Training/label/label{id}.nii.gz"
  filters: {id: {max: 40}}
  axes: [2]
  {unpack}
labels: {"1": spleen, "6": liver}
"""


def _btcv_zip(tmp_path: Path, raw: Path) -> None:
    """Synapse's RawData.zip holds RawData/Training/img/img0001.nii.gz and RawData/Training/label/label0001.nii.gz
    (constantinpape/torch-em:torch_em/data/datasets/medical/btcv.py)."""
    members = {}
    for i, case in enumerate(("0001", "0002", "0041")):
        members[f"RawData/Training/img/img{case}.nii.gz"] = _nifti_bytes(
            ct_volume(seed=i), tmp_path / "t.nii.gz"
        )
        members[f"RawData/Training/label/label{case}.nii.gz"] = _nifti_bytes(
            box_label(value=6), tmp_path / "t.nii.gz"
        )
    members["__MACOSX/RawData/._img0001.nii.gz"] = b"resource fork"
    members["../escape.nii.gz"] = b"zip slip"
    _zip(raw / "RawData.zip", members)


def test_btcv_archive_is_named_when_packed_and_unpacked_on_request(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "btcv"
    _btcv_zip(tmp_path, raw)
    packed = entry(tmp_path, "btcv", "3d_seg", BTCV.replace("{unpack}", ""))
    from gmai_pipeline.manifest import scan
    from gmai_pipeline.normalize import normalize_source

    report = normalize_source(packed, raw, scan(raw), tmp_path / "out")
    message = report.failure_message()
    assert report.inputs == 0 and message is not None
    assert (
        "RawData.zip" in message
        and "unpack: [RawData.zip]" in message
        and "https://example.org/btcv" in message
    )

    source = entry(tmp_path, "btcv", "3d_seg", BTCV.replace("{unpack}", "unpack: [RawData.zip]"))
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (2, 2)  # img0041 is filtered out (id range), not an input
    assert report.counters["filtered_by_id"] == 1
    assert {r["source_path"] for r in rows} == {
        "RawData/Training/img/img0001.nii.gz",
        "RawData/Training/img/img0002.nii.gz",
    }
    assert {r["label"] for r in rows} == {"liver"}
    assert (tmp_path / "out" / "unpacked" / "btcv").is_dir() and not (raw / "RawData").exists()
    assert not (tmp_path / "out" / "unpacked" / "escape.nii.gz").exists()
    again, _, _ = run(source, raw, tmp_path / "out2")  # a second run reuses the cache
    assert again.kept == 2


def test_multi_part_and_split_archives(tmp_path: Path) -> None:
    """`x.zip.001, .002` and `split`-style `x.tar.gz.aa, .ab` are joined; a spanned zip (`.z01`) is refused with
    the command that joins it."""
    from gmai_pipeline.readers.archives import ArchiveError, find_archives, unpack

    raw = tmp_path / "raw"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("images/a.png", b"x" * 100)
    data = buf.getvalue()
    (raw / "sub").mkdir(parents=True)
    (raw / "sub" / "imgs.zip.001").write_bytes(data[:50])
    (raw / "sub" / "imgs.zip.002").write_bytes(data[50:])
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w:gz") as tf:
        info = tarfile.TarInfo("labels/b.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    tdata = tbuf.getvalue()
    (raw / "labels.tar.gz.aa").write_bytes(tdata[:20])
    (raw / "labels.tar.gz.ab").write_bytes(tdata[20:])
    (raw / "big.z01").write_bytes(b"part")
    (raw / "big.zip").write_bytes(b"end")
    (raw / "scan.nii.gz").write_bytes(b"not an archive")
    paths = [p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file()]
    archives = {a.name: a for a in find_archives(paths)}
    assert set(archives) == {"sub/imgs.zip", "labels.tar.gz", "big.zip"}
    ctx = _archive_ctx(raw)
    members = unpack(ctx, archives["sub/imgs.zip"], tmp_path / "cache")
    assert set(members) == {"sub/images/a.png"}
    folder, member, md5 = members["sub/images/a.png"]
    assert (folder / member).read_bytes() == b"x" * 100 and md5 == hashlib.md5(b"x" * 100).hexdigest()
    assert set(unpack(ctx, archives["labels.tar.gz"], tmp_path / "cache")) == {"labels/b.txt"}
    try:
        unpack(ctx, archives["big.zip"], tmp_path / "cache")
        raise AssertionError("a spanned zip must be refused")
    except ArchiveError as err:
        assert "zip -s 0" in err.detail


def _archive_ctx(raw: Path) -> ReaderContext:
    """A reader context over `raw` as the source scan sees it (only what unpacking uses)."""
    rows = scan(raw)
    return ReaderContext(None, raw, {r["path"]: r["md5"] for r in rows if not r["refused"]}, None)  # type: ignore[arg-type]


def test_archives_are_verified_before_unpacking_and_members_when_read(tmp_path: Path) -> None:
    """The hardening promise for archives: a part whose bytes changed since the scan is not unpacked
    (`content_changed`), and a cached member that was altered, or replaced by a link, is refused on read."""
    from gmai_pipeline.readers.archives import ArchiveError, find_archives, unpack

    raw = tmp_path / "raw"
    raw.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("images/a.png", b"a" * 64)
        zf.writestr("images/b.png", b"b" * 64)
    (raw / "imgs.zip").write_bytes(buf.getvalue())
    ctx = _archive_ctx(raw)
    (archive,) = find_archives(ctx.files)
    data = buf.getvalue()
    (raw / "imgs.zip").write_bytes(data[:40] + bytes([data[40] ^ 1]) + data[41:])  # changed after the scan
    with pytest.raises(ArchiveError) as info:
        unpack(ctx, archive, tmp_path / "cache")
    assert info.value.reason == "content_changed" and "imgs.zip" in info.value.detail
    assert not any((tmp_path / "cache").glob("*/files"))  # nothing unpacked from changed bytes
    (raw / "imgs.zip").write_bytes(buf.getvalue())
    for rel, (folder, member, md5) in unpack(ctx, archive, tmp_path / "cache").items():
        ctx.files[rel], ctx.unpacked[rel] = md5, (folder, member)
    assert ctx.read("images/a.png") == b"a" * 64
    folder, member = ctx.unpacked["images/a.png"]
    (folder / member).write_bytes(b"A" * 64)
    (folder / "images/b.png").unlink()
    (folder / "images/b.png").symlink_to(folder / member)
    with pytest.raises(ImageError) as changed:
        ctx.read("images/a.png")
    with pytest.raises(ImageError) as linked:
        ctx.read("images/b.png")
    assert (changed.value.reason, linked.value.reason) == ("content_changed", "path_refused")


def test_msd_task_tar_unpacked_on_request_beside_its_archive(tmp_path: Path) -> None:
    """MSD ships Task09_Spleen.tar holding Task09_Spleen/{dataset.json,imagesTr,labelsTr,imagesTs} with macOS
    `._` files beside the volumes (http://medicaldecathlon.com/; MIC-DKFZ/nnUNet:nnunetv2/dataset_conversion/
    convert_MSD_dataset.py reads the extracted folder)."""
    raw = tmp_path / "raw" / "msd_spleen"
    raw.mkdir(parents=True)
    scratch = tmp_path / "scratch"
    nifti(scratch / "img.nii.gz", ct_volume(seed=1))
    nifti(scratch / "lab.nii.gz", box_label(value=1))
    meta = {
        "labels": {"0": "background", "1": "spleen"},
        "training": [{"image": "./imagesTr/spleen_2.nii.gz", "label": "./labelsTr/spleen_2.nii.gz"}],
    }
    (scratch / "dataset.json").write_text(json.dumps(meta))
    with tarfile.open(raw / "Task09_Spleen.tar", "w") as tf:
        tf.add(scratch / "dataset.json", "Task09_Spleen/dataset.json")
        tf.add(scratch / "img.nii.gz", "Task09_Spleen/imagesTr/spleen_2.nii.gz")
        tf.add(scratch / "img.nii.gz", "Task09_Spleen/imagesTr/._spleen_2.nii.gz")
        tf.add(scratch / "lab.nii.gz", "Task09_Spleen/labelsTr/spleen_2.nii.gz")
    source = entry(
        tmp_path, "msd_spleen", "3d_seg", "reader: {kind: msd, axes: [2], unpack: [Task09_Spleen.tar]}"
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert report.layout_root == "Task09_Spleen" and (report.kept, qrows) == (1, [])
    assert {r["label"] for r in rows} == {"spleen"} and report.counters["archives_unpacked"] == 1


def test_brats21_channels_by_name_from_separate_files(tmp_path: Path) -> None:
    """BraTS 2021: BraTS2021_Training_Data/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz
    (MIC-DKFZ/nnUNet:nnunetv2/dataset_conversion/Dataset137_BraTS21.py)."""
    raw = tmp_path / "raw" / "brats21"
    case = raw / "BraTS2021_Training_Data" / "BraTS2021_00000"
    for i, ch in enumerate(("flair", "t1", "t1ce", "t2")):
        nifti(case / f"BraTS2021_00000_{ch}.nii.gz", ct_volume(seed=i, low=0, high=1000))
    nifti(case / "BraTS2021_00000_seg.nii.gz", box_label(value=4))
    source = entry(
        tmp_path,
        "brats21",
        "3d_seg",
        """
        reader:
          kind: layout
          root: BraTS2021_Training_Data
          images: "{case}/{case}_{channel}.nii.gz"
          masks: "{case}/{case}_seg.nii.gz"
          channels: [flair, t1ce]
          axes: [2]
        labels: {"1": necrotic tumour core, "2": peritumoral edema, "4": enhancing tumour}
        """,
        modality="MR",
        department="Neurosurgery",
    )
    report, rows, _ = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (2, 2)  # two chosen channels; t1 and t2 are not inputs
    assert {r["source_path"].rsplit("_", 1)[-1] for r in rows} == {"flair.nii.gz", "t1ce.nii.gz"}
    assert report.counters["channels_not_selected"] == 2
    assert "BraTS2021_Training_Data/BraTS2021_00000/BraTS2021_00000_t2.nii.gz" in report.ignored
    assert {r["label"] for r in rows} == {"enhancing tumour"}


def test_autopet_ct_and_pet_channels_with_their_own_modality(tmp_path: Path) -> None:
    """autoPET: FDG-PET-CT-Lesions/PETCT_<id>/<study>/{CTres,SUV,SEG,CT,PET}.nii.gz
    (MIC-DKFZ/nnUNet:nnunetv2/dataset_conversion/Dataset221_AutoPETII_2023.py; torch-em autopet.py)."""
    raw = tmp_path / "raw" / "autopet"
    study = (
        raw
        / "FDG-PET-CT-Lesions"
        / "PETCT_0011f3deaf"
        / "03-23-2003-NA-PET-CT Ganzkoerper  primaer mit KM-10445"
    )
    nifti(study / "CTres.nii.gz", ct_volume(seed=1))
    nifti(study / "SUV.nii.gz", ct_volume(seed=2, low=0, high=12))
    nifti(study / "CT.nii.gz", ct_volume((30, 30, 8), seed=3))
    nifti(study / "PET.nii.gz", ct_volume(seed=4, low=0, high=5000))
    nifti(study / "SEG.nii.gz", box_label(value=1))
    source = entry(
        tmp_path,
        "autopet",
        "3d_seg",
        """
        reader:
          kind: layout
          root: FDG-PET-CT-Lesions
          images: "{patient}/{study}/{channel}.nii.gz"
          masks: "{patient}/{study}/SEG.nii.gz"
          channels: [CTres, SUV]
          modality:
            rules: [{when: {channel: SUV}, value: PET}]
            default: CT
          axes: [2]
        labels: {"1": FDG-avid lesion}
        """,
        modality="CT",
    )
    report, rows, _ = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (2, 2)
    by_mod = {r["modality"]: r for r in rows}
    assert set(by_mod) == {"CT", "PET"}
    assert by_mod["PET"]["source_path"].endswith("/SUV.nii.gz") and "/pet/autopet/" in by_mod["PET"]["image"]
    assert by_mod["CT"]["source_path"].endswith("/CTres.nii.gz") and by_mod["CT"]["sample_id"].startswith(
        "3d#seg#ct#"
    )


def test_msd_4d_modalities_by_name_and_all_by_default(tmp_path: Path) -> None:
    """MSD Task01_BrainTumour: imagesTr/BRATS_001.nii.gz is 4D, dataset.json `modality` names the channels
    (MIC-DKFZ/nnUNet:nnunetv2/dataset_conversion/convert_MSD_dataset.py splits them into _0000.._0003)."""
    raw = tmp_path / "raw" / "msd_brain"
    task = raw / "Task01_BrainTumour"
    nifti(task / "imagesTr" / "BRATS_001.nii.gz", ct_volume((24, 24, 6, 4), low=0, high=1000))
    nifti(task / "labelsTr" / "BRATS_001.nii.gz", box_label(value=2))
    (task / "dataset.json").write_text(
        json.dumps(
            {
                "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                "labels": {
                    "0": "background",
                    "1": "edema",
                    "2": "non-enhancing tumor",
                    "3": "enhancing tumour",
                },
                "training": [
                    {"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}
                ],
                "test": ["./imagesTs/BRATS_485.nii.gz"],
            }
        )
    )
    body = "reader:\n  kind: msd\n  axes: [2]\n  {channels}\n"
    chosen = entry(
        tmp_path, "msd_brain", "3d_seg", body.format(channels="channels: [FLAIR, t1gd]"), modality="MR"
    )
    report, rows, qrows = run(chosen, raw, tmp_path / "out")
    assert report.layout_root == "Task01_BrainTumour"
    assert (report.kept, reasons(qrows)) == (1, {"missing_file": 1})  # the listed test image is absent
    assert {r["sample_id"].split("#")[-2] for r in rows} == {"FLAIR", "t1gd"}
    assert {r["label"] for r in rows} == {"non-enhancing tumor"}
    every = entry(tmp_path, "msd_brain", "3d_seg", body.format(channels=""), modality="MR")
    report2, rows2, _ = run(every, raw, tmp_path / "out2")
    assert report2.counters["channels_read"] == 4  # the default, all channels, is counted, not silent
    assert len({r["sample_id"].split("#")[-2] for r in rows2}) == 4


def test_a_4d_volume_is_never_silently_cut_to_its_first_channel(tmp_path: Path) -> None:
    from gmai_pipeline.imaging import ImageError
    from gmai_pipeline.volumes import read_volume

    path = nifti(tmp_path / "v.nii.gz", ct_volume((8, 8, 4, 3)))
    assert read_volume(path, "v.nii.gz", channels=True).shape == (8, 8, 4, 3)
    try:
        read_volume(path, "v.nii.gz")
        raise AssertionError("a 4D image read as 3D must fail")
    except ImageError as err:
        assert "3 channels" in err.detail and "reader.channels" in err.detail


def _amos(raw: Path, with_json: bool = True) -> None:
    """amos22.zip: amos22/{dataset.json,imagesTr,labelsTr,imagesVa,labelsVa,imagesTs}/amos_NNNN.nii.gz plus a
    __MACOSX folder; ids >= 500 are MR (constantinpape/torch-em:torch_em/data/datasets/medical/amos.py:
    `is_ct = id_value < 500`; MIC-DKFZ/nnUNet:nnunetv2/dataset_conversion/Dataset218_Amos2022_task1.py)."""
    top = raw / "amos22"
    ct = ct_volume(seed=1)
    mr = ct_volume(seed=2, low=0, high=800)
    nifti(top / "imagesTr" / "amos_0001.nii.gz", ct)
    nifti(top / "labelsTr" / "amos_0001.nii.gz", box_label(value=6))
    nifti(top / "imagesTr" / "amos_0507.nii.gz", mr)
    nifti(top / "labelsTr" / "amos_0507.nii.gz", box_label(value=1))
    nifti(top / "imagesVa" / "amos_0008.nii.gz", ct_volume(seed=3))
    nifti(top / "labelsVa" / "amos_0008.nii.gz", box_label(value=6))
    (raw / "__MACOSX" / "amos22").mkdir(parents=True)
    (raw / "__MACOSX" / "amos22" / "._dataset.json").write_bytes(b"\0")
    if with_json:
        (top / "dataset.json").write_text(
            json.dumps(
                {
                    "labels": {"0": "background", "1": "spleen", "6": "liver"},
                    "training": [
                        {"image": "./imagesTr/amos_0001.nii.gz", "label": "./labelsTr/amos_0001.nii.gz"},
                        {"image": "./imagesTr/amos_0507.nii.gz", "label": "./labelsTr/amos_0507.nii.gz"},
                    ],
                    "validation": [
                        {"image": "./imagesVa/amos_0008.nii.gz", "label": "./labelsVa/amos_0008.nii.gz"}
                    ],
                }
            )
        )


AMOS = """
reader:
  kind: msd
  axes: [2]
  modality:
    rules: [{when: {case: {min: 500}}, value: MR}]
    default: CT
splits: [train, val]
"""


def test_amos_mr_cases_are_mr_and_not_windowed_as_ct(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "amos"
    _amos(raw)
    source = entry(tmp_path, "amos", "3d_seg", AMOS, modality="CT")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert report.layout_root == "amos22" and (report.kept, qrows) == (3, [])
    by_case = {}
    for r in rows:
        by_case.setdefault(r["source_path"].rsplit("/", 1)[-1], r)
    assert by_case["amos_0001.nii.gz"]["modality"] == "CT" and by_case["amos_0001.nii.gz"]["label"] == "liver"
    mr = by_case["amos_0507.nii.gz"]
    assert (
        mr["modality"] == "MR" and mr["label"] == "spleen" and mr["sample_id"].startswith("3d#seg#mr#amos#")
    )
    assert by_case["amos_0008.nii.gz"]["split"] == "val"
    from PIL import Image

    pixels = np.asarray(Image.open(tmp_path / "out" / mr["image"]))
    assert (
        pixels.min() < 10 and pixels.max() > 245
    )  # percentile-clipped; a CT window would leave 0..800 in 127..230


def test_amos_without_dataset_json_pairs_same_names(tmp_path: Path) -> None:
    """Without nnU-Net's own word for it, `_0001` is part of the case name, not a channel suffix."""
    raw = tmp_path / "raw" / "amos"
    _amos(raw, with_json=False)
    source = entry(tmp_path, "amos", "3d_seg", AMOS, modality="CT")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.kept, qrows) == (2, [])  # imagesTr only; amos_0001 found labelsTr/amos_0001
    assert {r["source_path"] for r in rows} == {
        "amos22/imagesTr/amos_0001.nii.gz",
        "amos22/imagesTr/amos_0507.nii.gz",
    }


def test_totalsegmentator_one_mask_file_per_structure_and_split_from_meta_csv(tmp_path: Path) -> None:
    """TotalSegmentator v2 (https://doi.org/10.5281/zenodo.6802613): s0000/ct.nii.gz, s0000/segmentations/<structure>.nii.gz,
    meta.csv `;`-separated with image_id and split; structures combined later-wins as
    MIC-DKFZ/nnUNet:nnunetv2/dataset_conversion/Dataset227_TotalSegmentatorMRI.py does."""
    raw = tmp_path / "raw" / "totalseg"
    for i, case in enumerate(("s0000", "s0001")):
        nifti(raw / case / "ct.nii.gz", ct_volume(seed=i))
        nifti(raw / case / "segmentations" / "liver.nii.gz", box_label(value=1))
        spleen = np.zeros((24, 24, 6), np.uint8)
        spleen[18:23, 18:23, 2:5] = 1
        nifti(raw / case / "segmentations" / "spleen.nii.gz", spleen)
        nifti(raw / case / "segmentations" / "kidney_left.nii.gz", np.zeros((24, 24, 6), np.uint8))
    (raw / "meta.csv").write_text(
        "image_id;age;gender;institute;study_type;split\ns0000;62;m;A;ct abdomen;train\ns0001;70;f;B;ct thorax;test\n"
    )
    source = entry(
        tmp_path,
        "totalseg",
        "3d_seg",
        """
        reader:
          kind: layout
          images: "{case}/ct.nii.gz"
          masks: "{case}/segmentations/{structure}.nii.gz"
          label: "{structure}"
          table: {file: meta.csv, join: {column: image_id, field: case}}
          split: {column: split}
          axes: [2]
        labels: {liver: liver, spleen: spleen, kidney_left: left kidney}
        """,
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.kept, reasons(qrows)) == (1, {"split_excluded": 1})
    assert {r["label"] for r in rows} == {"liver", "spleen"}
    assert all(r["source_path"] == "s0000/ct.nii.gz" for r in rows)
    assert "meta.csv" not in report.ignored


def test_qubiq_one_raters_masks_chosen_by_a_filter(tmp_path: Path) -> None:
    """QUBIQ: training_data_v2/<task>/Training/case01/image.nii.gz with one mask per rater, task01_seg01.nii.gz ...
    (HaoWang420/bOEMD-net:dataloaders/brats.py); the images are single slices stored as NIfTI."""
    raw = tmp_path / "raw" / "qubiq"
    case = raw / "training_data_v2" / "brain-growth" / "Training" / "case01"
    nifti(case / "image.nii.gz", ct_volume((24, 24), low=0, high=255))
    small, large = np.zeros((24, 24), np.uint8), np.zeros((24, 24), np.uint8)
    small[8:12, 8:12] = 1
    large[4:20, 4:20] = 1
    nifti(case / "task01_seg01.nii.gz", small)
    nifti(case / "task01_seg02.nii.gz", large)
    body = """
        reader:
          kind: layout
          root: training_data_v2
          images: "{task}/Training/{case}/image.nii.gz"
          masks: "{task}/Training/{case}/task01_seg{rater}.nii.gz"
          axes: [2]
          FILTER
        labels: {"1": brain}
        """
    one = entry(tmp_path, "qubiq", "3d_seg", body.replace("FILTER", 'filters: {rater: "01"}'), modality="MR")
    report, rows, _ = run(one, raw, tmp_path / "out")
    assert [r["bbox"] for r in rows] == [[8, 12, 12, 16]] and report.counters["masks_filtered_by_rater"] == 1
    union = entry(tmp_path, "qubiq", "3d_seg", body.replace("FILTER", ""), modality="MR")
    _, rows, _ = run(union, raw, tmp_path / "out2")
    assert [r["bbox"] for r in rows] == [[4, 4, 20, 20]]  # without a choice, the raters' masks are merged


# ------------------------------------------------------------------ 2D classification from templates


def test_breakhis_label_from_a_template_field_filtered_by_magnification(tmp_path: Path) -> None:
    """BreaKHis_v1/histology_slides/breast/<benign|malignant>/SOB/<type>/<slide>/<mag>/<file>.png
    (kaiko-ai/eva:docs/datasets/breakhis.md; src/eva/vision/data/datasets/classification/breakhis.py)."""
    raw = tmp_path / "raw" / "breakhis"
    base = raw / "BreaKHis_v1" / "histology_slides" / "breast"
    files = [
        ("benign", "adenosis", "SOB_B_A_14-22549AB", "40X", "SOB_B_A-14-22549AB-40-001.png"),
        ("benign", "adenosis", "SOB_B_A_14-22549AB", "100X", "SOB_B_A-14-22549AB-100-001.png"),
        ("malignant", "ductal_carcinoma", "SOB_M_DC_14-2523", "40X", "SOB_M_DC-14-2523-40-010.png"),
        ("malignant", "ductal_carcinoma", "SOB_M_DC_14-2523", "400X", "SOB_M_DC-14-2523-400-010.png"),
    ]
    for i, (group, sub, slide, mag, name) in enumerate(files):
        photo(base / group / "SOB" / sub / slide / mag / name, seed=i)
    (raw / "BreaKHis_v1" / "README.txt").write_text("BreaKHis")
    source = entry(
        tmp_path,
        "breakhis",
        "2d_cls",
        """
        reader:
          kind: layout
          root: BreaKHis_v1/histology_slides/breast
          images: "{group}/SOB/{label}/{slide}/{mag}/{file}"
          label: "{label}"
          filters: {mag: 40X}
        labels: {adenosis: adenosis, ductal_carcinoma: ductal carcinoma}
        expect: {images: 2, classes: 2, source: "the 40X subset of this fixture"}
        """,
        modality="Pathology",
        department="Laboratory Medicine and Pathology",
    )
    report, rows, _ = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (2, 2)
    assert {r["label"] for r in rows} == {"adenosis", "ductal carcinoma"}
    assert report.counters["filtered_by_mag"] == 2 and len(report.ignored) == 3


def test_isic2018_split_written_in_folder_names(tmp_path: Path) -> None:
    """ISIC 2018 task 1: ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_NNNNNNN.jpg with
    ISIC2018_Task1_<split>_GroundTruth/ISIC_NNNNNNN_segmentation.png (torch-em datasets/medical/isic.py):
    the `_Test_` in the name makes those images test, never train."""
    raw = tmp_path / "raw" / "isic2018"
    size = (40, 48)
    for split, ident, seed in (
        ("Training", "0000000", 1),
        ("Validation", "0012255", 2),
        ("Test", "0012169", 3),
    ):
        photo(raw / f"ISIC2018_Task1-2_{split}_Input" / f"ISIC_{ident}.jpg", seed=seed, size=size, quality=90)
        write_image(
            raw / f"ISIC2018_Task1_{split}_GroundTruth" / f"ISIC_{ident}_segmentation.png",
            disk_mask(size, (20, 20), 9),
        )
    source = entry(
        tmp_path,
        "isic2018",
        "2d_seg",
        """
        reader:
          kind: layout
          images: "ISIC2018_Task1-2_*_Input/ISIC_{id}.jpg"
          masks: "ISIC2018_Task1_*_GroundTruth/ISIC_{id}_segmentation.png"
        labels: {"255": skin lesion}
        splits: [train, val]
        """,
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert {r["source_path"].split("/")[0]: r["split"] for r in rows} == {
        "ISIC2018_Task1-2_Training_Input": "train",
        "ISIC2018_Task1-2_Validation_Input": "val",
    }
    assert reasons(qrows) == {"split_excluded": 1} and "_Test_" in qrows[0]["source_path"]


def test_split_word_inside_a_file_name() -> None:
    from gmai_pipeline.readers.base import split_in_name

    assert split_in_name("images/case_test_001.png") == "test"
    assert split_in_name("imagesTs/la_003.nii.gz") == "test"
    assert split_in_name("train/x_test_1.png") == "test"  # test wins over train
    assert split_in_name("imagesVa/amos_0008.nii.gz") == "val"
    assert split_in_name("contest/protest.png") is None
    assert split_in_name("tr/attr.png") == "train"


def test_busi_several_masks_per_image_labelled_by_the_class_folder(tmp_path: Path) -> None:
    """Dataset_BUSI_with_GT/<class>/<class> (N).png with <class> (N)_mask.png and, for a second lesion,
    <class> (N)_mask_1.png (constantinpape/torch-em:torch_em/data/datasets/medical/busi.py)."""
    raw = tmp_path / "raw" / "busi"
    top = raw / "Dataset_BUSI_with_GT"
    size = (48, 64)
    photo(top / "benign" / "benign (1).png", seed=1, size=size, rgb=False)
    write_image(top / "benign" / "benign (1)_mask.png", disk_mask(size, (12, 12), 6))
    write_image(top / "benign" / "benign (1)_mask_1.png", disk_mask(size, (48, 30), 7))
    photo(top / "malignant" / "malignant (1).png", seed=2, size=size, rgb=False)
    write_image(top / "malignant" / "malignant (1)_mask.png", disk_mask(size, (30, 20), 8))
    photo(top / "normal" / "normal (1).png", seed=3, size=size, rgb=False)
    write_image(top / "normal" / "normal (1)_mask.png", np.zeros(size, np.uint8))
    source = entry(
        tmp_path,
        "busi",
        "2d_seg",
        """
        reader:
          kind: layout
          images: "{label}/{name}.png"
          masks: "{label}/{name}_mask*.png"
          label: "{label}"
        labels: {benign: benign breast lesion, malignant: malignant breast lesion, normal: normal}
        """,
        modality="Ultrasound",
        department="Oncology",
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (3, 2) and reasons(qrows) == {"empty_mask": 1}
    benign = sorted(r["bbox"] for r in rows if r["label"] == "benign breast lesion")
    assert benign == [[6, 6, 19, 19], [41, 23, 56, 38]]  # one box from each mask file
    assert {r["label"] for r in rows} == {"benign breast lesion", "malignant breast lesion"}
    assert not any("_mask" in r["source_path"] for r in rows)


def test_image_folder_takes_only_the_images_own_folder_as_class(tmp_path: Path) -> None:
    """CheXpert-like depth (CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg): no patient id
    becomes a class; the dataset fails loudly and says how to declare the class."""
    raw = tmp_path / "raw" / "chexpert"
    for i in range(3):
        photo(
            raw / "CheXpert-v1.0-small" / "train" / f"patient0000{i}" / "study1" / "view1_frontal.jpg", seed=i
        )
    source = entry(tmp_path, "chexpert", "2d_cls", "reader: {kind: image_folder}")
    from gmai_pipeline.manifest import scan
    from gmai_pipeline.normalize import normalize_source

    report = normalize_source(source, raw, scan(raw), tmp_path / "out")
    assert (report.kept, report.by_reason["missing_label"]) == (0, 3)
    assert (
        "kind: layout"
        in pq.read_table(tmp_path / "out" / "quarantine" / "chexpert.parquet").column("detail")[0].as_py()
    )
    assert "none of 3 inputs" in report.failure_message()


def test_detached_headers_are_duplicates_only_when_their_data_files_are(tmp_path: Path) -> None:
    """RETOUCH ships TRAIN0NN/oct.mhd + oct.raw per volume; one vendor's headers are byte-identical (same
    size, spacing and `ElementDataFile = oct.raw`), so a header's bytes alone do not identify a volume
    (RETOUCH challenge readme; SimpleITK writes the same header for the same geometry)."""
    import SimpleITK as sitk

    raw = tmp_path / "raw" / "retouch"
    for case, seed in (("TRAIN001", 1), ("TRAIN002", 2), ("TRAIN003", 1)):  # 003 repeats 001's voxels
        for name, arr in (("oct", ct_volume((6, 24, 24), seed=seed, low=0, high=255)), ("reference", None)):
            if arr is None:
                arr = np.zeros((6, 24, 24), np.uint8)
                arr[1:4, 6:16, 6:16] = 1
            folder = raw / "RETOUCH-TrainingSet-Cirrus" / case
            folder.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.GetImageFromArray(arr.astype(np.uint8)), str(folder / f"{name}.mhd"))
    headers = {
        (raw / "RETOUCH-TrainingSet-Cirrus" / c / "oct.mhd").read_bytes() for c in ("TRAIN001", "TRAIN002")
    }
    assert len(headers) == 1  # the premise: identical headers, different voxels
    source = entry(
        tmp_path,
        "retouch",
        "3d_seg",
        """
        reader:
          kind: layout
          images: "{vendor}/{case}/oct.mhd"
          masks: "{vendor}/{case}/reference.mhd"
          axes: [0]
        labels: {"1": intraretinal fluid}
        """,
        modality="OCT",
        department="Ophthalmology",
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert report.inputs == 3 and report.kept == 2
    assert {r["source_path"].split("/")[1] for r in rows} == {"TRAIN001", "TRAIN002"}
    assert [q["reason"] for q in qrows] == ["duplicate_image"]
    assert "TRAIN003/oct.mhd" in qrows[0]["detail"] and "TRAIN001/oct.mhd" in qrows[0]["detail"]
