"""HDF5 arrays through the catalog YAML and the normal asset path: PCam as it ships
(`camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`; basveeling/pcam:README.md), a file that
cannot be used at all, and a file larger than the memory the test allows, streamed in a child process."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from converter_fixtures import pcam
from layout_fixtures import entry
from normalize_fixtures import reasons, run

ROOT = Path(__file__).resolve().parent.parent
PATHOLOGY = {"modality": "Pathology", "department": "Laboratory Medicine and Pathology"}
PCAM = """
reader:
  kind: layout
  images: "camelyonpatch_level_2_split_{split}_x.h5"
  split: "{split}"
  convert: {kind: hdf5, images: x, labels: y, labels_file: "camelyonpatch_level_2_split_{split}_y.h5",
            block_bytes: 100000}
labels: {"0": normal, "1": metastatic tissue}
splits: [train, val]
"""


def test_pcam_every_index_a_row_by_name_split_from_the_file_and_bad_labels_apart(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "pcam"
    pcam(raw, 40, split="train", chunk=8)
    pcam(raw, 12, split="valid", chunk=8)
    pcam(raw, 5, split="test")  # test split: not a training split, left out whole
    with h5py.File(raw / "camelyonpatch_level_2_split_train_y.h5", "r+") as f:  # two labels that cannot be
        y = f["y"][:]
        y[3], y[17] = 7, 1  # 7: not in the labels map
        f["y"][:] = y
    source = entry(tmp_path, "pcam", "2d_cls", PCAM, **PATHOLOGY)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (40 + 12 + 1, 40 + 12 - 1)
    assert reasons(qrows) == {"unknown_label": 1, "split_excluded": 1}
    assert next(q for q in qrows if q["reason"] == "unknown_label")["source_path"] == (
        "camelyonpatch_level_2_split_train_x.h5/03"
    )
    by_id = {r["source_path"]: r for r in rows}
    r = by_id["camelyonpatch_level_2_split_train_x.h5/17"]
    assert (
        r["label"] == "metastatic tissue" and r["split"] == "train" and (r["width"], r["height"]) == (96, 96)
    )
    assert r["sample_id"] == "2d#cls#pathology#pcam#camelyonpatch_level_2_split_train_x.h5#17"
    assert by_id["camelyonpatch_level_2_split_valid_x.h5/04"]["split"] == "val"
    assert by_id["camelyonpatch_level_2_split_train_x.h5/10"]["label"] == "normal"
    from PIL import Image

    with Image.open(tmp_path / "out" / r["image"]) as im:  # the patch's pixels, stored as they are
        assert np.asarray(im)[0, 0, 0] == 17
    assert report.images == 52 + 1 and report.counters["hdf5_records_read"] == 52


def test_files_that_cannot_be_used_are_one_input_each(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "pcam"
    xp, yp = pcam(raw, 10, split="train")
    short = raw / "camelyonpatch_level_2_split_valid_y.h5"
    pcam(raw, 6, split="valid")
    with h5py.File(short, "w") as f:  # 5 labels for 6 patches
        f.create_dataset("y", data=np.zeros((5, 1, 1, 1), np.uint8))
    packed = raw / "camelyonpatch_level_2_split_train_x.h5"
    packed.write_bytes(gzip.compress(xp.read_bytes()))  # as downloaded: .h5.gz under the .h5 name
    source = entry(tmp_path, "pcam", "2d_cls", PCAM, **PATHOLOGY)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept, rows) == (2, 0, [])
    got = {q["source_path"]: (q["reason"], q["detail"]) for q in qrows}
    assert got["camelyonpatch_level_2_split_train_x.h5"][0] == "packed_archive"
    assert "gunzip" in got["camelyonpatch_level_2_split_train_x.h5"][1]
    assert got["camelyonpatch_level_2_split_valid_x.h5"][0] == "shape_mismatch"


CHILD = r"""
import json, sys
from pathlib import Path
import h5py  # loaded before the baseline: the library, not the data
from gmai_pipeline.catalog import load_source
from gmai_pipeline.manifest import scan
from gmai_pipeline.normalize import normalize_source
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
source = load_source(Path(sys.argv[1]))
raw, out, warm = Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
# A few patches first: the modules normalization imports on first use (pandas, Pillow's plugins) are the
# libraries, not the data, and are in the baseline as h5py is.
normalize_source(source, warm, scan(warm), out.with_name("warm_out"), workers=1)
manifest = scan(raw)
base = hwm()
report = normalize_source(source, raw, manifest, out, workers=1)
print(json.dumps({"kept": report.kept, "inputs": report.inputs, "base": base, "peak": hwm()}))
"""


@pytest.mark.slow
def test_a_file_larger_than_the_memory_budget_is_normalized_block_by_block(tmp_path: Path) -> None:
    n = 4000  # 4000 x 96 x 96 x 3 = 110 MB of pixels
    raw = tmp_path / "raw" / "pcam"
    xp, _ = pcam(raw, n, split="train", chunk=64)
    warm = tmp_path / "warm" / "pcam"
    pcam(warm, 8, split="train", chunk=8)
    budget = 48 << 20  # what normalizing may add to the process: well under the file
    assert xp.stat().st_size > 2 * budget
    source = entry(tmp_path, "pcam", "2d_cls", PCAM.replace("100000", str(4 << 20)), **PATHOLOGY)
    cat = tmp_path / "catalog" / "pcam.yaml"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(cat), str(raw), str(tmp_path / "out"), str(warm)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert source.name == "pcam" and got["kept"] == got["inputs"] == n
    assert got["peak"] - got["base"] < budget, got
