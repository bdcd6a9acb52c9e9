"""The catalog report: per-entry state from the records, the mix next to Table 3, the CLI and the UI asset."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dagster as dg

from gmai_pipeline import catalog_report as cr
from gmai_pipeline.catalog import load_catalog
from gmai_pipeline.catalog_records import load_records
from gmai_pipeline.settings import SOURCES_DIR


def test_report_lists_every_entry_and_the_mix_against_table3() -> None:
    report = cr.build_report()
    sources = load_catalog((SOURCES_DIR,))
    records = load_records()
    assert [e.name for e in report.entries] == [s.name for s in sources] and len(sources) == 219
    written = {n for n, r in records.items() if r.kept and r.catalog is not None}
    assert {e.name for e in report.entries if e.verified} == written
    by = {e.name: e for e in report.entries}
    assert by["acdc"].fixture.endswith("files, declared") and by["acdc"].expect.startswith("images 300")
    assert by["acdc"].licence == "CC-BY-NC-SA-4.0" and by["acdc"].licence_source.startswith("humanheart")
    unwritten = sorted(
        n for n, r in records.items() if r.kept and r.catalog is None
    )  # none once all are written
    assert all(by[n].state.startswith("catalog section not written yet") for n in unwritten)
    tasks = {r.value: r for r in report.mix["task_type"]}
    assert tasks["2d_cls"].count == Counter(s.task_type for s in sources)["2d_cls"]
    assert tasks["2d_cls"].paper == 50.4 and abs(tasks["2d_cls"].share - 50.4) < 1
    departments = {r.value: r for r in report.mix["department"]}
    assert departments["Sports Medicine"].count >= 5 and departments["Sports Medicine"].paper == 8.2
    assert departments["Ophthalmology"].paper is None  # Table 3 lists only its largest rows
    text = report.markdown()
    assert (
        "| Sports Medicine |" in text
        and "paper (Table 3)" in text
        and all(f"| {n} | no: catalog section" in text for n in unwritten)
    )


def test_a_failing_fixture_makes_the_entry_unverified() -> None:
    source = next(s for s in load_catalog((SOURCES_DIR,)) if s.name == "btcv")
    record = load_records()["btcv"]
    failing = cr.entry_status(source, record, ["no row labelled ['liver']"])
    assert not failing.verified and "FAILS: no row labelled" in failing.fixture
    assert cr.entry_status(source, record, []).fixture.endswith("files, passes")


def test_fixtures_run_from_the_report(tmp_path: Path) -> None:
    sources = [s for s in load_catalog((SOURCES_DIR,)) if s.name in ("ham10000", "msd_spleen", "aida_e_2")]
    # aida_e_2 has no catalog section (no public file listing to build a fixture from): nothing to run
    assert cr.run_fixtures(sources, load_records()) == {"ham10000": [], "msd_spleen": []}


def test_cli_writes_the_markdown(tmp_path: Path, capsys) -> None:
    out = tmp_path / "catalog_report.md"
    cr.main(["--summary", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "## The mix next to the paper's Table 3" in printed and "## Entries" not in printed
    assert "## Entries" in out.read_text() and "| acdc | yes | layout |" in out.read_text()


def test_asset_in_the_catalog_group(tmp_path: Path) -> None:
    from gmai_pipeline.defs.catalog_report import catalog_report
    from gmai_pipeline.defs.resources import PipelineStorage

    result = dg.materialize(
        [catalog_report],
        instance=dg.DagsterInstance.ephemeral(),
        resources={"storage": PipelineStorage(output_root=str(tmp_path))},
    )
    assert result.success
    meta = result.asset_materializations_for_node("catalog_report")[0].metadata
    assert meta["entries"].value == 219 and meta["verified"].value >= 25
    assert "Sports Medicine" in meta["mix_vs_table3"].value
    assert (tmp_path / "reports" / "catalog_report.md").read_text().startswith("# Catalog report")
    spec = next(iter(catalog_report.specs))
    assert spec.group_name == "catalog"
