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


NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)


def nih(raw: Path) -> None:
    """Kaggle's nih-chest-xrays/data: images_001/images/*.png ... images_012/images/*.png, Data_Entry_2017.csv
    (header as in mlmed/torchxrayvision:torchxrayvision/data/Data_Entry_2017_v2020.csv.gz), train_val_list.txt,
    test_list.txt, BBox_List_2017.csv."""
    rows = [
        ("00000001_000.png", "images_001", "Cardiomegaly"),
        ("00000001_001.png", "images_001", "Cardiomegaly|Emphysema"),
        ("00000002_000.png", "images_002", "No Finding"),
        ("00000003_000.png", "images_002", "Hernia"),
    ]
    lines = [NIH_HEADER]
    for i, (name, folder, labels) in enumerate(rows):
        photo(raw / folder / "images" / name, seed=i, size=(64, 64), rgb=False)
        lines.append(f"{name},{labels},{i},{i + 1},57,M,PA,2682,2749,0.143,0.143\n")
    (raw / "Data_Entry_2017.csv").write_text("".join(lines))
    (raw / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000002_000.png\n")
    (raw / "test_list.txt").write_text("00000003_000.png\n")
    (raw / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000001_000.png,Cardiomegaly,10.5,12.0,30.25,20.0\n"
        "00000001_001.png,Cardiomegaly,5,6,10,10\n"
        "00000001_001.png,Emphysema,40,40,20,30\n"  # 40+30 overruns the 64-pixel image
    )


NIH_CLS = """
reader:
  kind: layout
  images: "images_*/images/*.png"
  table: {file: Data_Entry_2017.csv, image: Image Index}
  label: {column: Finding Labels, delimiter: "|"}
  split: {lists: {train: train_val_list.txt, test: test_list.txt}}
labels: {Cardiomegaly: cardiomegaly, Emphysema: emphysema, No Finding: no finding, Hernia: hernia}
"""
