"""The embedded demo: small datasets and benchmarks generated from files that pip packages ship.

`ensure_demo_source(name, raw_root)` writes `raw_root/<name>/` in the layout its reader expects;
`ensure_demo_benchmarks(root)` writes benchmark files in the real GMAI-MMBench (VLMEvalKit TSV)
and OmniMedVQA layouts, with training images planted in them (`PLANTED`). Generation is
deterministic (fixed seeds, no timestamps), idempotent and atomic per dataset, and needs no network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gmai_pipeline.demo._files import DEMO_VERSION, build_atomically, is_complete, write_files
from gmai_pipeline.demo.benchmarks import PLANTED, ensure_demo_benchmarks
from gmai_pipeline.demo.dicom import BURNED_IN_RISK_FILE, DEMO_PHI_VALUES, UNDECODABLE_FILE, ct_dicom_files
from gmai_pipeline.demo.images2d import (
    chest_files,
    endoscopy_files,
    fundus_files,
    histology_files,
    skin_files,
)
from gmai_pipeline.demo.volumes import write_brain_msd


def _from_files(files: Callable[[], dict[str, bytes]]) -> Callable[[Path], None]:
    return lambda folder: write_files(folder, files())


BUILDERS: dict[str, Callable[[Path], None]] = {
    "demo_fundus_folder": _from_files(fundus_files),
    "demo_histology_csv": _from_files(histology_files),
    "demo_chest_coco": _from_files(chest_files),
    "demo_endoscopy_voc": _from_files(endoscopy_files),
    "demo_skin_masks": _from_files(skin_files),
    "demo_brain_msd": write_brain_msd,
    "demo_ct_dicom": _from_files(ct_dicom_files),
}
DEMO_SOURCES: tuple[str, ...] = tuple(sorted(BUILDERS))

# File names inside demo_ct_dicom that normalization must quarantine (see gmai_pipeline.demo.dicom).
DICOM_BURNED_IN_RISK = BURNED_IN_RISK_FILE[0]
DICOM_UNDECODABLE = UNDECODABLE_FILE[0]


def ensure_demo_source(name: str, raw_root: Path) -> Path:
    """Generate demo dataset `name` into `raw_root/<name>/` unless it is already there; returns the folder."""
    if name not in BUILDERS:
        raise KeyError(f"no demo data for '{name}' (demo sources: {', '.join(DEMO_SOURCES)})")
    return build_atomically(Path(raw_root) / name, BUILDERS[name])


def clear_caches() -> None:
    """Forget the in-memory datasets, so the next call regenerates them from their seeds."""
    for files in (fundus_files, histology_files, chest_files, endoscopy_files, skin_files, ct_dicom_files):
        files.cache_clear()


def ensure_all_demo_sources(raw_root: Path) -> list[Path]:
    return [ensure_demo_source(name, raw_root) for name in DEMO_SOURCES]


__all__ = [
    "DEMO_PHI_VALUES",
    "DEMO_SOURCES",
    "DEMO_VERSION",
    "DICOM_BURNED_IN_RISK",
    "DICOM_UNDECODABLE",
    "PLANTED",
    "clear_caches",
    "ensure_all_demo_sources",
    "ensure_demo_benchmarks",
    "ensure_demo_source",
    "is_complete",
]
