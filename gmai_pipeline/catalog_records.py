"""Research records: the one hand-written input of each catalog entry (`scripts/catalog_research/<name>.yaml`).

A record holds the public evidence about one dataset (download, real layout with example paths, labels,
splits, counts, licence, and where each fact comes from) and, once written, a `catalog:` section with
what the entry needs beyond the evidence: the reader block, the label map, the splits allowed for
training, the documented counts and a fixture (tiny files at real paths that the entry must read).
`scripts/build_catalog.py` turns the records into `assets/sources/*.yaml`; `tests/test_catalog_fixtures.py`
and `gmai_pipeline.catalog_report` read the fixtures. The writer's guide is
`scripts/catalog_research/WRITING.md`.

Only the parts these tools use are modelled; the evidence fields stay free-form (`extra="allow"`).
A record that has no `catalog:` section yet carries a `pending:` one (the reader block and clinical task
its entry had before the research), so its entry says "catalog section not written yet".
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gmai_pipeline import safe_yaml
from gmai_pipeline.layouts import RawPixels
from gmai_pipeline.quarantine import NORMALIZE_REASONS
from gmai_pipeline.settings import PROJECT_ROOT

RECORDS_DIR = PROJECT_ROOT / "scripts" / "catalog_research"
PENDING_STATE = "catalog section not written yet"
ACCESS = ("public", "registration", "credentialed", "request", "none")

# ---------------------------------------------------------------- the external-LLM rule
# Images may go to a third-party LLM endpoint only when the licence lets anyone redistribute them to third
# parties without conditions that such an endpoint cannot honour. Allowed: public domain (CC0, PDDL,
# US-government works), CC BY and CC BY-SA (any version), ODbL, MIT, Apache, BSD. Not allowed: any
# non-commercial (NC) or no-derivatives (ND) term, any custom terms (research-use agreements, DUAs, Kaggle
# competition rules, registration-only terms), and an unknown licence. Access by `credentialed` (a signed
# DUA), `request` or `none` is not allowed whatever the licence label says: the agreement binds.
PERMISSIVE = re.compile(
    r"^(CC0(-1\.0)?|PDDL(-1\.0)?|public-domain\b.*|CC-BY(-SA)?-\d(\.\d)?|ODbL(-1\.0)?|MIT|Apache-2\.0"
    r"|BSD-[23]-Clause)$",
    re.I,
)
RESTRICTING = re.compile(r"(^|-)(NC|ND)(-|$)", re.I)
BINDING_ACCESS = ("credentialed", "request", "none")


def external_llm_rule(license_id: str, access: str) -> tuple[bool, str]:
    """(allowed, why) for sending a dataset's images to a third-party LLM endpoint (the rule above)."""
    lic = license_id.strip()
    if access in BINDING_ACCESS:
        return False, f"access '{access}': the access agreement binds, whatever the licence label says"
    if lic.lower() == "unknown":
        return False, "licence unknown: fail closed"
    if lic.lower().startswith("custom"):
        return False, "custom terms (research-use agreement, DUA, competition or registration terms)"
    if RESTRICTING.search(lic):
        return False, f"{lic} has a non-commercial or no-derivatives term"
    if PERMISSIVE.match(lic):
        return True, f"{lic} permits redistribution to third parties"
    return False, f"licence id '{lic}' is not on the permissive list: fail closed"


# ---------------------------------------------------------------- the catalog section


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TableContent(_Spec):
    """A table file's header and a few rows (CSV, TSV, TXT with a delimiter, XLSX)."""

    header: tuple[str, ...] | None = None  # None: a table without a header row
    rows: tuple[tuple[str, ...], ...] = Field(min_length=1)
    delimiter: str | None = None  # default: tab for .tsv, else ','
    sheet: str | None = None  # XLSX sheet name

    @field_validator("header", "rows", mode="before")
    @classmethod
    def _cells_as_text(cls, v: Any) -> Any:
        return _cells_as_text(v)


def _cells_as_text(v: Any) -> Any:
    """Table cells as written in the file: YAML numbers and booleans back to their text."""

    def text(x: Any) -> Any:
        return "" if x is None else str(x).lower() if isinstance(x, bool) else str(x)

    if isinstance(v, list) and v and all(isinstance(r, list) for r in v):
        return [[text(x) for x in r] for r in v]
    return [text(x) for x in v] if isinstance(v, list) else v


class SeriesHolds(_Spec):
    """`format: dicom_series` (the path is the series' folder, ending in `/`): single-frame slices of one
    series with real geometry (one SeriesInstanceUID, positions along the normal, spacing, orientation)."""

    modality: str = Field(pattern=r"^[A-Z]{2,4}$")
    slices: int = Field(4, ge=2, le=16)  # 4: a mask cube of 4x4x4 survives the 3D size filters
    names: str = "IM{i:04d}.dcm"  # file name per slice, {i} = 0-based position (illustrative names)

    @field_validator("names")
    @classmethod
    def _numbered(cls, v: str) -> str:
        if "{i" not in v or "/" in v or not v.lower().endswith((".dcm", ".dicom", "")):
            raise ValueError("names: a file name template with {i} (the slice's position), no folders")
        return v


class SliceMasksHolds(_Spec):
    """`format: slice_masks` (a folder ending in `/`): one PNG label image per DICOM slice (CHAOS's
    `Ground/`), each value one block on every slice; the k-th file by name marks the k-th slice."""

    values: tuple[int, ...] = Field(min_length=1)
    slices: int = Field(4, ge=2, le=16)
    names: str = "{i:03d}.png"


class MatlabHolds(_Spec):
    """`format: matlab_mask`: a `.mat` label volume (FUMPE's `GroundTruth/*.mat`) on the DICOM grid of the
    fixture's series (rows, columns, slices by position), each value one block on every slice."""

    variable: str = "Mask"
    values: tuple[int, ...] = Field(min_length=1)
    slices: int = Field(4, ge=2, le=16)
    version: Literal["5", "7.3"] = "5"  # MAT v5 (scipy.io.savemat) or v7.3 (HDF5 behind a 512-byte header)


class NpyHolds(_Spec):
    """`format: npy`: one stacked array (PanNuke's `images.npy` N x H x W x 3, `masks.npy` N x H x W x C);
    `instance_channels`: the channels holding one instance (one block, its own id) in every record."""

    holds: Literal["images", "instance_channels"]
    shape: tuple[int, ...] = Field(min_length=3, max_length=4)
    values: tuple[int, ...] = ()  # instance_channels: the channels with an instance
    dtype: Literal["uint8", "float32", "float64"] = "float64"


class ImgannotMarking(_Spec):
    """One DIARETDB1 marking: its markingtype, confidencelevel and region (on its own fixture block)."""

    type: str = Field(min_length=1)
    confidence: Literal["Low", "Moderate", "High"] = "High"
    region: Literal["polygon", "circle", "point"] = "polygon"


class ImgannotHolds(_Spec):
    """`format: imgannot_xml`: an imgannotool annotation file (DIARETDB1 `groundtruth/*.xml`); may be empty."""

    markings: tuple[ImgannotMarking, ...] = ()

    @property
    def blocks(self) -> int:
        return len(self.markings)


class PolygonShape(_Spec):
    """One polygon of an annotation file, placed by the fixture builder on its own block (picture) or
    region (slide); `name` is what the format calls its label (Aperio Annotation Name or Attribute,
    ASAP PartOfGroup, GeoJSON classification)."""

    name: str = ""
    negative: bool = False  # Aperio NegativeROA / an ASAP exclusion group: a hole inside the previous shape


class PolygonHolds(_Spec):
    """`format: aperio_xml | asap_xml | geojson`: annotation files of polygons (one square each)."""

    shapes: tuple[PolygonShape, ...] = Field(min_length=1)
    attribute: bool = False  # Aperio: the label in Annotation/Attributes/Attribute@Name (MoNuSAC)

    @property
    def blocks(self) -> int:
        return sum(not s.negative for s in self.shapes)


class RleHolds(_Spec):
    """`format: rle_csv`: a table whose `column` holds run-length masks; a cell `@block` becomes the
    runs of the next block of the fixture's picture size, in the stated order and numbering (`-1` or
    empty cells stay as written: no mask)."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...] = Field(min_length=1)
    column: str
    order: Literal["column", "row"]  # column: Kaggle's top-to-bottom numbering; row: left-to-right
    start: Literal[0, 1] = 1
    runs: Literal["absolute", "relative"] = "absolute"  # relative: SIIM's gaps between runs

    @field_validator("header", "rows", mode="before")
    @classmethod
    def _cells_as_text(cls, v: Any) -> Any:
        return _cells_as_text(v)

    @model_validator(mode="after")
    def _rle_column(self) -> RleHolds:
        if self.column not in self.header:
            raise ValueError(f"column '{self.column}' is not in the header {list(self.header)}")
        if any(len(r) != len(self.header) for r in self.rows):
            raise ValueError("every row has one cell per header column")
        return self

    @property
    def blocks(self) -> int:
        i = self.header.index(self.column)
        return sum(r[i] == "@block" for r in self.rows)


class Hdf5Dataset(_Spec):
    """One dataset of an HDF5 file: pictures (`images`, shape N x H x W [x C] or N x H x W for a stack),
    scalar labels (`labels`, the N values), or label maps (`masks`, the values present in every record)."""

    holds: Literal["images", "labels", "masks"]
    shape: tuple[int, ...] = Field(min_length=1, max_length=4)
    values: tuple[int, ...] = ()
    dtype: Literal["uint8", "uint16", "int64", "uint64", "float32"] = "uint8"

    @model_validator(mode="after")
    def _content(self) -> Hdf5Dataset:
        if self.holds == "labels" and len(self.values) != self.shape[0]:
            raise ValueError(f"labels: give one value per record ({self.shape[0]}), got {len(self.values)}")
        if self.holds == "masks" and (len(self.shape) != 3 or not self.values):
            raise ValueError("masks: shape N x H x W and the label values each record holds")
        if self.holds == "images" and len(self.shape) not in (3, 4):
            raise ValueError("images: shape N x H x W or N x H x W x C")
        return self


class Hdf5Holds(_Spec):
    """`format: hdf5`: datasets by their path inside the file (`x`, `volumes/raw`)."""

    datasets: dict[str, Hdf5Dataset] = Field(min_length=1)


class SlideHolds(_Spec):
    """`format: pyramid_tiff`: a tiled pyramidal TIFF slide (Aperio's layout when `magnification` is
    given: OpenSlide reads AppMag and MPP; a generic TIFF recording neither when it is null), tissue
    over most of it, glass at the border; polygons of the fixture's annotation files lie on it."""

    magnification: float | None = Field(20, gt=0)
    mpp: float = Field(0.5, gt=0)
    levels: tuple[int, ...] = (1, 4, 16)  # downsample of each level

    @field_validator("levels")
    @classmethod
    def _pyramid(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) < 2 or v[0] != 1 or list(v) != sorted(set(v)):
            raise ValueError("levels: 2+ increasing downsamples starting at 1")
        return v


class SlideMaskHolds(SlideHolds):
    """`format: tiff_mask`: a label mask slide beside its slide (PANDA's `_mask.tiff`): the values in the
    red channel, each on its own region of the slide."""

    magnification: float | None = None
    values: tuple[int, ...] = Field(min_length=1)


class PlainSlideHolds(_Spec):
    """`format: plain_slide`: a slide or TMA core stored as one plain image (format by extension; BCNB's
    `WSIs/<id>.jpg`); with `values`, its palette label mask instead (value k on region k, `background`
    elsewhere: Gleason's `mask_<core>.png`, where 0 is benign and 4 ignore)."""

    values: tuple[int, ...] = ()
    background: int = Field(0, ge=0, le=255)


HOLDS: dict[str, type[_Spec]] = {
    "dicom_series": SeriesHolds,
    "slice_masks": SliceMasksHolds,
    "matlab_mask": MatlabHolds,
    "aperio_xml": PolygonHolds,
    "asap_xml": PolygonHolds,
    "geojson": PolygonHolds,
    "rle_csv": RleHolds,
    "hdf5": Hdf5Holds,
    "npy": NpyHolds,
    "imgannot_xml": ImgannotHolds,
    "pyramid_tiff": SlideHolds,
    "tiff_mask": SlideMaskHolds,
    "plain_slide": PlainSlideHolds,
    "vertices_json": PolygonHolds,
}
FOLDER_FORMATS = ("dicom_series", "slice_masks")
FileFormat = Literal[
    "dicom_series",
    "slice_masks",
    "matlab_mask",
    "aperio_xml",
    "asap_xml",
    "geojson",
    "rle_csv",
    "hdf5",
    "npy",
    "imgannot_xml",
    "pyramid_tiff",
    "tiff_mask",
    "plain_slide",
    "vertices_json",
]


class FixtureFile(_Spec):
    """One file of a fixture: its real relative path and what it holds (exactly one kind).

    image: a 2D picture, `L` or `RGB` (format by extension: PNG, JPEG, BMP, TIFF);
    mask: the label values it holds (2D by image extension, 3D for NIfTI/MHA/MHD/NRRD), one block each,
    on `background` (default 0; 255 for masks whose 0 is a structure, iChallenge-AMD's disc BMPs); with
    `time`, a 4D label volume whose `labelled` frames hold the blocks (M&Ms' ED/ES labels);
    colors: an RGB colour-coded 2D mask holding these colours, one block each, black elsewhere;
    volume: a 3D image volume with this many channels (1 = 3D, more = 4D); with `spacing`, on a grid that
    many times coarser over the same extent (HECKTOR's PET beside its CT and masks);
    dicom: a single-frame DICOM with this Modality (CR, DX, CT, MR ...), pixels only;
    raw: headerless pixels in this format (`layouts.RawPixels`, the entry's own `images.raw`), textured;
    array: a NumPy `.npy` uint8 array of this shape (MRNet's slices x H x W stacks), textured;
    pickled_array: a pickled uint16 ndarray of this shape (KneeMRI's `.pck` volumes), textured;
    table: a header and rows; text: content as is; json: content dumped as JSON;
    format + holds: a file in a converter's format (`HOLDS`: DICOM series, polygon XML/GeoJSON, RLE
    tables, HDF5, pyramidal TIFF slides and mask slides), `holds` validated by that format's model.
    """

    path: str
    image: Literal["L", "RGB"] | None = None
    mask: tuple[int, ...] | None = None
    background: int | None = Field(None, ge=0, le=65535)  # a 2D mask's pixels outside its blocks
    time: int | None = Field(None, ge=2)  # a 3D mask as 4D (x, y, z, time): M&Ms' _sa_gt.nii.gz
    labelled: tuple[int, ...] | None = None  # with time: the frames holding the blocks (default all)
    colors: tuple[tuple[int, int, int], ...] | None = (
        None  # a colour-coded RGB mask (GLENDA): one block per colour
    )
    volume: int | None = Field(None, ge=1)
    spacing: int | None = Field(None, ge=2, le=4)  # with volume: a coarser grid (`reader.resample`)
    dicom: str | None = None
    raw: RawPixels | None = None
    array: tuple[int, ...] | None = Field(None, min_length=2, max_length=4)
    pickled_array: tuple[int, ...] | None = Field(None, min_length=2, max_length=4)
    table: TableContent | None = None
    text: str | None = None
    json_: Any = Field(None, alias="json")
    format: FileFormat | None = None
    holds: Any = None

    @model_validator(mode="after")
    def _holds(self) -> FixtureFile:
        if (self.format is None) != (self.holds is None):
            raise ValueError(f"{self.path}: format and holds go together")
        if self.format is not None:
            try:
                object.__setattr__(self, "holds", HOLDS[self.format].model_validate(self.holds))
            except ValidationError as exc:
                raise ValueError(f"{self.path}: holds of format {self.format}: {exc}") from None
            if (self.format in FOLDER_FORMATS) != self.path.endswith("/"):
                raise ValueError(
                    f"{self.path}: format {self.format} "
                    + (
                        "is a folder of files: end the path in '/'"
                        if self.format in FOLDER_FORMATS
                        else "is one file"
                    )
                )
        return self

    @model_validator(mode="after")
    def _one_kind(self) -> FixtureFile:
        given = [k for k in KINDS if getattr(self, "json_" if k == "json" else k) is not None]
        if len(given) != 1:
            raise ValueError(f"{self.path}: give exactly one of {', '.join(KINDS)} (got {given or 'none'})")
        if self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError(f"{self.path}: a fixture path is relative and stays inside the dataset")
        if self.spacing is not None and self.volume != 1:
            raise ValueError(f"{self.path}: spacing applies to a 3D volume (volume: 1)")
        if self.background is not None and self.mask is None:
            raise ValueError(f"{self.path}: background applies to a mask")
        if (self.time is not None or self.labelled is not None) and (self.mask is None or self.time is None):
            raise ValueError(f"{self.path}: time (and labelled) apply to a 3D mask")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, "json_" if k == "json" else k) is not None)


KINDS = (
    "image",
    "mask",
    "colors",
    "volume",
    "dicom",
    "raw",
    "array",
    "pickled_array",
    "table",
    "text",
    "json",
    "format",
)


class Yields(_Spec):
    """What the entry must make of its fixture: exactly these label names and splits on its rows, and
    exactly these quarantine reasons (official test files: `split_excluded`); where a dataset mixes
    modalities, exactly these row modalities (default: the entry's one modality)."""

    labels: tuple[str, ...] = Field(min_length=1)
    splits: tuple[str, ...] = ("train",)
    modalities: tuple[str, ...] | None = None
    quarantined: dict[str, int] = Field(default_factory=dict)

    @field_validator("quarantined")
    @classmethod
    def _known_reasons(cls, value: dict[str, int]) -> dict[str, int]:
        """A misspelt reason would only show as a fixture mismatch after a run: refuse it when read."""
        unknown = sorted(set(value) - NORMALIZE_REASONS)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: not a quarantine reason of normalization (gmai_pipeline.quarantine.Reason)"
            )
        return value


class Fixture(_Spec):
    under: str = ""  # the wrapper folder(s) the download unpacks into, e.g. ACDC/database
    files: tuple[FixtureFile, ...] = Field(min_length=1)
    yields: Yields
    notes: str = ""  # which file names are illustrative, what the fixture leaves out


class CatalogSection(_Spec):
    """What the catalog entry needs beyond the evidence (WRITING.md)."""

    clinical_task: str
    title: str | None = None  # default: the record's title
    url: str | None = None  # default: the first URL in download.url
    reader: dict[str, Any]
    labels: dict[str, str] = Field(default_factory=dict)
    splits: tuple[str, ...] = ("train",)
    expect: dict[str, Any] | None = None
    burned_in_text_allowed: bool = False
    fixture: Fixture

    @field_validator("labels", mode="before")
    @classmethod
    def _keys_as_text(cls, v: Any) -> Any:
        return {str(k): str(x) for k, x in v.items()} if isinstance(v, dict) else v

    @field_validator("splits")
    @classmethod
    def _training_splits(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if "test" in v:
            raise ValueError("splits: an official test split is never allowed for training")
        return v


class PendingSection(_Spec):
    """The transitional state of an entry whose catalog section is not written yet."""

    state: Literal["catalog section not written yet"]
    blocker: str = ""  # e.g. "converter pending (hdf5): ..." or "schema gap: ..."
    clinical_task: str
    reader: dict[str, Any]


class Download(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    url: str | None = None
    access: Literal["public", "registration", "credentialed", "request", "none"]


class Licence(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    id: str
    where: str | None = None
    looked: list[str] | None = None


class Layout(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    example_paths: list[str] | None = None


class Record(BaseModel):
    """One research record (RESEARCH_FORMAT: the evidence) plus its catalog or pending section."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    title: str
    status: Literal["verified", "replace", "new"]
    replaces: str | None = None
    replace_reason: str | None = None
    task_type: Literal["2d_cls", "2d_det", "2d_seg", "3d_seg"]
    modality: str
    department: str
    download: Download
    layout: Layout
    license: Licence
    evidence: list[str] = Field(default_factory=list)
    uncertain: str | None = ""
    notes: str | None = ""
    catalog: CatalogSection | None = None
    pending: PendingSection | None = None

    @model_validator(mode="after")
    def _sections(self) -> Record:
        if self.status == "replace":
            if self.catalog is not None or self.pending is not None:
                raise ValueError("a record with status replace has no catalog or pending section")
        elif (self.catalog is None) == (self.pending is None):
            raise ValueError("give exactly one of catalog (written) or pending (not written yet)")
        if self.catalog is not None:
            self._fixture_paths_are_examples()
        return self

    def _fixture_paths_are_examples(self) -> None:
        examples = [p.strip() for p in self.layout.example_paths or []]
        folders = [p for p in examples if p.endswith("/")]
        for f in self.catalog.fixture.files:  # type: ignore[union-attr]
            if f.path not in examples and not any(f.path.startswith(d) for d in folders):
                raise ValueError(
                    f"catalog.fixture: '{f.path}' is not one of layout.example_paths (nor under an example "
                    "folder ending in '/'): add the real path there, with its evidence"
                )

    @property
    def kept(self) -> bool:
        return self.status != "replace"

    @cached_property
    def url(self) -> str:
        """The entry's URL: the catalog section's, else the first URL written in download.url."""
        if self.catalog is not None and self.catalog.url:
            return self.catalog.url
        m = re.search(r"https?://[^\s,;)'\"]+", self.download.url or "")
        return m.group(0).rstrip(".") if m else ""

    @property
    def clinical_task(self) -> str:
        section = self.catalog or self.pending
        assert section is not None
        return section.clinical_task

    @property
    def reader(self) -> dict[str, Any]:
        section = self.catalog or self.pending
        assert section is not None
        return section.reader

    @property
    def blocker(self) -> str:
        return self.pending.blocker if self.pending is not None else ""

    def llm(self) -> tuple[bool, str]:
        return external_llm_rule(self.license.id, self.download.access)


class RecordError(ValueError):
    """A research record is invalid; the message names the file and the problem."""


def load_record(path: Path) -> Record:
    try:
        data = safe_yaml.load(path)
    except safe_yaml.YamlError as exc:
        raise RecordError(str(exc)) from None
    try:
        record = Record.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if not str(p).startswith('function-after')) or '(record)'}: "
            f"{e['msg']}"
            for e in exc.errors()
        )
        raise RecordError(f"{path}: {problems}") from None
    if record.name != path.stem:
        raise RecordError(f"{path}: name '{record.name}' must equal the file name '{path.stem}'")
    return record


def load_records(folder: Path = RECORDS_DIR) -> dict[str, Record]:
    """Every record in `folder`, by name (files starting with `_` and non-YAML files are not records)."""
    if not folder.is_dir():
        raise RecordError(f"{folder}: research records folder does not exist")
    return {p.stem: load_record(p) for p in sorted(folder.glob("*.yaml")) if not p.name.startswith("_")}
