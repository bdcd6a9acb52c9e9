"""3D volumes from stacks of 2D section files (`images.stack`), on tiny PNG/TIFF sections at MitoEM's real
relative paths (constantinpape/torch-em:torch_em/data/datasets/electron_microscopy/mitoem.py: im/im%04i.png,
mito-train-v2/seg%04i.tif, mito-val-v2/seg%04i.tif), through the catalog YAML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from layout_fixtures import entry
from normalize_fixtures import reasons, run
from PIL import Image

from gmai_pipeline.catalog import CatalogError

MITOEM = """
reader:
  kind: layout
  images: {path: '{sample}/im/im{z:\\d+}.png', stack: z}
  masks: ['{sample}/mito-train-v2/seg{z}.tif', '{sample}/mito-val-v2/seg{z}.tif']
  fields: {sample: 'MitoEM-[HR]'}
  label: mitochondrion
  split: {rules: [{when: {z: {min: 400, max: 499}}, value: val}, {when: {z: {min: 500}}, value: test}], default: train}
  axes: %s
labels: {mitochondrion: mitochondrion}
"""
EM = {"modality": "Microscopy", "department": "Laboratory Medicine and Pathology"}


def _sections(top: Path, zs: list[int], folder: str | None, side: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for z in zs:
        (top / "im").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8)).save(
            top / "im" / f"im{z:04d}.png"
        )
        if folder is None:
            continue
        seg = np.zeros((side, side), np.uint16)
        seg[2 : side // 2, 2 : side // 2] = 1000 + z  # instance ids, different per section
        seg[side // 2 + 2 :, side // 2 + 2 :] = 70000 % 65535
        (top / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(seg).save(top / folder / f"seg{z:04d}.tif")


def _mitoem(raw: Path, side: int = 16) -> None:
    _sections(raw / "MitoEM-H", [0, 1, 2], "mito-train-v2", side, 1)
    _sections(raw / "MitoEM-H", [400], "mito-val-v2", side, 2)
    _sections(raw / "MitoEM-H", [500, 501], None, side, 3)
    _sections(raw / "MitoEM-R", [0, 1], "mito-train-v2", side, 4)


def test_mitoem_sections_stacked_per_sample_and_split(tmp_path: Path) -> None:
    """Each sample's sections form one volume per split; human and rat are separate stacks (their zips
    unpack into the same folder names, so each sample lies in its own folder); val (400-499) and the
    unlabelled test sections (500-999) are evaluation stacks; instance ids become one structure."""
    raw = tmp_path / "raw" / "mitoem"
    _mitoem(raw)
    source = entry(tmp_path, "mitoem", "3d_seg", MITOEM % "[0, 1, 2]", **EM)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (4, 2)
    assert reasons(qrows) == {"split_excluded": 2}
    assert report.images == 8 and report.counters["stacks_assembled"] == 2
    assert {r["label"] for r in rows} == {"mitochondrion"}
    z_rows = {(r["source_path"], r["slice_index"]) for r in rows if r["slice_axis"] == "z"}
    assert ("MitoEM-H/im/im0000.png", 2) in z_rows and ("MitoEM-R/im/im0000.png", 1) in z_rows
    assert {r["slice_axis"] for r in rows} == {"x", "y", "z"}


def test_a_stack_over_the_budget_is_streamed_section_by_section(tmp_path: Path, monkeypatch) -> None:
    """A stack whose assembled volume exceeds the decode budget is read one section at a time when only
    the sections' plane is sliced; reslicing it is refused with the fix, never allocated."""
    raw = tmp_path / "raw" / "mitoem"
    _mitoem(raw, side=256)  # 3 sections of 256 x 256: ~1.4 MiB assembled, ~0.5 MiB each
    monkeypatch.setenv("GMAI_DECODE_BUDGET_MB", "1")
    source = entry(tmp_path, "mitoem", "3d_seg", MITOEM % "[2]", **EM)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (4, 2)
    assert report.counters["stacks_streamed"] == 1 and report.counters["stacks_assembled"] == 1
    h = [r for r in rows if r["source_path"] == "MitoEM-H/im/im0000.png"]
    assert {r["slice_index"] for r in h} == {0, 1, 2} and {r["slice_axis"] for r in rows} == {"z"}
    (z2,) = {r["image"] for r in h if r["image"].endswith("im0002_z0002.png")}
    stored = np.asarray(Image.open(tmp_path / "out" / z2), np.float32)
    section = np.asarray(Image.open(raw / "MitoEM-H" / "im" / "im0002.png"), np.float32)
    assert np.corrcoef(stored.ravel(), section.ravel())[0, 1] > 0.95  # the section as it is, not turned
    resliced = entry(tmp_path, "mitoem", "3d_seg", MITOEM % "[0, 2]", **EM)
    report, rows, qrows = run(resliced, raw, tmp_path / "out2")
    assert reasons(qrows) == {"split_excluded": 2, "too_large": 1}
    assert any("declare axes: [2]" in q["detail"] for q in qrows)


def test_a_section_without_its_mask_quarantines_the_stack(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "mitoem"
    _mitoem(raw)
    (raw / "MitoEM-R" / "mito-train-v2" / "seg0001.tif").unlink()
    source = entry(tmp_path, "mitoem", "3d_seg", MITOEM % "[2]", **EM)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    missing = [q for q in qrows if q["reason"] == "missing_file"]
    assert len(missing) == 1 and "MitoEM-R/im/im0001.png: no mask file" in missing[0]["detail"]


def test_stack_needs_a_template_field(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="images.stack names a field"):
        entry(
            tmp_path,
            "x",
            "3d_seg",
            "reader: {kind: layout, images: {path: 'im/im{z}.png', stack: n}, "
            "masks: 'seg/seg{z}.tif'}\nlabels: {'1': x}",
            **EM,
        )
