"""The fuzz test of the hardening issue: a few hundred mutated files through the real readers.

460 mutants (120 DICOM with a planted PatientName/PatientID, 80 PNG, 80 JPEG, 80 NIfTI with
valid label volumes through the classic readers; 60 PNG/JPEG/DICOM through a table-driven `layout`
entry, one DICOM file named after its PatientID; 40 3D/4D NIfTI cases through a templated `layout`
entry, every fifth with a mutated label volume), and for the converter readers 40 DICOM slices in 8
CHAOS-style series (mutated slice files in most), 26 Aperio XML files (byte mutants, absurd and
non-finite coordinates, an entity-expansion bomb, deep nesting, 20,000 vertices), 26 run-length strings
(garbage, overflowing and negative numbers, overlapping runs, runs outside the image) and 10 PCam-style
HDF5 files (byte mutants), are built from valid files with a fixed seed
(`tests/fuzz_readers.py`) and normalized in a subprocess of their own, with a decode budget of
256 MiB. Promise checked: nothing escapes a reader, every file is one input that ends as rows or a
quarantine row, no planted header value (nor the patient-named file) appears in any output, manifest
or log line, and the process grows by less than the decode budget plus 128 MiB (peak RSS from
`resource.getrusage`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BUDGET_MB = 256
SLACK_MB = 128


def test_mutated_files_never_escape_leak_or_blow_memory(tmp_path: Path) -> None:
    script = Path(__file__).parent / "fuzz_readers.py"
    env = dict(os.environ, GMAI_DECODE_BUDGET_MB=str(BUDGET_MB))
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "16", "80"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["escaped"] == []
    assert result["leaks"] == [] and "fuzzington" not in (proc.stdout + proc.stderr).lower()
    datasets = result["datasets"]
    classic = {"fz_dicom", "fz_images", "fz_nifti", "fz_table", "fz_volumes"}
    assert set(datasets) == classic | {"fz_series", "fz_polygons", "fz_rle", "fz_hdf5"}
    assert sum(datasets[n]["files"] for n in classic) == 460
    for name, d in datasets.items():
        assert d["inputs"] == d["kept"] + d["quarantined"], (name, d)
        assert d["kept"] > 0 and d["quarantined"] > 0, (name, d)  # both sides really exercised
        if name in classic or name == "fz_rle":  # one input per file (per table row)
            assert d["inputs"] == d["files"], (name, d)
    # a series is one input, and so is each file that joins none: at least one input per series folder
    assert 8 <= datasets["fz_series"]["inputs"] <= datasets["fz_series"]["files"]
    assert datasets["fz_polygons"]["inputs"] >= datasets["fz_polygons"]["files"]  # + shapes without area
    assert datasets["fz_hdf5"]["inputs"] >= datasets["fz_hdf5"]["files"]  # indices, or one per unusable file
    assert datasets["fz_images"]["reasons"].get("truncated", 0) > 0
    grown = result["peak_rss_mib"] - result["base_rss_mib"]
    assert grown < BUDGET_MB + SLACK_MB, f"peak RSS grew by {grown:.0f} MiB"
