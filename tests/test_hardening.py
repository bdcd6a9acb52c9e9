"""The hardening issue, point by point: one bad input never ends the dataset, nothing identifying escapes.

Every test builds files in the real format, materializes `source/<name>` and `normalized/<name>`
through Dagster with a real instance in a temporary DAGSTER_HOME, and checks what a user would:
the rest of the dataset goes on, inputs = kept + quarantined, the reason names the file, and no
planted header value appears anywhere the run wrote or stored (tables, manifests, images, event
log and run storage with their compressed snapshots, compute logs, stdout/stderr).
(Points 2 and 4 are in the generation tests, point 9 in test_safe_yaml.py, the fuzz test in
test_fuzz_readers.py.)
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from normalize_fixtures import encoded, make_source, pattern, write_image, write_json
from PIL import Image
from pydicom.data import get_testdata_file
from run_storage import stored_text
from storage_fixtures import storage_at

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.defs.normalize import build_normalized_asset
from gmai_pipeline.defs.resources import PipelineStorage
from gmai_pipeline.defs.sources import build_source_asset
from gmai_pipeline.imaging import sample_id
from gmai_pipeline.manifest import HIDDEN

PATIENT = "Zyxwvut^Quentin"
PATIENT_ID = "QX7Z-ALPHA-991"
NEEDLES = ("Zyxwvut", "Quentin", "QX7Z-ALPHA")


@dataclass
class Run:
    result: dg.ExecuteInProcessResult
    rows: dict[str, list[dict]]
    quarantine: dict[str, list[dict]]
    manifest: dict[str, list[dict]]
    stored: str  # everything under DAGSTER_HOME and the output root, decompressed
    meta: dict[str, dict]


@pytest.fixture(scope="module")
def home_template(tmp_path_factory) -> Path:
    """An initialised SQLite instance (creating its schema takes seconds); each test gets a copy."""
    home = tmp_path_factory.mktemp("dagster_home_template")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)):
        pass
    return home


@pytest.fixture(autouse=True)
def _fresh_home(home_template: Path, tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "dagster_home"
    if not home.exists():
        shutil.copytree(home_template, home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))


def _materialize(tmp_path: Path, monkeypatch, capfd, *sources: SourceDataset, source_only=False) -> Run:
    out = Path(os.environ["GMAI_OUTPUT_ROOT"])
    home = Path(os.environ["DAGSTER_HOME"])
    assets = [build_source_asset(s) for s in sources]
    if not source_only:
        assets += [build_normalized_asset(s) for s in sources]
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            assets, instance=instance, raise_on_error=False, resources={"storage": _storage(tmp_path)}
        )
        events = "\n".join(str(e) for e in instance.all_logs(result.run_id))
    meta = {
        e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    captured = capfd.readouterr()
    run = Run(
        result,
        {s.name: _table(out / "normalized" / f"{s.name}.parquet") for s in sources},
        {s.name: _table(out / "quarantine" / f"{s.name}.parquet") for s in sources},
        {s.name: _table(out / "manifests" / f"{s.name}.parquet") for s in sources},
        "\n".join([stored_text(home, out), events, str(meta), captured.out, captured.err]),
        meta,
    )
    for name in NEEDLES:  # nothing stored anywhere ever quotes a planted header value
        assert name.lower() not in run.stored.lower(), f"'{name}' escaped into the run's outputs or storage"
    return run


def _table(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist() if path.exists() else []


def _accounted(run: Run, name: str) -> dict:
    meta = run.meta[f"normalized/{name}"]
    inputs, kept, quarantined = meta["inputs"].value, meta["kept"].value, meta["quarantined"].value
    assert inputs == kept + quarantined and quarantined == len(run.quarantine[name])
    for q in run.quarantine[name]:
        assert q["source_path"] in q["detail"], q  # the reason names the file
    return {"inputs": inputs, "kept": kept, "quarantined": quarantined}


def _reasons(run: Run, name: str) -> dict[str, str]:
    return {q["source_path"]: q["reason"] for q in run.quarantine[name]}


@pytest.fixture
def raw(tmp_path: Path, output_root: Path) -> Path:
    root = tmp_path / "raw"
    root.mkdir()
    return root


def _storage(tmp_path: Path) -> PipelineStorage:
    """The `raw` fixture's root and the test's output root, as the assets' storage resource."""
    return storage_at(Path(os.environ["GMAI_OUTPUT_ROOT"]), raw_root=tmp_path / "raw")


def _dicom(path: Path, shift: int = 0, **values) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID = PATIENT, PATIENT_ID
    for k, v in values.items():
        setattr(ds, k, v)
    ds.PixelData = np.roll(ds.pixel_array, shift, axis=0).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _set_vr(path: Path, element: bytes, vr: bytes) -> None:
    """Overwrite the explicit VR of the element whose value starts with `element`."""
    data = bytearray(path.read_bytes())
    i = data.find(element)
    assert i > 8
    data[i - 4 : i - 2] = vr
    path.write_bytes(bytes(data))


DICOM_SOURCE = {"kind": "dicom"}


def _dicom_source(name: str) -> SourceDataset:
    return make_source(name, "2d_cls", DICOM_SOURCE, modality="CT", labels={"chest": "chest"})


# ------------------------------------------------------------------------------------------ 3


def test_point3_corrupt_dicom_elements_quarantined_without_quoting_them(raw, tmp_path, monkeypatch, capfd):
    """A corrupted VR on PatientName: pydicom raises (its message or warning can quote the element);
    the file becomes a quarantine row with the exception type only, the rest of the dataset goes on."""
    from pydicom import config

    folder = raw / "dcm3"
    _dicom(folder / "good.dcm")
    _dicom(folder / "unknown_vr.dcm", 1)
    _set_vr(folder / "unknown_vr.dcm", PATIENT.encode(), b"P\xff")  # pydicom: NotImplementedError
    _dicom(folder / "wrong_vr.dcm", 2)
    _set_vr(folder / "wrong_vr.dcm", PATIENT.encode(), b"IS")  # strict reading quotes the value
    _dicom(folder / "cut.dcm", 3)
    (folder / "cut.dcm").write_bytes((folder / "cut.dcm").read_bytes()[:-3000])  # pixel data short
    (folder / "labels.csv").write_text(
        "file,label\ngood.dcm,chest\nunknown_vr.dcm,chest\nwrong_vr.dcm,chest\ncut.dcm,chest\n"
    )
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    run = _materialize(tmp_path, monkeypatch, capfd, _dicom_source("dcm3"))
    assert run.result.success
    assert _accounted(run, "dcm3") == {"inputs": 4, "kept": 1, "quarantined": 3}
    assert [r["source_path"] for r in run.rows["dcm3"]] == ["good.dcm"]
    reasons = sorted(q["reason"] for q in run.quarantine["dcm3"])
    assert reasons == ["truncated", "unreadable", "unreadable"]
    details = " ".join(q["detail"] for q in run.quarantine["dcm3"])
    assert "NotImplementedError" in details or "ValueError" in details


# ------------------------------------------------------------------------------------------ 5


def test_point5_latin1_file_name_is_kept_and_named(raw, tmp_path, monkeypatch, capfd):
    folder = raw / "latin5"
    write_image(folder / "normal" / "plain.png", pattern(16, 16))
    latin = os.fsencode(folder / "normal") + b"/caf\xe9_r\xf6ntgen.png"
    with open(latin, "wb") as f:
        f.write(encoded(pattern(16, 16, seed=3), "PNG"))
    source = make_source("latin5", "2d_cls", {"kind": "image_folder"}, labels={"normal": "normal"})
    run = _materialize(tmp_path, monkeypatch, capfd, source)
    assert run.result.success
    assert _accounted(run, "latin5") == {"inputs": 2, "kept": 2, "quarantined": 0}
    shown = "normal/caf\\xe9_r\\xf6ntgen.png"
    assert shown in [m["path"] for m in run.manifest["latin5"]]
    assert shown in [r["source_path"] for r in run.rows["latin5"]]
    stored = Path(os.environ["GMAI_OUTPUT_ROOT"]) / next(
        r["image"] for r in run.rows["latin5"] if r["source_path"] == shown
    )
    assert stored.is_file()


# ------------------------------------------------------------------------------------------ 6


def test_point6_sample_ids_never_collide(raw, tmp_path, monkeypatch, capfd):
    from gmai_pipeline.generation.pipeline import record_id

    folder = raw / "ids6"
    write_image(folder / "a#b.png", pattern(16, 16))
    write_image(folder / "a" / "b.png", pattern(16, 16, seed=1))
    write_image(folder / "a%23b.png", pattern(16, 16, seed=2))
    (folder / "labels.csv").write_text("image,label\na#b.png,x\na/b.png,x\na%23b.png,x\n")
    source = make_source("ids6", "2d_cls", {"kind": "csv_labels"})
    run = _materialize(tmp_path, monkeypatch, capfd, source)
    ids = {r["source_path"]: r["sample_id"] for r in run.rows["ids6"]}
    assert _accounted(run, "ids6")["kept"] == 3 and len(set(ids.values())) == 3
    assert ids["a/b.png"] == "2d#cls#x-ray#ids6#a#b.png"  # the GMAI-VL shape, unchanged for plain paths
    assert ids["a#b.png"] == "2d#cls#x-ray#ids6#a%23b.png"
    assert ids["a%23b.png"] == "2d#cls#x-ray#ids6#a%2523b.png"
    seen: set[str] = set()
    assert all(
        record_id(r, "caption", seen) is not None for r in run.rows["ids6"]
    )  # none dropped as a duplicate
    assert sample_id("3d", "seg", "ct", "d", "img/c#1.nii.gz", "z", 7) == "3d#seg#ct#d#img#c%231.nii.gz#z7"


# ------------------------------------------------------------------------------------------ 7


def _nifti(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))


def test_point7_truncated_jpeg_and_nan_pixels(raw, tmp_path, monkeypatch, capfd):
    # 2D: a JPEG whose data ends early but carries an end marker; a float TIFF with a NaN pixel.
    folder = raw / "img7"
    write_image(folder / "normal" / "ok.jpg", pattern(64, 64, rgb=True), "JPEG")
    jpg = encoded(pattern(128, 128, seed=4, rgb=True), "JPEG")
    (folder / "normal" / "cut.jpg").write_bytes(jpg[: len(jpg) // 2] + b"\xff\xd9")
    img = np.linspace(0, 1000, 32 * 32, dtype=np.float32).reshape(32, 32)
    img[3, 5] = np.nan
    Image.fromarray(img, mode="F").save(folder / "normal" / "float.tif")
    # 3D: an MR volume with one NaN voxel and a mask.
    vol = np.random.default_rng(0).normal(300, 50, (24, 24, 12)).astype(np.float32)
    vol[2, 2, 2] = np.nan
    lab = np.zeros(vol.shape, np.uint8)
    lab[6:18, 6:18, 3:9] = 1
    _nifti(raw / "mr7" / "imagesTr" / "case_000.nii.gz", vol)
    _nifti(raw / "mr7" / "labelsTr" / "case_000.nii.gz", lab)
    write_json(raw / "mr7" / "dataset.json", {"labels": {"0": "background", "1": "tumour"}})
    sources = (
        make_source("img7", "2d_cls", {"kind": "image_folder"}, labels={"normal": "normal"}),
        make_source("mr7", "3d_seg", {"kind": "msd", "axes": [2]}, modality="MR", department="Neurosurgery"),
    )
    run = _materialize(tmp_path, monkeypatch, capfd, *sources)
    assert run.result.success
    assert _accounted(run, "img7") == {"inputs": 3, "kept": 2, "quarantined": 1}
    assert _reasons(run, "img7") == {"normal/cut.jpg": "truncated"}
    out = Path(os.environ["GMAI_OUTPUT_ROOT"])
    tif = next(r for r in run.rows["img7"] if r["source_path"] == "normal/float.tif")
    stored = np.asarray(Image.open(out / tif["image"]))
    assert stored.max() == 255 and stored.std() > 50  # the ramp survives; only the NaN pixel is 0
    assert _accounted(run, "mr7") == {"inputs": 1, "kept": 1, "quarantined": 0}
    slices = [np.asarray(Image.open(out / r["image"])) for r in run.rows["mr7"]]
    assert len(slices) == 6 and all(s.std() > 10 for s in slices)  # not blanked by the NaN
    assert run.meta["normalized/mr7"]["slicing"].value.count("voxels_non_finite") == 1


# ------------------------------------------------------------------------------------------ 8


def test_point8_identifying_folder_names_masked_in_manifest_and_metadata(raw, tmp_path, monkeypatch, capfd):
    folder = raw / "dcm8"
    _dicom(folder / "Zyxwvut_Quentin" / "scan.dcm")
    _dicom(folder / "QX7Z-ALPHA-991" / "1.2.826.0.1.3680043.2.1125.1.1.dcm", 1)
    _dicom(folder / "train" / "chest" / "plain.dcm", 2)
    _dicom(folder / "Zyxwvut_Quentin" / "chest" / "by_folder.dcm", 3)  # labelled by a class folder
    (folder / "Zyxwvut_Quentin" / "Quentin_notes.txt").write_text("scanner notes")
    os.symlink(folder / "train" / "chest" / "plain.dcm", folder / "QX7Z-ALPHA-991" / "link.dcm")
    os.symlink(tmp_path / "nowhere.dcm", folder / "Zyxwvut_Quentin" / "dangling.dcm")
    run = _materialize(tmp_path, monkeypatch, capfd, _dicom_source("dcm8"))  # asserts no name anywhere
    assert run.result.success
    paths = sorted(m["path"] for m in run.manifest["dcm8"])
    assert all(p.startswith(("anon/", "train/chest/file-")) for p in paths), paths
    assert any(p.startswith("anon/file-") and p.endswith(".txt") for p in paths)
    # Without a label CSV, each DICOM file is labelled by its folder: the two under patient-named
    # folders are quarantined (unknown to the catalog's labels), the class-folder ones kept.
    acc = _accounted(run, "dcm8")
    assert acc == {"inputs": 5, "kept": 2, "quarantined": 3}, run.quarantine["dcm8"]
    assert sorted(_reasons(run, "dcm8").values()) == ["path_refused", "unknown_label", "unknown_label"]
    meta = run.meta["source/dcm8"]
    assert meta["refused_count"].value == 1 and meta["skipped_count"].value == 1  # dangling; the alias
    assert meta["file_count"].value == 5


@pytest.mark.parametrize("kind", ["dicom", "image_folder"])
def test_point8_masked_names_are_matched_by_the_read_itself(raw, tmp_path, monkeypatch, kind):
    """A masked manifest name (`chest/file-<MD5>.dcm`) is matched to its file by the verified read: each
    DICOM file is read and hashed once per normalization, not once more to find its manifest row. A file
    edited after the scan is one `content_changed` input, a removed one `missing_file` under its manifest
    name, and no patient name appears in either (a `dicom` dataset, and DICOM images of any other 2D reader)."""
    from gmai_pipeline import manifest
    from gmai_pipeline.normalize import normalize_source, shown_names

    folder = raw / "dcm8m"
    for i in range(4):
        _dicom(folder / "chest" / f"Zyxwvut_{i}.dcm", i)
    source = make_source(
        "dcm8m", "2d_cls", {"kind": "image_folder"}, modality="CT", labels={"chest": "chest"}
    )
    rows = manifest.scan(folder, shown=shown_names(source))
    assert all(r["path"].startswith("chest/file-") for r in rows), rows
    _dicom(folder / "chest" / "Zyxwvut_1.dcm", 9)  # edited after the scan
    (folder / "chest" / "Zyxwvut_2.dcm").unlink()  # removed after the scan
    hashed: list[str] = []
    real_hash = manifest._safe_hash
    monkeypatch.setattr(manifest, "_safe_hash", lambda e: hashed.append(e.path) or real_hash(e))
    out = Path(os.environ["GMAI_OUTPUT_ROOT"])
    report = normalize_source(source, folder, rows, out)
    assert hashed == []  # every file present was matched by the bytes its read hashed anyway
    q = _table(out / "quarantine" / "dcm8m.parquet")
    assert (report.inputs, report.kept) == (4, 2)
    assert sorted(r["reason"] for r in q) == ["content_changed", "missing_file"]
    assert {r["source_path"] for r in q if r["reason"] == "missing_file"} < {m["path"] for m in rows}
    assert "zyxwvut" not in str(q).lower()


# ------------------------------------------------------------------------------------------ 10


def test_point10_file_swapped_after_the_scan_is_refused(raw, tmp_path, monkeypatch, capfd):
    folder = raw / "swap10"
    for seed, name in enumerate(("keep", "link", "edit")):
        write_image(folder / "normal" / f"{name}.png", pattern(16, 16, seed=seed))
    write_image(folder / "sub" / "normal" / "deep.png", pattern(16, 16, seed=9))
    source = make_source("swap10", "2d_cls", {"kind": "image_folder"}, labels={"normal": "normal"})
    _materialize(tmp_path, monkeypatch, capfd, source, source_only=True)
    outside = tmp_path / "outside"
    write_image(outside / "normal" / "deep.png", pattern(16, 16, seed=11))
    write_image(outside / "other.png", pattern(16, 16, seed=12))
    (folder / "normal" / "link.png").unlink()
    os.symlink(outside / "other.png", folder / "normal" / "link.png")  # file -> symlink
    write_image(folder / "normal" / "edit.png", pattern(16, 16, seed=13))  # same name, other bytes
    os.rename(folder / "sub", tmp_path / "moved")
    os.symlink(outside, folder / "sub")  # folder -> symlink
    # Normalize against the manifest written before the swap (no new scan).
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            [build_normalized_asset(source)],
            instance=instance,
            selection=[dg.AssetKey(["normalized", "swap10"])],
            resources={"storage": _storage(tmp_path)},
        )
    assert result.success
    out = Path(os.environ["GMAI_OUTPUT_ROOT"])
    qrows = _table(out / "quarantine" / "swap10.parquet")
    reasons = {q["source_path"]: q["reason"] for q in qrows}
    assert reasons == {
        "normal/link.png": "path_refused",  # never read through the link
        "normal/edit.png": "content_changed",
        "sub/normal/deep.png": "path_refused",  # nor through the linked folder
    }
    details = {q["source_path"]: q["detail"] for q in qrows}
    assert "now symlink refused" in details["normal/link.png"]
    assert "inside sub, which is now: symlinked folder refused" in details["sub/normal/deep.png"]
    assert [r["source_path"] for r in _table(out / "normalized" / "swap10.parquet")] == ["normal/keep.png"]
    other_md5 = __import__("hashlib").md5((outside / "other.png").read_bytes()).hexdigest()
    assert other_md5 not in str(_table(out / "normalized" / "swap10.parquet"))


def test_point10_read_refuses_links_and_changed_bytes_at_read_time(tmp_path):
    """The read itself (not only the re-walk) refuses a link and checks the MD5."""
    from gmai_pipeline.decode_guard import read_verified
    from gmai_pipeline.imaging import ImageError
    from gmai_pipeline.storage import md5_bytes

    root = tmp_path / "ds"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a.png").write_bytes(b"scanned bytes")
    md5 = md5_bytes(b"scanned bytes")
    assert read_verified(root, "d/a.png", "d/a.png", md5) == b"scanned bytes"
    (root / "d" / "a.png").write_bytes(b"other bytes")
    with pytest.raises(ImageError) as err:
        read_verified(root, "d/a.png", "d/a.png", md5)
    assert err.value.reason == "content_changed" and "d/a.png" in err.value.detail
    (root / "d" / "a.png").unlink()
    (tmp_path / "x.png").write_bytes(b"scanned bytes")
    os.symlink(tmp_path / "x.png", root / "d" / "a.png")
    with pytest.raises(ImageError, match="symbolic link") as err:
        read_verified(root, "d/a.png", "d/a.png", md5)
    os.rename(root / "d", tmp_path / "d2")
    os.symlink(tmp_path / "d2", root / "d")
    (tmp_path / "d2" / "a.png").unlink()
    (tmp_path / "d2" / "a.png").write_bytes(b"scanned bytes")
    with pytest.raises(ImageError, match="symbolic link"):
        read_verified(root, "d/a.png", "d/a.png", md5)


# ------------------------------------------------------------------------------------------ 11

BOMB_SCRIPT = r"""
import json, resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
from normalize_fixtures import make_source
from gmai_pipeline.manifest import scan
from gmai_pipeline.normalize import normalize_source
import pyarrow.parquet as pq
raw, out = Path(sys.argv[3]), Path(sys.argv[4])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = {}
for name, task, reader, kw in [
    ("vol11", "3d_seg", {"kind": "msd", "axes": [2]}, {"modality": "MR"}),
    ("png11", "2d_cls", {"kind": "image_folder"}, {"labels": {"normal": "normal"}}),
]:
    source = make_source(name, task, reader, **kw)
    report = normalize_source(source, raw / name, scan(raw / name), out)
    q = pq.read_table(out / "quarantine" / f"{name}.parquet").to_pylist()
    result[name] = {"kept": report.kept, "reasons": {r["source_path"]: r["reason"] for r in q}}
result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
result["base_mib"] = base / 1024
print(json.dumps(result))
"""


def _nifti_header_only(path: Path, shape: tuple[int, ...]) -> None:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    data = hdr.binaryblock + b"\0" * 4
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_point11_declared_sizes_checked_before_allocation(tmp_path):
    raw = tmp_path / "raw"
    # A 352-byte NIfTI declaring 2048x2048x1024 float32 voxels (16 GiB), and a gzipped one too.
    _nifti_header_only(raw / "vol11" / "imagesTr" / "huge.nii", (2048, 2048, 1024))
    _nifti_header_only(raw / "vol11" / "labelsTr" / "huge.nii", (2048, 2048, 1024))
    import gzip

    hdr = (raw / "vol11" / "imagesTr" / "huge.nii").read_bytes()
    (raw / "vol11" / "imagesTr" / "huge_gz.nii.gz").write_bytes(gzip.compress(hdr))
    (raw / "vol11" / "labelsTr" / "huge_gz.nii.gz").write_bytes(gzip.compress(hdr))
    # A real volume larger than the budget set below, and a small one that is fine.
    big = np.zeros((512, 512, 64), np.float32)
    big[100:150, 100:150, 10:20] = 1
    _nifti(raw / "vol11" / "imagesTr" / "big.nii.gz", big)
    _nifti(raw / "vol11" / "labelsTr" / "big.nii.gz", (big > 0).astype(np.uint8))
    small = np.random.default_rng(1).normal(0, 1, (32, 32, 8)).astype(np.float32)
    lab = np.zeros(small.shape, np.uint8)
    lab[8:24, 8:24, 2:6] = 1
    _nifti(raw / "vol11" / "imagesTr" / "small.nii.gz", small)
    _nifti(raw / "vol11" / "labelsTr" / "small.nii.gz", lab)
    # PNGs that decompress to far more than the budget (tiny files of zeros), and a normal one.
    (raw / "png11" / "normal").mkdir(parents=True)
    for i in range(2):
        Image.new("I;16", (4000, 4000), i).save(raw / "png11" / "normal" / f"bomb{i}.png")
    write_image(raw / "png11" / "normal" / "fine.png", pattern(32, 32))
    assert (raw / "png11" / "normal" / "bomb0.png").stat().st_size < 200_000
    env = dict(os.environ, GMAI_DECODE_BUDGET_MB="64")
    tests_dir, root = str(Path(__file__).parent), str(Path(__file__).parent.parent)
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, tests_dir, root, str(raw), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["vol11"]["kept"] == 1, result["vol11"]
    assert result["vol11"]["reasons"] == {
        "imagesTr/huge.nii": "truncated",
        "imagesTr/huge_gz.nii.gz": "truncated",
        "imagesTr/big.nii.gz": "too_large",
    }
    assert result["png11"]["kept"] == 1
    assert set(result["png11"]["reasons"].values()) == {"too_large"} and len(result["png11"]["reasons"]) == 2
    # 16 GiB declared, 2 x 230 MiB of 16-bit pixels: the process stayed near its starting size.
    assert result["peak_mib"] - result["base_mib"] < 256, result


# ------------------------------------------------------------------------------------------ 12


def test_point12_named_pipe_listed_not_read(raw, tmp_path, monkeypatch, capfd):
    folder = raw / "fifo12"
    write_image(folder / "normal" / "a.png", pattern(16, 16))
    os.mkfifo(folder / "normal" / "b.png")
    source = make_source("fifo12", "2d_cls", {"kind": "image_folder"}, labels={"normal": "normal"})

    def hung(*_):
        raise TimeoutError("the scan blocked on the named pipe")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        run = _materialize(tmp_path, monkeypatch, capfd, source)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert run.result.success
    listed = {m["path"]: m["refused"] for m in run.manifest["fifo12"]}
    assert listed == {"normal/a.png": None, "normal/b.png": "named pipe, not a regular file: not read"}
    assert _accounted(run, "fifo12") == {"inputs": 2, "kept": 1, "quarantined": 1}
    assert _reasons(run, "fifo12") == {"normal/b.png": "path_refused"}
    assert "normal/b.png: named pipe" in run.stored  # the warning log line


# ------------------------------------------------------------------------------------------ 13


def test_point13_small_ones(raw, tmp_path, monkeypatch, capfd):
    from gmai_pipeline.storage import temp_tag

    folder = raw / "small13"
    write_image(folder / "normal" / "a.png", pattern(16, 16))
    os.symlink(folder / "normal" / "a.png", folder / "normal" / "same_as_a.png")  # an alias
    (folder / "normal" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "normal" / "jpeg_inside.png").write_bytes(encoded(pattern(16, 16, seed=2), "JPEG"))
    long_name = "x" * 240 + ".bmp"  # re-encoded as PNG; the stored name must still fit
    write_image(folder / "normal" / long_name, pattern(16, 16, seed=3), "BMP")
    # Temporary files a killed run left: a dead writer on this host, and an old one from elsewhere.
    out = Path(os.environ["GMAI_OUTPUT_ROOT"])
    images = out / "images" / "2d" / "cls" / "x-ray" / "small13" / "normal"
    images.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = temp_tag().split(".")[0]
    leftover = images / f".gmai-0123456789ab.{host}.{dead.stdout.strip()}.tmp"
    leftover.write_bytes(b"half an image")
    old = out / "normalized" / ".small13.parquet.otherhost.1.abcdef.tmp"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"half a table")
    os.utime(old, (1_000_000_000, 1_000_000_000))
    source = make_source("small13", "2d_cls", {"kind": "image_folder"}, labels={"normal": "normal"})
    run = _materialize(tmp_path, monkeypatch, capfd, source)
    assert run.result.success
    assert not leftover.exists() and not old.exists()
    assert _accounted(run, "small13") == {"inputs": 3, "kept": 3, "quarantined": 0}  # alias counted once
    listed = {m["path"]: m["refused"] for m in run.manifest["small13"]}
    assert listed["normal/.DS_Store"] == HIDDEN and listed["normal/same_as_a.png"].startswith("alias")
    assert run.meta["normalized/small13"]["ignored_files"].value == 2  # listed with the ignored files
    stored = {r["source_path"]: r["image"] for r in run.rows["small13"]}
    assert stored["normal/jpeg_inside.png"].endswith("normal/jpeg_inside.png.jpg")
    with Image.open(out / stored["normal/jpeg_inside.png"]) as im:
        assert im.format == "JPEG"
    long_stored = Path(stored[f"normal/{long_name}"]).name
    assert len(long_stored.encode()) <= 255 and long_stored.endswith(".png")
    assert run.meta["normalized/small13"]["slicing"].value.count("stale_temp_files_removed") == 1


def test_point13_write_failures_stop_the_run_not_blame_the_input(tmp_path, monkeypatch):
    """A full disk is the run's fault: it fails loudly instead of quarantining good images."""
    import errno

    from gmai_pipeline.imaging import ImageStore

    store = ImageStore(tmp_path, "2d", "cls", "x-ray", "ds")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write", full)
    with pytest.raises(OSError, match="No space left"):
        store.store_bytes(encoded(pattern(8, 8), "PNG"), "a.png")
