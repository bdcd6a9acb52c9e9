"""Benchmark readers and the registry of where each benchmark lives under `$GMAI_BENCHMARK_ROOT`.

Put each benchmark, as downloaded, in its conventional folder:

| folder | benchmark | layouts read |
|---|---|---|
| `GMAI-MMBench/` | GMAI-MMBench | VLMEvalKit TSVs (`GMAI-MMBench_VAL.tsv`, `GMAI-MMBench_TEST_part_*.tsv`) |
| `OmniMedVQA/` | OmniMedVQA | original `QA_information/{Open-access,Restricted-access}/*.json` + `Images/`; and/or VLMEvalKit `OmniMedVQA.tsv` |
| `VQA-RAD/` | VQA-RAD | OSF `VQA_RAD Dataset Public.json` + `VQA_RAD Image Folder/` (test = `phrase_type` `test_*`); or HF mirror `data/test-*.parquet` |
| `SLAKE/` | SLAKE | `Slake1.0/test.json` + `Slake1.0/imgs/` (or the same files directly in the folder) |
| `PMC-VQA/` | PMC-VQA | `test.csv` (+ `test_2.csv`, `test_clean.csv`) + figures in `images/` or `figures/` |
| `PathVQA/` | PathVQA | HF mirror `data/test-*.parquet`; original `pvqa/images/test/`; VLMEvalKit `PathVQA_*.tsv` |
| `MMMU/` | MMMU Health & Medicine | HF `MMMU/MMMU` layout `<Subject>/{dev,validation,test}-*.parquet` for the 5 H&M subjects |

Any `*.tsv` in any benchmark folder is read as a VLMEvalKit TSV, named by its file stem (the
VLMEvalKit dataset name). A folder that is missing is skipped and reported as not present.
Only test/validation material is read: train splits of VQA-RAD, SLAKE, PMC-VQA and PathVQA are
training data in GMAI-VL's stage III, not benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gmai_pipeline.benchmarks import mmmu, omnimedvqa, pathvqa, pmc_vqa, slake, vlmevalkit_tsv, vqa_rad
from gmai_pipeline.benchmarks.base import BenchmarkImage

Reader = Callable[[Path, list[str]], Iterator[BenchmarkImage]]


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    folder: str  # under $GMAI_BENCHMARK_ROOT
    readers: tuple[Reader, ...]
    layout: str  # one line for metadata and error messages


REGISTRY: tuple[BenchmarkSpec, ...] = (
    BenchmarkSpec("GMAI-MMBench", "GMAI-MMBench", (vlmevalkit_tsv.read,), "VLMEvalKit TSV"),
    BenchmarkSpec(
        "OmniMedVQA",
        "OmniMedVQA",
        (omnimedvqa.read, vlmevalkit_tsv.read),
        "QA_information/ + Images/, or TSV",
    ),
    BenchmarkSpec(
        "VQA-RAD", "VQA-RAD", (vqa_rad.read, vlmevalkit_tsv.read), "OSF JSON + image folder, or HF Parquet"
    ),
    BenchmarkSpec("SLAKE", "SLAKE", (slake.read, vlmevalkit_tsv.read), "Slake1.0/test.json + imgs/"),
    BenchmarkSpec("PMC-VQA", "PMC-VQA", (pmc_vqa.read, vlmevalkit_tsv.read), "test.csv + images/"),
    BenchmarkSpec(
        "PathVQA", "PathVQA", (pathvqa.read, vlmevalkit_tsv.read), "HF Parquet, pvqa/images/test/, or TSV"
    ),
    BenchmarkSpec("MMMU", "MMMU", (mmmu.read,), "<Subject>/{dev,validation,test}-*.parquet"),
)


def present(root: Path) -> tuple[list[BenchmarkSpec], list[BenchmarkSpec]]:
    """(benchmarks whose folder exists under root, benchmarks that are missing)."""
    root = Path(root)
    found = [s for s in REGISTRY if (root / s.folder).is_dir()]
    missing = [s for s in REGISTRY if not (root / s.folder).is_dir()]
    return found, missing


def read_benchmark(spec: BenchmarkSpec, root: Path, problems: list[str]) -> Iterator[BenchmarkImage]:
    folder = Path(root) / spec.folder
    for reader in spec.readers:
        yield from reader(folder, problems)


def read_all(root: Path, problems: list[str]) -> Iterator[BenchmarkImage]:
    """Every image of every benchmark present under root, streamed."""
    for spec in present(root)[0]:
        yield from read_benchmark(spec, root, problems)


__all__ = ["REGISTRY", "BenchmarkImage", "BenchmarkSpec", "present", "read_all", "read_benchmark"]
