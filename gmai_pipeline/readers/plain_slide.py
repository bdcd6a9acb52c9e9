"""`convert: {kind: wsi, backend: plain}`: a large plain image (JPEG, PNG, non-pyramidal TIFF) read
through the same tiler as OpenSlide slides.

Some pathology sets ship their slides or cores as ordinary images: BCNB's `WSIs/<id>.jpg`, the Gleason
TMA cores (`<core>.jpg` with palette masks `mask_<core>.png`), HuBMAP's gigapixel `train/<id>.tiff`.
OpenSlide opens none of them (it wants a pyramid or a vendor format), and the 2D readers decode a whole
image at once. `PlainSlide` gives the read interface the tiler uses (`dimensions`, `level_downsamples`,
`read_region`, `properties`, `close`) over one level, so tiles, polygons, mask slides and background
tiles work unchanged; only the decoding differs:

- TIFF: tifffile's own tiles or strips (`TiffPage.dataoffsets` and `TiffPage.decode`), so a read
  decodes only the segments its window touches: a 40k x 30k HuBMAP TIFF is never held whole. A
  segment over the decode budget (an untiled, one-strip TIFF) is `too_large`. Contiguous samples,
  planar-separate `(3, H, W)` pages and one page per channel (HuBMAP's `(1, 1, 3, H, W)` series) work.
- Anything Pillow opens (JPEG, PNG): decoded once per slide and kept while it is tiled, after its
  decoded size is checked against the decode budget (`too_large` otherwise): JPEG has no random access.

A mask (`mask=True`) keeps its values, not colours: a palette PNG gives its indices, a grey one its
levels, in the red channel the mask tiler reads (OpenSlide's convention for PANDA mask slides). Pixels
outside the image are transparent, as OpenSlide returns them. Plain images record no objective power:
the entry declares `base_magnification`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gmai_pipeline.decode_guard import DecodeBudget
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason

TIFF_SUFFIXES = (".tif", ".tiff")


class PlainSlide:
    """One-level slide over a plain image; see the module docstring."""

    properties: dict[str, str] = {}

    def __init__(self, path: Path, name: str, mask: bool = False, budget: DecodeBudget | None = None):
        self.name, self.mask = name, mask
        self.budget = budget or DecodeBudget()
        self._tiff = None
        self._image = None  # a decoded Pillow image (JPEG, PNG): no random access to decode from
        if not Path(path).is_file():
            raise ImageError(Reason.MISSING_FILE, f"{name}: image file not found")
        if str(path).lower().endswith(TIFF_SUFFIXES) or name.lower().endswith(TIFF_SUFFIXES):
            self._open_tiff(path)
        else:
            self._open_pillow(path)

    # -------------------------------------------------------------- the OpenSlide interface

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return ((self.width, self.height),)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        """RGBA window at level 0; outside the image transparent (alpha 0)."""
        from PIL import Image

        if level != 0:
            raise ImageError(Reason.UNREADABLE, f"{self.name}: a plain image has one level, not {level}")
        x, y = (int(v) for v in location)
        w, h = (int(v) for v in size)
        self.budget.check(w * h * 4, self.name, f"a {w}x{h} window")
        out = np.zeros((h, w, 4), np.uint8)
        x0, y0, x1, y1 = max(0, x), max(0, y), min(self.width, x + w), min(self.height, y + h)
        if x1 > x0 and y1 > y0:
            win = self._window(x0, y0, x1, y1)
            out[y0 - y : y1 - y, x0 - x : x1 - x, :3] = win
            out[y0 - y : y1 - y, x0 - x : x1 - x, 3] = 255
        return Image.fromarray(out, "RGBA")

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None
        self._image = None

    # -------------------------------------------------------------- Pillow

    def _open_pillow(self, path: Path) -> None:
        from PIL import Image

        try:
            with Image.open(path) as im:
                self.width, self.height = im.size
                bands = 1 if self.mask else 3
                self.budget.check(self.width * self.height * bands, self.name, "the whole image")
                if self.mask:
                    if im.mode not in ("P", "L", "1", "I", "I;16"):
                        raise ImageError(
                            Reason.UNSUPPORTED_LAYOUT,
                            f"{self.name}: a mask must be palette or greyscale, not mode {im.mode}",
                        )
                    im.load()
                    decoded = im if im.mode != "1" else im.convert("L")
                else:
                    im.load()
                    decoded = im if im.mode == "RGB" else im.convert("RGB")
        except ImageError:
            raise
        except Image.DecompressionBombError:
            raise ImageError(
                Reason.TOO_LARGE, f"{self.name}: over Pillow's decompression-bomb limit"
            ) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(
                Reason.UNREADABLE, f"{self.name}: cannot decode ({type(exc).__name__})"
            ) from None
        self._image = decoded  # one decoded copy; windows are cropped from it

    # -------------------------------------------------------------- tifffile

    def _open_tiff(self, path: Path) -> None:
        import tifffile

        try:
            self._tiff = tifffile.TiffFile(path)
            page = self._tiff.pages[0]
        except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds on a broken file
            self.close()
            raise ImageError(
                Reason.UNREADABLE, f"{self.name}: not a readable TIFF ({type(exc).__name__})"
            ) from None
        self._page = page
        shape = [int(s) for s in page.shape]
        self.samples = int(page.samplesperpixel)
        self.separate = self.samples > 1 and int(page.planarconfig) == 2
        self.height, self.width = (shape[-2], shape[-1]) if self.separate else (shape[0], shape[1])
        self._pages = [(page, None)]  # (page, output channel it fills; None: its own samples)
        series = self._tiff.series[0] if self._tiff.series else None
        if (  # one page per colour channel: HuBMAP's (1, 1, 3, H, W) files
            self.samples == 1
            and series is not None
            and len(series.pages) == 3
            and tuple(d for d in series.shape if d != 1) == (3, self.height, self.width)
        ):
            self._pages = [(pg, c) for c, pg in enumerate(series.pages)]
            self.samples = 3
        if page.is_tiled:
            self.seg_w, self.seg_h = int(page.tilewidth), int(page.tilelength)
        else:
            self.seg_w, self.seg_h = self.width, int(page.rowsperstrip or self.height) or self.height
            self.seg_h = min(self.seg_h, self.height)
        seg_bytes = self.seg_w * self.seg_h * int(page.samplesperpixel) * page.dtype.itemsize
        self.budget.check(seg_bytes, self.name, f"one {self.seg_w}x{self.seg_h} TIFF segment")
        if page.dtype.itemsize != 1:
            self.close()
            raise ImageError(
                Reason.UNSUPPORTED_LAYOUT, f"{self.name}: {page.dtype} TIFF; plain slides are 8-bit"
            )

    def _segments(self, x0: int, y0: int, x1: int, y1: int) -> list[int]:
        across = math.ceil(self.width / self.seg_w)
        down = math.ceil(self.height / self.seg_h)
        per_plane = across * down
        idx = [
            j * across + i
            for j in range(y0 // self.seg_h, (y1 - 1) // self.seg_h + 1)
            for i in range(x0 // self.seg_w, (x1 - 1) // self.seg_w + 1)
        ]
        planes = self.samples if self.separate else 1
        return [p * per_plane + k for p in range(planes) for k in idx]

    def _window(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        if self._image is not None:
            return self._rgb(np.asarray(self._image.crop((x0, y0, x1, y1))))
        fh = self._tiff.filehandle  # type: ignore[union-attr]
        out = np.zeros((y1 - y0, x1 - x0, self.samples), np.uint8)
        for page, channel in self._pages:
            self._fill(out, page, channel, fh, x0, y0, x1, y1)
        return self._rgb(out)

    def _fill(
        self, out: np.ndarray, page, channel: int | None, fh, x0: int, y0: int, x1: int, y1: int
    ) -> None:
        """Decode the segments of `page` that the window touches into `out`."""
        for k in self._segments(x0, y0, x1, y1):
            fh.seek(page.dataoffsets[k])
            data = fh.read(page.databytecounts[k])
            seg, (s, _, sy, sx, _), _ = page.decode(data, k, jpegtables=page.jpegtables)
            if seg is None:  # a segment the file leaves empty
                continue
            seg = np.asarray(seg).reshape(seg.shape[-3], seg.shape[-2], -1)
            ty0, tx0 = max(y0, sy), max(x0, sx)
            ty1, tx1 = min(y1, sy + seg.shape[0]), min(x1, sx + seg.shape[1])
            if ty1 <= ty0 or tx1 <= tx0:
                continue
            part = seg[ty0 - sy : ty1 - sy, tx0 - sx : tx1 - sx]
            dst = out[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]
            if channel is not None:
                dst[..., channel] = part[..., 0]
            elif self.separate:
                dst[..., s] = part[..., 0]
            else:
                dst[...] = part[..., : self.samples]

    def _rgb(self, a: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8: a mask's values in the red channel, an image's colours."""
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        if self.mask:
            if a.ndim != 2:
                a = a[..., 0]
            if a.size and int(a.max()) > 255:
                raise ImageError(Reason.UNSUPPORTED_LAYOUT, f"{self.name}: mask values above 255")
            out = np.zeros((*a.shape, 3), np.uint8)
            out[..., 0] = a
            return out
        if a.ndim == 2:
            return np.repeat(a[..., None], 3, axis=2).astype(np.uint8)
        return a[..., :3].astype(np.uint8)
