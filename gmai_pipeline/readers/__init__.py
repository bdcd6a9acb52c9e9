"""Readers, one module per catalog `reader.kind`; each yields one event per input (see `base`).

What counts as an input, per kind (the left side of inputs = kept + quarantined; every manifest
row refused by the source scan is one more input, quarantined `path_refused`, and every manifest
file gone since the scan one quarantined `missing_file`, before any reader; hidden files and
aliases are listed, not inputs). Readers read files only through `ReaderContext.read` / `open` /
`text` / `volume` (verified against the manifest's MD5, an archive member against the MD5 recorded
when it was unpacked) and run each input's work at the sample boundary (`base.at_boundary`), so no
exception from a decoder escapes a reader:

| kind | one input is |
|---|---|
| image_folder | an image file under `root` |
| csv_labels | a CSV data row; an image under `image_dir` no row names |
| coco | an `annotations` entry; an `images` entry without annotations; an unnamed image file |
| voc | an `<object>`; an XML without objects or that cannot be parsed; an image no XML names |
| yolo | a label line; an image without (or with an empty) label file; a label file without image |
| mask_pairs | an image file (kept: one row per kept mask component) |
| msd | an image file of a case (kept: rows for every kept component of every kept slice); a volume no case uses |
| dicom | a label-CSV row; a DICOM file no row names |
| layout | see `readers/layout.py`: an image file, a table row's label or box, an image file of a case |
| layout, `convert: dicom_series` | a series (one SeriesInstanceUID in one folder, kept or quarantined whole); a DICOM file that joins no series; a folder a split leaves out; a DICOM SEG no series uses |
| layout, `convert: polygons` | an image file with its annotation file(s); a shape that encloses no area; (COCO) a JSON image entry whose file is missing |
| layout, `convert: rle` | an image file with all its table rows (several rows merged into one mask); a table key whose image is not found |
| layout, `convert: hdf5` | an index of the image dataset (`<file>.h5/<index>`); a whole file that cannot be used, or that a split leaves out |
| layout, `convert: wsi` | 2d_seg: a slide (every tile's boxes); 2d_cls: a tile; a slide that gives no tile or cannot be read; a shape with no area |

A missing or unparsable annotation file (CSV, COCO JSON, dataset.json, a table, a split list) is one
input too, and so is an archive that `reader.unpack` names but cannot be unpacked. Before any reader
runs, `prepare` unpacks the archives asked for and finds the layout root (`root` below any single
wrapper folder). Every 2D reader reads DICOM images too (`.dcm`, `.dicom`), under the `dicom` reader's
privacy rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from gmai_pipeline.readers import (
    coco,
    csv_labels,
    dicom,
    dicom_series,
    hdf5,
    image_folder,
    imgannot,
    layout,
    mask_pairs,
    msd,
    npy,
    polygons,
    rle,
    voc,
    wsi,
    yolo,
)
from gmai_pipeline.readers.base import Event, ReaderContext

READERS: dict[str, Callable[[ReaderContext, object], Iterator[Event]]] = {
    "image_folder": image_folder.read,
    "csv_labels": csv_labels.read,
    "coco": coco.read,
    "voc": voc.read,
    "yolo": yolo.read,
    "mask_pairs": mask_pairs.read,
    "msd": msd.read,
    "dicom": dicom.read,
    "layout": layout.read,
}


# `reader.convert` kinds of the layout reader (`gmai_pipeline.layouts.Convert`).
layout.CONVERTERS.update(
    {
        "dicom_series": dicom_series.read,
        "polygons": polygons.read,
        "rle": rle.read,
        "hdf5": hdf5.read,
        "wsi": wsi.read,
        "npy": npy.read,
        "imgannot": imgannot.read,
    }
)


def describe(spec) -> str:
    """What a reader expects to find, in one line (for the message when it finds nothing)."""
    if spec.kind == "layout":
        return f"layout reader: {layout.describe(spec)}"
    doc = (type(spec).__doc__ or "").strip().splitlines()[0]
    paths = {k: v for k, v in spec.model_dump(exclude={"kind", "unpack"}).items() if isinstance(v, str) and v}
    where = ", ".join(f"{k} '{v}'" for k, v in paths.items())
    return f"{spec.kind} reader ({doc.rstrip('.')}){' with ' + where if where else ''}"
