"""`dicom`: DICOM files plus a label CSV (`labels.csv`: `file,label`); pixels only, never headers.

Input = each data row of the label CSV, plus each DICOM-looking file (`.dcm`, `.dicom`, `.ima`
or no extension; DICOMDIR, LICENSE, README and the like excepted) that no row names
(`unreferenced_file`). Without the CSV, each such file is an
input labelled by its parent folder (`missing_label` at the top level).

Patient data rules:
- Pixels are decoded with pydicom (modality LUT, middle frame of a multi-frame object, CT window
  from the catalog or a wide default, else 0.5/99.5 percentile clipping, MONOCHROME1 inverted) and
  written as a fresh PNG with no metadata. Header values are read only to decide (burned-in risk,
  identifier-looking names) and are never written, logged or put in a quarantine detail; pydicom's
  own warnings and log lines are silenced while reading because they can quote values.
- Burned-in text: `BurnedInAnnotation` YES, or absent on ultrasound, secondary-capture, "other",
  structured-report or dose-report objects -> `burned_in_text_risk`, unless the catalog sets
  `burned_in_text_allowed`.
- Identifier-looking names: a path component looks like an identifier when it contains a DICOM
  UID-like token (`1.2.840...`), a run of 6+ digits (MRN, accession number, date), a date
  `YYYY-MM-DD`/`YYYY_MM_DD`, a `^` (DICOM person name), or, case-insensitively, any identifying
  header value of that file of 3+ characters (patient name parts, IDs, accession, institution,
  physicians, dates, UIDs). If any component does, every such folder becomes `anon` and the file
  becomes `<first 16 hex of the MD5 of the decoded pixels>.dcm`. Identifying values seen in earlier
  headers of the dataset (the first 5,000) count too. A file whose header was never read (missing,
  unreadable, unreferenced, label rejected) shows as the manifest shows it (`manifest_namer`): only
  split and catalog-class folders kept, others `anon`, the file `file-<first 16 hex of the file
  MD5>.dcm` (`missing-<CSV line>.dcm`): its name cannot be checked against its own header. The
  result is what `source_path`, `sample_id`, the stored image name and quarantine details are built
  from; without a catalog labels map, a class-folder label that looks like an identifier is refused.
- Every exception pydicom or numpy raises for one file (a corrupt VR, a short element, bad pixel
  data) is that file's quarantine row with the exception type only (`read_header`, `decode_header`,
  for the `dicom` reader and every other 2D reader's DICOM images); the declared pixel
  size is checked against the decode budget before `pixel_array` allocates it.
- Duplicates are judged on the decoded pixels (the same image re-exported with other headers).
- Compressed transfer syntaxes without an installed decoder -> `unsupported_codec`; pixel data
  shorter than the header says -> `truncated`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from gmai_pipeline.catalog import DICOM_EXTENSIONS, DicomReader, SourceDataset
from gmai_pipeline.decode_guard import DecodeBudget, decoder_failure, is_output_failure
from gmai_pipeline.imaging import ImageError, modality_slug, to_uint8
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Event, Kept, Quarantined, ReaderContext, at_boundary, join
from gmai_pipeline.storage import md5_bytes
from gmai_pipeline.volumes import window_for

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
IDENTIFYING_TAGS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientAddress",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "StationName",
    "DeviceSerialNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
)
UID_LIKE = re.compile(r"\d+(?:\.\d+){3,}")
LONG_DIGITS = re.compile(r"\d{6,}")
DATE_LIKE = re.compile(r"(?:19|20)\d{2}[-_.]\d{2}[-_.]\d{2}")
RISKY_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.7",  # secondary capture (all variants)
    "1.2.840.10008.5.1.4.1.1.6.",  # ultrasound
    "1.2.840.10008.5.1.4.1.1.3.1",  # ultrasound multi-frame
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, incl. X-ray/CT radiation dose SR
)
RISKY_MODALITIES = {"US", "SC", "OT", "SR", "DOC"}
MAX_REMEMBERED_VALUES = 5000
NOT_IMAGES = {"DICOMDIR", "LICENSE", "LICENCE", "README", "COPYING", "NOTICE", "AUTHORS", "CHANGELOG"}


@contextlib.contextmanager
def quiet():
    """pydicom warnings and log records can quote header values: keep them out of every log."""
    logger = logging.getLogger("pydicom")
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        logger.propagate = propagate


def header_values(ds) -> list[str]:
    """Identifying values of one file, lower-cased, for name checks only (never stored)."""
    out: list[str] = []
    for tag in IDENTIFYING_TAGS:
        value = ds.get(tag)
        if value is None:
            continue
        items = value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
        for item in items:
            text = str(item)
            out.extend(p for p in re.split(r"[\^=\s]+", text) if p)
            out.append(text)
    return sorted({v.lower() for v in out if len(v.strip()) >= 3}, key=len, reverse=True)


def looks_like_identifier(component: str, values: list[str] = ()) -> bool:
    low = component.lower()
    return bool(
        UID_LIKE.search(component)
        or LONG_DIGITS.search(component)
        or DATE_LIKE.search(component)
        or "^" in component
        or any(v in low for v in values)
    )


def safe_folders(rel: str, values: list[str]) -> list[str] | None:
    """None when `rel` may be shown as it is, else its folders with identifier-like ones as `anon`."""
    parts = rel.split("/")
    stem = PurePosixPath(parts[-1]).stem
    flags = [looks_like_identifier(p, values) for p in parts[:-1]] + [looks_like_identifier(stem, values)]
    if not any(flags):
        return None
    return ["anon" if f else p for p, f in zip(parts[:-1], flags[:-1], strict=True)]


def safe_path(rel: str, values: list[str], token: str) -> str:
    """`rel`, or its pseudonymous form when any component looks like an identifier (module docstring)."""
    folders = safe_folders(rel, values)
    return rel if folders is None else "/".join([*folders, f"{token}.dcm"])


def burned_in_risk(ds) -> str | None:
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation says the pixels carry burned-in text"
    if flag == "NO":
        return None
    modality = str(ds.get("Modality", "") or "").upper()
    sop = str(ds.get("SOPClassUID", "") or "")
    series = str(ds.get("SeriesDescription", "") or "").upper()
    image_type = " ".join(str(t) for t in (ds.get("ImageType") or [])).upper()
    if (
        modality in RISKY_MODALITIES
        or sop.startswith(RISKY_SOP_PREFIXES)
        or "DOSE" in series
        or "SCREEN" in image_type
    ):
        return "BurnedInAnnotation absent on an ultrasound / secondary-capture / other / report-type object"
    return None


def declared_pixel_bytes(ds) -> int:
    """Bytes `pixel_array` allocates (all frames), plus the float64 modality-LUT copy of one frame."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    samples = max(1, int(ds.get("SamplesPerPixel", 1) or 1))
    bits = max(8, int(ds.get("BitsAllocated", 8) or 8))
    return rows * cols * samples * (frames * ((bits + 7) // 8) + 8)


def pixel_array(ds, rel: str, budget: DecodeBudget | None = None) -> np.ndarray:
    """The stored pixel values of a read dataset, after the checks every DICOM path makes: pixel data
    present, declared size within the decode budget, a decoder installed for a compressed transfer
    syntax (`unsupported_codec`), data as long as the header says (`truncated`). ImageError naming
    `rel` and the exception type only; shared with `converters.dicom_series`."""
    from pydicom.pixels.decoders.base import get_decoder

    if "PixelData" not in ds:
        raise ImageError(Reason.UNREADABLE, f"{rel}: no pixel data")
    if budget is not None:
        budget.check(declared_pixel_bytes(ds), rel, "its pixel data")
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is not None and ts.is_compressed:
        try:
            available = get_decoder(ts).is_available
        except (NotImplementedError, ValueError):
            available = False
        if not available:
            raise ImageError(
                Reason.UNSUPPORTED_CODEC, f"{rel}: compressed transfer syntax with no installed decoder"
            )
    try:
        return ds.pixel_array
    except Exception as exc:
        msg = str(exc).lower()
        reason = (
            Reason.TRUNCATED
            if any(k in msg for k in ("less than expected", "length", "truncat", "end of"))
            else Reason.UNSUPPORTED_CODEC
        )
        raise ImageError(reason, f"{rel}: pixel data cannot be decoded ({type(exc).__name__})") from None


def decode(ds, rel: str, slug: str, ct_window, budget: DecodeBudget | None = None) -> tuple[np.ndarray, str]:
    """(8-bit pixels ready to store, MD5 of the decoded pixel data); ImageError on failure."""
    from pydicom.pixels import apply_modality_lut

    arr = pixel_array(ds, rel, budget)
    pixel_md5 = md5_bytes(np.ascontiguousarray(arr).tobytes())
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[frames // 2]
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 1:
        values = apply_modality_lut(arr, ds)
        window = window_for(slug, ct_window)
        img = to_uint8(values, *window) if window else to_uint8(np.asarray(values))
        if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            img = 255 - img
    else:
        img = arr[..., :3] if arr.dtype == np.uint8 else to_uint8(arr[..., :3])
    if img.ndim not in (2, 3) or min(img.shape[:2]) < 1:
        raise ImageError(Reason.UNREADABLE, f"{rel}: unexpected pixel array shape")
    return img, pixel_md5


def safe_folder_names(source: SourceDataset) -> set[str]:
    """Folder names that identify no one: split names and the catalog's label keys and names (lower case)."""
    from gmai_pipeline.readers.base import SPLIT_ALIASES

    safe = {s.lower() for s in SPLIT_ALIASES} | {str(k).lower() for k in source.labels}
    return safe | {str(v).lower() for v in source.labels.values()}


def manifest_namer(
    source: SourceDataset, only_dicom: bool = False
) -> Callable[[str, Callable[[], str | None]], str]:
    """How files of a DICOM dataset are named in the manifest and the source asset's metadata
    (`only_dicom`: in a dataset of another 2D reader, only its `.dcm`/`.dicom` images, by the same rules).

    The scan reads no header, so it cannot tell a folder named after the patient from any other
    name; it keeps only what cannot identify anyone and shows the rest as `anon`:
    - a folder is kept when it is a split name (`train`, `val`, `test` ...) or one of the catalog's
      label keys or names (class folders), and does not look like an identifier; others are `anon`;
    - a DICOM-looking file is `file-<first 16 hex of its MD5>.dcm` (as `Names.unread` shows an
      unread file); the label CSV and README-like files keep their names; any other file becomes
      `file-<MD5>` with its suffix.
    The reader, which reads the headers, names kept rows more precisely (`safe_path`).
    """
    opts = source.reader
    safe = safe_folder_names(source)
    keep = {getattr(opts, "labels_csv", "labels.csv")}

    def name(rel: str, md5: Callable[[], str | None]) -> str:
        if only_dicom and not rel.lower().endswith(DICOM_EXTENSIONS):
            return rel
        parts = rel.split("/")
        folders = [p if p.lower() in safe and not looks_like_identifier(p) else "anon" for p in parts[:-1]]
        leaf = parts[-1]
        if rel in keep or (leaf.upper() in NOT_IMAGES or PurePosixPath(leaf).stem.upper() in NOT_IMAGES):
            shown_leaf = leaf
        else:
            digest = md5()
            token = f"file-{digest[:16]}" if digest else "refused"
            suffix = ".dcm" if _dicom_like(rel) else PurePosixPath(leaf).suffix[:16]
            shown_leaf = f"{token}{suffix}"
        return "/".join([*folders, shown_leaf])

    return name


def _dicom_like(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    if name.upper() in NOT_IMAGES:
        return False
    return name.lower().endswith(DICOM_SUFFIXES) or "." not in name


class Names:
    """Shown names for one dataset; identifying values seen in any header so far also flag later names."""

    def __init__(self, ctx: ReaderContext):
        self.ctx = ctx
        self.seen: set[str] = set()
        self.safe = safe_folder_names(ctx.source)

    def unread(self, rel: str, token: str | None = None) -> str:
        """A file whose header was not read, shown as the manifest shows it (`manifest_namer`): only
        split and class folders kept, the file name always replaced (nothing to check it against)."""
        md5 = self.ctx.md5(rel)
        values = sorted(self.seen, key=len, reverse=True)
        folders = [
            p if p.lower() in self.safe and not looks_like_identifier(p, values) else "anon"
            for p in rel.split("/")[:-1]
        ]
        return "/".join([*folders, f"{token or (f'file-{md5[:16]}' if md5 else 'missing')}.dcm"])

    def read(self, rel: str, values: list[str], token: str) -> str:
        if len(self.seen) < MAX_REMEMBERED_VALUES:  # bounded: memory and per-name cost stay flat
            self.seen.update(values)
        return safe_path(rel, sorted(self.seen.union(values), key=len, reverse=True), token)

    def identifying(self, text: str) -> bool:
        """Whether `text` (a label) looks like an identifier, judged with every header value seen so far."""
        return looks_like_identifier(text, sorted(self.seen, key=len, reverse=True))

    def plan(self, rel: str, values: list[str]) -> list[str] | None:
        """The final name's folders, decided now (in reader order) so a worker thread can add the token."""
        return safe_folders(rel, sorted(self.seen.union(values), key=len, reverse=True))


@dataclass
class Header:
    """A DICOM file whose header passed the checks: what a worker needs to decode and store it."""

    rel: str
    shown: str
    ds: object
    folders: list[str] | None  # None: the file keeps its own name


def read_header(ctx: ReaderContext, rel: str, label: str | None = None) -> Header | Quarantined:
    """Read and check one header in reader order: the sample boundary of a DICOM file's header.

    Every exception pydicom (or numpy) raises ends here as this file's quarantine row, under a name
    checked against nothing it has not read, with the exception's type only: pydicom's messages and
    warnings can quote the raw element. Quarantined too: a burned-in-text risk, and (without a
    catalog labels map) a `label` that looks like an identifier (a class folder named after the patient).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    names = ctx.dicom_names
    with quiet():
        try:
            ds = pydicom.dcmread(io.BytesIO(ctx.read(rel, names.unread)))
        except ImageError as err:
            return Quarantined(names.unread(rel), "read", err.reason, err.detail)
        except Exception as exc:  # noqa: BLE001 - InvalidDicomError, EOFError, struct errors ...
            shown = names.unread(rel)
            kind = "not a DICOM file" if isinstance(exc, InvalidDicomError) else "not a readable DICOM file"
            return Quarantined(shown, "read", Reason.UNREADABLE, f"{shown}: {kind} ({type(exc).__name__})")
        try:
            values = header_values(ds)
        except Exception as exc:  # noqa: BLE001 - a corrupt element: its name cannot be checked
            shown = names.unread(rel)
            return Quarantined(
                shown,
                "read",
                Reason.UNREADABLE,
                f"{shown}: an identifying header element cannot be decoded ({type(exc).__name__})",
            )
        shown = names.read(rel, values, f"file-{ctx.md5(rel)[:16]}")
        if label is not None and not ctx.source.labels and names.identifying(label):
            return Quarantined(
                shown,
                "annotate",
                Reason.MISSING_LABEL,
                f"{shown}: its label looks like an identifier; give the catalog entry a labels map",
            )
        try:
            risk = None if ctx.source.burned_in_text_allowed else burned_in_risk(ds)
        except Exception as exc:  # noqa: BLE001 - a corrupt element
            err = decoder_failure(exc, shown, "DICOM file")
            return Quarantined(shown, "read", err.reason, err.detail)
        if risk:
            return Quarantined(shown, "privacy", Reason.BURNED_IN_TEXT_RISK, f"{shown}: {risk}")
    return Header(rel, shown, ds, names.plan(rel, values))


def decode_header(ctx: ReaderContext, header: Header, modality: str | None = None) -> tuple[np.ndarray, str]:
    """`decode` of a checked header with the decode budget; every failure an ImageError (type only)."""
    slug = modality_slug(modality) if modality else ctx.slug
    try:
        return decode(header.ds, header.shown, slug, ctx.ct_window, ctx.store.budget)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - the sample boundary
        if is_output_failure(exc):
            raise
        raise decoder_failure(exc, header.shown, "DICOM file") from None
    finally:
        header.ds = None  # the header is not needed any more; free it before the next file


def final_name(header: Header, pixel_md5: str) -> str:
    """The name rows and the stored image get: the file's own, or its pseudonym (module docstring)."""
    return header.rel if header.folders is None else "/".join([*header.folders, f"{pixel_md5[:16]}.dcm"])


def store_pixels(ctx: ReaderContext, header: Header, modality: str):
    """(final name, StoredImage, pixel MD5), or Quarantined; safe on a worker thread.

    No `quiet()` here: warning filters are process-wide and not thread-safe to swap, so
    `normalize_source` keeps the whole run of a dataset with DICOM files inside one `quiet()`.
    """
    try:
        img, pixel_md5 = decode_header(ctx, header, modality)
    except ImageError as err:
        return Quarantined(header.shown, "read", err.reason, err.detail)
    name = final_name(header, pixel_md5)
    target = str(PurePosixPath(name).with_suffix(".png"))
    try:
        stored = ctx.store_for(modality).store_array(img, name, target)
    except Exception as exc:  # noqa: BLE001 - on a worker thread: returned, never raised (output failures aside)
        if is_output_failure(exc):
            raise
        err = decoder_failure(exc, name, "image")
        return Quarantined(name, "read", err.reason, err.detail)
    return name, stored, pixel_md5


def read(ctx: ReaderContext, opts: DicomReader) -> Iterator[Event]:
    names = ctx.dicom_names
    ctx.ct_window = opts.ct_window
    dicom_like = [p for p in ctx.under(ctx.base) if _dicom_like(p)]
    if opts.labels_json is not None:  # an MD.ai export keyed by a header UID (readers.dicom_json)
        from gmai_pipeline.readers import dicom_json

        yield from dicom_json.inputs(ctx, opts, names, dicom_like)
    elif ctx.at(opts.labels_csv) in ctx.files:
        yield from _csv_inputs(ctx, opts, names)
    else:
        for rel in dicom_like:
            parts = ctx.inner(rel).split("/")
            if len(parts) < 2:
                ctx.claim(rel)
                shown = names.unread(rel)
                yield Quarantined(
                    shown, "annotate", Reason.MISSING_LABEL, f"{shown}: no label CSV and no class folder"
                )
                continue
            yield _at_boundary(ctx, opts, names, rel, parts[-2], "its class folder")
    for rel in dicom_like:
        if rel not in ctx.claimed:
            ctx.claim(rel)
            ctx.saw_image(rel)
            shown = names.unread(rel)
            yield Quarantined(
                shown, "read", Reason.UNREFERENCED_FILE, f"{shown}: DICOM file has no label entry"
            )


def _csv_inputs(ctx: ReaderContext, opts: DicomReader, names: Names) -> Iterator[Event]:
    csv_rel = ctx.at(opts.labels_csv)
    ctx.claim(csv_rel)
    try:
        with ctx.text_file(csv_rel) as f:
            reader = csv.DictReader(f)
            missing = [c for c in (opts.file_column, opts.label_column) if c not in (reader.fieldnames or [])]
            if missing:
                yield Quarantined(
                    csv_rel, "read", Reason.UNREADABLE, f"{csv_rel}: column(s) {missing} not in the header"
                )
                return
            for line, record in enumerate(reader, start=2):
                ref = (record.get(opts.file_column) or "").strip()
                rel = join(ctx.base, ref) if ref else None
                where = f"{csv_rel} line {line}"
                if rel is None:
                    yield Quarantined(
                        csv_rel, "read", Reason.PATH_REFUSED, f"{where}: empty or escaping file reference"
                    )
                    continue
                yield _at_boundary(ctx, opts, names, rel, record.get(opts.label_column) or "", where)
    except ImageError as err:  # not UTF-8, or changed or swapped since the scan
        yield Quarantined(csv_rel, "read", err.reason, err.detail)
    except csv.Error as exc:
        yield Quarantined(
            csv_rel, "read", Reason.UNREADABLE, f"{csv_rel}: not a readable CSV ({type(exc).__name__})"
        )


def _at_boundary(ctx: ReaderContext, opts, names: Names, rel: str, raw_label: str, where: str) -> Event:
    """`_file` at the sample boundary: whatever escapes its own checks (a store that fails) is a row too."""
    return at_boundary(
        lambda: names.unread(rel), lambda: _file(ctx, opts, names, rel, raw_label, where), "DICOM file"
    )


def _file(ctx: ReaderContext, opts: DicomReader, names: Names, rel: str, raw_label: str, where: str) -> Event:
    if rel not in ctx.files:
        shown = names.unread(rel, f"missing-{where.rsplit(' ', 1)[-1]}" if " line " in where else None)
        return Quarantined(
            shown, "read", Reason.MISSING_FILE, f"{shown}: named by {where} but not in the dataset folder"
        )
    ctx.claim(rel)
    ctx.saw_image(rel)
    label, reason = ctx.label([raw_label])
    if label is None:
        shown = names.unread(rel)
        return Quarantined(
            shown,
            "annotate",
            reason or Reason.UNKNOWN_LABEL,
            f"{shown}: label in {where} is not in the catalog's labels",
        )
    split = ctx.split_of(rel)
    if split not in ctx.source.splits:
        shown = names.unread(rel)
        return Quarantined(
            shown, "read", Reason.SPLIT_EXCLUDED, f"{shown}: split '{split}' not in the catalog's splits"
        )
    header = read_header(ctx, rel, label)
    if isinstance(header, Quarantined):
        return header
    return kept_row(ctx, header, split, label)


def kept_row(ctx: ReaderContext, header: Header, split: str, label: str) -> Event:
    """Decode, deduplicate and store a checked header's pixels: its row under its final name."""
    # The name is final once the pixels are known: check duplicates before writing anything.
    with quiet():  # this reader decodes in reader order, so it may also run outside `normalize_source`
        try:
            img, pixel_md5 = decode_header(ctx, header)
        except ImageError as err:
            return Quarantined(header.shown, "read", err.reason, err.detail)
    name = final_name(header, pixel_md5)
    first = ctx.duplicate_of(name, md5="pixels:" + pixel_md5)
    if first is not None:
        return Quarantined(name, "dedup", Reason.DUPLICATE_IMAGE, f"{name}: same decoded pixels as {first}")
    target = str(PurePosixPath(name).with_suffix(".png"))
    try:
        stored = ctx.store.store_array(img, name, target)
    except ImageError as err:
        return Quarantined(name, "read", err.reason, err.detail)
    return Kept([ctx.row(name, split, stored, label, None)])
