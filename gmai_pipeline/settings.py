"""The repository's own folders, and the few switches read from the environment when definitions load
(README "Configuration"). The roots the assets read and write come from the `storage` resource.

Every default runs the embedded demo, so a fresh clone works with no configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = PROJECT_ROOT / "assets"
RESOURCES_DIR = PROJECT_ROOT / "resources"
VOCABULARY_FILE = ASSETS_DIR / "vocabulary.yaml"
SOURCES_DIR = ASSETS_DIR / "sources"
DEMO_CATALOG_DIR = ASSETS_DIR / "demo"


def catalog_dirs() -> tuple[Path, ...]:
    """`GMAI_CATALOG_DIR` (one or more folders, `os.pathsep`-separated) or the 219 sources plus the demo."""
    value = os.environ.get("GMAI_CATALOG_DIR")
    if not value:
        return (SOURCES_DIR, DEMO_CATALOG_DIR)
    return tuple(Path(p).resolve() for p in value.split(os.pathsep) if p)


def output_root() -> Path:
    """`GMAI_OUTPUT_ROOT` for command-line tools (`python -m gmai_pipeline.summary`); the code location's assets
    get it from the `storage` resource (`gmai_pipeline/defs/resources.py`), never from here."""
    return Path(os.environ.get("GMAI_OUTPUT_ROOT", "data")).resolve()


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
