"""The 3D demo: nilearn's MNI ICBM152 T1 template with a real tissue mask, in MSD layout.

The mask comes from the template's own grey/white-matter probability maps (same grid), so the
labels are anatomically real. Three cases in three formats (NIfTI, MHA, NRRD) written with
SimpleITK, each a different crop/flip so they are not duplicates of one another.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
BRAIN_LABELS = {"0": "background", "1": "grey matter", "2": "white matter"}
BRAIN_CASES = (
    ("brain_001", ".nii.gz", None, ()),
    ("brain_002", ".mha", (slice(4, -4), slice(10, -6), slice(6, -2)), (0,)),
    ("brain_003", ".nrrd", (slice(8, -2), slice(2, -12), slice(2, -8)), (1,)),
)


def _nilearn_data_file(name: str) -> Path:
    """A file nilearn ships in `nilearn/datasets/data/`, found without importing nilearn (2 s of imports)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "nilearn is not installed; the brain demo needs its bundled MNI ICBM152 template"
        )
    path = Path(spec.origin).parent / "datasets" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: this nilearn release does not ship the MNI ICBM152 template"
        )
    return path


def _downsample2(arr: np.ndarray) -> np.ndarray:
    """2x2x2 block mean (1 mm -> 2 mm), trimming an odd last voxel."""
    x, y, z = (n - n % 2 for n in arr.shape)
    a = arr[:x, :y, :z].astype(np.float64)
    return a.reshape(x // 2, 2, y // 2, 2, z // 2, 2).mean(axis=(1, 3, 5))


def _template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1 as int16, label mask as uint8, 4x4 RAS affine) at 2 mm, from the files nilearn's
    `load_mni152_template` / `load_mni152_gm_template` / `load_mni152_wm_template` read."""
    import nibabel as nib

    t1 = nib.load(_nilearn_data_file(MNI_FILES["t1"]))
    gm = _downsample2(np.asanyarray(nib.load(_nilearn_data_file(MNI_FILES["gm"])).dataobj))
    wm = _downsample2(np.asanyarray(nib.load(_nilearn_data_file(MNI_FILES["wm"])).dataobj))
    t1_data = _downsample2(np.asanyarray(t1.dataobj))
    image = np.round(t1_data / t1_data.max() * 1000).astype(np.int16)
    mask = np.zeros(image.shape, np.uint8)
    mask[(gm >= 0.5) & (gm >= wm)] = 1
    mask[(wm >= 0.5) & (wm > gm)] = 2
    affine = np.asarray(t1.affine, dtype=float).copy()
    affine[:3, 3] += affine[:3, :3] @ np.full(3, 0.5)  # centre of the first 2x2x2 block
    affine[:3, :3] *= 2
    return image, mask, affine


def _to_sitk(arr: np.ndarray, affine: np.ndarray):
    """nibabel (i, j, k) array in RAS -> SimpleITK image with the same physical geometry (LPS)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    direction = ras_to_lps @ (affine[:3, :3] / spacing)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(d) for d in direction.ravel()])
    img.SetOrigin([float(o) for o in ras_to_lps @ affine[:3, 3]])
    return img


def _crop_affine(affine: np.ndarray, crop: tuple[slice, ...] | None, shape: tuple[int, ...]) -> np.ndarray:
    if crop is None:
        return affine
    start = [s.indices(n)[0] for s, n in zip(crop, shape, strict=True)]
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ np.array(start, dtype=float) + affine[:3, 3]
    return out


def write_brain_msd(folder: Path) -> None:
    """`dataset.json`, `imagesTr/`, `labelsTr/` with one .nii.gz, one .mha and one .nrrd case."""
    import SimpleITK as sitk

    image, mask, affine = _template()
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    training = []
    for case, ext, crop, flips in BRAIN_CASES:
        img, msk = image, mask
        aff = _crop_affine(affine, crop, image.shape)
        if crop is not None:
            img, msk = img[crop], msk[crop]
        for axis in flips:  # mirror the voxels (a plausible left-right / front-back mirrored brain)
            img, msk = np.flip(img, axis), np.flip(msk, axis)
        for sub, arr in (("imagesTr", img), ("labelsTr", msk)):
            sitk.WriteImage(_to_sitk(arr, aff), str(folder / sub / f"{case}{ext}"), useCompression=True)
        training.append({"image": f"./imagesTr/{case}{ext}", "label": f"./labelsTr/{case}{ext}"})
    dataset = {
        "name": "DemoBrainMNI",
        "description": "MNI ICBM152 2009 T1 template (nilearn, 2 mm) with grey/white matter labels "
        "thresholded from its tissue probability maps",
        "reference": "Fonov et al. 2009/2011, via nilearn.datasets.load_mni152_template",
        "licence": "unknown (nilearn's dataset description states 'License: unknown')",
        "release": "gmai-pipeline demo",
        "tensorImageSize": "3D",
        "modality": {"0": "T1"},
        "labels": BRAIN_LABELS,
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
