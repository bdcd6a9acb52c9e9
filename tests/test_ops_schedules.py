"""Schedules, sensors, jobs and the progress logger, driven with Dagster's test APIs.

The sensor and schedule are tested on a small graph of the same shape as ours (source ->
normalized -> annotations -> partitioned captions -> release -> training), so these tests do not
depend on how far the other stages have got; `test_jobs_on_the_real_graph` checks the real one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from gmai_pipeline import definitions
from gmai_pipeline.catalog import SourceDataset, load_catalog
from gmai_pipeline.defs import decontam, demo_jobs, generation, release, schedules, sensors, training
from gmai_pipeline.defs.common import group_name
from gmai_pipeline.defs.generation import ALL_SHARDS_TAGS, GENERATION_KEYS
from gmai_pipeline.defs.release import RELEASE_KEYS
from gmai_pipeline.defs.resources import PipelineStorage
from gmai_pipeline.defs.training import TRAINING_KEYS
from gmai_pipeline.partitions import SHARD_KEYS
from gmai_pipeline.progress import Progress
from gmai_pipeline.sensing import changed_folders, decode_cursor, fingerprint_folder, scan_raw_root

ROOT = Path(__file__).resolve().parent.parent

SHARDS = dg.StaticPartitionsDefinition(SHARD_KEYS)


def _source(name: str, demo: bool = False) -> SourceDataset:
    return SourceDataset(
        name=name,
        title=name.upper(),
        url=f"https://example.org/{name}",
        license="CC-BY-4.0",
        modality="X-Ray",
        department="Pulmonary Medicine",
        task_type="2d_cls",
        clinical_task="Disease Diagnosis",
        reader={"kind": "image_folder"},
        demo=demo,
        provenance={"source": "test"},
    )


CATALOG = [_source("alpha", demo=True), _source("beta", demo=True), _source("gamma")]


def _toy_assets(catalog: list[SourceDataset]) -> list[dg.AssetsDefinition]:
    """A graph shaped like ours: per-dataset source/normalized, a union, partitioned generation, release, training."""
    made: list[dg.AssetSpec] = []
    for s in catalog:
        made.append(dg.AssetSpec(["source", s.name]))
        made.append(dg.AssetSpec(["normalized", s.name], deps=[["source", s.name]]))
    made.append(dg.AssetSpec("annotations", deps=[["normalized", s.name] for s in catalog]))
    made.append(dg.AssetSpec("benchmark_hashes"))
    made.append(dg.AssetSpec("decontaminated", deps=["annotations", "benchmark_hashes"]))
    specs = [dg.AssetSpec(k, deps=["decontaminated"], partitions_def=SHARDS) for k in ("captions", "vqa")]
    specs.append(dg.AssetSpec("translations", deps=["captions", "vqa"], partitions_def=SHARDS))
    made += specs
    made.append(dg.AssetSpec("release_records", deps=list(GENERATION_KEYS)))
    made += [dg.AssetSpec(k, deps=["release_records"]) for k in ("instruction_shards", "release_annotations")]
    made += [dg.AssetSpec("release_metas", deps=["release_annotations"])]
    made += [dg.AssetSpec("release_images", deps=["release_records"])]
    made += [
        dg.AssetSpec(k, deps=["release_records", "release_images"]) for k in ("stage1_mix", "stage2_mix")
    ]
    made.append(dg.AssetSpec("dataset_report", deps=["release_records", "instruction_shards"]))
    made.append(dg.AssetSpec("gmai_vl_stage1", deps=["stage1_mix"]))
    made.append(dg.AssetSpec("gmai_vl_stage2", deps=["stage2_mix", "gmai_vl_stage1"]))
    made.append(dg.AssetSpec("stage3_scores", deps=["release_records", "gmai_vl_stage2"]))
    made.append(dg.AssetSpec("stage3_mix", deps=["release_records", "release_images", "stage3_scores"]))
    made.append(dg.AssetSpec("gmai_vl_stage3", deps=["stage3_mix", "gmai_vl_stage2"]))
    groups = {s.name: group_name(s) for s in catalog}
    return [_one(spec.replace_attributes(group_name=_group(spec.key, groups))) for spec in made]


def _group(key: dg.AssetKey, per_dataset: dict[str, str]) -> str:
    """The group the real asset with this key is in: the jobs select by group."""
    name = key.path[-1]
    if key.path[0] in ("source", "normalized"):
        return per_dataset[name]
    if name in GENERATION_KEYS:
        return generation.GROUP
    if name in TRAINING_KEYS:
        return training.GROUP
    if name in RELEASE_KEYS:
        return release.GROUP
    return decontam.GROUP


def _jobs(catalog: list[SourceDataset]) -> list[dg.UnresolvedAssetJobDefinition]:
    return [
        *demo_jobs.build_jobs(catalog),
        release.build_dataset_job,
        generation.generate_job,
        training.train_job,
    ]


def _automation(catalog: list[SourceDataset]) -> dg.Definitions:
    return dg.Definitions(
        schedules=[schedules.build_nightly_generation_schedule()],
        sensors=[sensors.build_raw_data_sensor(catalog)],
    )


def _one(spec: dg.AssetSpec) -> dg.AssetsDefinition:
    @dg.multi_asset(specs=[spec], name=spec.key.to_python_identifier())
    def _asset(context):
        shards = len(context.partition_keys) if spec.partitions_def else 0
        return dg.MaterializeResult(metadata={"shards": shards})

    return _asset


def _toy_defs(
    catalog: list[SourceDataset] = CATALOG, storage: PipelineStorage | None = None
) -> dg.Definitions:
    return dg.Definitions.merge(
        dg.Definitions(
            assets=_toy_assets(catalog),
            jobs=_jobs(catalog),
            resources={"storage": storage or PipelineStorage()},
        ),
        _automation(catalog),
    )


def _job_keys(defs: dg.Definitions, name: str) -> set[str]:
    job = defs.resolve_job_def(name)
    return {k.to_user_string() for k in job.asset_layer.selected_asset_keys}


# --- jobs --------------------------------------------------------------------------------------


def test_jobs_select_the_right_assets_on_a_graph_of_our_shape() -> None:
    defs = _toy_defs()
    demo = _job_keys(defs, "demo_job")
    assert {"source/alpha", "normalized/beta", "captions", "dataset_report", "gmai_vl_stage3"} <= demo
    assert "benchmark_hashes" in demo  # a shared input the demo needs, though not downstream of a source
    assert "source/gamma" not in demo and "normalized/gamma" not in demo
    assert _job_keys(defs, "demo_ingest_job") == {
        "source/alpha",
        "source/beta",
        "normalized/alpha",
        "normalized/beta",
    }
    build = _job_keys(defs, "build_dataset_job")
    assert {"source/gamma", "normalized/gamma", "annotations", *GENERATION_KEYS, *RELEASE_KEYS} <= build
    assert not build & set(TRAINING_KEYS)
    assert _job_keys(defs, "generate_job") == set(GENERATION_KEYS)
    assert defs.resolve_job_def("generate_job").partitions_def == SHARDS
    assert _job_keys(defs, "train_job") == set(TRAINING_KEYS)
    assert defs.resolve_job_def("build_dataset_job").tags.items() >= ALL_SHARDS_TAGS.items()


def test_unknown_executor_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMAI_EXECUTOR", "spark")
    with pytest.raises(ValueError, match="GMAI_EXECUTOR"):
        definitions.executor_from_env()


def test_celery_executor_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMAI_EXECUTOR", "celery")
    executor = definitions.executor_from_env()
    assert executor is not None and executor.name == "celery"
    defs = dg.Definitions(assets=_toy_assets(CATALOG), jobs=_jobs(CATALOG), executor=executor)
    assert defs.resolve_job_def("demo_ingest_job").executor_def.name == "celery"


def test_multiprocess_step_processes_start_from_the_prebuilt_location() -> None:
    """The default executor forks its step processes from a forkserver that built the location once:
    `defs()` there hands back what the preload built instead of rebuilding all assets per step."""
    executor = definitions.multiprocess_executor()
    assert executor is not None and executor.name == "multiprocess"
    code = (
        "import gmai_pipeline.step_preload; from gmai_pipeline import definitions; "
        "d = definitions.defs(); assert d is definitions.defs() is definitions._prebuilt; "
        "assert d.get_repository_def().has_job('demo_job'); print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GMAI_CATALOG_DIR": str(ROOT / "assets" / "demo")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.slow
def test_dagster_job_execute_runs_every_step_on_the_default_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dagster job execute` as a user types it, on the default (forkserver, preloaded) executor and the SQLite
    template: every step starts in a process of its own, succeeds and writes its table."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.sqlite.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GMAI_")}
    env.update(
        DAGSTER_HOME=str(home),
        GMAI_OUTPUT_ROOT=str(tmp_path / "out"),
        GMAI_CATALOG_DIR=str(ROOT / "assets" / "demo"),
        PYTHONPATH=str(ROOT),
    )
    dagster = Path(sys.executable).parent / "dagster"
    cmd = [str(dagster), "job", "execute", "-m", "gmai_pipeline.definitions", "-j", "demo_ingest_job"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.run_config.get("execution", {}) == {}  # nothing for the user to configure
        events = [r.dagster_event for r in instance.all_logs(run.run_id) if r.dagster_event]
    started = {e.step_key for e in events if e.event_type_value == "STEP_WORKER_STARTED"}
    succeeded = {e.step_key for e in events if e.event_type_value == "STEP_SUCCESS"}
    assert started == succeeded and "sources" in started and len(started) > 1
    tables = {p.stem for p in (tmp_path / "out" / "normalized").glob("*.parquet")}
    assert {f"normalized__{name}" for name in tables} == succeeded - {"sources"}


def test_jobs_on_the_real_graph() -> None:
    """Every job resolves on the real code location and holds the keys it is meant to (once the stages exist)."""
    defs = definitions.defs()

    graph_keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    missing = [
        k
        for k in (*GENERATION_KEYS, *RELEASE_KEYS, *TRAINING_KEYS, "annotations", "decontaminated")
        if k not in graph_keys
    ]
    assert not missing, f"the graph lacks {missing}"
    for name in ("demo_job", "demo_ingest_job", "build_dataset_job", "generate_job", "train_job"):
        assert _job_keys(defs, name), f"{name} selects nothing"
    assert set(GENERATION_KEYS) == _job_keys(defs, "generate_job")
    assert defs.resolve_job_def("generate_job").partitions_def is not None
    assert set(TRAINING_KEYS) == _job_keys(defs, "train_job")
    build = _job_keys(defs, "build_dataset_job")
    assert set(RELEASE_KEYS) <= build and not build & set(TRAINING_KEYS)
    sources = {k for k in graph_keys if k.startswith("source/")}
    assert sources <= build
    demo = _job_keys(defs, "demo_job")
    demo_sources = {k for k in _job_keys(defs, "demo_ingest_job") if k.startswith("source/")}
    assert demo_sources and demo_sources == {k for k in demo if k.startswith("source/")}
    assert {"benchmark_hashes", "decontaminated", *GENERATION_KEYS, *RELEASE_KEYS, *TRAINING_KEYS} <= demo
    assert defs.resolve_sensor_def("raw_data_sensor").default_status == dg.DefaultSensorStatus.STOPPED
    assert (
        defs.resolve_schedule_def("nightly_generation_backfill").default_status
        == dg.DefaultScheduleStatus.STOPPED
    )


# --- schedule ----------------------------------------------------------------------------------


def test_nightly_schedule_requests_every_generation_shard() -> None:
    defs = _toy_defs()
    schedule = defs.resolve_schedule_def("nightly_generation_backfill")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.job_name == "generate_job"
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime(2026, 11, 28, 2, 0, tzinfo=UTC),
            repository_def=defs.get_repository_def(),
        )
        result = schedule.evaluate_tick(context)
    requests = result.run_requests
    assert [r.partition_key for r in requests] == SHARD_KEYS
    assert len({r.run_key for r in requests}) == len(SHARD_KEYS)
    assert all(r.run_key.startswith("2026-11-28-") for r in requests)
    assert all(r.tags["gmai/trigger"] == "nightly_generation_backfill" for r in requests)


def test_nightly_schedule_runs_one_shard(tmp_path: Path) -> None:
    """A scheduled request executes: the partition key reaches the generation assets."""
    seen: list[str] = []

    @dg.asset(key="captions", partitions_def=SHARDS, group_name=generation.GROUP)
    def captions(context) -> None:
        seen.append(context.partition_key)

    defs = dg.Definitions.merge(
        dg.Definitions(assets=[captions], jobs=[generation.generate_job]), _automation([])
    )
    request = next(
        iter(
            defs.resolve_schedule_def("nightly_generation_backfill")
            .evaluate_tick(
                dg.build_schedule_context(
                    scheduled_execution_time=datetime(2026, 11, 28, 2, 0, tzinfo=UTC),
                    repository_def=defs.get_repository_def(),
                )
            )
            .run_requests
        )
    )
    result = defs.resolve_job_def("generate_job").execute_in_process(partition_key=request.partition_key)
    assert result.success and seen == [SHARD_KEYS[0]]


# --- sensor ------------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _tick(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    cursor: str | None,
    storage: PipelineStorage | None = None,
):
    """One tick with the location's resources (as the daemon passes them), `storage` in place of its own."""
    sensor = defs.resolve_sensor_def("raw_data_sensor")
    resources = {**(defs.resources or {}), **({"storage": storage} if storage else {})}
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources)
    return sensor.evaluate_tick(context)


@pytest.fixture
def raw_root(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    root.mkdir()
    return root


def _storage(raw_root: Path) -> PipelineStorage:
    """The sensor reads the raw root from the storage resource, as the code location binds it."""
    return PipelineStorage(raw_root=str(raw_root), output_root=str(raw_root.parent / "out"))


def test_sensor_fires_for_new_and_changed_folders_only(raw_root: Path) -> None:
    defs = _toy_defs(storage=_storage(raw_root))
    with dg.instance_for_test() as instance:
        first = _tick(defs, instance, None)
        assert not first.run_requests  # nothing under the raw root yet

        _write(raw_root / "alpha" / "normal" / "a.png", b"png-bytes")
        _write(raw_root / "not_in_catalog" / "x.png", b"ignored")
        second = _tick(defs, instance, first.cursor)
        assert len(second.run_requests) == 1
        request = second.run_requests[0]
        keys = {k.to_user_string() for k in request.asset_selection}
        assert {
            "source/alpha",
            "normalized/alpha",
            "annotations",
            "captions",
            "translations",
            "dataset_report",
        } <= keys
        assert not keys & set(TRAINING_KEYS)
        assert not any("beta" in k or "gamma" in k or "not_in_catalog" in k for k in keys)
        assert request.tags["gmai/datasets"] == "alpha"
        assert request.tags.items() >= ALL_SHARDS_TAGS.items()
        assert set(decode_cursor(second.cursor)) == {"alpha"}

        third = _tick(defs, instance, second.cursor)  # nothing changed
        assert not third.run_requests
        assert third.cursor == second.cursor

        _write(raw_root / "alpha" / "normal" / "a.png", b"png-bytes, edited")
        fourth = _tick(defs, instance, third.cursor)
        assert [r.tags["gmai/datasets"] for r in fourth.run_requests] == ["alpha"]
        assert fourth.run_requests[0].run_key != request.run_key

        _write(raw_root / "beta" / "b.png", b"b")
        _write(raw_root / "alpha" / "extra.png", b"c")
        fifth = _tick(defs, instance, fourth.cursor)
        assert [r.tags["gmai/datasets"] for r in fifth.run_requests] == ["alpha,beta"]  # one run for both

        assert not _tick(defs, instance, fifth.cursor).run_requests


def test_sensor_skips_a_first_seen_folder_already_materialized(raw_root: Path) -> None:
    defs = _toy_defs(storage=_storage(raw_root))
    _write(raw_root / "alpha" / "a.png", b"a")
    old = time.time() - 3600
    os.utime(raw_root / "alpha" / "a.png", (old, old))
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(["source", "alpha"]))
        result = _tick(defs, instance, None)
        assert not result.run_requests
        assert set(decode_cursor(result.cursor)) == {"alpha"}


def test_sensor_request_executes(raw_root: Path) -> None:
    """The requested selection (mixed partitioned and unpartitioned assets, range tags) runs in one go."""
    defs = _toy_defs(storage=_storage(raw_root))
    _write(raw_root / "gamma" / "g.png", b"g")
    with dg.instance_for_test() as instance:
        request = _tick(defs, instance, None).run_requests[0]
        result = dg.materialize(
            _toy_assets(CATALOG),
            selection=request.asset_selection,
            instance=instance,
            tags=request.tags,
        )
        assert result.success
        done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert {"source/gamma", "normalized/gamma", "captions", "dataset_report"} <= done


def test_sensor_is_off_by_default() -> None:
    assert _toy_defs().resolve_sensor_def("raw_data_sensor").default_status == dg.DefaultSensorStatus.STOPPED


# --- sensing -----------------------------------------------------------------------------------


def test_fingerprint_tracks_content_listing_and_mtime(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    _write(folder / "a" / "1.png", b"one")
    base = fingerprint_folder(folder)
    assert base.files == 1 and base.bytes == 3
    assert fingerprint_folder(folder) == base
    os.utime(folder / "a" / "1.png", ns=(0, 10**18))
    touched = fingerprint_folder(folder)
    assert touched.digest != base.digest
    _write(folder / ".DS_Store", b"hidden files are not data")
    assert fingerprint_folder(folder).digest == touched.digest
    (folder / "link.png").symlink_to(folder / "a" / "1.png")
    assert fingerprint_folder(folder).digest != touched.digest  # a symlink shows up (refused by the manifest)
    states = scan_raw_root(tmp_path, ["ds", "absent"])
    assert set(states) == {"ds"}
    assert changed_folders({"ds": states["ds"].digest}, states) == []
    assert changed_folders({}, states) == ["ds"]
    assert decode_cursor("not json") == {} and decode_cursor(None) == {}


# --- progress ----------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_logs_count_rate_percent_every_few_seconds() -> None:
    lines: list[str] = []
    clock = _Clock()
    progress = Progress(lines.append, total=1000, label="normalized/alpha", every_s=5.0, clock=clock)
    for _ in range(100):
        clock.now += 0.01
        progress.update()
    assert lines == []  # one second in: too early for a line
    clock.now += 4.0
    progress.update(150)
    assert len(lines) == 1
    assert lines[0].startswith("normalized/alpha: 250/1,000 items (25.0%) at 50.0/s")
    assert "ETA 15s" in lines[0]
    progress.update()
    assert len(lines) == 1
    clock.now += 5.0
    progress.update(749)
    progress.done()
    progress.done()
    assert len(lines) == 3
    assert lines[-1].startswith("normalized/alpha: 1,000/1,000 items (100.0%)") and lines[-1].endswith("done")


def test_progress_without_total_and_iterate() -> None:
    lines: list[str] = []
    clock = _Clock()
    progress = Progress(lines.append, total=None, label="captions[003]", every_s=1.0, clock=clock)

    def items():
        for i in range(3):
            clock.now += 1.0
            yield i

    assert list(progress.iterate(items())) == [0, 1, 2]
    assert lines[-1].startswith("captions[003]: 3 items at")
    assert "%" not in lines[-1] and lines[-1].endswith("done")
    assert len(lines) == 4  # a line per item (one per second), then the final line


def test_sensor_on_the_real_graph(raw_root: Path) -> None:
    """On the real code location: a changed demo folder requests its dataset's steps through the release."""
    defs = definitions.defs()

    name = next(s.name for s in load_catalog() if s.demo)
    _write(raw_root / name / "new.png", b"new")
    with dg.instance_for_test() as instance:
        result = _tick(defs, instance, None, storage=_storage(raw_root))
    keys = {k.to_user_string() for k in result.run_requests[0].asset_selection}
    assert {f"source/{name}", f"normalized/{name}", "annotations", "decontaminated", *RELEASE_KEYS} <= keys
    assert set(GENERATION_KEYS) <= keys and not keys & set(TRAINING_KEYS)
    assert not any(k.startswith(("source/", "normalized/")) and not k.endswith(f"/{name}") for k in keys)
