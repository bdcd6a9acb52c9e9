"""Files in the real formats, at the real relative paths of datasets that need a converter."""

from __future__ import annotations

import random
from pathlib import Path

import h5py
import numpy as np
import pydicom
import tifffile
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

PATIENT = "Quasimodo^Zyxwvut"
SECRETS = ("quasimodo", "zyxwvut", "7730519")
ROWS, COLS = 16, 20  # DICOM slice grid
SPACING = 2.5
ORIGIN_Z = 110.0


def block_row(z: float) -> int:
    """The first DICOM row of the block a test mask marks on the slice at height z (depends on position)."""
    return int(round(z)) % 10


def chaos_series(
    folder: Path,
    ground: Path | None,
    n: int = 6,
    skip: tuple[int, ...] = (),
    seed: int = 0,
    values: tuple[int, ...] = (255,),
    names: str = "i{v:04d},0000b.dcm",
    modality: str = "CT",
    uid: str | None = None,
) -> dict[float, int]:
    """A series in `folder` as CHAOS ships it (file names that are not in position order), and, in
    `ground`, one PNG per file: the k-th PNG by name marks the k-th DICOM by name (CHAOS's rule).
    Returns {slice height: first row of its block}. Headers carry a patient name that must never surface."""
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uid = uid or generate_uid()
    rng = random.Random(seed)
    ks = [k for k in range(n) if k not in skip]
    order = rng.sample(range(len(ks)), len(ks))  # file-name rank of each slice: not position order
    files = []
    for k, rank in zip(ks, order, strict=True):
        d = template.copy()
        d.PatientName, d.PatientID = PATIENT, "7730519"
        d.Modality = modality
        d.SeriesInstanceUID, d.SOPInstanceUID = uid, generate_uid()
        d.InstanceNumber = rank + 1
        d.Rows, d.Columns = ROWS, COLS
        d.PixelSpacing = [0.8, 0.6]
        d.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        z = ORIGIN_Z + SPACING * k
        d.ImagePositionPatient = [-40.0, 25.0, z]
        d.RescaleSlope, d.RescaleIntercept = 1, -1024
        r, c = np.mgrid[0:ROWS, 0:COLS]
        d.PixelData = (1000 + 40 * k + 7 * r + 3 * c + 200 * ((r + c) % 2)).astype(np.int16).tobytes()
        d.file_meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
        name = names.format(v=rank)
        d.save_as(folder / name, enforce_file_format=True)
        files.append((name, z))
    blocks = {}
    if ground is not None:
        ground.mkdir(parents=True, exist_ok=True)
        by_name = sorted(files, key=lambda t: t[0])
        for i, (name, z) in enumerate(by_name):
            m = np.zeros((ROWS, COLS), np.uint8)
            r0 = block_row(z)
            for j, v in enumerate(values):
                m[r0 : r0 + 3, 2 + 8 * j : 6 + 8 * j] = v
            stem = f"liver_GT_{i:03d}" if modality == "CT" else name.rsplit(".", 1)[0]
            Image.fromarray(m).save(ground / f"{stem}.png")
            blocks[round(z, 3)] = r0
    return blocks


def asap_xml(path: Path, shapes: list[tuple[str, list[tuple[float, float]]]]) -> Path:
    """ASAP XML (Camelyon16/17): `ASAP_Annotations/Annotations/Annotation/Coordinates/Coordinate`."""

    def ann(i: int, group: str, pts) -> str:
        c = "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in enumerate(pts))
        return (
            f'<Annotation Name="Annotation {i}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">'
            f"<Coordinates>{c}</Coordinates></Annotation>"
        )

    body = "".join(ann(i, g, pts) for i, (g, pts) in enumerate(shapes))
    groups = "".join(
        f'<Group Name="{g}" PartOfGroup="None" Color="#64FE2E" />' for g in sorted({g for g, _ in shapes})
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'<?xml version="1.0"?><ASAP_Annotations><Annotations>{body}</Annotations>'
        f"<AnnotationGroups>{groups}</AnnotationGroups></ASAP_Annotations>"
    )
    return path


def aperio_xml(path: Path, regions: list[tuple[list[tuple[float, float]], bool]], extra: str = "") -> Path:
    """ImageScope XML as MoNuSeg ships it (an unnamed Annotation with Id 1; one Region per nucleus;
    `NegativeROA="1"` marks a region that cuts a hole)."""
    out = []
    for i, (pts, negative) in enumerate(regions, start=1):
        verts = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in pts)
        out.append(
            f'<Region Id="{i}" Type="0" Zoom="0.04" Selected="0" NegativeROA="{int(negative)}" '
            f'InputRegionId="0" Analyze="1" DisplayId="{i}"><Attributes/><Vertices>{verts}</Vertices></Region>'
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '<Annotations MicronsPerPixel="0.252100"><Annotation Id="1" Name="" ReadOnly="0" Type="4" '
        'LineColor="65280" Visible="1"><Attributes><Attribute Name="Description" Id="0" Value=""/></Attributes>'
        f"<Regions><RegionAttributeHeaders/>{''.join(out)}{extra}</Regions><Plots/></Annotation></Annotations>"
    )
    return path


def pcam(folder: Path, n: int, split: str = "valid", chunk: int = 32) -> tuple[Path, Path]:
    """`camelyonpatch_level_2_split_{split}_{x,y}.h5`: x (N, 96, 96, 3) uint8 whose first pixel encodes
    the index, y (N, 1, 1, 1) in its own file (basveeling/pcam:README.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    xp = folder / f"camelyonpatch_level_2_split_{split}_x.h5"
    yp = folder / f"camelyonpatch_level_2_split_{split}_y.h5"
    with h5py.File(xp, "w") as f:
        x = f.create_dataset("x", (n, 96, 96, 3), dtype=np.uint8, chunks=(min(chunk, n), 96, 96, 3))
        for b in range(0, n, 512):
            m = min(n, b + 512) - b
            idx = np.arange(b, b + m, dtype=np.uint32)
            block = np.empty((m, 96, 96, 3), np.uint8)
            block[:] = (idx % 251)[:, None, None, None]
            block[:, 10:20, 10:40, 1] = 255  # not a flat picture
            x[b : b + m] = block
    with h5py.File(yp, "w") as f:
        f.create_dataset("y", data=(np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1))
    return xp, yp


def pyramid_slide(path: Path, base: np.ndarray, mag: float = 20, mpp: float = 0.5, levels=(1, 2, 4)) -> Path:
    """A tiled pyramidal TIFF in Aperio's SVS layout (OpenSlide's aperio driver reads AppMag and MPP)."""
    h, w = base.shape[:2]
    desc = (
        f"Aperio Image Library v12.0.15\r\n{w}x{h} [0,0 {w}x{h}] (256x256) RGB|AppMag = {mag:g}|MPP = {mpp}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tw:
        for i, step in enumerate(levels):
            tw.write(
                np.ascontiguousarray(base[::step, ::step]),
                tile=(256, 256),
                photometric="rgb",
                compression="zlib",
                description=desc if i == 0 else None,
                metadata=None,
                subfiletype=0 if i == 0 else 1,
            )
    return path
