"""Release shards and annotation files: round trip, crash then rerun, stable keys, stale files."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from release_fixtures import demo_rows, write_generated

from gmai_pipeline.release import shards as shards_mod
from gmai_pipeline.release.annotations import SUBSETS, write_annotations
from gmai_pipeline.release.images import sync_images
from gmai_pipeline.release.loader import LlavaJsonl
from gmai_pipeline.release.records import load_records
from gmai_pipeline.release.shards import (
    TarShardWriter,
    read_index,
    sample_key,
    sha256_file,
    verify_shards,
    write_shards,
)
from gmai_pipeline.release.trainer_metas import write_release_metas
from gmai_pipeline.storage import OutputLayout

TARGET = 12000  # bytes: several shards from the tiny fixture


@pytest.fixture
def fixture_rows(output_root: Path) -> list[dict]:
    rows = demo_rows(OutputLayout(output_root))
    write_generated(OutputLayout(output_root), rows)
    return rows


def read_back(shard_dir: Path) -> dict[str, dict]:
    """Every sample of the indexed shards through webdataset: key -> {record, image ext, image bytes}."""
    urls = [str(shard_dir / e["name"]) for e in read_index(shard_dir)["shards"]]
    out: dict[str, dict] = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode():
        key = sample["__key__"]
        assert key not in out, f"duplicate sample {key}"
        image_ext = [k for k in sample if not k.startswith("__") and k != "json"]
        assert len(image_ext) == 1
        out[key] = {"record": sample["json"], "ext": image_ext[0], "image": sample[image_ext[0]]}
    return out


def crash_after_samples(monkeypatch: pytest.MonkeyPatch, n: int):
    """Make TarShardWriter.write_sample raise after `n` samples (as a crash would); returns the real one."""
    real_write = TarShardWriter.write_sample
    calls = {"n": 0}

    def failing_write(self, key, members):
        calls["n"] += 1
        if calls["n"] > n:
            raise OSError("simulated crash")
        return real_write(self, key, members)

    monkeypatch.setattr(TarShardWriter, "write_sample", failing_write)
    return real_write


def test_round_trip_shards_and_jsonl(output_root: Path, fixture_rows: list[dict]) -> None:
    layout = OutputLayout(output_root)
    loaded = load_records(layout)
    assert loaded.rejected == [] and loaded.missing_inputs == []
    shard_dir = layout.release / "shards"
    result = write_shards(loaded.rows, shard_dir, TARGET)
    assert len(result.shards) >= 3 and result.written == len(result.shards)
    back = read_back(shard_dir)
    assert len(back) == len(fixture_rows)
    for r in fixture_rows:
        got = back[sample_key(r["id"])]
        assert got["image"] == (output_root / r["image"]).read_bytes()
        assert got["ext"] == Path(r["image"]).suffix[1:]
        rec = got["record"]
        assert rec["id"] == r["id"] and rec["image"] == r["image"].removeprefix("images/")
        assert rec["conversations"] == json.loads(r["conversations"])
        assert (
            rec["width"],
            rec["height"],
            rec["dataset"],
            rec["language"],
            rec["kind"],
            rec["generator"],
        ) == (r["width"], r["height"], r["dataset"], r["language"], r["kind"], r["generator"])
        assert rec["prompt_version"] == r["prompt_version"]
    index = read_index(shard_dir)
    assert index["samples"] == len(fixture_rows)
    for e in index["shards"]:
        assert (
            sha256_file(shard_dir / e["name"]) == e["sha256"]
            and (shard_dir / e["name"]).stat().st_size == e["bytes"]
        )

    counts = write_annotations(loaded.rows, layout.release)
    assert set(counts) == set(SUBSETS) and sum(counts.values()) == len(fixture_rows)
    write_release_metas(layout.release, counts)
    sync_images(loaded.rows, layout.release / "images")
    ds = LlavaJsonl.from_meta(layout.release / "xtuner_meta.json", layout.release)
    assert len(ds) == len(fixture_rows)
    by_id = {s["id"]: s for s in ds}
    for r in fixture_rows:
        s = by_id[r["id"]]
        assert s["image_bytes"] == (output_root / r["image"]).read_bytes()
        assert s["conversations"] == json.loads(r["conversations"])
        assert s["conversations"][0]["value"].startswith("<image>\n")
    meta = json.loads((layout.release / "xtuner_meta.json").read_text())
    assert meta["GMAI-MM-Chinese-zh"]["length"] == sum(r["language"] == "zh" for r in fixture_rows)
    assert set(meta["GMAI-MM-Caption-en"]) == {
        "image_dir",
        "annotations",
        "sample_ratio",
        "length",
        "data_augment",
    }


def test_crash_mid_shard_then_rerun(
    output_root: Path, fixture_rows: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = OutputLayout(output_root)
    rows = load_records(layout).rows
    plans = shards_mod.plan_shards(rows, TARGET)
    assert len(plans) >= 3
    assert plans[1].samples >= 2
    crash_after = plans[0].samples + plans[1].samples // 2  # the crash comes inside the second shard
    shard_dir = layout.release / "shards"
    real_write = crash_after_samples(monkeypatch, crash_after)
    with pytest.raises(OSError, match="simulated crash"):
        write_shards(rows, shard_dir, TARGET, workers=1)
    # No partial shard visible: every .tar is complete and indexed, no temporary left behind.
    assert sorted(p.name for p in shard_dir.glob("*.tar")) == [plans[0].name]
    assert [e["name"] for e in read_index(shard_dir)["shards"]] == [plans[0].name]
    assert verify_shards(shard_dir) == []
    assert list(shard_dir.glob(".*")) == []

    monkeypatch.setattr(TarShardWriter, "write_sample", real_write)
    result = write_shards(rows, shard_dir, TARGET)
    assert (result.kept, result.written) == (1, len(plans) - 1)
    back = read_back(shard_dir)
    assert sorted(back) == sorted(
        sample_key(r["id"]) for r in fixture_rows
    )  # each exactly once (read_back checks)
    assert verify_shards(shard_dir) == []

    # Same bytes as a run that never crashed.
    clean = write_shards(rows, output_root / "clean" / "shards", TARGET)
    assert [e["sha256"] for e in clean.shards] == [e["sha256"] for e in result.shards]


def test_killed_run_leftovers_are_cleaned(output_root: Path, fixture_rows: list[dict]) -> None:
    layout = OutputLayout(output_root)
    rows = load_records(layout).rows
    shard_dir = layout.release / "shards"
    first = write_shards(rows, shard_dir, TARGET)
    # A kill -9 leaves a temporary; a smaller release leaves shards that are no longer planned.
    (shard_dir / ".gmai-vl-000001.tar.999.tmp").write_bytes(b"partial")
    second = write_shards(rows[: len(rows) // 2], shard_dir, TARGET)
    assert ".gmai-vl-000001.tar.999.tmp" in second.removed
    assert len(second.shards) < len(first.shards)
    assert sorted(p.name for p in shard_dir.glob("*")) == sorted(e["name"] for e in second.shards)
    assert verify_shards(shard_dir) == []
    assert len(read_back(shard_dir)) == len(rows) // 2


def test_rerun_keeps_verified_shards_and_rewrites_changed(
    output_root: Path, fixture_rows: list[dict]
) -> None:
    layout = OutputLayout(output_root)
    rows = load_records(layout).rows
    shard_dir = layout.release / "shards"
    first = write_shards(rows, shard_dir, TARGET)
    again = write_shards(rows, shard_dir, TARGET)
    assert (again.kept, again.written) == (len(first.shards), 0)
    # A corrupted shard (same size, different bytes) fails sha256 verification and is rewritten.
    victim = shard_dir / first.shards[1]["name"]
    data = bytearray(victim.read_bytes())
    data[700] ^= 0xFF
    victim.write_bytes(bytes(data))
    fixed = write_shards(rows, shard_dir, TARGET)
    assert (fixed.kept, fixed.written) == (len(first.shards) - 1, 1)
    assert [e["sha256"] for e in fixed.shards] == [e["sha256"] for e in first.shards]


def test_keys_stable_unique_and_dotless(output_root: Path, fixture_rows: list[dict]) -> None:
    layout = OutputLayout(output_root)
    rows = load_records(layout).rows
    a = write_shards(rows, output_root / "a" / "shards", TARGET)
    b = write_shards(rows, output_root / "b" / "shards", TARGET)
    keys_a, keys_b = read_back(output_root / "a" / "shards"), read_back(output_root / "b" / "shards")
    assert list(keys_a) == list(keys_b) and [e["sha256"] for e in a.shards] == [e["sha256"] for e in b.shards]
    for key in keys_a:
        assert "." not in key and "/" not in key
    assert sample_key("2d#cls#x#d#a.png#caption") == sample_key("2d#cls#x#d#a.png#caption")
    assert sample_key("2d#cls#x#d#a.png") != sample_key("2d#cls#x#d#a_png")  # same slug, different id
    assert "." not in sample_key("2d#cls#ct#d#case.1.nii.gz#z0012#vqa")


def test_rejected_rows_are_listed_not_dropped(output_root: Path) -> None:
    layout = OutputLayout(output_root)
    rows = demo_rows(layout, images_per_source=1)
    rows[0] = {**rows[0], "conversations": "not json"}
    rows[1] = {
        **rows[1],
        "conversations": json.dumps([{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]),
    }
    rows.append({**rows[2]})  # duplicate id
    write_generated(layout, rows)
    loaded = load_records(layout)
    assert len(loaded.rows) + len(loaded.rejected) == loaded.inputs == len(rows)
    assert sorted(r["reason"] for r in loaded.rejected) == [
        "bad_role_order",
        "conversations_not_json",
        "duplicate_id",
    ]
    assert all("generated/" in r["detail"] for r in loaded.rejected)


def test_crash_with_parallel_writers_leaves_only_indexed_shards(
    output_root: Path, fixture_rows: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = OutputLayout(output_root)
    rows = load_records(layout).rows
    shard_dir = layout.release / "shards"
    real_write = crash_after_samples(monkeypatch, len(rows) // 2)  # across threads: where it lands varies
    with pytest.raises(OSError, match="simulated crash"):
        write_shards(rows, shard_dir, TARGET, workers=3)
    indexed = {e["name"] for e in read_index(shard_dir)["shards"]}
    assert {p.name for p in shard_dir.iterdir()} == indexed  # no partial shard, no temporary
    assert verify_shards(shard_dir) == []
    monkeypatch.setattr(TarShardWriter, "write_sample", real_write)
    result = write_shards(rows, shard_dir, TARGET, workers=3)
    assert result.kept == len(indexed) and result.samples == len(rows)
    assert sorted(read_back(shard_dir)) == sorted(sample_key(r["id"]) for r in fixture_rows)


def webdataset_tar(samples: list[dict]) -> bytes:
    """What webdataset's own TarWriter writes for `samples` (with our fixed mtime)."""
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False, mtime=shards_mod.TAR_MTIME) as writer:
        for sample in samples:
            writer.write(sample)
    return buf.getvalue()


@pytest.mark.parametrize("direct", [True, False])
def test_shard_bytes_equal_webdataset_tarwriter(tmp_path: Path, direct: bool) -> None:
    """Our writer must produce exactly the tar webdataset.TarWriter produces: short names, a name
    over the 100-byte ustar limit (PAX header), an empty member, and an image larger than the
    writer's buffers (streamed in pieces)."""
    rng = np.random.default_rng(0)
    files = {
        "small": rng.bytes(1234),
        "empty": b"",
        "aligned": rng.bytes(4096),
        "big": rng.bytes(shards_mod.SINK_BUFFER + 777_777),
    }
    for name, data in files.items():
        (tmp_path / f"{name}.png").write_bytes(data)
    samples = [
        {"__key__": "a-0001", "png": files["small"], "json": b'{"id":"a"}'},
        {"__key__": "b-0002", "png": files["empty"], "json": b"{}"},
        {"__key__": "c" * 120 + "-0003", "png": files["aligned"], "json": b'{"id":"long"}'},
        {"__key__": "d-0004", "png": files["big"], "json": b'{"id":"big"}'},
    ]
    paths = {"a-0001": "small", "b-0002": "empty", "c" * 120 + "-0003": "aligned", "d-0004": "big"}
    fd, direct = shards_mod.open_for_shard(
        tmp_path / "ours.tar", direct
    )  # falls back where O_DIRECT is refused
    out = shards_mod._ShardFile(fd, direct, shards_mod._BufferPool())
    writer = TarShardWriter(out)
    for sample in samples:
        writer.write_sample(
            sample["__key__"], {"png": tmp_path / f"{paths[sample['__key__']]}.png", "json": sample["json"]}
        )
    writer.close()
    os.close(fd)
    expected = webdataset_tar(samples)
    assert (tmp_path / "ours.tar").read_bytes() == expected
    assert out.bytes == len(expected) and out.sha256.hexdigest() == hashlib.sha256(expected).hexdigest()


def test_direct_io_refused_at_write_falls_back(
    output_root: Path, fixture_rows: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some filesystems take O_DIRECT at open and refuse the I/O (EINVAL): the shard is still written, whole."""
    rows = load_records(OutputLayout(output_root)).rows
    expected = write_shards(rows, output_root / "buffered" / "shards", TARGET)
    real_write = os.write
    refused = {"n": 0}

    def write(fd: int, data) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused["n"] += 1
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(shards_mod, "DIRECT_ALIGN", 4096)  # direct writes even for the tiny fixture
    monkeypatch.setattr(shards_mod.os, "write", write)
    got = write_shards(rows, output_root / "direct" / "shards", TARGET)
    monkeypatch.undo()
    probe = output_root / "probe"
    fd, direct_possible = shards_mod.open_for_shard(probe, True)
    os.close(fd)
    assert refused["n"] > 0 or not direct_possible  # on tmpfs O_DIRECT is refused at open already
    assert [e["sha256"] for e in got.shards] == [e["sha256"] for e in expected.shards]
    assert verify_shards(output_root / "direct" / "shards") == []


def test_image_changed_after_planning_is_an_error_naming_it(
    output_root: Path, fixture_rows: list[dict]
) -> None:
    rows = load_records(OutputLayout(output_root)).rows
    plan = next(shards_mod.iter_plans(rows, TARGET))
    victim = plan.contents[0].image.path
    victim.write_bytes(victim.read_bytes() + b"more")
    shard = output_root / "shards" / plan.name
    shard.parent.mkdir()
    with pytest.raises(OSError, match=re.escape(str(victim))):
        shards_mod.write_shard(shard, plan)
    assert list(shard.parent.iterdir()) == []  # no shard, no temporary


def test_disk_full_mid_shard_raises_and_leaves_no_partial(
    output_root: Path, fixture_rows: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error on the writer thread (here ENOSPC) reaches the caller; the shard's temporary is removed."""
    rows = load_records(OutputLayout(output_root)).rows
    real_write = os.write
    calls = {"n": 0}

    def write(fd: int, data) -> int:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(shards_mod.os, "write", write)
    shard_dir = output_root / "release" / "shards"
    with pytest.raises(OSError, match="No space left"):
        write_shards(rows, shard_dir, TARGET, workers=1)
    monkeypatch.undo()
    assert list(shard_dir.glob(".*")) == []
    assert sorted(p.name for p in shard_dir.glob("*.tar")) == [
        e["name"] for e in read_index(shard_dir)["shards"]
    ]
    assert verify_shards(shard_dir) == []


@pytest.mark.parametrize("direct", [True, False])
def test_end_of_archive_padding_equals_tarwriter_for_every_residue(tmp_path: Path, direct: bool) -> None:
    """tarfile pads the end of an archive to a whole 10,240-byte record after two zero blocks: an archive
    whose members end at each of the 20 block offsets within a record gets exactly TarWriter's bytes."""
    record, block = 10240, 512
    residues = set()
    for residue in range(0, record, block):
        # One sample: image header + image blocks, json header + one json block = 1536 + 512 * image_blocks.
        image_blocks = (residue - 3 * block) % record // block
        image = np.random.default_rng(residue).bytes(image_blocks * block - 7 if image_blocks else 0)
        (tmp_path / "i.png").write_bytes(image)
        sample = {"__key__": f"k{residue}", "png": image, "json": b'{"id":"x"}'}
        path = tmp_path / f"ours-{residue}.tar"
        fd, ok_direct = shards_mod.open_for_shard(path, direct)
        writer = TarShardWriter(shards_mod._ShardFile(fd, ok_direct, shards_mod._BufferPool()))
        writer.write_sample(sample["__key__"], {"png": tmp_path / "i.png", "json": sample["json"]})
        members_end = writer.out.offset
        writer.close()
        os.close(fd)
        residues.add(members_end % record)
        expected = webdataset_tar([sample])
        assert len(expected) % record == 0
        assert path.read_bytes() == expected, f"members end at {members_end} (residue {residue})"
    assert residues == set(range(0, record, block))
