"""Stacked `.npy` patch arrays: PanNuke's real layout (`Fold <k>/images/fold<k>/images.npy` N x 256 x 256 x 3 float
RGB, `Fold <k>/masks/fold<k>/masks.npy` N x 256 x 256 x 6 instance channels, class = channel + 1, the last channel
background; constantinpape/torch-em:torch_em/data/datasets/histopathology/pannuke.py), normalized from the manifest
`scan()` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from layout_fixtures import entry
from normalize_fixtures import reasons, run
from PIL import Image

PANNUKE = """
reader:
  kind: layout
  images: "{part}/images/{fold}/images.npy"
  split: {rules: [{when: {fold: fold3}, value: test}], default: train}
  min_component_pixels: 4
  convert: {kind: npy, masks_file: "{part}/masks/{fold}/masks.npy",
            instance_channels: {0: 1, 1: 2, 2: 3, 3: 4, 4: 5}, value_range: [0, 255]}
labels: {"1": neoplastic cell, "2": inflammatory cell, "3": connective / soft tissue cell, "4": dead cell,
         "5": epithelial cell}
"""
H = W = 32


def _fold(raw: Path, k: int, n: int = 3) -> np.ndarray:
    images = np.stack(
        [(np.indices((H, W)).sum(0)[..., None] * (i + 1) * np.array([3, 2, 1])) % 250 for i in range(n)]
    )
    images = images.astype(np.float64) + 0.25  # PanNuke's float RGB in 0-255
    masks = np.zeros((n, H, W, 6), np.float64)
    masks[0, 2:8, 2:8, 0] = 5  # two touching neoplastic nuclei: two boxes, not one component
    masks[0, 2:8, 8:14, 0] = 7
    masks[0, 20:26, 20:30, 1] = 2  # an inflammatory nucleus
    masks[0, ..., 5] = 1  # the background channel: never a class
    masks[1, ..., 5] = 1  # no nucleus at all
    masks[2, 10:16, 4:9, 4] = 3  # an epithelial nucleus
    masks[2, 0:2, 0:2, 4] = 4  # a 4-px speck: under min_component_pixels... exactly 4, kept
    for sub, arr in (("images", images), ("masks", masks)):
        (raw / f"Fold {k}" / sub / f"fold{k}").mkdir(parents=True, exist_ok=True)
        np.save(raw / f"Fold {k}" / sub / f"fold{k}" / f"{sub}.npy", arr)
    np.save(raw / f"Fold {k}" / "images" / f"fold{k}" / "types.npy", np.array(["Breast"] * n))
    return images


def test_pannuke_npy_folds_one_row_per_nucleus_instance_test_fold_and_bad_arrays_quarantined(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "raw" / "pannuke"
    images = _fold(raw, 1)
    _fold(raw, 3)
    bad = raw / "Fold 2" / "images" / "fold2"
    bad.mkdir(parents=True)
    np.save(bad / "images.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (raw / "Fold 2" / "masks" / "fold2").mkdir(parents=True)
    np.save(raw / "Fold 2" / "masks" / "fold2" / "masks.npy", np.zeros((1, H, W, 6)))
    source = entry(tmp_path, "pannuke", "2d_det", PANNUKE)
    report, rows, qrows = run(source, raw, tmp_path / "out")
    # inputs: each box of fold 1 (detection: a box is an input), its empty index 1, the object array of
    # fold 2, the test fold 3 (the whole file)
    assert (report.inputs, report.kept) == (8, 5)
    assert reasons(qrows) == {"empty_mask": 1, "unsupported_layout": 1, "split_excluded": 1}
    assert (
        next(q for q in qrows if q["reason"] == "unsupported_layout")["source_path"]
        == "Fold 2/images/fold2/images.npy"
    )
    assert (
        next(q for q in qrows if q["reason"] == "empty_mask")["source_path"]
        == "Fold 1/images/fold1/images.npy/1"
    )
    got = sorted((r["source_path"], r["label"], tuple(r["bbox"])) for r in rows)
    assert got == [
        ("Fold 1/images/fold1/images.npy/0", "inflammatory cell", (20, 20, 30, 26)),
        ("Fold 1/images/fold1/images.npy/0", "neoplastic cell", (2, 2, 8, 8)),
        ("Fold 1/images/fold1/images.npy/0", "neoplastic cell", (8, 2, 14, 8)),
        ("Fold 1/images/fold1/images.npy/2", "epithelial cell", (0, 0, 2, 2)),
        ("Fold 1/images/fold1/images.npy/2", "epithelial cell", (4, 10, 9, 16)),
    ]
    first = next(r for r in rows if r["source_path"].endswith("/0"))
    stored = np.asarray(Image.open(tmp_path / "out" / first["image"]))
    assert np.array_equal(stored, np.rint(images[0]).astype(np.uint8))  # colours kept, not rescaled per image
