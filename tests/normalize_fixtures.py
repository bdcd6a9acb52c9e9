"""Helpers for the normalization tests: catalog entries, image files in real formats, a runner."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.manifest import scan
from gmai_pipeline.normalize import NormalizeReport, normalize_source, shown_names, verify_outputs
from gmai_pipeline.storage import md5_file

DEFAULTS = {
    "2d_cls": ("X-Ray", "Pulmonary Medicine", "Disease Diagnosis"),
    "2d_det": ("Endoscopy", "Gastroenterology", "Lesion Detection"),
    "2d_seg": ("Dermoscopy", "Dermatology", "Lesion Detection"),
    "3d_seg": ("CT", "Oncology", "Organ Recognition"),
}


def make_source(name: str, task_type: str, reader: dict, **fields) -> SourceDataset:
    modality, department, clinical_task = DEFAULTS[task_type]
    data = {
        "name": name,
        "title": f"test {name}",
        "license": "unknown",
        "modality": modality,
        "department": department,
        "task_type": task_type,
        "clinical_task": clinical_task,
        "reader": reader,
        "provenance": {"source": "tests"},
    }
    data.update(fields)
    return SourceDataset.model_validate(data)


def pattern(h: int, w: int, seed: int = 0, rgb: bool = False) -> np.ndarray:
    """A smooth textured picture (not constant, compresses like a real image)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 90 * np.sin(x / (7 + seed % 5)) * np.cos(y / (9 + seed % 3)) + rng.normal(0, 6, (h, w))
    arr = np.clip(base, 0, 255).astype(np.uint8)
    return np.stack([arr, arr[::-1], 255 - arr], axis=-1) if rgb else arr


def write_image(path: Path, arr: np.ndarray, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt, **kw)
    return path


def encoded(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def run(
    source: SourceDataset, folder: Path, out: Path, **kw
) -> tuple[NormalizeReport, list[dict], list[dict]]:
    """Scan, normalize, and assert the invariants every dataset must satisfy."""
    report = normalize_source(source, folder, scan(folder, shown=shown_names(source)), out, **kw)
    rows = pq.read_table(out / "normalized" / f"{source.name}.parquet").to_pylist()
    qrows = pq.read_table(out / "quarantine" / f"{source.name}.parquet").to_pylist()
    assert report.inputs == report.kept + report.quarantined
    assert report.quarantined == len(qrows) and report.rows == len(rows)
    checks = verify_outputs(out, source, report)
    assert all(c.passed for c in checks.values()), {k: c.metadata for k, c in checks.items() if not c.passed}
    for r in rows:
        assert md5_file(out / r["image"]) == r["image_md5"]
        assert r["image"].startswith(f"images/{source.dim}/{source.task}/")
    return report, rows, qrows


def reasons(qrows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for q in qrows:
        out[q["reason"]] = out.get(q["reason"], 0) + 1
    return out
