"""Helpers for the layout tests: catalog entries written as YAML, tiny files in the real formats."""

from __future__ import annotations

import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from normalize_fixtures import DEFAULTS, pattern, write_image
from pydicom.data import get_testdata_file

from gmai_pipeline.catalog import SourceDataset, load_source


def entry(tmp_path: Path, name: str, task_type: str, body: str, **fields: str) -> SourceDataset:
    """A catalog entry from YAML text (the reader block and anything else), loaded like the catalog is."""
    modality, department, clinical_task = DEFAULTS[task_type]
    head = {
        "name": name,
        "title": f"test {name}",
        "url": f"https://example.org/{name}",
        "license": "unknown",
        "modality": modality,
        "department": department,
        "task_type": task_type,
        "clinical_task": clinical_task,
        **fields,
    }
    text = "".join(f"{k}: {v}\n" for k, v in head.items()) + textwrap.dedent(body).strip() + "\n"
    text += "provenance:\n  source: tests\n"
    folder = tmp_path / "catalog"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return load_source(path)


def nifti(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return path


def ct_volume(shape=(24, 24, 6), seed: int = 0, low: float = -900, high: float = 400) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, shape).astype(np.float32)


def box_label(shape=(24, 24, 6), value: int = 1, at: tuple[slice, ...] | None = None) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[at or (slice(6, 16), slice(6, 16), slice(1, 4))] = value
    return lab


def dicom_file(
    path: Path, pixels: np.ndarray, *, modality: str = "CR", patient_id: str = "ANON", **tags
) -> Path:
    """A DICOM file with the given pixels (16-bit) and header values (from pydicom's CT_small header)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.BurnedInAnnotation = "NO"
    for k, v in tags.items():
        setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def photo(path: Path, seed: int = 0, size: tuple[int, int] = (40, 48), rgb: bool = True, **kw) -> Path:
    return write_image(path, pattern(size[0], size[1], seed=seed, rgb=rgb), **kw)


def disk_mask(size: tuple[int, int], centre: tuple[int, int], r: int, value: int = 255) -> np.ndarray:
    y, x = np.ogrid[0 : size[0], 0 : size[1]]
    m = np.zeros(size, np.uint8)
    m[(x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= r * r] = value
    return m
