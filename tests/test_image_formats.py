"""Image formats beyond PNG/JPEG/TIFF/DICOM: Netpbm grey maps (mini-MIAS) and headerless raw pixels
(JSRT), each on tiny files at the dataset's real relative paths, read through its catalog YAML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from layout_fixtures import entry
from normalize_fixtures import reasons, run
from PIL import Image

from gmai_pipeline.catalog import CatalogError
from gmai_pipeline.manifest import scan
from gmai_pipeline.normalize import normalize_source, shown_names

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


def test_jsrt_headerless_raw_films_declared_size_type_and_byte_order(tmp_path: Path) -> None:
    """JSRT All247images/JPCLN001.IMG ... JPCNN093.IMG: headerless 12-bit samples in big-endian uint16
    (public loaders: numpy.fromfile(dtype '>u2').reshape(2048, 2048); here the declared size is smaller).
    A file of the wrong size is quarantined with both sizes; little-endian bytes read as big-endian give
    samples above 12 bits and are refused, naming the byte order; the label is the file prefix."""
    raw = tmp_path / "raw" / "jsrt"
    top = raw / "All247images"
    top.mkdir(parents=True)
    film = _ramp(48, 64, 4095, 1)
    film[0, 0], film[0, 1] = 0, 4095
    (top / "JPCLN001.IMG").write_bytes(film.astype(">u2").tobytes())
    (top / "JPCNN001.IMG").write_bytes(_ramp(48, 64, 4095, 2).astype(">u2").tobytes())
    (top / "JPCNN002.IMG").write_bytes(_ramp(48, 64, 4095, 3).astype(">u2").tobytes()[:-2])  # truncated
    (top / "JPCLN002.IMG").write_bytes(
        (_ramp(48, 64, 3000, 4) + 300).astype("<u2").tobytes()
    )  # little-endian
    (top / "CLNDAT_EN.txt").write_text("JPCLN001.IMG, 5, 15, 53, male, 1634 692, malignant\n")
    source = entry(
        tmp_path,
        "jsrt",
        "2d_cls",
        r"""
        reader:
          kind: layout
          images:
            path: '{group:JPCLN|JPCNN}{n:\d{3}}.IMG'
            raw: {width: 64, height: 48, dtype: uint16, byte_order: big, bits: 12}
          label: '{group}'
        labels: {JPCLN: lung nodule, JPCNN: no lung nodule}
        """,
        modality="X-Ray",
        department="Pulmonary Medicine",
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (4, 2)
    assert sorted(r["label"] for r in rows) == ["lung nodule", "no lung nodule"]
    details = {q["source_path"].rsplit("/", 1)[-1]: (q["reason"], q["detail"]) for q in qrows}
    assert details["JPCNN002.IMG"][0] == "truncated" and "6142 bytes" in details["JPCNN002.IMG"][1]
    assert details["JPCNN002.IMG"][1].endswith("needs 6144")
    assert details["JPCLN002.IMG"][0] == "unreadable" and "byte_order big" in details["JPCLN002.IMG"][1]
    first = next(r for r in rows if r["source_path"].endswith("JPCLN001.IMG"))
    png = np.asarray(Image.open(tmp_path / "out" / first["image"]))
    assert png.shape == (48, 64) and (int(png[0, 0]), int(png[0, 1])) == (0, 255)  # the 12-bit window


def test_raw_declaration_states_what_the_file_cannot(tmp_path: Path) -> None:
    for body, message in (
        ("raw: {width: 8, height: 8, dtype: uint16}", "need byte_order"),
        ("raw: {width: 8, height: 8, dtype: uint8, bits: 12}", "does not fit uint8"),
    ):
        with pytest.raises(CatalogError, match=message):
            entry(
                tmp_path,
                "r",
                "2d_cls",
                f"reader: {{kind: layout, images: {{path: '{{g}}.img', {body}}}, label: '{{g}}'}}",
            )


def test_mrnet_npy_stacks_middle_slice_and_headerless_label_tables(tmp_path: Path) -> None:
    """MRNet-v1.0: train/{axial,coronal,sagittal}/0000.npy (slices x 256 x 256 uint8, one stack per exam
    and plane; here 5 x 32 x 32), valid/... for the official validation exams (1130-1249), and one
    headerless table per label (`train-acl.csv`: `0000,0`; also -abnormal and -meniscus). One image per
    stack: the declared middle slice. The three tables merge into one multi-label per exam, columns named
    after each file (`{stem}`); an exam no table marks is normal. An object array is refused without
    being unpickled; a 3D stack without `slice` is not guessed."""
    raw = tmp_path / "raw" / "mrnet"
    top = raw / "MRNet-v1.0"
    stacks = {}
    for exam, split in (("0000", "train"), ("0001", "train"), ("1130", "valid")):
        stacks[exam] = np.stack([_ramp(32, 32, 255, 10 * int(exam) + k) for k in range(5)]).astype(np.uint8)
        for plane in ("sagittal", "coronal"):
            (top / split / plane).mkdir(parents=True, exist_ok=True)
            np.save(top / split / plane / f"{exam}.npy", stacks[exam])
    np.save(top / "train" / "sagittal" / "0002.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    for task, values in (("abnormal", "1,0,1"), ("acl", "0,0,1"), ("meniscus", "1,0,0")):
        rows = [f"{e},{v}" for e, v in zip(("0000", "0001", "0002"), values.split(","), strict=True)]
        (top / f"train-{task}.csv").write_text("\n".join(rows) + "\n")
        (top / f"valid-{task}.csv").write_text("1130,1\n")
    source = entry(
        tmp_path,
        "mrnet",
        "2d_cls",
        """
        reader:
          kind: layout
          images: {path: '{split}/{plane}/{exam}.npy', array: {slice: middle}}
          table:
            file: [train-abnormal.csv, train-acl.csv, train-meniscus.csv, valid-abnormal.csv, valid-acl.csv,
                   valid-meniscus.csv]
            join: {column: exam, field: exam}
            header: false
            names: [exam, '{stem}']
          label: {columns: [train-abnormal, train-acl, train-meniscus], default: normal}
          split: '{split}'
          filters: {plane: sagittal}
        labels: {train-abnormal: abnormal knee, train-acl: ACL tear, train-meniscus: meniscal tear, normal: normal knee}
        """,
        modality="MR",
        department="Sports Medicine",
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (6, 3)  # one input per label: 0002 has two, both refused
    assert sorted((r["source_path"].rsplit("/", 1)[-1], r["label"]) for r in rows) == [
        ("0000.npy", "abnormal knee"),
        ("0000.npy", "meniscal tear"),
        ("0001.npy", "normal knee"),
    ]
    assert reasons(qrows) == {"split_excluded": 1, "unsupported_codec": 2}
    assert any("object array" in q["detail"] for q in qrows)
    first = next(r for r in rows if r["source_path"].endswith("0000.npy"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / first["image"])), stacks["0000"][2])
    plain = entry(
        tmp_path,
        "mrnet",
        "2d_cls",
        """
        reader:
          kind: layout
          images: {path: 'train/sagittal/{exam}.npy', array: {}}
          label: ACL
        labels: {ACL: ACL}
        """,
        modality="MR",
        department="Sports Medicine",
    )
    report = normalize_source(plain, raw, scan(raw, shown=shown_names(plain)), tmp_path / "plain")
    qrows = pq.read_table(tmp_path / "plain" / "quarantine" / "mrnet.parquet").to_pylist()
    assert report.kept == 0 and len(qrows) == 3
    assert sum("declare images.array.slice" in q["detail"] for q in qrows) == 2


class _Callable:
    """Pickles as a call to `print`: harmless if a broken unpickler ran it, refused by a correct one."""

    def __reduce__(self):
        return (print, ("unpickled",))


def test_kneemri_pickled_volumes_through_a_restricted_unpickler(tmp_path: Path) -> None:
    """KneeMRI: metadata.csv (header; aclDiagnosis in column 2, volumeFilename in column 10, per
    nicholasbien/MRNet:loader.py) beside vol01/ ... vol10/ holding `<exam>-<series>.pck`, each a pickled
    numpy volume (slices first). Only numpy arrays are unpickled: a pickle that calls anything else, or
    holds another object, is quarantined naming the file and what it refers to."""
    import pickle

    raw = tmp_path / "raw" / "kneemri"
    vols = {}
    for i, name in enumerate(("329637-8.pck", "390116-9.pck")):
        vols[name] = _ramp(4 * 5, 32, 4000, i).reshape(5, 4, 32).repeat(8, axis=1).astype(np.uint16)
        (raw / "vol01").mkdir(parents=True, exist_ok=True)
        (raw / "vol01" / name).write_bytes(pickle.dumps(vols[name], protocol=2))
    (raw / "vol08").mkdir()
    (raw / "vol08" / "404663-8.pck").write_bytes(pickle.dumps(_Callable(), protocol=2))
    (raw / "vol08" / "404664-8.pck").write_bytes(pickle.dumps({"volume": [1, 2, 3]}, protocol=2))
    header = "examId,seriesNo,aclDiagnosis,kneeLR,roiX,roiY,roiZ,roiHeight,roiWidth,roiDepth,volumeFilename\n"
    (raw / "metadata.csv").write_text(
        header
        + "329637,8,0,1,139,177,11,104,92,3,329637-8.pck\n390116,9,2,0,113,110,10,77,95,4,390116-9.pck\n"
        + "404663,8,1,1,110,136,11,79,92,4,404663-8.pck\n404664,8,1,1,110,136,11,79,92,4,404664-8.pck\n"
    )
    source = entry(
        tmp_path,
        "kneemri",
        "2d_cls",
        """
        reader:
          kind: layout
          images: {path: '**/{name}.pck', array: {format: pickle, slice: middle}}
          table: {file: metadata.csv, image: volumeFilename}
          label: {column: aclDiagnosis}
        labels: {'0': healthy ACL, '1': partially injured ACL, '2': completely ruptured ACL}
        """,
        modality="MR",
        department="Sports Medicine",
    )
    report, rows, qrows = run(source, raw, tmp_path / "out")
    assert (report.inputs, report.kept) == (4, 2)
    assert sorted(r["label"] for r in rows) == ["completely ruptured ACL", "healthy ACL"]
    first = next(r for r in rows if r["source_path"].endswith("329637-8.pck"))
    stored = np.asarray(Image.open(tmp_path / "out" / first["image"]))
    assert (
        stored.shape == (32, 32) and np.corrcoef(stored.ravel(), vols["329637-8.pck"][2].ravel())[0, 1] > 0.99
    )
    details = {q["source_path"].rsplit("/", 1)[-1]: (q["reason"], q["detail"]) for q in qrows}
    assert (
        details["404663-8.pck"][0] == "unsupported_codec"
        and "print; only numpy arrays" in details["404663-8.pck"][1]
    )
    assert details["404664-8.pck"] == (
        "unsupported_codec",
        "vol08/404664-8.pck: the pickle holds a dict, not a numpy array",
    )
