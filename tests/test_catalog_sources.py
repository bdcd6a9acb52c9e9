"""The 219 curated source datasets: valid, unique, the paper's mix, reproducible, no invented licence."""

from __future__ import annotations

import csv
import importlib.util
import os
import sys
from collections import Counter

import pytest
import yaml

from gmai_pipeline.catalog import load_source, load_vocabulary
from gmai_pipeline.settings import PROJECT_ROOT, SOURCES_DIR

SCRIPT = PROJECT_ROOT / "scripts/curate_catalog.py"
MIX = {"2d_cls": 0.504, "3d_seg": 0.303, "2d_seg": 0.127, "2d_det": 0.066}  # the paper's multimodal task mix


def _script():
    spec = importlib.util.spec_from_file_location("curate_catalog", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


curate = _script()
# The reference CSV lives in ../shared beside the checkout; CI always has it, so there it never skips.
needs_csv = pytest.mark.skipif(
    not curate.DEFAULT_CSV.is_file() and not os.environ.get("CI"), reason=f"{curate.DEFAULT_CSV} not present"
)
FILES = sorted(SOURCES_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def sources():
    return [load_source(p) for p in FILES]


def test_exactly_219_files():
    assert len(FILES) == 219


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_file_validates_and_is_generated(path):
    source = load_source(path)
    assert source.name == path.stem
    assert path.read_text().startswith(curate.HEADER)
    assert source.splits == ("train",) and source.external_llm_allowed is False and not source.demo
    assert source.provenance.notes and "department derived by rule" in source.provenance.notes


def test_names_unique(sources):
    names = [s.name for s in sources]
    assert len(set(names)) == len(names)
    assert len({curate.dedup_key(s.title) for s in sources}) == len(sources)


def test_mix_matches_the_paper(sources):
    counts = Counter(s.task_type for s in sources)
    for task, share in MIX.items():
        assert abs(counts[task] / len(sources) - share) <= 0.03, (task, counts[task])


def test_broad_modality_and_department_coverage(sources):
    modalities = Counter(s.modality for s in sources)
    for m in (
        "CT",
        "MR",
        "X-Ray",
        "Endoscopy",
        "Pathology",
        "Fundus",
        "Ultrasound",
        "Dermoscopy",
        "OCT",
        "PET",
    ):
        assert modalities[m] >= 1, m
    departments = {s.department for s in sources}
    assert len(departments) >= 15 and departments <= set(load_vocabulary()["departments"])


def test_benchmarks_and_aggregates_are_not_sources(sources):
    keys = {curate.dedup_key(s.title) for s in sources}
    assert not keys & curate.BENCHMARKS
    assert not keys & {"medmnist", "imageclef16", "samed2d20m", "gmaivl55m", "medtrinity25m"}


@needs_csv
def test_script_reproduces_the_folder_byte_for_byte(tmp_path):
    curate.main(["--out", str(tmp_path)])
    produced = {p.name: p.read_bytes() for p in tmp_path.glob("*.yaml")}
    committed = {p.name: p.read_bytes() for p in FILES}
    assert produced.keys() == committed.keys()
    assert [n for n in produced if produced[n] != committed[n]] == []


@needs_csv
def test_rerun_deletes_stale_generated_files_only(tmp_path):
    (tmp_path / "stale.yaml").write_text(curate.HEADER + "name: stale\n")
    (tmp_path / "hand_written.yaml").write_text("name: hand_written\n")
    curate.main(["--out", str(tmp_path)])
    assert not (tmp_path / "stale.yaml").exists()
    assert (tmp_path / "hand_written.yaml").exists()


@needs_csv
def test_no_licence_unless_the_csv_or_an_override_gives_it(sources):
    with curate.DEFAULT_CSV.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    overrides = yaml.safe_load(curate.DEFAULT_OVERRIDES.read_text())
    by_url = {(r["url"].strip(), r["license"].strip()) for r in rows if r["license"].strip()}
    for s in sources:
        if s.license == "unknown":
            continue
        spec = overrides.get("datasets", {}).get(s.name, {})
        if "license" in spec:
            assert spec["license"] == s.license and spec.get("why"), s.name
        else:  # the licence and the url come from the same CSV row
            assert (s.url, s.license) in by_url, s.name
        assert s.license.lower() not in curate.NOT_A_LICENCE


@needs_csv
def test_urls_and_titles_come_from_the_csv(sources):
    with curate.DEFAULT_CSV.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    names = {r["name"] for r in rows}
    urls = {r["url"].strip() for r in rows}
    for s in sources:
        assert s.title in names, s.name
        assert s.url in urls, s.name


def test_dedup_key_merges_spelling_variants():
    assert curate.dedup_key("ATM'22") == curate.dedup_key("ATM2022")
    assert curate.dedup_key("MSD03-Liver") == curate.dedup_key("MSD_Liver")
    assert curate.dedup_key("KiTS2021") == curate.dedup_key("KiTS21")
    assert curate.dedup_key("ISIC18") != curate.dedup_key(
        "isic2018_task1"
    )  # needs the alias in the overrides


def test_seat_allocation_floors_pins_and_proportion():
    seats = curate.dhondt_seats({"CT": 10, "MR": 10, "PET": 1}, {"CT": 30, "MR": 10, "PET": 1}, {"MR": 4}, 10)
    assert seats == {"CT": 5, "MR": 4, "PET": 1}
    with pytest.raises(SystemExit):
        curate.dhondt_seats({"CT": 2}, {"CT": 2}, {}, 5)


@needs_csv
def test_docs_show_the_current_summary():
    entries = curate.curate(curate.DEFAULT_CSV, curate.DEFAULT_OVERRIDES)
    assert curate.summarize(entries) in (PROJECT_ROOT / "docs/catalog.md").read_text()
