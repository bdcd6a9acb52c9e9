"""The converter option models: the YAML each module documents is a valid catalog entry, and a typo fails loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
from layout_fixtures import entry
from pydantic import TypeAdapter, ValidationError

from gmai_pipeline import converters, safe_yaml
from gmai_pipeline.converters import KINDS, ConvertOptions, dicom_series, hdf5, polygons, rle, wsi
from gmai_pipeline.layouts import CONVERT_TASKS

ADAPTER = TypeAdapter(ConvertOptions)


@pytest.mark.parametrize("module", [dicom_series, polygons, rle, hdf5, wsi])
def test_documented_yaml_is_a_valid_catalog_entry(tmp_path: Path, module) -> None:
    block = module.__doc__.split("Catalog declaration", 1)[1].split(":\n", 1)[1]
    text = "\n".join(line[4:] for line in block.splitlines() if line.startswith("    ") or not line.strip())
    kind = safe_yaml.loads(text)["reader"]["convert"]["kind"]
    task = CONVERT_TASKS[kind][0]
    source = entry(tmp_path, "doc", task, text, modality="CT" if task == "3d_seg" else "Pathology")
    assert isinstance(source.reader.convert, KINDS[kind])
    assert kind.replace("_", "") in module.__name__.replace("_", "")


def test_typos_and_missing_statements_fail() -> None:
    with pytest.raises(ValidationError):
        ADAPTER.validate_python({"kind": "rle"})  # order must be stated per dataset
    with pytest.raises(ValidationError):
        ADAPTER.validate_python({"kind": "rle", "order": "column", "stat": 0})
    with pytest.raises(ValidationError):
        ADAPTER.validate_python({"kind": "dicom_series", "mask": {"kind": "slices"}})  # match is required
    with pytest.raises(ValidationError):
        ADAPTER.validate_python({"kind": "wsi", "tile_size": 256})  # no magnification or mpp
    with pytest.raises(ValidationError):
        ADAPTER.validate_python({"kind": "tiff_stack"})
    assert set(KINDS) == {"dicom_series", "polygons", "rle", "hdf5", "wsi", "npy", "imgannot"}
    assert "dicom_series" in converters.__doc__
