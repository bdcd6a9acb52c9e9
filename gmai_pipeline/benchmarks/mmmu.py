"""MMMU, Health & Medicine discipline (Hugging Face `MMMU/MMMU` Parquet layout).

`<Subject>/{dev,validation,test}-00000-of-00001.parquet` for the five Health & Medicine subjects;
columns `id`, `question`, `options`, `answer`, ..., `image_1`..`image_7` as {bytes, path}
structs (null when the question has fewer images). All three splits are read: dev questions are
the few-shot examples shown at evaluation time, so their images count as benchmark images too.
Item id: `<id>:image_<k>`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from gmai_pipeline.benchmarks.base import BenchmarkImage, iter_parquet_rows, struct_bytes

BENCHMARK = "MMMU"
SUBJECTS = (
    "Basic_Medical_Science",
    "Clinical_Medicine",
    "Diagnostics_and_Laboratory_Medicine",
    "Pharmacy",
    "Public_Health",
)
SPLITS = ("dev", "validation", "test")
IMAGE_COLUMNS = [f"image_{k}" for k in range(1, 8)]


def parquet_files(folder: Path) -> list[Path]:
    files = []
    for subject in SUBJECTS:
        for split in SPLITS:
            files.extend(sorted((folder / subject).glob(f"{split}-*.parquet")))
    return files


def read(folder: Path, problems: list[str]) -> Iterator[BenchmarkImage]:
    for path in parquet_files(folder):
        for n, rec in enumerate(iter_parquet_rows(path, ["id", *IMAGE_COLUMNS], batch_size=16)):
            qid = rec.get("id") or f"{path.parent.name}/{path.stem}:{n}"
            for col in IMAGE_COLUMNS:
                data = struct_bytes(rec.get(col))
                if data is not None:
                    yield BenchmarkImage(BENCHMARK, f"{qid}:{col}", data)
