"""3D -> 2D: canonical orientation, formats, intensity, exact boxes per axis, SA-Med2D filters."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from normalize_fixtures import make_source, run, write_json

from gmai_pipeline.volumes import (
    DEFAULT_CT_WINDOW,
    iter_slices,
    mask_boxes,
    plane,
    read_volume,
    volume_to_uint8,
    window_for,
)

SHAPE = (30, 24, 16)  # x, y, z
# label value -> list of cuboids (x0, x1, y0, y1, z0, z1), half-open
CUBOIDS = {1: [(2, 8, 3, 9, 2, 6), (15, 25, 12, 20, 8, 14)], 2: [(20, 28, 2, 7, 1, 4)]}


def synthetic() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    vol = rng.normal(40, 200, SHAPE).astype(np.float32)
    lab = np.zeros(SHAPE, np.uint8)
    for value, boxes in CUBOIDS.items():
        for x0, x1, y0, y1, z0, z1 in boxes:
            lab[x0:x1, y0:y1, z0:z1] = value
    return vol, lab


def expected_boxes(axis: int, index: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """Derived from the documented stored orientation: columns = first remaining axis, rows = second reversed."""
    out = []
    for value, boxes in CUBOIDS.items():
        for c in boxes:
            lo, hi = (c[0], c[2], c[4]), (c[1], c[3], c[5])
            if not lo[axis] <= index < hi[axis]:
                continue
            u, v = (a for a in range(3) if a != axis)
            n_rows = SHAPE[v]
            out.append((value, (lo[u], n_rows - hi[v], hi[u], n_rows - lo[v])))
    return sorted(out)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_known_components_give_exact_boxes_on_each_axis(axis: int) -> None:
    vol, lab = synthetic()
    image8 = volume_to_uint8(vol, window_for("ct", None))
    counters: Counter = Counter()
    slices = list(
        iter_slices(image8, lab, (axis,), min_mask_fraction=0.0, min_component_pixels=1, counters=counters)
    )
    fg_indices = sorted(
        {i for boxes in CUBOIDS.values() for c in boxes for i in range(c[2 * axis], c[2 * axis + 1])}
    )
    assert [s.index for s in slices] == fg_indices
    for s in slices:
        assert s.axis == "xyz"[axis]
        assert sorted(s.boxes) == expected_boxes(axis, s.index)
        assert s.image.shape == tuple(SHAPE[a] for a in range(3) if a != axis)[::-1]
    assert counters["slices_kept"] == len(fg_indices)


def test_plane_orientation_is_superior_up() -> None:
    vol = np.zeros((4, 5, 6))
    vol[1, 2, 5] = 1  # top (most superior) z
    img = plane(vol, 0, 1)  # sagittal: columns = y, rows = z reversed
    assert img.shape == (6, 5) and img[0, 2] == 1


def test_filters_drop_small_masks_and_components_8_connected() -> None:
    m = np.zeros((100, 100), np.uint8)
    m[10:20, 10:20] = 1  # 100 px
    m[50, 50] = m[51, 51] = 1  # two diagonal pixels: one 8-connected component of 2 px (dropped: < 16)
    m[80:82, 80:82] = 2  # label 2: 4 px = 0.04% < 0.153% of the slice: dropped as a tiny mask
    got = mask_boxes(m, 0.00153, 16)
    assert got == [(1, (10, 10, 20, 20))]
    assert mask_boxes(m, 0.0, 1) == [(1, (10, 10, 20, 20)), (1, (50, 50, 52, 52)), (2, (80, 80, 82, 82))]


def test_ct_window_and_percentile_clipping() -> None:
    vol = np.linspace(-2000, 2000, 8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    ct = volume_to_uint8(vol, window_for("ct", (40.0, 400.0)))  # -160..240 HU
    flat = vol.ravel(order="C")
    assert ct.ravel()[flat <= -160].max() == 0 and ct.ravel()[flat >= 240].min() == 255
    wide = window_for("ct", None)
    assert wide == (
        DEFAULT_CT_WINDOW[0] - DEFAULT_CT_WINDOW[1] / 2,
        DEFAULT_CT_WINDOW[0] + DEFAULT_CT_WINDOW[1] / 2,
    )
    mr = volume_to_uint8(vol, window_for("mr", None))
    assert mr.min() == 0 and mr.max() == 255 and window_for("mr", None) is None


def _affine_flipped() -> np.ndarray:
    """A LPS-like affine with axes permuted: as_closest_canonical must undo it."""
    return np.array([[0, -1.5, 0, 10], [-1.0, 0, 0, 20], [0, 0, 2.0, -5], [0, 0, 0, 1]])


def test_mha_and_nrrd_read_the_same_as_nifti(tmp_path: Path) -> None:
    vol, lab = synthetic()
    nii = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, _affine_flipped()), str(nii))
    canonical = read_volume(nii, "v.nii.gz")
    assert canonical.shape == (SHAPE[1], SHAPE[0], SHAPE[2])  # axes swapped back to RAS order
    img = sitk.ReadImage(str(nii))
    for suffix in (".mha", ".nrrd"):
        other = tmp_path / f"v{suffix}"
        sitk.WriteImage(img, str(other), True)
        np.testing.assert_allclose(read_volume(other, other.name), canonical, rtol=0, atol=1e-4)
    lab_nii = tmp_path / "l.nii.gz"
    nib.save(nib.Nifti1Image(lab, _affine_flipped()), str(lab_nii))
    sitk.WriteImage(sitk.ReadImage(str(lab_nii)), str(tmp_path / "l.mha"))
    a = read_volume(lab_nii, "l", is_label=True)
    b = read_volume(tmp_path / "l.mha", "l", is_label=True)
    assert a.dtype == np.uint8 and np.array_equal(a, b)


def test_msd_end_to_end_rows_per_axis_and_formats(tmp_path: Path) -> None:
    vol, lab = synthetic()
    raw = tmp_path / "raw" / "ds"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir(parents=True)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(raw / "imagesTr" / "a.nii.gz"))
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(raw / "labelsTr" / "a.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(raw / "imagesTr" / "a.nii.gz")), str(raw / "imagesTr" / "b.mha"))
    sitk.WriteImage(sitk.ReadImage(str(raw / "labelsTr" / "a.nii.gz")), str(raw / "labelsTr" / "b.mha"))
    write_json(
        raw / "dataset.json",
        {
            "labels": {"0": "background", "1": "liver", "2": "spleen"},
            "training": [
                {"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"},
                {"image": "./imagesTr/b.mha", "label": "./labelsTr/b.mha"},
            ],
        },
    )
    source = make_source("ds", "3d_seg", {"kind": "msd", "min_mask_fraction": 0, "min_component_pixels": 1})
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept, report.quarantined) == (2, 2, 0)
    names = {1: "liver", 2: "spleen"}
    expected = sorted(
        ("xyz"[axis], index, names[v], list(box))
        for axis in range(3)
        for index in range(SHAPE[axis])
        for v, box in expected_boxes(axis, index)
    )
    for case in ("imagesTr/a.nii.gz", "imagesTr/b.mha"):
        got = sorted(
            (r["slice_axis"], r["slice_index"], r["label"], r["bbox"])
            for r in rows
            if r["source_path"] == case
        )
        assert got == expected
    one = next(r for r in rows if r["source_path"] == "imagesTr/b.mha" and r["slice_axis"] == "y")
    assert one["sample_id"] == f"3d#seg#ct#ds#imagesTr#b.mha#y{one['slice_index']}"
    assert one["image"] == f"images/3d/seg/ct/ds/imagesTr/b_y{one['slice_index']:04d}.png"
