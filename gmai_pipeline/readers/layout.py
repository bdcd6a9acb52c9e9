"""`layout`: the generic reader. The schema and its meaning are in `gmai_pipeline.layouts`.

What one input is:
- classification from templates (BreakHis `{label}/SOB/{sub}/{patient}/{mag}/{file}`): each image file
  the `images` templates match (after `filters`; filtered files are not inputs, they are counted and
  listed among the ignored files);
- classification / detection from a table (NIH, CheXpert, ISIC 2019, VinDr-CXR): each label of each row
  (a multi-label row gives one input per label, a box row one per box; merged annotator boxes count
  once), plus each matched image no row names (`unreferenced_file`), plus each row whose image is not
  found (`missing_file`); an unreadable table is one input;
- 2D segmentation (BUSI, JSRT): each image file, with every mask file its `masks` templates give;
  detection from masks (GLENDA's colour-coded masks): the same, each box of a kept image one input;
- 3D segmentation (ACDC, BTCV, BraTS, autoPET, TotalSegmentator, AMOS): each image file of each case
  (`volume_cases`).
Files a `masks` template matches are never images; `exclude` globs drop more.
"""

from __future__ import annotations

import ast
import json
import posixpath
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from gmai_pipeline.catalog import IMAGE_EXTENSIONS_2D
from gmai_pipeline.converters import xml_rows
from gmai_pipeline.decode_guard import decoder_failure, is_output_failure
from gmai_pipeline.imaging import ImageError, strip_volume_suffix
from gmai_pipeline.layouts import BUILTIN_FIELDS, FIELD_TOKEN, LayoutReader, ValueSource, WsiConvert
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import (
    Annotation,
    Event,
    Kept,
    Quarantined,
    ReaderContext,
    image_inputs,
    is_dicom,
    join,
    unreferenced_file,
)
from gmai_pipeline.readers.bins import bin_of
from gmai_pipeline.readers.joins import joined
from gmai_pipeline.readers.keywords import chosen_cell, keyword_labels
from gmai_pipeline.readers.masks import MASK_EXTENSIONS_2D, MaskFile, seg_image
from gmai_pipeline.readers.stacks import stack_events
from gmai_pipeline.readers.tables import Table, TableError, read_list, read_table
from gmai_pipeline.readers.templates import Template, all_hold, matches_any
from gmai_pipeline.readers.values import list_literal, resolve
from gmai_pipeline.readers.volume_cases import (
    VOLUME_EXTENSIONS,
    VolumeCase,
    case_events,
    check_modality,
    selected,
)

# Readers per `reader.convert.kind` (`gmai_pipeline.layouts.Convert`): `(ctx, opts) -> events`, reusing this
# module's helpers (`match`, `_tables`, `_split`, ...); registered by `gmai_pipeline.readers.converted`.
CONVERTERS: dict[str, Callable[[ReaderContext, LayoutReader], Iterator[Event]]] = {}


@dataclass
class Found:
    """One file a template matched, with its field values (template fields and the builtins)."""

    rel: str
    fields: dict[str, str]


@dataclass
class Plan:
    """What `read` needs, compiled once from the declaration."""

    opts: LayoutReader
    images: list[Template]
    masks: list[Template]
    columns: list[str | int] = field(default_factory=list)


def _stem(name: str) -> str:
    """`x` for `x.png` and for `x.nii.gz` (string operations: this runs for every file)."""
    base = strip_volume_suffix(name)
    if base != name:
        return base
    return name.rsplit(".", 1)[0] if "." in name[1:] else name


def builtins(ctx: ReaderContext, rel: str) -> dict[str, str]:
    name = rel.rsplit("/", 1)[-1]
    return {"path": ctx.inner(rel), "file": name, "stem": _stem(name)}


def compile_plan(opts: LayoutReader) -> Plan:
    images = [Template(t, opts.fields) for t in opts.images.path]
    masks = [Template(t, opts.fields) for t in opts.masks.path] if opts.masks else []
    plan = Plan(opts, images, masks)
    plan.columns = _columns(opts, set(opts.template_fields()) | set(BUILTIN_FIELDS) | {"case"})
    return plan


def _columns(opts: LayoutReader, fields: set[str]) -> list[str | int]:
    """The table columns a declaration uses: the only ones kept in memory."""
    if opts.table is None:
        return []
    cols: list[str | int] = []
    t = opts.table
    cols += [t.image] if t.image is not None else [t.join.column]  # type: ignore[union-attr]
    for src in (opts.label, opts.split, opts.modality):
        if src is None:
            continue
        if src.column is not None:
            cols.append(src.column)
        cols += list(getattr(src, "columns", ()))
        by = getattr(src, "column_by", None)
        cols += list(by.columns.values()) if by is not None else []
        cols += [k for r in src.rules for k in r.when if k not in fields]
    if opts.annotators is not None and opts.annotators.column is not None:
        cols.append(opts.annotators.column)
    if opts.boxes is not None:
        cols += list(opts.boxes.columns or (opts.boxes.column,))
        cols += [k for k in opts.boxes.no_finding if k not in fields]
    cols += [k for k in opts.filters if k not in fields]
    if isinstance(opts.convert, WsiConvert):  # CAMELYON17: unannotated: {stage: negative}, a joined column
        cols += [k for k in opts.convert.unannotated if k not in fields]
    if opts.frames is not None:
        cols += [c for c in opts.frames.columns if c not in fields]
    return list(dict.fromkeys(cols))


def match(ctx: ReaderContext, templates: list[Template], extensions: Iterable[str] | None) -> list[Found]:
    """Files under the layout root that one of `templates` matches (first template wins), in path order."""
    out = []
    exts = tuple(e.lower() for e in extensions) if extensions is not None else None
    for rel in ctx.under(ctx.base, exts):
        inner = ctx.inner(rel)
        for t in templates:
            if t.prefix and not inner.startswith(t.prefix + "/"):
                continue
            got = t.match(inner)
            if got is not None:
                out.append(Found(rel, {**builtins(ctx, rel), **got}))
                break
    return out


def case_of(found: Found, template_fields: Iterable[str]) -> str:
    """The case an input belongs to: its `case` field, else its other fields (channel aside) joined."""
    if "case" in found.fields and "case" in template_fields:
        return found.fields["case"]
    parts = [found.fields[f] for f in template_fields if f not in ("channel", *BUILTIN_FIELDS)]
    return "/".join(parts) if parts else found.fields["stem"]


# ------------------------------------------------------------------ entry point


def read(ctx: ReaderContext, opts: LayoutReader) -> Iterator[Event]:
    if opts.convert is not None:
        yield from CONVERTERS[opts.convert.kind](ctx, opts)
        return
    plan = compile_plan(opts)
    ctx.ct_window = opts.ct_window
    ctx.raw, ctx.array = opts.images.raw, opts.images.array
    three_d = ctx.source.task_type == "3d_seg" and opts.images.stack is None  # a stack: 2D section files
    mask_found = (
        match(ctx, plan.masks, VOLUME_EXTENSIONS if three_d else MASK_EXTENSIONS_2D) if plan.masks else []
    )
    mask_rels = {m.rel for m in mask_found}
    image_exts = VOLUME_EXTENSIONS if three_d else IMAGE_EXTENSIONS_2D + opts.images.declared_extensions()
    found = [
        f
        for f in match(ctx, plan.images, image_exts)
        if f.rel not in mask_rels and not matches_any(f.fields["path"], opts.exclude)
    ]
    fields = opts.images.fields()
    for f in found:
        f.fields["case"] = case_of(f, fields)
    lists, events = _split_lists(ctx, opts)
    yield from events
    if opts.table is not None and opts.table.image is not None:
        yield from _table_driven(ctx, plan, found, lists)
        return
    rows, events = _joined_rows(ctx, plan, found)
    yield from events
    if opts.images.stack is not None:
        yield from _stacks(ctx, plan, found, mask_found, rows, lists)
    elif three_d:
        yield from _volumes(ctx, plan, found, mask_found, rows, lists)
    elif plan.masks:
        yield from _masks_2d(ctx, plan, found, mask_found, rows, lists)
    else:
        yield from _classified(ctx, plan, found, rows, lists)


# ------------------------------------------------------------------ per-input values


def _values(found: Found, row: dict | None) -> dict:
    return {**(row or {}), **found.fields}


def _split(
    ctx: ReaderContext, opts: LayoutReader, rel: str, values: dict, lists: dict[str, str]
) -> str | None:
    """The input's split; None means no list names it and there is no default (`split_unknown`)."""
    spec = opts.split
    if spec is None:
        return ctx.split_of(rel)
    if spec.rows is not None:
        split = lists.get(ROW_KEY + str(values.get(ROW_KEY)))
        return ctx.split_of(rel, split or spec.default) if split or spec.default else None
    if spec.lists:
        for key in (values.get("file"), values.get("stem"), values.get("path"), values.get("case")):
            if key is not None and key in lists:
                return lists[key]
        return ctx.split_of(rel, spec.default) if spec.default else None
    return ctx.split_of(rel, resolve(spec, values))


def _modality(
    ctx: ReaderContext, spec: ValueSource | None, values: dict, where: str | Callable[[], str]
) -> str:
    if spec is None:
        return ctx.source.modality
    return check_modality(resolve(spec, values) or ctx.source.modality, where)


def _split_unknown(ctx: ReaderContext, rel: str) -> Quarantined:
    shown = ctx.shown(rel)
    return Quarantined(
        shown, "read", Reason.SPLIT_UNKNOWN, f"{shown}: in none of the split lists and no split.default"
    )


def _split_lists(ctx: ReaderContext, opts: LayoutReader) -> tuple[dict[str, str], list[Event]]:
    """{image name or path: split} from `split.lists`; an unreadable or missing list is one input."""
    out: dict[str, str] = {}
    events: list[Event] = []
    if opts.split is None:
        return out, events
    for split, path in opts.split.lists.items():
        rel = ctx.at(path)
        if rel not in ctx.files:
            events.append(
                Quarantined(rel, "read", Reason.MISSING_FILE, f"{rel}: split list for '{split}' not found")
            )
            continue
        ctx.claim(rel)
        try:
            names = _list_entries(ctx.read(rel), rel, opts.split.list_column)
        except (TableError, ImageError) as err:
            events.append(Quarantined(rel, "read", err.reason, err.detail))
            continue
        value = ctx.split_of(rel, split)
        for name in names:
            out.setdefault(name, value)
    if opts.split.rows is not None:
        events += _split_rows(ctx, opts.split.rows, out)
    return out, events


def _list_entries(data: bytes, rel: str, column: str | int | None) -> list[str]:
    """A split list's image names: one per line, or one per row of a table's `column`."""
    if column is None:
        return read_list(data, rel)
    table = read_table(data, rel, [column])
    return [str(row[column]).strip() for _, row in table.rows if str(row.get(column) or "").strip()]


ROW_KEY = "\0row:"  # a table row's position among the values, and the prefix of its key in the split lists


def _split_rows(ctx: ReaderContext, spec, out: dict[str, str]) -> list[Event]:
    """Add {ROW_KEY + position: split} from `split.rows`; an unreadable or missing file is one input, and a
    row listed by two splits is evaluation-only (test, then val: never train)."""
    events: list[Event] = []
    for split, path in spec.files.items():
        rel = ctx.at(path)
        if rel not in ctx.files:
            events.append(
                Quarantined(rel, "read", Reason.MISSING_FILE, f"{rel}: split rows for '{split}' not found")
            )
            continue
        ctx.claim(rel)
        try:
            table = read_table(ctx.read(rel), rel, [spec.column])
        except (TableError, ImageError) as err:
            events.append(Quarantined(rel, "read", err.reason, err.detail))
            continue
        value = ctx.split_of(rel, split)
        for line, row in table.rows:
            cell = row[spec.column]
            try:
                pos = int(float(cell)) - spec.start
            except ValueError:
                events.append(
                    Quarantined(
                        rel,
                        "read",
                        Reason.UNREADABLE,
                        f"{rel} line {line}: {cell[:40]!r} is not a row number",
                    )
                )
                continue
            key = ROW_KEY + str(pos)
            if key not in out or SPLIT_RANK.get(value, 3) < SPLIT_RANK.get(out[key], 3):
                out[key] = value
    return events


SPLIT_RANK = {"test": 0, "val": 1, "train": 2}


def _saw_case(ctx: ReaderContext, opts: LayoutReader, f: Found | None) -> None:
    """2D inputs count towards `expect: cases` when the templates name a `{case}`."""
    if f is not None and "case" in opts.template_fields():
        ctx.cases_seen.add(f.fields["case"])


def _mask_only(opts: LayoutReader) -> set[str]:
    return set(opts.masks.fields()) - set(opts.images.fields()) if opts.masks else set()


def _filtered(ctx: ReaderContext, opts: LayoutReader, values: dict, rel: str) -> bool:
    """Whether a declared filter leaves this input out (conditions on mask-only fields choose masks instead)."""
    mask_only = _mask_only(opts)
    failed = all_hold({k: c for k, c in opts.filters.items() if k not in mask_only}, values)
    if failed is None:
        return False
    ctx.counters[f"filtered_by_{failed}"] += 1
    ctx.filtered.add(rel)
    return True


# ------------------------------------------------------------------ tables


def _table_files(ctx: ReaderContext, patterns: Iterable[str]) -> list[str]:
    out = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            out += [r for r in ctx.under(ctx.base) if matches_any(ctx.inner(r), [pattern])]
        else:
            out.append(ctx.at(pattern))
    return list(dict.fromkeys(out))


def _per_file_names(
    names: tuple[str, ...], rel: str, columns: list[str | int]
) -> tuple[tuple[str, ...], list[str | int]]:
    """`names` with `{stem}` replaced by the table file's stem (MRNet: `train-acl.csv` -> column
    `train-acl`), and the wanted columns this file can hold: a family of such tables gives one column
    each, so a column named after another file of the family is not required here."""
    if not any("{stem}" in n for n in names):
        return names, columns
    stem = _stem(rel.rsplit("/", 1)[-1])
    own = tuple(n.replace("{stem}", stem) for n in names)
    templated = {n for n in names if "{stem}" in n}
    return own, [c for c in columns if isinstance(c, int) or c in own or not templated]


def _tables(ctx: ReaderContext, plan: Plan) -> tuple[list[Table], list[Event]]:
    tables, events = [], []
    spec = plan.opts.table
    for rel in _table_files(ctx, spec.file):  # type: ignore[union-attr]
        if rel not in ctx.files:
            events.append(
                Quarantined(rel, "read", Reason.MISSING_FILE, f"{rel}: table not found in the dataset folder")
            )
            continue
        ctx.claim(rel)
        names, wanted = _per_file_names(spec.names, rel, plan.columns)
        try:
            if spec.xml is not None:  # converters.xml_rows: a document's rows by ElementPath
                tables.append(
                    Table(rel, list(spec.xml.columns), xml_rows.rows(ctx.read(rel), rel, spec.xml, wanted))
                )
                continue
            tables.append(
                read_table(
                    ctx.read(rel),
                    rel,
                    wanted,
                    delimiter=spec.delimiter,
                    sheet=spec.sheet,
                    names=names,
                    header_row=spec.header,
                )
            )
        except (TableError, ImageError) as err:  # unparsable, or changed or swapped since the scan
            events.append(Quarantined(rel, "read", err.reason, err.detail))
            continue
        if spec.skip_rows:  # sub-header lines below the header (PAPILA): not data
            first = spec.skip_rows + (1 if spec.header else 0)
            tables[-1].rows = [(line, row) for line, row in tables[-1].rows if line > first]
    return tables, events


def _joined_rows(ctx: ReaderContext, plan: Plan, found: list[Found]) -> tuple[dict[str, dict], list[Event]]:
    """{input path: its table row} for template-driven layouts with `table.join`."""
    if plan.opts.table is None:
        return {}, []
    tables, events = _tables(ctx, plan)
    join_spec = plan.opts.table.join
    if join_spec is not None and (join_spec.cell is not None or join_spec.table_by is not None):
        rows = joined(ctx, join_spec, tables, found)
        ctx.counters["inputs_without_table_row"] += len(found) - len(rows)
        return rows, events
    by_key: dict[str, dict] = {}
    for t in tables:  # rows of several tables that join one input are merged: first value per column wins
        for _, row in t.rows:
            merged = by_key.setdefault(row[join_spec.column], {})  # type: ignore[union-attr]
            for k, v in row.items():
                merged.setdefault(k, v)
    rows = {
        f.rel: by_key[f.fields[join_spec.field]] for f in found if f.fields.get(join_spec.field) in by_key
    }  # type: ignore[union-attr]
    if len(found) > len(rows):
        ctx.counters["inputs_without_table_row"] += len(found) - len(rows)
    return rows, events


# ------------------------------------------------------------------ classification from templates


def _classified(ctx, plan: Plan, found: list[Found], rows: dict, lists) -> Iterator[Event]:
    opts = plan.opts
    for f in found:
        values = _values(f, rows.get(f.rel))
        if _filtered(ctx, opts, values, f.rel):
            continue
        split = _split(ctx, opts, f.rel, values, lists)
        if split is None:
            ctx.claim(f.rel)
            ctx.saw_image(f.rel)
            yield _split_unknown(ctx, f.rel)
            continue
        try:
            modality = _modality(ctx, opts.modality, values, ctx.namer(f.rel))
        except ImageError as err:
            ctx.claim(f.rel)
            yield Quarantined(ctx.shown(f.rel), "annotate", err.reason, err.detail)
            continue
        _saw_case(ctx, opts, f)
        # no `where`: the label's source is the path itself, already in every message (pseudonymous for DICOM)
        yield from image_inputs(ctx, f.rel, f.rel, split, _labels(opts, values, ""), modality)


# ------------------------------------------------------------------ labels and boxes from a row


def _labels(opts: LayoutReader, values: dict, where: str) -> list[Annotation]:
    """The label annotations of one input (one per label; errors as annotations that carry them)."""
    spec = opts.label
    if spec is None:
        return [Annotation((), where=where)]
    if spec.columns:
        return _one_hot(spec, values, where)
    if spec.column_by is not None:
        raw, why = chosen_cell(spec, values)
        if why is not None:
            return [Annotation((), where=where, error=(Reason.MISSING_LABEL, f"{where}: {why}"))]
    else:
        raw = resolve(spec, values)
    if raw is None:
        return [Annotation((), where=where)]
    if spec.format == "list_literal":
        parts = list_literal(raw, where)
        if isinstance(parts, str):
            return [Annotation((), where=where, error=("invalid_label", parts))]
    else:
        parts = [p.strip() for p in raw.split(spec.delimiter)] if spec.delimiter else [raw]
    if spec.bins:
        return [_binned(spec, p, where) for p in parts if p] or [Annotation((), where=where)]
    if spec.keywords:
        parts, unmatched = keyword_labels(spec, [p for p in parts if p])
        if unmatched is not None:
            why = f"{where}: keyword '{unmatched[:60]}' matches none of label.keywords"
            return [Annotation((), where=where, error=(Reason.UNKNOWN_LABEL, why))]
    return [Annotation((spec.map.get(p, p),), where=where) for p in parts if p] or [
        Annotation((), where=where)
    ]


def _binned(spec, raw: str, where: str) -> Annotation:
    value, why = bin_of(spec.bins, raw)
    return (
        Annotation((value,), where=where)
        if why is None
        else Annotation((), where=where, error=(Reason.UNKNOWN_LABEL, f"{where}: {why}"))
    )


def _one_hot(spec, values: dict, where: str) -> list[Annotation]:
    anns = []
    for col in spec.columns:
        cell = (values.get(col) or "").strip()
        if cell in spec.positive:
            anns.append(Annotation((col,), where=where))
        elif spec.uncertain is not None and cell in spec.uncertain.values:
            if spec.uncertain.policy == "positive":
                anns.append(Annotation((col,), where=where))
            elif spec.uncertain.policy == "quarantine":
                detail = f"{where}: '{col}' is uncertain ({cell}); policy quarantine"
                anns.append(Annotation((col,), where=where, error=(Reason.UNCERTAIN_LABEL, detail)))
        elif cell and cell.lower() not in ("false", "no", "nan") and _number(cell) != 0:
            detail = (
                f"{where}: column '{col}' has {cell!r}, neither positive {list(spec.positive)} nor 0/empty"
            )
            anns.append(Annotation((col,), where=where, error=(Reason.UNKNOWN_LABEL, detail)))
    if not anns:
        if spec.default is not None and all((values.get(c) or "").strip() for c in spec.columns):
            return [Annotation((spec.default,), where=where)]  # every column says no: e.g. a normal exam
        detail = f"{where}: no column of {list(spec.columns)} is positive"
        return [Annotation((), where=where, error=(Reason.MISSING_LABEL, detail))]
    return anns


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _box_values(cells: list[str], where: str) -> list[tuple[float, float, float, float]] | str:
    """Numbers from box cells; a str is the error."""
    try:
        nums = [float(c) for c in cells]
    except ValueError:
        return f"{where}: box cells {cells} are not numbers"
    return [tuple(nums)]  # type: ignore[list-item]


def _parse_cell(cell: str, where: str) -> list[tuple[float, float, float, float]] | str:
    """`[x, y, w, h]` or `[[...], ...]` in one cell (JSON or a Python literal)."""
    try:
        value = json.loads(cell)
    except ValueError:
        try:
            value = ast.literal_eval(cell)
        except (ValueError, SyntaxError):
            return f"{where}: box cell {cell[:60]!r} is not a list of numbers"
    items = (
        value
        if value and isinstance(value, list | tuple) and isinstance(value[0], list | tuple | dict)
        else [value]
    )
    out = []
    for item in items:
        item = _dict_box(item) if isinstance(item, dict) else item
        if not isinstance(item, list | tuple) or len(item) != 4:
            return f"{where}: box cell {cell[:60]!r} does not hold 4 numbers per box"
        try:
            out.append(tuple(float(v) for v in item))
        except (TypeError, ValueError):
            return f"{where}: box cell {cell[:60]!r} is not a list of numbers"
    return out  # type: ignore[return-value]


BOX_KEYS = (
    ("x", "y", "width", "height"),
    ("x", "y", "w", "h"),
    ("x_min", "y_min", "x_max", "y_max"),
    ("xmin", "ymin", "xmax", "ymax"),
)


def _dict_box(item: dict) -> tuple | None:
    """A box written as a dict (SIIM-COVID19's `{'x': .., 'y': .., 'width': .., 'height': ..}`), in `format` order."""
    for keys in BOX_KEYS:
        if all(k in item for k in keys):
            return tuple(item[k] for k in keys)
    return None


def _xyxy(box, fmt: str) -> tuple[float, float, float, float]:
    a, b, c, d = box
    if fmt == "xywh":
        return a, b, a + c, b + d
    if fmt == "cxcywh":
        return a - c / 2, b - d / 2, a + c / 2, b + d / 2
    return a, b, c, d


def _row_boxes(opts: LayoutReader, values: dict, label: tuple[str, ...], where: str) -> list[Annotation]:
    """Detection annotations of one row: its boxes, a no-finding marker, or an error."""
    spec = opts.boxes
    if spec.no_finding and all_hold(spec.no_finding, values) is None:  # type: ignore[union-attr]
        return [
            Annotation(label, where=where, error=(Reason.NO_FINDING, f"{where}: the row says no finding"))
        ]
    if spec.columns is not None:  # type: ignore[union-attr]
        cells = [(values.get(c) or "").strip() for c in spec.columns]  # type: ignore[union-attr]
        parsed = None if not any(cells) else _box_values(cells, where)
    else:
        cell = (values.get(spec.column) or "").strip()  # type: ignore[union-attr]
        parsed = _parse_cell(cell, where) if cell and cell not in ("[]", "nan") else None
    if parsed is None:
        return [
            Annotation(
                label, (0, 0, 0, 0), where=where, error=(Reason.MISSING_BOX, f"{where}: no box in the row")
            )
        ]
    if isinstance(parsed, str):
        return [Annotation(label, (0, 0, 0, 0), where=where, error=(Reason.MISSING_BOX, parsed))]
    norm = spec.units == "normalized"  # type: ignore[union-attr]
    return [Annotation(label, _xyxy(b, spec.format), normalized=norm, where=where) for b in parsed]  # type: ignore[union-attr]


# ------------------------------------------------------------------ table-driven classification / detection


@dataclass
class _Image:
    rel: str | None
    ref: str
    split: str | None
    modality: str
    annotations: list[tuple[str, Annotation]] = field(default_factory=list)  # (annotator, annotation)


class _Finder:
    """A table cell -> the image file: as a path (relative to the table or the layout root, leading
    folders dropped one by one), else as an id (file name or stem of a file `images` matched)."""

    def __init__(
        self,
        ctx: ReaderContext,
        found: list[Found],
        dicom: bool,
        pattern: str | None = None,
        path: str | None = None,
    ):
        self.ctx = ctx
        self.pattern = Template(pattern) if pattern else None
        self.path = path  # `table.image_path`: the file's path rebuilt from the pattern's fields
        self.by_tail = _tails(ctx, found, path.count("/") + 1) if path else {}
        self.dicom = dicom  # a missing file is named as DICOM (pseudonymous): the cell may be a patient id
        self.by_name: dict[str, Found] = {}
        self.by_stem: dict[str, Found] = {}
        self.by_rel = {f.rel: f for f in found}
        for f in found:
            self.by_name.setdefault(f.fields["file"], f)
            self.by_stem.setdefault(f.fields["stem"], f)

    def find(self, cell: str, table_rel: str) -> tuple[str | None, Found | None]:
        ctx = self.ctx
        ref = cell.replace("\\", "/").strip()
        if self.pattern is not None:
            got = self.pattern.match(ref)
            if got is None:
                return join(ctx.base, ref), None  # reported missing, with the cell as written
            if self.path is not None:
                ref = FIELD_TOKEN.sub(lambda m: got[m.group(1)], self.path)
                if ref in self.by_tail:
                    return self.by_tail[ref].rel, self.by_tail[ref]
            else:
                ref = got.get("path") or got.get("file") or got["stem"]
        parts = ref.split("/")
        for start in range(len(parts)):
            tail = "/".join(parts[start:])
            for folder in (posixpath.dirname(table_rel), ctx.base):
                rel = join(folder, tail)
                hit = rel and ctx.find(rel, IMAGE_EXTENSIONS_2D)
                if hit:
                    return hit, self.by_rel.get(hit)
        f = self.by_name.get(ref) or self.by_stem.get(ref) or self.by_stem.get(_stem(ref))
        if f is not None:
            return f.rel, f
        rel = join(ctx.base, ref)  # not found: image_inputs reports it missing (or refused)
        if rel is not None and self.dicom and not is_dicom(rel):
            rel += ".dcm"
        return rel, None


def _tails(ctx: ReaderContext, found: list[Found], n: int) -> dict[str, Found]:
    """Matched files by the last `n` segments of their path: an `image_path` found under any wrapper
    folders (DeepLesion's Images_png_01/Images_png/<series>/<slice>.png, one folder per zip)."""
    out: dict[str, Found] = {}
    for f in found:
        out.setdefault("/".join(ctx.inner(f.rel).split("/")[-n:]), f)
    return out


def _table_driven(ctx: ReaderContext, plan: Plan, found: list[Found], lists) -> Iterator[Event]:
    opts = plan.opts
    tables, events = _tables(ctx, plan)
    yield from events
    dicom = any(is_dicom(f.rel) for f in found) or any(
        t.lower().endswith((".dcm", ".dicom")) for t in opts.images.path
    )
    finder = _Finder(ctx, found, dicom, opts.table.image_pattern, opts.table.image_path)  # type: ignore[union-attr]
    images: dict[str, _Image] = {}
    for table in tables:
        for pos, (line, row) in enumerate(table.rows):
            if opts.split is not None and opts.split.rows is not None:
                row = {**row, ROW_KEY: str(pos)}
            try:
                yield from _table_row(ctx, opts, finder, table.rel, line, row, images, lists)
            except Exception as exc:  # noqa: BLE001 - the sample boundary: one bad row, one quarantined input
                if is_output_failure(exc):
                    raise
                err = decoder_failure(exc, f"{table.rel} line {line}", "table row")
                yield Quarantined(table.rel, "read", err.reason, err.detail)
    for img in images.values():
        anns = [a for _, a in _apply_annotators(ctx, opts, img.annotations)]
        if img.split is None and img.rel in ctx.files:
            ctx.claim(img.rel)
            ctx.saw_image(img.rel)
            yield from (_split_unknown(ctx, img.rel) for _ in anns)
            continue
        split = img.split or ctx.source.splits[0]  # a missing image is reported as missing, split aside
        yield from image_inputs(ctx, img.rel, img.ref, split, anns, img.modality)
    for f in found:
        if f.rel not in ctx.claimed and f.rel not in ctx.filtered:
            yield unreferenced_file(ctx, f.rel)


def _table_row(ctx, opts: LayoutReader, finder: _Finder, table_rel: str, line: int, row: dict, images, lists):
    """Add one row's annotations to its image (rows of one image are read together, decoded once)."""
    where = f"{table_rel} line {line}"
    cell = (row.get(opts.table.image) or "").strip()  # type: ignore[union-attr]
    if not cell:
        yield Quarantined(table_rel, "read", Reason.MISSING_FILE, f"{where}: empty image cell")
        return
    rel, f = finder.find(cell, table_rel)
    values = {**row, **(f.fields if f else {})}
    if _filtered(ctx, opts, values, rel or cell):
        return
    key = rel or cell
    img = images.get(key)
    if img is None:
        split = _split(ctx, opts, rel or cell, {**values, **(builtins(ctx, rel) if rel else {})}, lists)
        try:
            modality = _modality(ctx, opts.modality, values, where)
        except ImageError as err:
            yield Quarantined(table_rel, "annotate", err.reason, err.detail)
            return
        img = images[key] = _Image(rel, cell, split, modality)
    annotator = ""
    if opts.annotators is not None:
        src = opts.annotators.column if opts.annotators.column is not None else opts.annotators.field
        annotator = str(values.get(src) or "")
    if opts.boxes is None:
        img.annotations += [(annotator, a) for a in _labels(opts, values, where)]
        return
    labels = _labels(opts, values, where)
    label = labels[0].raw_labels if labels else ()
    img.annotations += [(annotator, a) for a in _row_boxes(opts, values, label, where)]


def natural(text: str) -> tuple:
    """Sort key that orders R7 before R10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _apply_annotators(
    ctx, opts: LayoutReader, anns: list[tuple[str, Annotation]]
) -> list[tuple[str, Annotation]]:
    """The annotator policy for one image (`layouts.Annotators`)."""
    spec = opts.annotators
    if spec is None or spec.policy == "all" or not anns:
        return anns
    if spec.policy == "first":
        first = min((a for a, _ in anns), key=natural)
        ctx.counters["rows_of_other_annotators"] += sum(1 for a, _ in anns if a != first)
        return [(a, x) for a, x in anns if a == first]
    return _merge(ctx, spec.iou, anns)


def _merge(ctx, threshold: float, anns: list[tuple[str, Annotation]]) -> list[tuple[str, Annotation]]:
    """Fuse same-label boxes of different annotators (IoU >= threshold) into their mean; errors pass,
    no-finding rows count once per image and not at all where someone drew a box."""
    boxes = [(a, x) for a, x in anns if x.error is None and x.box is not None]
    others = [(a, x) for a, x in anns if x.error is not None and x.error[0] != Reason.NO_FINDING]
    no_finding = [(a, x) for a, x in anns if x.error is not None and x.error[0] == Reason.NO_FINDING]
    clusters: list[list[tuple[str, Annotation]]] = []
    for a, x in boxes:
        for c in clusters:
            mean = _mean_box([y for _, y in c])
            if (
                c[0][1].raw_labels == x.raw_labels
                and all(a != b for b, _ in c)
                and _iou(mean, x.box) >= threshold
            ):
                c.append((a, x))
                break
        else:
            clusters.append([(a, x)])
    merged = []
    for c in clusters:
        x = c[0][1]
        merged.append(("", Annotation(x.raw_labels, _mean_box([y for _, y in c]), x.normalized, x.where)))
        ctx.counters["boxes_merged_away"] += len(c) - 1
    ctx.counters["no_finding_rows_merged_away"] += len(no_finding) - (0 if merged or not no_finding else 1)
    keep_nf = [no_finding[0]] if no_finding and not merged else []
    return merged + others + keep_nf


def _mean_box(anns: list[Annotation]) -> tuple[float, float, float, float]:
    arr = np.array([a.box for a in anns], dtype=float)
    return tuple(float(v) for v in arr.mean(axis=0))  # type: ignore[return-value]


# ------------------------------------------------------------------ masks


def _mask_index(plan: Plan, masks: list[Found], shared: list[str]) -> dict[tuple, list[Found]]:
    out: dict[tuple, list[Found]] = defaultdict(list)
    for m in masks:
        out[tuple(m.fields.get(f) for f in shared)].append(m)
    return out


def _shared(plan: Plan) -> list[str]:
    image_fields = set(plan.opts.images.fields())
    return [f for f in plan.opts.masks.fields() if f in image_fields and f != "channel"]  # type: ignore[union-attr]


def _masks_of(ctx, opts: LayoutReader, values: dict, found: list[Found]) -> list[MaskFile]:
    """An input's mask files, after filters on mask-only fields (one annotator's masks: `filters: {rater: "1"}`)."""
    conditions = {k: c for k, c in opts.filters.items() if k in _mask_only(opts)}
    out = []
    for m in found:
        both = {**values, **m.fields}
        failed = all_hold(conditions, both)
        if failed is not None:
            ctx.counters[f"masks_filtered_by_{failed}"] += 1
            continue
        out.append(MaskFile(m.rel, _mask_label(opts, both), opts.masks, opts.colors))
    return out


def _mask_label(opts: LayoutReader, values: dict) -> str | None:
    """A mask file's label when the declaration names it (binary masks); None: mask values are labels."""
    return resolve(opts.label, values) if opts.label is not None else None


def _masks_2d(
    ctx, plan: Plan, found: list[Found], mask_found: list[Found], rows: dict, lists
) -> Iterator[Event]:
    opts = plan.opts
    shared = _shared(plan)
    index = _mask_index(plan, mask_found, shared)
    for f in found:
        values = _values(f, rows.get(f.rel))
        if _filtered(ctx, opts, values, f.rel):
            continue
        ctx.claim(f.rel)
        ctx.saw_image(f.rel)
        split = _split(ctx, opts, f.rel, values, lists)
        if split is None:
            yield _split_unknown(ctx, f.rel)
            continue
        masks = _masks_of(ctx, opts, values, index.get(tuple(f.fields.get(k) for k in shared), []))
        try:
            modality = _modality(ctx, opts.modality, values, ctx.namer(f.rel))
        except ImageError as err:
            yield Quarantined(ctx.shown(f.rel), "annotate", err.reason, err.detail)
            continue
        event = seg_image(ctx, opts, f.rel, masks, split, modality, " or ".join(opts.masks.path))  # type: ignore[union-attr]
        yield from _per_box(ctx, event)


def _per_box(ctx: ReaderContext, event: Event) -> Iterator[Event]:
    """Detection from masks (GLENDA): each box is one input, as a detection table's rows are."""
    if ctx.source.task_type == "2d_det" and isinstance(event, Kept) and len(event.samples) > 1:
        yield from (Kept([sample]) for sample in event.samples)
    else:
        yield event


# ------------------------------------------------------------------ volumes


def _volumes(
    ctx, plan: Plan, found: list[Found], mask_found: list[Found], rows: dict, lists
) -> Iterator[Event]:
    opts = plan.opts
    shared = _shared(plan)
    index = _mask_index(plan, mask_found, shared)
    groups: dict[str, list[Found]] = defaultdict(list)
    for f in found:
        groups[f.fields["case"]].append(f)
    for case in sorted(groups):
        members = groups[case]
        values = _values(members[0], rows.get(members[0].rel))
        if _filtered(ctx, opts, values, members[0].rel):
            ctx.filtered.update(f.rel for f in members)
            continue
        images = []
        for f in members:
            channel = f.fields.get("channel")
            if channel is not None and not selected(opts.channels, members.index(f), channel):
                ctx.counters["channels_not_selected"] += 1
                ctx.filtered.add(f.rel)
                continue
            images.append((f.rel, channel))
        if not images:
            continue
        split = _split(ctx, opts, images[0][0], values, lists)
        if split is None:
            for rel, _ in images:
                ctx.claim(rel)
                ctx.saw_image(rel, case)
                yield _split_unknown(ctx, rel)
            continue
        masks = _masks_of(ctx, opts, values, index.get(tuple(members[0].fields.get(k) for k in shared), []))
        vc = VolumeCase(case, images, masks, split, values, ref=case)
        yield from case_events(ctx, opts, vc, opts.modality, opts.channels)


def _stacks(
    ctx, plan: Plan, found: list[Found], mask_found: list[Found], rows: dict, lists
) -> Iterator[Event]:
    opts, shared = plan.opts, _shared(plan)
    index = _mask_index(plan, mask_found, shared)
    kept = [f for f in found if not _filtered(ctx, opts, _values(f, rows.get(f.rel)), f.rel)]
    yield from stack_events(
        ctx,
        opts,
        kept,
        lambda rel, fields: _split(ctx, opts, rel, {**(rows.get(rel) or {}), **fields}, lists),
        lambda f: _masks_of(ctx, opts, f.fields, index.get(tuple(f.fields.get(k) for k in shared), [])),
        _modality(ctx, opts.modality, {}, "the layout"),
        lambda rel: _split_unknown(ctx, rel),
    )


def describe(opts: LayoutReader) -> str:
    """The layout in one line, for the zero-inputs message."""
    parts = [f"images {' | '.join(opts.images.path)}"]
    if opts.masks:
        parts.append(f"masks {' | '.join(opts.masks.path)}")
    if opts.table:
        parts.append(f"table {' | '.join(opts.table.file)}")
    return ", ".join(parts)
