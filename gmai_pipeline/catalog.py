"""The source-dataset catalog: one YAML file per dataset, validated against a pydantic schema.

The catalog is data (`assets/sources/*.yaml`, `assets/demo/*.yaml`); this module and
`gmai_pipeline.layouts` (the layout declarations of `kind: layout`) are the only places that know its shape. Invalid files fail loudly with the file, the field and the problem,
because a silently skipped dataset would change the training mix without anyone noticing.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gmai_pipeline import safe_yaml
from gmai_pipeline.layouts import (
    Conditions,
    Expect,
    LayoutReader,
    MaskEncoding,
    ReaderBase,
    SplitSpec,
    ValueSource,
    VolumeOptions,
)
from gmai_pipeline.settings import VOCABULARY_FILE, catalog_dirs

TaskType = Literal["2d_cls", "2d_det", "2d_seg", "3d_seg"]
SLUG = re.compile(r"^[a-z0-9_]+$")
MAX_PARTITIONS = 1000  # `partitions:` of one entry: part keys are p000..p999
READERS_FOR_TASK: dict[str, tuple[str, ...]] = {
    "2d_cls": ("image_folder", "csv_labels", "dicom", "layout"),
    "2d_det": ("coco", "voc", "yolo", "layout"),
    "2d_seg": ("mask_pairs", "layout"),
    "3d_seg": ("msd", "layout"),
}
# Pillow decodes all of these; `.pgm` (Netpbm grey maps, 8 or 16 bit: mini-MIAS) is stored as PNG.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm")
DICOM_EXTENSIONS = (".dcm", ".dicom")
# 2D MetaImage (CRASS's `.mhd` + `.raw` radiographs), read with SimpleITK (`readers/metaimage.py`).
METAIMAGE_EXTENSIONS = (".mhd", ".mha")
# Every 2D reader reads DICOM too (pixels only, under the `dicom` reader's privacy rules), and MetaImage.
IMAGE_EXTENSIONS_2D = IMAGE_EXTENSIONS + DICOM_EXTENSIONS + METAIMAGE_EXTENSIONS


class CatalogError(ValueError):
    """A catalog file is invalid; the message names the file, the field and the problem."""


class _Options(ReaderBase):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageFolderReader(_Options):
    """`<class>/<image>` or `<split>/<class>/<image>` under `root`: the class is the image's own folder.

    Images deeper than that (per-patient folders) or with no class folder are quarantined
    `missing_label`: their class is not in the path. Declare it with `kind: layout` (a template
    field or a table) instead.
    """

    kind: Literal["image_folder"]
    split_folders: bool | None = None  # None: detect train/val/test folders
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS_2D


class CsvLabelsReader(_Options):
    """A CSV with an image column and a label column (`labels.csv` with `image,label`)."""

    kind: Literal["csv_labels"]
    csv: str = "labels.csv"
    image_column: str = "image"
    label_column: str = "label"
    split_column: str | None = None
    image_dir: str = ""

    def anchors(self) -> tuple[str, ...]:
        return (self.csv,)


def _lists_only(spec: SplitSpec | None) -> SplitSpec | None:
    """The detection kinds take the split from list files (or one fixed value): they have no fields or columns."""
    if spec is not None and (spec.field is not None or spec.column is not None or spec.rules):
        raise ValueError(
            "split: this kind takes split lists (split.lists, with default / list_column) or a fixed value"
        )
    return spec


class CocoSplit(BaseModel):
    """Each image's split from a table beside the JSON (MIDOG++'s `datasets_xvalidation.csv`:
    `Slide;Dataset`, Slide = the image id): the row whose `key` column equals the image's `match`
    (its `id`, `file_name` or file stem; numbers compare as numbers, so `1` = `001`) gives the split in
    `column`, through `map` and the usual aliases. An image no row names takes `default`, or is
    quarantined `split_unknown`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    key: str | int
    column: str | int
    match: Literal["id", "file_name", "stem"] = "id"
    delimiter: str | None = None  # default: sniffed, as for any table
    map: dict[str, str] = Field(default_factory=dict)
    default: str | None = None

    @field_validator("map", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return {str(k): str(x) for k, x in v.items()} if isinstance(v, dict) else v


class CocoReader(_Options):
    """COCO detection JSON (`annotations.json`) with images relative to `image_dir`.

    `image_dir` may list several folders, searched in order (FracAtlas: `images/Fractured`,
    `images/Non_fractured`); `split.lists` gives the split per image (`layouts.SplitSpec`).
    `bbox_format`: COCO's own `xywh` (top-left + size), or `xyxy` for files that keep the COCO structure
    but store corner pairs (MIDOG++'s `[x0, y0, x1, y1]`). `split_table`: each image's split from a table
    (`CocoSplit`); without `split` or `split_table` the split comes from the path, as everywhere.
    """

    kind: Literal["coco"]
    annotations: str = "annotations.json"
    image_dir: str | tuple[str, ...] = ""
    bbox_format: Literal["xywh", "xyxy"] = "xywh"
    split: SplitSpec | None = None
    split_table: CocoSplit | None = None

    _split = field_validator("split")(_lists_only)

    @model_validator(mode="after")
    def _one_split(self) -> CocoReader:
        if self.split is not None and self.split_table is not None:
            raise ValueError("give split (list files) or split_table (a table of image ids), not both")
        return self

    @property
    def image_dirs(self) -> tuple[str, ...]:
        return (self.image_dir,) if isinstance(self.image_dir, str) else self.image_dir

    def anchors(self) -> tuple[str, ...]:
        return (self.annotations,)


class VocReader(_Options):
    """Pascal VOC: one XML per image; `split.lists` reads `ImageSets/Main/{train,val,test}.txt`."""

    kind: Literal["voc"]
    annotations_dir: str = "Annotations"
    image_dir: str = "JPEGImages"
    split: SplitSpec | None = None

    _split = field_validator("split")(_lists_only)

    def anchors(self) -> tuple[str, ...]:
        return (self.annotations_dir + "/",)


class YoloReader(_Options):
    """YOLO txt labels (class cx cy w h, normalised) beside `images/`, class names in `classes.txt`."""

    kind: Literal["yolo"]
    images_dir: str = "images"
    labels_dir: str = "labels"
    classes_file: str = "classes.txt"

    def anchors(self) -> tuple[str, ...]:
        return (self.images_dir + "/",)


class MaskPairsReader(_Options, MaskEncoding):
    """2D image + label-mask pairs: `images/x.png` with `masks/x<mask_suffix>.png`; `background` /
    `threshold` say how mask values are encoded (`layouts.MaskEncoding`)."""

    kind: Literal["mask_pairs"]
    images_dir: str = "images"
    masks_dir: str = "masks"
    mask_suffix: str = ""
    mask_extension: str = ".png"
    min_mask_fraction: float = Field(0.00153, ge=0, lt=1)
    min_component_pixels: int = Field(16, ge=1)

    def anchors(self) -> tuple[str, ...]:
        return (self.images_dir + "/",)


class MsdReader(_Options, VolumeOptions):
    """Medical Segmentation Decathlon / nnU-Net: `dataset.json`, `imagesTr/`, `labelsTr/` (NIfTI, MHA, NRRD).

    `channel_suffix`: whether image files carry nnU-Net's `_0000` channel suffix. None (default): as the
    dataset says: a nnU-Net v2 `dataset.json` (`file_ending` / `channel_names`) means yes, a `training`
    list naming `x.nii.gz` where only `x_0000.nii.gz` exists means yes, anything else no.
    """

    kind: Literal["msd"]
    dataset_json: str = "dataset.json"
    images_dir: str = "imagesTr"
    labels_dir: str = "labelsTr"
    channel_suffix: bool | None = None
    channels: tuple[str | int, ...] | None = None  # names (dataset.json) or indices; None: every channel
    modality: ValueSource | None = None  # per case, e.g. AMOS: rules on {case}
    filters: Conditions = Field(default_factory=dict)  # on case, file, channel

    def anchors(self) -> tuple[str, ...]:
        return (self.dataset_json, self.images_dir + "/")


class DicomJsonLabels(_Options):
    """Labels from an MD.ai annotation export, joined on a UID of each file's own header, in memory only
    (`readers.dicom_json`). `file`: the JSON's path, or a glob naming exactly one file."""

    file: str
    format: Literal["mdai"]
    key: Literal["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"] = "StudyInstanceUID"


class DicomReader(_Options):
    """DICOM files plus `labels.csv` (`file,label`), or `labels_json` (an MD.ai export keyed by a header UID)."""

    kind: Literal["dicom"]
    labels_csv: str = "labels.csv"
    file_column: str = "file"
    label_column: str = "label"
    ct_window: tuple[float, float] | None = None
    labels_json: DicomJsonLabels | None = None

    def anchors(self) -> tuple[str, ...]:
        if self.labels_json is not None:  # a glob anchors nothing: the declared root is the layout root
            return () if any(c in self.labels_json.file for c in "*?[") else (self.labels_json.file,)
        return (self.labels_csv,)


ReaderSpec = Annotated[
    ImageFolderReader
    | CsvLabelsReader
    | CocoReader
    | VocReader
    | YoloReader
    | MaskPairsReader
    | MsdReader
    | DicomReader
    | LayoutReader,
    Field(discriminator="kind"),
]


class Provenance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str = Field(min_length=1, description="where this entry's metadata came from")
    notes: str = ""


class SourceDataset(BaseModel):
    """One public dataset: what it is, where it comes from, how to read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    title: str = Field(min_length=1)
    url: str = ""
    license: str = Field(min_length=1, description="'unknown' when not known; never invented")
    modality: str
    department: str
    task_type: TaskType
    clinical_task: str
    reader: ReaderSpec
    labels: dict[str, str] = Field(default_factory=dict)
    splits: tuple[str, ...] = ("train",)
    external_llm_allowed: bool = False
    burned_in_text_allowed: bool = False
    demo: bool = False
    expect: Expect | None = None
    # Cases split over this many normalization steps (README "Partitioned normalization"); 1: one step.
    partitions: int = Field(1, ge=1, le=MAX_PARTITIONS)
    provenance: Provenance

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not SLUG.match(v):
            raise ValueError(f"'{v}' is not a slug of [a-z0-9_]+")
        return v

    @field_validator("labels", mode="before")
    @classmethod
    def _label_keys_as_text(cls, v: Any) -> Any:
        return {str(k): str(val) for k, val in v.items()} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _against_vocabulary(self) -> SourceDataset:
        vocab = load_vocabulary()
        for field, allowed in (
            ("modality", vocab["modalities"]),
            ("department", vocab["departments"]),
            ("clinical_task", vocab["clinical_tasks"]),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"{field} '{getattr(self, field)}' is not in assets/vocabulary.yaml ({', '.join(allowed)})"
                )
        if self.reader.kind not in READERS_FOR_TASK[self.task_type]:
            raise ValueError(
                f"reader kind '{self.reader.kind}' does not fit task_type '{self.task_type}' "
                f"(use one of {', '.join(READERS_FOR_TASK[self.task_type])})"
            )
        if isinstance(self.reader, LayoutReader):
            self.reader.check_task(self.task_type)
        if self.partitions > 1 and not partitionable(self):
            raise ValueError(
                f"partitions: {self.partitions} needs a reader that reads cases one by one (3D: `msd`, "
                f"`layout`; 2D: {', '.join(f'`{k}`' for k in PARTITIONABLE_2D)}, `layout` without `masks`; "
                f"never with `convert`); the {self.reader.kind} reader of this {self.task_type} entry reads "
                "the dataset in one step: remove `partitions`"
            )
        ignore = getattr(self.reader, "ignore_values", ())
        if ignore == "unlisted" and not any(k.isdigit() for k in self.labels):
            raise ValueError(
                "reader.ignore_values: unlisted keeps only the mask values labels names: give labels"
            )
        ignored = {str(v) for v in ignore if ignore != "unlisted"} & set(self.labels)
        if ignored:
            raise ValueError(
                f"reader.ignore_values {sorted(ignored)} are also in labels: a value is a structure or ignored"
            )
        spec = getattr(self.reader, "modality", None)
        if spec is not None:
            named = [spec.value, spec.default, *spec.map.values(), *(r.value for r in spec.rules)]
            bad = sorted({m for m in named if m is not None and m not in vocab["modalities"]})
            if bad:
                raise ValueError(
                    f"reader.modality names {bad}, not in assets/vocabulary.yaml ({', '.join(vocab['modalities'])})"
                )
        return self

    @property
    def dim(self) -> str:
        return dim_of(self.task_type)

    @property
    def task(self) -> str:
        return task_of(self.task_type)


PARTITIONABLE_2D = ("image_folder", "csv_labels", "coco", "voc", "yolo")


def partitionable(source: SourceDataset) -> bool:
    """Whether the reader can split the dataset into parts of cases read independently: a 3D case (its
    image and label volumes), or a 2D image with its annotations; nothing decoded in one changes another.
    Not the mask readers (a mask can serve several images) nor the converters (series, slides, arrays)."""
    kind, convert = source.reader.kind, getattr(source.reader, "convert", None)
    if source.dim == "3d":
        return kind == "msd" or (kind == "layout" and convert is None)
    if kind == "layout":
        return convert is None and getattr(source.reader, "masks", None) is None
    return kind in PARTITIONABLE_2D


def dim_of(task_type: str) -> str:
    """`2d` or `3d`: the first part of image paths and sample ids (GMAI-VL-5.5M's convention)."""
    return "3d" if task_type == "3d_seg" else "2d"


def task_of(task_type: str) -> str:
    """`cls`, `det` or `seg`: the second part of image paths and sample ids."""
    return task_type.split("_", 1)[1]


@lru_cache(maxsize=1)
def load_vocabulary() -> dict[str, Any]:
    return safe_yaml.load(VOCABULARY_FILE)


def _format_error(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after")) or "(file)"
        lines.append(f"{path}: field '{loc}': {e['msg']}")
    return "\n".join(lines)


def load_source(path: Path) -> SourceDataset:
    try:
        data = safe_yaml.load(path)  # strict: duplicate keys, YAML 1.1 booleans, alias bombs, non-UTF-8
    except safe_yaml.YamlError as exc:
        raise CatalogError(str(exc)) from None
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: field '(file)': expected a mapping of fields, got {type(data).__name__}")
    try:
        source = SourceDataset.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(_format_error(path, exc)) from None
    if source.name != path.stem:
        raise CatalogError(f"{path}: field 'name': '{source.name}' must equal the file name '{path.stem}'")
    return source


def load_catalog(dirs: tuple[Path, ...] | None = None) -> list[SourceDataset]:
    """All sources in `dirs` (default: `GMAI_CATALOG_DIR`, else the 219 sources and the demo), sorted by name."""
    dirs = dirs if dirs is not None else catalog_dirs()
    seen: dict[str, Path] = {}
    sources = []
    for d in dirs:
        if not d.is_dir():
            raise CatalogError(f"{d}: catalog folder does not exist")
        for path in sorted(d.glob("*.yaml")):
            source = load_source(path)
            if source.name in seen:
                raise CatalogError(
                    f"{path}: field 'name': '{source.name}' is already defined in {seen[source.name]}"
                )
            seen[source.name] = path
            sources.append(source)
    return sorted(sources, key=lambda s: s.name)
