"""Layout declarations: how a catalog entry describes its dataset's real download, in YAML, not code.

One generic reader (`kind: layout`) covers the layouts public datasets ship, so adding a dataset never
means writing a reader: path templates with named fields find images and masks (`{case}/{case}_frame{n}.nii.gz`),
tables give labels, splits and boxes, conditions on fields or columns filter inputs and choose split and
modality per case. The older kinds (`image_folder`, `msd`, ...) stay as shorthands for their conventions.
`gmai_pipeline/readers/layout.py` interprets these models; the README's "Adding a dataset" shows each one
with a real dataset.

Converters (formats a declaration cannot describe: DICOM series, polygons, run-length masks, HDF5,
whole-slide images) are declared in the same block: `convert: {kind: <name>, ...}` says how the files
the templates match are decoded (`Convert`, one closed model per kind from `gmai_pipeline.converters`,
plus the few layout-level settings below); `readers/layout.py` hands such a declaration to the
converter's reader (`CONVERTERS`), which reuses the templates, tables, splits and filters.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gmai_pipeline.converters.dicom_series import DicomSeriesOptions
from gmai_pipeline.converters.hdf5 import Hdf5Options
from gmai_pipeline.converters.imgannot import ImgannotOptions
from gmai_pipeline.converters.npy import NpyOptions
from gmai_pipeline.converters.polygons import PolygonOptions
from gmai_pipeline.converters.rle import RleOptions
from gmai_pipeline.converters.wsi import WsiOptions
from gmai_pipeline.converters.xml_rows import XmlRows

FIELD_TOKEN = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::((?:[^{}]|\{\d*,?\d*\})+))?\}")
# Names every input has besides its template fields: usable in conditions, rules, split lists.
BUILTIN_FIELDS = ("path", "file", "stem", "channel", "case")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def template_fields(template: str) -> list[str]:
    """Field names of one path template, in order of first appearance."""
    seen: list[str] = []
    for m in FIELD_TOKEN.finditer(template):
        if m.group(1) not in seen:
            seen.append(m.group(1))
    return seen


def _as_text(v: Any) -> Any:
    if isinstance(v, bool):
        return str(v).lower()
    return str(v) if isinstance(v, int | float) else v


def _as_tuple(v: Any) -> Any:
    return (v,) if isinstance(v, str) else v


class Condition(_Spec):
    """A test on one field or column value; every part given must hold.

    Shorthand: a scalar (`mag: 40X`) or a list (`rad_id: [R8, R9]`) means `in`. `min`/`max` compare the
    value as a number; a value with text around its digits (`amos_0507`, `img0001`) compares its last
    run of digits.
    """

    in_: tuple[str, ...] | None = Field(None, alias="in")
    not_in: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    glob: str | None = None
    regex: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, str | int | float | bool):
            return {"in": [_as_text(v)]}
        if isinstance(v, list | tuple):
            return {"in": [_as_text(x) for x in v]}
        if isinstance(v, dict):
            return {
                k: [_as_text(x) for x in val] if k in ("in", "not_in") and isinstance(val, list) else val
                for k, val in v.items()
            }
        return v

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"regex {v!r} does not compile: {exc}") from None
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        if all(getattr(self, f) is None for f in ("in_", "not_in", "min", "max", "glob", "regex")):
            raise ValueError("a condition needs at least one of in, not_in, min, max, glob, regex")
        return self


Conditions = dict[str, Condition]


class Rule(_Spec):
    """`value` for the inputs whose fields/columns satisfy every condition in `when` (first rule wins)."""

    when: Conditions
    value: str

    _text = field_validator("value", mode="before")(_as_text)


class ValueSource(_Spec):
    """Where one per-input value comes from: exactly one of `field`, `column`, `rules`, `value`.

    Shorthand: `"{label}"` is `field: label`; any other string is a fixed `value`.
    `map` rewrites raw values (after trimming) before use; `default` applies when `rules` match nothing
    or the field/column is empty.
    """

    field: str | None = None
    column: str | int | None = None
    value: str | None = None
    rules: tuple[Rule, ...] = ()
    map: dict[str, str] = Field(default_factory=dict)
    default: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            m = re.fullmatch(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", v.strip())
            return {"field": m.group(1)} if m else {"value": v}
        if isinstance(v, dict) and isinstance(v.get("map"), dict):
            return {**v, "map": {str(_as_text(k)): str(_as_text(x)) for k, x in v["map"].items()}}
        return v

    def _sources(self) -> list[str]:
        return [n for n in ("field", "column", "value", "rules") if getattr(self, n) not in (None, ())]

    @model_validator(mode="after")
    def _exactly_one(self) -> ValueSource:
        given = self._sources()
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of field, column, value, rules{self._extra_sources()} (got {given or 'none'})"
            )
        return self

    def _extra_sources(self) -> str:
        return ""


class Uncertain(_Spec):
    """Cells that mean "uncertain" (CheXpert `-1`) and what to do with them: no default, it is a choice.

    positive: the label counts as present (CheXpert's U-Ones); negative: as absent (U-Zeros);
    quarantine: each uncertain label becomes a quarantined input (`uncertain_label`), visible, not used.
    """

    values: tuple[str, ...]
    policy: Literal["positive", "negative", "quarantine"]

    _text = field_validator("values", mode="before")(
        lambda v: [_as_text(x) for x in v] if isinstance(v, list) else v
    )


class Bin(_Spec):
    """One class of a numeric label (`label.bins`): the values from `min` to `max`, both inclusive."""

    value: str
    min: float | None = None
    max: float | None = None


class ColumnBy(_Spec):
    """The label column chosen per input by a field (ODIR-5K: `eye` left/right -> Left-/Right-Diagnostic
    Keywords of the patient's row)."""

    field: str
    columns: dict[str, str | int] = Field(min_length=1)


class Keyword(_Spec):
    """A finding's free-text keyword -> a raw label (`regex` searched, case-insensitive; first match wins);
    `value: null` marks a keyword that is no finding (image-quality notes), dropped from the labels."""

    regex: str
    value: str | None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"keywords: {v!r} does not compile: {exc}") from None
        return v


class LabelSpec(ValueSource):
    """The label: a field, a column (optionally `delimiter`-separated multi-labels, NIH `A|B`, or a Python
    list literal with `format: list_literal`, PadChest `['pleural effusion', 'cardiomegaly']`), one-hot
    or multi-hot `columns` (ISIC 2019, CheXpert: the label is the column name), a fixed value, or rules.

    Every label is mapped through the catalog's `labels` when it has one. In `columns`, a cell is
    positive when it is one of `positive` (default 1, 1.0, true, yes), absent when empty or 0, uncertain
    when it is one of `uncertain.values`; anything else is an error on that row. With `default`, an
    input whose every column has a cell and none is positive takes that label (MRNet's normal exams);
    without it, or with a cell missing, it is `missing_label`.
    """

    columns: tuple[str, ...] = ()
    delimiter: str | None = None
    format: Literal["list_literal"] | None = None  # list_literal: a cell `['a', 'b']` (PadChest's Labels)
    positive: tuple[str, ...] = ("1", "1.0", "true", "True", "TRUE", "yes", "Yes")
    uncertain: Uncertain | None = None
    # numeric labels binned into classes (LYSTO counts -> 0, 1-5, ...): of the column or field, or alone
    # the raw label a converter reads (an HDF5 label dataset); a value in no bin is `unknown_label`
    bins: tuple[Bin, ...] = ()
    column_by: ColumnBy | None = None  # the column chosen per input by a field (ODIR-5K's eye)
    keywords: tuple[Keyword, ...] = ()  # each (delimited) keyword -> a raw label; unmatched: unknown_label

    def _sources(self) -> list[str]:
        return (
            super()._sources()
            + (["columns"] if self.columns else [])
            + (["column_by"] if self.column_by else [])
        )

    @model_validator(mode="after")
    def _exactly_one(self) -> LabelSpec:
        given = self._sources()
        if len(given) > 1 or not given and not self.bins:
            raise ValueError(
                f"give exactly one of field, column, value, rules, columns (got {given or 'none'})"
            )
        return self

    @model_validator(mode="after")
    def _ordered_bins(self) -> LabelSpec:
        for i, b in enumerate(self.bins):
            inner = (i > 0, i < len(self.bins) - 1)  # only the first may be open below, the last above
            if (b.min is None and inner[0]) or (b.max is None and inner[1]) or b.min is b.max is None:
                raise ValueError(
                    "label.bins: every bin has min and max (inclusive), the first may omit min, the last max"
                )
            if b.min is not None and b.max is not None and b.min > b.max:
                raise ValueError(f"label.bins: bin {b.value!r} has min > max")
            if i and b.min <= self.bins[i - 1].max:  # type: ignore[operator]
                raise ValueError("label.bins: bins in ascending order, without overlaps")
        return self

    def _extra_sources(self) -> str:
        return ", columns"

    @model_validator(mode="after")
    def _format(self) -> LabelSpec:
        if self.format is not None and (
            self.delimiter is not None or self.field is None and self.column is None
        ):
            raise ValueError(f"label.format {self.format} reads one field or column, without a delimiter")
        return self


class RowLists(_Spec):
    """Split files that list rows of the table by position (Derm7pt's meta/train_indexes.csv, column
    `indexes`: 0-based positions of meta/meta.csv's data rows, as pandas numbers them; blank lines are
    not rows). `column`: the index files' column (a name, or 0-based index); `start`: the number of the
    table's first data row. Shorthand: a plain map is `files` (split -> file)."""

    files: dict[str, str]
    column: str | int = 0
    start: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"files": v} if isinstance(v, dict) and "files" not in v else v

    @field_validator("files")
    @classmethod
    def _some(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("split.rows: give at least one split -> file")
        return v


class SplitSpec(ValueSource):
    """The split: a field, a column, rules, a fixed value, or `lists` (split -> list file of image names,
    NIH's `train_val_list.txt` / `test_list.txt`).

    Values go through `map`, then the usual aliases (training -> train, validation/valid -> val, ...).
    A list entry matches an image by file name, stem, path under the layout root, or case; a list that
    is a table (CSV/TSV/XLSX) gives its entries in `list_column`. `rows` lists rows of a one-file table by
    position instead (`RowLists`). An image (row) in no list takes `default`, or is quarantined
    `split_unknown` without one. Without any `split`, the
    split comes from the path (see `ReaderContext.split_of`).
    """

    lists: dict[str, str] = Field(default_factory=dict)
    # list files that are tables (FracAtlas's `Utilities/Fracture Split/train.csv`): the column of image names
    list_column: str | int | None = None
    rows: RowLists | None = (
        None  # split files of table row positions (Derm7pt); a row in none takes `default`
    )

    def _sources(self) -> list[str]:
        return super()._sources() + (["lists"] if self.lists else []) + (["rows"] if self.rows else [])

    @model_validator(mode="after")
    def _list_column(self) -> SplitSpec:
        if self.list_column is not None and not self.lists:
            raise ValueError("split.list_column names the image column of split.lists: give lists")
        return self

    def _extra_sources(self) -> str:
        return ", lists, rows"


class TableBy(_Spec):
    """The table a row is looked up in, chosen per input by a field (PAPILA: eye OD -> patient_data_od.xlsx)."""

    field: str
    files: dict[str, str] = Field(min_length=1)


class Join(_Spec):
    """Template-driven reading with a table beside it: a row belongs to the input whose `field` equals the
    row's `column` (TotalSegmentator's `meta.csv`: column image_id = field case). `cell` says how the cell
    writes the key, `{key}` standing for the field's value (PAPILA's `#{key}`: `#002` for RET002OD.jpg);
    `table_by` picks the table per input (`TableBy`)."""

    column: str | int
    field: str
    cell: str | None = None
    table_by: TableBy | None = None

    @field_validator("cell")
    @classmethod
    def _one_key(cls, v: str | None) -> str | None:
        if v is not None and v.count("{key}") != 1:
            raise ValueError(f"table.join.cell {v!r}: write the key once as {{key}}, e.g. '#{{key}}'")
        return v


class TableSpec(_Spec):
    """A CSV/TSV/XLSX table. With `image` the table drives: each row names an image (a path, tried
    relative to the table's folder and to the layout root, leading folders dropped one by one until it is
    found; or an id matched against the file name or stem of the files `images` matches). A cell that
    wraps the name (`000a312787f2_image`) is read with `image_pattern` (`{stem}_image`). With `join` the
    templates drive and rows add columns to the inputs they match.
    """

    file: tuple[str, ...]
    image: str | int | None = None
    image_pattern: str | None = None  # how the cell names the image, e.g. "{stem}_image" (SIIM-COVID19 ids)
    # the image's path rebuilt from image_pattern's fields (DeepLesion: cell `{series}_{slice:\d+}.png`
    # -> `Images_png/{series}/{slice}.png`); under any folders when not found from the layout root
    image_path: str | None = None
    join: Join | None = None
    delimiter: str | None = None  # default: tab for .tsv, else sniffed among , ; tab |
    sheet: str | None = None  # XLSX sheet; default the first
    # column names to use instead of the header row (e.g. NIH BBox_List_2017.csv); `{stem}` in a name is the
    # table file's stem, so a family of one-label tables (MRNet's train-acl.csv ...) gives one column each
    names: tuple[str, ...] = ()
    header: bool = True  # False: every line is data (MRNet's `0000,0`); columns by names or index
    skip_rows: int = Field(0, ge=0)  # lines after the header that are not data (PAPILA's two sub-headers)
    xml: XmlRows | None = (
        None  # the files are XML documents: rows and columns by ElementPath (Open-i reports)
    )

    _files = field_validator("file", mode="before")(_as_tuple)

    @model_validator(mode="after")
    def _mode(self) -> TableSpec:
        if (self.image is None) == (self.join is None):
            raise ValueError("give exactly one of image (the table names the images) or join (templates do)")
        by = self.join.table_by if self.join is not None else None
        if by is not None and not set(by.files.values()) <= set(self.file):
            raise ValueError("table.join.table_by: every file it names must be one of table.file")
        if self.image_pattern is not None:
            check_template(self.image_pattern)
            if self.image_path is None and not {"path", "file", "stem"} & set(
                template_fields(self.image_pattern)
            ):
                raise ValueError(
                    "image_pattern needs a {path}, {file} or {stem} field: the part that names the image"
                    " (or image_path: a path built from its fields)"
                )
        self._check_image_path()
        return self

    def _check_image_path(self) -> None:
        if self.image_path is None:
            return
        if self.image_pattern is None:
            raise ValueError("image_path is built from image_pattern's fields: declare table.image_pattern")
        check_template(self.image_path)
        if any(c in FIELD_TOKEN.sub("", self.image_path) for c in "*?"):
            raise ValueError(f"image_path {self.image_path!r} names one file: no wildcards")
        unknown = set(template_fields(self.image_path)) - set(template_fields(self.image_pattern))
        if unknown or any(m.group(2) for m in FIELD_TOKEN.finditer(self.image_path)):
            raise ValueError(
                f"image_path {self.image_path!r}: use only image_pattern's fields, without patterns"
                f"{' (not in image_pattern: ' + ', '.join(sorted(unknown)) + ')' if unknown else ''}"
            )


class BoxSpec(_Spec):
    """Boxes from table rows: four `columns`, or one `column` holding `[a, b, c, d]` or a list of them.

    `format` has no default (datasets differ): xyxy corners, xywh (top-left + size), cxcywh (centre +
    size); `units` pixels of the source image or normalized 0..1. A row with empty box cells is an error
    (`missing_box`) unless it matches `no_finding` (VinDr-CXR `class_name: No finding`, RSNA `Target: 0`);
    a no-finding row is quarantined `no_finding` (a detection row needs a box).
    """

    columns: tuple[str | int, str | int, str | int, str | int] | None = None
    column: str | int | None = None
    format: Literal["xyxy", "xywh", "cxcywh"]
    units: Literal["pixels", "normalized"] = "pixels"
    no_finding: Conditions = Field(default_factory=dict)

    @model_validator(mode="after")
    def _where(self) -> BoxSpec:
        if (self.columns is None) == (self.column is None):
            raise ValueError("give exactly one of columns (four cells) or column (one cell with a list)")
        return self


class Annotators(_Spec):
    """Several annotators per image: whose rows are used, stated (no default).

    all: every annotator's box is its own row; first: only the first annotator of each image (ids in natural
    order: R7 before R10);
    merge: boxes of the same label whose IoU >= `iou` across annotators are fused into their mean box,
    and an image's no-finding rows count once. Keep only some annotators with `filters`.
    """

    field: str | None = None
    column: str | int | None = None
    policy: Literal["all", "first", "merge"]
    iou: float = Field(0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _where(self) -> Annotators:
        if (self.field is None) == (self.column is None):
            raise ValueError("give exactly one of field or column")
        return self


class FileSet(_Spec):
    """Files found by path templates (decoded by extension unless `reader.convert` says otherwise).

    Template syntax: literal text; `{name}` a named field (one path segment, shortest match; the same
    name twice must match the same text); `{name:regex}` a field with its own pattern; `*` any text
    within a segment; `**/` any number of folders. Shorthand: a string or a list of strings is `path`.
    """

    path: tuple[str, ...]

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str | list | tuple) else v

    _paths = field_validator("path", mode="before")(_as_tuple)

    @field_validator("path")
    @classmethod
    def _syntax(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("give at least one path template")
        for t in v:
            check_template(t)
        return v

    def fields(self) -> list[str]:
        out: list[str] = []
        for t in self.path:
            out.extend(f for f in template_fields(t) if f not in out)
        return out


class RawPixels(_Spec):
    """Headerless raw pixels (JSRT's `.IMG`: 2048x2048 samples of 12 bits in big-endian uint16).

    The declaration is the file's only header, so nothing that could be silently wrong has a default:
    a file whose size is not `offset + width x height x bytes per sample` is quarantined naming both
    sizes, and one with samples above `bits` (a wrong byte order, usually) is refused, not windowed.
    bits: the stored bits, also the display window (0 .. 2**bits - 1); omitted, the 0.5/99.5 percentiles.
    invert: high values are dark (DICOM's MONOCHROME1), flipped before storing.
    """

    width: int = Field(ge=1, le=65535)
    height: int = Field(ge=1, le=65535)
    dtype: Literal["uint8", "uint16", "int16", "uint32", "int32", "float32"]
    byte_order: Literal["big", "little"] | None = None  # required when a sample has more than one byte
    bits: int | None = Field(None, ge=1, le=32)
    offset: int = Field(0, ge=0)  # bytes of a header to skip
    invert: bool = False
    extensions: tuple[str, ...] = (".img", ".raw")

    _exts = field_validator("extensions", mode="before")(_as_tuple)

    @model_validator(mode="after")
    def _complete(self) -> RawPixels:
        size = RAW_TYPES[self.dtype][1]
        if size > 1 and self.byte_order is None:
            raise ValueError(
                f"raw {self.dtype} samples need byte_order (big or little): it is not in the file"
            )
        if self.bits is not None and (self.dtype == "float32" or self.bits > 8 * size):
            raise ValueError(f"raw bits {self.bits} does not fit {self.dtype} samples")
        if not all(e.startswith(".") for e in self.extensions):
            raise ValueError("raw extensions start with a dot (.img)")
        return self

    @property
    def numpy_dtype(self) -> str:
        order = ">" if self.byte_order == "big" else "<"
        return order + RAW_TYPES[self.dtype][0]

    @property
    def itemsize(self) -> int:
        return RAW_TYPES[self.dtype][1]


# raw dtype -> (NumPy type code without byte order, bytes per sample)
RAW_TYPES = {
    "uint8": ("u1", 1),
    "uint16": ("u2", 2),
    "int16": ("i2", 2),
    "uint32": ("u4", 4),
    "int32": ("i4", 4),
    "float32": ("f4", 4),
}


class ArrayImages(_Spec):
    """Image files that hold NumPy arrays, one image per file: a 2D array (H x W, or H x W x 3) as it
    is; a 3D stack (MRNet's `train/sagittal/0000.npy`, slices x 256 x 256 uint8) as one slice along
    `axis`, chosen by `slice` (`middle`, or an index), which a stack needs: there is no default.

    format npy: `.npy`, read with `allow_pickle=False` (an object array is refused, never unpickled);
    the header's shape and type are checked against the file's size and the decode budget first.
    format pickle: a pickled ndarray (KneeMRI's `.pck`), read by a restricted unpickler that admits
    the numpy array constructors alone (`readers.raw_pixels.load_pickled_array`): any other object,
    class or callable in the file is refused before it is built.
    """

    format: Literal["npy", "pickle"] = "npy"
    slice: Literal["middle"] | int | None = None
    axis: int = Field(0, ge=0, le=2)
    extensions: tuple[str, ...] = ()  # default: .npy, or .pck / .pkl / .pickle

    _exts = field_validator("extensions", mode="before")(_as_tuple)

    @model_validator(mode="after")
    def _default_extensions(self) -> ArrayImages:
        if not self.extensions:
            default = (".npy",) if self.format == "npy" else (".pck", ".pkl", ".pickle")
            object.__setattr__(self, "extensions", default)
        return self


class ImageFiles(FileSet):
    """The image files' templates; `raw` declares headerless pixels (`RawPixels`) and `array` NumPy
    arrays (`ArrayImages`) for the files with their extensions (the others are decoded by extension)."""

    raw: RawPixels | None = None
    array: ArrayImages | None = None
    stack: str | None = None  # 3d_seg: the field numbering 2D section files stacked into one volume (MitoEM)

    @model_validator(mode="after")
    def _one_decoder(self) -> ImageFiles:
        if self.raw is not None and self.array is not None:
            raise ValueError("give images.raw or images.array, not both")
        return self

    def declared_extensions(self) -> tuple[str, ...]:
        """Extensions the declared decoder reads, besides the 2D image formats."""
        spec = self.raw or self.array
        return spec.extensions if spec is not None else ()


class MaskEncoding(_Spec):
    """How a 2D mask file's pixel values become label values, where 0 is not simply background.

    background: the value that means "no structure" (default 0). iChallenge-AMD, PALM and GAMMA ship
    BMP/PNG masks with 255 = background and 0 = the optic disc; every other value is a structure and
    keeps its raw value for the label map (`'0': optic disc`).
    threshold: lossy or soft masks (Kvasir-SEG's JPEG masks, Drishti-GS's averaged expert maps): values
    >= threshold are the structure (label value 1, or the file's label when a field names it), the rest
    background; a colour mask is read as grey first. The threshold is stated per dataset, never guessed.
    """

    background: int = Field(0, ge=0, le=65535)
    threshold: int | None = Field(None, ge=1, le=65535)

    @model_validator(mode="after")
    def _one_rule(self) -> MaskEncoding:
        if self.threshold is not None and self.background != 0:
            raise ValueError("give background or threshold, not both (a threshold's background is below it)")
        return self

    @property
    def plain(self) -> bool:
        """Whether the mask is read as it is (0 = background, every other value a label)."""
        return self.threshold is None and self.background == 0


class MaskFiles(FileSet, MaskEncoding):
    """The mask files' templates, with how their values are encoded (`MaskEncoding`)."""


def check_template(t: str) -> None:
    """Raise ValueError naming the template when its braces or a field pattern are wrong."""
    if t.startswith("/") or ".." in t.split("/"):
        raise ValueError(f"template {t!r} must be relative and stay inside the dataset")
    rest = FIELD_TOKEN.sub("", t)
    if "{" in rest or "}" in rest:
        raise ValueError(
            f"template {t!r}: unbalanced braces or a field name that is not [A-Za-z_][A-Za-z0-9_]*"
        )
    for m in FIELD_TOKEN.finditer(t):
        if m.group(2):
            try:
                re.compile(m.group(2))
            except re.error as exc:
                raise ValueError(
                    f"template {t!r}: field '{m.group(1)}' pattern does not compile: {exc}"
                ) from None


class ReaderBase(_Spec):
    """What every reader kind shares: where its layout starts and which archives to unpack."""

    root: str = ""  # the layout's folder inside the dataset folder (after any single wrapper folder)
    unpack: tuple[str, ...] = ()  # archives (paths or globs under the layout root) to unpack into a cache

    _unpack = field_validator("unpack", mode="before")(_as_tuple)

    @field_validator("root")
    @classmethod
    def _relative(cls, v: str) -> str:
        v = v.strip().strip("/")
        if ".." in v.split("/"):
            raise ValueError(f"root {v!r} must stay inside the dataset folder")
        return v

    def anchors(self) -> tuple[str, ...]:
        """Paths (relative to the layout root) whose presence says the layout starts here."""
        return ()


class VolumeOptions(_Spec):
    """Slicing and mask filters (SA-Med2D rules; `gmai_pipeline.volumes`)."""

    axes: tuple[int, ...] = (0, 1, 2)
    ct_window: tuple[float, float] | None = None  # (level, width); None: a wide window for CT
    min_mask_fraction: float = Field(0.00153, ge=0, lt=1)
    min_component_pixels: int = Field(16, ge=1)
    slice_step: int = Field(1, ge=1)
    # mask values that are not structures, made background and counted (`mask_pixels_ignored`): a list, or
    # `unlisted` = every value the catalog's labels do not name (LEG-3D-US: only 100/150/200 are muscles)
    ignore_values: tuple[int, ...] | Literal["unlisted"] = ()

    @field_validator("ignore_values")
    @classmethod
    def _ignored(cls, v: tuple[int, ...] | str) -> tuple[int, ...] | str:
        if isinstance(v, str):
            return v
        if any(x <= 0 for x in v):
            raise ValueError("ignore_values: positive mask values (0 is background already)")
        return tuple(sorted(set(v)))

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(a not in (0, 1, 2) for a in v) or len(set(v)) != len(v):
            raise ValueError("axes must be distinct values from 0, 1, 2")
        return v


class Hdf5Convert(Hdf5Options):
    """`hdf5` in a layout: `labels_file` is a path template of the file holding the label dataset
    (PCam's `..._y.h5` beside `..._x.h5`), filled in with the image file's fields; omitted, the labels
    are a dataset of the image file itself."""

    labels_file: str | None = None

    @field_validator("labels_file")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None:
            check_template(v)
        return v


class WsiConvert(WsiOptions):
    """`wsi` in a layout. A slide's annotations are its `masks` file (polygons when `annotations` gives
    their format, else a raster mask slide on the slide's grid, PANDA's `_mask.tiff`).

    unannotated: conditions on fields/columns naming the slides that have no annotation by design
    (Camelyon16's `normal_*`): they give background tiles only; any other slide without its
    annotation file is `missing_file`, never silently all-background.
    background_label: the raw label of background tiles in classification (`2d_cls`), through the
    catalog's labels like any other (a `reader.label`, when declared, labels every tile of its slide
    instead: slide-level labels such as PANDA's ISUP grade).
    """

    unannotated: Conditions = Field(default_factory=dict)
    background_label: str | None = None


# `reader.convert`: one closed model per converter kind (`gmai_pipeline.converters`), keyed on `kind`.
Convert = Annotated[
    DicomSeriesOptions
    | PolygonOptions
    | RleOptions
    | Hdf5Convert
    | WsiConvert
    | NpyOptions
    | ImgannotOptions,
    Field(discriminator="kind"),
]
# The task types each converter produces rows for.
CONVERT_TASKS: dict[str, tuple[str, ...]] = {
    "dicom_series": ("3d_seg",),
    "polygons": ("2d_seg",),
    "rle": ("2d_seg",),
    "hdf5": ("2d_cls", "2d_seg", "2d_det"),  # 2d_det: boxes from a table (convert.boxes)
    "wsi": ("2d_cls", "2d_seg"),
    "npy": ("2d_det", "2d_seg"),  # boxes per instance id of each class channel
    "imgannot": ("2d_det",),  # a box per marking
}


class Frames(_Spec):
    """4D cine cases labelled at a few time points: the frames to read, per case, from columns of the
    joined table or template fields (M&Ms: `ED` and `ES` in the dataset's information CSV, as nnU-Net's
    Dataset114_MNMs reads them). The image and its label volume are both 4D (x, y, z, time); each named
    frame of the pair is read as one 3D volume, tagged with its column name. `base`: the index origin
    of the numbers (0: the first time point is 0, as in M&Ms). An empty or non-integer cell, or a frame
    past the last time point, quarantines the case's image naming the column."""

    columns: tuple[str | int, ...] = Field(min_length=1)
    base: Literal[0, 1] = 0


class Resample(_Spec):
    """Image files on their own grid resampled onto the mask's (HECKTOR 2022: FDG-PET on a coarser grid
    than the CT and the GTV masks), by SimpleITK with the files' geometry; files already on the mask grid
    are read as they are. `channels`: which channels may be resampled (None: any)."""

    to: Literal["mask"] = "mask"
    channels: tuple[str | int, ...] | None = None
    interpolation: Literal["linear", "nearest", "bspline"] = "linear"


class MaskColors(_Spec):
    """Colour-coded 2D masks (GLENDA's annots/<id>.png): each listed RGB colour is a label value (then
    through the catalog's `labels`, like any mask value; 0 is background). `tolerance`: the largest
    per-channel difference still counted as that colour (JPEG-like noise; 0: exact). `unlisted`: what a
    pixel of any other colour is, stated: `error` (the mask is `unsupported_mask`, naming the colour) or
    `background` (anti-aliased borders, counted in `mask_pixels_unlisted_colour`).
    Shorthand: a plain map is `values`. Keys are `R,G,B` (`190,62,204`, brackets and spaces allowed)."""

    values: dict[tuple[int, int, int], int]
    tolerance: int = Field(0, ge=0, le=255)
    unlisted: Literal["error", "background"] = "error"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict) and "values" not in v:
            return {"values": v}
        return v

    @field_validator("values", mode="before")
    @classmethod
    def _triplets(cls, v: Any) -> Any:
        if not isinstance(v, dict) or not v:
            raise ValueError("colors.values: a map of R,G,B -> label value")
        out = {}
        for key, value in v.items():
            parts = (
                re.split(r"[\s,]+", str(key).strip().strip("()[]").strip())
                if not isinstance(key, tuple)
                else key
            )
            try:
                rgb = tuple(int(p) for p in parts)
            except ValueError:
                rgb = ()
            if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
                raise ValueError(f"colors: {key!r} is not an R,G,B triplet of 0-255")
            if rgb in out:
                raise ValueError(f"colors: {key!r} is listed twice")
            out[rgb] = value
        return out

    @field_validator("values")
    @classmethod
    def _label_values(cls, v: dict[tuple[int, int, int], int]) -> dict[tuple[int, int, int], int]:
        if any(x < 0 or x > 65535 for x in v.values()):
            raise ValueError("colors: label values are 0-65535 (0 = background)")
        return v


class LayoutReader(ReaderBase, VolumeOptions):
    """The generic reader: templates, tables, masks, boxes, channels, filters (module docstring)."""

    kind: Literal["layout"]
    images: ImageFiles
    fields: dict[str, str] = Field(default_factory=dict)  # field -> regex it must match
    exclude: tuple[str, ...] = ()  # globs (under the layout root) of matched files that are not images
    masks: MaskFiles | None = None
    table: TableSpec | None = None
    label: LabelSpec | None = None
    split: SplitSpec | None = None
    modality: ValueSource | None = None
    annotators: Annotators | None = None
    boxes: BoxSpec | None = None
    channels: tuple[str | int, ...] | None = None  # None: every channel, each its own image
    filters: Conditions = Field(default_factory=dict)
    frames: Frames | None = None  # 4D image + 4D labels: which time points, per case (3d_seg)
    resample: Resample | None = None  # channels on their own grid -> the mask grid (3d_seg)
    convert: Convert | None = None  # how files are decoded when extensions cannot say (converters)
    colors: MaskColors | None = None  # colour-coded 2D masks: RGB -> label value (GLENDA)

    _excl = field_validator("exclude", mode="before")(_as_tuple)

    @field_validator("fields")
    @classmethod
    def _field_patterns(cls, v: dict[str, str]) -> dict[str, str]:
        for name, pattern in v.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"field '{name}' pattern {pattern!r} does not compile: {exc}") from None
        return v

    def template_fields(self) -> set[str]:
        return set(self.images.fields()) | set(self.masks.fields() if self.masks else [])

    @model_validator(mode="after")
    def _references(self) -> LayoutReader:
        known = self.template_fields() | set(BUILTIN_FIELDS)
        has_columns = self.table is not None
        for where, name in self._field_refs():
            if name not in known:
                raise ValueError(
                    f"{where}: field '{name}' is not in the templates (fields: {', '.join(sorted(known))})"
                )
        if not has_columns:
            for where, key in self._condition_keys():
                if key not in known:
                    raise ValueError(
                        f"{where}: '{key}' is neither a template field ({', '.join(sorted(known))}) "
                        "nor a column (no table is declared)"
                    )
            for where, src in (("label", self.label), ("split", self.split), ("modality", self.modality)):
                if src is not None and (src.column is not None or getattr(src, "columns", ())):
                    raise ValueError(f"{where}: a column needs a table (reader.table)")
        if (
            self.split is not None
            and self.split.rows is not None
            and (self.table is None or self.table.image is None or len(self.table.file) != 1)
        ):
            raise ValueError(
                "split.rows numbers the rows of one table that names the images (table.file, table.image)"
            )
        if self.boxes is not None and (self.table is None or self.table.image is None):
            raise ValueError("boxes come from table rows: declare reader.table with an image column")
        if self.table is not None and self.table.join is not None and self.table.join.field not in known:
            raise ValueError(f"table.join: field '{self.table.join.field}' is not in the templates")
        return self

    def _field_refs(self) -> list[tuple[str, str]]:
        refs = []
        for where, src in (("label", self.label), ("split", self.split), ("modality", self.modality)):
            if src is not None and src.field is not None:
                refs.append((where, src.field))
        if self.label is not None and self.label.column_by is not None:
            refs.append(("label.column_by", self.label.column_by.field))
        if self.table is not None and self.table.join is not None and self.table.join.table_by is not None:
            refs.append(("table.join.table_by", self.table.join.table_by.field))
        if self.annotators is not None and self.annotators.field is not None:
            refs.append(("annotators", self.annotators.field))
        refs.extend(("fields", name) for name in self.fields)
        return refs

    def _condition_keys(self) -> list[tuple[str, str]]:
        keys = [("filters", k) for k in self.filters]
        for where, src in (("split", self.split), ("modality", self.modality), ("label", self.label)):
            for rule in src.rules if src is not None else ():
                keys.extend((f"{where}.rules", k) for k in rule.when)
        if self.boxes is not None:
            keys.extend(("boxes.no_finding", k) for k in self.boxes.no_finding)
        if isinstance(self.convert, WsiConvert):
            keys.extend(("convert.unannotated", k) for k in self.convert.unannotated)
        return keys

    def check_task(self, task_type: str) -> None:
        """What each task needs, as one sentence naming the missing field."""
        bins_alone = self.label is not None and self.label.bins and not self.label._sources()
        if bins_alone and (not isinstance(self.convert, Hdf5Convert) or self.convert.labels is None):
            raise ValueError(
                "label.bins alone bins an HDF5 label dataset (convert.labels); else name the column"
            )
        if self.convert is not None:
            self._check_convert(task_type)
            return
        if task_type == "2d_cls":
            if self.label is None:
                raise ValueError("2d_cls needs reader.label (a template field, a column, columns or rules)")
            if self.masks is not None or self.boxes is not None:
                raise ValueError("2d_cls takes no masks or boxes")
        elif task_type == "2d_det" and self.masks is not None:
            self._check_boxes_from_masks()
        elif task_type == "2d_det":
            if self.boxes is None or self.label is None:
                raise ValueError(
                    "2d_det with kind layout needs reader.table, reader.boxes and reader.label, or reader.masks "
                    "(boxes from mask regions; COCO / VOC / YOLO files have their own kinds)"
                )
        else:
            if self.masks is None:
                raise ValueError(f"{task_type} needs reader.masks (path templates of the mask files)")
            if self.boxes is not None:
                raise ValueError(f"{task_type} takes no boxes: they come from the masks")
            if self.table is not None and self.table.image is not None:
                raise ValueError(
                    f"{task_type}: the templates find the images; a table may only add columns (table.join)"
                )
        if task_type != "3d_seg" and (self.channels is not None or self.resample is not None):
            raise ValueError("channels and resample apply to 3d_seg volumes")
        if task_type == "3d_seg" and self.masks is not None and not self.masks.plain:
            raise ValueError("masks.background and masks.threshold apply to 2D masks")
        if self.images.stack is not None and (
            task_type != "3d_seg" or self.images.stack not in self.images.fields()
        ):
            raise ValueError("images.stack names a field of the image templates, for 3d_seg section stacks")
        if task_type == "3d_seg" and (self.images.raw is not None or self.images.array is not None):
            raise ValueError("images.raw and images.array apply to 2D images")
        if self.frames is not None:
            if task_type != "3d_seg" or self.channels is not None:
                raise ValueError("frames apply to 3d_seg 4D cases, instead of channels")
            known = self.template_fields() | set(BUILTIN_FIELDS)
            if self.table is None and any(c not in known for c in self.frames.columns):
                raise ValueError("frames.columns: a column needs a table (reader.table with join)")
        if self.colors is not None and (task_type == "3d_seg" or self.masks is None):
            raise ValueError("colors: colour-coded masks are 2D mask files (reader.masks, 2d_seg or 2d_det)")

    def _check_boxes_from_masks(self) -> None:
        """2d_det from masks (GLENDA): one box per connected region of each label, as 2d_seg rows have."""
        if self.boxes is not None:
            raise ValueError(
                "2d_det: give reader.boxes (a box table) or reader.masks (mask regions), not both"
            )
        if self.table is not None and self.table.image is not None:
            raise ValueError(
                "2d_det from masks: the templates find the images; a table may only add columns (table.join)"
            )

    def _check_convert(self, task_type: str) -> None:
        """What each converter needs (`convert.kind`), as one sentence naming the field."""
        c = self.convert
        kind = c.kind  # type: ignore[union-attr]
        if task_type not in CONVERT_TASKS[kind]:
            raise ValueError(
                f"convert.kind {kind} gives {' or '.join(CONVERT_TASKS[kind])} rows, not {task_type}"
            )
        if self.boxes is not None:
            raise ValueError(f"convert.kind {kind}: boxes come from the converted masks, not reader.boxes")
        if self.table is not None and self.table.image is not None:
            raise ValueError(
                f"convert.kind {kind}: the templates find the images; a table may only add columns (table.join)"
            )
        if task_type != "3d_seg" and self.channels is not None:
            raise ValueError("channels apply to 3d_seg volumes")
        if isinstance(c, DicomSeriesOptions):
            if c.mask is None:
                raise ValueError(
                    "convert.mask: say how the labels are stored (volume | dicom_series | dicom_seg | slices | matlab)"
                )
            if self.masks is None and c.mask.kind != "dicom_seg":
                raise ValueError(
                    f"convert.mask {c.mask.kind} needs reader.masks (path templates of the mask files)"
                )
        elif isinstance(c, PolygonOptions):
            if self.masks is None:
                raise ValueError(
                    "convert.kind polygons needs reader.masks (the annotation files: XML, GeoJSON, COCO JSON)"
                )
        elif isinstance(c, RleOptions):
            if self.table is None or self.table.join is None:
                raise ValueError(
                    "convert.kind rle needs reader.table with join (the RLE table's image column and the field it equals)"
                )
            if self.masks is not None:
                raise ValueError("convert.kind rle: the masks are the table's runs; remove reader.masks")
        elif isinstance(c, Hdf5Convert):
            if (task_type == "2d_seg") != (c.label_kind == "mask"):
                raise ValueError(
                    f"convert.label_kind: {task_type} reads {'mask' if task_type == '2d_seg' else 'scalar'} labels"
                )
            if (task_type == "2d_det") != (c.boxes is not None):
                raise ValueError("convert.boxes (a box table) gives 2d_det rows, and only it does")
            if c.labels is None and self.label is None and c.boxes is None:
                raise ValueError("convert.labels: name the label dataset (or give reader.label)")
            if self.masks is not None:
                raise ValueError(
                    "convert.kind hdf5: labels are a dataset (convert.labels, convert.labels_file), not reader.masks"
                )
        elif isinstance(c, WsiConvert):
            self._check_wsi(c, task_type)
        elif isinstance(c, ImgannotOptions) and self.masks is None:
            raise ValueError("convert.kind imgannot needs reader.masks (the annotation XML files)")
        elif isinstance(c, NpyOptions) and self.masks is not None:
            raise ValueError(
                "convert.kind npy: the masks are an array (convert.masks_file), not reader.masks"
            )

    def _check_wsi(self, c: WsiConvert, task_type: str) -> None:
        polygon_files = bool(self.masks) and any(
            t.lower().endswith((".xml", ".json", ".geojson"))
            for t in self.masks.path  # type: ignore[union-attr]
        )
        if polygon_files and c.annotations is None:
            raise ValueError(
                "convert.annotations: say the annotation files' format ({format: asap_xml | aperio_xml | geojson | vertices_json})"
            )
        if c.annotations is not None and c.annotations.format == "coco":
            raise ValueError(
                "convert.annotations.format: slides take aperio_xml, asap_xml, geojson or vertices_json"
            )
        if c.annotations is not None and self.masks is None:
            raise ValueError("convert.annotations needs reader.masks (the annotation files' templates)")
        if c.rle is not None and (self.table is None or self.masks is not None):
            raise ValueError("convert.rle: the runs are a column of reader.table, not reader.masks files")
        if task_type == "2d_seg":
            if self.masks is None and c.rle is None:
                raise ValueError("2d_seg slides need reader.masks (annotation files or mask slides)")
            if c.background_tiles:
                raise ValueError(
                    "convert.background_tiles: a 2d_seg row needs a box; background tiles are for 2d_cls"
                )
            return
        if self.masks is None and not c.background_tiles:
            raise ValueError(
                "convert.background_tiles: slides without masks are tiled as background tiles only"
            )
        if c.background_tiles and self.label is None and c.background_label is None:
            raise ValueError(
                "convert.background_label: name the label of background tiles (or give reader.label, the slide's)"
            )

    def anchors(self) -> tuple[str, ...]:
        return self.images.path + (self.table.file if self.table else ())


class Expect(_Spec):
    """Documented counts, checked after the read (`expected_counts`, in the asset check `in_release`) and shown
    in the UI.

    images: image files the reader found (kept or quarantined, every split); cases: volumes' cases (3D)
    or distinct `{case}` values; classes: distinct labels kept. `tolerance` is the allowed relative
    difference (0: exact). `source` says where the counts are documented.
    """

    images: int | None = Field(None, ge=0)
    cases: int | None = Field(None, ge=0)
    classes: int | None = Field(None, ge=0)
    tolerance: float = Field(0.0, ge=0, lt=1)
    source: str = ""

    @model_validator(mode="after")
    def _something(self) -> Expect:
        if self.images is None and self.cases is None and self.classes is None:
            raise ValueError("expect needs at least one of images, cases, classes")
        return self
