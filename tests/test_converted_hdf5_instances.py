"""HDF5 instance-id masks: CREMI's real files (`sample_A_20160501.hdf`: `volumes/raw` uint8 Z x H x W, the same
grid of uint64 neuron ids in `volumes/labels/neuron_ids`; constantinpape/torch-em:
torch_em/data/datasets/electron_microscopy/cremi.py), every non-zero id one neuron (`instances: true`)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from layout_fixtures import entry
from normalize_fixtures import reasons, run

from gmai_pipeline.layouts import LayoutReader

CREMI = """
reader:
  kind: layout
  images: "sample_{sample}_20160501.hdf"
  min_component_pixels: 4
  convert: {kind: hdf5, images: volumes/raw, labels: volumes/labels/neuron_ids, label_kind: mask, instances: true}
labels: {"1": neuron}
"""
BIG = np.uint64(2**63 + 12345)  # ids are arbitrary uint64 values, not small label codes


def _sample(path: Path, z: int = 3, hw: int = 24) -> None:
    raw = (np.indices((z, hw, hw)).sum(0) * 7 % 251).astype(np.uint8)
    ids = np.zeros((z, hw, hw), np.uint64)
    ids[:, 0:10, 0:10] = BIG  # two touching neurons: two boxes
    ids[:, 0:10, 10:20] = 7
    ids[1, 15:22, 3:9] = 40000  # one neuron on slice 1 only
    ids[2] = 0  # a slice with no neuron
    with h5py.File(path, "w") as f:
        f.create_dataset("volumes/raw", data=raw, chunks=(1, hw, hw))
        f.create_dataset("volumes/labels/neuron_ids", data=ids, chunks=(1, hw, hw), compression="gzip")
        f.create_dataset("volumes/labels/clefts", data=np.zeros_like(ids))


def test_cremi_every_nonzero_uint64_id_is_one_neuron_box(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "cremi"
    raw.mkdir(parents=True)
    _sample(raw / "sample_A_20160501.hdf")
    source = entry(tmp_path, "cremi", "2d_seg", CREMI)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert reasons(qrows) == {"empty_mask": 1}
    assert next(q["source_path"] for q in qrows) == "sample_A_20160501.hdf/2"
    got = sorted((r["source_path"], tuple(r["bbox"])) for r in rows)
    assert got == [
        ("sample_A_20160501.hdf/0", (0, 0, 10, 10)),
        ("sample_A_20160501.hdf/0", (10, 0, 20, 10)),
        ("sample_A_20160501.hdf/1", (0, 0, 10, 10)),
        ("sample_A_20160501.hdf/1", (3, 15, 9, 22)),
        ("sample_A_20160501.hdf/1", (10, 0, 20, 10)),
    ]
    assert {r["label"] for r in rows} == {"neuron"}


def test_instances_needs_label_maps() -> None:
    with pytest.raises(ValueError, match="label_kind: mask"):
        LayoutReader.model_validate(
            {"kind": "layout", "images": "x.h5", "convert": {"kind": "hdf5", "instances": True}}
        )
