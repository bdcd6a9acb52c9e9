"""A channel on its own grid resampled onto the mask's (`reader.resample`), on tiny NIfTI files at HECKTOR
2022's real relative paths, through the catalog YAML."""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from layout_fixtures import entry, nifti
from normalize_fixtures import reasons, run

from gmai_pipeline.catalog import CatalogError
from gmai_pipeline.decode_guard import DecodeBudget
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.layouts import Resample
from gmai_pipeline.readers.resample import on_mask_grid

HECKTOR = """
reader:
  kind: layout
  images: 'imagesTr/{case}__{channel}.nii.gz'
  masks: 'labelsTr/{case}.nii.gz'
  modality: {rules: [{when: {channel: PT}, value: PET}], default: CT}
  axes: [2]
  %s
labels: {'1': primary tumour (GTVp), '2': lymph node (GTVn)}
"""


def _pet(path: Path, shift: float, shape=(8, 8, 4)) -> None:
    """PET on a 2 mm grid covering the same extent as the 1 mm CT (voxel centres 0.5 mm further in);
    the value is the physical x coordinate, so linear resampling must give x back."""
    x = 2.0 * np.arange(shape[0]) + 0.5
    arr = np.broadcast_to(x[:, None, None] + shift, shape).astype(np.float32).copy()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))


def _case(top: Path, case: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    nifti(top / "imagesTr" / f"{case}__CT.nii.gz", rng.uniform(-900, 400, (16, 16, 8)).astype(np.float32))
    _pet(top / "imagesTr" / f"{case}__PT.nii.gz", seed)
    lab = np.zeros((16, 16, 8), np.uint8)
    lab[2:8, 2:8, 2:6] = 1
    lab[9:14, 9:14, 2:6] = 2
    nifti(top / "labelsTr" / f"{case}.nii.gz", lab)


def test_hecktor_pet_resampled_onto_the_ct_mask_grid(tmp_path: Path) -> None:
    """hecktor2022_training/hecktor2022/imagesTr/<Center>-<NNN>__CT.nii.gz and __PT.nii.gz with
    labelsTr/<Center>-<NNN>.nii.gz (Project-MONAI/tutorials:auto3dseg/tasks/hecktor22/hecktor22_folds.json;
    zhaoziheng/SAT-DS:processor.py preprocess_Hecktor2022): the masks lie on the CT grid, the PET on a
    coarser one. Declared, the PET is resampled and sliced like the CT; undeclared, it is a shape mismatch."""
    raw = tmp_path / "raw" / "hecktor2022"
    top = raw / "hecktor2022_training" / "hecktor2022"
    _case(top, "CHUP-049", 1)
    _case(top, "MDA-142", 2)
    source = entry(tmp_path, "hecktor2022", "3d_seg", HECKTOR % "resample: {to: mask, channels: [PT]}")
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept, qrows) == (4, 4, [])
    assert report.counters["volumes_resampled"] == 2
    by_modality = Counter(r["modality"] for r in rows)
    assert by_modality["PET"] == by_modality["CT"] > 0
    assert {r["label"] for r in rows} == {"primary tumour (GTVp)", "lymph node (GTVn)"}

    plain = entry(tmp_path, "hecktor2022", "3d_seg", HECKTOR % "")
    report, rows, qrows = run(plain, raw, tmp_path / "out2")
    assert reasons(qrows) == {"shape_mismatch": 2}
    assert {r["modality"] for r in rows} == {"CT"}


class _Ctx:
    """The three things `on_mask_grid` uses of a ReaderContext."""

    def __init__(self, folder: Path, budget: int | None = None):
        self.folder = folder
        self.store = SimpleNamespace(budget=DecodeBudget(budget))
        self.counters: Counter = Counter()

    @contextlib.contextmanager
    def open(self, rel: str):
        with open(self.folder / rel, "rb") as f:
            yield f


def test_linear_resampling_keeps_physical_positions(tmp_path: Path) -> None:
    """Values follow physical space, not voxel indices: a ramp in x comes back as x on the fine grid;
    a file already on the mask grid is left to the ordinary reader; the decode budget is checked first."""
    _case(tmp_path, "CHUV-008", 3)
    ctx = _Ctx(tmp_path)
    spec = Resample(channels=["PT"])
    arr = on_mask_grid(ctx, spec, "imagesTr/CHUV-008__PT.nii.gz", "PT", "labelsTr/CHUV-008.nii.gz")
    assert arr.shape == (16, 16, 8, 1)
    inner = arr[1:15, 4, 4, 0]  # inside the PET voxel centres (0.5 .. 14.5 mm)
    np.testing.assert_allclose(inner, np.arange(1, 15) + 3, atol=1e-4)
    assert on_mask_grid(ctx, spec, "imagesTr/CHUV-008__CT.nii.gz", "CT", "labelsTr/CHUV-008.nii.gz") is None
    assert (
        on_mask_grid(ctx, Resample(), "imagesTr/CHUV-008__CT.nii.gz", "CT", "labelsTr/CHUV-008.nii.gz")
        is None
    )
    with pytest.raises(ImageError) as err:
        on_mask_grid(
            _Ctx(tmp_path, 1000), spec, "imagesTr/CHUV-008__PT.nii.gz", "PT", "labelsTr/CHUV-008.nii.gz"
        )
    assert err.value.reason == "too_large"


def test_resample_is_for_volumes(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="resample apply to 3d_seg"):
        entry(
            tmp_path,
            "x",
            "2d_seg",
            """
            reader: {kind: layout, images: 'img/{id}.png', masks: 'gt/{id}.png', resample: {to: mask}}
            labels: {'1': lesion}
            """,
        )
