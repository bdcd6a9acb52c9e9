"""Partitioned normalization (`partitions:`): parts of cases, joined into the tables of one run."""

from __future__ import annotations

import gzip
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
from layout_fixtures import box_label, ct_volume, dicom_file, entry, nifti, photo

from gmai_pipeline.catalog import CatalogError, SourceDataset
from gmai_pipeline.manifest import scan
from gmai_pipeline.normalize import NormalizeReport, normalize_source, verify_outputs
from gmai_pipeline.normalize_parts import (
    PartsNotReady,
    fingerprint,
    join_parts,
    write_part_report,
)
from gmai_pipeline.partitions import case_partition
from gmai_pipeline.storage import OutputLayout, md5_file

CASES = [f"liver_{i:02d}" for i in range(7)]
REASONS = [("imagesTr/liver_05.nii.gz", "unreadable"), ("imagesTr/liver_06.nii.gz", "missing_file")]
BODY = "reader: {kind: msd, axes: [2]}\nlabels: {'1': liver}\n"


def _dataset(raw: Path) -> None:
    """Seven MSD cases: five good, one truncated image volume, one without its label volume."""
    for i, case in enumerate(CASES):
        nifti(raw / "imagesTr" / f"{case}.nii.gz", ct_volume(seed=i))
        if case != "liver_06":
            nifti(raw / "labelsTr" / f"{case}.nii.gz", box_label(value=1))
    broken = raw / "imagesTr" / "liver_05.nii.gz"
    broken.write_bytes(gzip.compress(gzip.decompress(broken.read_bytes())[:400]))


def _source(tmp_path: Path, partitions: int) -> SourceDataset:
    return entry(tmp_path, "liver", "3d_seg", BODY, partitions=str(partitions))


def _unpartitioned(tmp_path: Path, raw: Path) -> tuple[Path, NormalizeReport]:
    out = tmp_path / "one"
    return out, normalize_source(_source(tmp_path, 1), raw, scan(raw), out)


def _partitioned(source: SourceDataset, raw: Path, out: Path, parts=None) -> list:
    manifest = scan(raw)
    made_from = fingerprint(source, manifest)
    reports = []
    for i in parts if parts is not None else range(source.partitions):
        report = normalize_source(source, raw, manifest, out, part=i)
        write_part_report(OutputLayout(out), source, i, report, made_from)
        reports.append(report)
    return reports


def _join(source: SourceDataset, raw: Path, out: Path):
    return join_parts(OutputLayout(out), source, fingerprint(source, scan(raw)))


def _table(path: Path) -> list[dict]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: (r["source_path"], str(r.get("sample_id"))))


def _images(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): md5_file(p) for p in (out / "images").rglob("*.png")}


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    folder = tmp_path / "raw" / "liver"
    _dataset(folder)
    return folder


def test_three_parts_join_to_the_rows_images_and_quarantine_of_one_run(tmp_path: Path, raw: Path) -> None:
    one, one_report = _unpartitioned(tmp_path, raw)
    source = _source(tmp_path, 3)
    out = tmp_path / "three"
    reports = _partitioned(source, raw, out)
    # every part read only its own cases: the kept volumes add up, none counted twice
    owners = {c: case_partition(c, 3) for c in CASES}
    assert len(set(owners.values())) == 3  # the fixture's cases land in all three parts
    for i, r in enumerate(reports):
        assert r.inputs == sum(1 for o in owners.values() if o == i)
        assert r.inputs == r.kept + r.quarantined
    joined = _join(source, raw, out)

    assert _table(out / "normalized" / "liver.parquet") == _table(one / "normalized" / "liver.parquet")
    quarantine = _table(out / "quarantine" / "liver.parquet")
    assert quarantine == _table(one / "quarantine" / "liver.parquet")
    assert sorted((q["source_path"], q["reason"]) for q in quarantine) == REASONS
    assert _images(out) == _images(one) and _images(one)
    assert (joined.inputs, joined.kept, joined.quarantined) == (7, 5, 2)
    assert joined.cases == 7 and not joined.ignored
    assert (
        joined.counters == one_report.counters and joined.counters["volumes_kept"] == 5
    )  # none counted twice
    checks = verify_outputs(out, source, joined)  # inputs = kept + quarantined over the union
    assert all(c.passed for c in checks.values()), {k: c.metadata for k, c in checks.items() if not c.passed}


BTCV = """
reader:
  kind: layout
  images: "RawData/Training/img/img{id}.nii.gz"
  masks: "RawData/Training/label/label{id}.nii.gz"
  filters: {id: {max: 40}}
  axes: [2]
labels: {"1": spleen, "6": liver}
"""


def test_a_templated_layout_in_two_parts_joins_to_one_run(tmp_path: Path) -> None:
    """`kind: layout` volumes (BTCV's RawData/Training/{img,label}); a filtered case and a byte duplicate."""
    raw = tmp_path / "raw" / "btcv"
    for i, case in enumerate(("0001", "0002", "0003", "0004", "0005", "0041")):
        nifti(raw / f"RawData/Training/img/img{case}.nii.gz", ct_volume(seed=i % 5))  # 0041 = 0001's bytes
        nifti(raw / f"RawData/Training/label/label{case}.nii.gz", box_label(value=6 if i % 2 else 1))
    nifti(raw / "RawData/Training/img/img0006.nii.gz", ct_volume(seed=0))  # same bytes as img0001
    nifti(raw / "RawData/Training/label/label0006.nii.gz", box_label(value=1))
    one = entry(tmp_path, "btcv", "3d_seg", BTCV)
    one_report = normalize_source(one, raw, scan(raw), tmp_path / "one")
    two = entry(tmp_path, "btcv", "3d_seg", BTCV, partitions="2")
    out = tmp_path / "two"
    reports = _partitioned(two, raw, out)
    assert all(r.inputs for r in reports)  # both parts had cases
    joined = _join(two, raw, out)
    for table in ("normalized", "quarantine"):
        assert _table(out / table / "btcv.parquet") == _table(tmp_path / "one" / table / "btcv.parquet")
    assert "duplicate_image" in joined.by_reason
    assert (
        joined.counters == one_report.counters and joined.counters["filtered_by_id"] == 1
    )  # the walk's, once
    assert _images(out) == _images(tmp_path / "one")


def test_the_broken_case_is_quarantined_in_its_part_and_the_others_keep_their_cases(
    tmp_path: Path, raw: Path
) -> None:
    source = _source(tmp_path, 3)
    out = tmp_path / "out"
    reports = _partitioned(source, raw, out)
    broken = case_partition("liver_05", 3)
    q = pq.read_table(OutputLayout(out).quarantine_part("liver", broken)).to_pylist()
    assert [r["source_path"] for r in q if r["source_path"].endswith("liver_05.nii.gz")] == [
        "imagesTr/liver_05.nii.gz"
    ]
    for i in range(len(reports)):
        if i != broken:
            assert "liver_05" not in str(
                pq.read_table(OutputLayout(out).quarantine_part("liver", i)).to_pylist()
            )
    assert sum(r.kept for r in reports) == 5


def test_rerunning_one_part_rewrites_only_that_part(tmp_path: Path, raw: Path) -> None:
    source = _source(tmp_path, 3)
    out = tmp_path / "out"
    lay = OutputLayout(out)
    _partitioned(source, raw, out)
    first = _table(lay.normalized("liver")) if _join(source, raw, out) else None
    kept = {i: lay.normalized_part("liver", i).stat().st_mtime_ns for i in (0, 2)}

    lay.normalized_part("liver", 1).unlink()
    with pytest.raises(PartsNotReady, match="part-001.parquet of part normalized/liver/p001 is missing"):
        _join(source, raw, out)
    _partitioned(source, raw, out, parts=[1])
    _join(source, raw, out)
    assert {i: lay.normalized_part("liver", i).stat().st_mtime_ns for i in (0, 2)} == kept
    assert _table(lay.normalized("liver")) == first


def test_a_part_from_an_older_manifest_is_refused_by_name(tmp_path: Path, raw: Path) -> None:
    source = _source(tmp_path, 2)
    out = tmp_path / "out"
    _partitioned(source, raw, out)
    nifti(raw / "imagesTr" / "liver_07.nii.gz", ct_volume(seed=7))  # a case added since
    with pytest.raises(PartsNotReady, match="earlier manifest"):
        _join(source, raw, out)


XRAY = "reader: {kind: image_folder, root: images}\nlabels: {normal: normal, pneumonia: pneumonia}\n"


def test_a_2d_image_folder_in_three_parts_joins_to_one_run(tmp_path: Path) -> None:
    """2D: a sample is an image; a truncated PNG, a byte duplicate and an unknown class among them."""
    raw = tmp_path / "raw" / "xr"
    for i in range(12):
        photo(raw / "images" / ("normal" if i % 2 else "pneumonia") / f"img{i:02d}.png", seed=i, rgb=False)
    (raw / "images/normal/copy.png").write_bytes((raw / "images/normal/img01.png").read_bytes())
    photo(raw / "images/other/img99.png", seed=99, rgb=False)
    broken = raw / "images/pneumonia/img04.png"
    broken.write_bytes(broken.read_bytes()[:200])
    one_report = normalize_source(entry(tmp_path, "xr", "2d_cls", XRAY), raw, scan(raw), tmp_path / "one")
    three = entry(tmp_path, "xr", "2d_cls", XRAY, partitions="3")
    out = tmp_path / "three"
    reports = _partitioned(three, raw, out)
    assert all(r.inputs for r in reports) and sum(r.inputs for r in reports) == 14
    joined = _join(three, raw, out)
    for table in ("normalized", "quarantine"):
        assert _table(out / table / "xr.parquet") == _table(tmp_path / "one" / table / "xr.parquet")
    assert set(joined.by_reason) == {"duplicate_image", "unknown_label", "truncated"} and joined.kept == 11
    assert _images(out) == _images(tmp_path / "one") and joined.counters == one_report.counters


def test_a_partitioned_2d_dataset_holding_dicom_fails_naming_why(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "xr"
    photo(raw / "images/normal/a.png", seed=1, rgb=False)
    dicom_file(raw / "images/normal/b.dcm", np.full((16, 16), 300))
    source = entry(tmp_path, "xr", "2d_cls", XRAY, partitions="2")
    with pytest.raises(ValueError, match="holds DICOM images.*remove `partitions`"):
        _partitioned(source, raw, tmp_path / "out")


def test_partitions_are_refused_for_readers_that_read_the_dataset_in_one_step(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="partitions: 4 needs a reader that reads cases one by one"):
        entry(
            tmp_path,
            "skin",
            "2d_seg",
            "reader: {kind: mask_pairs}",
            partitions="4",
        )
    assert _source(tmp_path, 1).partitions == 1
    assert entry(tmp_path, "plain", "3d_seg", BODY).partitions == 1  # the default: one step, as before


PARTS = [dg.AssetKey(["normalized", "liver", f"p{i:03d}"]) for i in range(3)]
JOIN = dg.AssetKey(["normalized", "liver"])


@pytest.fixture
def dagster_env(tmp_path: Path, raw: Path, monkeypatch) -> list:
    """A test catalog holding one entry with 3 partitions; the assets of its source and its parts."""
    from gmai_pipeline.defs import normalize as normalize_defs
    from gmai_pipeline.defs import sources as sources_defs

    catalog = [_source(tmp_path, 3)]  # writes tmp_path/catalog/liver.yaml
    monkeypatch.setenv("GMAI_CATALOG_DIR", str(tmp_path / "catalog"))  # what build_definitions loads
    return [*sources_defs.build_defs(catalog).assets, *normalize_defs.build_defs(catalog).assets]


def _storage(tmp_path: Path) -> dict:
    from storage_fixtures import storage_at

    return {"storage": storage_at(tmp_path / "out", raw_root=tmp_path / "raw")}


def test_definitions_run_the_parts_as_steps_and_join_them(tmp_path: Path, raw: Path, dagster_env) -> None:
    """Definitions load with a partitioned entry, the release job holds its parts, a run builds the union."""
    from gmai_pipeline.definitions import build_definitions

    out = tmp_path / "out"
    job = build_definitions().resolve_job_def("build_dataset_job")  # beside generation's shard partitions
    assert {*PARTS, JOIN} <= set(job.asset_layer.selected_asset_keys)
    result = dg.materialize(
        dagster_env, selection=[dg.AssetKey(["source", "liver"]), *PARTS, JOIN], resources=_storage(tmp_path)
    )
    assert result.success
    (verdict,) = result.get_asset_check_evaluations()
    assert verdict.check_name == "in_release" and verdict.passed, verdict.description
    assert verdict.metadata["inputs_accounted"].value == "passed"
    assert {*PARTS, JOIN} <= {e.asset_key for e in result.get_asset_materialization_events()}
    rows = pq.read_table(out / "normalized" / "liver.parquet").num_rows
    assert rows == len(_table(_unpartitioned(tmp_path, raw)[0] / "normalized" / "liver.parquet")) and rows
    assert not (out / "failures" / "liver.json").exists()


def test_a_part_whose_reader_raised_leaves_the_dataset_out_naming_the_reason(
    tmp_path: Path, dagster_env, monkeypatch
) -> None:
    from gmai_pipeline import normalize as normalize_module

    original = normalize_module.READERS["msd"]

    def buggy(ctx, opts):
        if ctx.part == (1, 3):
            raise ValueError("reader bug in one part")
        yield from original(ctx, opts)

    monkeypatch.setitem(normalize_module.READERS, "msd", buggy)
    source = dg.AssetKey(["source", "liver"])
    result = dg.materialize(
        dagster_env, selection=[source, *PARTS, JOIN], raise_on_error=False, resources=_storage(tmp_path)
    )
    done = {
        e.asset_key: e.step_materialization_data.materialization
        for e in result.get_asset_materialization_events()
    }
    assert "reader bug in one part" in str(done[PARTS[1]].metadata["failure"].value)
    assert "failure" not in done[PARTS[0]].metadata and "failure" not in done[PARTS[2]].metadata
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["in_release"].passed
    assert "normalized/liver/p001 failed" in checks["in_release"].description
    assert "reader bug in one part" in (tmp_path / "out" / "failures" / "liver.json").read_text()
    assert not result.success  # no annotations in this run to name it: the join's step fails
