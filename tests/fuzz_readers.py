"""Mutated DICOM, PNG, JPEG and NIfTI files through the real readers, in a process of their own.

`python tests/fuzz_readers.py OUT_DIR [SEED] [COUNT]` builds a few valid files in each format,
(and, for the converter readers: DICOM series with mutated slice files, mutated Aperio XML,
mutated run-length strings, mutated HDF5 files)
derives COUNT mutants of each kind (byte flips, cuts, cuts with a fake end marker, inserted and
zeroed blocks, header fields set to absurd values: dimensions, data types, VRs, lengths), runs
scan + normalize over five datasets (the classic `dicom`, `image_folder` and `msd` readers, and the
`layout` reader driven by a label table over PNG, JPEG and DICOM images, one of them named after
the patient, and by path templates over 3D and 4D volumes with mutated label volumes too) and
prints one JSON line: per dataset the files written,
inputs, kept and quarantined, whether anything escaped the readers, whether a planted header
value appears in any output or log line, and the peak RSS of the process. Deterministic per SEED.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import random
import resource
import struct
import sys
import traceback
import warnings
import zlib
from pathlib import Path

import numpy as np

PATIENT = "Fuzzington^Ottoline"
PATIENT_ID = "FZID-73310"
NEEDLES = ("fuzzington", "ottoline", "fzid-73310")


def _dicom_bases() -> list[bytes]:
    import pydicom
    from pydicom.data import get_testdata_file

    out = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.PatientName, ds.PatientID = PATIENT, PATIENT_ID
        ds.InstitutionName = PATIENT  # more places for the value to hide
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def _image(rng: np.random.Generator, h: int, w: int, rgb: bool) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 90 * np.sin(x / 7) * np.cos(y / 9) + rng.normal(0, 8, (h, w))
    a = np.clip(base, 0, 255).astype(np.uint8)
    return np.stack([a, a[::-1], 255 - a], -1) if rgb else a


def _encoded(arr: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def _png_bases(rng) -> list[bytes]:
    from PIL import Image

    out = [_encoded(_image(rng, 48, 40, False), "PNG"), _encoded(_image(rng, 32, 48, True), "PNG")]
    buf = io.BytesIO()
    Image.fromarray(_image(rng, 40, 40, False).astype(np.uint16) * 200).save(buf, "PNG")
    out.append(buf.getvalue())
    return out


def _jpeg_bases(rng) -> list[bytes]:
    return [
        _encoded(_image(rng, 96, 80, True), "JPEG", quality=90),
        _encoded(_image(rng, 80, 96, False), "JPEG", quality=80),
        _encoded(_image(rng, 96, 96, True), "JPEG", progressive=True),
    ]


def _nifti_4d(rng) -> bytes:
    import nibabel as nib

    return nib.Nifti1Image(rng.normal(300, 60, (24, 20, 10, 2)).astype(np.float32), np.eye(4)).to_bytes()


def _nifti_bases(rng) -> tuple[list[bytes], bytes]:
    import nibabel as nib

    vol = rng.normal(300, 60, (24, 20, 10)).astype(np.float32)
    img = nib.Nifti1Image(vol, np.eye(4))
    img.header["descrip"] = PATIENT.encode()[:80]  # a header text field with the value in it
    raw = img.to_bytes()
    lab = np.zeros(vol.shape, np.uint8)
    lab[4:18, 4:16, 2:8] = 1
    label = gzip.compress(nib.Nifti1Image(lab, np.eye(4)).to_bytes(), mtime=0)
    return [raw, gzip.compress(raw, mtime=0)], label


# ---------------------------------------------------------------------------------------- mutations


def _flip(data: bytearray, rng: random.Random) -> bytes:
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def _cut(data: bytearray, rng: random.Random, tail: bytes = b"") -> bytes:
    return bytes(data[: rng.randrange(1, len(data))]) + tail


def _insert(data: bytearray, rng: random.Random) -> bytes:
    i = rng.randrange(len(data))
    return bytes(data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + data[i:])


def _zero(data: bytearray, rng: random.Random) -> bytes:
    i = rng.randrange(len(data))
    n = rng.randint(1, 512)
    data[i : i + n] = bytes(len(data[i : i + n]))
    return bytes(data)


def _absurd(rng: random.Random) -> bytes:
    if rng.random() < 0.5:  # a 16-bit field (NIfTI dims and datatype, DICOM VR lengths)
        return struct.pack("<H", rng.choice([0, 1, 7, 2048, 0x7FFF, 0xFFFF]))
    return struct.pack("<I", rng.choice([0, 1, 65536, 1 << 24, 0x7FFFFFFF, 0xFFFFFFFF]))


def _field(data: bytearray, rng: random.Random, offsets: list[int]) -> bytes:
    at = rng.choice(offsets)
    value = _absurd(rng)
    data[at : at + len(value)] = value
    return bytes(data)


def _png_ihdr(data: bytearray, rng: random.Random) -> bytes:
    """Absurd width/height/depth in IHDR with a correct CRC, so only our checks can catch it."""
    w, h = rng.choice([(1, 1), (50000, 40000), (0x7FFFFFFF, 2), (40, 400000), (9000, 9000)])
    bits = rng.choice([1, 8, 16, 3])
    body = struct.pack(">IIBBBBB", w, h, bits, data[25], 0, 0, data[28])
    data[16:29] = body
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return bytes(data)


def _dicom_vr(data: bytearray, rng: random.Random) -> bytes:
    i = data.find(PATIENT.encode())
    if i > 8:
        data[i - 4 : i - 2] = rng.choice([b"P\xff", b"IS", b"SV", b"SQ", b"UN", b"??", b"AT", b"DA"])
        if rng.random() < 0.5:
            data[i - 2 : i] = struct.pack("<H", rng.choice([0, 1, 3, 0xFFFF, 200]))
    return bytes(data)


def mutants(kind: str, bases: list[bytes], count: int, rng: random.Random) -> list[bytes]:
    ops = [_flip, _cut, _insert, _zero]
    end = {"jpeg": b"\xff\xd9", "png": b"\x00\x00\x00\x00IEND\xaeB`\x82", "dicom": b"", "nifti": b""}[kind]
    fields = {"nifti": [0, 40, 42, 44, 46, 48, 70, 72, 108, 112], "dicom": [128, 132, 140, 200, 300]}
    out = []
    for i in range(count):
        data = bytearray(rng.choice(bases))
        r = i % 7
        if r == 5 and kind in fields:
            out.append(_field(data, rng, fields[kind]))
        elif r == 5 and kind == "png":
            out.append(_png_ihdr(data, rng))
        elif r == 6 and kind == "dicom":
            out.append(_dicom_vr(data, rng))
        elif r == 6:
            out.append(_cut(data, rng, end))
        else:
            out.append(ops[r % 4](data, rng))
    return out


# ---------------------------------------------------------------------------------------- converters


def _series_files(case: int) -> list[bytes]:
    """Five slices of one CT series (pydicom's CT_small header, the planted patient), along z."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uid = generate_uid()
    out = []
    for k in range(5):
        d = template.copy()
        d.PatientName, d.PatientID, d.InstitutionName = PATIENT, PATIENT_ID, PATIENT
        d.SeriesInstanceUID, d.SOPInstanceUID = uid, generate_uid()
        d.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        d.ImagePositionPatient = [0.0, 0.0, 5.0 * k + case]
        buf = io.BytesIO()
        d.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def _aperio(regions: list[list[tuple[float, float]]], negative: int = -1) -> bytes:
    parts = []
    for i, pts in enumerate(regions, start=1):
        verts = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in pts)
        parts.append(
            f'<Region Id="{i}" Type="0" NegativeROA="{int(i - 1 == negative)}"><Vertices>{verts}</Vertices></Region>'
        )
    return (
        '<Annotations><Annotation Id="1" Name="nucleus"><Regions>'
        + "".join(parts)
        + "</Regions></Annotation></Annotations>"
    ).encode()


def _xml_mutants(count: int, rng: random.Random) -> list[bytes]:
    """Aperio XML: byte-level mutants, absurd coordinates, an entity-expansion bomb, deep nesting, many vertices."""
    base = _aperio(
        [
            [(5, 5), (20, 5), (20, 20), (5, 20)],
            [(8, 8), (12, 8), (12, 12), (8, 12)],
            [(25, 25), (35, 26), (30, 38)],
        ],
        1,
    )
    special = [
        _aperio([[(1e308, 5), (-1e308, 5), (20, 1e308)]]),
        _aperio([[(float("nan"), 5), (20, 5), (20, 20)]]),
        _aperio([[(-1e9, -1e9), (1e9, -1e9), (1e9, 1e9), (-1e9, 1e9)]]),  # covers everything
        _aperio([[(10 + 8 * np.cos(t), 10 + 8 * np.sin(t)) for t in np.linspace(0, 6.28, 20000)]]),
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            f'<!ENTITY a{i} "{"&a;" * 10 if i == 0 else f"&a{i - 1};" * 10}">'.encode() for i in range(9)
        )
        + b"]><Annotations>&a8;</Annotations>",
        b"<Annotations>" + b"<a>" * 50000 + b"</a>" * 50000 + b"</Annotations>",
        b'<Annotations><Annotation Id="1"><Regions><Region Type="0"><Vertices><Vertex X="a" Y="b"/></Vertices></Region></Regions></Annotation></Annotations>',
    ]
    out = []
    for i in range(count):
        data = bytearray(base)
        if i < len(special):
            out.append(special[i])
        elif i % 5 == 4:
            out.append(base)  # some must be kept
        else:
            out.append([_flip, _cut, _insert, _zero][i % 4](data, rng))
    return out


def _rle_mutants(count: int, rng: random.Random) -> list[str]:
    from gmai_pipeline.converters.rle import encode

    mask = np.zeros((32, 40), bool)
    mask[5:15, 10:20] = True
    valid = encode(mask, order="column")
    special = ["", "-1", "1 2 3", "abc 5", "99999999999999999999 5", "-3 4", "5 0", "1279 5", "10 5 12 5", "1.5 3",
               " ".join(f"{2 * i + 1} 1" for i in range(640)), "1 " + "9" * 400]  # fmt: skip
    out = []
    for i in range(count):
        if i < len(special):
            out.append(special[i])
        elif i % 3 == 0:
            out.append(valid)
        else:
            chars = list(valid)
            for _ in range(rng.randint(1, 4)):
                chars[rng.randrange(len(chars))] = rng.choice("0123456789 -x")
            out.append("".join(chars).strip() or "0")
    return out


def _hdf5_bases() -> tuple[bytes, bytes]:
    import h5py

    bufs = []
    for name, data, chunks in (
        ("x", (np.arange(16 * 96 * 96 * 3) % 251).astype(np.uint8).reshape(16, 96, 96, 3), (4, 96, 96, 3)),
        ("y", (np.arange(16) % 2).astype(np.uint8).reshape(16, 1, 1, 1), None),
    ):
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            f.create_dataset(name, data=data, chunks=chunks, compression="gzip" if chunks else None)
        bufs.append(buf.getvalue())
    return bufs[0], bufs[1]


def _converter_data(raw: Path, count: int, rng: random.Random, written: dict) -> dict:
    """Datasets for the converter readers; returns their catalog entries."""
    from normalize_fixtures import make_source, pattern, write_image

    # DICOM series (CHAOS layout): a few mutated slice files in most series
    folder = raw / "fz_series"
    cases = max(2, count // 10)
    n_files = 0
    for case in range(cases):
        files = _series_files(case)
        bad = mutants("dicom", files, case % 3, rng)
        for k, data in enumerate(files):
            if k < len(bad):
                data = bad[k]
            (folder / "CT" / str(case) / "DICOM_anon").mkdir(parents=True, exist_ok=True)
            (folder / "CT" / str(case) / "DICOM_anon" / f"i{k:04d},0000b.dcm").write_bytes(data)
            n_files += 1
            m = np.zeros((128, 128), np.uint8)
            m[40:80, 30:90] = 255
            write_image(folder / "CT" / str(case) / "Ground" / f"liver_GT_{k:03d}.png", m)
    written["fz_series"] = n_files

    # polygons: one image per mutated Aperio XML
    folder = raw / "fz_polygons"
    xmls = _xml_mutants(max(8, count // 3), rng)
    for i, data in enumerate(xmls):
        write_image(folder / "Tissue Images" / f"TCGA-{i:04d}.png", pattern(40, 48, seed=i))
        (folder / "Annotations").mkdir(parents=True, exist_ok=True)
        (folder / "Annotations" / f"TCGA-{i:04d}.xml").write_bytes(data)
    written["fz_polygons"] = len(xmls)

    # RLE: one image and one table row per mutated run string
    folder = raw / "fz_rle"
    strings = _rle_mutants(max(12, count // 3), rng)
    for i in range(len(strings)):
        write_image(folder / "train" / f"img{i:04d}.png", pattern(32, 40, seed=100 + i))
    (folder / "train.csv").write_text(
        "id,annotation\n" + "".join(f"img{i:04d},{r}\n" for i, r in enumerate(strings))
    )
    written["fz_rle"] = len(strings)

    # HDF5: PCam-style pairs with the image file mutated
    folder = raw / "fz_hdf5"
    folder.mkdir(parents=True)
    x, y = _hdf5_bases()
    xs = mutants("nifti", [x], max(6, count // 8), rng)  # byte flips, cuts, inserts, zeroed blocks, fields
    xs[0] = x  # one intact pair
    for i, data in enumerate(xs):
        (folder / f"camelyonpatch_level_2_split_p{i:03d}_x.h5").write_bytes(data)
        (folder / f"camelyonpatch_level_2_split_p{i:03d}_y.h5").write_bytes(y)
    written["fz_hdf5"] = len(xs)

    pathology = {"modality": "Pathology", "department": "Laboratory Medicine and Pathology"}
    return {
        "fz_series": make_source(
            "fz_series",
            "3d_seg",
            {
                "kind": "layout",
                "images": "CT/{case}/DICOM_anon/*.dcm",
                "masks": "CT/{case}/Ground/*.png",
                "axes": [2],
                "convert": {"kind": "dicom_series", "mask": {"kind": "slices", "match": "file_order"}},
            },
            labels={"255": "liver"},
        ),
        "fz_polygons": make_source(
            "fz_polygons",
            "2d_seg",
            {
                "kind": "layout",
                "images": "Tissue Images/{id}.png",
                "masks": "Annotations/{id}.xml",
                "min_component_pixels": 1,
                "convert": {"kind": "polygons", "format": "aperio_xml", "instances": True},
            },
            labels={"nucleus": "nucleus"},
            **pathology,
        ),
        "fz_rle": make_source(
            "fz_rle",
            "2d_seg",
            {
                "kind": "layout",
                "images": "train/{id}.png",
                "table": {"file": "train.csv", "join": {"column": "id", "field": "id"}},
                "min_component_pixels": 1,
                "convert": {"kind": "rle", "column": "annotation", "order": "column"},
            },
            labels={"1": "cell"},
            **pathology,
        ),
        "fz_hdf5": make_source(
            "fz_hdf5",
            "2d_cls",
            {
                "kind": "layout",
                "images": "camelyonpatch_level_2_split_{part}_x.h5",
                "convert": {"kind": "hdf5", "labels_file": "camelyonpatch_level_2_split_{part}_y.h5"},
            },
            labels={"0": "normal", "1": "tumor"},
            **pathology,
        ),
    }


# ---------------------------------------------------------------------------------------- run


def main(out_dir: Path, seed: int = 16, count: int = 80) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from normalize_fixtures import make_source

    from gmai_pipeline.manifest import scan
    from gmai_pipeline.normalize import normalize_source, shown_names

    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    warnings.simplefilter("always")
    warnings.showwarning = lambda m, c, f, n, file=None, line=None: log.write(f"{c.__name__}: {m}\n")

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    raw, out = out_dir / "raw", out_dir / "out"
    written: dict[str, int] = {}

    dicom = mutants("dicom", _dicom_bases(), count + count // 2, rng)
    folder = raw / "fz_dicom"
    folder.mkdir(parents=True)
    for i, data in enumerate(dicom):
        (folder / f"m{i:04d}.dcm").write_bytes(data)
    (folder / "labels.csv").write_text(
        "file,label\n" + "".join(f"m{i:04d}.dcm,chest\n" for i in range(len(dicom)))
    )
    written["fz_dicom"] = len(dicom)

    folder = raw / "fz_images" / "normal"
    folder.mkdir(parents=True)
    pngs, jpegs = mutants("png", _png_bases(nrng), count, rng), mutants("jpeg", _jpeg_bases(nrng), count, rng)
    for i, data in enumerate(pngs):
        (folder / f"p{i:04d}.png").write_bytes(data)
    for i, data in enumerate(jpegs):
        (folder / f"j{i:04d}.jpg").write_bytes(data)
    written["fz_images"] = len(pngs) + len(jpegs)

    bases, label = _nifti_bases(nrng)
    niftis = mutants("nifti", bases, count, rng)
    folder = raw / "fz_nifti"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir(parents=True)
    for i, data in enumerate(niftis):
        gz = data[:2] == b"\x1f\x8b" or i % 2
        ext = ".nii.gz" if gz else ".nii"
        (folder / "imagesTr" / f"vol{i:04d}{ext}").write_bytes(data)
        (folder / "labelsTr" / f"vol{i:04d}{ext}").write_bytes(label if gz else gzip.decompress(label))
    written["fz_nifti"] = len(niftis)

    # The layout reader, table-driven (NIH-style `file,label`), over PNG, JPEG and DICOM mutants; one DICOM
    # file is named after its PatientID (RSNA's `<patientId>.dcm`): that name must never be shown.
    folder = raw / "fz_table"
    (folder / "images").mkdir(parents=True)
    quarter = max(1, count // 4)
    names = [f"p{i:04d}.png" for i in range(quarter)] + [f"j{i:04d}.jpg" for i in range(quarter)]
    names += [f"d{i:04d}.dcm" for i in range(quarter - 1)] + [f"{PATIENT_ID}.dcm"]
    images = pngs[:quarter] + jpegs[:quarter] + dicom[-quarter:]
    for name, data in zip(names, images, strict=True):
        (folder / "images" / name).write_bytes(data)
    (folder / "labels.csv").write_text("file,label\n" + "".join(f"images/{n},normal\n" for n in names))
    written["fz_table"] = len(names)

    # The layout reader over templated volumes `{case}/image.nii.gz` + `{case}/label.nii.gz`: 3D and 4D
    # image mutants (both channels declared), and every fifth label volume mutated as well.
    folder = raw / "fz_volumes"
    cases = mutants("nifti", bases + [_nifti_4d(nrng)], max(1, count // 2), rng)
    bad_labels = mutants("nifti", [label], len(cases), rng)
    for i, data in enumerate(cases):
        (folder / f"case{i:03d}").mkdir(parents=True)
        (folder / f"case{i:03d}" / "image.nii.gz").write_bytes(
            data if data[:2] == b"\x1f\x8b" else gzip.compress(data, mtime=0)
        )
        (folder / f"case{i:03d}" / "label.nii.gz").write_bytes(bad_labels[i] if i % 5 == 4 else label)
    written["fz_volumes"] = len(cases)

    sources = {
        "fz_dicom": make_source(
            "fz_dicom", "2d_cls", {"kind": "dicom"}, modality="CT", labels={"chest": "chest"}
        ),
        "fz_images": make_source(
            "fz_images", "2d_cls", {"kind": "image_folder"}, labels={"normal": "normal"}
        ),
        "fz_nifti": make_source(
            "fz_nifti", "3d_seg", {"kind": "msd"}, modality="MR", department="Neurosurgery"
        ),
        "fz_table": make_source(
            "fz_table",
            "2d_cls",
            {
                "kind": "layout",
                "images": "images/*",
                "table": {"file": "labels.csv", "image": "file"},
                "label": {"column": "label"},
            },
            labels={"normal": "normal"},
        ),
        "fz_volumes": make_source(
            "fz_volumes",
            "3d_seg",
            {
                "kind": "layout",
                "images": "{case}/image.nii.gz",
                "masks": "{case}/label.nii.gz",
                "channels": [0, 1],
            },
            modality="MR",
            department="Neurosurgery",
        ),
    }
    sources.update(_converter_data(raw, count, rng, written))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result: dict = {"datasets": {}, "escaped": [], "leaks": []}
    manifests = []
    for name, source in sources.items():
        try:
            rows = scan(raw / name, shown=shown_names(source))
            manifests.append(str(rows))  # what manifests/<name>.parquet and the source page show
            report = normalize_source(source, raw / name, rows, out, workers=2)
        except BaseException:  # noqa: BLE001 - the point of the fuzz: record what escaped
            result["escaped"].append(f"{name}: {traceback.format_exc()[-1500:]}")
            continue
        result["datasets"][name] = {
            "files": written[name],
            "inputs": report.inputs,
            "kept": report.kept,
            "quarantined": report.quarantined,
            "reasons": dict(report.by_reason),
        }
    texts = [log.getvalue(), *manifests]
    for path in out.rglob("*"):
        texts.append(str(path))
        if path.is_file() and path.suffix == ".parquet":
            import pyarrow.parquet as pq

            texts.append(str(pq.read_table(path).to_pylist()))
        elif path.is_file():
            texts.append(path.read_bytes().decode("latin-1"))
    blob = "\n".join(texts).lower()
    result["leaks"] = [n for n in NEEDLES if n in blob]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["base_rss_mib"] = base_rss / 1024
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    res = main(Path(args[0]), int(args[1]) if len(args) > 1 else 16, int(args[2]) if len(args) > 2 else 80)
    print(json.dumps(res))
