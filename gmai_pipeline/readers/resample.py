"""An image file on its own grid, resampled onto its case's mask grid (`reader.resample`).

HECKTOR 2022 ships FDG-PET on a coarser grid (about 4 mm) than the CT and the GTV masks (about 1 mm);
slicing needs voxel-for-voxel agreement, so the PET is resampled with SimpleITK onto the mask's size,
spacing, origin and direction, in physical space (linear by default, as MONAI's and nnU-Net's
preprocessing resample images). Only the headers are read to decide: a file already on the mask grid
goes through the ordinary reader. The result is oriented like `volumes.read_volume` (RAS+, x y z).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gmai_pipeline.decode_guard import decoder_failure, is_output_failure
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.layouts import Resample
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import ReaderContext
from gmai_pipeline.volumes import NIFTI_SUFFIXES, SITK_SUFFIXES

TOLERANCE = 1e-3  # mm (origin, spacing) and cosine (direction): closer than this is the same grid
_SUFFIXES = sorted(NIFTI_SUFFIXES + SITK_SUFFIXES, key=len, reverse=True)


@contextlib.contextmanager
def _itk_reader(ctx: ReaderContext, rel: str) -> Iterator:
    """A SimpleITK reader with the header of `rel` read, opened on the verified descriptor (a link
    named like the file, since ITK picks its reader by suffix)."""
    import SimpleITK as sitk

    suffix = next((s for s in _SUFFIXES if rel.lower().endswith(s)), "")
    with ctx.open(rel) as f, tempfile.TemporaryDirectory(prefix="gmai-resample-") as tmp:
        target = Path(tmp) / f"volume{suffix}"
        target.symlink_to(f"/proc/self/fd/{f.fileno()}")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(target))
        reader.ReadImageInformation()
        yield reader


def _grid(reader) -> tuple:
    return (
        tuple(int(d) for d in reader.GetSize()),
        tuple(reader.GetSpacing()),
        tuple(reader.GetOrigin()),
        tuple(reader.GetDirection()),
    )


def same_grid(a: tuple, b: tuple) -> bool:
    if a[0] != b[0]:
        return False
    pairs = zip(a[1:], b[1:], strict=True)
    return all(math.isclose(x, y, abs_tol=TOLERANCE) for p, q in pairs for x, y in zip(p, q, strict=True))


def wanted(spec: Resample, channel: str | None) -> bool:
    if spec.channels is None:
        return True
    return channel is not None and any(str(c).lower() == channel.lower() for c in spec.channels)


def on_mask_grid(ctx: ReaderContext, spec: Resample, rel: str, channel: str | None, mask_rel: str):
    """`rel` resampled onto `mask_rel`'s grid as a float32 (x, y, z, 1) array, or None when `rel` is
    already on that grid or `spec` does not cover its channel (the caller reads it as usual; a shape
    mismatch is then quarantined there). Every failure is an ImageError naming `rel`."""
    if not wanted(spec, channel):
        return None
    try:
        return _resampled(ctx, spec, rel, mask_rel)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder failure is a quarantine reason
        if is_output_failure(exc):
            raise
        raise decoder_failure(exc, rel, "volume") from None


def _resampled(ctx: ReaderContext, spec: Resample, rel: str, mask_rel: str):
    import SimpleITK as sitk

    with _itk_reader(ctx, mask_rel) as ref:
        grid = _grid(ref)
    with _itk_reader(ctx, rel) as reader:
        if len(grid[0]) != 3 or reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
            raise ImageError(
                Reason.UNREADABLE,
                f"{rel}: resample takes a 3D single-channel image and a 3D mask",
            )
        if same_grid(_grid(reader), grid):
            return None
        source = math.prod(int(d) for d in reader.GetSize())
        target = math.prod(grid[0])
        what = f"a {'x'.join(map(str, reader.GetSize()))} volume resampled to {'x'.join(map(str, grid[0]))}"
        # the source as float32 (ITK + copy), the resampled float32 image and its numpy copy
        ctx.store.budget.check(source * 8 + target * 8, rel, what)
        image = sitk.Cast(reader.Execute(), sitk.sitkFloat32)
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    interpolator = {
        "linear": sitk.sitkLinear,
        "nearest": sitk.sitkNearestNeighbor,
        "bspline": sitk.sitkBSpline,
    }
    out = sitk.Resample(
        image,
        list(grid[0]),
        sitk.Transform(),
        interpolator[spec.interpolation],
        grid[2],
        grid[1],
        grid[3],
        stats.GetMinimum(),  # outside the source's field of view: its background, not an invented 0
        sitk.sitkFloat32,
    )
    del image
    ctx.counters["volumes_resampled"] += 1
    out = sitk.DICOMOrient(out, "RAS")
    return np.ascontiguousarray(sitk.GetArrayFromImage(out).transpose(2, 1, 0))[..., None]
