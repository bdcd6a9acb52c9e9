"""The converter option models: the YAML each module documents parses, and a typo fails loudly."""

from __future__ import annotations

import re

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from gmai_pipeline import converters
from gmai_pipeline.converters import KINDS, ConvertOptions, dicom_series, hdf5, polygons, rle, wsi

ADAPTER = TypeAdapter(ConvertOptions)


@pytest.mark.parametrize("module", [dicom_series, polygons, rle, hdf5, wsi])
def test_documented_yaml_declares_a_valid_converter(module) -> None:
    block = module.__doc__.split("Proposed catalog declaration", 1)[1]
    text = "\n".join(line[4:] for line in block.splitlines() if line.startswith("    ") or not line.strip())
    reader = yaml.safe_load(text)["reader"]
    opts = ADAPTER.validate_python(reader["convert"])
    assert type(opts) is KINDS[reader["convert"]["kind"]]
    assert re.sub(r"_", "", opts.kind) in module.__name__.replace("_", "")


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
    assert set(KINDS) == {"dicom_series", "polygons", "rle", "hdf5", "wsi"}
    assert "dicom_series" in converters.__doc__
