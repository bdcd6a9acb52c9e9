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


def _mask_3d(fixture: Fixture, path: str) -> bool:
    """A mask in a volume format is 3D, unless the fixture's images are pictures (`image:`, CRASS's 2D
    MetaImage radiographs): then it is a 2D MetaImage mask."""
    planar = any(f.image is not None for f in fixture.files) and not any(f.volume for f in fixture.files)
    return is_volume(path) and not planar


@dataclass(frozen=True)
class Shapes:
    """One 2D size and one 3D shape for the whole fixture, so images and their masks always agree."""

    plane: tuple[int, int]  # (height, width)
    volume: tuple[int, int, int]

    @classmethod
    def of(cls, fixture: Fixture) -> Shapes:
        n2 = sum(len(f.mask) for f in fixture.files if f.mask is not None and not _mask_3d(fixture, f.path))
        n2 += sum(_plane_blocks(f) for f in fixture.files)
        n2 += sum(len(f.colors) for f in fixture.files if f.colors is not None)
        n3 = sum(len(f.mask) for f in fixture.files if f.mask is not None and _mask_3d(fixture, f.path))
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


def _colour_blocks(shape: tuple[int, int], colours, start: int) -> np.ndarray:
    """An RGB colour-coded mask: each colour one block, black elsewhere."""
    out = np.zeros((*shape, 3), np.uint8)
    cols = shape[1] // BLOCK
    for i, rgb in enumerate(colours, start=start):
        r, c = divmod(i, cols)
        out[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = rgb
    return out


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


def _coarse_volume(path: Path, fine: tuple[int, int, int], spacing: int) -> None:
    """A volume `spacing` times coarser than the fixture's grid over the same extent (voxel centres
    shifted by half the difference), as HECKTOR's PET lies beside its CT; NIfTI carries the geometry."""
    import nibabel as nib

    shape = tuple(max(1, math.ceil(n / spacing)) for n in fine)
    affine = np.diag([float(spacing)] * 3 + [1.0])
    affine[:3, 3] = (spacing - 1) / 2
    nib.save(nib.Nifti1Image(_picture(shape, str(path), high=900).astype(np.float32), affine), str(path))


def _save_netpbm(path: Path, arr: np.ndarray) -> None:
    """A binary PGM (P5, 8-bit), as mini-MIAS ships its films."""
    Image.fromarray(arr.astype(np.uint8)).convert("L").save(path, "PPM")


def _save_picture(path: Path, arr: np.ndarray) -> None:
    if path.suffix.lower() == ".pgm":
        return _save_netpbm(path, arr)
    if is_volume(path.name):  # a 2D MetaImage (CRASS): SimpleITK writes x.mhd + x.raw, or x.mha
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=arr.ndim == 3), str(path))
        return
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
    on_slides = any(f.format in SLIDE_FORMATS for f in fixture.files)
    start2 = start3 = 0
    written = []
    for f in fixture.files:
        path = base / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(path)
        if f.format is not None:
            _converted(path, f, shapes, start2, on_slides)
            start2 += _plane_blocks(f)
        elif f.image is not None:
            shape = (*shapes.plane, 3) if f.image == "RGB" else shapes.plane
            _save_picture(path, _picture(shape, f.path).astype(np.uint8))
        elif f.mask is not None:
            if _mask_3d(fixture, f.path) and f.time is not None:
                _save_volume(path, _frames_4d(_blocks_3d(shapes.volume, f.mask, start3), f.time, f.labelled))
                start3 += len(f.mask)
            elif _mask_3d(fixture, f.path):
                _save_volume(path, _blocks_3d(shapes.volume, f.mask, start3))
                start3 += len(f.mask)
            else:
                _save_picture(path, _blocks_2d(shapes.plane, f.mask, start2, f.background or 0))
                start2 += len(f.mask)
        elif f.colors is not None:
            _save_picture(path, _colour_blocks(shapes.plane, f.colors, start2))
            start2 += len(f.colors)
        elif f.spacing is not None:
            _coarse_volume(path, shapes.volume, f.spacing)
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


# ---------------------------------------------------------------- files in the converters' formats
#
# `format: ... holds: ...` (catalog_records.HOLDS). Pictures' polygons and RLE runs take the next blocks
# of the fixture's 2D grid (like masks), so they always lie inside the picture beside them; on a fixture
# with slides, polygons and mask values take 512-px regions of the slide's left part instead, and the
# rest of the slide is unannotated tissue (background tiles). Headers carry no patient data.

SLIDE_FORMATS = ("pyramid_tiff", "tiff_mask", "plain_slide")
SLIDE = (2048, 3072)  # level-0 (height, width): a 1024-px annotated strip and 2048 x 2048 of bare tissue
REGION = 512  # level-0 side of one annotated region on a slide
GLASS, TISSUE, LESION = (240, 240, 240), (170, 60, 190), (200, 80, 150)


def _plane_blocks(f) -> int:
    """How many 2D grid blocks a converter-format file takes (0 for slides and their regions)."""
    if f.format in ("slice_masks", "matlab_mask"):
        return len(f.holds.values)
    if f.format == "rle_csv":
        return f.holds.blocks
    if f.format == "imgannot_xml":
        return f.holds.blocks
    if f.format in ("aperio_xml", "asap_xml", "geojson", "vertices_json"):
        return f.holds.blocks  # on a slide fixture these blocks are simply unused rows of the grid
    return 0


def _converted(path: Path, f, shapes: Shapes, start: int, on_slides: bool) -> None:
    h = f.holds
    if f.format == "dicom_series":
        _dicom_series(path, h, shapes.plane)
    elif f.format == "slice_masks":
        _slice_masks(path, h, shapes.plane, start)
    elif f.format == "matlab_mask":
        _matlab_mask(path, h, shapes.plane, start)
    elif f.format in ("aperio_xml", "asap_xml", "geojson", "vertices_json"):
        squares = _slide_squares if on_slides else _grid_squares
        writers = {"aperio_xml": _aperio_xml, "asap_xml": _asap_xml, "geojson": _geojson}
        writers.get(f.format, _vertices_json)(path, h, squares(shapes.plane, h, start))
    elif f.format == "rle_csv":
        _rle_csv(path, h, shapes.plane, start, on_slides)
    elif f.format == "hdf5":
        _hdf5(path, h)
    elif f.format == "npy":
        _npy_stack(path, h)
    elif f.format == "imgannot_xml":
        _imgannot_xml(path, h, shapes.plane, start)
    elif f.format == "pyramid_tiff":
        _slide(path, h, _slide_pixels(path))
    elif f.format == "plain_slide":
        _plain_slide(path, h)
    else:  # tiff_mask
        _slide(path, h, _slide_mask(h.values))


def _block_origin(plane: tuple[int, int], i: int) -> tuple[int, int]:
    """(row, column) of the top-left pixel of block i of the 2D grid (as `_blocks_2d` lays them)."""
    r, c = divmod(i, plane[1] // BLOCK)
    return r * BLOCK, c * BLOCK


def _grid_squares(plane: tuple[int, int], holds, start: int) -> list[tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) per shape: a positive shape covers its 4x4 block (16 pixel centres); a negative
    one the centre 2x2 of the previous shape's block."""
    out, i = [], start
    for shape in holds.shapes:
        if shape.negative:
            x0, y0 = out[-1][0], out[-1][1]
            out.append((x0 + 1, y0 + 1, x0 + 3, y0 + 3))
            continue
        y, x = _block_origin(plane, i)
        out.append((x, y, x + BLOCK, y + BLOCK))
        i += 1
    return out


def _slide_squares(plane, holds, start: int) -> list[tuple[float, float, float, float]]:
    """Level-0 squares on the slide's annotated strip: region k at (k % 2, k // 2) * 512, inset by 64;
    a negative shape is the centre of the previous one."""
    out, k = [], 0
    for shape in holds.shapes:
        if shape.negative:
            x0, y0, x1, y1 = out[-1]
            q = (x1 - x0) / 4
            out.append((x0 + q, y0 + q, x1 - q, y1 - q))
            continue
        x, y = _region_origin(k)
        out.append((x + 64, y + 64, x + REGION - 64, y + REGION - 64))
        k += 1
    return out


def _region_origin(k: int) -> tuple[int, int]:
    if k >= 2 * SLIDE[0] // REGION:
        raise ValueError(f"a slide fixture holds at most {2 * SLIDE[0] // REGION} annotated regions")
    return (k % 2) * REGION, (k // 2) * REGION


def _square(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _aperio_xml(path: Path, holds, squares) -> None:
    """ImageScope XML: consecutive shapes of one name form one Annotation layer (its Name, or with
    `attribute` its first Attribute's Name, as MoNuSAC writes the cell type); one Region per shape,
    `NegativeROA="1"` for a hole."""
    layers: list[tuple[str, list[str]]] = []
    for n, (shape, sq) in enumerate(zip(holds.shapes, squares, strict=True), start=1):
        if not layers or (layers[-1][0] != shape.name and not shape.negative):
            layers.append((shape.name, []))
        verts = "".join(f'<Vertex X="{x:g}" Y="{y:g}" Z="0"/>' for x, y in _square(*sq))
        layers[-1][1].append(
            f'<Region Id="{n}" Type="0" Zoom="1" Selected="0" NegativeROA="{int(shape.negative)}" '
            f'InputRegionId="0" Analyze="1" DisplayId="{n}"><Attributes/><Vertices>{verts}</Vertices></Region>'
        )
    body = []
    for a, (name, regions) in enumerate(layers, start=1):
        attrs = f'<Attribute Name="{_xml(name)}" Id="0" Value=""/>' if holds.attribute else ""
        label = "" if holds.attribute else _xml(name)
        body.append(
            f'<Annotation Id="{a}" Name="{label}" ReadOnly="0" Type="4" LineColor="65280" Visible="1">'
            f"<Attributes>{attrs}</Attributes><Regions><RegionAttributeHeaders/>{''.join(regions)}</Regions>"
            "<Plots/></Annotation>"
        )
    path.write_text(
        f'<Annotations MicronsPerPixel="0.252100">{"".join(body)}</Annotations>', encoding="utf-8"
    )


def _asap_xml(path: Path, holds, squares) -> None:
    """ASAP XML (CAMELYON16/17): one Annotation per shape in its group (`PartOfGroup`); a negative
    shape goes to the exclusion group `_2` unless it names its own."""
    anns, groups = [], []
    for i, (shape, sq) in enumerate(zip(holds.shapes, squares, strict=True)):
        group = shape.name or ("_2" if shape.negative else "None")
        groups.append(group)
        coords = "".join(
            f'<Coordinate Order="{k}" X="{x:g}" Y="{y:g}" />' for k, (x, y) in enumerate(_square(*sq))
        )
        anns.append(
            f'<Annotation Name="Annotation {i}" Type="Polygon" PartOfGroup="{_xml(group)}" Color="#F4FA58">'
            f"<Coordinates>{coords}</Coordinates></Annotation>"
        )
    gs = "".join(
        f'<Group Name="{_xml(g)}" PartOfGroup="None" Color="#64FE2E"><Attributes /></Group>'
        for g in dict.fromkeys(groups)
    )
    path.write_text(
        f'<?xml version="1.0"?><ASAP_Annotations><Annotations>{"".join(anns)}</Annotations>'
        f"<AnnotationGroups>{gs}</AnnotationGroups></ASAP_Annotations>",
        encoding="utf-8",
    )


def _geojson(path: Path, holds, squares) -> None:
    """A QuPath GeoJSON export: a FeatureCollection of Polygon features with `classification.name`; a
    negative shape is an interior ring of the feature before it."""
    features: list[dict] = []
    for shape, sq in zip(holds.shapes, squares, strict=True):
        ring = [list(p) for p in _square(*sq)]
        ring.append(ring[0])
        if shape.negative:
            features[-1]["geometry"]["coordinates"].append(ring[::-1])
            continue
        features.append(
            {
                "type": "Feature",
                "id": f"{len(features) + 1:08x}-0000-4000-8000-000000000000",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "classification": {"name": shape.name}},
            }
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8")


def _vertices_json(path: Path, holds, squares) -> None:
    """BCNB's outlines: `{group: [{"vertices": [[x, y], ...]}]}`, each shape's name its group."""
    groups: dict[str, list] = {}
    for shape, sq in zip(holds.shapes, squares, strict=True):
        if not shape.negative:
            groups.setdefault(shape.name, []).append({"vertices": [list(p) for p in _square(*sq)]})
    path.write_text(json.dumps(groups), encoding="utf-8")


def _xml(text: str) -> str:
    from xml.sax.saxutils import quoteattr

    return quoteattr(text)[1:-1]


def _rle(plane: tuple[int, int], i: int, holds) -> str:
    """The runs of block i of the grid, numbered as the dataset numbers its pixels."""
    h, w = plane
    y, x = _block_origin(plane, i)
    mask = np.zeros(plane, bool)
    mask[y : y + BLOCK, x : x + BLOCK] = True
    return _runs(mask, holds)


def _slide_rle(k: int, holds) -> str:
    """On a slide fixture (HuBMAP's train.csv beside its TIFFs): the runs of the slide's region k."""
    x, y = _region_origin(k)
    mask = np.zeros(SLIDE, bool)
    mask[y + 64 : y + REGION - 64, x + 64 : x + REGION - 64] = True
    return _runs(mask, holds)


def _runs(mask: np.ndarray, holds) -> str:
    flat = mask.flatten(order="F" if holds.order == "column" else "C")
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    if holds.runs == "relative":  # each offset counts from the end of the previous run (SIIM-ACR)
        offsets = starts - np.concatenate([[0], ends[:-1]])
        pairs = zip(offsets.tolist(), (ends - starts).tolist(), strict=True)
    else:
        pairs = zip((starts + holds.start).tolist(), (ends - starts).tolist(), strict=True)
    return " ".join(f"{a} {b}" for a, b in pairs)


def _rle_csv(path: Path, holds, plane: tuple[int, int], start: int, on_slides: bool = False) -> None:
    col = holds.header.index(holds.column)
    rows, i = [list(holds.header)], 0 if on_slides else start
    for r in holds.rows:
        r = list(r)
        if r[col] == "@block":
            r[col] = _slide_rle(i, holds) if on_slides else _rle(plane, i, holds)
            i += 1
        rows.append(r)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def _series_geometry(ds, i: int, plane: tuple[int, int]) -> None:
    """Real geometry tags: axial slices 2.5 mm apart along the normal, 0.8 mm pixels."""
    ds.Rows, ds.Columns = plane
    ds.PixelSpacing = [0.8, 0.8]
    ds.SliceThickness = 2.5
    ds.SpacingBetweenSlices = 2.5
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.ImagePositionPatient = [-3.2, -3.2, 10.0 + 2.5 * i]
    ds.SliceLocation = 10.0 + 2.5 * i
    ds.InstanceNumber = i + 1


def _dicom_series(folder: Path, holds, plane: tuple[int, int]) -> None:
    """One series in `folder` (CT_small.dcm's header, no patient data): a SeriesInstanceUID from the
    folder's path, one SOPInstanceUID per slice, geometry along the slice normal."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = generate_uid(entropy_srcs=[folder.as_posix(), "series"])
    for i in range(holds.slices):
        name = holds.names.format(i=i)
        ds = template.copy()
        ds.Modality = holds.modality
        ds.PatientID, ds.PatientName = "ANON", "ANON"
        ds.BurnedInAnnotation = "NO"
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[folder.as_posix(), name])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        _series_geometry(ds, i, plane)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
        ds.PixelData = _picture(plane, f"{folder.as_posix()}/{name}", high=4000).astype(np.uint16).tobytes()
        ds.save_as(folder / name, enforce_file_format=True)


def _slice_masks(folder: Path, holds, plane: tuple[int, int], start: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    mask = _blocks_2d(plane, holds.values, start)
    for i in range(holds.slices):
        Image.fromarray(mask).save(folder / holds.names.format(i=i))


def _matlab_mask(path: Path, holds, plane: tuple[int, int], start: int) -> None:
    """A MATLAB label volume (rows, columns, slices) in MAT v5 or v7.3 (HDF5, column-major, text header)."""
    import h5py
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.repeat(_blocks_2d(plane, holds.values, start)[:, :, None], holds.slices, axis=2)
    if holds.version == "5":
        scipy.io.savemat(path, {holds.variable: mask}, do_compression=True)
        return
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset(holds.variable, data=np.ascontiguousarray(mask.transpose()))
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, HDF5 schema 1.00 .")


def _imgannot_xml(path: Path, holds, plane: tuple[int, int], start: int) -> None:
    """An imgannotool file: marking k on block start + k (a square polygon, a circle in it, or a point)."""
    out = []
    for k, m in enumerate(holds.markings):
        r, c = _block_origin(plane, start + k)
        cx, cy = c + BLOCK // 2, r + BLOCK // 2
        if m.region == "polygon":
            pts = "".join(
                f"<coords2d>{x},{y}</coords2d>" for x, y in ((c, r), (c + BLOCK, r), (c + BLOCK, r + BLOCK))
            )
            region = (
                f"<polygonregion><centroid><coords2d>{cx},{cy}</coords2d></centroid>{pts}</polygonregion>"
            )
        elif m.region == "circle":
            region = (
                f"<circleregion><centroid><coords2d>{cx},{cy}</coords2d></centroid>"
                f'<radius direction="x">{BLOCK // 2}</radius><radius direction="y">{BLOCK // 2}</radius></circleregion>'
            )
        else:
            region = ""
        out.append(
            f"<marking>{region}<representativepoint><coords2d>{cx},{cy}</coords2d></representativepoint>"
            f"<confidencelevel>{m.confidence}</confidencelevel><markingtype>{m.type}</markingtype></marking>"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<imgannotooldata><header><software>imgannotool</software></header>'
        f"<imagename>{path.stem.rsplit('_', 1)[0]}.png</imagename><markinglist>{''.join(out)}</markinglist>"
        "</imgannotooldata>",
        encoding="utf-8",
    )


def _npy_stack(path: Path, holds) -> None:
    """A stacked array: textured pictures, or instance channels (instance k + 1 one block of its channel)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if holds.holds == "images":
        data = np.stack([_picture(holds.shape[1:], f"{path.as_posix()}/{i}") for i in range(holds.shape[0])])
    else:
        data = np.zeros(holds.shape, holds.dtype)
        for k, ch in enumerate(holds.values):
            data[..., ch] = _blocks_2d(holds.shape[1:3], (k + 1,), k)
    np.save(path, data.astype(holds.dtype))


def _hdf5(path: Path, holds) -> None:
    """Datasets by path; pictures textured and different per record, label maps one block per value."""
    import h5py

    with h5py.File(path, "w") as f:
        for name, d in holds.datasets.items():
            if d.holds == "labels":
                data = np.asarray(d.values, d.dtype).reshape(d.shape)
            elif d.holds == "masks":
                data = np.stack([_blocks_2d(d.shape[1:], d.values, 0) for _ in range(d.shape[0])]).astype(
                    d.dtype
                )
            else:
                data = _picture(d.shape, f"{path.as_posix()}/{name}").astype(d.dtype)
            f.create_dataset(name, data=data, chunks=True if data.ndim > 1 else None)


def _slide_pixels(path: Path) -> np.ndarray:
    """Glass border, textured tissue (different per path), lesion colour where regions are annotated."""
    rng = np.random.default_rng(_seed(path.as_posix()))
    noise = rng.integers(-12, 12, size=(64, 64, 1), endpoint=True)
    h, w = SLIDE
    tissue = np.tile((np.asarray(TISSUE) + noise).astype(np.uint8), (h // 64, w // 64, 1))
    lesion = (np.asarray(LESION) + noise).astype(np.uint8)
    for k in range(2 * h // REGION):
        x, y = _region_origin(k)
        tissue[y + 64 : y + REGION - 64, x + 64 : x + REGION - 64] = np.tile(lesion, (6, 6, 1))
    tissue[:64], tissue[-64:], tissue[:, :64], tissue[:, -64:] = GLASS, GLASS, GLASS, GLASS
    return tissue


def _slide_mask(values: tuple[int, ...]) -> np.ndarray:
    """PANDA's mask slides: the label in the red channel, value k on annotated region k."""
    px = np.zeros((*SLIDE, 3), np.uint8)
    for k, v in enumerate(values):
        x, y = _region_origin(k)
        px[y + 64 : y + REGION - 64, x + 64 : x + REGION - 64, 0] = v
    return px


def _slide(path: Path, holds, base: np.ndarray) -> None:
    """A tiled pyramidal TIFF: Aperio's description (AppMag, MPP) when a magnification is given, which
    OpenSlide's aperio driver reads; else a generic tiled TIFF recording neither."""
    import tifffile

    h, w = base.shape[:2]
    desc = None
    if holds.magnification is not None:
        desc = (
            f"Aperio Image Library v12.0.15\r\n{w}x{h} [0,0 {w}x{h}] (256x256) RGB"
            f"|AppMag = {holds.magnification:g}|MPP = {holds.mpp}"
        )
    with tifffile.TiffWriter(path) as tw:
        for i, step in enumerate(holds.levels):
            tw.write(
                np.ascontiguousarray(base[::step, ::step]),
                tile=(256, 256),
                photometric="rgb",
                compression="zlib",
                compressionargs={"level": 1},  # the texture repeats: fast and still small
                description=desc if i == 0 else None,
                metadata=None,
                subfiletype=0 if i == 0 else 1,
            )


def _plain_slide(path: Path, holds) -> None:
    """A slide as one plain image (by extension), or with `values` its palette mask on the same grid."""
    from PIL import Image

    if not holds.values and path.suffix.lower() in (".tif", ".tiff"):  # tiled, not a pyramid (HuBMAP)
        import tifffile

        tifffile.imwrite(path, _slide_pixels(path), photometric="rgb", tile=(256, 256), compression="zlib")
        return
    if not holds.values:
        Image.fromarray(_slide_pixels(path)).save(path)
        return
    index = np.full(SLIDE, holds.background, np.uint8)
    for k, v in enumerate(holds.values):
        x, y = _region_origin(k)
        index[y + 64 : y + REGION - 64, x + 64 : x + REGION - 64] = v
    mask = Image.fromarray(index, "P")
    mask.putpalette([c for i in range(256) for c in (i, 255 - i, (37 * i) % 256)])
    mask.save(path)


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
