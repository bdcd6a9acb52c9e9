"""What every reader shares: the events it yields, its context, and the 2D image-with-annotations flow.

A reader is a generator over one dataset that yields exactly one event per *input*:
`Kept(samples)` when the input became one or more rows (typed `sample.Sample`s), `Quarantined(...)` when it did not
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
import functools
import hashlib
import io
import math
import os
import posixpath
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from gmai_pipeline.catalog import DICOM_EXTENSIONS, IMAGE_EXTENSIONS_2D, METAIMAGE_EXTENSIONS, SourceDataset
from gmai_pipeline.decode_guard import decoder_failure, is_output_failure, open_verified, read_verified
from gmai_pipeline.imaging import ImageError, ImageStore, StoredImage, modality_slug, sample_id
from gmai_pipeline.manifest import PendingNames
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.sample import Sample, as_box
from gmai_pipeline.storage import CHUNK, md5_bytes

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
# Split words inside folder and file names (`ISIC2018_Task1-2_Test_Input`, `case_test_01.png`); nnU-Net's
# `imagesTr` / `imagesTs` / AMOS's `imagesVa` suffixes count in folder names only.
SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
FOLDER_SPLIT_WORDS = {**SPLIT_WORDS, "tr": "train", "ts": "test", "va": "val", "dev": "val"}
SPLIT_PRIORITY = ("test", "val", "train")  # a name that says test anywhere is test: never train on it
WORD_BREAK = re.compile(r"[_\-\s.]+|(?<=[a-z])(?=[A-Z])")
BOX_TOLERANCE = 1.0  # pixels a box may overhang the image (float rounding in exported annotations)
DETACHED_HEADERS = (".mhd", ".nhdr")  # volume headers whose voxels are in a separate data file
# The data file a detached header names: MetaImage `ElementDataFile = x.raw`, NRRD `data file: x.raw`.
DATA_FILE = re.compile(
    r"^\s*(?:ElementDataFile\s*=|data ?file\s*:)\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE
)


def _md5_stream(f) -> str:
    h = hashlib.md5(usedforsecurity=False)
    while chunk := f.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _renamed(err: ImageError, rel: str, shown: str | Callable[[str], str] | None) -> ImageError:
    """`err` (whose detail starts with `rel`) naming the file as `shown` instead."""
    if shown is None:
        return err
    name = shown(rel) if callable(shown) else shown
    detail = name + err.detail[len(rel) :] if err.detail.startswith(rel) else err.detail
    return ImageError(err.reason, detail)


def is_dicom(rel: str | None) -> bool:
    return bool(rel) and rel.lower().endswith(DICOM_EXTENSIONS)  # type: ignore[union-attr]


def split_in_name(rel: str) -> str | None:
    """The split a path's folder or file names state (`_test_`, `Validation`, `imagesTs`), test first."""
    folder, _, leaf = rel.rpartition("/")
    found = set(_folder_splits(folder)) if folder else set()
    found.update(
        SPLIT_WORDS[w.lower()] for w in WORD_BREAK.split(leaf.split(".", 1)[0]) if w.lower() in SPLIT_WORDS
    )
    return next((s for s in SPLIT_PRIORITY if s in found), None)


@functools.lru_cache(maxsize=4096)
def _folder_splits(folder: str) -> frozenset[str]:
    """Splits the folder names of a path state (cached: every file of a folder asks the same)."""
    found: set[str] = set()
    for part in folder.split("/"):
        if part.lower() in SPLIT_ALIASES:
            found.add(SPLIT_ALIASES[part.lower()])
        found.update(
            FOLDER_SPLIT_WORDS[w.lower()] for w in WORD_BREAK.split(part) if w.lower() in FOLDER_SPLIT_WORDS
        )
    return frozenset(found)


@dataclass
class Kept:
    """An input that became samples (one, or several: the boxes of a mask, the slices of a volume)."""

    samples: list[Sample]

    @functools.cached_property
    def rows(self) -> list[dict]:
        """The samples as NORMALIZED_SCHEMA rows: what the driver counts and writes."""
        return [s.to_row() for s in self.samples]


@dataclass
class Quarantined:
    source_path: str
    step: str
    reason: Reason
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
    error: tuple[Reason, str] | None = None  # (reason, detail) found while parsing


@dataclass
class ReaderContext:
    source: SourceDataset
    folder: Path
    files: dict[str, str]  # usable manifest paths (plus unpacked archive members) -> MD5 of the bytes
    store: ImageStore
    executor: Executor | None = None  # set: 2D image stores run on its threads (see normalize.py)
    counters: Counter = field(default_factory=Counter)
    claimed: set[str] = field(default_factory=set)
    first_by_md5: dict[str, str] = field(default_factory=dict)
    real: dict[str, str] = field(default_factory=dict)  # path -> name on disk, where they differ (non-UTF-8)
    pending: PendingNames | None = None  # files whose manifest name needs their MD5 (`manifest.resolve`)
    base: str = ""  # the layout root: wrapper folders + the reader's `root` (see `locate_root`)
    # Archive members: dataset path -> (cache folder, member path inside it); read like raw files (`read`).
    unpacked: dict[str, tuple[Path, str]] = field(default_factory=dict)
    images_seen: set[str] = field(default_factory=set)  # image files found (for `expect: images`)
    cases_seen: set[str] = field(default_factory=set)  # cases found (for `expect: cases`)
    filtered: set[str] = field(default_factory=set)  # files a declared filter or channel choice left out
    ct_window: tuple[float, float] | None = None
    # Partitioned normalization (`partitions:`): (this part, parts). Every part walks the whole layout
    # (cheap: names, claims, splits, byte duplicates) but decodes only the cases it owns (a 3D case in
    # `volume_cases.case_events`, a 2D image in `image_inputs`); `case_of` maps the paths a 3D case's
    # events name to the case, so each event is kept by exactly one part.
    part: tuple[int, int] | None = None
    case_of: dict[str, str] = field(default_factory=dict)
    case_counters: Counter = field(default_factory=Counter)  # counted reading the part's own 3D cases
    raw: Any = None  # `images.raw` (layouts.RawPixels): how headerless image files are decoded
    array: Any = None  # `images.array` (layouts.ArrayImages): how NumPy array files become images
    _stores: dict[str, ImageStore] = field(default_factory=dict)
    _dicom_names: Any = None
    _first_image: dict[str, str] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return modality_slug(self.source.modality)

    # ------------------------------------------------------------ reading files (verified)
    # Readers read a file only through these: never `open(folder / rel)`. A dataset path is either a
    # raw file (beneath the dataset folder, under its real on-disk name) or an archive member in the
    # unpack cache (`readers.archives`); both are opened one path component at a time without
    # following a link, must be regular files, and must have the MD5 recorded for them (the source
    # scan's, or the one recorded while unpacking), else `path_refused` / `missing_file` /
    # `content_changed`. The bytes read are the bytes decoded: one read, one hash.

    @property
    def root(self) -> Path:
        root = self.__dict__.get("_root")
        if root is None:
            root = self.__dict__["_root"] = self.folder.resolve()
        return root

    def _where(self, rel: str) -> tuple[Path, str]:
        """(folder to open beneath, name inside it) of dataset path `rel`."""
        member = self.unpacked.get(rel)
        if member is not None:
            return member
        return self.root, self.real.get(rel, rel)

    def md5(self, rel: str) -> str | None:
        """The MD5 `rel`'s bytes must have (None: not a file of the dataset, or bytes the scan did not
        record). A file whose manifest name depends on its MD5 is hashed now if nothing read it yet."""
        md5 = self.files.get(rel)
        if md5 is None and self.pending is not None:
            return self.pending.hash(rel)
        return md5

    def _pending(self, rel: str) -> bool:
        return self.pending is not None and self.files.get(rel) is None and rel in self.files

    def _settle(self, rel: str, md5: str) -> None:
        """Match a pending file by the MD5 of the bytes just read (`manifest.PendingNames`)."""
        if not self.pending.settle(rel, md5):  # type: ignore[union-attr]
            raise ImageError(
                Reason.CONTENT_CHANGED,
                f"{rel}: not the bytes the source scan recorded under this name (changed or added since "
                "the scan); re-materialize its source asset",
            )

    def fs_path(self, rel: str) -> Path:
        """Where `rel` is on disk, for decoders that only take a path (a detached .mhd header's data
        file); prefer `read` / `open`, which verify what they read."""
        folder, name = self._where(rel)
        return folder / name

    def read(self, rel: str, shown: str | Callable[[str], str] | None = None) -> bytes:
        """The verified bytes of `rel` (see above); an ImageError's detail names the file as `shown`
        (a name, or a function giving it: a DICOM file's pseudonym is only worked out on failure)."""
        folder, name = self._where(rel)
        try:
            if self._pending(rel):  # one read, one hash: the hash that matches it is the one that checks it
                data = read_verified(folder, name, rel, None)
                self._settle(rel, md5_bytes(data))
                return data
            return read_verified(folder, name, rel, self.files.get(rel))
        except ImageError as err:
            raise _renamed(err, rel, shown) from None

    def text(self, rel: str) -> str:
        """`read` decoded as UTF-8 (a BOM allowed); ImageError `unreadable` naming the file otherwise."""
        data = self.read(rel)
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ImageError(
                Reason.UNREADABLE,
                f"{rel}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            ) from None

    def text_file(self, rel: str) -> io.StringIO:
        """`text` as a file object (for csv readers)."""
        return io.StringIO(self.text(rel), newline="")

    @contextlib.contextmanager
    def open(self, rel: str, shown: str | Callable[[str], str] | None = None) -> Iterator[io.BufferedReader]:
        """A verified binary file object of `rel` (hashed in one streaming pass, then rewound), for
        decoders that stream (volumes, workbooks, archives)."""
        folder, name = self._where(rel)
        try:
            pending = self._pending(rel)
            with open_verified(folder, name, rel, None if pending else self.files.get(rel)) as f:
                if pending:
                    self._settle(rel, _md5_stream(f))
                    f.seek(0)
                yield f
        except ImageError as err:
            raise _renamed(err, rel, shown) from None

    def volume(self, rel: str, is_label: bool = False, channels: bool = False):
        """`volumes.read_volume` of `rel` through a verified descriptor, within the decode budget."""
        from gmai_pipeline.volumes import read_volume

        with self.open(rel) as f:
            if rel.lower().endswith(DETACHED_HEADERS):  # the header names a data file beside it: by path
                return read_volume(self.fs_path(rel), rel, is_label, self.store.budget, channels)
            return read_volume(f, rel, is_label, self.store.budget, channels)

    def claim(self, rel: str) -> None:
        self.claimed.add(rel)

    def owns(self, key: str) -> bool:
        """Whether this part reads the case (or the input) `key`; always, when not partitioned."""
        if self.part is None:
            return True
        from gmai_pipeline.partitions import case_partition

        index, count = self.part
        return case_partition(key, count) == index

    def owns_event(self, event: Kept | Quarantined) -> bool:
        """Whether this part reports `event`: by its case when it belongs to one, else by its own path."""
        if self.part is None:
            return True
        path = event.source_path if isinstance(event, Quarantined) else event.rows[0]["source_path"]
        return self.owns(self.case_of.get(path, path))

    def at(self, path: str) -> str:
        """A reader option's path (relative to the layout root) as a dataset path."""
        path = path.strip().strip("/")
        if not self.base:
            return path
        return f"{self.base}/{path}" if path else self.base

    def inner(self, rel: str) -> str:
        """A dataset path relative to the layout root (what templates and split names are matched on)."""
        return rel[len(self.base) + 1 :] if self.base and rel.startswith(self.base + "/") else rel

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

    def saw_image(self, rel: str, case: str | None = None) -> None:
        self.images_seen.add(rel)
        if case is not None:
            self.cases_seen.add(case)

    def duplicate_of(self, rel: str, md5: str | None = None) -> str | None:
        """The first path with the same bytes (MD5) as `rel`, or None if `rel` is the first."""
        md5 = md5 or self.files.get(rel)
        if md5 is not None and md5[:7] != "pixels:" and rel.lower().endswith(DETACHED_HEADERS):
            md5 = self._detached_key(rel, md5)
        if md5 is None:
            return None
        first = self.first_by_md5.setdefault(md5, rel)
        return None if first == rel else first

    def _detached_key(self, rel: str, header_md5: str) -> str | None:
        """A detached header (.mhd, .nhdr) is the same image only if its data file is too: one scanner's
        headers are byte-identical (same size, spacing and data file name, RETOUCH's `oct.mhd` + `oct.raw`),
        so the header's bytes alone would call every volume after the first a duplicate. None (no byte
        dedup) when the data file is not one file of the dataset (a list or pattern of slices)."""
        try:
            text = self.read(rel).decode("latin-1")
        except ImageError:
            return None
        match = DATA_FILE.search(text)
        if match is None:
            return None
        target = match.group(1).strip()
        if target.upper() in ("LIST", "LOCAL") or "%" in target or " " in target:
            return None
        data_rel = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
        data_md5 = self.md5(data_rel)
        return None if data_md5 is None else f"detached:{header_md5}+{data_md5}"

    def label(self, candidates: Iterable[str]) -> tuple[str | None, Reason | None]:
        """(label text, None) or (None, reason): through the catalog map when one is given."""
        cands = [str(c).strip() for c in candidates if c is not None and str(c).strip()]
        if not cands:
            return None, Reason.MISSING_LABEL
        if self.source.labels:
            for c in cands:
                if c in self.source.labels:
                    return self.source.labels[c], None
            return None, Reason.UNKNOWN_LABEL
        return cands[0], None

    def split_of(self, rel: str, explicit: str | None = None) -> str:
        """An explicit split value, else the split the path's names state (`split_in_name`, test first),
        else the catalog's first split."""
        if explicit is not None and str(explicit).strip():
            return SPLIT_ALIASES.get(str(explicit).strip().lower(), str(explicit).strip().lower())
        return split_in_name(self.inner(rel)) or self.source.splits[0]

    def exclusion(
        self,
        rel: str,
        split: str | None = None,
        shown: str | Callable[[], str] | None = None,
        bytes_dedup: bool = True,
    ) -> tuple[str, Reason, str] | None:
        """(step, reason, detail) when `rel` must not become rows: a split the catalog leaves out, or a byte duplicate."""
        split = split if split is not None else self.split_of(rel)
        if split not in self.source.splits:
            name = (shown() if callable(shown) else shown) or rel
            return (
                "read",
                Reason.SPLIT_EXCLUDED,
                f"{name}: split '{split}' not in the catalog's splits {list(self.source.splits)}",
            )
        first = self.duplicate_of(rel) if bytes_dedup else None
        if first is not None:
            return "dedup", Reason.DUPLICATE_IMAGE, f"{rel}: same bytes (MD5) as {first}"
        return None

    def store_for(self, modality: str | None) -> ImageStore:
        """The image store of one modality: a dataset mixing modalities (AMOS CT/MR) files each under its own."""
        slug = modality_slug(modality) if modality else self.slug
        if slug == self.slug:
            return self.store
        if slug not in self._stores:
            s = self.source
            self._stores[slug] = ImageStore(
                self.store.output_root,
                s.dim,
                s.task,
                slug,
                s.name,
                self.store.max_side,
                self.store.source_names,
                self.store.budget,  # one decode budget for the dataset, whatever the modality
            )
        return self._stores[slug]

    @property
    def dicom_names(self):
        """Shown names of this dataset's DICOM files (the `dicom` reader's privacy rules)."""
        if self._dicom_names is None:
            from gmai_pipeline.readers.dicom import Names

            self._dicom_names = Names(self)
        return self._dicom_names

    def namer(self, rel: str) -> Callable[[], str]:
        """`shown(rel)`, worked out once and only if asked: a DICOM file's pseudonym needs its MD5,
        which its verified read computes anyway, so a file that is read is not hashed for its name."""
        cache: list[str] = []

        def name() -> str:
            if not cache:
                cache.append(self.shown(rel))
            return cache[0]

        return name

    def shown(self, rel: str) -> str:
        """How `rel` may appear in tables and messages before its header is read (DICOM: pseudonymous)."""
        return self.dicom_names.unread(rel) if is_dicom(rel) else rel

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
        modality: str | None = None,
    ) -> Sample:
        """The sample of one stored image (or slice, or tile) and one annotation of it."""
        s = self.source
        modality = modality or s.modality
        return Sample(
            sample_id=sample_id(
                s.dim, s.task, modality_slug(modality), s.name, id_path or source_path, axis, index
            ),
            dataset=s.name,
            source_path=source_path,
            slice_axis=axis,
            slice_index=index,
            split=split,
            image=stored.image,
            image_md5=stored.md5,
            width=stored.width,
            height=stored.height,
            modality=modality,
            label=label,
            department=s.department,
            task_type=s.task_type,
            clinical_task=s.clinical_task,
            bbox=as_box(bbox),
        )


def join(folder: str, name: str) -> str | None:
    """`folder/name` normalized to a posix path inside the dataset, None if it escapes it."""
    rel = posixpath.normpath(posixpath.join(folder.strip("/") or ".", name.strip().replace("\\", "/")))
    if rel.startswith("../") or rel == ".." or rel.startswith("/"):
        return None
    return rel


def quarantine_all(
    annotations: list[Annotation], source_path: str, step: str, reason: Reason, detail: str
) -> Iterator[Quarantined]:
    for _ in annotations or [None]:
        yield Quarantined(source_path, step, reason, detail)


def _int_box(ann: Annotation, width: int, height: int) -> tuple[list[float] | None, Reason | None]:
    """Source-pixel box, or a reason: out of the image beyond tolerance, or zero area."""
    x0, y0, x1, y1 = ann.box  # type: ignore[misc]
    if ann.normalized:
        x0, x1 = x0 * width, x1 * width
        y0, y1 = y0 * height, y1 * height
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None, Reason.BOX_OUTSIDE_IMAGE
    if (
        x0 < -BOX_TOLERANCE
        or y0 < -BOX_TOLERANCE
        or x1 > width + BOX_TOLERANCE
        or y1 > height + BOX_TOLERANCE
    ):
        return None, Reason.BOX_OUTSIDE_IMAGE
    x0, y0 = max(0.0, x0), max(0.0, y0)
    x1, y1 = min(float(width), x1), min(float(height), y1)
    if x1 - x0 < 0.5 or y1 - y0 < 0.5:
        return None, Reason.DEGENERATE_BOX
    return [x0, y0, x1, y1], None


def image_inputs(
    ctx: ReaderContext,
    rel: str | None,
    ref: str,
    split: str,
    annotations: list[Annotation],
    modality: str | None = None,
) -> Iterator[Event]:
    """One 2D image file and its annotations -> one event per annotation (or one for an image without any).

    `rel` is the manifest path (None when the reference escapes the dataset folder), `ref` how the
    annotation file named it. Checks run cheapest first, so a bad reference never costs a decode.
    A DICOM file (`.dcm`, `.dicom`) goes through the `dicom` reader's rules: its name is pseudonymous
    until its header shows it is harmless, pixels are deduplicated after decoding, burned-in-text risks
    are quarantined.
    """
    dicom = is_dicom(rel or ref)
    if rel is None:
        shown = ctx.dicom_names.unread(ref, "refused") if dicom else ref
        yield from quarantine_all(
            annotations, shown, "read", Reason.PATH_REFUSED, f"{shown}: path escapes the dataset folder"
        )
        return
    shown = ctx.namer(rel)
    if rel not in ctx.files:
        by = f" by {annotations[0].where}" if annotations and annotations[0].where else ""
        yield from quarantine_all(
            annotations,
            shown(),
            "read",
            Reason.MISSING_FILE,
            f"{shown()}: referenced{by} but not in the dataset folder",
        )
        return
    ctx.claim(rel)
    ctx.saw_image(rel)
    if not annotations:
        yield Quarantined(shown(), "annotate", Reason.NO_ANNOTATION, f"{shown()}: image has no annotation")
        return
    excluded = ctx.exclusion(rel, split, shown, bytes_dedup=not dicom)
    if excluded is not None:
        yield from quarantine_all(annotations, shown(), *excluded)
        return
    pending: list[tuple[Annotation, str]] = []
    for ann in annotations:
        if ann.error is not None:
            yield Quarantined(shown(), "annotate", ann.error[0], ann.error[1])
            continue
        label, reason = ctx.label(ann.raw_labels)
        if label is None:
            raw = "/".join(str(c) for c in ann.raw_labels if str(c).strip()) or "(empty)"
            yield Quarantined(
                shown(),
                "annotate",
                reason or Reason.UNKNOWN_LABEL,
                f"{shown()}: label '{raw}'{' in ' + ann.where if ann.where else ''} is not in the catalog's labels",
            )
            continue
        pending.append((ann, label))
    if not pending:
        return
    if ctx.part is not None:  # partitioned (`partitions:`): the cheap checks above ran in every part
        if dicom:
            raise ValueError(
                f"{ctx.source.name} holds DICOM images, whose names and pixel duplicates depend on every "
                "file read before them: it cannot be normalized in parts; remove `partitions` from its entry"
            )
        if not ctx.owns(rel):
            return
    if dicom:
        yield from _dicom_image(ctx, rel, split, pending, modality)
        return
    job = partial(_store, ctx, ctx.store_for(modality), rel)
    finish = partial(_finish, ctx, rel, split, pending, modality)
    if ctx.executor is None:
        yield from finish(job())
    else:  # read/verify/decode/write on a worker thread; the driver resolves these in order
        yield Deferred(ctx.executor.submit(job), finish)


def at_boundary(name: str | Callable[[], str], work: Callable[[], Event], what: str = "file") -> Event:
    """Run the work of one input; whatever it raises (any decoder, numpy, a bug in a reader) becomes
    that input's quarantine row (`decode_guard.decoder_failure`: file and exception type, never its
    text), so one bad file never ends the dataset and no header value reaches a message. `name` may
    be a function (a DICOM file's pseudonym, worked out only when needed)."""
    try:
        return work()
    except Exception as exc:  # noqa: BLE001 - the sample boundary: nothing but an output failure escapes
        if is_output_failure(exc):
            raise
        shown = name() if callable(name) else name
        err = decoder_failure(exc, shown, what)
        return Quarantined(shown, "read", err.reason, err.detail)


def boundary_events(
    name: str | Callable[[], str], work: Callable[[], Iterable[Event]], count: int = 1, what: str = "file"
) -> list[Event]:
    """`at_boundary` for work that gives several events (a case of several image files): on a failure,
    `count` quarantine rows (one per input the work stood for), so the accounting still holds."""
    try:
        return list(work())
    except Exception as exc:  # noqa: BLE001 - the sample boundary
        if is_output_failure(exc):
            raise
        shown = name() if callable(name) else name
        err = decoder_failure(exc, shown, what)
        return [Quarantined(shown, "read", err.reason, err.detail) for _ in range(count)]


def _store(ctx: ReaderContext, store: ImageStore, rel: str) -> StoredImage | ImageError:
    """Read (verified), decode, store: on a worker thread, so every failure is returned, not raised."""
    try:
        if rel.lower().endswith(METAIMAGE_EXTENSIONS):  # 2D MetaImage: SimpleITK, not Pillow
            from gmai_pipeline.readers.metaimage import store_plane

            return store_plane(ctx, store, rel)
        if ctx.raw is not None or ctx.array is not None:
            from gmai_pipeline.readers.raw_pixels import declared_picture

            decode = declared_picture(ctx, rel, store.budget)
            if decode is not None:
                return store.store_array(decode(), rel)
        return store.store_bytes(ctx.read(rel), rel, md5=ctx.md5(rel))  # read() checked the MD5
    except ImageError as err:
        return err
    except Exception as exc:  # noqa: BLE001 - the sample boundary
        if is_output_failure(exc):
            raise  # the output could not be written: a fault of the run, not of this input
        return decoder_failure(exc, rel, "image")


def _dicom_image(
    ctx: ReaderContext, rel: str, split: str, pending: list[tuple[Annotation, str]], modality
) -> Iterator[Event]:
    """Header checks here, in reader order (names depend on headers seen so far); pixels on a worker."""
    from gmai_pipeline.readers.dicom import read_header, store_pixels

    header = read_header(ctx, rel)
    if isinstance(header, Quarantined):
        yield from (
            Quarantined(header.source_path, header.step, header.reason, header.detail) for _ in pending
        )
        return
    if not ctx.source.labels:  # a folder or cell named after the patient must not become a label
        names = ctx.dicom_names
        for _ in [p for p in pending if names.identifying(p[1])]:
            yield Quarantined(
                header.shown,
                "annotate",
                Reason.MISSING_LABEL,
                f"{header.shown}: its label looks like an identifier; give the catalog entry a labels map",
            )
        pending = [p for p in pending if not names.identifying(p[1])]
        if not pending:
            return
    job = partial(store_pixels, ctx, header, modality or ctx.source.modality)
    finish = partial(_finish_dicom, ctx, split, pending, modality)
    if ctx.executor is None:
        yield from finish(job())
    else:
        yield Deferred(ctx.executor.submit(job), finish)


def _finish_dicom(ctx: ReaderContext, split: str, pending, modality, result) -> list[Event]:
    """Pixel deduplication in reader order, then the rows under the file's final (shown) name."""
    if isinstance(result, Quarantined):
        return [result for _ in pending]
    name, stored, pixel_md5 = result
    first = ctx.duplicate_of(name, md5="pixels:" + pixel_md5)
    if first is not None:
        if ctx._first_image.get(pixel_md5) != stored.image:  # nothing else refers to this copy
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ctx.store.output_root / stored.image)
        return [
            Quarantined(name, "dedup", Reason.DUPLICATE_IMAGE, f"{name}: same decoded pixels as {first}")
            for _ in pending
        ]
    ctx._first_image[pixel_md5] = stored.image
    return _finish(ctx, name, split, pending, modality, stored)


def _finish(
    ctx: ReaderContext,
    rel: str,
    split: str,
    pending: list[tuple[Annotation, str]],
    modality: str | None,
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
                        reason or Reason.BOX_OUTSIDE_IMAGE,
                        f"{rel}: box {[round(v, 2) for v in ann.box]}{' (normalized)' if ann.normalized else ''}"
                        f"{' in ' + ann.where if ann.where else ''} does not fit the "
                        f"{stored.source_width}x{stored.source_height} image",
                    )
                )
                continue
            bbox = stored.scale_box(tuple(box))
        events.append(Kept([ctx.row(rel, split, stored, label, bbox, modality=modality)]))
    return events


def unreferenced(
    ctx: ReaderContext, folder: str, extensions: Iterable[str] = IMAGE_EXTENSIONS_2D
) -> Iterator[Event]:
    """Image files in the reader's image folder that no annotation referenced."""
    for rel in ctx.under(folder, extensions):
        if rel not in ctx.claimed:
            yield unreferenced_file(ctx, rel)


def unreferenced_file(ctx: ReaderContext, rel: str) -> Quarantined:
    ctx.claim(rel)
    ctx.saw_image(rel)
    shown = ctx.shown(rel)
    return Quarantined(
        shown, "read", Reason.UNREFERENCED_FILE, f"{shown}: image file has no annotation entry"
    )
