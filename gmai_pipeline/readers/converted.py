"""What the converter readers share (`reader.convert`; `readers/layout.py` `CONVERTERS`).

A converter reader finds its files with the layout's templates and applies the layout's filters,
joined table rows, split and modality exactly as the layout reader does (`gather`, `decide`), so a
declaration means the same with or without `convert:`. The readers themselves:

| convert.kind | module | one input is |
|---|---|---|
| dicom_series | `readers.dicom_series` | a series (the files of one SeriesInstanceUID in one folder); a file that joins no series; a folder left out whole (split) |
| polygons | `readers.polygons` | an image file with its annotation file(s); a shape that encloses no area |
| rle | `readers.rle` | an image file with all its table rows; a table key whose image is not found |
| hdf5 | `readers.hdf5` | an index of the image dataset (with `boxes`: a box row of it, `readers.hdf5_boxes`); a file that cannot be used (or is left out) at all |
| wsi | `readers.wsi` | a slide (2d_seg); a tile of a slide (2d_cls), a slide that gives none or cannot be read |

Every file goes through the verified reads (`ReaderContext.read` / `open`), every input's work runs
at the sample boundary (`base.at_boundary`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from gmai_pipeline.imaging import ImageError
from gmai_pipeline.layouts import FIELD_TOKEN, LayoutReader
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Event, Quarantined, ReaderContext
from gmai_pipeline.readers.layout import (
    Found,
    Plan,
    _filtered,
    _joined_rows,
    _mask_index,
    _modality,
    _saw_case,
    _shared,
    _split,
    _split_lists,
    _split_unknown,
    _values,
    case_of,
    compile_plan,
    match,
)
from gmai_pipeline.readers.templates import matches_any


@dataclass
class Inputs:
    """The files a converter declaration finds, before any is read."""

    plan: Plan
    found: list[Found]  # image files (template matches that are not mask files), in path order
    masks: list[Found]  # files the `masks` templates match
    rows: dict[str, dict] = field(default_factory=dict)  # joined table rows by image path
    lists: dict[str, str] = field(default_factory=dict)  # split lists
    events: list[Event] = field(default_factory=list)  # unreadable tables and split lists: inputs too

    def masks_of(self, f: Found) -> list[Found]:
        """The mask files paired with `f` by the fields both templates share."""
        if not self.plan.masks:
            return []
        index = self.__dict__.get("_index")
        if index is None:
            index = self.__dict__["_index"] = _mask_index(self.plan, self.masks, _shared(self.plan))
        return index.get(tuple(f.fields.get(k) for k in _shared(self.plan)), [])


def gather(
    ctx: ReaderContext,
    opts: LayoutReader,
    image_exts: Iterable[str] | None = None,
    mask_exts: Iterable[str] | None = None,
    join: bool = True,
) -> Inputs:
    """Files the templates match (mask files are never images; `exclude` drops more), each with its
    `case`; split lists; and, with `join`, the table rows joined to the images (`table.join`)."""
    plan = compile_plan(opts)
    rle = getattr(opts.convert, "rle", None)  # wsi: the run-length column of the joined table
    if rle is not None:
        plan.columns = list(dict.fromkeys([*plan.columns, rle.column]))
    masks = match(ctx, plan.masks, mask_exts) if plan.masks else []
    mask_rels = {m.rel for m in masks}
    found = [
        f
        for f in match(ctx, plan.images, image_exts)
        if f.rel not in mask_rels and not matches_any(f.fields["path"], opts.exclude)
    ]
    fields = opts.images.fields()
    for f in found:
        f.fields["case"] = case_of(f, fields)
    lists, events = _split_lists(ctx, opts)
    rows: dict[str, dict] = {}
    if join:
        rows, more = _joined_rows(ctx, plan, found)
        events += more
    return Inputs(plan, found, masks, rows, lists, events)


@dataclass
class Decided:
    """One input's declared values: its fields (and joined columns), split and modality."""

    found: Found
    values: dict
    split: str
    modality: str


def decide(
    ctx: ReaderContext, opts: LayoutReader, inputs: Inputs, f: Found, shown=None
) -> Decided | Quarantined | None:
    """The filters, split and modality of one input (represented by its file `f`), as the layout
    reader applies them: None when a filter leaves it out, a Quarantined when its split is in no
    list (`split_unknown`) or its modality is not in the vocabulary. `shown` names it in messages."""
    values = _values(f, inputs.rows.get(f.rel))
    if _filtered(ctx, opts, values, f.rel):
        return None
    split = _split(ctx, opts, f.rel, values, inputs.lists)
    if split is None:
        if shown is None:
            return _split_unknown(ctx, f.rel)
        name = shown()
        return Quarantined(
            name, "read", Reason.SPLIT_UNKNOWN, f"{name}: in none of the split lists and no split.default"
        )
    try:
        modality = _modality(ctx, opts.modality, values, shown or ctx.namer(f.rel))
    except ImageError as err:
        return Quarantined((shown or ctx.namer(f.rel))(), "annotate", err.reason, err.detail)
    _saw_case(ctx, opts, f)
    return Decided(f, values, split, modality)


def fill(template: str, fields: dict[str, str]) -> str | None:
    """A path template with an input's field values filled in; None when it names a field the input lacks."""
    missing = []

    def sub(m) -> str:
        value = fields.get(m.group(1))
        if value is None:
            missing.append(m.group(1))
            return ""
        return value

    out = FIELD_TOKEN.sub(sub, template)
    return None if missing or "*" in out else posixpath.normpath(out)


def whole_files(
    ctx: ReaderContext, opts: LayoutReader, inputs: Inputs, companion_of: dict[str, str | None]
) -> Iterator[tuple[Decided, str | None] | Quarantined]:
    """The array files (HDF5, `.npy`) a converter reads, each with its companion file (labels, masks):
    (decided input, companion path) to read, or a Quarantined standing for the whole file (its split or
    modality refused, or its split excluded: indices never read). Companions the images template also
    matches are not inputs of their own."""
    companions = {v for v in companion_of.values() if v}
    for f in inputs.found:
        if f.rel in companions:
            continue
        unit = decide(ctx, opts, inputs, f)
        if unit is None:
            continue
        ctx.claim(f.rel)
        other = companion_of.get(f.rel)
        if other is not None and other in ctx.files:
            ctx.claim(other)
        if isinstance(unit, Quarantined):
            ctx.saw_image(f.rel)
            yield unit
            continue
        excluded = ctx.exclusion(f.rel, unit.split, bytes_dedup=False)
        if excluded is not None:
            ctx.saw_image(f.rel)
            yield Quarantined(f.rel, excluded[0], excluded[1], excluded[2] + " (the whole file, not read)")
            continue
        yield unit, other


def decided_images(ctx: ReaderContext, opts: LayoutReader, inputs: Inputs) -> Iterator[Decided | Quarantined]:
    """Each image input the filters keep, claimed and counted as seen: its declared values to read it
    with, or the Quarantined its split or modality became (annotation-file converters: polygons, slides,
    imgannot)."""
    for f in inputs.found:
        unit = decide(ctx, opts, inputs, f)
        if unit is None:
            continue
        ctx.claim(f.rel)
        ctx.saw_image(f.rel)
        yield unit
