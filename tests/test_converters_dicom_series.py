"""DICOM series -> volume: series written from pydicom's CT_small.dcm header with shuffled file names,
shuffled InstanceNumbers, per-slice rescales and a distinctive patient name that must never surface;
checked against SimpleITK's own series reader (GDCM sorting, `DICOMOrient` RAS) and `read_volume`.
The SEG test uses pydicom's `liver.dcm` (a real DICOM Segmentation) on a CT series built at its planes.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from gmai_pipeline.converters import dicom_series as ds_mod
from gmai_pipeline.converters.dicom_series import (
    DicomFile,
    DicomSeriesOptions,
    SliceMasks,
    load,
    load_seg,
    load_slice_masks,
    load_volume_mask,
    matching_seg,
    scan,
)
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.readers.masks import load_mask
from gmai_pipeline.volumes import iter_slices, read_volume, volume_to_uint8

PATIENT = "Quasimodo^Zyxwvut"
SECRETS = ("quasimodo", "zyxwvut", "7730519")
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # a sagittal plane: reorientation permutes the axes


def slice_pixels(k: int, rows: int, cols: int) -> np.ndarray:
    """Stored values that identify slice k and each pixel, so order and orientation errors show."""
    r, c = np.mgrid[0:rows, 0:cols]
    return (200 * k + 3 * r + c).astype(np.int16)


def write_series(
    folder: Path,
    n: int = 8,
    rows: int = 12,
    cols: int = 10,
    orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    spacing: float = 2.5,
    skip: tuple[int, ...] = (),
    seed: int = 0,
    uid: str | None = None,
    modality: str = "CT",
) -> list[Path]:
    """n slices along the normal; file names and InstanceNumbers shuffled; slice k has slope 1 + k % 2."""
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    o = np.array(orientation, float)
    normal = np.cross(o[:3], o[3:])
    origin = np.array([-40.0, 25.0, 110.0])
    uid = uid or generate_uid()
    rng = random.Random(seed)
    ks = [k for k in range(n) if k not in skip]
    names = [f"IM{v:04d}.dcm" for v in rng.sample(range(1000), len(ks))]
    instances = rng.sample(range(1, len(ks) + 1), len(ks))
    paths = []
    for k, name, inst in zip(ks, names, instances, strict=True):
        d = template.copy()
        d.PatientName = PATIENT
        d.PatientID = "7730519"
        d.Modality = modality
        d.SeriesInstanceUID = uid
        d.SOPInstanceUID = generate_uid()
        d.InstanceNumber = inst
        d.Rows, d.Columns = rows, cols
        d.PixelSpacing = [0.8, 0.6]
        d.ImageOrientationPatient = list(orientation)
        d.ImagePositionPatient = [float(v) for v in origin + normal * spacing * k]
        slope = 1 + k % 2
        d.RescaleSlope, d.RescaleIntercept = slope, -1024
        d.PixelData = (slice_pixels(k, rows, cols) // slope).astype(np.int16).tobytes()
        d.file_meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
        d.save_as(folder / name, enforce_file_format=True)
        paths.append(folder / name)
    return paths


def files(folder: Path) -> list[DicomFile]:
    return [DicomFile(p, f"case1/{p.name}") for p in sorted(folder.glob("*.dcm"))]


def expected_raw(n: int, rows: int, cols: int) -> np.ndarray:
    """(column, row, slice) values after the modality LUT, slices in position order."""
    out = np.empty((cols, rows, n), np.float32)
    for k in range(n):
        slope = 1 + k % 2
        out[:, :, k] = ((slice_pixels(k, rows, cols) // slope) * slope - 1024).T
    return out


def sitk_volume(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = sitk.DICOMOrient(reader.Execute(), "RAS")
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0)


@pytest.mark.parametrize("orientation", [(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), SAGITTAL])
def test_shuffled_series_matches_simpleitk_and_read_volume(tmp_path: Path, orientation) -> None:
    write_series(tmp_path / "s", orientation=orientation)
    result = scan(files(tmp_path / "s"), DicomSeriesOptions())
    assert not result.rejected and len(result.series) == 1
    sv = load(result.series[0], DicomSeriesOptions(), "case1")
    # independent reader: GDCM's position sort and RAS orientation give the same array
    np.testing.assert_allclose(sv.volume, sitk_volume(tmp_path / "s"), atol=1e-3)
    # and the array read_volume gives for the NIfTI of the same voxels and affine
    raw = expected_raw(8, 12, 10)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    first = result.series[0].slices[0]
    o = np.array(orientation)
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1] = o[:3] * 0.6, o[3:] * 0.8
    aff[:3, 2] = np.cross(o[:3], o[3:]) * 2.5
    aff[:3, 3] = first.position
    nib.save(nib.Nifti1Image(raw, lps_to_ras @ aff), tmp_path / "ref.nii.gz")
    np.testing.assert_array_equal(sv.volume, read_volume(tmp_path / "ref.nii.gz", "ref.nii.gz"))
    assert nib.aff2axcodes(sv.affine) == ("R", "A", "S")
    assert sorted(round(s, 3) for s in sv.spacing) == [0.6, 0.8, 2.5]
    # slice order came from positions, not names: the files sorted by name are in another order
    assert [f.name for f in sv.series.files] != sorted(f.name for f in sv.series.files)


def test_missing_slice_uneven_spacing_and_mixed_orientation_are_reasons(tmp_path: Path) -> None:
    write_series(tmp_path / "gap", skip=(4,))
    s = scan(files(tmp_path / "gap"), DicomSeriesOptions()).series[0]
    with pytest.raises(ImageError) as e:
        load(s, DicomSeriesOptions(), "case1")
    assert e.value.reason == "missing_slice"
    assert "1 slice(s) missing" in e.value.detail and "the 4th and 5th slice" in e.value.detail

    paths = write_series(tmp_path / "uneven", n=6, seed=1)
    d = pydicom.dcmread(paths[0])
    d.ImagePositionPatient = [
        d.ImagePositionPatient[0],
        d.ImagePositionPatient[1],
        d.ImagePositionPatient[2] + 1.0,
    ]
    d.save_as(paths[0])
    with pytest.raises(ImageError) as e:
        load(scan(files(tmp_path / "uneven"), DicomSeriesOptions()).series[0], DicomSeriesOptions(), "case1")
    assert e.value.reason == "uneven_spacing"

    paths = write_series(tmp_path / "mixed", n=5, seed=2)
    d = pydicom.dcmread(paths[2])
    d.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.8, -0.6]  # same normal sign, tilted plane
    d.save_as(paths[2])
    with pytest.raises(ImageError) as e:
        load(scan(files(tmp_path / "mixed"), DicomSeriesOptions()).series[0], DicomSeriesOptions(), "case1")
    assert e.value.reason == "mixed_orientation" and "case1/" + paths[2].name in e.value.detail


def test_series_grouping_rejects_and_privacy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "mix"
    write_series(folder, n=4, seed=3)
    write_series(folder, n=3, seed=4)  # a second series in the same folder
    (folder / "notes.dcm").write_bytes(b"not dicom at all")
    d = pydicom.dcmread(next(folder.glob("IM*.dcm")))
    del d.ImagePositionPatient
    d.SeriesInstanceUID = generate_uid()
    d.save_as(folder / "scout.dcm")
    us = pydicom.dcmread(next(folder.glob("IM*.dcm")))
    us.SeriesInstanceUID = generate_uid()
    us.Modality = "US"
    for k in range(3):
        us.ImagePositionPatient = [0.0, 0.0, float(k)]
        us.save_as(folder / f"us{k}.dcm")
    caplog.set_level(logging.DEBUG)
    result = scan(files(folder), DicomSeriesOptions())
    assert sorted(len(s.slices) for s in result.series) == [3, 3, 4]
    assert {f.name.rsplit("/", 1)[-1]: e.reason for f, e in result.rejected} == {
        "notes.dcm": "unreadable",
        "scout.dcm": "no_position",
    }
    us_series = next(s for s in result.series if s.slices[0].file.name.startswith("case1/us"))
    with pytest.raises(ImageError) as e:
        load(us_series, DicomSeriesOptions(), "case1")
    assert e.value.reason == "burned_in_text_risk"
    assert load(us_series, DicomSeriesOptions(burned_in_text_allowed=True), "case1").volume.shape[2] == 3
    messages = (
        [e.value.detail]
        + [err.detail for _, err in result.rejected]
        + [r.getMessage() for r in caplog.records]
    )
    text = " ".join(messages + [s.token for s in result.series]).lower()
    assert not any(secret in text for secret in SECRETS)


def png_loader(path: Path):
    return lambda: load_mask(path.read_bytes(), path.name)


def test_per_slice_png_masks_chaos_layout(tmp_path: Path) -> None:
    """CHAOS: `DICOM_anon/*.dcm` + `Ground/*.png`, the k-th PNG for the k-th DICOM by name."""
    case = tmp_path / "CT" / "1"
    paths = write_series(case / "DICOM_anon", n=6, rows=16, cols=20, seed=5)
    # mask k (in file-name order) marks a 3x4 block at a row/col that depends on the slice's position
    by_name = sorted(paths, key=lambda p: ds_mod.natural_key(p.name))
    (case / "Ground").mkdir()
    expected = {}
    for k, p in enumerate(by_name):
        z = float(pydicom.dcmread(p).ImagePositionPatient[2])
        m = np.zeros((16, 20), np.uint8)
        r0 = int(z) % 10
        m[r0 : r0 + 3, 2:6] = 63  # CHAOS MR grey value for liver
        Image.fromarray(m).save(case / "Ground" / f"liver_GT_{k:03d}.png")
        expected[round(z, 3)] = (r0, m)
    opts = DicomSeriesOptions(mask=SliceMasks(match="file_order"))
    sv = load(scan(files(case / "DICOM_anon"), opts).series[0], opts, "CT/1")
    masks = [(png_loader(p), f"CT/1/Ground/{p.name}") for p in sorted((case / "Ground").glob("*.png"))]
    labels = load_slice_masks(masks, sv, opts.mask, "CT/1")
    assert labels.shape == sv.volume.shape and labels.dtype == np.uint8
    # canonical axis 2 is superior: slice j of the canonical volume has z = origin + 2.5 j
    for j in range(labels.shape[2]):
        z = round(110.0 + 2.5 * j, 3)
        r0, m = expected[z]
        np.testing.assert_array_equal(
            labels[:, :, j], m.T[::-1, ::-1]
        )  # RAS: column and row axes flip from LPS
    # the volume module slices it and finds one box per slice where the block is
    boxes = list(iter_slices(volume_to_uint8(sv.volume, (-1024, 2000)), labels, (2,), 0.0, 1))
    assert len(boxes) == 6 and all(len(b.boxes) == 1 and b.boxes[0][0] == 63 for b in boxes)

    # InstanceNumber matching: mask number = InstanceNumber - 1
    inst = {int(pydicom.dcmread(p).InstanceNumber): p for p in paths}
    renamed = []
    for number, p in inst.items():
        k = by_name.index(p)
        renamed.append((png_loader(case / "Ground" / f"liver_GT_{k:03d}.png"), f"mask_{number - 1:03d}.png"))
    by_inst = load_slice_masks(renamed, sv, SliceMasks(match="instance_number", index_offset=-1), "CT/1")
    np.testing.assert_array_equal(by_inst, labels)
    with pytest.raises(ImageError) as e:
        load_slice_masks(masks[:-1], sv, opts.mask, "CT/1")
    assert e.value.reason == "mask_mismatch"


def test_volume_mask_checks_shape_and_space(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n=5, seed=6)
    sv = load(scan(files(tmp_path / "s"), DicomSeriesOptions()).series[0], DicomSeriesOptions(), "c")
    lab = np.zeros(sv.volume.shape, np.uint8)
    lab[2:5, 3:7, 1:3] = 1
    nib.save(nib.Nifti1Image(lab, sv.affine), tmp_path / "seg.nii.gz")
    np.testing.assert_array_equal(load_volume_mask(tmp_path / "seg.nii.gz", "seg.nii.gz", sv), lab)
    moved = sv.affine.copy()
    moved[2, 3] += 10.0
    nib.save(nib.Nifti1Image(lab, moved), tmp_path / "moved.nii.gz")
    with pytest.raises(ImageError) as e:
        load_volume_mask(tmp_path / "moved.nii.gz", "moved.nii.gz", sv)
    assert e.value.reason == "mask_mismatch"


def test_dicom_seg_frames_land_on_their_slices(tmp_path: Path) -> None:
    seg_path = Path(get_testdata_file("liver.dcm"))
    seg = pydicom.dcmread(seg_path)
    ref_uid = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    frames = seg.pixel_array  # (3, 512, 512): binary liver masks on three consecutive planes
    # a CT series on the SEG's grid: 5 planes, the SEG covers planes 1..3 (z = -128.69 .. -126.69)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder = tmp_path / "ct"
    folder.mkdir()
    for k in range(5):
        d = template.copy()
        d.SeriesInstanceUID = ref_uid
        d.SOPInstanceUID = generate_uid()
        d.Rows = d.Columns = 512
        d.PixelSpacing = [0.810547, 0.810547]
        d.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        d.ImagePositionPatient = [-235.2, -226.8, -129.69 + k]
        d.PixelData = np.full((512, 512), k, np.int16).tobytes()
        d.save_as(folder / f"{4 - k}.dcm")
    (tmp_path / "ct" / "seg.dcm").write_bytes(seg_path.read_bytes())
    result = scan(files(folder), DicomSeriesOptions())
    assert len(result.series) == 1 and len(result.segmentations) == 1
    sv = load(result.series[0], DicomSeriesOptions(), "case")
    [match] = matching_seg(result.segmentations, result.series[0])
    labels = load_seg(match, sv)
    assert labels.shape == (512, 512, 5)
    assert [int(labels[:, :, k].sum()) for k in range(5)] == [0, *(int(f.sum()) for f in frames), 0]
    np.testing.assert_array_equal(labels[:, :, 1], frames[0].T[::-1, ::-1])  # LPS rows/cols -> RAS


def test_label_series_matched_by_position(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "img", n=6, seed=7)
    sv = load(scan(files(tmp_path / "img"), DicomSeriesOptions()).series[0], DicomSeriesOptions(), "c")
    (tmp_path / "seg").mkdir()
    uid = generate_uid()
    expected = np.zeros(sv.raw_shape, np.uint8)
    for p in paths[:4]:  # the label series covers 4 of the 6 slices, in its own file order
        d = pydicom.dcmread(p)
        k = int(np.argmin(np.abs(sv.series.distances - float(d.ImagePositionPatient[2]))))
        lab = np.zeros((12, 10), np.int16)
        lab[2 + k : 5 + k, 1:4] = 1 + k % 2
        expected[:, :, k] = lab.T
        d.SeriesInstanceUID, d.SOPInstanceUID = uid, generate_uid()
        d.RescaleSlope, d.RescaleIntercept = 1, 0
        d.PixelData = lab.tobytes()
        d.save_as(tmp_path / "seg" / f"L{p.name}")
    mask_series = scan(files(tmp_path / "seg"), DicomSeriesOptions(min_slices=1)).series[0]
    labels = ds_mod.load_series_mask(mask_series, sv, "c")
    np.testing.assert_array_equal(labels, sv.canonical(expected))
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
