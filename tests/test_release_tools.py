"""The release folder opens in the tools its users train with, read the way each tool reads it.

The release is materialized by the real Dagster assets on the synthetic generated set (PNG and JPEG
images, a benchmark-matched image planted), copied elsewhere, and the output root it came from is
deleted: everything below reads only the copied folder. Hugging Face `datasets` and `webdataset`
are the real libraries (offline); InternVL, XTuner (GMAI-VL's fork) and LLaVA are re-implemented
here in the few lines each uses to read metas and annotations (cited at each function).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import yaml
from PIL import Image
from release_fixtures import demo_rows, write_generated
from storage_fixtures import storage_at

from gmai_pipeline.decontaminate import REPORT_SCHEMA
from gmai_pipeline.defs import release as release_defs
from gmai_pipeline.release.images import main as images_main
from gmai_pipeline.release.images import sync_images
from gmai_pipeline.release.loader import check_record
from gmai_pipeline.release.records import load_records
from gmai_pipeline.release.shards import read_index
from gmai_pipeline.release.trainer_metas import meta_files, relocate
from gmai_pipeline.settings import ASSETS_DIR
from gmai_pipeline.storage import OutputLayout

STAGES = ("stage1", "stage2", "stage3")
# Ratios the tools must express: 1, a whole repeat, a fraction below 1 and one above 1.
MIXTURES = {
    "seed": "tools-test",
    "stages": {
        "stage1": {"components": {"captions": {"kinds": ["caption", "region_caption"], "sample_ratio": 1.0}}},
        "stage2": {"components": {"captions": {"kinds": ["caption", "region_caption"], "sample_ratio": 2.5}}},
        "stage3": {
            "components": {
                "instruct": {"kinds": ["vqa"], "sample_ratio": 0.5},
                "captions": {"kinds": ["caption", "region_caption"], "sample_ratio": 2.0},
                "text_dialogue": {"text_files": [str(ASSETS_DIR / "demo_text" / "medical_dialogue.jsonl")]},
            }
        },
    },
}


@dataclass
class Release:
    dir: Path  # the copied release folder; the output root that built it is gone
    md5: dict[str, str]  # released record id -> MD5 of its image's bytes, from the generated tables
    images: dict[str, str]  # released record id -> image path relative to images/
    planted: str  # the benchmark-matched image (relative to images/), still named by generated rows
    linked: bool  # the release's images/ were hard links into the store, not copies


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    base = tmp_path_factory.mktemp("tools")
    root = base / "out"
    layout = OutputLayout(root)
    rows = demo_rows(layout, images_per_source=6)
    write_generated(layout, rows)
    planted = next(
        r["image"] for r in rows if r["dataset"] == "demo_chest_coco" and r["image"].endswith(".png")
    )
    report = {k: None for k in REPORT_SCHEMA.names} | {
        "image": planted,
        "benchmark": "vqa_rad",
        "direct": True,
    }
    pq.write_table(pa.Table.from_pylist([report], schema=REPORT_SCHEMA), layout.decontamination_report)
    mixtures = base / "mixtures.yaml"
    mixtures.write_text(yaml.safe_dump(MIXTURES))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GMAI_MIXTURES_FILE", str(mixtures))
        mp.delenv("GMAI_CATALOG_DIR", raising=False)
        defs = release_defs.build_defs([])
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            run_config={"ops": {"instruction_shards": {"config": {"target_shard_mb": 0.01}}}},
            resources={"storage": storage_at(root)},
        )
    assert result.success
    released = [r for r in rows if r["image"] != planted]
    some = layout.release / "images" / released[0]["image"].removeprefix("images/")
    linked = os.stat(some).st_ino == os.stat(root / released[0]["image"]).st_ino
    moved = base / "elsewhere" / "gmai-vl-release"
    shutil.copytree(layout.release, moved)
    shutil.rmtree(root)
    return Release(
        dir=moved,
        md5={r["id"]: r["image_md5"] for r in released},
        images={r["id"]: r["image"].removeprefix("images/") for r in released},
        planted=planted.removeprefix("images/"),
        linked=linked,
    )


def released_records(release: Release) -> list[dict]:
    return json.loads((release.dir / "llava.json").read_text(encoding="utf-8"))


def stage_records(release: Release, stage: str) -> list[dict]:
    """The stage mixture as the pipeline sampled it (`stageN.jsonl`, what training_jobs reads)."""
    path = release.dir / "mixtures" / f"{stage}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def ids(records) -> Counter[str]:
    return Counter(r["id"] for r in records)


# --- the tools' own reading, re-implemented -------------------------------------------------------------


def internvl_read(meta_path: str) -> list[dict]:
    """OpenGVLab/InternVL internvl_chat/internvl/train/internvl_chat_finetune.py: `build_datasets` reads
    `ds_collections[name]['repeat_time']` and `['data_augment']`; `LazySupervisedDataset.__init__` asserts
    `meta['annotation'].endswith('jsonl')`, reads its lines, keeps `raw_data[:int(len * repeat_time)]` below 1,
    `raw_data * repeat_time` above 1 (an int), and `meta['root']`; `get_image_path` is
    `os.path.join(self.root, image_path)`, `load_image` is `Image.open(path).convert('RGB')`."""
    samples = []
    with open(meta_path) as f:
        ds_collections = json.loads(f.read())
    for ds_name in ds_collections:
        meta = ds_collections[ds_name]
        repeat_time = meta["repeat_time"]
        assert isinstance(meta["data_augment"], bool)
        assert meta["annotation"].endswith("jsonl"), f"annotation must be jsonl, but got {meta['annotation']}"
        with open(meta["annotation"]) as f:
            raw_data = f.readlines()
            if repeat_time < 1:
                raw_data = raw_data[: int(len(raw_data) * repeat_time)]
            if repeat_time > 1:
                assert isinstance(repeat_time, int)
                raw_data = raw_data * repeat_time
        assert meta["length"] == len(Path(meta["annotation"]).read_text().splitlines())
        for line in raw_data:
            item = json.loads(line)
            if "image" in item and len(item["image"]) != 0:
                item["_path"] = os.path.join(meta["root"], item["image"])
            samples.append(item)
    return samples


def xtuner_read(meta_path: str) -> list[tuple[dict, float]]:
    """uni-medical/GMAI-VL (XTuner lite; `tools/llava/llava_sft.py` as in InternLM/xtuner@45b6da9): `dset_infos =
    load(args.datasets)`; per info `image_dir = info['image_dir']` if present, `info['sample_ratio']`,
    `info['annotations']`; xtuner/_lite/datasets/load.py reads a file by suffix (`LOAD_FN_MAP`: `.json` with
    json.load, `.jsonl` line by line) and, for local files, does not apply the ratio; format.py
    `llava_to_openai` takes `data['image']` when `'<image>' in conversations[0]['value']`; llava.py
    `LlavaTokenizeFunction` joins `os.path.join(self.image_dir, url)` when image_dir is set."""
    out = []
    with open(meta_path) as f:
        dset_infos = json.load(f)  # mmengine.load of a .json file
    for _, info in dset_infos.items():
        image_dir = info.get("image_dir")
        path = info["annotations"]
        suffix = os.path.splitext(path)[-1]
        assert suffix in (".json", ".jsonl")
        with open(path) as f:
            dset = json.load(f) if suffix == ".json" else [json.loads(line) for line in f]
        for data in dset:
            if "image" in data and "<image>" in data["conversations"][0]["value"]:
                urls = [data["image"]] if isinstance(data["image"], str) else data["image"]
                data["_path"] = [os.path.join(image_dir, u) if image_dir else u for u in urls][0]
            out.append((data, info["sample_ratio"]))
    return out


def llava_read(data_path: str, image_folder: str) -> list[dict]:
    """haotian-liu/LLaVA llava/train/train.py `LazySupervisedDataset`: `json.load(open(data_path, "r"))`;
    `__getitem__`: if 'image' in the sample, `Image.open(os.path.join(image_folder, image_file)).convert('RGB')`."""
    with open(data_path) as f:
        samples = json.load(f)
    for sample in samples:
        if "image" in sample:
            sample["_path"] = os.path.join(image_folder, sample["image"])
    return samples


def check_images(release: Release, samples: list[dict], opened: set[str]) -> None:
    """Every image sample points at its released image, which decodes; bytes are the generated MD5."""
    for s in samples:
        check_record({k: v for k, v in s.items() if k != "_path"}, s["id"])
        if "image" not in s:
            assert s["kind"] == "text_dialogue"
            continue
        path = s["_path"]
        assert Path(path).resolve().is_relative_to(release.dir.resolve()), path
        if path not in opened:
            data = Path(path).read_bytes()
            assert md5(data) == release.md5[s["id"]]
            Image.open(path).convert("RGB")
            opened.add(path)


# --- tests ----------------------------------------------------------------------------------------------


def test_release_folder_is_complete_and_clean(release: Release) -> None:
    assert release.linked  # images/ hard-linked into the store: no second copy
    files = {p.relative_to(release.dir / "images").as_posix() for p in (release.dir / "images").rglob("*")}
    files = {f for f in files if (release.dir / "images" / f).is_file()}
    assert files == set(release.images.values())
    assert release.planted not in files
    rejected = pq.read_table(release.dir / "rejected.parquet").to_pylist()
    assert rejected and {r["reason"] for r in rejected} == {"benchmark_match"}
    assert all(release.planted in r["detail"] for r in rejected)
    assert not (release.dir / "meta.json").exists()
    assert not list((release.dir / "mixtures").glob("*.meta.json"))
    assert {r["id"] for r in released_records(release)} == set(release.md5)


def test_webdataset_reads_every_sample_with_its_image(release: Release) -> None:
    shard_dir = release.dir / "shards"
    urls = [str(shard_dir / e["name"]) for e in read_index(shard_dir)["shards"]]
    assert len(urls) > 3
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"):
        exts = [k for k in sample if not k.startswith("__") and k != "json"]
        assert len(exts) == 1 and isinstance(sample[exts[0]], Image.Image)
        seen[sample["json"]["id"]] = exts[0]
    assert set(seen) == set(release.md5)
    assert set(seen.values()) == {"png", "jpg"}
    for raw in wds.WebDataset(urls, shardshuffle=False, empty_check=False):  # undecoded: the stored bytes
        record = json.loads(raw["json"])
        image = next(v for k, v in raw.items() if not k.startswith("__") and k != "json")
        assert md5(image) == release.md5[record["id"]]


def test_hugging_face_datasets_reads_every_sample_with_its_image(
    release: Release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    records = {r["id"]: r for r in released_records(release)}
    jpgs = sum(release.images[i].endswith(".jpg") for i in records)
    assert jpgs > 1

    def check(ds: datasets.Dataset) -> None:
        assert len(ds) == len(records)
        image_columns = [c for c, f in ds.features.items() if isinstance(f, datasets.Image)]
        assert sorted(image_columns) == ["jpg", "png"]
        for c in image_columns:
            ds = ds.cast_column(c, datasets.Image(decode=False))
        got = set()
        for row in ds:
            present = [c for c in image_columns if row[c] is not None]
            assert len(present) == 1, row["__key__"]
            record = row["json"]
            assert record == records[record["id"]] | {
                k: None for k in set(row["json"]) - set(records[record["id"]])
            }
            assert md5(row[present[0]]["bytes"]) == release.md5[record["id"]]
            assert present[0] == release.images[record["id"]].rsplit(".", 1)[1]
            got.add(record["id"])
        assert got == set(records)

    # As the Hub loads a repository: the card's YAML `configs` and `dataset_info.features`.
    folder = datasets.load_dataset(str(release.dir), split="train", cache_dir=str(tmp_path / "a"))
    check(folder)
    assert sum(row is not None for row in folder["jpg"]) == jpgs
    assert isinstance(
        folder[[i for i, r in enumerate(folder["jpg"]) if r is not None][0]]["jpg"], Image.Image
    )
    # The shards alone, with the features the card declares.
    features = datasets.load_dataset_builder(str(release.dir), cache_dir=str(tmp_path / "b")).info.features
    shards = datasets.load_dataset(
        "webdataset",
        data_files={"train": str(release.dir / "shards" / "*.tar")},
        features=features,
        split="train",
        cache_dir=str(tmp_path / "c"),
    )
    check(shards)


def test_internvl_reads_the_release_and_every_stage(
    release: Release, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(release.dir)  # InternVL resolves meta paths against the working directory
    opened: set[str] = set()
    samples = internvl_read("internvl_meta.json")
    assert ids(samples) == Counter(release.md5.keys())
    check_images(release, samples, opened)
    for stage in STAGES:
        samples = internvl_read(f"mixtures/{stage}.internvl_meta.json")
        assert ids(samples) == ids(stage_records(release, stage)), stage  # exactly the stage's samples
        check_images(release, samples, opened)
    stage3 = json.loads(Path("mixtures/stage3.internvl_meta.json").read_text())
    assert stage3["stage3-captions"]["repeat_time"] == 2 and 0 < stage3["stage3-instruct"]["repeat_time"] < 1
    stage2 = json.loads(Path("mixtures/stage2.internvl_meta.json").read_text())
    assert (
        stage2["stage2-captions"]["repeat_time"] == 2
        and 0 < stage2["stage2-captions-extra"]["repeat_time"] < 1
    )


def test_xtuner_reads_the_release_and_every_stage(release: Release, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(release.dir)
    opened: set[str] = set()
    samples = xtuner_read("xtuner_meta.json")
    assert ids(s for s, _ in samples) == Counter(release.md5.keys()) and {r for _, r in samples} == {1.0}
    check_images(release, [s for s, _ in samples], opened)
    ratios = {s: c for s, spec in MIXTURES["stages"].items() for c in [spec["components"]]}
    for stage in STAGES:
        samples = xtuner_read(f"mixtures/{stage}.xtuner_meta.json")
        check_images(release, [s for s, _ in samples], opened)
        meta = json.loads(Path(f"mixtures/{stage}.xtuner_meta.json").read_text())
        for name, spec in ratios[stage].items():
            assert meta[f"{stage}-{name}"]["sample_ratio"] == spec.get("sample_ratio", 1.0)
        # Each component file holds its records once: with a ratio of 1 that is the stage as sampled.
        if stage == "stage1":
            assert ids(s for s, _ in samples) == ids(stage_records(release, stage))
        # Later XTuner lite (InternLM/xtuner xtuner/_lite/datasets/jsonl.py) applies the ratio itself:
        # `_sampled * int(ratio)` plus `random.sample` up to `int(len * ratio)`.
        for name, entry in meta.items():
            lines = Path(entry["annotations"]).read_text(encoding="utf-8").splitlines()
            ratio = entry["sample_ratio"]
            sampled = lines * int(ratio)
            sampled += random.Random(0).sample(lines, int(len(lines) * ratio) - len(sampled))
            assert len(sampled) == int(len(lines) * ratio) and entry["length"] == len(lines), name


def test_llava_reads_the_release_and_every_stage(release: Release) -> None:
    opened: set[str] = set()
    samples = llava_read(str(release.dir / "llava.json"), str(release.dir / "images"))
    assert ids(samples) == Counter(release.md5.keys())
    check_images(release, samples, opened)
    for stage in STAGES:
        samples = llava_read(
            str(release.dir / "mixtures" / f"{stage}.llava.json"), str(release.dir / "images")
        )
        assert [s["id"] for s in samples] == [r["id"] for r in stage_records(release, stage)]
        check_images(release, samples, opened)
    provenance = json.loads((release.dir / "mixtures" / "stage3.provenance.json").read_text())
    assert provenance["samples"] == len(stage_records(release, "stage3"))


def test_relocated_metas_load_from_any_directory(
    release: Release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(release.dir, copy, ignore=shutil.ignore_patterns("shards", "report"))
    before = {p.relative_to(copy): p.read_bytes() for _, p in meta_files(copy)}
    assert len(before) == 2 + 2 * len(STAGES)
    relocate(copy)
    internvl = json.loads((copy / "internvl_meta.json").read_text())
    assert all(Path(e["root"]) == copy / "images" for e in internvl.values())
    # Moved again after relocating: relocating there finds the paths' part inside the release.
    moved = tmp_path / "images" / "moved"  # a folder name the release also uses, on purpose
    moved.parent.mkdir()
    copy.rename(moved)
    relocate(moved)
    monkeypatch.chdir(tmp_path)
    copied = Release(moved, release.md5, release.images, release.planted, release.linked)
    samples = internvl_read(str(moved / "mixtures" / "stage3.internvl_meta.json"))
    assert ids(samples) == ids(stage_records(release, "stage3"))
    check_images(copied, samples, set())
    check_images(copied, [s for s, _ in xtuner_read(str(moved / "xtuner_meta.json"))], set())
    relocate(moved, absolute=False)
    assert {p.relative_to(moved): p.read_bytes() for _, p in meta_files(moved)} == before  # as written
    outside = json.loads((moved / "xtuner_meta.json").read_text())
    next(iter(outside.values()))["image_dir"] = str(tmp_path / "somewhere-else")
    (moved / "xtuner_meta.json").write_text(json.dumps(outside))
    with pytest.raises(ValueError, match="somewhere-else"):
        relocate(moved)


def test_unpack_rebuilds_images_from_the_shards(
    release: Release, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where only the shards travel (the Hub), one command gives the JSON routes their images."""
    copy = tmp_path / "from-hub"
    shutil.copytree(release.dir, copy, ignore=shutil.ignore_patterns("images"))
    images_main(["unpack", str(copy)])
    assert f"{len(set(release.images.values()))} images written" in capsys.readouterr().out
    for record_id, rel in release.images.items():
        assert md5((copy / "images" / rel).read_bytes()) == release.md5[record_id]
    unpacked = {
        p.relative_to(copy / "images").as_posix() for p in (copy / "images").rglob("*") if p.is_file()
    }
    assert unpacked == set(release.images.values())
    images_main(["unpack", str(copy)])  # a second run finds every image in place
    assert "0 images written" in capsys.readouterr().out
    check_images(
        Release(copy, release.md5, release.images, release.planted, release.linked),
        llava_read(str(copy / "llava.json"), str(copy / "images")),
        set(),
    )


def test_image_sync_links_removes_and_falls_back_to_copies(
    output_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = OutputLayout(output_root)
    write_generated(layout, demo_rows(layout, images_per_source=2))
    rows = load_records(layout).rows
    images = layout.release / "images"
    first = sync_images(rows, images)
    assert first.linked == len({r.record["image"] for r in rows}) and first.copied == first.kept == 0
    again = sync_images(rows, images)
    assert again.kept == first.linked and again.linked == again.copied == 0 and again.removed == []
    # A store image rewritten (a new file, as atomic writes make) is linked again, not kept stale.
    victim = rows[0].image_path
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data)
    assert sync_images(rows, images).linked == 1
    # Fewer released images: the others leave images/ (and empty folders with them).
    keep = [r for r in rows if r.record["dataset"] != "demo_brain_msd"]
    fewer = sync_images(keep, images)
    assert fewer.removed and all(rel.split("/")[3] == "demo_brain_msd" for rel in fewer.removed)
    assert not (images / "3d").exists()
    # A filesystem that cannot link (another device): copies, which a rerun keeps.
    shutil.rmtree(images)

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    copied = sync_images(keep, images)
    assert copied.copied == len({r.record["image"] for r in keep}) and copied.linked == 0
    assert sync_images(keep, images).kept == copied.copied
    for r in keep:
        assert (images / r.record["image"]).read_bytes() == r.image_path.read_bytes()
    assert list(images.rglob(".*")) == []  # no temporary left
