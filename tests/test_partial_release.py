"""Partial downloads and bad datasets (README, "Partial downloads and failing datasets").

Nobody has all 219 datasets: an absent one is listed with its download URL, never a failure; a
present one that fails (its scan or reader raises, every input is quarantined, its folder is empty,
its manifest is missing) is left out and named, and the release is built from the others.

The fast tests drive the source/normalized/annotations layer on tiny image folders; the two slow
ones run `build_dataset_job` end to end: the full catalog with only the demo present, and a small
catalog (two demo datasets) beside one dataset of each kind of failure the README lists under
"Partial downloads and failing datasets".
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml
from normalize_fixtures import make_source, pattern, write_image
from storage_fixtures import storage_at

from gmai_pipeline import normalize as normalize_module
from gmai_pipeline.availability import (
    clear_failure,
    failure_path,
    read_failure,
    record_failure,
    take_inventory,
)
from gmai_pipeline.catalog import load_catalog
from gmai_pipeline.defs import decontam
from gmai_pipeline.defs.normalize import IN_RELEASE, build_normalized_asset
from gmai_pipeline.defs.resources import PipelineStorage
from gmai_pipeline.defs.sources import build_sources_asset
from gmai_pipeline.settings import DEMO_CATALOG_DIR
from gmai_pipeline.storage import OutputLayout

# stage3_mix is made with the training stages (the stage II model judges its candidates): not in build_dataset_job
RELEASE = ("decontaminated", "instruction_shards", "stage1_mix", "stage2_mix", "dataset_report")
GATE = dg.AssetCheckKey(decontam.ANNOTATIONS, decontam.RELEASE_CHECK)


def _good(raw: Path, name: str, n: int = 4) -> None:
    for i in range(n):
        write_image(raw / name / ("a" if i % 2 else "b") / f"{i}.png", pattern(16, 16, seed=i))


def _all_bad(raw: Path, name: str) -> None:
    """JPEG names whose bytes are not a JPEG: every input is quarantined `unreadable`."""
    (raw / name / "x").mkdir(parents=True)
    for i in range(3):
        (raw / name / "x" / f"{i}.jpg").write_bytes(b"\xff\xd8 not really" * (i + 1))


def _folder_source(name: str):
    return make_source(name, "2d_cls", {"kind": "image_folder"}, url=f"https://example.org/{name}")


@dg.asset(deps=[decontam.ANNOTATIONS])
def after_annotations() -> dg.MaterializeResult:
    """Stands in for decontaminated and what follows it."""
    return dg.MaterializeResult(metadata={"ran": True})


def _small_graph(sources) -> list:
    return [
        build_sources_asset(sources),
        *(build_normalized_asset(s) for s in sources),
        decontam.build_annotations(sources),
        decontam.build_release_check(sources),
        after_annotations,
    ]


def _materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def _metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _observations(result: dg.ExecuteInProcessResult, key: str) -> list[dict]:
    return [
        {k: v.value for k, v in e.asset_observation_data.asset_observation.metadata.items()}
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION" and e.asset_key.to_user_string() == key
    ]


def _failed_steps(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {
        e.step_key: str(e.event_specific_data.error.message)
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    }


def _check(result: dg.ExecuteInProcessResult, key: dg.AssetCheckKey) -> dg.AssetCheckEvaluation:
    (evaluation,) = [
        e
        for e in result.get_asset_check_evaluations()
        if (e.asset_key, e.check_name) == (key.asset_key, key.name)
    ]
    return evaluation


# --------------------------------------------------------------------------- the inventory (plain Python)


def test_inventory_puts_every_dataset_in_one_list(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", OutputLayout(tmp_path / "out")
    names = ["ok", "gone_but_normalized", "never", "broken", "broken_and_removed", "waiting"]
    for name in ("ok", "broken", "waiting"):
        (raw / name).mkdir(parents=True)
    for name in ("ok", "gone_but_normalized", "broken", "broken_and_removed"):
        out.normalized(name).parent.mkdir(parents=True, exist_ok=True)
        out.normalized(name).write_bytes(b"a table from an earlier run")
    record_failure(out, "broken", "normalize", "the reader raised ValueError: bad header")
    record_failure(out, "broken_and_removed", "source", "scanning failed")

    inv = take_inventory([_folder_source(n) for n in names], raw, out)

    assert inv.included == ["ok", "gone_but_normalized"] and inv.without_raw == ["gone_but_normalized"]
    assert [f.dataset for f in inv.failed] == ["broken"] and "bad header" in inv.failed[0].message
    assert inv.pending == ["waiting"]
    assert [a.dataset for a in inv.absent] == ["never", "broken_and_removed"]  # a removed folder gives it up
    assert inv.absent[0].url == "https://example.org/never" and inv.absent[0].folder == str(raw / "never")


def test_failure_records_are_cleared_by_success_or_by_their_own_stage(tmp_path: Path) -> None:
    out = OutputLayout(tmp_path)
    record_failure(out, "ds", "normalize", "x" * 10_000)
    assert len(read_failure(out, "ds").message) == 2000  # bounded, whatever a reader said
    clear_failure(out, "ds", stage="source")  # a later successful scan does not forgive the reader
    assert read_failure(out, "ds") is not None
    clear_failure(out, "ds")
    assert read_failure(out, "ds") is None and not failure_path(out, "ds").exists()
    failure_path(out, "ds").write_text("{not json")
    assert "unreadable failure record" in read_failure(out, "ds").message  # still keeps it out, and says so


# --------------------------------------------------------------------------- the Dagster layer, small graphs


@pytest.fixture
def raw_root(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    root.mkdir()
    return root


@pytest.fixture
def storage(raw_root: Path, output_root: Path) -> PipelineStorage:
    """The small graphs read `raw_root` through the storage resource (conftest's has the demo's raw root)."""
    return storage_at(output_root, raw_root=raw_root)


def test_absent_datasets_are_reported_with_their_url_and_cost_no_step(storage, raw_root: Path) -> None:
    _good(raw_root, "here")
    sources = [_folder_source("here"), _folder_source("not_downloaded")]
    with dg.instance_for_test() as instance:
        result = dg.materialize(_small_graph(sources), instance=instance, resources={"storage": storage})
        logs = [e.user_message for e in instance.all_logs(result.run_id) if e.dagster_event is None]

    assert result.success
    assert {"source/here", "normalized/here", "annotations", "after_annotations"} <= _materialized(result)
    assert not {"source/not_downloaded", "normalized/not_downloaded"} & _materialized(result)
    skipped = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"}
    assert skipped == {"normalized__not_downloaded"}  # skipped, not launched
    assert not _observations(result, "source/not_downloaded")  # no event per absent dataset: one log line
    (absent_line,) = [m for m in logs if "selected datasets are absent" in m]
    assert (
        f"source/not_downloaded: absent; download https://example.org/not_downloaded -> {raw_root}/not_downloaded/"
        in absent_line
    )

    meta = _metadata(result, "annotations")
    assert meta["datasets"] == 1 and meta["datasets_absent"] == 1 and meta["datasets_failed"] == 0
    assert (
        "| not_downloaded " in meta["absent_datasets"]
        and "https://example.org/not_downloaded" in meta["absent_datasets"]
    )
    assert _check(result, GATE).passed


def test_a_failing_dataset_is_left_out_and_named_while_the_rest_goes_on(
    storage, raw_root: Path, output_root: Path
) -> None:
    _good(raw_root, "good")
    _all_bad(raw_root, "all_bad")
    sources = [_folder_source("good"), _folder_source("all_bad")]
    result = dg.materialize(_small_graph(sources), raise_on_error=False, resources={"storage": storage})

    assert not result.success
    failed = _failed_steps(result)
    assert set(failed) == {f"annotations_{decontam.RELEASE_CHECK}"}  # only the verdict, after everything else
    assert (
        "all_bad" in failed[f"annotations_{decontam.RELEASE_CHECK}"]
        and "none of 3 inputs" in failed[f"annotations_{decontam.RELEASE_CHECK}"]
    )
    assert {"annotations", "after_annotations", "normalized/all_bad"} <= _materialized(result)
    in_release = _check(result, dg.AssetCheckKey(dg.AssetKey(["normalized", "all_bad"]), IN_RELEASE))
    assert not in_release.passed and "left out of the release" in in_release.description
    assert _check(result, dg.AssetCheckKey(dg.AssetKey(["normalized", "good"]), IN_RELEASE)).passed
    annotations = pq.read_table(OutputLayout(output_root).annotations, columns=["dataset"])
    assert set(annotations.column("dataset").to_pylist()) == {"good"}
    meta = _metadata(result, "annotations")
    assert meta["datasets_failed"] == 1 and "| all_bad " in meta["failed_datasets"]
    gate = _check(result, GATE)
    assert not gate.passed and "all_bad" in gate.description


def test_a_failure_fails_its_own_step_when_no_annotations_follows(
    storage, raw_root: Path, output_root: Path
) -> None:
    """Without `annotations` in the run nothing would name it later: the dataset's step fails, loudly."""
    _all_bad(raw_root, "all_bad")
    source = _folder_source("all_bad")
    result = dg.materialize(
        [build_sources_asset([source]), build_normalized_asset(source)],
        raise_on_error=False,
        resources={"storage": storage},
    )
    assert not result.success
    assert "none of 3 inputs" in _failed_steps(result)["normalized__all_bad"]
    assert read_failure(OutputLayout(output_root), "all_bad") is not None


def test_a_missing_manifest_is_named(storage, raw_root: Path) -> None:
    _good(raw_root, "ds")
    source = _folder_source("ds")
    result = dg.materialize(
        [build_normalized_asset(source)], raise_on_error=False, resources={"storage": storage}
    )
    message = _failed_steps(result)["normalized__ds"]
    assert "manifests/ds.parquet is missing" in message and "materialize source/ds first" in message
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == IN_RELEASE and not evaluation.passed


def test_an_empty_folder_is_a_failure_not_an_absence(storage, raw_root: Path) -> None:
    (raw_root / "unpacked_nothing").mkdir()
    _good(raw_root, "good")
    sources = [_folder_source("good"), _folder_source("unpacked_nothing")]
    result = dg.materialize(_small_graph(sources), raise_on_error=False, resources={"storage": storage})
    gate = _failed_steps(result)[f"annotations_{decontam.RELEASE_CHECK}"]
    assert "unpacked_nothing (source" in gate and "holds no file" in gate
    (obs,) = _observations(result, "source/unpacked_nothing")
    assert obs["status"] == "failed" and "holds no file" in obs["error"]
    assert "after_annotations" in _materialized(result)


# --------------------------------------------------------------------------- end to end, build_dataset_job


def _run_build_job(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    from gmai_pipeline.definitions import build_definitions

    return (
        build_definitions()
        .resolve_job_def("build_dataset_job")
        .execute_in_process(instance=instance, raise_on_error=False)
    )


@pytest.mark.slow
def test_full_catalog_with_only_the_demo_present_builds_the_release(output_root: Path) -> None:
    catalog = load_catalog()
    absent = sorted(s.name for s in catalog if not s.demo)
    assert len(absent) >= 200  # the real catalog, not a test one
    with dg.instance_for_test() as instance:
        result = _run_build_job(instance)
        tags = instance.get_run_by_id(result.run_id).tags

    assert result.success, _failed_steps(result)
    assert set(RELEASE) | {"annotations"} <= _materialized(result)
    meta = _metadata(result, "annotations")
    assert meta["datasets"] == len(catalog) - len(absent) and meta["datasets_failed"] == 0
    assert meta["datasets_absent"] == len(absent)
    for s in catalog:
        if not s.demo:
            assert f"| {s.name} " in meta["absent_datasets"], s.name
            assert (s.url or "no URL known") in meta["absent_datasets"], s.name
    assert _check(result, GATE).passed and tags["gmai/datasets_absent"] == str(len(absent))
    skipped = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"}
    assert skipped == {f"normalized__{n}" for n in absent}
    assert not any(e.event_type_value == "STEP_FAILURE" for e in result.all_events)


FAILING = {
    # a missing folder (absent: listed, not failed)
    "never_downloaded": None,
    # every input quarantined
    "all_quarantined": _all_bad,
    # a reader that raises (a reader bug: injected below)
    "reader_raises": _good,
    # present, but nothing was unpacked into it
    "empty_folder": lambda raw, name: (raw / name).mkdir(),
}


@pytest.fixture(scope="module")
def failing_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dg.ExecuteInProcessResult, dict, Path]]:
    """One build_dataset_job over two demo datasets and one dataset of each failure kind."""
    tmp = tmp_path_factory.mktemp("failing")
    catalog, raw, out = tmp / "catalog", tmp / "raw", tmp / "out"
    catalog.mkdir()
    raw.mkdir()
    for demo in ("demo_fundus_folder", "demo_histology_csv"):
        shutil.copy(DEMO_CATALOG_DIR / f"{demo}.yaml", catalog)
    for name, make in FAILING.items():
        entry = {
            "name": name,
            "title": f"test {name}",
            "url": f"https://example.org/{name}",
            "license": "unknown",
            "modality": "X-Ray",
            "department": "Pulmonary Medicine",
            "task_type": "2d_cls",
            "clinical_task": "Disease Diagnosis",
            "reader": {"kind": "image_folder"},
            "provenance": {"source": "tests/test_partial_release.py"},
        }
        (catalog / f"{name}.yaml").write_text(yaml.safe_dump(entry, sort_keys=False))
        if make is not None:
            make(raw, name)

    original = normalize_module.READERS["image_folder"]

    def buggy(ctx, opts):
        if ctx.source.name == "reader_raises":
            raise ValueError("reader bug: unexpected layout")
        return original(ctx, opts)

    with pytest.MonkeyPatch.context() as mp:
        for var, value in {
            "GMAI_CATALOG_DIR": str(catalog),
            "GMAI_RAW_ROOT": str(raw),
            "GMAI_OUTPUT_ROOT": str(out),
            "GMAI_LLM_BACKEND": "template",
        }.items():
            mp.setenv(var, value)
        mp.delenv("GMAI_BENCHMARK_ROOT", raising=False)
        mp.setitem(normalize_module.READERS, "image_folder", buggy)
        with dg.instance_for_test() as instance:
            result = _run_build_job(instance)
            tags = instance.get_run_by_id(result.run_id).tags
        yield result, tags, out


@pytest.mark.slow
def test_the_release_is_built_from_the_datasets_that_work(failing_run) -> None:
    result, tags, out = failing_run
    assert set(RELEASE) | {"annotations", "captions", "vqa", "translations"} <= _materialized(result)
    kept = set(
        pq.read_table(out / "decontaminated.parquet", columns=["dataset"]).column("dataset").to_pylist()
    )
    assert kept == {"demo_fundus_folder", "demo_histology_csv"}
    assert not result.success  # the run's outcome names the failures...
    failed = _failed_steps(result)
    assert list(failed) == [f"annotations_{decontam.RELEASE_CHECK}"]  # ...in one step that nothing depends on
    assert set(tags["gmai/failed_datasets"].split(",")) == {
        "all_quarantined",
        "reader_raises",
        "empty_folder",
    }


@pytest.mark.slow
def test_a_missing_folder_is_listed_as_absent_not_failed(failing_run) -> None:
    result, tags, _ = failing_run
    meta = _metadata(result, "annotations")
    assert meta["datasets_absent"] == 1 and "| never_downloaded " in meta["absent_datasets"]
    assert "https://example.org/never_downloaded" in meta["absent_datasets"]
    assert "never_downloaded" not in _failed_steps(result)[f"annotations_{decontam.RELEASE_CHECK}"]
    assert tags["gmai/datasets_absent"] == "1"


@pytest.mark.slow
def test_a_dataset_whose_every_input_is_quarantined_is_named(failing_run) -> None:
    result, _, out = failing_run
    message = _failed_steps(result)[f"annotations_{decontam.RELEASE_CHECK}"]
    assert "all_quarantined (normalize" in message and "none of 3 inputs could be normalized" in message
    assert pq.read_metadata(out / "quarantine" / "all_quarantined.parquet").num_rows == 3  # kept for the user
    check = _check(result, dg.AssetCheckKey(dg.AssetKey(["normalized", "all_quarantined"]), IN_RELEASE))
    assert not check.passed and "| all_quarantined " in _metadata(result, "annotations")["failed_datasets"]


@pytest.mark.slow
def test_a_reader_that_raises_is_named(failing_run) -> None:
    result, _, out = failing_run
    message = _failed_steps(result)[f"annotations_{decontam.RELEASE_CHECK}"]
    assert "reader_raises (normalize" in message and "ValueError: reader bug: unexpected layout" in message
    check = _check(result, dg.AssetCheckKey(dg.AssetKey(["normalized", "reader_raises"]), IN_RELEASE))
    assert not check.passed and "reader bug" in check.description
    assert "normalized/reader_raises" not in _materialized(result)  # no table could be written
    assert not (out / "normalized" / "reader_raises.parquet").exists()
