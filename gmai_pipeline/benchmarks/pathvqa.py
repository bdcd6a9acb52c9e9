"""PathVQA test and validation splits (VLMEvalKit evaluates both: `PathVQA_TEST`, `PathVQA_VAL`).

Layouts read (whichever are present):
- the Hugging Face Parquet mirror `flaviagiammarino/path-vqa` (the form most people download):
  `data/{test,validation}-*.parquet` with `image` {bytes, path}, `question`, `answer`; item id
  `<split>:<row>`;
- the original release (`pvqa/` from the authors' Google Drive): `pvqa/images/{test,val}/*.jpg`. A
  split is exactly the images in its folder, so the pickled question files (`pvqa/qas/test/test_qa.pkl`)
  are not needed and never unpickled (unpickling runs code); item id = the file stem (`test_0001`);
- VLMEvalKit's `PathVQA_TEST.tsv` / `PathVQA_VAL.tsv` (and their `_local.tsv`) are read by the TSV reader.
Train splits are training data (GMAI-VL's stage III), never read here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from gmai_pipeline.benchmarks.base import BenchmarkImage, read_image_file
from gmai_pipeline.benchmarks.vqa_rad import read_hf_parquet

BENCHMARK = "PathVQA"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


SPLITS = ("test", "validation")
IMAGE_FOLDERS = ("test", "val", "validation")


def parquet_files(folder: Path) -> list[Path]:
    return [p for split in SPLITS for p in sorted(folder.glob(f"data/{split}-*.parquet"))]


def image_folders(folder: Path) -> list[Path]:
    return [folder / base / "images" / s for base in ("pvqa", "") for s in IMAGE_FOLDERS]


def detect(folder: Path) -> bool:
    return bool(parquet_files(folder)) or any(d.is_dir() for d in image_folders(folder))


def read(folder: Path, problems: list[str]) -> Iterator[BenchmarkImage]:
    yield from read_hf_parquet(parquet_files(folder), BENCHMARK, problems)
    for images in image_folders(folder):
        if not images.is_dir():
            continue
        for path in sorted(images.iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                got = read_image_file(path, BENCHMARK, path.stem, problems)
                if got is not None:
                    yield got
