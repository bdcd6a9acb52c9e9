"""Run-length masks in both pixel orders against masks worked out by hand, SIIM-ACR's relative variant,
`-1` rows, several rows per image (classes as Severstal writes them, instances as Sartorius does)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from gmai_pipeline.converters.rle import RleOptions, RleRow, decode, encode, merge
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.volumes import mask_boxes

KNOWN = np.array(
    [
        [0, 1, 1, 0, 0],
        [0, 1, 0, 0, 1],
        [0, 0, 0, 0, 1],
        [1, 0, 0, 0, 0],
    ],
    dtype=bool,
)  # height 4, width 5
# by hand: column-major numbers pixels down each column (1-based): (3,0)=4, (0,1)=5, (1,1)=6 form one run
COLUMN = "4 3 9 1 18 2"
ROW = "2 2 7 1 10 1 15 2"  # left to right, then top to bottom
SIIM_RELATIVE = "3 3 2 1 8 2"  # column-major, each start counted from the end of the previous run


@pytest.mark.parametrize(
    ("text", "kw"),
    [
        (COLUMN, {"order": "column"}),
        (ROW, {"order": "row"}),
        (SIIM_RELATIVE, {"order": "column", "runs": "relative", "start": 0}),
        ("3 3 8 1 17 2", {"order": "column", "start": 0}),
    ],
)
def test_known_mask_in_each_variant(text: str, kw: dict) -> None:
    np.testing.assert_array_equal(decode(text, 4, 5, **kw), KNOWN)
    assert encode(KNOWN, **kw) == text


def test_orders_differ_and_round_trip_random_masks() -> None:
    assert not np.array_equal(decode(COLUMN, 4, 5, order="row"), KNOWN)  # the wrong order is a wrong mask
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = rng.random((h, w)) < rng.random()
        for kw in (
            {"order": "column"},
            {"order": "row"},
            {"order": "column", "runs": "relative", "start": 0},
        ):
            np.testing.assert_array_equal(decode(encode(m, **kw), h, w, **kw), m)


def test_empty_values_and_malformed_rows() -> None:
    for empty in ("-1", " -1", "", None, float("nan")):
        assert not decode(empty, 4, 5, order="column").any()
    bad = {
        "1 2 3": "invalid_rle",  # odd count
        "1 x": "invalid_rle",
        "1 0": "invalid_rle",  # zero length
        "5 3 6 1": "invalid_rle",  # overlap
        "9 1 4 1": "invalid_rle",  # not increasing
        "0 2": "invalid_rle",  # below the first pixel (1-based)
        "19 3": "rle_outside_image",
    }
    for text, reason in bad.items():
        with pytest.raises(ImageError) as e:
            decode(text, 4, 5, order="column", where="train.csv line 7")
        assert e.value.reason == reason, text
        assert e.value.detail.startswith("train.csv line 7: ")


def test_rows_merge_per_class_and_per_instance(tmp_path: Path) -> None:
    # Severstal's train.csv: ImageId,ClassId,EncodedPixels; one row per class present
    table = tmp_path / "train.csv"
    a = np.zeros((6, 8), bool)
    a[1:3, 1:4] = True
    b = np.zeros((6, 8), bool)
    b[4:6, 5:8] = True
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "ClassId", "EncodedPixels"])
        w.writerow(["0002cc93b.jpg", "1", encode(a, order="column")])
        w.writerow(["0002cc93b.jpg", "3", encode(b, order="column")])
        w.writerow(["00031f466.jpg", "1", "-1"])
    rows: dict[str, list[RleRow]] = {}
    with table.open(newline="") as f:
        for line, rec in enumerate(csv.DictReader(f), start=2):
            rows.setdefault(rec["ImageId"], []).append(
                RleRow(rec["EncodedPixels"], rec["ClassId"], f"train.csv line {line}")
            )
    opts = RleOptions(order="column")
    img = merge(rows["0002cc93b.jpg"], 6, 8, opts, {"1": 1, "3": 3})
    assert not img.empty
    assert mask_boxes(img.labels, 0.0, 1) == [(1, (1, 1, 4, 3)), (3, (5, 4, 8, 6))]
    assert merge(rows["00031f466.jpg"], 6, 8, opts, {"1": 1, "3": 3}).empty
    with pytest.raises(ImageError) as e:
        merge(rows["0002cc93b.jpg"], 6, 8, opts, {"1": 1})
    assert e.value.reason == "unknown_label" and "line 3" in e.value.detail

    # instances (Sartorius: one row per cell, row-major): touching cells stay two boxes
    c1 = np.zeros((6, 8), bool)
    c1[0:3, 0:3] = True
    c2 = np.zeros((6, 8), bool)
    c2[0:3, 3:5] = True
    inst = merge(
        [
            RleRow(encode(c, order="row"), "shsy5y", f"train.csv line {i}")
            for i, c in enumerate((c1, c2), start=2)
        ],
        6,
        8,
        RleOptions(order="row", rows_are="instances"),
    )
    assert inst.instances == [("shsy5y", (0, 0, 3, 3)), ("shsy5y", (3, 0, 5, 3))]
    assert len(mask_boxes(inst.labels, 0.0, 1)) == 1  # as one class mask they would merge
