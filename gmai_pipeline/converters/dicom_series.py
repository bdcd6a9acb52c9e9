"""`dicom_series`: a folder of single-frame DICOM slices -> one canonical RAS+ volume (and its labels).

What an input is: one *series* (the files of one SeriesInstanceUID inside the folder the reader
hands over, split further by the tags in `split_by` when a series mixes echoes or phases), plus
every file that cannot join a series (unreadable, no position, a non-image object): `scan` returns
those as `rejected`, each its own quarantined input. A series is kept whole or quarantined whole.

Why it is built this way:
- Headers only to group and order (`dcmread(stop_before_pixels=True, specific_tags=...)`): a
  series is checked before a single pixel is decoded, so a broken series costs a header read.
- Slices are ordered by their position along the slice normal (ImageOrientationPatient row x column
  direction, dotted with ImagePositionPatient), never by file name or InstanceNumber: exports shuffle
  both (dcm2niix and SimpleITK's GDCM reader sort the same way).
- Consistency is checked, not assumed: one orientation (`mixed_orientation`), one in-plane grid
  (`inconsistent_geometry`), no two slices at one position (`duplicate_position`, with the hint to
  declare `split_by`), even spacing: a gap that is a whole multiple of the usual spacing is
  `missing_slice`, any other deviation `uneven_spacing`. Nothing is resampled; a tilted gantry
  keeps its sheared affine.
- The affine maps (column, row, slice) indices to patient space in LPS (DICOM) and is flipped to RAS
  (nibabel); the array is then reoriented exactly as `gmai_pipeline.volumes.read_volume` does for
  NIfTI (`nibabel.io_orientation`, flips and permutations only), so a DICOM series and the NIfTI
  dcm2niix would make of it give the same array, and `volumes.iter_slices` applies unchanged.
- Pixel values go through the modality LUT (RescaleSlope/Intercept, or a Modality LUT Sequence)
  per slice, so CT is in HU whatever each slice's rescale.
- Privacy, as in the 2D DICOM path (`gmai_pipeline.readers.dicom`): header values are used to
  decide, never written: no value reaches an output, a log or a message (pydicom's warnings and log
  records are silenced, they can quote values). Messages name files by the name the caller gives
  (`DicomFile.name`, the reader's pseudonymous path) and slices by ordinal. Every file is checked
  for burned-in text (`burned_in_risk`); one risky file quarantines its series
  (`burned_in_text_risk`) unless the catalog allows it.

Masks, in the series' own voxel grid (nothing is resampled; a mask on another grid is `mask_mismatch`):
- `volume`: a NIfTI/MHA/NRRD label volume (`load_volume_mask`), read by `read_volume`; its
  canonical shape must equal the series' (and a NIfTI's affine must agree within half a voxel).
- `dicom_series`: a series whose pixel values are labels, matched slice by slice by position.
- `dicom_seg`: a DICOM Segmentation object (binary or fractional); each frame is placed by its
  Plane Position; the value written is the segment number (the catalog names it), never the
  SegmentLabel text, which is a header value.
- `slices`: one 2D label image per slice (CHAOS `Ground/*.png`), in the DICOM pixel grid (rows =
  DICOM rows), matched by `match`: `file_order` (the k-th mask file in natural name order belongs to
  the k-th DICOM file in natural name order; CHAOS's own rule, "the orientation of the slices is
  determined by order of image names NOT by position tags", emrekavur/CHAOS-evaluation:
  Python/CHAOSmetrics.py), `instance_number` (the number in the mask file name, `index_pattern`,
  equals InstanceNumber + `index_offset`), or `position_order` (the k-th mask file belongs to the
  k-th slice along the normal).

Catalog declaration (`reader.convert` of a `kind: layout` entry; the reader is
`gmai_pipeline.readers.dicom_series`). CHAOS, `Train_Sets/CT/<n>/DICOM_anon/*.dcm` + `Ground/*.png`:

    reader:
      kind: layout
      root: Train_Sets
      images: "CT/{case}/DICOM_anon/*.dcm"
      masks: "CT/{case}/Ground/*.png"
      convert:
        kind: dicom_series
        mask: {kind: slices, match: file_order}
        # split_by: [EchoNumbers]          # MR series that mix echoes
        # spacing_tolerance: 0.05          # relative
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from gmai_pipeline.converters._masks import Options, label_dtype
from gmai_pipeline.converters.matlab import MatlabMask
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
NON_IMAGE_MODALITIES = {"RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"}
SPLIT_TAGS = ("EchoNumbers", "AcquisitionNumber", "TemporalPositionIdentifier", "TriggerTime", "ImageType")
# Read from every file: grouping, geometry, the burned-in decision, and (for name checks only) the
# identifying values the 2D path checks names against.
HEADER_TAGS = (
    "SeriesInstanceUID",
    "SOPClassUID",
    "Modality",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "InstanceNumber",
    "NumberOfFrames",
    "BurnedInAnnotation",
    "SeriesDescription",
    "FrameOfReferenceUID",
    "ReferencedSeriesSequence",
    *SPLIT_TAGS,
)


class VolumeMask(Options):
    kind: Literal["volume"] = "volume"


class SeriesMask(Options):
    kind: Literal["dicom_series"] = "dicom_series"


class SegMask(Options):
    kind: Literal["dicom_seg"] = "dicom_seg"


class SliceMasks(Options):
    kind: Literal["slices"] = "slices"
    match: Literal["file_order", "instance_number", "position_order"]
    index_pattern: str = r"(\d+)(?!.*\d)"  # the last number in the file name
    index_offset: int = 0  # mask number = InstanceNumber + offset (CHAOS-style 0-based names: -1)


MaskSpec = Annotated[VolumeMask | SeriesMask | SegMask | SliceMasks | MatlabMask, Field(discriminator="kind")]


class DicomSeriesOptions(Options):
    kind: Literal["dicom_series"] = "dicom_series"
    mask: MaskSpec | None = None
    split_by: tuple[Literal[SPLIT_TAGS], ...] = ()  # type: ignore[valid-type]
    spacing_tolerance: float = Field(0.05, gt=0, lt=0.5)  # relative deviation from the usual spacing
    orientation_tolerance: float = Field(1e-3, gt=0, lt=0.1)  # on direction cosines
    min_slices: int = Field(2, ge=1)
    burned_in_text_allowed: bool = False


@dataclass(frozen=True)
class DicomFile:
    """One DICOM file: its bytes (a path, or a function returning bytes already verified by the
    reader: `ReaderContext.read`), and the name messages use for it (the reader's pseudonymous path)."""

    path: Path | Callable[[], bytes]
    name: str
    order: str = ""  # the name `file_order` sorts by when `name` is a pseudonym (the real path; never shown)

    def source(self):
        """What pydicom reads: the verified bytes as a file object, or the path."""
        return io.BytesIO(self.path()) if callable(self.path) else self.path


@dataclass
class _Header:
    file: DicomFile
    position: np.ndarray
    orientation: np.ndarray  # 6 direction cosines
    grid: tuple[int, int, float, float]  # rows, columns, row spacing, column spacing
    instance: int | None
    burned_in: str | None


@dataclass
class Series:
    """One series after the header scan: slices sorted along the normal, not yet decoded."""

    token: str  # stable pseudonym: a hash of the member names, never of a header value
    slices: list[_Header]
    normal: np.ndarray
    distances: np.ndarray  # along the normal, ascending
    identifying: set[str] = field(default_factory=set)  # lower-cased header values, for name checks only
    burned_in: str | None = None
    frame_of_reference: str = ""  # kept to match SEG objects; never output
    uid: str = ""  # kept to match SEG objects; never output

    @property
    def files(self) -> list[DicomFile]:
        return [s.file for s in self.slices]


@dataclass
class SegObject:
    """A DICOM Segmentation found by the scan; matched to its series by the referenced series/frame of reference."""

    file: DicomFile
    referenced_series: str
    frame_of_reference: str


@dataclass
class Scan:
    series: list[Series]
    segmentations: list[SegObject]
    rejected: list[tuple[DicomFile, ImageError]]


@dataclass
class SeriesVolume:
    """A decoded series in canonical RAS+ orientation (the array `volumes.read_volume` would give)."""

    volume: np.ndarray  # float32, modality LUT applied
    affine: np.ndarray  # 4x4, canonical voxel indices -> RAS mm
    spacing: tuple[float, float, float]  # mm along canonical axes 0, 1, 2
    ornt: np.ndarray  # nibabel orientation taking the (column, row, slice) array to RAS+
    raw_shape: tuple[int, int, int]
    series: Series

    def canonical(self, raw: np.ndarray) -> np.ndarray:
        """An array in the series' (column, row, slice-by-position) order -> canonical, like the volume."""
        from nibabel.orientations import apply_orientation

        return apply_orientation(raw, self.ornt)  # flips and permutations: a view, not a copy


def quiet():
    """`readers.dicom.quiet`: pydicom's warnings and log records can quote header values."""
    from gmai_pipeline.readers.dicom import quiet as dicom_quiet

    return dicom_quiet()


def _floats(value, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def natural_key(name: str) -> list:
    """'img10' after 'img9' (MATLAB natsort, which CHAOS uses to pair files)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _read_header(f: DicomFile, extra_tags: Sequence[str]):
    import pydicom
    from pydicom.errors import InvalidDicomError

    from gmai_pipeline.readers.dicom import IDENTIFYING_TAGS

    try:
        return pydicom.dcmread(
            f.source(), stop_before_pixels=True, specific_tags=[*HEADER_TAGS, *IDENTIFYING_TAGS, *extra_tags]
        )
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageError(
            Reason.UNREADABLE, f"{f.name}: not a readable DICOM file ({type(exc).__name__})"
        ) from None


def scan(files: Iterable[DicomFile], opts: DicomSeriesOptions) -> Scan:
    """Group files into series by header alone; files that cannot join one come back in `rejected`."""
    from gmai_pipeline.readers.dicom import burned_in_risk, header_values

    groups: dict[tuple, list[_Header]] = {}
    meta: dict[tuple, dict] = {}
    segs: list[SegObject] = []
    rejected: list[tuple[DicomFile, ImageError]] = []
    with quiet():
        for f in files:
            try:
                ds = _read_header(f, ())
            except ImageError as err:
                rejected.append((f, err))
                continue
            modality = str(ds.get("Modality", "") or "").upper()
            if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
                refs = ds.get("ReferencedSeriesSequence") or []
                ref = str(refs[0].get("SeriesInstanceUID", "")) if len(refs) else ""
                segs.append(SegObject(f, ref, str(ds.get("FrameOfReferenceUID", "") or "")))
                continue
            if modality in NON_IMAGE_MODALITIES:
                rejected.append((f, ImageError(Reason.NOT_AN_IMAGE, f"{f.name}: a non-image DICOM object")))
                continue
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            position = _floats(ds.get("ImagePositionPatient") or (), 3)
            orientation = _floats(ds.get("ImageOrientationPatient") or (), 6)
            spacing = _floats(ds.get("PixelSpacing") or (), 2)
            if not uid:
                rejected.append((f, ImageError(Reason.NO_SERIES, f"{f.name}: no SeriesInstanceUID")))
                continue
            if position is None or orientation is None or spacing is None:
                rejected.append(
                    (
                        f,
                        ImageError(
                            Reason.NO_POSITION,
                            f"{f.name}: no usable ImagePositionPatient/ImageOrientationPatient/PixelSpacing",
                        ),
                    )
                )
                continue
            try:
                frames = int(ds.get("NumberOfFrames", 1) or 1)
                grid = (
                    int(ds.get("Rows", 0) or 0),
                    int(ds.get("Columns", 0) or 0),
                    float(spacing[0]),
                    float(spacing[1]),
                )
                instance = ds.get("InstanceNumber")
                instance = int(instance) if instance not in (None, "") else None
            except (TypeError, ValueError):
                rejected.append(
                    (
                        f,
                        ImageError(
                            Reason.UNREADABLE,
                            f"{f.name}: malformed Rows/Columns/NumberOfFrames/InstanceNumber",
                        ),
                    )
                )
                continue
            if frames > 1:
                rejected.append(
                    (
                        f,
                        ImageError(
                            Reason.UNSUPPORTED_LAYOUT,
                            f"{f.name}: a multi-frame object, not one slice per file",
                        ),
                    )
                )
                continue
            key = (uid, *(str(ds.get(t, "")) for t in opts.split_by))
            header = _Header(
                f,
                position,
                orientation,
                grid,
                instance,
                burned_in_risk(ds),
            )
            groups.setdefault(key, []).append(header)
            m = meta.setdefault(key, {"values": set(), "for": str(ds.get("FrameOfReferenceUID", "") or "")})
            m["values"].update(header_values(ds))
            del ds
    series = [_series(key, members, meta[key]) for key, members in groups.items()]
    series.sort(key=lambda s: natural_key(s.slices[0].file.name) if s.slices else [])
    return Scan(series, segs, rejected)


def _series(key: tuple, members: list[_Header], meta: dict) -> Series:
    names = sorted(h.file.name for h in members)
    token = hashlib.md5("\n".join(names).encode()).hexdigest()[:12]
    first = members[0].orientation
    normal = np.cross(first[:3], first[3:])
    dist = np.array([float(normal @ h.position) for h in members])
    order = np.argsort(dist, kind="stable")
    slices = [members[i] for i in order]
    burned = next((h.burned_in for h in slices if h.burned_in), None)
    return Series(token, slices, normal, dist[order], meta["values"], burned, meta["for"], key[0])


def _ordinal(i: int) -> str:
    return (
        f"{i + 1}{'th' if 10 <= (i + 1) % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get((i + 1) % 10, 'th')}"
    )


def check(series: Series, opts: DicomSeriesOptions, where: str) -> float:
    """The slice spacing (mm) of a consistent series; ImageError naming the problem otherwise.

    `where` names the series in messages (the reader's name for the folder or case).
    """
    n = len(series.slices)
    if n < opts.min_slices:
        raise ImageError(Reason.TOO_FEW_SLICES, f"{where}: {n} slice(s), at least {opts.min_slices} needed")
    if series.burned_in and not opts.burned_in_text_allowed:
        bad = next(h.file.name for h in series.slices if h.burned_in)
        raise ImageError(Reason.BURNED_IN_TEXT_RISK, f"{where}: {bad}: {series.burned_in}")
    first = series.slices[0]
    for h in series.slices[1:]:
        if np.max(np.abs(h.orientation - first.orientation)) > opts.orientation_tolerance:
            raise ImageError(
                Reason.MIXED_ORIENTATION,
                f"{where}: {h.file.name} has another ImageOrientationPatient than {first.file.name}",
            )
        if h.grid[:2] != first.grid[:2] or not np.allclose(h.grid[2:], first.grid[2:], rtol=1e-3):
            raise ImageError(
                Reason.INCONSISTENT_GEOMETRY,
                f"{where}: {h.file.name} has other Rows/Columns/PixelSpacing than {first.file.name}",
            )
    if n == 1:
        return 1.0
    gaps = np.diff(series.distances)
    scale = max(float(np.median(np.abs(gaps))), 1e-6)
    dup = np.flatnonzero(gaps < scale * opts.spacing_tolerance)
    if dup.size:
        i = int(dup[0])
        raise ImageError(
            Reason.DUPLICATE_POSITION,
            f"{where}: {series.slices[i].file.name} and {series.slices[i + 1].file.name} lie at the same "
            "position (several echoes/phases in one series? declare split_by)",
        )
    ratio = gaps / scale
    off = np.flatnonzero(np.abs(ratio - 1) > opts.spacing_tolerance)
    if off.size:
        i = int(off[0])
        whole = round(float(ratio[i]))
        a, b = series.slices[i].file.name, series.slices[i + 1].file.name
        if whole >= 2 and abs(ratio[i] - whole) <= opts.spacing_tolerance:
            missing = int(sum(round(float(r)) - 1 for r in ratio[off] if round(float(r)) >= 2))
            raise ImageError(
                Reason.MISSING_SLICE,
                f"{where}: {missing} slice(s) missing; the gap between the {_ordinal(i)} and {_ordinal(i + 1)} "
                f"slice by position ({a}, {b}) is {ratio[i]:.2f}x the usual spacing",
            )
        raise ImageError(
            Reason.UNEVEN_SPACING,
            f"{where}: the gap between the {_ordinal(i)} and {_ordinal(i + 1)} slice by position ({a}, {b}) "
            f"is {ratio[i]:.2f}x the usual spacing (tolerance {opts.spacing_tolerance})",
        )
    return scale


def _affine_lps(series: Series, spacing: float) -> np.ndarray:
    """(column, row, slice) -> LPS mm; the slice step is the mean position step (keeps a gantry tilt)."""
    first = series.slices[0]
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    _, _, row_spacing, col_spacing = first.grid
    if len(series.slices) > 1:
        step = (series.slices[-1].position - first.position) / (len(series.slices) - 1)
    else:
        step = series.normal * spacing
    aff = np.eye(4)
    aff[:3, 0] = row_dir * col_spacing  # column index runs along the row direction
    aff[:3, 1] = col_dir * row_spacing  # row index runs along the column direction
    aff[:3, 2] = step
    aff[:3, 3] = first.position
    return aff


def _pixels(ds, name: str, budget=None) -> np.ndarray:
    """Stored values through the modality LUT, as float32 (rows, columns); the checks and failure
    reasons are the 2D DICOM path's (`readers.dicom.pixel_array`)."""
    from pydicom.pixels import apply_modality_lut

    from gmai_pipeline.readers.dicom import pixel_array

    arr = pixel_array(ds, name, budget)
    if arr.ndim != 2:
        raise ImageError(Reason.UNSUPPORTED_LAYOUT, f"{name}: not a single-channel single-frame image")
    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)


def _read_full(f: DicomFile):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(f.source())
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageError(
            Reason.UNREADABLE, f"{f.name}: not a readable DICOM file ({type(exc).__name__})"
        ) from None


def volume_bytes(series: Series) -> int:
    """What `load` allocates: the float32 volume, its reoriented copy, and one slice's LUT copy."""
    rows, cols = series.slices[0].grid[:2]
    return rows * cols * (8 * len(series.slices) + 8)


def load(series: Series, opts: DicomSeriesOptions, where: str, budget=None) -> SeriesVolume:
    """Check the series, decode every slice, and return the canonical volume; ImageError on any failure.

    With a `budget` (`decode_guard.DecodeBudget`), the volume's size is checked before it is allocated
    (`too_large`), as is each slice's declared pixel size."""
    import nibabel as nib

    spacing = check(series, opts, where)
    rows, cols = series.slices[0].grid[:2]
    if budget is not None:
        budget.check(volume_bytes(series), where, f"a {cols}x{rows}x{len(series.slices)} series")
    raw = np.empty((cols, rows, len(series.slices)), dtype=np.float32)
    with quiet():
        for k, h in enumerate(series.slices):
            ds = _read_full(h.file)
            px = _pixels(ds, h.file.name, budget)
            if px.shape != (rows, cols):
                raise ImageError(
                    Reason.INCONSISTENT_GEOMETRY, f"{where}: {h.file.name} pixel array is not {rows}x{cols}"
                )
            raw[:, :, k] = px.T
            del ds
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ _affine_lps(series, spacing)  # LPS -> RAS
    ornt = nib.orientations.io_orientation(affine)
    canon_affine = affine @ nib.orientations.inv_ornt_aff(ornt, raw.shape)
    volume = nib.orientations.apply_orientation(raw, ornt)  # a view: slicing and windowing read it as it is
    zooms = tuple(float(v) for v in np.sqrt((canon_affine[:3, :3] ** 2).sum(axis=0)))
    return SeriesVolume(volume, canon_affine, zooms, ornt, raw.shape, series)  # type: ignore[arg-type]


# ------------------------------------------------------------------ masks


def _as_labels(raw: np.ndarray, name: str) -> np.ndarray:
    from gmai_pipeline.volumes import as_label_array

    return as_label_array(raw, name)


def load_volume_mask(source, name: str, sv: SeriesVolume, budget=None) -> np.ndarray:
    """A label volume file for the series (a path, or an open verified file): canonical, the same
    shape, and for NIfTI the same place in patient space (within half a voxel)."""
    from gmai_pipeline.volumes import read_volume

    labels = read_volume(source, name, is_label=True, budget=budget)
    if labels.shape != sv.volume.shape:
        raise ImageError(
            Reason.MASK_MISMATCH,
            f"{name}: label volume shape {labels.shape} != series shape {sv.volume.shape}",
        )
    if name.lower().endswith((".nii", ".nii.gz")):
        aff = _canonical_nifti_affine(source, name)
        tol = 0.5 * min(sv.spacing)
        corners = np.array([[0, 0, 0, 1], [*(s - 1 for s in labels.shape), 1]], dtype=float).T
        if np.max(np.abs(aff @ corners - sv.affine @ corners)) > tol:
            raise ImageError(
                Reason.MASK_MISMATCH, f"{name}: label volume lies elsewhere in patient space than the series"
            )
    return labels


def _canonical_nifti_affine(source, name: str) -> np.ndarray:
    """The affine `nibabel.as_closest_canonical` would give, from the header alone."""
    import gzip

    import nibabel as nib

    from gmai_pipeline.volumes import _nifti_header

    with contextlib.ExitStack() as stack:
        if hasattr(source, "read"):
            source.seek(0)
            f = source
        else:
            f = stack.enter_context(open(source, "rb"))  # noqa: SIM115
        stream = (
            stack.enter_context(gzip.GzipFile(fileobj=f, mode="rb")) if name.lower().endswith(".gz") else f
        )
        _, header = _nifti_header(stream, name)
        aff = header.get_best_affine()
        shape = tuple(int(d) for d in header.get_data_shape()[:3])
    ornt = nib.orientations.io_orientation(aff)
    return aff @ nib.orientations.inv_ornt_aff(ornt, shape)


def _slice_index(
    sv: SeriesVolume, position: np.ndarray, orientation: np.ndarray | None, grid, name: str
) -> int:
    """Which slice (by position order) a mask plane at `position` belongs to; mask_mismatch if none."""
    series = sv.series
    first = series.slices[0]
    if orientation is not None and np.max(np.abs(orientation - first.orientation)) > 1e-3:
        raise ImageError(Reason.MASK_MISMATCH, f"{name}: mask plane orientation differs from the series")
    if grid is not None and (
        tuple(grid[:2]) != first.grid[:2] or not np.allclose(grid[2:], first.grid[2:], rtol=1e-3)
    ):
        raise ImageError(
            Reason.MASK_MISMATCH, f"{name}: mask grid (rows, columns, spacing) differs from the series"
        )
    d = float(series.normal @ position)
    spacing = float(np.median(np.diff(series.distances))) if len(series.slices) > 1 else 1.0
    k = int(np.argmin(np.abs(series.distances - d)))
    in_plane = position - series.slices[k].position
    in_plane = in_plane - (in_plane @ series.normal) * series.normal
    if abs(series.distances[k] - d) > 0.25 * abs(spacing) or np.linalg.norm(in_plane) > 0.5 * min(
        first.grid[2:]
    ):
        raise ImageError(Reason.MASK_MISMATCH, f"{name}: a mask plane lies on no slice of the series")
    return k


def load_series_mask(mask: Series, sv: SeriesVolume, where: str, budget=None) -> np.ndarray:
    """A series whose pixel values are labels, placed slice by slice by position (absent slices: 0)."""
    rows, cols = sv.series.slices[0].grid[:2]
    raw = np.zeros(sv.raw_shape, dtype=np.uint32)
    with quiet():
        for h in mask.slices:
            k = _slice_index(sv, h.position, h.orientation, h.grid, h.file.name)
            px = _pixels(_read_full(h.file), h.file.name, budget)
            if px.shape != (rows, cols):
                raise ImageError(Reason.MASK_MISMATCH, f"{where}: {h.file.name} is not {rows}x{cols}")
            raw[:, :, k] = _as_labels(px, h.file.name).T
    return _as_labels(sv.canonical(raw), where)


def load_seg(seg: SegObject, sv: SeriesVolume, budget=None) -> np.ndarray:
    """A DICOM SEG on the series' grid -> canonical label volume of segment numbers (higher wins on overlap)."""
    from gmai_pipeline.readers.dicom import pixel_array

    name = seg.file.name
    with quiet():
        ds = _read_full(seg.file)
        frames = pixel_array(ds, name, budget)
        if frames.ndim == 2:
            frames = frames[None]
        shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        if len(per_frame) != frames.shape[0]:
            raise ImageError(
                Reason.UNREADABLE, f"{name}: per-frame functional groups do not match the frame count"
            )
        fractional = str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL"
        threshold = float(ds.get("MaximumFractionalValue", 255) or 255) / 2 if fractional else 0
        rows, cols = int(ds.Rows), int(ds.Columns)

        def group(item, seq: str):
            for g in (item, shared):
                value = g.get(seq) if g is not None else None
                if value:
                    return value[0]
            return None

        raw = np.zeros(sv.raw_shape, dtype=np.uint16)
        for i, item in enumerate(per_frame):
            pos = group(item, "PlanePositionSequence")
            seg_id = group(item, "SegmentIdentificationSequence")
            orient = group(item, "PlaneOrientationSequence")
            measures = group(item, "PixelMeasuresSequence")
            position = _floats(pos.get("ImagePositionPatient") if pos else (), 3)
            if position is None or seg_id is None:
                raise ImageError(
                    Reason.UNREADABLE, f"{name}: frame {i + 1} has no plane position or segment number"
                )
            orientation = _floats(orient.get("ImageOrientationPatient") if orient else (), 6)
            spacing = _floats(measures.get("PixelSpacing") if measures else (), 2)
            grid = (rows, cols, *spacing) if spacing is not None else None
            k = _slice_index(sv, position, orientation, grid, name)
            value = int(seg_id.ReferencedSegmentNumber)
            plane = raw[:, :, k]
            hit = (frames[i] > threshold).T
            plane[hit & (plane < value)] = value
        del ds
    top = int(raw.max()) if raw.size else 0
    return sv.canonical(raw).astype(label_dtype(top), copy=False)


def load_slice_masks(masks: Sequence[tuple], sv: SeriesVolume, spec: SliceMasks, where: str) -> np.ndarray:
    """One 2D label image per slice (`spec.match` says which belongs to which) -> canonical label volume.

    Each mask is (a function giving its label indices, its name in messages[, the real name it is
    ordered and numbered by, when the shown one is a pseudonym]): the reader reads and decodes it
    (`readers.masks.load_mask` on verified bytes), so every file goes through the same checks."""
    series = sv.series
    rows, cols = series.slices[0].grid[:2]
    n = len(series.slices)
    ordered = sorted(
        ((m[0], m[1], m[2] if len(m) > 2 else m[1]) for m in masks), key=lambda m: natural_key(m[2])
    )
    if spec.match in ("file_order", "position_order"):
        if len(ordered) != n:
            raise ImageError(Reason.MASK_MISMATCH, f"{where}: {len(ordered)} mask images for {n} slices")
        if spec.match == "position_order":
            targets = list(range(n))
        else:
            targets = sorted(
                range(n), key=lambda k: natural_key(series.slices[k].file.order or series.slices[k].file.name)
            )
    else:
        pattern = re.compile(spec.index_pattern)
        slot = {}
        for k, h in enumerate(series.slices):
            if h.instance is None:
                raise ImageError(
                    Reason.MASK_MISMATCH, f"{where}: {h.file.name} has no InstanceNumber to match masks by"
                )
            slot[h.instance + spec.index_offset] = k
        targets = []
        for _, mname, order in ordered:
            m = pattern.search(order.rsplit("/", 1)[-1])
            if m is None or int(m.group(1)) not in slot:
                raise ImageError(
                    Reason.MASK_MISMATCH, f"{where}: mask {mname} matches no slice's InstanceNumber"
                )
            targets.append(slot[int(m.group(1))])
    raw = None
    for (loader, mname, _), k in zip(ordered, targets, strict=True):
        mask = loader()
        if mask.shape != (rows, cols):
            raise ImageError(
                Reason.MASK_MISMATCH,
                f"{mname}: mask is {mask.shape[1]}x{mask.shape[0]}, the slices are {cols}x{rows}",
            )
        mask = _as_labels(mask, mname)
        if (
            raw is None
        ):  # the labels' own type (8-bit PNGs: one byte a voxel), widened if a later one needs it
            raw = np.zeros(sv.raw_shape, dtype=mask.dtype)
        elif mask.dtype.itemsize > raw.dtype.itemsize:
            raw = raw.astype(mask.dtype)
        raw[:, :, k] = mask.T
    return _as_labels(sv.canonical(raw), where)


def matching_seg(segs: Sequence[SegObject], series: Series) -> list[SegObject]:
    """The SEG objects that reference this series (by series, else by frame of reference)."""
    return [
        s
        for s in segs
        if (s.referenced_series and s.referenced_series == series.uid)
        or (
            not s.referenced_series
            and s.frame_of_reference
            and s.frame_of_reference == series.frame_of_reference
        )
    ]
