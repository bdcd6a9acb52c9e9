"""Layouts whose files are encoded unusually: masks whose 0 is a structure (255 = background), masks that
need a threshold (lossy JPEG, averaged expert maps). Each test lays out tiny files at the real relative
paths of a dataset that ships that way (evidence named in the test) and reads them through its YAML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from layout_fixtures import disk_mask, entry, photo
from normalize_fixtures import reasons, run, write_image

from gmai_pipeline.catalog import CatalogError

FUNDUS = {"modality": "Fundus", "department": "Ophthalmology"}


def _inverted(size: tuple[int, int], *disks: tuple[tuple[int, int], int, int]) -> np.ndarray:
    """255 everywhere, each disk (centre, radius, value) painted with its value (0 = the structure)."""
    m = np.full(size, 255, np.uint8)
    for centre, r, value in disks:
        m[disk_mask(size, centre, r) > 0] = value
    return m


# ------------------------------------------------------------------ background: 255


def test_ichallenge_amd_disc_masks_with_zero_as_the_disc(tmp_path: Path) -> None:
    """iChallenge-AMD Training400: AMD/A0001.jpg, Non-AMD/N0001.jpg and Disc_Masks/<stem>.bmp with
    0 = optic disc and 255 = background (amd.grand-challenge.org data description)."""
    raw = tmp_path / "raw" / "adam"
    top = raw / "Training400"
    size = (40, 48)
    photo(top / "AMD" / "A0001.jpg", seed=1, size=size)
    write_image(top / "Disc_Masks" / "A0001.bmp", _inverted(size, ((30, 20), 6, 0)))
    photo(top / "Non-AMD" / "N0001.jpg", seed=2, size=size)
    write_image(top / "Disc_Masks" / "N0001.bmp", _inverted(size))  # no disc drawn: nothing to keep
    source = entry(
        tmp_path,
        "adam",
        "2d_seg",
        """
        reader:
          kind: layout
          images: "{group:AMD|Non-AMD}/{stem}.jpg"
          masks: {path: "Disc_Masks/**/{stem}.bmp", background: 255}
        labels: {'0': optic disc}
        """,
        **FUNDUS,
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (2, 1) and reasons(qrows) == {"empty_mask": 1}
    assert [(r["label"], r["bbox"]) for r in rows] == [("optic disc", [24, 14, 37, 27])]


def test_gamma_cup_and_rim_grey_levels_on_a_white_background(tmp_path: Path) -> None:
    """GAMMA task 3: 'fundus color images/0001.jpg' with Disc_Cup_Mask/0001.png, 0 = optic cup,
    128 = disc rim, 255 = background (the REFUGE convention). A value the map does not name is refused."""
    raw = tmp_path / "raw" / "gamma"
    top = raw / "task3_disc_cup_segmentation" / "training"
    size = (40, 48)
    photo(top / "fundus color images" / "0001.jpg", seed=1, size=size)
    write_image(top / "Disc_Cup_Mask" / "0001.png", _inverted(size, ((24, 20), 10, 128), ((24, 20), 4, 0)))
    photo(top / "fundus color images" / "0002.jpg", seed=2, size=size)
    write_image(top / "Disc_Cup_Mask" / "0002.png", _inverted(size, ((24, 20), 10, 64)))
    source = entry(
        tmp_path,
        "gamma",
        "2d_seg",
        """
        reader:
          kind: layout
          images: "fundus color images/{id}.jpg"
          masks: {path: "Disc_Cup_Mask/{id}.png", background: 255}
        labels: {'0': optic cup, '128': optic disc rim}
        """,
        **FUNDUS,
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (2, 1)
    assert sorted((r["label"], r["bbox"]) for r in rows) == [
        ("optic cup", [20, 16, 29, 25]),
        ("optic disc rim", [14, 10, 35, 31]),
    ]
    assert [(q["reason"], "values [64]" in q["detail"]) for q in qrows] == [("unknown_label", True)]


def test_palm_one_binary_mask_per_structure_with_zero_as_foreground(tmp_path: Path) -> None:
    """PALM: Training/Images/<stem>.jpg, 'Disc Masks/<stem>.bmp' and 'Lesion Masks/{Atrophy,Detachment}/
    <stem>.bmp', each 0 = structure, 255 = background; an image has a lesion file only where it has the
    lesion (constantinpape/torch-em:torch_em/data/datasets/medical/palm.py reads `label == 0`)."""
    raw = tmp_path / "raw" / "palm"
    top = raw / "PALM"
    size = (40, 48)
    photo(top / "Training" / "Images" / "P0001.jpg", seed=1, size=size)
    write_image(top / "Training" / "Disc Masks" / "P0001.bmp", _inverted(size, ((12, 12), 5, 0)))
    write_image(
        top / "Training" / "Lesion Masks" / "Atrophy" / "P0001.bmp", _inverted(size, ((34, 26), 6, 0))
    )
    photo(top / "Training" / "Images" / "N0002.jpg", seed=2, size=size)
    write_image(top / "Training" / "Disc Masks" / "N0002.bmp", _inverted(size, ((20, 20), 5, 0)))
    photo(top / "Validation" / "Images" / "V0001.jpg", seed=3, size=size)
    write_image(top / "Validation" / "Disc Masks" / "V0001.bmp", _inverted(size, ((20, 20), 5, 0)))
    source = entry(
        tmp_path,
        "palm",
        "2d_seg",
        """
        reader:
          kind: layout
          images: "{split}/Images/{stem}.jpg"
          masks:
            path: ["{split}/{kind:Disc Masks}/{stem}.bmp", "{split}/Lesion Masks/{kind}/{stem}.bmp"]
            background: 255
          label: "{kind}"
          split: "{split}"
        labels: {Disc Masks: optic disc, Atrophy: peripapillary atrophy, Detachment: retinal detachment}
        """,
        **FUNDUS,
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (3, 2) and reasons(qrows) == {"split_excluded": 1}
    assert sorted((r["source_path"].rsplit("/", 1)[-1], r["label"], r["bbox"]) for r in rows) == [
        ("N0002.jpg", "optic disc", [15, 15, 26, 26]),
        ("P0001.jpg", "optic disc", [7, 7, 18, 18]),
        ("P0001.jpg", "peripapillary atrophy", [28, 20, 41, 33]),
    ]


# ------------------------------------------------------------------ threshold


def test_kvasir_seg_jpeg_masks_thresholded(tmp_path: Path) -> None:
    """Kvasir-SEG: images/<id>.jpg with masks/<id>.jpg, 3-channel JPEG masks whose values scatter near 0
    and 255 (torch-em:torch_em/data/datasets/medical/kvasir.py averages the channels and thresholds).
    Read as they are, only the pixels JPEG left at exactly 255 count; with `threshold` the whole polyp."""
    raw = tmp_path / "raw" / "kvasir"
    top = raw / "Kvasir-SEG"
    size = (48, 64)
    photo(top / "images" / "cju0qkwl35piu0993l0dewei2.jpg", seed=1, size=size)
    polyp = disk_mask(size, (30, 24), 12)
    write_image(top / "masks" / "cju0qkwl35piu0993l0dewei2.jpg", np.stack([polyp] * 3, -1), quality=75)
    body = """
        reader: {{kind: mask_pairs, mask_extension: .jpg{extra}}}
        labels: {labels}
        """
    plain = entry(tmp_path, "kvasir", "2d_seg", body.format(extra="", labels="{'255': polyp}"))
    _, rows, _ = run(plain, raw, tmp_path / "plain")
    assert [r["bbox"] for r in rows] != [[18, 12, 43, 37]]  # only pixels left at exactly 255: too small
    source = entry(tmp_path, "kvasir", "2d_seg", body.format(extra=", threshold: 128", labels="{'1': polyp}"))
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert report.kept == 1 and not qrows
    assert [(r["label"], r["bbox"]) for r in rows] == [("polyp", [18, 12, 43, 37])]


def test_drishti_soft_maps_thresholded_cup_over_disc(tmp_path: Path) -> None:
    """Drishti-GS1: Training/Images/drishtiGS_002.png with Training/GT/drishtiGS_002/SoftMap/
    drishtiGS_002_{OD,cup}segSoftmap.png, each pixel the share of the 4 experts marking it (0-255). The
    threshold keeps what most experts marked; where cup and disc overlap the cup wins (later label)."""
    raw = tmp_path / "raw" / "drishti"
    top = raw / "Drishti-GS1_files"
    size = (48, 64)
    gt = top / "Training" / "GT" / "drishtiGS_002" / "SoftMap"
    photo(top / "Training" / "Images" / "drishtiGS_002.png", seed=1, size=size)
    disc = disk_mask(size, (32, 24), 16, value=64)  # one expert of four: a wide halo, below the threshold
    disc[disk_mask(size, (32, 24), 10) > 0] = 255
    write_image(gt / "drishtiGS_002_ODsegSoftmap.png", disc)
    write_image(gt / "drishtiGS_002_cupsegSoftmap.png", disk_mask(size, (32, 24), 4, value=191))
    photo(top / "Test" / "Images" / "drishtiGS_001.png", seed=2, size=size)
    test_gt = top / "Test" / "Test_GT" / "drishtiGS_001" / "SoftMap"
    write_image(test_gt / "drishtiGS_001_ODsegSoftmap.png", disk_mask(size, (32, 24), 10))
    source = entry(
        tmp_path,
        "drishti",
        "2d_seg",
        """
        reader:
          kind: layout
          images: "{set}/Images/{id}.png"
          masks:
            path: ["Training/GT/{id}/SoftMap/{id}_{part}segSoftmap.png",
                   "Test/Test_GT/{id}/SoftMap/{id}_{part}segSoftmap.png"]
            threshold: 128
          fields: {part: OD|cup}
          label: "{part}"
        labels: {OD: optic disc, cup: optic cup}
        """,
        **FUNDUS,
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (2, 1) and reasons(qrows) == {"split_excluded": 1}
    assert sorted((r["label"], r["bbox"]) for r in rows) == [
        ("optic cup", [28, 20, 37, 29]),
        ("optic disc", [22, 14, 43, 35]),
    ]


def test_mask_encoding_is_validated(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="background or threshold, not both"):
        entry(
            tmp_path,
            "both",
            "2d_seg",
            """
            reader: {kind: layout, images: "i/{id}.png", masks: {path: "m/{id}.png", background: 255, threshold: 9}}
            """,
        )
    with pytest.raises(CatalogError, match="apply to 2D masks"):
        entry(
            tmp_path,
            "vol",
            "3d_seg",
            """
            reader: {kind: layout, images: "i/{id}.nii.gz", masks: {path: "m/{id}.nii.gz", threshold: 1}}
            """,
        )
