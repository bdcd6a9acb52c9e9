"""Converters: the formats a layout declaration cannot describe, as plain-Python domain modules.

Each module takes one input at a time and yields results or raises `gmai_pipeline.imaging.ImageError`
with a quarantine reason and a detail that names the file (never a DICOM header value), so a reader
built on it keeps inputs = kept + quarantined. Each has a small options model (pydantic, closed,
frozen), embedded in the catalog schema as `reader.convert` of a `kind: layout` entry
(`gmai_pipeline.layouts.Convert`); the module docstrings show a real dataset's declaration. The
readers that use them (`gmai_pipeline/readers/{dicom_series,polygons,rle,hdf5,wsi}.py`) find the files
with the layout's templates and hand them over as verified bytes or descriptors, never bare paths.

| kind | module | one input is |
|---|---|---|
| dicom_series | `dicom_series` | a series (files of one SeriesInstanceUID in a case folder); a file that joins no series |
| polygons | `polygons` | an image with its annotation file (XML, GeoJSON, COCO); a shape that is not an area is reported apart |
| rle | `rle` | an image id of the RLE table (all its rows together) |
| hdf5 | `hdf5` | one index of the image dataset (with the same index of the label dataset) |
| wsi | `wsi` | a slide (with its annotations); kept, it gives one 2D tile row per tile |
| imgannot | `imgannot` | one marking of an imgannotool XML file (DIARETDB1), kept as a box |
| npy | `npy` | one index of a stacked `.npy` image array (with the same index of its mask array) |

Heavy or optional libraries (pydicom, nibabel, h5py, OpenSlide, pycocotools, scikit-image) are
imported where used, so importing the package (and its option models) stays cheap.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from gmai_pipeline.converters.dicom_series import DicomSeriesOptions
from gmai_pipeline.converters.hdf5 import Hdf5Options
from gmai_pipeline.converters.imgannot import ImgannotOptions
from gmai_pipeline.converters.npy import NpyOptions
from gmai_pipeline.converters.polygons import PolygonOptions
from gmai_pipeline.converters.rle import RleOptions
from gmai_pipeline.converters.wsi import WsiOptions

# What the catalog schema embeds (`convert: {kind: ..., ...}`): one closed model per kind.
ConvertOptions = Annotated[
    DicomSeriesOptions
    | PolygonOptions
    | RleOptions
    | Hdf5Options
    | WsiOptions
    | NpyOptions
    | ImgannotOptions,
    Field(discriminator="kind"),
]
KINDS: dict[str, type] = {
    "dicom_series": DicomSeriesOptions,
    "polygons": PolygonOptions,
    "rle": RleOptions,
    "hdf5": Hdf5Options,
    "wsi": WsiOptions,
    "npy": NpyOptions,
    "imgannot": ImgannotOptions,
}
