"""HDF5 arrays as PCam ships them (`camelyonpatch_level_2_split_{split}_{x,y}.h5`, `x` (N, 96, 96, 3)
uint8, `y` (N, 1, 1, 1) in its own file; basveeling/pcam:README.md), and a file larger than the memory
budget the test gives the reader, iterated in a child process whose peak RSS is measured."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from gmai_pipeline.converters.hdf5 import Hdf5Options, Hdf5Record, inspect, iter_records, record_name
from gmai_pipeline.imaging import ImageError

ROOT = Path(__file__).resolve().parent.parent


def write_pcam(folder: Path, n: int, split: str = "valid", chunk: int = 32) -> tuple[Path, Path]:
    """Patches whose first pixel encodes their index, written block by block (the parent stays small)."""
    folder.mkdir(parents=True, exist_ok=True)
    xp = folder / f"camelyonpatch_level_2_split_{split}_x.h5"
    yp = folder / f"camelyonpatch_level_2_split_{split}_y.h5"
    with h5py.File(xp, "w") as f:
        x = f.create_dataset("x", (n, 96, 96, 3), dtype=np.uint8, chunks=(min(chunk, n), 96, 96, 3))
        for b in range(0, n, 512):
            m = min(n, b + 512) - b
            block = np.broadcast_to(
                np.arange(b, b + m, dtype=np.uint32)[:, None, None, None] % 251, (m, 96, 96, 3)
            )
            x[b : b + m] = block.astype(np.uint8)
    with h5py.File(yp, "w") as f:
        f.create_dataset("y", data=(np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1))
    return xp, yp


def test_pcam_layout_records_in_order_with_labels(tmp_path: Path) -> None:
    xp, yp = write_pcam(tmp_path, 100)
    opts = Hdf5Options(block_bytes=20 * 96 * 96 * 3)  # 20 rows asked for: one whole 32-row chunk
    info = inspect(xp, xp.name, opts, yp, yp.name)
    assert (info.count, info.image_shape, info.block_rows) == (100, (96, 96, 3), 32)
    recs = list(iter_records(xp, xp.name, opts, yp, yp.name))
    assert [r.index for r in recs] == list(range(100))
    assert all(isinstance(r, Hdf5Record) and r.image.shape == (96, 96, 3) for r in recs)
    assert [int(r.image[0, 0, 0]) for r in recs] == [i % 251 for i in range(100)]
    assert [r.label for r in recs] == [i % 2 for i in range(100)]
    assert [r.index for r in iter_records(xp, xp.name, opts, yp, yp.name, start=45, stop=50)] == [
        45,
        46,
        47,
        48,
        49,
    ]
    assert record_name("pcam/camelyonpatch_level_2_split_valid_x.h5", 7, 32768) == (
        "pcam/camelyonpatch_level_2_split_valid_x.h5/00007"
    )


def test_file_level_problems_name_file_and_dataset(tmp_path: Path) -> None:
    xp, yp = write_pcam(tmp_path, 10)
    with pytest.raises(ImageError) as e:
        inspect(xp, xp.name, Hdf5Options(images="images"), yp, yp.name)
    assert (
        e.value.reason == "missing_dataset" and "no dataset 'images' (datasets present: x)" in e.value.detail
    )
    short = tmp_path / "short_y.h5"
    with h5py.File(short, "w") as f:
        f.create_dataset("y", data=np.zeros((9, 1, 1, 1), np.uint8))
    with pytest.raises(ImageError) as e:
        inspect(xp, xp.name, Hdf5Options(), short, short.name)
    assert e.value.reason == "shape_mismatch"
    gz = tmp_path / "camelyonpatch_level_2_split_valid_x.h5.gz"
    gz.write_bytes(gzip.compress(xp.read_bytes()[:4096]))
    with pytest.raises(ImageError) as e:
        inspect(gz, gz.name, Hdf5Options(labels=None))
    assert e.value.reason == "packed_archive" and "gunzip" in e.value.detail
    cut = tmp_path / "cut.h5"
    cut.write_bytes(xp.read_bytes()[:2000])
    with pytest.raises(ImageError) as e:
        inspect(cut, cut.name, Hdf5Options(labels=None))
    assert e.value.reason in ("truncated", "unreadable") and e.value.detail.startswith("cut.h5: ")
    bad = tmp_path / "bad_y.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset(
            "y", data=np.array([0, 1, -1, 1, 0, 0.5, 1, 0, 1, 1], np.float32).reshape(10, 1, 1, 1)
        )
    out = list(iter_records(xp, xp.name, Hdf5Options(), bad, bad.name))
    assert [(i, e.reason) for i, e in (r for r in out if isinstance(r, tuple))] == [
        (2, "invalid_label"),
        (5, "invalid_label"),
    ]
    assert len(out) == 10  # every index accounted for


CHILD = r"""
import json, sys, types, zlib
from pathlib import Path
pkg = types.ModuleType("gmai_pipeline")  # the domain modules only, not the Dagster definitions
pkg.__path__ = [sys.argv[1] + "/gmai_pipeline"]
sys.modules["gmai_pipeline"] = pkg
from gmai_pipeline.converters.hdf5 import Hdf5Options, iter_records
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
base = hwm()
xp, yp = Path(sys.argv[2]), Path(sys.argv[3])
n, crc, labels = 0, 0, 0
for r in iter_records(xp, xp.name, Hdf5Options(block_bytes=8 << 20), yp, yp.name):
    crc = zlib.crc32(r.image.tobytes(), crc)
    labels += r.label
    n += 1
print(json.dumps({"n": n, "crc": crc, "labels": labels, "base": base, "peak": hwm()}))
"""


@pytest.mark.slow
def test_file_larger_than_the_memory_budget_streams(tmp_path: Path) -> None:
    n = 6000  # 6000 x 96 x 96 x 3 = 166 MB of pixels
    xp, yp = write_pcam(tmp_path, n, split="train", chunk=64)
    size = xp.stat().st_size
    budget = 96 << 20  # the reader may grow the process by at most this much: well under the file
    assert size > 1.5 * budget
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), str(xp), str(yp)], capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout)
    assert got["n"] == n and got["labels"] == n // 2
    assert got["peak"] - got["base"] < budget, (got, size)
