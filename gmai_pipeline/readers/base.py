"""What every reader shares: the events it yields, its context, and the 2D image-with-annotations flow.

A reader is a generator over one dataset that yields exactly one event per *input*:
`Kept(rows)` when the input became one or more rows, `Quarantined(...)` when it did not
(`Deferred` stands for the events of one image being stored on a worker thread). The
driver counts events, so "inputs seen = inputs kept + inputs quarantined" holds by construction,
and the asset check recounts both sides from the files written. What an input is, per reader, is
documented in each reader module and in `gmai_pipeline/readers/__init__.py`.

Files in the manifest that no reader touched (README, licence, a spreadsheet) are not inputs;
the driver lists them as "ignored" in the asset metadata. Image files inside a reader's image
folder that nothing references are inputs (`unreferenced_file`): a picture without a label.
"""

from __future__ import annotations

import contextlib
import io
import math
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from gmai_pipeline.catalog import IMAGE_EXTENSIONS, SourceDataset
from gmai_pipeline.decode_guard import decoder_failure, is_output_failure, open_verified, read_verified
from gmai_pipeline.imaging import ImageError, ImageStore, StoredImage, modality_slug, sample_id

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "tr": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "ts": "test",
}
BOX_TOLERANCE = 1.0  # pixels a box may overhang the image (float rounding in exported annotations)


@dataclass
class Kept:
    rows: list[dict]


@dataclass
class Quarantined:
    source_path: str
    step: str
    reason: str
    detail: str


@dataclass
class Deferred:
    """Events still being computed on a worker thread: `finish(future.result())` gives them, in order."""

    future: Future
    finish: Callable[[object], list[Kept | Quarantined]]


Event = Kept | Quarantined | Deferred


@dataclass
class Annotation:
    """One labelled thing on an image: raw label candidates (tried in order against the catalog map)
    and an optional box in source pixels (half-open floats), or normalized to 0..1 when `normalized`."""

    raw_labels: tuple[str, ...]
    box: tuple[float, float, float, float] | None = None
    normalized: bool = False
    where: str = ""  # where the annotation came from, for quarantine details
    error: tuple[str, str] | None = None  # (reason, detail) found while parsing


@dataclass
class ReaderContext:
    source: SourceDataset
    folder: Path
    files: dict[str, str]  # usable manifest paths -> MD5 of the bytes
    store: ImageStore
    executor: Executor | None = None  # set: 2D image stores run on its threads (see normalize.py)
    counters: Counter = field(default_factory=Counter)
    claimed: set[str] = field(default_factory=set)
    first_by_md5: dict[str, str] = field(default_factory=dict)
    real: dict[str, str] = field(default_factory=dict)  # path -> name on disk, where they differ (non-UTF-8)

    @property
    def slug(self) -> str:
        return modality_slug(self.source.modality)

    @property
    def root(self) -> Path:
        root = self.__dict__.get("_root")
        if root is None:
            root = self.__dict__["_root"] = self.folder.resolve()
        return root

    def fs_path(self, rel: str) -> Path:
        """Where `rel` is on disk (for decoders that only take a path; prefer `read`/`open`)."""
        return self.root / self.real.get(rel, rel)

    def read(self, rel: str, shown: str | None = None) -> bytes:
        """The bytes of `rel`, still the regular file the scan hashed (no link followed, same MD5);
        ImageError (`path_refused`, `missing_file`, `content_changed`, `unreadable`) otherwise,
        whose detail names the file as `shown` (default `rel`)."""
        return read_verified(self.root, self.real.get(rel, rel), shown or rel, self.files.get(rel))

    def text(self, rel: str) -> str:
        """`read` decoded as UTF-8 (a BOM allowed); ImageError `unreadable` naming the file otherwise."""
        data = self.read(rel)
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ImageError(
                "unreadable", f"{rel}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
            ) from None

    def text_file(self, rel: str) -> io.StringIO:
        """`text` as a file object (for csv readers)."""
        return io.StringIO(self.text(rel), newline="")

    @contextlib.contextmanager
    def open(self, rel: str) -> Iterator[io.BufferedReader]:
        """A verified binary file object of `rel` (see `read`), for decoders that stream."""
        with open_verified(self.root, self.real.get(rel, rel), rel, self.files.get(rel)) as f:
            yield f

    def claim(self, rel: str) -> None:
        self.claimed.add(rel)

    def find(self, rel: str, extensions: Iterable[str] = ()) -> str | None:
        """The manifest path for `rel` (or `rel` + one of `extensions`), None when absent."""
        if rel in self.files:
            return rel
        for ext in extensions:
            if rel + ext in self.files:
                return rel + ext
        return None

    def under(self, folder: str, extensions: Iterable[str] | None = None) -> list[str]:
        """Manifest paths inside `folder` ('' = everywhere), optionally filtered by suffix, sorted."""
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        exts = tuple(e.lower() for e in extensions) if extensions is not None else None
        return sorted(
            p for p in self.files if p.startswith(prefix) and (exts is None or p.lower().endswith(exts))
        )

    def duplicate_of(self, rel: str, md5: str | None = None) -> str | None:
        """The first path with the same bytes (MD5) as `rel`, or None if `rel` is the first."""
        md5 = md5 or self.files.get(rel)
        if md5 is None:
            return None
        first = self.first_by_md5.setdefault(md5, rel)
        return None if first == rel else first

    def label(self, candidates: Iterable[str]) -> tuple[str | None, str | None]:
        """(label text, None) or (None, reason): through the catalog map when one is given."""
        cands = [str(c).strip() for c in candidates if c is not None and str(c).strip()]
        if not cands:
            return None, "missing_label"
        if self.source.labels:
            for c in cands:
                if c in self.source.labels:
                    return self.source.labels[c], None
            return None, "unknown_label"
        return cands[0], None

    def split_of(self, rel: str, explicit: str | None = None) -> str:
        """An explicit split value, else a train/val/test folder in the path, else the catalog's first split."""
        if explicit is not None and str(explicit).strip():
            return SPLIT_ALIASES.get(str(explicit).strip().lower(), str(explicit).strip().lower())
        for part in rel.split("/")[:-1]:
            if part.lower() in SPLIT_ALIASES:
                return SPLIT_ALIASES[part.lower()]
        return self.source.splits[0]

    def exclusion(self, rel: str, split: str | None = None) -> tuple[str, str, str] | None:
        """(step, reason, detail) when `rel` must not become rows: a split the catalog leaves out, or a byte duplicate."""
        split = split if split is not None else self.split_of(rel)
        if split not in self.source.splits:
            return (
                "read",
                "split_excluded",
                f"{rel}: split '{split}' not in the catalog's splits {list(self.source.splits)}",
            )
        first = self.duplicate_of(rel)
        if first is not None:
            return "dedup", "duplicate_image", f"{rel}: same bytes (MD5) as {first}"
        return None

    def row(
        self,
        source_path: str,
        split: str,
        stored: StoredImage,
        label: str,
        bbox: list[int] | None,
        id_path: str | None = None,
        axis: str | None = None,
        index: int | None = None,
    ) -> dict:
        s = self.source
        return {
            "sample_id": sample_id(s.dim, s.task, self.slug, s.name, id_path or source_path, axis, index),
            "dataset": s.name,
            "source_path": source_path,
            "slice_axis": axis,
            "slice_index": index,
            "split": split,
            "image": stored.image,
            "image_md5": stored.md5,
            "width": stored.width,
            "height": stored.height,
            "modality": s.modality,
            "label": label,
            "department": s.department,
            "task_type": s.task_type,
            "clinical_task": s.clinical_task,
            "bbox": bbox,
        }


def join(folder: str, name: str) -> str | None:
    """`folder/name` normalized to a posix path inside the dataset, None if it escapes it."""
    rel = posixpath.normpath(posixpath.join(folder.strip("/") or ".", name.strip().replace("\\", "/")))
    if rel.startswith("../") or rel == ".." or rel.startswith("/"):
        return None
    return rel


def quarantine_all(
    annotations: list[Annotation], source_path: str, step: str, reason: str, detail: str
) -> Iterator[Quarantined]:
    for _ in annotations or [None]:
        yield Quarantined(source_path, step, reason, detail)


def _int_box(ann: Annotation, width: int, height: int) -> tuple[list[float] | None, str | None]:
    """Source-pixel box, or a reason: out of the image beyond tolerance, or zero area."""
    x0, y0, x1, y1 = ann.box  # type: ignore[misc]
    if ann.normalized:
        x0, x1 = x0 * width, x1 * width
        y0, y1 = y0 * height, y1 * height
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None, "box_outside_image"
    if (
        x0 < -BOX_TOLERANCE
        or y0 < -BOX_TOLERANCE
        or x1 > width + BOX_TOLERANCE
        or y1 > height + BOX_TOLERANCE
    ):
        return None, "box_outside_image"
    x0, y0 = max(0.0, x0), max(0.0, y0)
    x1, y1 = min(float(width), x1), min(float(height), y1)
    if x1 - x0 < 0.5 or y1 - y0 < 0.5:
        return None, "degenerate_box"
    return [x0, y0, x1, y1], None


def image_inputs(
    ctx: ReaderContext, rel: str | None, ref: str, split: str, annotations: list[Annotation]
) -> Iterator[Event]:
    """One 2D image file and its annotations -> one event per annotation (or one for an image without any).

    `rel` is the manifest path (None when the reference escapes the dataset folder), `ref` how the
    annotation file named it. Checks run cheapest first, so a bad reference never costs a decode.
    """
    shown = rel or ref
    if rel is None:
        yield from quarantine_all(
            annotations, ref, "read", "path_refused", f"{ref}: path escapes the dataset folder"
        )
        return
    if rel not in ctx.files:
        yield from quarantine_all(
            annotations,
            rel,
            "read",
            "missing_file",
            f"{rel}: referenced{' by ' + annotations[0].where if annotations and annotations[0].where else ''} but not in the dataset folder",
        )
        return
    ctx.claim(rel)
    if not annotations:
        yield Quarantined(rel, "annotate", "no_annotation", f"{rel}: image has no annotation")
        return
    excluded = ctx.exclusion(rel, split)
    if excluded is not None:
        yield from quarantine_all(annotations, rel, *excluded)
        return
    pending: list[tuple[Annotation, str]] = []
    for ann in annotations:
        if ann.error is not None:
            yield Quarantined(rel, "annotate", ann.error[0], ann.error[1])
            continue
        label, reason = ctx.label(ann.raw_labels)
        if label is None:
            raw = "/".join(str(c) for c in ann.raw_labels if str(c).strip()) or "(empty)"
            yield Quarantined(
                rel,
                "annotate",
                reason or "unknown_label",
                f"{shown}: label '{raw}'{' in ' + ann.where if ann.where else ''} is not in the catalog's labels",
            )
            continue
        pending.append((ann, label))
    if not pending:
        return
    if ctx.executor is None:
        yield from _finish(ctx, rel, split, pending, _store(ctx, rel))
    else:  # decode/MD5/write on a worker thread; the driver resolves these in order
        yield Deferred(ctx.executor.submit(_store, ctx, rel), partial(_finish, ctx, rel, split, pending))


def at_boundary(name: str, work: Callable[[], Event], what: str = "file") -> Event:
    """Run the work of one input; whatever it raises (any decoder, numpy, a bug in a reader) becomes
    that input's quarantine row (`decode_guard.decoder_failure`: file and exception type, never its
    text), so one bad file never ends the dataset and no header value reaches a message."""
    try:
        return work()
    except ImageError as err:
        return Quarantined(name, "read", err.reason, err.detail)
    except Exception as exc:  # noqa: BLE001 - the sample boundary: nothing but an output failure escapes
        if is_output_failure(exc):
            raise
        err = decoder_failure(exc, name, what)
        return Quarantined(name, "read", err.reason, err.detail)


def _store(ctx: ReaderContext, rel: str) -> StoredImage | ImageError:
    """Read (verified), decode, store: on a worker thread, so every failure is returned, not raised."""
    try:
        return ctx.store.store_bytes(ctx.read(rel), rel, md5=ctx.files.get(rel))  # read() checked it
    except ImageError as err:
        return err
    except Exception as exc:  # noqa: BLE001 - the sample boundary
        if is_output_failure(exc):
            raise  # the output could not be written: a fault of the run, not of this input
        return decoder_failure(exc, rel, "image")


def _finish(
    ctx: ReaderContext,
    rel: str,
    split: str,
    pending: list[tuple[Annotation, str]],
    stored: StoredImage | ImageError,
) -> list[Event]:
    """The events of one stored (or failed) image: one per annotation."""
    if isinstance(stored, ImageError):
        return [Quarantined(rel, "read", stored.reason, stored.detail) for _ in pending]
    events: list[Event] = []
    for ann, label in pending:
        bbox = None
        if ann.box is not None:
            box, reason = _int_box(ann, stored.source_width, stored.source_height)
            if box is None:
                events.append(
                    Quarantined(
                        rel,
                        "annotate",
                        reason or "box_outside_image",
                        f"{rel}: box {[round(v, 2) for v in ann.box]}{' (normalized)' if ann.normalized else ''}"
                        f"{' in ' + ann.where if ann.where else ''} does not fit the "
                        f"{stored.source_width}x{stored.source_height} image",
                    )
                )
                continue
            bbox = stored.scale_box(tuple(box))
        events.append(Kept([ctx.row(rel, split, stored, label, bbox)]))
    return events


def unreferenced(
    ctx: ReaderContext, folder: str, extensions: Iterable[str] = IMAGE_EXTENSIONS
) -> Iterator[Event]:
    """Image files in the reader's image folder that no annotation referenced."""
    for rel in ctx.under(folder, extensions):
        if rel not in ctx.claimed:
            ctx.claim(rel)
            yield Quarantined(rel, "read", "unreferenced_file", f"{rel}: image file has no annotation entry")
