"""`Sample`: one normalized sample (a row of `normalized/<dataset>`, `annotations`, `decontaminated`), typed.

Readers make them (`ReaderContext.row`), normalization writes them, generation reads them back
(`generation.pipeline.partition_rows`). The table is the contract (`schemas.NORMALIZED_SCHEMA`); this class
is its Python side, field for field and in the same order, so a reader cannot misspell a column and a
consumer cannot read one that is not there. `to_row` / `from_row` convert at the Parquet boundary.
Frozen: a sample is a fact about a stored image, not something a later stage edits.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the stored image (half-open)


def as_box(value: Sequence[int] | None) -> Box | None:
    return None if value is None else tuple(map(int, value))  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Sample:
    sample_id: str  # GMAI-VL's `{dim}#{task}#{modality}#{dataset}#{path with / -> #}` (+ `#{axis}{index}`)
    dataset: str
    source_path: str  # relative to the dataset's raw folder (pseudonymous for DICOM until its header is read)
    slice_axis: str | None  # "x" | "y" | "z", None for 2D
    slice_index: int | None  # None for 2D
    split: str
    image: str  # relative to the output root: images/{dim}/{task}/{modality}/{dataset}/...
    image_md5: str  # MD5 of the stored image file
    width: int
    height: int
    modality: str
    label: str
    department: str
    task_type: str
    clinical_task: str
    bbox: Box | None  # None for classification

    def to_row(self) -> dict[str, Any]:
        """The NORMALIZED_SCHEMA row (bbox as a list, as Arrow reads it back)."""
        row = {name: getattr(self, name) for name in COLUMNS}
        if self.bbox is not None:
            row["bbox"] = list(self.bbox)
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Sample:
        """A NORMALIZED_SCHEMA row (extra columns, such as `decontaminated`'s shard, are ignored)."""
        bbox = row["bbox"]  # positional, the box last: millions of rows go through here
        return cls(*_BEFORE_BOX(row), None if bbox is None else tuple(map(int, bbox)))

    def annotation(self) -> dict[str, Any]:
        """The columns a generated record copies from its sample (`schemas.GENERATED_SCHEMA`)."""
        out = {name: getattr(self, name) for name in ANNOTATION_COLUMNS}
        out["bbox"] = list(self.bbox) if self.bbox is not None else None
        return out


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Sample))
assert COLUMNS[-1] == "bbox"
_BEFORE_BOX = operator.itemgetter(*COLUMNS[:-1])
# What a training record keeps of its sample: the image and the annotation, not where the file came from.
ANNOTATION_COLUMNS: tuple[str, ...] = tuple(
    c for c in COLUMNS if c not in ("source_path", "slice_axis", "slice_index", "split")
)
