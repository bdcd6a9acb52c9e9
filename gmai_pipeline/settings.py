"""Paths and switches from the environment (README "Configuration"), resolved once per call.

Every default runs the embedded demo, so a fresh clone works with no configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = PROJECT_ROOT / "assets"
RESOURCES_DIR = PROJECT_ROOT / "resources"
VOCABULARY_FILE = ASSETS_DIR / "vocabulary.yaml"
SOURCES_DIR = ASSETS_DIR / "sources"
DEMO_CATALOG_DIR = ASSETS_DIR / "demo"


@dataclass(frozen=True)
class Settings:
    catalog_dirs: tuple[Path, ...]
    raw_root: Path
    output_root: Path
    benchmark_root: Path
    llm_backend: str
    llm_model: str

    @property
    def is_demo_raw(self) -> bool:
        return "GMAI_RAW_ROOT" not in os.environ

    @property
    def is_demo_benchmarks(self) -> bool:
        return "GMAI_BENCHMARK_ROOT" not in os.environ


def catalog_dirs() -> tuple[Path, ...]:
    """`GMAI_CATALOG_DIR` (one or more folders, `os.pathsep`-separated) or the 219 sources plus the demo."""
    value = os.environ.get("GMAI_CATALOG_DIR")
    if not value:
        return (SOURCES_DIR, DEMO_CATALOG_DIR)
    return tuple(Path(p).resolve() for p in value.split(os.pathsep) if p)


def get_settings() -> Settings:
    """Read the environment now (not at import) so tests and runs can point elsewhere."""
    output_root = Path(os.environ.get("GMAI_OUTPUT_ROOT", "data")).resolve()
    return Settings(
        catalog_dirs=catalog_dirs(),
        raw_root=Path(os.environ.get("GMAI_RAW_ROOT", output_root / "demo_raw")).resolve(),
        output_root=output_root,
        benchmark_root=Path(os.environ.get("GMAI_BENCHMARK_ROOT", output_root / "demo_benchmarks")).resolve(),
        llm_backend=os.environ.get("GMAI_LLM_BACKEND", "template"),
        llm_model=os.environ.get("GMAI_LLM_MODEL", "template-v1"),
    )


def nightly_cron() -> str:
    """`GMAI_NIGHTLY_CRON`: when the nightly generation backfill runs (UTC); read when definitions load."""
    return os.environ.get("GMAI_NIGHTLY_CRON", "0 2 * * *")


def raw_sensor_interval_s() -> int:
    """`GMAI_RAW_SENSOR_INTERVAL_S`: how often the raw-data sensor scans `GMAI_RAW_ROOT` (seconds)."""
    value = os.environ.get("GMAI_RAW_SENSOR_INTERVAL_S", "300")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"GMAI_RAW_SENSOR_INTERVAL_S={value!r} is not a whole number of seconds") from None
