"""HDF5 records with boxes from a table: fastMRI+ knee at its real paths (the NYU volume `file1000001.h5` with
`reconstruction_rss` slices x H x W; microsoft/fastmri-plus:Annotations/knee.csv rows `file, slice, study_level,
x, y, width, height, label`, study-level rows without a box; boxes drawn on up/down-flipped slices:
microsoft/fastmri-plus:README.md and ExampleScripts/example.ipynb)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from layout_fixtures import entry
from normalize_fixtures import reasons, run
from PIL import Image

from gmai_pipeline.layouts import LayoutReader

FASTMRI = """
reader:
  kind: layout
  images: "{file}.h5"
  exclude: ["Annotations/*"]
  convert:
    kind: hdf5
    images: reconstruction_rss
    labels: null
    flip: ud
    boxes:
      file: Annotations/knee.csv
      key: file
      index: slice
      columns: [x, y, width, height]
      format: xywh
      label: label
      skip: {study_level: "Yes"}
labels: {"Meniscus Tear": meniscus tear, "Joint Effusion": joint effusion, "artifact": artifact}
"""
CSV = """file,slice,study_level,x,y,width,height,label
file1000001,1,No,4,2,6,3,Meniscus Tear
file1000001,1,No,10,12,5,4,"Joint Effusion "
file1000001,2,No,30,2,6,3,Meniscus Tear
file1000001,2,No,1,1,2,2,Unknown Finding
file1000001,0,Yes,,,,,artifact
file1009999,3,No,4,2,6,3,Meniscus Tear
"""


def _volume(path: Path, slices: int = 3, h: int = 20, w: int = 24) -> np.ndarray:
    vol = np.zeros((slices, h, w), np.float32)
    vol[:, :10] = 1e-5  # the top half dim, the bottom half bright: a flip is visible in the stored PNG
    vol[:, 10:] = 9e-5
    with h5py.File(path, "w") as f:
        f.create_dataset("reconstruction_rss", data=vol, chunks=(1, h, w))
        f.create_dataset("kspace", data=np.zeros((slices, 2, 4), np.complex64))
    return vol


def test_fastmri_plus_boxes_join_file_and_slice_on_flipped_slices(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "fastmri_plus_knee"
    (raw / "Annotations").mkdir(parents=True)
    (raw / "Annotations" / "knee.csv").write_text(CSV)
    _volume(raw / "file1000001.h5")
    source = entry(tmp_path, "fastmri_plus_knee", "2d_det", FASTMRI)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    got = sorted((r["source_path"], r["label"], tuple(r["bbox"])) for r in rows)
    assert got == [
        ("file1000001.h5/1", "joint effusion", (10, 12, 15, 16)),  # 'Joint Effusion ' (trailing space)
        ("file1000001.h5/1", "meniscus tear", (4, 2, 10, 5)),
    ]
    # slice 0: only a study-level row (skipped) -> no finding; slice 2: one box beyond the 24-px width,
    # one label outside the catalog; the row of a file not in the download is counted, not an input
    assert reasons(qrows) == {"no_finding": 1, "box_outside_image": 1, "unknown_label": 1}
    assert report.inputs == report.kept + report.quarantined == 5
    png = np.asarray(Image.open(tmp_path / "out" / rows[0]["image"]))
    assert png[0].mean() > png[-1].mean()  # flipped up/down: the bright half is on top


def test_boxes_are_2d_det_only_and_replace_the_label_dataset() -> None:
    base = {"kind": "layout", "images": "{file}.h5"}
    boxes = {
        "file": "a.csv",
        "key": "f",
        "index": "s",
        "columns": ["x", "y", "w", "h"],
        "format": "xywh",
        "label": "l",
    }
    with pytest.raises(ValueError, match="convert.labels: null"):
        LayoutReader.model_validate({**base, "convert": {"kind": "hdf5", "boxes": boxes}})
    reader = LayoutReader.model_validate(
        {**base, "convert": {"kind": "hdf5", "labels": None, "boxes": boxes}}
    )
    reader.check_task("2d_det")
    with pytest.raises(ValueError, match="only it does"):
        reader.check_task("2d_cls")
