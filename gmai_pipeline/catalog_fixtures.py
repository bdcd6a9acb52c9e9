"""Layout fixtures: tiny files in the real formats at a dataset's real paths, read by its shipped entry.

A record's `catalog.fixture` lists a few real relative paths of the download with what each holds
(`gmai_pipeline.catalog_records.FixtureFile`) and what the entry must make of them. `build` writes the
files (8x8 pictures, 8x8x8 volumes; a mask's values one 4x4 block or 4x4x4 cube each, so every value
survives the mask filters; every picture different, so none is a duplicate); `run_fixture` scans the
folder as `source/<name>` does, normalizes it with the entry exactly as shipped and returns what does
not match. Used by `tests/test_catalog_fixtures.py` and `python -m gmai_pipeline.catalog_report --fixtures`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.catalog_records import Fixture
from gmai_pipeline.manifest import scan
from gmai_pipeline.normalize import NormalizeReport, normalize_source, shown_names, verify_outputs

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
BLOCK = 4  # side of one mask value's block: 16 pixels in 2D, the readers' minimum component size
BARE_NUMBER = re.compile(r"^\s*[-+]?\d+(\.\d+)?\s*$")


def is_volume(path: str) -> bool:
    return path.lower().endswith(VOLUME_SUFFIXES)


@dataclass(frozen=True)
class Shapes:
    """One 2D size and one 3D shape for the whole fixture, so images and their masks always agree."""

    plane: tuple[int, int]  # (height, width)
    volume: tuple[int, int, int]

    @classmethod
    def of(cls, fixture: Fixture) -> Shapes:
        n2 = sum(len(f.mask) for f in fixture.files if f.mask is not None and not is_volume(f.path))
        n3 = sum(len(f.mask) for f in fixture.files if f.mask is not None and is_volume(f.path))
        rows = max(2, math.ceil(n2 / 2))
        depth = max(2, math.ceil(n3 / 4))
        return cls((BLOCK * rows, 2 * BLOCK), (2 * BLOCK, 2 * BLOCK, BLOCK * depth))


def _seed(path: str) -> int:
    return zlib.crc32(path.encode())


def _picture(shape: tuple[int, ...], path: str, high: int = 255) -> np.ndarray:
    """Textured, different for every path (never constant, never a byte duplicate of another file)."""
    rng = np.random.default_rng(_seed(path))
    return rng.integers(16, high, size=shape, endpoint=True)


def _blocks_2d(
    shape: tuple[int, int], values: tuple[int, ...], start: int, background: int = 0
) -> np.ndarray:
    dtype = np.uint16 if max((*values, background), default=0) > 255 else np.uint8
    mask = np.full(shape, background, dtype)
    cols = shape[1] // BLOCK
    for i, v in enumerate(values, start=start):
        r, c = divmod(i, cols)
        mask[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = v
    return mask


def _blocks_3d(shape: tuple[int, int, int], values: tuple[int, ...], start: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint16 if max(values, default=0) > 255 else np.uint8)
    for i, v in enumerate(values, start=start):
        z, rest = divmod(i, 4)
        y, x = divmod(rest, 2)
        mask[x * BLOCK : (x + 1) * BLOCK, y * BLOCK : (y + 1) * BLOCK, z * BLOCK : (z + 1) * BLOCK] = v
    return mask


def _frames_4d(mask: np.ndarray, time: int, labelled: tuple[int, ...] | None) -> np.ndarray:
    """A 3D mask as a 4D (x, y, z, time) label volume, the blocks only in the `labelled` frames."""
    out = np.zeros((*mask.shape, time), mask.dtype)
    for t in labelled if labelled is not None else range(time):
        out[..., t] = mask
    return out


def _save_volume(path: Path, arr: np.ndarray) -> None:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    else:  # MHA, MHD (+ its .raw), NRRD, NHDR through SimpleITK
        import SimpleITK as sitk

        if arr.ndim != 3:
            raise ValueError(f"{path.name}: a multi-channel fixture volume is written as NIfTI only")
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))


def _save_netpbm(path: Path, arr: np.ndarray) -> None:
    """A binary PGM (P5, 8-bit), as mini-MIAS ships its films."""
    Image.fromarray(arr.astype(np.uint8)).convert("L").save(path, "PPM")


def _save_picture(path: Path, arr: np.ndarray) -> None:
    if path.suffix.lower() == ".pgm":
        return _save_netpbm(path, arr)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
    ext = path.suffix.lower()
    if ext not in fmt:
        raise ValueError(f"{path.name}: no picture format for '{ext}' (PNG, JPEG, BMP, TIFF)")
    kw = {"quality": 95} if fmt[ext] == "JPEG" else {}
    Image.fromarray(arr).save(path, fmt[ext], **kw)


def _dicom(path: Path, shape: tuple[int, int], modality: str) -> None:
    """A single-frame DICOM built on the header of pydicom's own CT_small.dcm test file."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns = shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
    ds.PixelData = _picture(shape, path.as_posix(), high=4000).astype(np.uint16).tobytes()
    ds.Modality = modality
    ds.PatientID = "ANON"
    ds.BurnedInAnnotation = "NO"
    ds.save_as(path)


def _raw(path: Path, spec) -> None:
    """Headerless pixels as `spec` (`layouts.RawPixels`) declares them: size, sample type, byte order,
    header bytes; values within `bits` and textured, different for every path."""
    top = (1 << spec.bits) - 1 if spec.bits is not None else (255 if spec.itemsize == 1 else 4000)
    rng = np.random.default_rng(_seed(path.as_posix()))
    y, x = np.mgrid[0 : spec.height, 0 : spec.width]
    smooth = (np.sin(x / 37.0 + rng.uniform(0, 6)) * np.cos(y / 53.0) + 1) / 2
    arr = np.clip(smooth * top * 0.9 + rng.integers(0, max(2, top // 20), (spec.height, spec.width)), 0, top)
    path.write_bytes(b"\0" * spec.offset + arr.astype(spec.numpy_dtype).tobytes())


def _npy(path: Path, shape: tuple[int, ...]) -> None:
    """A `.npy` uint8 array (no pickle), textured and different for every path."""
    np.save(path, _picture(shape, path.as_posix()).astype(np.uint8), allow_pickle=False)


def _pickled(path: Path, shape: tuple[int, ...]) -> None:
    """A pickled uint16 ndarray (protocol 2, as Python 2 era datasets wrote them), textured."""
    import pickle

    arr = _picture(shape, path.as_posix(), high=4000).astype(np.uint16)
    path.write_bytes(pickle.dumps(arr, protocol=2))


def _table(path: Path, spec) -> None:
    rows = [list(spec.header)] if spec.header is not None else []
    rows += [list(r) for r in spec.rows]
    if path.suffix.lower() == ".xlsx":
        from openpyxl import Workbook

        wb = Workbook()
        ws = wb.active
        ws.title = spec.sheet or "Sheet1"
        for r in rows:
            ws.append([_number(c) for c in r])
        wb.save(path)
        return
    delimiter = spec.delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def _number(cell: str) -> int | float | str:
    try:
        return int(cell)
    except ValueError:
        try:
            return float(cell)
        except ValueError:
            return cell


def build(fixture: Fixture, folder: Path) -> list[Path]:
    """Write every fixture file under `folder / fixture.under`; return the paths written."""
    shapes = Shapes.of(fixture)
    base = folder / fixture.under if fixture.under else folder
    start2 = start3 = 0
    written = []
    for f in fixture.files:
        path = base / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(path)
        if f.image is not None:
            shape = (*shapes.plane, 3) if f.image == "RGB" else shapes.plane
            _save_picture(path, _picture(shape, f.path).astype(np.uint8))
        elif f.mask is not None:
            if is_volume(f.path) and f.time is not None:
                _save_volume(path, _frames_4d(_blocks_3d(shapes.volume, f.mask, start3), f.time, f.labelled))
                start3 += len(f.mask)
            elif is_volume(f.path):
                _save_volume(path, _blocks_3d(shapes.volume, f.mask, start3))
                start3 += len(f.mask)
            else:
                _save_picture(path, _blocks_2d(shapes.plane, f.mask, start2, f.background or 0))
                start2 += len(f.mask)
        elif f.volume is not None:
            shape = shapes.volume if f.volume == 1 else (*shapes.volume, f.volume)
            _save_volume(path, _picture(shape, f.path, high=900).astype(np.float32))
        elif f.dicom is not None:
            _dicom(path, shapes.plane, f.dicom)
        elif f.raw is not None:
            _raw(path, f.raw)
        elif f.array is not None:
            _npy(path, f.array)
        elif f.pickled_array is not None:
            _pickled(path, f.pickled_array)
        elif f.table is not None:
            _table(path, f.table)
        elif f.text is not None:
            path.write_text(f.text, encoding="utf-8")
        else:
            path.write_text(json.dumps(f.json_, indent=1), encoding="utf-8")
    return written


@dataclass
class FixtureResult:
    problems: list[str]
    report: NormalizeReport
    rows: list[dict] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)


def run_fixture(source: SourceDataset, fixture: Fixture, work: Path) -> FixtureResult:
    """Build the fixture in `work`, read it with `source` as shipped, and list every mismatch."""
    raw = work / "raw" / source.name
    out = work / "out"
    build(fixture, raw)
    report = normalize_source(source, raw, scan(raw, shown=shown_names(source)), out, workers=1)
    rows = pq.read_table(out / "normalized" / f"{source.name}.parquet").to_pylist()
    qrows = pq.read_table(out / "quarantine" / f"{source.name}.parquet").to_pylist()
    return FixtureResult(_problems(source, fixture, report, rows, qrows, out), report, rows, qrows)


def _problems(
    source: SourceDataset,
    fixture: Fixture,
    report: NormalizeReport,
    rows: list[dict],
    qrows: list[dict],
    out: Path,
) -> list[str]:
    want = fixture.yields
    problems = []
    if report.inputs != report.kept + report.quarantined or report.quarantined != len(qrows):
        problems.append(
            f"inputs {report.inputs} != kept {report.kept} + quarantined {report.quarantined} "
            f"({len(qrows)} quarantine rows)"
        )
    for name, outcome in verify_outputs(out, source, report).items():
        # the fixture is a few files, never the documented counts
        if name != "expected_counts" and not outcome.passed:
            problems.append(f"check {name} fails: {outcome.metadata}")
    labels = Counter(r["label"] for r in rows)
    missing = sorted(set(want.labels) - set(labels))
    extra = sorted(set(labels) - set(want.labels))
    if missing:
        problems.append(f"no row labelled {missing} (labels found: {sorted(labels)})")
    if extra:
        problems.append(f"rows labelled {extra}, not declared in fixture.yields.labels")
    bare = sorted(lab for lab in labels if BARE_NUMBER.match(str(lab)))
    if bare:
        problems.append(f"bare numbers in label: {bare} (add them to labels)")
    splits = {r["split"] for r in rows}
    if splits != set(want.splits):
        problems.append(f"row splits {sorted(splits)} != declared {sorted(want.splits)}")
    outside = sorted(splits - set(source.splits))
    if outside:
        problems.append(f"rows in splits {outside}, which the entry does not allow for training")
    modalities = {r["modality"] for r in rows}
    if modalities != set(want.modalities or (source.modality,)):
        problems.append(
            f"row modalities {sorted(modalities)} != declared {sorted(want.modalities or (source.modality,))}"
        )
    reasons = dict(Counter(q["reason"] for q in qrows))
    if reasons != want.quarantined:
        details = "; ".join(f"{q['reason']}: {q['detail']}" for q in qrows[:6])
        problems.append(f"quarantined {reasons} != declared {want.quarantined} ({details or 'none'})")
    if source.task != "cls" and any(r["bbox"] is None for r in rows):
        problems.append("a detection or segmentation row has no box")
    if not rows:
        problems.append(f"no rows at all (ignored files: {report.ignored[:8]})")
    return problems
