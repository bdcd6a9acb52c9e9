"""Decontamination: exact near-dup index, matching by each method, whole-volume removal, the blocking check."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage
from neardup_reference import brute_force
from PIL import Image
from storage_fixtures import storage_at

from gmai_pipeline import decontaminate as dc
from gmai_pipeline import neardup
from gmai_pipeline.defs import decontam
from gmai_pipeline.schemas import DECONTAMINATED_SCHEMA, NORMALIZED_SCHEMA
from gmai_pipeline.storage import OutputLayout, md5_bytes

DATA = Path(skimage.__file__).parent / "data"


# ------------------------------------------------------------------ near-duplicate index


def _pairs(m: neardup.Matches) -> set[tuple[int, int, int]]:
    return set(zip(m.query.tolist(), m.index.tolist(), m.distance.tolist(), strict=True))


def _clustered(rng: np.random.Generator, n: int, centres: np.ndarray, max_flip: int) -> np.ndarray:
    """Hashes near a few centres (so there are many true near pairs), the rest uniform."""
    out = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, dtype=np.int64).view(np.uint64)
    near = rng.random(n) < 0.6
    for i in np.flatnonzero(near):
        v = int(centres[rng.integers(len(centres))])
        for b in rng.choice(64, int(rng.integers(0, max_flip + 1)), replace=False):
            v ^= 1 << int(b)
        out[i] = v
    return out


CASES = [(d, m) for d in (0, 1, 3, 6, 10) for m in (None, 1, 2, 3, 0) if m in (None, 0) or d // m <= 3]


@pytest.mark.parametrize(("d", "bands"), CASES)  # bands 0: d + 1 bands (exact band lookup)
def test_multi_index_equals_brute_force(d: int, bands: int | None):
    rng = np.random.default_rng(d * 10 + (bands or 9))
    centres = rng.integers(0, 2**63, 40, dtype=np.int64).view(np.uint64)
    index = _clustered(rng, 3000, centres, 8)
    queries = _clustered(rng, 700, centres, 8)
    m = d + 1 if bands == 0 else bands
    got = neardup.MultiIndex(index.view(np.int64), d, bands=m).query(queries.view(np.int64))
    want = brute_force(index, queries, d)
    assert len(want) > 0 and _pairs(got) == _pairs(want)


def test_search_indexes_the_larger_side_with_the_same_answer():
    rng = np.random.default_rng(1)
    centres = rng.integers(0, 2**63, 10, dtype=np.int64).view(np.uint64)
    small, large = _clustered(rng, 200, centres, 6), _clustered(rng, 5000, centres, 6)
    want = _pairs(brute_force(large, small, 6))
    assert _pairs(neardup.search(large, small, 6)) == want
    flipped = neardup.search(small, large, 6)  # index=small, queries=large: swapped internally
    assert {(i, q, dd) for q, i, dd in _pairs(flipped)} == want
    assert len(neardup.search(large[:0], small, 6)) == 0


def test_planted_flips_are_all_found_and_far_ones_are_not():
    rng = np.random.default_rng(2)
    index = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 20000, dtype=np.int64)
    pos = rng.choice(len(index), 300, replace=False)
    flips = np.arange(300) % 9  # 0..8 bits; threshold 6
    queries = []
    for p, f in zip(pos, flips, strict=True):
        v = int(index[p].view(np.uint64))
        for b in rng.choice(64, int(f), replace=False):
            v ^= 1 << int(b)
        queries.append(v)
    found = _pairs(neardup.search(index, np.array(queries, dtype=np.uint64), 6))
    hit = {(q, int(i)) for q, i, _ in found}
    for q, (p, f) in enumerate(zip(pos, flips, strict=True)):
        assert ((q, int(p)) in hit) == (f <= 6)


def test_choose_bands_prefers_wider_bands_for_large_indexes():
    assert neardup.choose_bands(100, 6) >= neardup.choose_bands(1_000_000, 6)
    assert 1 <= neardup.choose_bands(1_000_000, 6) <= 7


# ------------------------------------------------------------------ a small world: training store + benchmarks


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg(img: Image.Image, quality: int = 75) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _open(name: str) -> Image.Image:
    img = Image.open(DATA / name)
    img.load()
    return img


def _row(dataset: str, source_path: str, image: str, md5: str, img: Image.Image, **kw) -> dict:
    return {
        "sample_id": f"2d#cls#ct#{dataset}#{source_path.replace('/', '#')}" + kw.pop("suffix", ""),
        "dataset": dataset, "source_path": source_path, "slice_axis": kw.get("slice_axis"),
        "slice_index": kw.get("slice_index"), "split": "train", "image": image, "image_md5": md5,
        "width": img.width, "height": img.height, "modality": "CT", "label": "x", "department": "Radiology",
        "task_type": "2d_cls", "clinical_task": "Disease Diagnosis", "bbox": kw.get("bbox"),
    }  # fmt: skip


def _store(root: Path, rel: str, data: bytes) -> str:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
    return md5_bytes(data)


def make_world(out: Path, bench_root: Path) -> dict:
    """Training data in two normalized tables and benchmarks that copy some of it.

    vol_ds: case_01 (3 axial slices from camera) and case_02 (2 slices from moon).
    img_ds: retina (two boxes -> two rows), ihc, coins, astronaut-free pictures.
    Benchmarks: GMAI-MMBench TSV (slice 1 of case_01 as JPEG, ihc resized 80% as JPEG, two distinct
    pictures, a back-reference); OmniMedVQA original (exact retina bytes, coins re-saved losslessly,
    one distinct picture).
    """
    layout = OutputLayout(out)
    vol_rows, img_rows, slices = [], [], {}
    camera, moon = _open("camera.png"), _open("moon.png")
    for case, base, n in (("case_01.nii.gz", camera, 3), ("case_02.nii.gz", moon, 2)):
        for k in range(n):
            # the slices differ enough that only slice 1 itself is within the threshold
            sl = (
                base.crop((0, 0, 400, 400)).transpose(Image.Transpose.ROTATE_90)
                if k != 1
                else base.crop((4, 0, 404, 400))
            )
            sl = sl.transpose(Image.Transpose.FLIP_TOP_BOTTOM) if k == 2 else sl
            rel = f"images/3d/seg/ct/vol_ds/{case}_z{k:03d}.png"
            md5 = _store(out, rel, _png(sl))
            slices[(case, k)] = sl
            vol_rows.append(
                _row("vol_ds", case, rel, md5, sl, slice_axis="z", slice_index=k, suffix=f"#z{k}")
            )
    pictures = {}
    for name in ("retina.jpg", "ihc.png", "coins.png", "cell.png"):
        data = (DATA / name).read_bytes()
        rel = f"images/2d/cls/ct/img_ds/{name}"
        md5 = _store(out, rel, data)
        pictures[name] = (_open(name), data)
        boxes = [[0, 0, 10, 10], [5, 5, 20, 20]] if name == "retina.jpg" else [None]
        for j, box in enumerate(boxes):
            img_rows.append(
                _row("img_ds", name, rel, md5, pictures[name][0], bbox=box, suffix=f"#{j}" if box else "")
            )
    for name, rows in (("vol_ds", vol_rows), ("img_ds", img_rows)):
        layout.normalized(name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=NORMALIZED_SCHEMA), layout.normalized(name))

    ihc = pictures["ihc.png"][0]
    ihc_small = ihc.resize((round(ihc.width * 0.8), round(ihc.height * 0.8)), Image.Resampling.BILINEAR)
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    tsv_images = [
        _jpeg(slices[("case_01.nii.gz", 1)]),
        _jpeg(ihc_small),
        _jpeg(_open("astronaut.png")),
        _jpeg(_open("chelsea.png")),
    ]
    (bench_root / "GMAI-MMBench").mkdir(parents=True)
    with open(bench_root / "GMAI-MMBench" / "GMAI-MMBench_VAL.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["index", "image", "question", "A", "B", "answer", "category"])
        for i, data in enumerate(tsv_images):
            w.writerow([i, b64(data), "q?", "a", "b", "A", "CT"])
        w.writerow([len(tsv_images), "2", "again?", "a", "b", "B", "CT"])
    omni = bench_root / "OmniMedVQA"
    coins_resaved = _png(pictures["coins.png"][0], compress_level=1)
    assert md5_bytes(coins_resaved) != md5_bytes(pictures["coins.png"][1])
    files = {"Images/S/r.jpg": pictures["retina.jpg"][1], "Images/S/c.png": coins_resaved,
             "Images/S/h.png": _png(_open("horse.png"))}  # fmt: skip
    for rel, data in files.items():
        (omni / rel).parent.mkdir(parents=True, exist_ok=True)
        (omni / rel).write_bytes(data)
    qa = [{"question_id": f"S_{i}", "question": "?", "gt_answer": "a", "option_A": "a", "image_path": rel}
          for i, rel in enumerate(files)]  # fmt: skip
    (omni / "QA_information" / "Open-access").mkdir(parents=True)
    (omni / "QA_information" / "Open-access" / "S.json").write_text(json.dumps(qa))
    return {
        "removed": {
            ("vol_ds", "case_01.nii.gz"): ("GMAI-MMBench_VAL", "0", "dhash"),
            ("img_ds", "ihc.png"): ("GMAI-MMBench_VAL", "1", "dhash"),
            ("img_ds", "retina.jpg"): ("OmniMedVQA", "S_0", "md5"),
            ("img_ds", "coins.png"): ("OmniMedVQA", "S_1", "pixel_md5"),
        },
        "kept": {("vol_ds", "case_02.nii.gz"), ("img_ds", "cell.png")},
    }


def _run_domain(out: Path, bench_root: Path, matcher=None) -> tuple[OutputLayout, dc.DecontaminationResult]:
    layout = OutputLayout(out)
    dc.union_normalized(layout, ["vol_ds", "img_ds", "not_materialized"])
    report = dc.hash_benchmarks(bench_root, layout, workers=1)
    assert not report.problems and report.images == {"GMAI-MMBench_VAL": 4, "OmniMedVQA": 3}
    train, _ = dc.hash_training_images(layout.annotations, layout, workers=1)
    bench = dc.read_hashes(layout.benchmark_hashes)
    matches = (matcher or dc.find_matches)(train, bench)
    return layout, dc.apply_matches(layout.annotations, matches, layout)


def test_each_method_catches_its_copy_and_whole_volumes_go(tmp_path: Path):
    world = make_world(tmp_path / "out", tmp_path / "bench")
    layout, result = _run_domain(tmp_path / "out", tmp_path / "bench")
    report = pq.read_table(layout.decontamination_report).to_pandas()
    kept = pq.read_table(layout.decontaminated).to_pandas()
    got = {(r.dataset, r.source_path): (r.benchmark, r.item_id, r.method) for r in report.itertuples()}
    assert got == world["removed"]
    assert set(zip(kept.dataset, kept.source_path, strict=True)) == world["kept"]
    # every slice of case_01 is removed, only slice 1 matched itself
    vol = report[report.source_path == "case_01.nii.gz"].sort_values("sample_id")
    assert len(vol) == 3 and vol["direct"].tolist() == [False, True, False]
    assert set(vol["matched_image"]) == {"images/3d/seg/ct/vol_ds/case_01.nii.gz_z001.png"}
    assert (report.loc[report.method == "dhash", "distance"] <= dc.DEFAULT_THRESHOLD).all()
    assert len(report[report.source_path == "retina.jpg"]) == 2  # both boxes of the image
    assert result.kept == len(kept) == 3 and result.removed == len(report) == 7
    assert result.removed_by_method == {"dhash": 4, "md5": 2, "pixel_md5": 1}
    assert pq.read_schema(layout.decontaminated).equals(DECONTAMINATED_SCHEMA)  # + the generation shard
    assert dc.overlap(layout).ok
    png = dc.preview(layout, report)
    assert png is not None and Image.open(io.BytesIO(png)).size[1] > 2 * dc.THUMB_PX


def test_missed_matches_are_caught_by_the_overlap_check(tmp_path: Path):
    make_world(tmp_path / "out", tmp_path / "bench")
    layout, result = _run_domain(
        tmp_path / "out", tmp_path / "bench", matcher=lambda t, b: dc.find_matches(t, b)[:0]
    )
    assert result.removed == 0
    ov = dc.overlap(layout)
    assert not ov.ok and len(ov.md5) == 1 and len(ov.pixel_md5) == 2  # retina bytes; retina + coins pixels


def test_training_hashes_are_cached(tmp_path: Path):
    make_world(tmp_path / "out", tmp_path / "bench")
    layout = OutputLayout(tmp_path / "out")
    dc.union_normalized(layout, ["vol_ds", "img_ds"])
    first, c1 = dc.hash_training_images(layout.annotations, layout, workers=2)
    second, c2 = dc.hash_training_images(layout.annotations, layout, workers=2)
    assert c1 == {"images": 9, "cached": 0, "computed": 9, "errors": 0}
    assert c2 == {"images": 9, "cached": 9, "computed": 0, "errors": 0}
    cols = ["image_md5", "pixel_md5", "dhash", "phash"]
    a, b = first[cols].sort_values("image_md5"), second[cols].sort_values("image_md5")
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_parallel_map_keeps_order():
    assert list(dc.parallel_map(abs, range(-500, 0), workers=2, chunksize=7)) == list(range(500, 0, -1))


def test_distinct_images_within_threshold_of_nothing():
    names = ["camera.png", "moon.png", "coins.png", "astronaut.png", "retina.jpg", "ihc.png", "horse.png"]
    hashed = [dc.hash_image(_png(_open(n))) for n in names]
    frame = pd.DataFrame({"image_md5": [h.md5 for h in hashed], "pixel_md5": [h.pixel_md5 for h in hashed],
                          "dhash": pd.array([h.dhash for h in hashed], dtype="Int64"),
                          "phash": pd.array([h.phash for h in hashed], dtype="Int64")})  # fmt: skip
    bench = frame.rename(columns={"image_md5": "md5"}).assign(benchmark="B", item_id=names)
    assert len(dc.find_matches(frame.iloc[:4], bench.iloc[4:])) == 0
    assert len(dc.find_matches(frame, bench)) == len(names)  # and each matches itself


# ------------------------------------------------------------------ Dagster: the blocking check


@dg.asset(deps=[decontam.DECONTAMINATED])
def downstream_of_decontaminated() -> None:
    """Stands in for the generation stage."""


def _materialize(out: Path, bench: Path, monkeypatch: pytest.MonkeyPatch) -> dg.ExecuteInProcessResult:
    sources = [SimpleNamespace(name="vol_ds"), SimpleNamespace(name="img_ds")]
    assets = [decontam.build_annotations(sources), decontam.benchmark_hashes, decontam.decontaminated,
              downstream_of_decontaminated]  # fmt: skip
    return dg.materialize(
        assets,
        raise_on_error=False,
        run_config={"ops": {"decontaminated": {"config": {"workers": 1}}}},
        resources={"storage": storage_at(out, benchmark_root=bench)},
    )


def _check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = [
        e for e in result.get_asset_check_evaluations() if e.asset_key == decontam.DECONTAMINATED
    ]
    return evaluation


def test_blocking_check_passes_and_downstream_runs(output_root: Path, tmp_path: Path, monkeypatch):
    make_world(output_root, tmp_path / "bench")
    result = _materialize(output_root, tmp_path / "bench", monkeypatch)
    assert result.success and _check(result).passed
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert dg.AssetKey("downstream_of_decontaminated") in materialized
    md = next(
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key == decontam.DECONTAMINATED
    )
    assert md["removed_rows"].value == 7 and md["kept_rows"].value == 3
    assert "data:image/png;base64," in md["matched_pairs_preview"].value
    bh = next(
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key == decontam.BENCHMARK_HASHES
    )
    assert "VQA-RAD" in bh["benchmarks_not_present_skipped"].value


def test_forced_overlap_fails_the_check_and_stops_downstream(output_root: Path, tmp_path: Path, monkeypatch):
    make_world(output_root, tmp_path / "bench")
    real = dc.find_matches
    monkeypatch.setattr(dc, "find_matches", lambda train, bench, *a, **k: real(train, bench)[:0])
    result = _materialize(output_root, tmp_path / "bench", monkeypatch)
    evaluation = _check(result)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["md5_overlap"].value == 1
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert decontam.DECONTAMINATED in materialized
    assert dg.AssetKey("downstream_of_decontaminated") not in materialized
    assert not result.success


# ------------------------------------------------------------------ end to end on the demo


@pytest.mark.slow
def test_demo_planted_duplicates_removed_and_nothing_else(storage, output_root: Path):
    from gmai_pipeline.catalog import load_catalog
    from gmai_pipeline.defs import normalize, sources
    from gmai_pipeline.demo import PLANTED

    demo = [s for s in load_catalog() if s.demo]
    defs = dg.Definitions.merge(
        sources.build_defs(demo), normalize.build_defs(demo), decontam.build_defs(demo)
    )
    result = dg.materialize(list(defs.assets), raise_on_error=False, resources={"storage": storage})
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert _check(result).passed
    layout = OutputLayout(output_root)
    report = pq.read_table(layout.decontamination_report).to_pandas()
    methods = {"md5": "md5", "pixel": "pixel_md5", "phash": "dhash"}  # PLANTED's names -> ours
    want = {(p["training_dataset"], p["source_path"]): (p["benchmark"], p["item_id"], methods[p["method"]])
            for p in PLANTED}  # fmt: skip
    direct = report[report["direct"]]
    got = {(r.dataset, r.source_path): (r.benchmark, r.item_id, r.method) for r in direct.itertuples()}
    assert got == want
    assert set(zip(report.dataset, report.source_path, strict=True)) == set(want)  # no false positives
    annotations = pq.read_table(layout.annotations).num_rows
    assert pq.read_table(layout.decontaminated).num_rows == annotations - len(report)


def test_no_benchmarks_keeps_everything_and_unhashable_images_are_reported(tmp_path: Path):
    make_world(tmp_path / "out", tmp_path / "bench")
    layout = OutputLayout(tmp_path / "out")
    rows = dc.union_normalized(layout, ["vol_ds", "img_ds"])
    assert rows == {"vol_ds": 5, "img_ds": 5}
    broken = pq.read_table(layout.normalized("img_ds")).to_pylist()[-1]["image"]
    (layout.root / broken).write_bytes(b"not an image any more")
    empty_root = tmp_path / "no_benchmarks"
    report = dc.hash_benchmarks(empty_root, layout, workers=1)
    assert report.images == {} and len(report.missing) == len(dc.present(empty_root)[1])
    train, counts = dc.hash_training_images(layout.annotations, layout, workers=1)
    assert counts["errors"] == 1 and "cell.png" in train["error"].dropna().iloc[0]
    found = dc.find_matches(train, dc.read_hashes(layout.benchmark_hashes))
    assert found.empty
    result = dc.apply_matches(
        layout.annotations, dc.strongest(pd.concat([found, dc.unhashable(train)])), layout
    )
    assert result.kept == 9 and result.removed_by_method == {"unhashable": 1}
    assert dc.overlap(layout).ok


def test_skewed_buckets_verified_in_slices_stay_exact(monkeypatch: pytest.MonkeyPatch):
    """Real hashes crowd a few buckets; candidates are verified in bounded slices with the same answer."""
    monkeypatch.setattr(neardup, "CANDIDATE_BUDGET", 37)
    rng = np.random.default_rng(3)
    centres = rng.integers(0, 2**63, 5, dtype=np.int64).view(np.uint64)
    index = np.concatenate([centres] * 200 + [rng.integers(0, 2**63, 1000, dtype=np.int64).view(np.uint64)])
    queries = np.concatenate([centres, rng.integers(0, 2**63, 100, dtype=np.int64).view(np.uint64)])
    for m in (7, 4, 3):
        got = neardup.MultiIndex(index, 6, bands=m).query(queries)
        assert _pairs(got) == _pairs(brute_force(index, queries, 6)) and len(got) >= 1000
