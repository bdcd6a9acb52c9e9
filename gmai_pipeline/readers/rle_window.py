"""A run-length mask read as a mask slide: `convert: {kind: wsi, rle: {column: encoding, order: column}}`.

HuBMAP's `train.csv` (`id,encoding`) holds one glomerulus mask per ~40k x 30k `train/<id>.tiff`;
decoded whole it would be one byte per slide pixel (over a GiB). `RleMaskSlide` answers the mask
tiler's reads (`read_region`, `dimensions`, `level_downsamples`) from the runs themselves: a window
is filled from the runs that cross it (found by binary search on the validated, increasing starts),
so memory is the window's, and a coarse level (`MAX_PLAN_PIXELS` at most) is drawn from the runs for
planning which tiles hold labels. Runs are parsed and validated by `converters.rle.runs_of` (the same
checks as the `rle` converter: integers, pairs, increasing, inside the image), in the order the
dataset states (`column`: Kaggle's top-to-bottom then left-to-right; `row`).
"""

from __future__ import annotations

import math

import numpy as np

from gmai_pipeline.converters.rle import is_empty, runs_of
from gmai_pipeline.converters.wsi import MAX_PLAN_PIXELS


class RleMaskSlide:
    """Label `value` where the runs cover, 0 elsewhere, in the red channel (a mask slide's convention)."""

    properties: dict[str, str] = {}

    def __init__(
        self, rle: str, width: int, height: int, *, order: str, start: int, runs: str, value: int, where: str
    ):
        self.width, self.height, self.order, self.value = width, height, order, value
        if is_empty(rle):
            self.starts = self.ends = np.zeros(0, np.int64)
        else:
            self.starts, self.ends = runs_of(rle, height, width, start=start, runs=runs, where=where)
        self.line = height if order == "column" else width  # pixels per line of the numbering
        d = 1
        while math.ceil(width / d) * math.ceil(height / d) > MAX_PLAN_PIXELS:
            d *= 2
        self.coarse = d
        self._low: np.ndarray | None = None

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,) if self.coarse == 1 else (1.0, float(self.coarse))

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        d = self.coarse
        dims = [(self.width, self.height)]
        if d > 1:
            dims.append((math.ceil(self.width / d), math.ceil(self.height / d)))
        return tuple(dims)

    def close(self) -> None:
        self._low = None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        from PIL import Image

        x, y = (int(v) for v in location)
        w, h = (int(v) for v in size)
        out = np.zeros((h, w, 4), np.uint8)
        if level == 0:
            x0, y0 = max(0, x), max(0, y)
            x1, y1 = min(self.width, x + w), min(self.height, y + h)
            if x1 > x0 and y1 > y0:
                out[y0 - y : y1 - y, x0 - x : x1 - x, 0] = self._window(x0, y0, x1, y1)
                out[y0 - y : y1 - y, x0 - x : x1 - x, 3] = 255
        else:
            d = self.coarse
            low = self._coarse()
            lx, ly = x // d, y // d
            part = low[max(0, ly) : ly + h, max(0, lx) : lx + w]
            out[: part.shape[0], : part.shape[1], 0] = part
            out[: part.shape[0], : part.shape[1], 3] = 255
        return Image.fromarray(out, "RGBA")

    def _runs_in(self, lo: int, hi: int) -> range:
        """Indices of the runs that overlap the flat pixel range [lo, hi)."""
        first = int(np.searchsorted(self.ends, lo, side="right"))
        last = int(np.searchsorted(self.starts, hi, side="left"))
        return range(first, last)

    def _window(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """(y1 - y0, x1 - x0) uint8 of the window, from the runs that cross it."""
        col = self.order == "column"
        m0, m1, n0, n1 = (x0, x1, y0, y1) if col else (y0, y1, x0, x1)  # major (line) / minor ranges
        L = self.line
        win = np.zeros((m1 - m0, n1 - n0), np.uint8)
        for k in self._runs_in(m0 * L + n0, (m1 - 1) * L + n1):
            s, e = int(self.starts[k]), int(self.ends[k])
            for m in range(max(m0, s // L), min(m1 - 1, (e - 1) // L) + 1):
                a, b = max(s, m * L + n0), min(e, m * L + n1)
                if a < b:
                    win[m - m0, a - m * L - n0 : b - m * L - n0] = self.value
        return win.T if col else win

    def _coarse(self) -> np.ndarray:
        """The planning level: a coarse pixel is labelled where any run touches it."""
        if self._low is None:
            d, L = self.coarse, self.line
            lw, lh = math.ceil(self.width / d), math.ceil(self.height / d)
            low = np.zeros((lw, lh) if self.order == "column" else (lh, lw), np.uint8)
            for s, e in zip(self.starts.tolist(), self.ends.tolist(), strict=True):
                for m in range(s // L, (e - 1) // L + 1):
                    a, b = max(s, m * L) - m * L, min(e, (m + 1) * L) - m * L
                    low[m // d, a // d : (b - 1) // d + 1] = self.value
            self._low = low.T if self.order == "column" else low
        return self._low
