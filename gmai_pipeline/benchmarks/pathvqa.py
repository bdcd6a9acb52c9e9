"""PathVQA test split.

Layouts read (whichever are present):
- the Hugging Face Parquet mirror `flaviagiammarino/path-vqa` (the form most people download):
  `data/test-*.parquet` with `image` {bytes, path}, `question`, `answer`; item id `test:<row>`;
- the original release (`pvqa/` from the authors' Google Drive): `pvqa/images/test/*.jpg`. The
  test split is exactly the images in that folder, so the pickled question files
  (`pvqa/qas/test/test_qa.pkl`) are not needed and never unpickled (unpickling runs code);
  item id = the file stem (`test_0001`);
- VLMEvalKit's `PathVQA_*.tsv` is read by the TSV reader.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from gmai_pipeline.benchmarks.base import BenchmarkImage, read_image_file
from gmai_pipeline.benchmarks.vqa_rad import read_hf_parquet

BENCHMARK = "PathVQA"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def read(folder: Path, problems: list[str]) -> Iterator[BenchmarkImage]:
    yield from read_hf_parquet(sorted(folder.glob("data/test-*.parquet")), BENCHMARK, problems)
    for images in (folder / "pvqa" / "images" / "test", folder / "images" / "test"):
        if not images.is_dir():
            continue
        for path in sorted(images.iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                got = read_image_file(path, BENCHMARK, path.stem, problems)
                if got is not None:
                    yield got
