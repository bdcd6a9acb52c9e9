"""PMC-VQA test split: `test.csv` (and `test_2.csv`, `test_clean.csv` of later versions).

Columns `Figure_path` (a file name such as `PMC8253867_Fig2_41.jpg`), `Question`, `Answer`,
`Choice A`..`Choice D`, `Answer_label`. Figures are unpacked from `images.zip` into `images/`
(`images_2.zip` -> `figures/` in version 2); both folders are searched. Each figure is yielded
once, its item id being the `Figure_path`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from gmai_pipeline.benchmarks.base import BenchmarkImage, read_image_file

BENCHMARK = "PMC-VQA"
IMAGE_DIRS = ("images", "figures", "images_2", "")


def test_csvs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("test*.csv") if p.is_file())


def _locate(folder: Path, figure: str) -> Path | None:
    for d in IMAGE_DIRS:
        candidate = folder / d / figure if d else folder / figure
        if candidate.is_file():
            return candidate
    return None


def read(folder: Path, problems: list[str]) -> Iterator[BenchmarkImage]:
    seen: set[str] = set()
    for path in test_csvs(folder):
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                figure = (row.get("Figure_path") or "").strip()
                if not figure or figure in seen:
                    continue
                seen.add(figure)
                image = _locate(folder, figure)
                if image is None:
                    problems.append(f"{BENCHMARK}: {path}: figure {figure} not found under {folder}")
                    continue
                got = read_image_file(image, BENCHMARK, figure, problems)
                if got is not None:
                    yield got
