"""Plain (non-pyramidal) images tiled like slides: `convert: {kind: wsi, backend: plain}`.

Files at the datasets' real paths: Gleason TMA cores and palette masks (eiriniar/gleason_CNN:
utils/create_patches.py reads `<core>.jpg` with `Gleason_masks_train/mask_<core>.png`, palette 0 benign,
1-3 Gleason 3-5, 4 ignore) and HuBMAP's planar `train/<id>.tiff` (Kaggle hubmap-kidney-segmentation).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from gmai_pipeline.converters.wsi import WsiOptions, iter_mask_tiles
from gmai_pipeline.decode_guard import DecodeBudget
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.plain_slide import PlainSlide

GLEASON = {0: 1, 1: 2, 2: 3, 3: 4, 4: 0}  # palette index -> label value (ignore -> unlabelled)


def _core(tmp_path):
    img = tmp_path / "TMA_images" / "ZT76_39_A_1_1.jpg"
    msk = tmp_path / "Gleason_masks_train" / "mask_ZT76_39_A_1_1.png"
    img.parent.mkdir()
    msk.parent.mkdir()
    rgb = np.full((600, 900, 3), (170, 60, 190), np.uint8)
    rgb[450:, :300] = 255  # glass below the benign gland
    Image.fromarray(rgb).save(img, quality=90)
    index = np.full((600, 900), 4, np.uint8)  # white: ignore
    index[:, :300] = 0  # benign
    index[:, 300:600] = 1  # Gleason 3
    pal = Image.fromarray(index, "P")
    pal.putpalette([0, 255, 0, 0, 0, 255, 255, 255, 0, 255, 0, 0, 255, 255, 255])
    pal.save(msk)
    return img, msk


def test_gleason_core_tiles_take_the_single_class_of_their_central_third(tmp_path):
    img, msk = _core(tmp_path)
    opts = WsiOptions(
        backend="plain",
        magnification=40,
        base_magnification=40,
        tile_size=300,
        stride=150,
        mask_values=GLEASON,
        label_from="center",
        max_mean_brightness=180,
    )
    tiles = list(iter_mask_tiles(img, "TMA_images/ZT76_39_A_1_1.jpg", msk, "m.png", opts))
    got = {(t.spec.x, t.spec.y): set(np.unique(t.mask).tolist()) for t in tiles}
    # columns 0..300 benign (1), 300..600 Gleason 3 (2), 600..900 ignore: a tile whose centre third
    # holds two grades (x=150: 250..350) or only ignore pixels (x=600) is not cut; one grade beside
    # ignore pixels is that grade (x=450); (0, 300) is half glass (mean over 180)
    assert got == {
        (0, 0): {1},
        (0, 150): {1},
        (300, 0): {2},
        (300, 150): {2},
        (300, 300): {2},
        (450, 0): {2},
        (450, 150): {2},
        (450, 300): {2},
    }
    assert all(t.image.shape == (300, 300, 3) for t in tiles)
    assert tiles[0].position == "TMA_images/ZT76_39_A_1_1@L0_x0_y0"
    assert abs(int(tiles[0].image[..., 0].mean()) - 170) < 6  # the core's pixels, not the palette


def test_palette_mask_is_read_as_indices_not_colours(tmp_path):
    _, msk = _core(tmp_path)
    s = PlainSlide(msk, "mask_ZT76_39_A_1_1.png", mask=True)
    red = np.asarray(s.read_region((250, 0), 0, (100, 2)))[..., 0]
    assert red[0, :50].tolist() == [0] * 50 and red[0, 50:].tolist() == [1] * 50


def test_hubmap_planar_tiff_is_read_window_by_window(tmp_path):
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 255, (3, 700, 1000), dtype=np.uint8)  # (3, H, W) like HuBMAP's (1,1,3,H,W)
    path = tmp_path / "train" / "2f6ecfcdf.tiff"
    path.parent.mkdir()
    tifffile.imwrite(
        path, planes, photometric="rgb", planarconfig="separate", tile=(128, 128), compression="zlib"
    )
    # a budget far below the whole image (2.1 MB decoded) but above one 128-px tile and the window
    s = PlainSlide(path, "train/2f6ecfcdf.tiff", budget=DecodeBudget(limit=200_000))
    assert s.dimensions == (1000, 700)
    assert len(s._segments(130, 10, 250, 120)) == 3  # one tile per plane: the window touches one
    win = np.asarray(s.read_region((900, 650), 0, (200, 100)))
    assert (win[:50, :100, :3] == planes[:, 650:, 900:].transpose(1, 2, 0)).all()
    assert (win[50:, :, 3] == 0).all() and (win[:, 100:, 3] == 0).all()  # outside: transparent
    s.close()


def test_one_strip_tiff_over_the_budget_is_too_large(tmp_path):
    path = tmp_path / "big.tiff"
    tifffile.imwrite(path, np.zeros((512, 512, 3), np.uint8), rowsperstrip=512)
    with pytest.raises(ImageError) as err:
        PlainSlide(path, "big.tiff", budget=DecodeBudget(limit=100_000))
    assert err.value.reason == Reason.TOO_LARGE and "big.tiff" in err.value.detail


def test_plain_backend_needs_a_declared_base_magnification():
    with pytest.raises(ValueError, match="base_magnification"):
        WsiOptions(backend="plain", magnification=20)


def test_bcnb_jpeg_slide_is_tiled_around_its_json_outline(tmp_path):
    """BCNB: `WSIs/<id>.jpg` (a slide stored as one JPEG) with `WSIs/<id>.json` ASAP outlines
    (bupt-ai-cz/BALNMP:preprocessing/cut_tumor_regions.py)."""
    from gmai_pipeline.converters.vertices_json import read_vertices_json
    from gmai_pipeline.converters.wsi import iter_tiles

    slide = tmp_path / "WSIs" / "280.jpg"
    slide.parent.mkdir()
    Image.fromarray(np.full((700, 1000, 3), (170, 60, 190), np.uint8)).save(slide)
    outline = {
        "positive": [{"vertices": [[300, 100], [460, 100], [460, 200], [300, 200]]}, {"vertices": [[5, 5]]}]
    }
    parsed = read_vertices_json(json.dumps(outline).encode(), "WSIs/280.json")
    assert [s.label for s in parsed.shapes] == ["positive"]
    assert parsed.skipped[0][0] == Reason.DEGENERATE_POLYGON
    opts = WsiOptions(backend="plain", magnification=20, base_magnification=20, tile_size=256)
    tiles = list(iter_tiles(slide, "WSIs/280.jpg", parsed.shapes, opts, {"positive": 1}))
    # the box 300..460 x 100..200 lies in grid cells (1, 0) (256..512): one tile, its box in tile pixels
    assert [t.position for t in tiles] == ["WSIs/280@L0_x256_y0"]
    value, box = tiles[0].boxes[0]
    assert value == 1 and [round(v) for v in box] == [44, 100, 204, 200]


def test_vertices_json_that_is_not_a_group_map_is_unreadable():
    from gmai_pipeline.converters.vertices_json import read_vertices_json

    with pytest.raises(ImageError) as err:
        read_vertices_json(b'[{"vertices": []}]', "WSIs/1.json")
    assert err.value.reason == Reason.UNREADABLE and "WSIs/1.json" in err.value.detail


def _rle_of(mask: np.ndarray, order: str) -> str:
    from gmai_pipeline.converters.rle import encode

    return encode(mask, order=order, start=1)


@pytest.mark.parametrize("order", ["column", "row"])
def test_rle_windows_match_the_whole_decode(order):
    from gmai_pipeline.converters.rle import decode
    from gmai_pipeline.readers.rle_window import RleMaskSlide

    rng = np.random.default_rng(1)
    mask = np.zeros((90, 130), bool)
    mask[10:40, 20:70] = True
    mask[60:89, 100:129] = True
    mask[rng.integers(0, 90, 40), rng.integers(0, 130, 40)] = True
    rle = _rle_of(mask, order)
    assert (decode(rle, 90, 130, order=order) == mask).all()
    s = RleMaskSlide(rle, 130, 90, order=order, start=1, runs="absolute", value=3, where="train.csv")
    for x, y, w, h in [(0, 0, 130, 90), (15, 5, 40, 50), (120, 80, 30, 30), (-5, -5, 10, 10)]:
        got = np.asarray(s.read_region((x, y), 0, (w, h)))[..., 0]
        want = np.zeros((h, w), np.uint8)
        x0, y0 = max(0, x), max(0, y)
        part = mask[y0 : y + h, x0 : x + w]
        want[y0 - y : y0 - y + part.shape[0], x0 - x : x0 - x + part.shape[1]] = part * 3
        assert (got == want).all(), (x, y, w, h)


def test_hubmap_tiff_with_rle_row_gives_tiles_with_boxes(tmp_path, monkeypatch):
    """HuBMAP: `train/<id>.tiff` + train.csv `id,encoding` (column-major, 1-based: Kaggle's rle_decode
    `mask.reshape(shape).T`); the coarse planning level is used because the image is over its budget."""
    import gmai_pipeline.readers.rle_window as rw
    from gmai_pipeline.readers.rle_window import RleMaskSlide

    monkeypatch.setattr(rw, "MAX_PLAN_PIXELS", 64 * 64)  # forces a coarse level of 1/16
    h, w = 700, 1000
    path = tmp_path / "train" / "2f6ecfcdf.tiff"
    path.parent.mkdir()
    rgb = np.full((h, w, 3), (170, 60, 190), np.uint8)
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(128, 128), compression="zlib")
    mask = np.zeros((h, w), bool)
    mask[300:380, 520:600] = True  # one glomerulus in grid cell (2, 1) of 256-px tiles
    rle = _rle_of(mask, "column")
    opts = WsiOptions(backend="plain", magnification=40, base_magnification=40, tile_size=256)
    ms = []

    def open_mask(info):
        ms.append(
            RleMaskSlide(
                rle, info.width, info.height, order="column", start=1, runs="absolute", value=1, where="x"
            )
        )
        return ms[-1]

    tiles = list(iter_mask_tiles(path, "train/2f6ecfcdf.tiff", None, "train.csv", opts, open_mask))
    assert ms[0].level_downsamples == (1.0, 16.0)
    assert [t.position for t in tiles] == ["train/2f6ecfcdf@L0_x512_y256"]
    ((value, box),) = tiles[0].boxes
    assert value == 1 and [round(v) for v in box] == [8, 44, 88, 124]


def test_one_page_per_channel_tiff_is_read_as_colour(tmp_path):
    """HuBMAP's (1, 1, 3, H, W) TIFFs: three single-channel pages of one series."""
    planes = np.stack([np.full((300, 400), v, np.uint8) for v in (10, 120, 230)])
    path = tmp_path / "train" / "aaa6a05cc.tiff"
    path.parent.mkdir()
    tifffile.imwrite(path, planes[None, None], photometric="minisblack", tile=(128, 128))
    s = PlainSlide(path, "train/aaa6a05cc.tiff")
    assert s.dimensions == (400, 300)
    assert np.asarray(s.read_region((100, 100), 0, (5, 5)))[0, 0].tolist() == [10, 120, 230, 255]
    s.close()
