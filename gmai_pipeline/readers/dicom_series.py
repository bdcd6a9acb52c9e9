"""`convert: {kind: dicom_series}`: folders of single-frame DICOM slices -> 3D cases -> slice rows.

What one input is: one series (the files of one SeriesInstanceUID inside one folder, split further by
`split_by`), kept whole or quarantined whole; each file of such a folder that joins no series
(unreadable, refused, no position, a non-image object) on its own; a folder that a declared split
leaves out (`split_excluded`, `split_unknown`) as one input, without reading its files; and each DICOM
SEG object that references no series found (`unreferenced_file`). The series' files are those the
`images` templates match; their masks are the `masks` files paired by shared fields (`convert.mask`:
per-slice images, a label volume, a label series, or DICOM SEG objects found among either).

Privacy, as for every DICOM file (`readers.dicom`): header values decide (grouping, geometry,
burned-in text) and are never written; a file is named as the manifest names it (`anon/file-<MD5>.dcm`)
until its header is read, then by its path with every component that looks like an identifier
(checked against the header values of its series and those seen before) replaced by `anon`, the
file itself by `file-<MD5>.dcm`. A series is named by its folder so checked (plus `series-<token>`,
a hash of its member names, when a folder holds several), which is its `source_path` and the stem
of its `sample_id`s and stored slices; a folder shown with an `anon` component is suffixed with the
token too, so two patients' series never share a name. Every file of a series counts for the
burned-in-text rule.

Each file is read once, verified, and its bytes kept for the decode while a folder's bytes stay
under `CACHE_BYTES` (a larger folder is read a second time, verified again, when it is decoded).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import PurePosixPath

import numpy as np

from gmai_pipeline.converters import dicom_series as ds_mod
from gmai_pipeline.converters.dicom_series import DicomFile, DicomSeriesOptions, SegObject, Series
from gmai_pipeline.converters.matlab import load_matlab_mask
from gmai_pipeline.decode_guard import decoder_failure, is_output_failure
from gmai_pipeline.imaging import ImageError, modality_slug
from gmai_pipeline.layouts import LayoutReader
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Event, Kept, Quarantined, ReaderContext, at_boundary
from gmai_pipeline.readers.converted import Decided, Inputs, decide, gather
from gmai_pipeline.readers.dicom import looks_like_identifier
from gmai_pipeline.readers.masks import load_mask, value_label
from gmai_pipeline.readers.volume_cases import _slices
from gmai_pipeline.volumes import label_values, volume_to_uint8, window_for

CACHE_BYTES = 256 << 20  # a folder's verified bytes kept between the header scan and the decode


class _Bytes:
    """Verified bytes of one folder's files, read once while they fit (`CACHE_BYTES`)."""

    def __init__(self, ctx: ReaderContext, limit: int):
        self.ctx, self.limit, self.size, self.data = ctx, limit, 0, {}

    def get(self, rel: str) -> bytes:
        data = self.data.get(rel)
        if data is None:
            data = self.ctx.read(rel, self.ctx.dicom_names.unread)
            if self.size + len(data) <= self.limit:
                self.data[rel] = data
                self.size += len(data)
        return data


def _safe_parts(parts: list[str], values: list[str]) -> list[str]:
    """Path components with those that look like an identifier (`readers.dicom`) as `anon`."""
    return ["anon" if looks_like_identifier(p, values) else p for p in parts]


def _shown_file(ctx: ReaderContext, rel: str, values: list[str], dicom: bool = True) -> str:
    """A read file's name: its path, identifier-looking folders as `anon`, an identifier-looking file
    as `file-<MD5>` (the DICOM rule, applied to masks beside DICOM files too)."""
    parts = rel.split("/")
    folders = _safe_parts(parts[:-1], values)
    leaf = parts[-1]
    if looks_like_identifier(PurePosixPath(leaf).stem, values):
        md5 = ctx.md5(rel) or "unknown"
        leaf = f"file-{md5[:16]}{'.dcm' if dicom else PurePosixPath(leaf).suffix[:16]}"
    return "/".join([*folders, leaf])


def _folder_unread(ctx: ReaderContext, folder: str) -> str:
    """A folder named before any header is read: only split and catalog-class names kept (`Names.unread`)."""
    names = ctx.dicom_names
    values = sorted(names.seen, key=len, reverse=True)
    return "/".join(
        p if p.lower() in names.safe and not looks_like_identifier(p, values) else "anon"
        for p in folder.split("/")
    )


def read(ctx: ReaderContext, opts: LayoutReader) -> Iterator[Event]:
    conv: DicomSeriesOptions = opts.convert  # type: ignore[assignment]
    if ctx.source.burned_in_text_allowed and not conv.burned_in_text_allowed:
        conv = conv.model_copy(update={"burned_in_text_allowed": True})
    ctx.ct_window = opts.ct_window
    inputs = gather(ctx, opts)
    yield from inputs.events
    segs: list[tuple[SegObject, str]] = []  # (SEG object, its dataset path) found so far
    used_segs: set[str] = set()
    if conv.mask is not None and conv.mask.kind == "dicom_seg":
        yield from _scan_seg_files(ctx, conv, [m.rel for m in inputs.masks], segs)
    folders: dict[str, list] = {}
    for f in inputs.found:
        folders.setdefault(posixpath.dirname(f.rel), []).append(f)
    for folder, members in folders.items():
        yield from _folder(ctx, opts, conv, inputs, folder, members, segs, used_segs)
    for seg, rel in segs:
        if rel not in used_segs:
            yield Quarantined(
                seg.file.name,
                "read",
                Reason.UNREFERENCED_FILE,
                f"{seg.file.name}: DICOM SEG references no series found",
            )


def _scan_seg_files(ctx, conv: DicomSeriesOptions, rels: list[str], segs: list) -> Iterator[Event]:
    """SEG objects among the mask files (headers only); other mask files are not inputs here."""
    names = ctx.dicom_names
    cache = _Bytes(ctx, min(CACHE_BYTES, ctx.store.budget.limit // 4))  # kept: the SEG is decoded later
    files = []
    for rel in rels:
        ctx.claim(rel)
        try:
            cache.get(rel)  # verified first: a masked manifest name is matched by this read's hash
        except ImageError as err:
            yield Quarantined(names.unread(rel), "read", err.reason, err.detail)
            continue
        files.append(DicomFile(lambda rel=rel: cache.get(rel), names.unread(rel), order=rel))
    result = _scan(files, conv)
    if isinstance(result, list):
        yield from result
        return
    by_name = {f.name: f.order for f in files}
    segs.extend((s, by_name[s.file.name]) for s in result.segmentations)
    for f, err in result.rejected:
        yield Quarantined(f.name, "read", err.reason, err.detail)
    for series in result.series:  # image slices where SEG objects were declared
        for h in series.slices:
            yield Quarantined(
                h.file.name,
                "read",
                Reason.UNSUPPORTED_MASK,
                f"{h.file.name}: not a DICOM SEG object (convert.mask: dicom_seg)",
            )


def _scan(files: list[DicomFile], conv: DicomSeriesOptions):
    """`dicom_series.scan` at the sample boundary: an unexpected failure is every file's quarantine row."""
    try:
        return ds_mod.scan(files, conv)
    except Exception as exc:  # noqa: BLE001 - the sample boundary
        if is_output_failure(exc):
            raise
        return [
            Quarantined(f.name, "read", (e := decoder_failure(exc, f.name, "DICOM file")).reason, e.detail)
            for f in files
        ]


def _folder(ctx, opts, conv, inputs: Inputs, folder: str, members: list, segs, used_segs) -> Iterator[Event]:
    names = ctx.dicom_names
    rels = [f.rel for f in members]
    unit = decide(ctx, opts, inputs, members[0], shown=lambda: _folder_unread(ctx, folder))
    if unit is None:  # filtered out: every file with it
        ctx.filtered.update(rels)
        return
    for rel in rels:
        ctx.claim(rel)
    if isinstance(unit, Quarantined):
        ctx.saw_image(folder)
        yield unit
        return
    if unit.split not in ctx.source.splits:
        ctx.saw_image(folder)
        shown = _folder_unread(ctx, folder)
        yield Quarantined(
            shown,
            "read",
            Reason.SPLIT_EXCLUDED,
            f"{shown}: split '{unit.split}' not in the catalog's splits {list(ctx.source.splits)} "
            f"({len(rels)} files, not read)",
        )
        return
    cache = _Bytes(ctx, min(CACHE_BYTES, ctx.store.budget.limit // 4))
    files = []
    for rel in rels:
        try:
            cache.get(rel)  # verified (and, for a masked manifest name, matched) before any parsing
        except ImageError as err:
            yield Quarantined(names.unread(rel), "read", err.reason, err.detail)
            continue
        files.append(DicomFile(lambda rel=rel: cache.get(rel), names.unread(rel), order=rel))
    result = _scan(files, conv)
    if isinstance(result, list):
        yield from result
        return
    for f, err in result.rejected:
        yield Quarantined(f.name, "read", err.reason, err.detail)
    rel_of = {f.name: f.order for f in files}
    for seg in result.segmentations:
        segs.append((seg, rel_of[seg.file.name]))
    several = len(result.series) > 1
    for series in result.series:
        values = sorted(series.identifying | names.seen, key=len, reverse=True)
        if len(names.seen) < 5000:
            names.seen.update(series.identifying)
        sname = "/".join(_safe_parts(folder.split("/"), values)) if folder else "series"
        if several or sname != folder:  # two patients' `anon/CT` folders must not share a name
            sname = f"{sname}/series-{series.token}"
        for h in series.slices:  # messages from here on name files as read files are named
            rel = h.file.order
            h.file = DicomFile(h.file.path, _shown_file(ctx, rel, values), order=rel)
        ctx.saw_image(sname, unit.found.fields.get("case"))
        yield at_boundary(
            sname,
            lambda series=series, sname=sname, values=values: _series(
                ctx, opts, conv, inputs, unit, series, sname, values, segs, used_segs
            ),
            "DICOM series",
        )
    cache.data.clear()


def _series(
    ctx,
    opts,
    conv: DicomSeriesOptions,
    inputs: Inputs,
    unit: Decided,
    series: Series,
    sname: str,
    values,
    segs,
    used_segs,
) -> Event:
    try:
        sv = ds_mod.load(series, conv, sname, ctx.store.budget)
    except ImageError as err:
        step = "privacy" if err.reason == Reason.BURNED_IN_TEXT_RISK else "read"
        return Quarantined(sname, step, err.reason, err.detail)
    labels = _labels(ctx, conv, inputs, unit, series, sv, sname, values, segs, used_segs)
    if isinstance(labels, Quarantined):
        return labels
    labels, mask_name = labels
    unknown = [v for v in label_values(labels) if v and value_label(ctx, v) is None]
    if unknown:
        return Quarantined(
            sname,
            "annotate",
            Reason.UNKNOWN_LABEL,
            f"{sname}: label values {unknown} in {mask_name} are not in the label map",
        )
    image8 = volume_to_uint8(
        sv.volume, window_for(modality_slug(unit.modality), opts.ct_window), ctx.counters, sname
    )
    del sv
    rows = _slices(
        ctx, opts, sname, mask_name, unit.split, image8, labels, {}, True, unit.modality, sname, None
    )
    if isinstance(rows, Quarantined):
        return rows
    if not rows:
        return Quarantined(
            sname,
            "annotate",
            Reason.EMPTY_MASK,
            f"{sname}: no slice of {mask_name} has a component above the size limits",
        )
    ctx.counters["series_kept"] += 1
    return Kept(rows)


def _labels(ctx, conv, inputs: Inputs, unit: Decided, series, sv, sname: str, values, segs, used_segs):
    """(canonical label volume, mask description) for one series, or Quarantined."""
    kind = conv.mask.kind
    budget = ctx.store.budget
    if kind == "dicom_seg":
        found = ds_mod.matching_seg([s for s, _ in segs], series)
        if not found:
            return Quarantined(
                sname, "read", Reason.MISSING_FILE, f"{sname}: no DICOM SEG references this series"
            )
        out = None
        for seg in found:
            used_segs.update(rel for s, rel in segs if s is seg)
            lab = ds_mod.load_seg(seg, sv, budget)
            out = lab if out is None else np.where(lab > 0, lab, out)
        return out, f"{len(found)} DICOM SEG object(s)"
    masks = inputs.masks_of(unit.found)
    for m in masks:
        ctx.claim(m.rel)
    shown = [_shown_file(ctx, m.rel, values, dicom=m.rel.lower().endswith(".dcm")) for m in masks]
    expected = " or ".join(inputs.plan.opts.masks.path)  # type: ignore[union-attr]
    if not masks:
        return Quarantined(sname, "read", Reason.MISSING_FILE, f"{sname}: no mask file matches {expected}")
    if kind == "slices":
        loaders = [
            (lambda rel=m.rel, name=n: load_mask(ctx.read(rel, lambda _: name), name, budget), n, m.rel)
            for m, n in zip(masks, shown, strict=True)
        ]
        return ds_mod.load_slice_masks(
            loaders, sv, conv.mask, sname
        ), f"{len(masks)} mask images ({shown[0]}, ...)"
    if kind in ("volume", "matlab"):
        if len(masks) > 1:
            return Quarantined(
                sname,
                "read",
                Reason.MASK_MISMATCH,
                f"{sname}: {len(masks)} label volumes match ({shown[0]}, ...); expected one",
            )
        if kind == "matlab":  # converters.matlab: a .mat variable on the declared grid
            data = ctx.read(masks[0].rel, lambda _: shown[0])
            return load_matlab_mask(data, shown[0], sv, conv.mask, budget), shown[0]
        with ctx.open(masks[0].rel, lambda _: shown[0]) as fh:
            return ds_mod.load_volume_mask(fh, shown[0], sv, budget), shown[0]
    # a label series: the mask files' series whose frame of reference is the image series'
    files = [
        DicomFile(lambda rel=m.rel, name=n: ctx.read(rel, lambda _: name), n, order=m.rel)
        for m, n in zip(masks, shown, strict=True)
    ]
    scanned = ds_mod.scan(files, conv.model_copy(update={"min_slices": 1}))
    if scanned.rejected:
        f, err = scanned.rejected[0]
        return Quarantined(sname, "read", err.reason, f"{sname}: label series: {err.detail}")
    candidates = [
        s for s in scanned.series if s.frame_of_reference == series.frame_of_reference
    ] or scanned.series
    if len(candidates) != 1:
        return Quarantined(
            sname,
            "read",
            Reason.MASK_MISMATCH,
            f"{sname}: {len(candidates)} label series match {expected}; expected one",
        )
    return ds_mod.load_series_mask(
        candidates[0], sv, sname, budget
    ), f"label series {shown[0].rsplit('/', 1)[0]}"
