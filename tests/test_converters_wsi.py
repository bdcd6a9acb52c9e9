"""Whole-slide tiles: a small pyramidal TIFF written with tifffile in Aperio's SVS layout (tiled
levels, `Aperio Image Library` description with AppMag and MPP, which OpenSlide's aperio driver
reads), opened through OpenSlide, tiled around an ASAP polygon with a hole, boxes checked by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from gmai_pipeline.converters.polygons import read_asap_xml
from gmai_pipeline.converters.wsi import WsiOptions, iter_tiles, tissue_fraction
from gmai_pipeline.imaging import ImageError

W, H = 3072, 2048
PINK = (200, 80, 150)
POLY = [(600, 300), (1000, 300), (1000, 700), (600, 700)]
HOLE = [(750, 450), (850, 450), (850, 550), (750, 550)]


def write_slide(path: Path, aperio: bool = True) -> None:
    base = np.full((H, W, 3), 240, np.uint8)
    base[300:700, 600:1000] = PINK  # the annotated lesion
    base[200:1800, 1600:3072] = (170, 60, 190)  # unannotated tissue for background tiles
    desc = f"Aperio Image Library v12.0.15\r\n{W}x{H} [0,0 {W}x{H}] (256x256) RGB|AppMag = 20|MPP = 0.5"
    with tifffile.TiffWriter(path) as tw:
        for i, step in enumerate((1, 2, 4)):
            tw.write(
                base[::step, ::step],
                tile=(256, 256),
                photometric="rgb",
                compression="zlib",
                description=desc if aperio and i == 0 else None,
                metadata=None,
                subfiletype=0 if i == 0 else 1,
            )


def asap(path: Path) -> Path:
    def ann(i: int, group: str, pts) -> str:
        c = "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in enumerate(pts))
        return f'<Annotation Name="Annotation {i}" Type="Polygon" PartOfGroup="{group}"><Coordinates>{c}</Coordinates></Annotation>'

    path.write_text(
        f"<ASAP_Annotations><Annotations>{ann(0, 'metastases', POLY)}{ann(1, '_2', HOLE)}</Annotations></ASAP_Annotations>"
    )
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    tmp_path = tmp_path_factory.mktemp("slide")
    write_slide(tmp_path / "tumor_001.tif")
    assert openslide.OpenSlide.detect_format(str(tmp_path / "tumor_001.tif")) == "aperio"
    shapes = read_asap_xml(asap(tmp_path / "tumor_001.xml"), "lesion_annotations/tumor_001.xml").shapes
    return tmp_path / "tumor_001.tif", shapes


def test_grid_tiles_at_10x_read_level_1_and_boxes_match(slide) -> None:
    path, shapes = slide
    opts = WsiOptions(magnification=10, tile_size=256)  # 20x slide -> factor 2 -> level 1, no resize
    tiles = list(iter_tiles(path, "training/tumor/tumor_001.tif", shapes, opts, {"metastases": 1}))
    # the lesion spans level-0 x 600..1000, y 300..700: grid cells of 512 at (512, 0) and (512, 512)
    assert [t.position for t in tiles] == [
        "training/tumor/tumor_001@L1_x512_y0",
        "training/tumor/tumor_001@L1_x512_y512",
    ]
    assert tiles[0].boxes == [(1, (44, 150, 244, 256))]
    assert tiles[1].boxes == [(1, (44, 0, 244, 94))]
    t = tiles[0]
    assert t.image.shape == (256, 256, 3) and t.mask.shape == (256, 256)
    assert tuple(t.image[200, 100]) == PINK and t.mask[200, 100] == 1
    assert t.mask[240, 144] == 0  # inside the `_2` exclusion (level-0 (800, 480))
    assert tuple(t.image[10, 10]) == (240, 240, 240) and t.mask[10, 10] == 0


def test_centered_tile_at_an_mpp_between_levels(slide) -> None:
    path, shapes = slide
    opts = WsiOptions(mpp=0.75, tile_size=512, placement="centered")  # factor 1.5: level 0 read, resized
    [tile] = list(iter_tiles(path, "tumor_001.tif", shapes, opts, {"metastases": 1}))
    # centred on (800, 500), footprint 768: origin (416, 116); edges at (600-416)/1.5 = 122.7 and 389.3
    assert tile.position == "tumor_001@L0_x416_y116"
    assert tile.boxes == [(1, (123, 123, 389, 389))]
    assert np.abs(tile.image[256, 150].astype(int) - PINK).max() <= 2


def test_background_tiles_are_tissue_away_from_annotations_and_repeatable(slide) -> None:
    path, shapes = slide
    opts = WsiOptions(magnification=10, tile_size=256, background_tiles=3)
    tiles = list(iter_tiles(path, "tumor_001.tif", shapes, opts, {"metastases": 1}))
    bg = [t for t in tiles if t.spec.kind == "background"]
    assert len(bg) == 3 and all(not t.boxes and tissue_fraction(t.image) >= 0.5 for t in bg)
    for t in bg:  # never over the lesion's bounding box
        assert t.spec.x >= 1000 or t.spec.x + 512 <= 600 or t.spec.y >= 700 or t.spec.y + 512 <= 300
    again = [t.position for t in iter_tiles(path, "tumor_001.tif", shapes, opts, {"metastases": 1})]
    assert again == [t.position for t in tiles]


def test_slide_level_failures(slide, tmp_path: Path) -> None:
    path, shapes = slide
    with pytest.raises(ImageError) as e:
        list(iter_tiles(path, "tumor_001.tif", shapes, WsiOptions(magnification=40), {"metastases": 1}))
    assert e.value.reason == "magnification_unavailable"
    with pytest.raises(ImageError) as e:
        list(iter_tiles(path, "tumor_001.tif", shapes, WsiOptions(magnification=10), {"tumor": 1}))
    assert e.value.reason == "unknown_label" and "'metastases'" in e.value.detail
    write_slide(tmp_path / "plain.tif", aperio=False)  # generic tiled TIFF without resolution tags
    with pytest.raises(ImageError) as e:
        list(
            iter_tiles(
                tmp_path / "plain.tif", "plain.tif", shapes, WsiOptions(magnification=10), {"metastases": 1}
            )
        )
    assert e.value.reason == "no_magnification"
    tiles = list(
        iter_tiles(
            tmp_path / "plain.tif",
            "plain.tif",
            shapes,
            WsiOptions(magnification=10, base_magnification=20, tile_size=256),
            {"metastases": 1},
        )
    )
    assert [t.boxes for t in tiles] == [[(1, (44, 150, 244, 256))], [(1, (44, 0, 244, 94))]]
    (tmp_path / "notes.svs").write_bytes(b"not a slide")
    with pytest.raises(ImageError) as e:
        list(
            iter_tiles(
                tmp_path / "notes.svs", "notes.svs", shapes, WsiOptions(magnification=10), {"metastases": 1}
            )
        )
    assert e.value.reason == "unreadable" and e.value.detail.startswith("notes.svs: ")
    with pytest.raises(ValueError):
        WsiOptions(magnification=10, mpp=0.5)


def test_panda_style_mask_slide_gives_region_tiles_and_values(tmp_path: Path) -> None:
    """PANDA: `train_images/{id}.tiff` + `train_label_masks/{id}_mask.tiff`, labels in the red channel."""
    from gmai_pipeline.converters.wsi import iter_mask_tiles

    write_slide(tmp_path / "0005f7aaab2800f6170c399693a96917.tiff")
    lab = np.zeros((H, W, 3), np.uint8)
    lab[300:700, 600:1000, 0] = 4  # Radboud: Gleason 4
    lab[300:500, 600:700, 0] = 1  # stroma
    desc = f"Aperio Image Library v12.0.15\r\n{W}x{H} [0,0 {W}x{H}] (256x256) RGB|AppMag = 20|MPP = 0.5"
    with tifffile.TiffWriter(
        tmp_path / "0005f7aaab2800f6170c399693a96917_mask.tiff"
    ) as tw:  # its own pyramid: 1/4/16
        for i, step in enumerate((1, 4, 16)):
            tw.write(
                lab[::step, ::step],
                tile=(256, 256),
                photometric="rgb",
                compression="zlib",
                description=desc if i == 0 else None,
                metadata=None,
                subfiletype=0 if i == 0 else 1,
            )
    tiles = list(
        iter_mask_tiles(
            tmp_path / "0005f7aaab2800f6170c399693a96917.tiff",
            "train_images/0005f7aaab2800f6170c399693a96917.tiff",
            tmp_path / "0005f7aaab2800f6170c399693a96917_mask.tiff",
            "train_label_masks/0005f7aaab2800f6170c399693a96917_mask.tiff",
            WsiOptions(magnification=10, tile_size=256),
        )
    )
    assert [t.position.rsplit("@", 1)[1] for t in tiles] == ["L1_x512_y0", "L1_x512_y512"]
    assert tiles[0].boxes == [(1, (44, 150, 94, 250)), (4, (44, 150, 244, 256))]
    assert tiles[1].boxes == [(4, (44, 0, 244, 94))]
