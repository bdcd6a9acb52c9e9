"""Fixture files in the converters' formats (`format:` + `holds:` of a record's fixture file) come out
readable by the converter that reads the real download, with the geometry, labels and runs declared."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from gmai_pipeline.catalog_fixtures import SLIDE, build
from gmai_pipeline.catalog_records import Fixture
from gmai_pipeline.converters import dicom_series, polygons, rle


def _fixture(files: list[dict]) -> Fixture:
    return Fixture.model_validate({"files": files, "yields": {"labels": ["x"]}})


def test_series_polygons_rle_and_hdf5_are_read_by_their_converters(tmp_path: Path) -> None:
    fixture = _fixture(
        [
            {"path": "MR/1/T2SPIR/DICOM_anon/", "format": "dicom_series", "holds": {"modality": "MR"}},
            {"path": "MR/1/T2SPIR/Ground/", "format": "slice_masks", "holds": {"values": [63, 126]}},
            {"path": "a.tif", "image": "RGB"},
            {
                "path": "a.xml",
                "format": "aperio_xml",
                "holds": {"shapes": [{"name": "Epithelial"}, {"name": "Lymphocyte"}], "attribute": True},
            },
            {
                "path": "b.xml",
                "format": "asap_xml",
                "holds": {"shapes": [{"name": "Tumor"}, {"negative": True}]},
            },
            {"path": "c.geojson", "format": "geojson", "holds": {"shapes": [{"name": "Tumor"}]}},
            {
                "path": "train-rle.csv",
                "format": "rle_csv",
                "holds": {
                    "header": ["ImageId", "EncodedPixels"],
                    "rows": [["a", "@block"], ["b", "-1"], ["c", "@block"]],
                    "column": "EncodedPixels",
                    "order": "column",
                    "runs": "relative",
                },
            },
            {
                "path": "rows.csv",
                "format": "rle_csv",
                "holds": {
                    "header": ["id", "rle"],
                    "rows": [["d", "@block"]],
                    "column": "rle",
                    "order": "row",
                },
            },
            {
                "path": "x.h5",
                "format": "hdf5",
                "holds": {
                    "datasets": {
                        "x": {"holds": "images", "shape": [3, 16, 16, 3]},
                        "y": {"holds": "labels", "shape": [3, 1, 1, 1], "values": [0, 1, 1]},
                        "volumes/labels/ids": {
                            "holds": "masks",
                            "shape": [2, 8, 8],
                            "values": [7],
                            "dtype": "uint64",
                        },
                    }
                },
            },
        ]
    )
    build(fixture, tmp_path)
    # the series: one SeriesInstanceUID, ordered along the normal, 2.5 mm apart, masks beside it
    opts = dicom_series.DicomSeriesOptions(mask={"kind": "slices", "match": "file_order"})
    folder = tmp_path / "MR/1/T2SPIR/DICOM_anon"
    files = [dicom_series.DicomFile(p, p.name) for p in sorted(folder.iterdir())]
    found = dicom_series.scan(files, opts)
    assert len(found.series) == 1 and not found.rejected and len(found.series[0].slices) == 4
    sv = dicom_series.load(found.series[0], opts, "s")
    assert sv.volume.shape[2] == 4 and sv.spacing[2] == pytest.approx(2.5)
    plane = np.asarray(Image.open(tmp_path / "a.tif")).shape[:2]
    ground = sorted((tmp_path / "MR/1/T2SPIR/Ground").iterdir())
    assert len(ground) == 4
    assert {int(v): int((np.asarray(Image.open(ground[0])) == v).sum()) for v in (63, 126)} == {
        63: 16,
        126: 16,
    }
    # polygons: one 4x4 block per shape inside the picture, the names where each format keeps them
    aperio = polygons.read_annotations(
        tmp_path / "a.xml", "a.xml", polygons.PolygonOptions(format="aperio_xml", label_from="attribute")
    )
    assert [s.label for s in aperio.shapes] == ["Epithelial", "Lymphocyte"]
    inst = polygons.rasterize(aperio.shapes, *plane, instances=True)
    assert sorted(np.unique(inst, return_counts=True)[1].tolist())[:2] == [16, 16]
    asap = polygons.read_annotations(tmp_path / "b.xml", "b.xml", polygons.PolygonOptions(format="asap_xml"))
    assert [(s.label, s.negative) for s in asap.shapes] == [("Tumor", False), ("_2", True)]
    lab = polygons.rasterize(asap.shapes, *plane, {"Tumor": 1})
    assert int((lab == 1).sum()) == 12  # the hole cuts the centre 2x2
    geo = polygons.read_annotations(
        tmp_path / "c.geojson", "c.geojson", polygons.PolygonOptions(format="geojson")
    )
    assert [s.label for s in geo.shapes] == ["Tumor"]
    # RLE: the runs decode to one block each, in the numbering and run style declared
    lines = (tmp_path / "train-rle.csv").read_text().splitlines()
    assert lines[2] == "b,-1"
    a = rle.decode(lines[1].split(",")[1], *plane, order="column", runs="relative")
    c = rle.decode(lines[3].split(",")[1], *plane, order="column", runs="relative")
    assert a.sum() == c.sum() == 16 and not (a & c).any()
    d = rle.decode(
        (tmp_path / "rows.csv").read_text().splitlines()[1].split(",")[1], *plane, order="row", start=1
    )
    assert (
        d.sum() == 16
        and not rle.decode(
            (tmp_path / "rows.csv").read_text().splitlines()[1].split(",")[1], *plane, order="column", start=1
        )[d].all()
    )
    with h5py.File(tmp_path / "x.h5") as f:
        assert f["x"].shape == (3, 16, 16, 3) and f["x"].dtype == np.uint8
        assert f["y"][:].ravel().tolist() == [0, 1, 1]
        assert (
            f["volumes/labels/ids"].dtype == np.uint64 and int((f["volumes/labels/ids"][0] == 7).sum()) == 16
        )


def test_slides_are_pyramids_openslide_opens_with_their_magnification(tmp_path: Path) -> None:
    import openslide

    fixture = _fixture(
        [
            {
                "path": "training/tumor/tumor_001.tif",
                "format": "pyramid_tiff",
                "holds": {"levels": [1, 2, 4]},
            },
            {
                "path": "lesion_annotations/tumor_001.xml",
                "format": "asap_xml",
                "holds": {"shapes": [{"name": "Tumor"}]},
            },
            {"path": "train_images/a.tiff", "format": "pyramid_tiff", "holds": {"magnification": None}},
            {"path": "train_label_masks/a_mask.tiff", "format": "tiff_mask", "holds": {"values": [1, 4]}},
        ]
    )
    build(fixture, tmp_path)
    with openslide.OpenSlide(str(tmp_path / "training/tumor/tumor_001.tif")) as s:
        assert s.dimensions == SLIDE[::-1] and s.level_count == 3
        assert s.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "20"
        region = np.asarray(s.read_region((64, 64), 0, (448, 448)).convert("RGB"))
    shapes = polygons.read_annotations(
        tmp_path / "lesion_annotations/tumor_001.xml", "x", polygons.PolygonOptions(format="asap_xml")
    ).shapes
    assert shapes[0].bounds() == (64.0, 64.0, 448.0, 448.0)  # the lesion lies on the slide's lesion colour
    assert tuple(np.median(region[16:-16, 16:-16].reshape(-1, 3), axis=0)) == pytest.approx(
        (200, 80, 150), abs=13
    )
    with openslide.OpenSlide(str(tmp_path / "train_images/a.tiff")) as s:
        assert openslide.PROPERTY_NAME_OBJECTIVE_POWER not in s.properties and s.level_count == 3
    with openslide.OpenSlide(str(tmp_path / "train_label_masks/a_mask.tiff")) as m:
        red = np.asarray(m.read_region((0, 0), 2, m.level_dimensions[2]).convert("RGB"))[..., 0]
    assert sorted(np.unique(red).tolist()) == [0, 1, 4]


def test_holds_are_validated_per_format() -> None:
    with pytest.raises(ValueError, match="end the path in '/'"):
        _fixture([{"path": "DICOM_anon", "format": "dicom_series", "holds": {"modality": "MR"}}])
    with pytest.raises(ValueError, match="column 'rle' is not in the header"):
        _fixture(
            [
                {
                    "path": "t.csv",
                    "format": "rle_csv",
                    "holds": {"header": ["id"], "rows": [["a"]], "column": "rle", "order": "column"},
                }
            ]
        )
    with pytest.raises(ValueError, match="order"):
        _fixture(
            [
                {
                    "path": "t.csv",
                    "format": "rle_csv",
                    "holds": {"header": ["id", "r"], "rows": [["a", "1 2"]], "column": "r"},
                }
            ]
        )
    with pytest.raises(ValueError, match="one value per record"):
        _fixture(
            [
                {
                    "path": "x.h5",
                    "format": "hdf5",
                    "holds": {"datasets": {"y": {"holds": "labels", "shape": [2], "values": [1]}}},
                }
            ]
        )
    with pytest.raises(ValueError, match="format and holds go together"):
        _fixture([{"path": "x.h5", "format": "hdf5"}])
