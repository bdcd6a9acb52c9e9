"""Benchmark readers and the registry of where each benchmark lives under `$GMAI_BENCHMARK_ROOT`.

Two ways to keep benchmarks, mixed freely:

1. One folder per benchmark, as downloaded (an archive unpacked one level deeper is found too:
   `OmniMedVQA/OmniMedVQA/QA_information/`):

| folder | benchmark | layouts read |
|---|---|---|
| `GMAI-MMBench/` | GMAI-MMBench | VLMEvalKit TSVs (`GMAI-MMBench_VAL.tsv`, `GMAI_mm_bench_TEST_part_*.tsv`, `_local.tsv`) |
| `OmniMedVQA/` | OmniMedVQA | original `QA_information/{Open-access,Restricted-access}/*.json` + `Images/`; and/or VLMEvalKit TSVs |
| `VQA-RAD/` | VQA-RAD | OSF `VQA_RAD Dataset Public.json` + `VQA_RAD Image Folder/` (test = `phrase_type` `test_*`); or HF mirror `data/test-*.parquet` |
| `SLAKE/` | SLAKE | `Slake1.0/test.json` + `Slake1.0/imgs/` (or the same files directly in the folder) |
| `PMC-VQA/` | PMC-VQA | `test.csv` (+ `test_2.csv`, `test_clean.csv`) + figures in `images/` or `figures/` |
| `PathVQA/` | PathVQA | HF mirror `data/{test,validation}-*.parquet`; original `pvqa/images/{test,val}/`; VLMEvalKit `PathVQA_{TEST,VAL}.tsv` |
| `MMMU/` | MMMU Health & Medicine | HF `MMMU/MMMU` layout `<Subject>/{dev,validation,test}-*.parquet`; VLMEvalKit `MMMU_DEV_VAL.tsv` |

2. VLMEvalKit's flat `LMUData/` folder (point `GMAI_BENCHMARK_ROOT` at it): every TSV directly in the
   root is claimed by the benchmark whose VLMEvalKit dataset names it matches (`TSV_PATTERNS`), plain
   or `_local.tsv`. `X_local.tsv` beside `X.tsv` is the same questions and is skipped. TSVs of a train
   split (`*_TRAIN*`) are never read: those splits are GMAI-VL's stage-III training data.

A benchmark is *present* when its folder exists or a root TSV is claimed by it; a present benchmark
that yields no image is the caller's blocking failure (`decontaminate.hash_benchmarks`), never a pass.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gmai_pipeline.benchmarks import mmmu, omnimedvqa, pathvqa, pmc_vqa, slake, vlmevalkit_tsv, vqa_rad
from gmai_pipeline.benchmarks.base import BenchmarkImage

Reader = Callable[[Path, list[str]], Iterator[BenchmarkImage]]


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    folder: str  # under $GMAI_BENCHMARK_ROOT
    reader: Reader | None  # the benchmark's own layout (None: TSV only)
    detect: Callable[[Path], bool] | None  # does a folder hold that layout?
    layout: str  # one line for metadata and error messages
    tsv_patterns: tuple[str, ...] = ()  # VLMEvalKit dataset file names (fnmatch, case-insensitive)


def _any(*patterns: str) -> Callable[[Path], bool]:
    return lambda d: any(next(d.glob(p), None) is not None for p in patterns)


REGISTRY: tuple[BenchmarkSpec, ...] = (
    BenchmarkSpec(
        "GMAI-MMBench",
        "GMAI-MMBench",
        None,
        None,
        "VLMEvalKit TSV",
        ("GMAI-MMBench*.tsv", "GMAI_mm_bench*.tsv"),
    ),
    BenchmarkSpec(
        "OmniMedVQA",
        "OmniMedVQA",
        omnimedvqa.read,
        omnimedvqa.detect,
        "QA_information/ + Images/, or TSV",
        ("omnimedbench_part_*.tsv", "OmniMedVQA*.tsv", "omnimedbench*.tsv"),
    ),
    BenchmarkSpec(
        "VQA-RAD",
        "VQA-RAD",
        vqa_rad.read,
        _any("*.json", "data/test-*.parquet"),
        "OSF JSON + image folder, or HF Parquet",
        ("VQA_RAD*.tsv", "VQA-RAD*.tsv", "VQARAD*.tsv"),
    ),
    BenchmarkSpec(
        "SLAKE",
        "SLAKE",
        slake.read,
        _any("test.json", "Slake1.0/test.json"),
        "Slake1.0/test.json + imgs/",
        ("SLAKE*.tsv",),
    ),
    BenchmarkSpec(
        "PMC-VQA",
        "PMC-VQA",
        pmc_vqa.read,
        _any("test*.csv"),
        "test.csv + images/",
        ("PMC-VQA*.tsv", "PMC_VQA*.tsv", "PMCVQA*.tsv"),
    ),
    BenchmarkSpec(
        "PathVQA",
        "PathVQA",
        pathvqa.read,
        pathvqa.detect,
        "HF Parquet, pvqa/images/{test,val}/, or TSV",
        ("PathVQA*.tsv",),
    ),
    BenchmarkSpec(
        "MMMU",
        "MMMU",
        mmmu.read,
        lambda d: bool(mmmu.parquet_files(d)),
        "<Subject>/{dev,validation,test}-*.parquet, or MMMU_DEV_VAL.tsv",
        ("MMMU_DEV_VAL*.tsv", "MMMU_TEST*.tsv"),
    ),
)


def is_train_split(path: Path) -> bool:
    parts = vlmevalkit_tsv.dataset_name(path).lower().replace("-", "_").split("_")
    return "train" in parts


def claims(spec: BenchmarkSpec, path: Path) -> bool:
    return any(fnmatch.fnmatch(path.name.lower(), p.lower()) for p in spec.tsv_patterns)


@dataclass(frozen=True)
class BenchmarkSource:
    """One thing a benchmark is read from: a TSV file, or a folder in the benchmark's own layout."""

    spec: BenchmarkSpec
    path: Path
    kind: str  # "tsv" | "layout"

    @property
    def dataset(self) -> str:
        """VLMEvalKit dataset name for a TSV; the benchmark's name for its own layout."""
        return vlmevalkit_tsv.dataset_name(self.path) if self.kind == "tsv" else self.spec.name

    def read(self, problems: list[str]) -> Iterator[BenchmarkImage]:
        if self.kind == "tsv":
            return vlmevalkit_tsv.read_tsv(self.path, problems)
        assert self.spec.reader is not None
        return self.spec.reader(self.path, problems)


@dataclass
class Location:
    spec: BenchmarkSpec
    folder: Path | None  # the benchmark's folder under the root, if it exists
    sources: list[BenchmarkSource] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # train-split TSVs left out on purpose

    def describe(self) -> str:
        where = [str(self.folder)] if self.folder else []
        where += [
            str(s.path) for s in self.sources if self.folder is None or self.folder not in s.path.parents
        ]
        return ", ".join(where) or "nowhere"


def _layout_roots(spec: BenchmarkSpec, folder: Path) -> list[Path]:
    """The folder itself if it holds the layout, else its subfolders that do (archives unpack a level deeper)."""
    if spec.detect is None:
        return []
    if spec.detect(folder):
        return [folder]
    return [
        d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".") and spec.detect(d)
    ]


def _root_tsvs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*.tsv") if p.is_file() and not p.name.startswith("."))


def locate(spec: BenchmarkSpec, root: Path) -> Location:
    root = Path(root)
    folder = root / spec.folder
    loc = Location(spec, folder if folder.is_dir() else None)
    tsvs: list[Path] = []
    if loc.folder is not None:
        loc.sources += [BenchmarkSource(spec, d, "layout") for d in _layout_roots(spec, folder)]
        tsvs += vlmevalkit_tsv.tsv_files(folder)
        for child in sorted(folder.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and child.name != "images":
                tsvs += vlmevalkit_tsv.tsv_files(child)
    if root.is_dir():
        tsvs += vlmevalkit_tsv.dedupe_local([p for p in _root_tsvs(root) if claims(spec, p)])
    for path in tsvs:
        if is_train_split(path):
            loc.ignored.append(path)
        else:
            loc.sources.append(BenchmarkSource(spec, path, "tsv"))
    return loc


def locate_all(root: Path) -> list[Location]:
    return [locate(s, root) for s in REGISTRY]


def is_present(loc: Location) -> bool:
    return loc.folder is not None or bool(loc.sources)


def unclaimed_tsvs(root: Path) -> list[Path]:
    """TSVs directly in the root that no benchmark claims (reported, so a misnamed file is noticed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [p for p in _root_tsvs(root) if not any(claims(s, p) for s in REGISTRY)]


def present(root: Path) -> tuple[list[BenchmarkSpec], list[BenchmarkSpec]]:
    """(benchmarks present under root, benchmarks that are missing)."""
    locs = locate_all(root)
    return [loc.spec for loc in locs if is_present(loc)], [loc.spec for loc in locs if not is_present(loc)]


def read_benchmark(spec: BenchmarkSpec, root: Path, problems: list[str]) -> Iterator[BenchmarkImage]:
    for source in locate(spec, root).sources:
        yield from source.read(problems)


def read_all(root: Path, problems: list[str]) -> Iterator[BenchmarkImage]:
    """Every image of every benchmark present under root, streamed."""
    for spec in present(root)[0]:
        yield from read_benchmark(spec, root, problems)


__all__ = [
    "REGISTRY",
    "BenchmarkImage",
    "BenchmarkSource",
    "BenchmarkSpec",
    "Location",
    "locate",
    "locate_all",
    "present",
    "read_all",
    "read_benchmark",
    "unclaimed_tsvs",
]
