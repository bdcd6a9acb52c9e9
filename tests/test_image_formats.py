"""Image formats beyond PNG/JPEG/TIFF/DICOM: Netpbm grey maps (mini-MIAS) and headerless raw pixels
(JSRT), each on tiny files at the dataset's real relative paths, read through its catalog YAML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from layout_fixtures import entry
from normalize_fixtures import reasons, run
from PIL import Image

MAMMO = {"modality": "X-Ray", "department": "Oncology"}


def _pgm(path: Path, arr: np.ndarray, maxval: int) -> Path:
    """A binary PGM (P5); samples above 255 are 16-bit big-endian, as the Netpbm format says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = arr.shape
    pixels = arr.astype(">u2" if maxval > 255 else np.uint8).tobytes()
    path.write_bytes(f"P5\n{w} {h}\n{maxval}\n".encode() + pixels)
    return path


def _ramp(h: int, w: int, top: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.linspace(0, top, h * w).reshape(h, w) * rng.uniform(0.9, 1.0, (h, w))).astype(np.int64)


def test_mini_mias_pgm_films_labelled_from_info_txt(tmp_path: Path) -> None:
    """Kaggle kmader/mias-mammography: all-mias/mdb001.pgm ... with Info.txt beside the folder (space
    separated, header `REFNUM BG CLASS SEVERITY X Y RADIUS`, NORM rows shorter; first rows as a public
    notebook quotes them). An 8-bit film and a 16-bit PGM (maxval 4095) both become 8-bit PNGs, the
    16-bit one scaled over its range rather than cut at 255."""
    raw = tmp_path / "raw" / "mias"
    _pgm(raw / "all-mias" / "mdb001.pgm", _ramp(48, 64, 255, 1), 255)
    _pgm(raw / "all-mias" / "mdb002.pgm", _ramp(48, 64, 4095, 2), 4095)
    _pgm(raw / "all-mias" / "mdb003.pgm", _ramp(48, 64, 255, 3), 255)
    (raw / "Info.txt").write_text(
        "REFNUM BG CLASS SEVERITY X Y RADIUS \n"
        "mdb001 G CIRC B 535 425 197\nmdb002 G CIRC B 522 280 69\nmdb003 D NORM \n"
    )
    source = entry(
        tmp_path,
        "mias",
        "2d_cls",
        r"""
        reader:
          kind: layout
          images: '**/mdb{n:\d{3}}.pgm'
          table: {file: '*Info.txt', image: REFNUM, delimiter: ' '}
          label: {column: CLASS}
        labels: {NORM: normal mammogram, CIRC: circumscribed mass}
        expect: {images: 3, classes: 2}
        """,
        **MAMMO,
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept, reasons(qrows)) == (3, 3, {})
    by_file = {r["source_path"].rsplit("/", 1)[-1]: r for r in rows}
    assert {k: r["label"] for k, r in by_file.items()} == {
        "mdb001.pgm": "circumscribed mass",
        "mdb002.pgm": "circumscribed mass",
        "mdb003.pgm": "normal mammogram",
    }
    deep = Image.open(tmp_path / "out" / by_file["mdb002.pgm"]["image"])
    assert (deep.format, deep.mode, deep.size) == ("PNG", "L", (64, 48))
    values = np.asarray(deep)
    assert values.max() == 255 and values.min() == 0 and len(np.unique(values)) > 100  # the whole range kept
