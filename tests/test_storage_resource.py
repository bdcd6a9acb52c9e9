"""The `storage` resource: the roots come from the profile through `dg.EnvVar`, and the demo is a profile setting."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from storage_fixtures import storage_at

from gmai_pipeline.defs.resources import PipelineStorage


@dg.asset
def probe(storage: PipelineStorage) -> dg.MaterializeResult:
    """Writes one file under the output root and reports the roots it was given."""
    path = storage.layout().root / "probe.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("ok")
    return dg.MaterializeResult(metadata={"raw": str(storage.raw), "demo_raw": storage.demo_raw})


def test_set_variables_become_env_vars_read_when_the_run_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at_load, at_run = tmp_path / "at_load", tmp_path / "at_run"
    monkeypatch.setenv("GMAI_OUTPUT_ROOT", str(at_load))
    monkeypatch.setenv("GMAI_RAW_ROOT", str(tmp_path / "raw"))
    storage = PipelineStorage.from_profile("demo")
    assert storage.output_root == dg.EnvVar("GMAI_OUTPUT_ROOT")
    monkeypatch.setenv("GMAI_OUTPUT_ROOT", str(at_run))
    with dg.instance_for_test() as instance:
        result = dg.materialize([probe], resources={"storage": storage}, instance=instance)
        stored = str(instance.get_run_by_id(result.run_id).run_config)
    assert (at_run / "probe.txt").read_text() == "ok" and not at_load.exists()
    meta = result.asset_materializations_for_node("probe")[0].metadata
    assert meta["raw"].value == str(tmp_path / "raw") and meta["demo_raw"].value is False
    assert str(tmp_path) not in stored  # only the variables' names are kept with the run


def test_unset_variables_take_the_profiles_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GMAI_OUTPUT_ROOT", "GMAI_RAW_ROOT", "GMAI_BENCHMARK_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    demo, local = PipelineStorage.from_profile("demo"), PipelineStorage.from_profile("local")
    assert demo.output == tmp_path / "data" and demo.raw == tmp_path / "data" / "demo_raw"
    assert demo.benchmarks == tmp_path / "data" / "demo_benchmarks"
    assert demo.demo_raw and demo.demo_benchmarks
    assert not local.demo_raw and not local.demo_benchmarks  # same folders, nothing generated there


def test_demo_benchmarks_are_written_only_by_the_demo_profile(tmp_path: Path) -> None:
    production = storage_at(tmp_path / "prod", demo=False)
    assert production.ensure_benchmarks() == tmp_path / "prod" / "demo_benchmarks"
    assert not (tmp_path / "prod" / "demo_benchmarks").exists()
    given = storage_at(tmp_path / "given", benchmark_root=tmp_path / "LMUData")
    assert given.ensure_benchmarks() == tmp_path / "LMUData" and not (tmp_path / "LMUData").exists()
    lines: list[str] = []
    root = storage_at(tmp_path / "demo").ensure_benchmarks(lines.append)
    assert any(root.iterdir()) and lines == [f"generated demo benchmarks in {root}"]


def test_a_profile_without_storage_yaml_follows_the_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bare").mkdir()
    monkeypatch.setenv("GMAI_BENCHMARK_ROOT", str(tmp_path / "bench"))
    storage = PipelineStorage.from_profile("bare", root=tmp_path)
    assert storage.benchmark_root == dg.EnvVar("GMAI_BENCHMARK_ROOT") and storage.demo is False


def test_an_unknown_setting_is_refused_with_the_file(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "storage.yaml").write_text("output_root: /x\nraw_dir: /y\n")
    with pytest.raises(ValueError, match=r"storage\.yaml: storage has no setting \['raw_dir'\]"):
        PipelineStorage.from_profile("p", root=tmp_path)
