"""Fingerprints: pixel MD5 survives lossless re-encodes, dHash survives JPEG and resize, distinct stays distinct."""

from __future__ import annotations

import io
from pathlib import Path

import imagehash
import numpy as np
import pytest
import skimage
from PIL import Image

from gmai_pipeline.hashing import ImageDecodeError, canonical, hamming, hash_image, to_hex

DATA = Path(skimage.__file__).parent / "data"
# real pictures bundled with scikit-image: fundus, histology, grey photos, a phantom, textures
# (brick.png is left out: a uniform texture's 9x8 gradients are noise, its dHash moves ~25 bits under resize)
PICTURES = ["retina.jpg", "ihc.png", "camera.png", "moon.png", "coins.png", "phantom.png", "cell.png",
            "astronaut.png", "microaneurysms.png", "page.png", "grass.png", "coffee.png", "chelsea.png", "horse.png"]  # fmt: skip


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def picture(name: str) -> Image.Image:
    img = Image.open(DATA / name)
    img.load()
    return img.convert("RGB") if img.mode not in ("L", "RGB") else img


def test_pixel_md5_survives_lossless_reencode_and_grey_as_rgb():
    grey = picture("camera.png")
    assert grey.mode == "L"
    png = hash_image(encode(grey, "PNG"))
    variants = [
        encode(grey, "PNG", compress_level=1),
        encode(grey, "TIFF"),
        encode(grey, "BMP"),
        encode(grey.convert("RGB"), "PNG"),  # grey picture stored as RGB
        encode(grey.convert("RGBA"), "PNG"),  # opaque alpha
        encode(grey.convert("P"), "PNG"),  # palette of greys
    ]
    for data in variants:
        h = hash_image(data)
        assert h.md5 != png.md5
        assert h.pixel_md5 == png.pixel_md5
        assert h.dhash == png.dhash
    assert hash_image(encode(picture("moon.png"), "PNG")).pixel_md5 != png.pixel_md5


def test_colour_picture_is_not_collapsed_to_grey():
    img = picture("astronaut.png")
    assert canonical(img).mode == "RGB"
    assert canonical(img.convert("L").convert("RGB")).mode == "L"


@pytest.mark.parametrize("name", PICTURES)
def test_jpeg_reencode_and_resize_within_threshold(name: str):
    img = picture(name)
    original = hash_image(encode(img, "PNG"))
    jpeg = hash_image(encode(img.convert("RGB"), "JPEG", quality=75))  # what VLMEvalKit stores
    small = img.resize((round(img.width * 0.8), round(img.height * 0.8)), Image.Resampling.BILINEAR)
    resized = hash_image(encode(small.convert("RGB"), "JPEG", quality=75))
    assert jpeg.md5 != original.md5 and jpeg.pixel_md5 != original.pixel_md5
    assert hamming(original.dhash, jpeg.dhash) <= 4
    assert hamming(original.dhash, resized.dhash) <= 6
    assert hamming(original.phash, jpeg.phash) <= 22  # the second opinion never vetoes a re-encode


def test_distinct_pictures_are_far_apart():
    hashes = {n: hash_image(encode(picture(n), "PNG")) for n in PICTURES}
    names = sorted(hashes)
    closest = min(
        hamming(hashes[a].dhash, hashes[b].dhash) for i, a in enumerate(names) for b in names[i + 1 :]
    )
    assert closest > 6


def test_matches_imagehash_definitions_closely():
    """Same algorithm as ImageHash; only the faster downscale differs, by a bit or two."""
    for name in PICTURES[:8]:
        img = picture(name)
        ours = hash_image(encode(img, "PNG"))
        assert hamming(ours.dhash, int(str(imagehash.dhash(img)), 16)) <= 4
        assert hamming(ours.phash, int(str(imagehash.phash(img)), 16)) <= 6
        assert len(to_hex(ours.dhash)) == 16


def test_flat_images_get_no_perceptual_hash():
    black = hash_image(encode(Image.new("L", (64, 64), 0), "PNG"))
    grey = hash_image(encode(Image.new("RGB", (80, 40), (120, 120, 121)), "PNG"))
    assert black.dhash is None and black.phash is None and grey.dhash is None
    assert black.pixel_md5 != hash_image(encode(Image.new("L", (64, 64), 1), "PNG")).pixel_md5


def test_sixteen_bit_image_hashes():
    arr = (np.outer(np.arange(64), np.arange(48)) * 7).astype(np.uint16)
    h = hash_image(encode(Image.fromarray(arr), "PNG"))
    assert (h.width, h.height) == (48, 64) and h.dhash is not None
    assert h.pixel_md5 == hash_image(encode(Image.fromarray(arr), "TIFF")).pixel_md5


def test_undecodable_bytes_raise():
    with pytest.raises(ImageDecodeError):
        hash_image(b"definitely not an image")
    with pytest.raises(ImageDecodeError):
        hash_image(encode(picture("camera.png"), "PNG")[:500])
