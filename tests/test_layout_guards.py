"""Loud, specific failures, through Dagster: zero inputs, label collapse, and `expect:` mismatches."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import dagster as dg
from layout_fixtures import NIH_CLS, entry, nih, photo
from storage_fixtures import storage_at

from gmai_pipeline.defs.normalize import build_normalized_asset
from gmai_pipeline.defs.sources import build_source_asset
from gmai_pipeline.normalize import label_findings

BREAKHIS = """
reader:
  kind: layout
  root: BreaKHis_v1/histology_slides/breast
  images: "{group}/SOB/{label}/{slide}/{mag}/{file}"
  label: "{label}"
"""
PATHOLOGY = {"modality": "Pathology", "department": "Laboratory Medicine and Pathology"}


def _materialize(source, raw_root: Path, monkeypatch):
    storage = storage_at(Path(os.environ["GMAI_OUTPUT_ROOT"]), raw_root=raw_root)  # the output_root fixture's
    return dg.materialize(
        [build_source_asset(source), build_normalized_asset(source)],
        raise_on_error=False,
        resources={"storage": storage},
    )


def _failure(result) -> str:
    event = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return str(event.event_specific_data.error)


def _verdict(result) -> dg.AssetCheckEvaluation:
    """The dataset's one check, `in_release`: the properties verified on its tables are in its metadata."""
    (verdict,) = result.get_asset_check_evaluations()
    assert verdict.check_name == "in_release"
    return verdict


def _property(result, name: str) -> dict:
    """One property's verdict and figures, as `in_release` reports them."""
    meta = _verdict(result).metadata
    figures = {k.split("/", 1)[1]: v.value for k, v in meta.items() if k.startswith(f"{name}/")}
    return {"passed": meta[name].value == "passed", **figures}


def test_nih_through_dagster_with_tables_and_split_lists(
    tmp_path: Path, output_root: Path, monkeypatch
) -> None:
    raw_root = tmp_path / "raw"
    nih(raw_root / "nih")
    source = entry(tmp_path, "nih", "2d_cls", NIH_CLS + "expect: {images: 4, classes: 3, source: fixture}\n")
    result = _materialize(source, raw_root, monkeypatch)
    assert result.success
    meta = result.asset_materializations_for_node("normalized__nih")[0].metadata
    assert (meta["kept"].value, meta["quarantined"].value) == (4, 1)
    assert _property(result, "expected_counts")["passed"] and _property(result, "labels_plausible")["passed"]
    assert _verdict(result).passed


def test_zero_inputs_fail_with_the_folder_the_layout_and_the_url(
    tmp_path: Path, output_root: Path, monkeypatch
) -> None:
    """BreakHis unpacked, but the entry's root has a typo: nothing matches, and the run says where it looked."""
    raw_root = tmp_path / "raw"
    photo(
        raw_root
        / "breakhis"
        / "BreaKHis_v1"
        / "histology_slides"
        / "breast"
        / "benign"
        / "SOB"
        / "adenosis"
        / "s"
        / "40X"
        / "a.png"
    )
    source = entry(
        tmp_path,
        "breakhis",
        "2d_cls",
        BREAKHIS.replace("histology_slides/breast", "histology_slides/breasts"),
        **PATHOLOGY,
    )
    result = _materialize(source, raw_root, monkeypatch)
    assert not result.success
    message = _failure(result)
    assert "found no inputs in" in message and str(raw_root / "breakhis") in message
    assert "{group}/SOB/{label}/{slide}/{mag}/{file}" in message and "https://example.org/breakhis" in message
    assert "BreaKHis_v1/histology_slides/breast/benign" in message  # an example of what is there


def test_nothing_kept_names_the_folder_layout_and_url(tmp_path: Path, output_root: Path, monkeypatch) -> None:
    """NIH (Kaggle layout) with the entry naming the NIH box file name of the table: every row unresolved."""
    raw_root = tmp_path / "raw"
    nih(raw_root / "nih")
    source = entry(
        tmp_path, "nih", "2d_cls", NIH_CLS.replace("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
    )
    result = _materialize(source, raw_root, monkeypatch)
    message = _failure(result)
    assert (
        "none of 5 inputs" in message and "unreferenced_file (4)" in message and "missing_file (1)" in message
    )
    assert (
        str(raw_root / "nih") in message
        and "Data_Entry_2017_v2020.csv" in message
        and "example.org/nih" in message
    )


def test_an_empty_folder_says_so(tmp_path: Path) -> None:
    from gmai_pipeline.normalize import normalize_source

    raw = tmp_path / "raw" / "ds"
    raw.mkdir(parents=True)
    source = entry(tmp_path, "ds", "2d_cls", "reader: {kind: image_folder}")
    message = normalize_source(source, raw, [], tmp_path / "out").failure_message()
    assert "The folder is empty" in message and "image_folder reader" in message


def test_label_collapse_blocks_nih_read_as_class_folders(
    tmp_path: Path, output_root: Path, monkeypatch
) -> None:
    """NIH's own layout (images/00000001_000.png) under image_folder: one class called `images`."""
    raw_root = tmp_path / "raw"
    for i in range(25):
        photo(raw_root / "nih" / "images" / f"{i:08d}_000.png", seed=i, size=(16, 16), rgb=False)
    source = entry(tmp_path, "nih", "2d_cls", "reader: {kind: image_folder}")
    result = _materialize(source, raw_root, monkeypatch)
    plausible = _property(result, "labels_plausible")
    assert not plausible["passed"] and not _verdict(result).passed
    assert "labels_plausible failed" in _verdict(result).description
    findings = plausible["findings"]
    assert "label collapse: 'images' holds 25 of 25 rows" in findings and "folder names: images" in findings


def test_label_collapse_catches_ham10000_parts_and_chexpert_patient_ids() -> None:
    ham = label_findings(Counter({"HAM10000_images_part_1": 5000, "HAM10000_images_part_2": 5015}), "cls")
    assert any("folder names" in f for f in ham)
    patients = label_findings(Counter({f"patient{i:05d}": 2 for i in range(60)}), "cls")
    assert any("look like ids" in f for f in patients)
    codes = label_findings(Counter({"0": 30, "1": 20, "2": 10}), "cls")
    assert any("bare numbers" in f for f in codes)
    assert label_findings(Counter({"melanoma": 584, "benign": 32542}), "cls") == []  # ISIC 2020: 98.2% benign
    assert label_findings(Counter({"liver": 10_000}), "seg") == []  # segmentation labels are structures


def test_expect_mismatch_fails_its_check_and_is_shown(tmp_path: Path, output_root: Path, monkeypatch) -> None:
    """BreakHis documents 7,909 images in 8 classes; a partial download is caught, not trained on."""
    raw_root = tmp_path / "raw"
    base = raw_root / "breakhis" / "BreaKHis_v1" / "histology_slides" / "breast"
    for i, (group, sub) in enumerate((("benign", "adenosis"), ("malignant", "ductal_carcinoma"))):
        photo(base / group / "SOB" / sub / f"SOB_{i}" / "40X" / f"SOB_{i}-40-001.png", seed=i)
    expect = "expect: {images: 7909, classes: 8, tolerance: 0.01, source: breakhis page}\n"
    source = entry(tmp_path, "breakhis", "2d_cls", BREAKHIS + expect, **PATHOLOGY)
    result = _materialize(source, raw_root, monkeypatch)
    counts = _property(result, "expected_counts")
    assert not counts["passed"] and not _verdict(result).passed
    assert counts["images"] == "expected 7909, found 2"
    assert counts["classes"] == "expected 8, found 2"
    assert (
        "breakhis" in _verdict(result).description
        and "expected_counts failed" in _verdict(result).description
    )
    meta = result.asset_materializations_for_node("normalized__breakhis")[0].metadata
    assert meta["images_found"].value == 2
