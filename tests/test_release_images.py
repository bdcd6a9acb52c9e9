"""The release's images/ is synced through an on-disk sort: exact, in path order, in bounded runs."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from gmai_pipeline.release import images, spill
from gmai_pipeline.release.images import sync_images
from gmai_pipeline.release.records import ReleaseRow


def _row(rel: str, file: Path) -> ReleaseRow:
    return ReleaseRow(
        record={"id": rel, "image": rel},
        image_file=str(file),
        image_md5="",
        sample_id=rel,
        modality="CT",
        department="Radiology",
        task_type="2d_cls",
        clinical_task="",
        confidence=None,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _store(tmp_path: Path, rels: list[str]) -> list[ReleaseRow]:
    """One stored file per path (its own bytes), named as the records name it, two records each."""
    rows = []
    for k, rel in enumerate(rels):
        src = tmp_path / "store" / rel
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(f"image {k}".encode())
        rows += [_row(rel, src), _row(rel, src)]
    return rows


def test_paths_whose_text_order_is_not_the_walk_order_are_kept_and_stale_files_go(tmp_path: Path) -> None:
    # As text, "x-y.png" < "x.png" < "x/a.png"; a walk of the folder meets x/ first: the removal merge
    # must compare the two in the same order, or it would delete released images.
    wanted = ["x.png", "x-y.png", "x/a.png", "x/y/z.png", "x0/b.png", "x y/c.png"]
    stale = ["x/stale.png", "x-z.png", "x.png.old", "x0/c.png", "x/y/0.png", "zz/q/r.png"]
    rows = _store(tmp_path, wanted)
    out = tmp_path / "release" / "images"
    for rel in stale:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"old")

    first = sync_images(iter(rows), out)  # any iterable, read once

    assert _files(out) == {rel: (tmp_path / "store" / rel).read_bytes() for rel in wanted}
    assert first.linked == len(wanted) and first.kept == first.copied == 0
    assert first.removed == sorted(stale, key=lambda rel: rel.split("/")) and first.removed_count == len(
        stale
    )
    assert not (out / "zz").exists()  # emptied folders go too
    again = sync_images(rows, out)
    assert again.kept == len(wanted) and again.linked == again.removed_count == 0
    assert [p.name for p in out.parent.iterdir()] == ["images"]  # no spill left beside it


def test_the_sort_runs_in_bounded_pieces_and_gives_what_one_run_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rels = [f"2d/cls/ct/demo/{k % 7:04d}/img{k:05d}.png" for k in range(61)]
    rows = _store(tmp_path, rels)
    whole = sync_images(rows, tmp_path / "whole" / "images")

    monkeypatch.setattr(images, "RUN_ROWS", 4)
    monkeypatch.setattr(images, "RUN_BATCH", 3)
    monkeypatch.setattr(images, "FAN_IN", 3)
    spilled, merges = [], []
    write, merged = spill.write_run, images._merged

    def counting_write(path: Path, schema: pa.Schema, batches):
        batches = list(batches)
        if path.name.startswith("run-0-"):  # a run sorted in memory
            spilled.append(sum(b.num_rows for b in batches))
        return write(path, schema, batches)

    def counting_merged(runs):
        merges.append(len(runs))
        return merged(runs)

    monkeypatch.setattr(spill, "write_run", counting_write)  # what writes the runs sorted in memory
    monkeypatch.setattr(images, "_merged", counting_merged)
    pieces = sync_images(rows, tmp_path / "pieces" / "images")

    assert len(spilled) == len(rows) // 4 + 1 and max(spilled) <= 4  # runs of at most RUN_ROWS pairs
    assert max(merges) <= 3 and len(merges) > 2  # never more than FAN_IN runs open at once
    assert _files(tmp_path / "pieces" / "images") == _files(tmp_path / "whole" / "images")
    assert (
        (pieces.linked, pieces.kept, pieces.removed)
        == (whole.linked, whole.kept, whole.removed)
        == (61, 0, [])
    )


def test_a_path_naming_two_files_is_an_error_even_runs_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "RUN_ROWS", 2)
    rows = _store(tmp_path, [f"a/{k}.png" for k in range(9)])
    other = tmp_path / "elsewhere.png"
    other.write_bytes(b"another image")
    rows.append(_row("a/0.png", other))
    with pytest.raises(ValueError, match=r"image a/0\.png names two files") as raised:
        sync_images(rows, tmp_path / "release" / "images")
    assert str(other) in str(raised.value) and str(tmp_path / "store" / "a" / "0.png") in str(raised.value)


def test_a_path_with_a_nul_character_is_refused(tmp_path: Path) -> None:
    rows = _store(tmp_path, ["a/1.png"])
    rows.append(_row("a/\x002.png", tmp_path / "store" / "a" / "1.png"))
    with pytest.raises(ValueError, match="NUL character"):
        sync_images(rows, tmp_path / "release" / "images")
