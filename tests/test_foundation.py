"""Foundation: definitions load, the catalog validates (and fails clearly), source assets write manifests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
import yaml
from storage_fixtures import storage_at

from gmai_pipeline.catalog import CatalogError, load_catalog, load_source
from gmai_pipeline.defs.sources import build_source_asset
from gmai_pipeline.manifest import HIDDEN, MissingDataError, scan
from gmai_pipeline.settings import DEMO_CATALOG_DIR, SOURCES_DIR
from gmai_pipeline.storage import OutputLayout

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_keys.txt"
CATALOG_FILES = sorted([*SOURCES_DIR.glob("*.yaml"), *DEMO_CATALOG_DIR.glob("*.yaml")])
VALID = {
    "name": "tmp_source",
    "title": "A temporary source",
    "url": "https://example.org/tmp_source",
    "license": "CC-BY-4.0",
    "modality": "CT",
    "department": "Oncology",
    "task_type": "2d_cls",
    "clinical_task": "Organ Recognition",
    "reader": {"kind": "csv_labels"},
    "provenance": {"source": "written by tests/test_foundation.py"},
}


def _write(folder: Path, data: dict | str, stem: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or (data["name"] if isinstance(data, dict) else "broken")
    path = folder / f"{stem}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- definitions


@pytest.fixture(scope="module")
def definitions() -> dg.Definitions:
    from gmai_pipeline.definitions import build_definitions

    return build_definitions()


def _asset_keys(defs: dg.Definitions) -> list[str]:
    return sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys())


def test_definitions_load_with_a_source_asset_per_catalog_entry(definitions: dg.Definitions) -> None:
    keys = set(_asset_keys(definitions))
    catalog = load_catalog()
    assert catalog, "the catalog is empty"
    assert {f"source/{s.name}" for s in catalog} <= keys
    assert {s.name for s in catalog if s.demo} >= {p.stem for p in DEMO_CATALOG_DIR.glob("*.yaml")}
    job = definitions.get_job_def("demo_job")
    assert job is not None


def test_asset_keys_snapshot(definitions: dg.Definitions) -> None:
    """The source/* keys must match tests/snapshots/asset_keys.txt (UPDATE_SNAPSHOTS=1 rewrites it).

    The file lists every asset key for reviewers; only the source/* keys are compared, because the
    downstream stages are still being built by others.
    """
    keys = _asset_keys(definitions)
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text("\n".join(keys) + "\n")
    assert SNAPSHOT.is_file(), f"{SNAPSHOT} missing: run UPDATE_SNAPSHOTS=1 pytest {__file__}"
    expected = [k for k in SNAPSHOT.read_text().split() if k.startswith("source/")]
    actual = [k for k in keys if k.startswith("source/")]
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    assert not missing and not extra, (
        f"source keys changed (missing {missing[:10]}, new {extra[:10]}); if intended run UPDATE_SNAPSHOTS=1"
    )


def test_source_assets_carry_catalog_metadata(definitions: dg.Definitions) -> None:
    source = next(s for s in load_catalog() if s.name == "demo_chest_coco")
    spec = next(
        spec
        for a in definitions.assets or []
        if isinstance(a, dg.AssetsDefinition)
        for spec in a.specs
        if spec.key == dg.AssetKey(["source", source.name])
    )
    assert spec.metadata["license"] == source.license
    assert spec.metadata["modality"] == "X-Ray"
    assert source.license in (spec.description or "") and "GMAI_RAW_ROOT" in (spec.description or "")


# --------------------------------------------------------------------------- catalog validation


@pytest.mark.parametrize("path", CATALOG_FILES, ids=[p.stem for p in CATALOG_FILES])
def test_every_catalog_file_validates(path: Path) -> None:
    source = load_source(path)
    assert source.name == path.stem
    assert source.license.strip()


def test_demo_entries_cover_every_reader_kind() -> None:
    demo = [s for s in load_catalog((DEMO_CATALOG_DIR,))]
    assert all(s.demo for s in demo)
    assert {s.reader.kind for s in demo} >= {
        "image_folder",
        "csv_labels",
        "coco",
        "voc",
        "mask_pairs",
        "msd",
        "dicom",
    }


BAD_ENTRIES = {
    "bad_slug": ({"name": "Bad-Name"}, "Bad-Name", "name", "is not a slug"),
    "missing_field": ({"title": None}, None, "title", "Field required"),
    "modality_not_in_vocabulary": (
        {"modality": "Sonar"},
        None,
        "modality",
        "'Sonar' is not in assets/vocabulary.yaml",
    ),
    "department_not_in_vocabulary": (
        {"department": "Astrology"},
        None,
        "department",
        "'Astrology' is not in assets/vocabulary.yaml",
    ),
    "unknown_reader_kind": ({"reader": {"kind": "hdf5_magic"}}, None, "reader", "'hdf5_magic'"),
    "unknown_reader_option": (
        {"reader": {"kind": "csv_labels", "colum": "x"}},
        None,
        "reader.csv_labels.colum",
        "Extra inputs are not permitted",
    ),
    "reader_not_fitting_task": (
        {"reader": {"kind": "coco"}},
        None,
        "reader",
        "does not fit task_type '2d_cls'",
    ),
    "name_not_file_name": (
        {"name": "other_name"},
        "tmp_source",
        "name",
        "must equal the file name 'tmp_source'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_bad_catalog_entry_gives_a_clear_error(case: str, tmp_path: Path) -> None:
    change, stem, field, problem = BAD_ENTRIES[case]
    data = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    path = _write(tmp_path, data, stem=stem or data["name"])
    with pytest.raises(CatalogError) as err:
        load_source(path)
    message = str(err.value)
    assert str(path) in message
    assert field in message
    assert problem in message


def test_invalid_yaml_is_reported_with_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: [unclosed\ntitle: x\n", stem="tmp_source")
    with pytest.raises(CatalogError, match="not valid YAML") as err:
        load_source(path)
    assert str(path) in str(err.value)


def test_duplicate_name_across_folders_is_reported(tmp_path: Path) -> None:
    first = _write(tmp_path / "a", VALID)
    second = _write(tmp_path / "b", VALID)
    with pytest.raises(CatalogError, match="already defined") as err:
        load_catalog((tmp_path / "a", tmp_path / "b"))
    assert str(first) in str(err.value) and str(second) in str(err.value) and "'name'" in str(err.value)


def test_invalid_catalog_fails_definition_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, {**VALID, "modality": "Sonar"})
    monkeypatch.setenv("GMAI_CATALOG_DIR", str(tmp_path))
    from gmai_pipeline.definitions import build_definitions

    with pytest.raises(CatalogError, match="modality 'Sonar'"):
        build_definitions()


# --------------------------------------------------------------------------- source assets


def _manifest(output_root: Path, name: str) -> list[dict]:
    return pq.read_table(OutputLayout(output_root).manifest(name)).to_pylist()


def test_demo_source_asset_writes_a_true_manifest(storage, output_root: Path) -> None:
    source = next(s for s in load_catalog((DEMO_CATALOG_DIR,)) if s.name == "demo_histology_csv")
    result = dg.materialize([build_source_asset(source)], resources={"storage": storage})
    assert result.success
    folder = output_root / "demo_raw" / source.name
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    listed = _manifest(output_root, source.name)
    # The demo marker is a hidden file: listed (nothing is dropped without a trace), not an input.
    assert [(r["path"], r["refused"]) for r in listed if r["refused"]] == [(".gmai_demo", HIDDEN)]
    rows = [r for r in listed if not r["refused"]]
    assert [r["path"] for r in rows] == [p.relative_to(folder).as_posix() for p in files]
    for row, path in zip(rows, files, strict=True):
        assert row["size"] == path.stat().st_size
        assert row["md5"] == hashlib.md5(path.read_bytes()).hexdigest()
        assert row["refused"] is None
    meta = result.asset_materializations_for_node("source__demo_histology_csv")[0].metadata
    assert meta["file_count"].value == len(files) == 13
    assert meta["refused_count"].value == 0 and meta["skipped_count"].value == 1


def _tmp_source(tmp_path: Path):
    """A non-demo source from a temporary catalog, and an empty raw root for it."""
    path = _write(tmp_path / "catalog", VALID)
    raw = tmp_path / "raw"
    raw.mkdir()
    return load_source(path), raw


def test_missing_data_error_says_where_and_from_where(
    output_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, raw = _tmp_source(tmp_path)
    storage = storage_at(output_root, raw_root=raw)
    with pytest.raises(MissingDataError) as err:
        dg.materialize([build_source_asset(source)], resources={"storage": storage})
    message = str(err.value)
    assert str(raw / source.name) in message
    assert source.url in message
    assert not (raw / source.name).exists()  # nothing is generated for a real (non-demo) source


def test_missing_data_for_a_real_catalog_source(output_root: Path, tmp_path: Path, monkeypatch) -> None:
    real = [s for s in load_catalog() if not s.demo]
    assert real, "the catalog has no non-demo sources"
    storage = storage_at(output_root, raw_root=tmp_path)
    source = real[0]
    with pytest.raises(MissingDataError, match=source.name) as err:
        dg.materialize([build_source_asset(source)], resources={"storage": storage})
    assert str(tmp_path / source.name) in str(err.value)


def test_symlinks_escaping_the_dataset_are_refused(
    output_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, raw = _tmp_source(tmp_path)
    storage = storage_at(output_root, raw_root=raw)
    outside = tmp_path / "elsewhere"
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.png").write_bytes(b"another dataset's patient image")
    (outside / "folder" / "more.png").write_bytes(b"more")
    folder = raw / source.name
    (folder / "sub").mkdir(parents=True)
    (folder / "labels.csv").write_text("image,label\nok.png,a\n")
    (folder / "sub" / "ok.png").write_bytes(b"fine")
    (folder / "escape.png").symlink_to(outside / "secret.png")
    (folder / "sub" / "updir.png").symlink_to(Path("..") / ".." / ".." / "elsewhere" / "secret.png")
    (folder / "linked_folder").symlink_to(outside / "folder", target_is_directory=True)

    result = dg.materialize([build_source_asset(source)], resources={"storage": storage})
    assert result.success
    rows = {r["path"]: r for r in _manifest(output_root, source.name)}
    assert set(rows) == {"labels.csv", "sub/ok.png", "escape.png", "sub/updir.png", "linked_folder"}
    assert rows["labels.csv"]["refused"] is None and rows["sub/ok.png"]["refused"] is None
    for refused in ("escape.png", "sub/updir.png"):
        assert "symlink refused" in rows[refused]["refused"]
        assert rows[refused]["md5"] is None
    assert rows["linked_folder"]["refused"] == "symlinked folder refused"
    secret_md5 = hashlib.md5((outside / "secret.png").read_bytes()).hexdigest()
    assert secret_md5 not in {r["md5"] for r in rows.values()}
    meta = result.asset_materializations_for_node(f"source__{source.name}")[0].metadata
    assert meta["refused_count"].value == 3 and meta["file_count"].value == 2


def test_scan_refuses_a_dataset_folder_reached_through_a_link(tmp_path: Path) -> None:
    """Files are judged against the resolved dataset folder: nothing outside it is read."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.png").write_bytes(b"a")
    (tmp_path / "outside.png").write_bytes(b"x")
    (real / "b.png").symlink_to(tmp_path / "outside.png")
    rows = scan(real)
    assert [(r["path"], r["refused"] is None) for r in rows] == [("a.png", True), ("b.png", False)]
