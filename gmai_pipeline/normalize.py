"""Normalize one dataset: run its reader over the manifest, store images, write the two tables.

`normalize_source` streams: the reader yields one event per input, rows go to Parquet in batches
(`storage.write_parquet`) and quarantine rows to their own Parquet writer, so memory holds one
image (or one volume) and one batch at a time, plus per-file bookkeeping (paths, MD5s).

Accounting: inputs seen = inputs kept + inputs quarantined, per dataset. A refused
manifest row (a link leading outside, a pipe, an unreadable file) is an input quarantined
`path_refused`; a manifest row whose file is gone is one quarantined `missing_file`; hidden files
and aliases are listed with the ignored files; what else is an input is defined per reader
(`gmai_pipeline/readers/__init__.py`). The manifest is matched to the folder as it is now
(`manifest.resolve`), and every read is checked against the manifest's MD5 (`ReaderContext.read`). `verify_outputs` recounts
both sides from the files written, which is what the asset check reports.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from gmai_pipeline.catalog import SourceDataset, load_vocabulary
from gmai_pipeline.imaging import DEFAULT_MAX_SIDE, ImageStore, modality_slug
from gmai_pipeline.manifest import Resolved, ShownName, resolve
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers import READERS, describe
from gmai_pipeline.readers.base import Deferred, Event, Kept, Quarantined, ReaderContext, is_dicom
from gmai_pipeline.readers.dicom import manifest_namer, quiet
from gmai_pipeline.readers.prepare import prepare
from gmai_pipeline.schemas import NORMALIZED_SCHEMA, QUARANTINE_SCHEMA
from gmai_pipeline.storage import OutputLayout, atomic_path, sweep_stale_temps, write_parquet

PREVIEW_IMAGES = 6
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
WINDOW = 32  # images in flight at most
PREVIEW_TILE = 256


@dataclass
class PreviewItem:
    image: str
    boxes: list[tuple[str, list[int] | None]]


@dataclass
class NormalizeReport:
    dataset: str
    inputs: int = 0
    kept: int = 0
    quarantined: int = 0
    rows: int = 0
    by_reason: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    counters: Counter = field(default_factory=Counter)
    ignored: list[str] = field(default_factory=list)
    seconds: float = 0.0
    preview: list[PreviewItem] = field(default_factory=list)
    folder: str = ""  # the raw folder read
    layout_root: str = ""  # where the layout was found inside it ('' = the folder itself)
    expected_layout: str = ""  # what the reader looks for, in one line
    url: str = ""  # where the dataset is downloaded
    files: int = 0  # usable files in the manifest
    archives_left: list[str] = field(default_factory=list)  # archives in the folder, not unpacked
    images: int = 0  # image files found (for `expect: images`)
    cases: int = 0  # cases found (for `expect: cases`)
    # A part (`partitions:`): the share of `counters` its own cases gave; the rest, the walk over the
    # whole layout, is the same in every part, so the join counts it once.
    case_counters: Counter = field(default_factory=Counter)

    def failure_message(self) -> str | None:
        """Why the whole dataset is unusable (nothing found, or nothing kept), or None."""
        if not self.inputs:
            return self._nothing_found()
        if self.kept:
            return None
        top = ", ".join(f"{r} ({n})" for r, n in self.by_reason.most_common(3))
        return (
            f"{self.dataset}: none of {self.inputs} inputs could be normalized; most common reasons: {top}. "
            f"See quarantine/{self.dataset}.parquet for each file. Read {self._where()} expecting "
            f"{self.expected_layout}; download from {self.url or '(no URL in the catalog)'}."
        )

    def _where(self) -> str:
        return f"{self.folder}/{self.layout_root}" if self.layout_root else self.folder

    def _nothing_found(self) -> str:
        where = self._where()
        found = (
            f"The folder holds {self.files} files, none of them an input (e.g. {', '.join(self.ignored[:5])})."
            if self.files
            else "The folder is empty."
        )
        packed = ""
        if self.archives_left:
            names = ", ".join(self.archives_left[:5])
            packed = (
                f" Archives still packed: {names}: unpack them where they are, or add "
                f"`unpack: [{self.archives_left[0].rsplit('/', 1)[-1]}]` to the reader to unpack into a cache."
            )
        return (
            f"{self.dataset}: found no inputs in {where}: expected {self.expected_layout}. {found}{packed} "
            f"Download from {self.url or '(no URL in the catalog; see its provenance)'} and unpack it into "
            f"{self.folder}, or fix the reader block of the catalog entry."
        )


def preview_path(layout: OutputLayout, dataset: str) -> Path:
    return layout.root / "previews" / f"{dataset}.png"


def shown_names(source: SourceDataset) -> ShownName | None:
    """How the manifest names this dataset's files: identifying names of DICOM files are masked there
    too (every file of a `dicom` dataset; the DICOM images of any other 2D reader, and of DICOM series)."""
    if source.reader.kind == "dicom":
        return manifest_namer(source)
    series = (
        getattr(source.reader, "convert", None) is not None and source.reader.convert.kind == "dicom_series"
    )
    return manifest_namer(source, only_dicom=True) if source.dim == "2d" or series else None


def _events(
    source: SourceDataset, ctx: ReaderContext, resolved: Resolved, prepared: list[Event]
) -> Iterator[Event]:
    for r in resolved.refused:  # manifest names: already masked for DICOM datasets
        yield Quarantined(r["path"], "manifest", Reason.PATH_REFUSED, f"{r['path']}: {r['refused']}")
    for name, why in resolved.swapped.items():
        yield Quarantined(
            name, "read", Reason.PATH_REFUSED, f"{name}: a regular file at the source scan; now {why}"
        )
    yield from _vanished(source, resolved.vanished)
    yield from prepared
    yield from READERS[source.reader.kind](ctx, source.reader)
    if resolved.pending is not None:  # names matched as files were hashed: what is left is gone
        yield from _vanished(source, resolved.pending.vanished())


def _vanished(source: SourceDataset, names: list[str]) -> Iterator[Quarantined]:
    for name in names:
        yield Quarantined(
            name,
            "manifest",
            Reason.MISSING_FILE,
            f"{name}: listed by the source scan but no longer in the dataset folder; re-materialize "
            f"source/{source.name}",
        )


class _Reservoir:
    """A fixed-size uniform sample of images for the preview (bounded memory, deterministic)."""

    def __init__(self, k: int, seed: str):
        self.k, self.seen, self.items = k, 0, []
        self.rng = random.Random(seed)

    def offer(self, rows: list[dict]) -> None:
        by_image: dict[str, PreviewItem] = {}
        for row in rows:
            item = by_image.setdefault(row["image"], PreviewItem(row["image"], []))
            item.boxes.append((row["label"], row["bbox"]))
        for item in by_image.values():
            self.seen += 1
            if len(self.items) < self.k:
                self.items.append(item)
            else:
                j = self.rng.randrange(self.seen)
                if j < self.k:
                    self.items[j] = item


def normalize_source(
    source: SourceDataset,
    raw_folder: Path,
    manifest_rows: list[dict],
    output_root: Path,
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    batch_rows: int = 2048,
    progress: Callable[[NormalizeReport], None] | None = None,
    progress_every: float = 5.0,
    workers: int = DEFAULT_WORKERS,
    part: int | None = None,
) -> NormalizeReport:
    """Run the source's reader; write normalized/<name>.parquet and quarantine/<name>.parquet.

    With `part` (0 <= part < `source.partitions`), only the cases of that part are read and the
    tables go to `OutputLayout.normalized_part` / `quarantine_part`; `normalize_parts.join_parts`
    makes the dataset's tables from all parts, identical in rows, images and quarantine to one run.

    With `workers` > 1, 2D images are read, validated, hashed and written on that many threads
    (Pillow, hashlib and file I/O release the GIL) while the reader walks ahead; their events are
    resolved strictly in reader order through a window of at most `WINDOW` images, so the output
    is identical to a sequential run and memory stays bounded.
    """
    layout = OutputLayout(output_root)
    if part is not None and not 0 <= part < source.partitions:
        raise ValueError(f"{source.name}: part {part} is not one of its {source.partitions} partitions")
    table = layout.normalized(source.name) if part is None else layout.normalized_part(source.name, part)
    qtable = layout.quarantine(source.name) if part is None else layout.quarantine_part(source.name, part)
    shown = shown_names(source)
    matched = resolve(Path(raw_folder), manifest_rows, shown)
    files = matched.files
    store = ImageStore(
        layout.root, source.dim, source.task, modality_slug(source.modality), source.name, max_side, files
    )
    stale = sweep_stale_temps(layout.root / store.prefix)
    executor = (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="normalize") if workers > 1 else None
    )
    ctx = ReaderContext(
        source=source,
        folder=Path(raw_folder),
        files=files,
        store=store,
        executor=executor,
        real=matched.real,
        pending=matched.pending,
        part=None if part is None else (part, source.partitions),
    )
    if stale:
        ctx.counters["stale_temp_files_removed"] += stale
    if matched.new:
        ctx.counters["files_added_since_scan"] += matched.new
    report = NormalizeReport(
        source.name,
        folder=str(raw_folder),
        expected_layout=describe(source.reader),
        url=source.url,
        files=len(files),
    )
    cache = layout.root / "unpacked" / source.name
    with _unpack_lock(cache) if part is not None else contextlib.nullcontext():  # parts share the cache
        prepared, report.archives_left = prepare(ctx, source.reader, cache)
    report.layout_root = ctx.base
    reservoir = _Reservoir(PREVIEW_IMAGES, source.name)
    started = last = time.monotonic()
    has_dicom = source.reader.kind == "dicom" or any(is_dicom(p) for p in files)

    with (
        quiet()
        if has_dicom
        else contextlib.nullcontext(),  # pydicom can quote header values: keep logs clean
        atomic_path(qtable) as qtmp,
        pq.ParquetWriter(qtmp, QUARANTINE_SCHEMA) as qwriter,
    ):
        qbuf: list[dict] = []

        def flush_quarantine() -> None:
            if qbuf:
                qwriter.write_table(pa.Table.from_pylist(qbuf, schema=QUARANTINE_SCHEMA))
                qbuf.clear()

        def resolved() -> Iterator[Kept | Quarantined]:
            """Reader events in order, Deferred ones replaced by their results."""
            window: deque = deque()
            for event in _events(source, ctx, matched, prepared):
                window.append(event)
                while len(window) > WINDOW or (window and not isinstance(window[0], Deferred)):
                    head = window.popleft()
                    yield from head.finish(head.future.result()) if isinstance(head, Deferred) else (head,)
            while window:
                head = window.popleft()
                yield from head.finish(head.future.result()) if isinstance(head, Deferred) else (head,)

        def batches() -> Iterator[list[dict]]:
            nonlocal last
            buf: list[dict] = []
            for event in resolved():
                if not ctx.owns_event(event):  # another part's case
                    continue
                report.inputs += 1
                if isinstance(event, Kept):
                    report.kept += 1
                    report.rows += len(event.rows)
                    report.labels.update(r["label"] for r in event.rows)
                    reservoir.offer(event.rows)
                    buf.extend(event.rows)
                    if len(buf) >= batch_rows:
                        yield buf
                        buf = []
                else:
                    report.quarantined += 1
                    report.by_reason[event.reason] += 1
                    qbuf.append(
                        {
                            "dataset": source.name,
                            "source_path": event.source_path,
                            "step": event.step,
                            "reason": event.reason,
                            "detail": event.detail,
                        }
                    )
                    if len(qbuf) >= batch_rows:
                        flush_quarantine()
                now = time.monotonic()
                if progress is not None and now - last >= progress_every:
                    last = now
                    report.seconds = now - started
                    progress(report)
            yield buf

        try:
            write_parquet(table, batches(), NORMALIZED_SCHEMA)
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
        flush_quarantine()

    report.counters.update(ctx.counters)
    report.counters.update(ctx.case_counters)
    report.case_counters = Counter(ctx.case_counters)
    unclaimed = sorted(set(files) - ctx.claimed)
    if shown is not None:  # real names of a DICOM dataset stay in memory: report the manifest's
        unclaimed = [shown(p, lambda p=p: ctx.md5(p)) for p in unclaimed]
    report.ignored = sorted(unclaimed + matched.skipped)
    report.images, report.cases = len(ctx.images_seen), len(ctx.cases_seen)
    report.preview = reservoir.items
    report.seconds = time.monotonic() - started
    return report


@contextlib.contextmanager
def _unpack_lock(cache: Path) -> Iterator[None]:
    """Parts of one dataset, running at once, unpack its archives one at a time: the first unpacks, the
    others find the cache made (`readers.archives.unpack`) instead of replacing it while it is read."""
    import fcntl

    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / f".{cache.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- checks on the written files


@dataclass
class CheckOutcome:
    passed: bool
    description: str
    metadata: dict


# Label plausibility (classification): what a wrong layout produces instead of classes.
COLLAPSE_SHARE = 0.99  # the largest label holds at least this share of rows ...
COLLAPSE_MIN_ROWS = 20  # ... of at least this many rows
ID_LIKE_SHARE = 0.5  # more distinct labels than this share of rows: every image its own "class"
ID_LIKE_MIN_LABELS = 10
ID_LIKE = re.compile(
    r"^(?:[A-Za-z]{0,12}[_\- ]?\d{3,}(?:[_\-]\d+)*|[0-9a-f]{16,}|[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})$",
    re.I,
)
FOLDER_WORDS = {
    "images", "image", "imgs", "img", "data", "dataset", "datasets", "files", "all", "raw", "input", "inputs",
    "output", "samples", "train", "training", "test", "testing", "val", "valid", "validation", "png", "jpg",
    "jpeg", "dicom", "dcm", "photos", "pictures", "download", "downloads", "archive", "unzipped",
}  # fmt: skip
FOLDER_LIKE = re.compile(
    r"(?:^|[_\- ])(?:part|batch|fold|set|split|chunk|folder|dir|disk|volume|images?)[_\- ]?\d+$", re.I
)


def label_findings(counts: Counter, task: str, expected_classes: int | None = None) -> list[str]:
    """Why a classification set's labels cannot be right (empty when they look like classes)."""
    if task != "cls" or not counts:
        return []
    rows = sum(counts.values())
    findings = []
    top, top_n = counts.most_common(1)[0]
    if rows >= COLLAPSE_MIN_ROWS and top_n / rows >= COLLAPSE_SHARE and expected_classes != 1:
        findings.append(f"label collapse: '{top}' holds {top_n} of {rows} rows ({top_n / rows:.1%})")
    if len(counts) >= ID_LIKE_MIN_LABELS and len(counts) / rows > ID_LIKE_SHARE:
        findings.append(f"{len(counts)} distinct labels for {rows} rows: labels look like ids, not classes")
    ids = sorted(str(lab) for lab in counts if ID_LIKE.match(str(lab)) and not str(lab).isdigit())
    if ids:
        findings.append(f"labels look like ids: {', '.join(ids[:5])}")
    codes = sorted(str(lab) for lab in counts if str(lab).strip().isdigit())
    if codes:
        findings.append(
            f"labels are bare numbers (codes, not names; add a labels map): {', '.join(codes[:5])}"
        )
    folders = sorted(
        str(lab) for lab in counts if str(lab).lower() in FOLDER_WORDS or FOLDER_LIKE.search(str(lab))
    )
    if folders:
        findings.append(f"labels look like folder names: {', '.join(folders[:5])}")
    return findings


def expected_counts(source: SourceDataset, report: NormalizeReport, classes: int) -> tuple[bool, list[dict]]:
    """(all within tolerance, rows of quantity / expected / found) for the catalog's `expect:` block."""
    exp = source.expect
    rows = []
    for name, found in (("images", report.images), ("cases", report.cases), ("classes", classes)):
        want = getattr(exp, name) if exp else None
        if want is None:
            continue
        ok = abs(found - want) <= exp.tolerance * want  # type: ignore[union-attr]
        rows.append({"quantity": name, "expected": want, "found": found, "ok": ok})
    return all(r["ok"] for r in rows), rows


def _bbox_violations(batch: pa.RecordBatch, task: str) -> np.ndarray:
    """Indices of rows whose bbox is outside its image (or present on a classification row, absent otherwise)."""
    bbox = batch.column("bbox")
    widths = batch.column("width").to_numpy(zero_copy_only=False)
    heights = batch.column("height").to_numpy(zero_copy_only=False)
    is_null = bbox.is_null().to_numpy(zero_copy_only=False)
    filled = pc.fill_null(bbox, pa.scalar([0, 0, 0, 0], type=bbox.type))
    x0, y0, x1, y1 = filled.flatten().to_numpy(zero_copy_only=False).reshape(-1, 4).T
    inside = (x0 >= 0) & (x0 < x1) & (x1 <= widths) & (y0 >= 0) & (y0 < y1) & (y1 <= heights)
    wrong = ~is_null if task == "cls" else is_null | ~inside  # classification rows carry no box
    return np.flatnonzero(wrong)


def verify_outputs(
    output_root: Path, source: SourceDataset, report: NormalizeReport
) -> dict[str, CheckOutcome]:
    """Re-read what was written, batch by batch, and check it; the asset checks report these verbatim."""
    layout = OutputLayout(output_root)
    columns = ["sample_id", "source_path", "width", "height", "bbox", "label", "modality", "department"]
    quarantined = pq.read_metadata(layout.quarantine(source.name)).num_rows
    vocab = load_vocabulary()
    bad_boxes, examples, empty, rows = 0, [], 0, 0
    label_counts: Counter = Counter()
    modalities: set = set()
    departments: set = set()
    seg_inputs: set[str] = set()
    for batch in pq.ParquetFile(layout.normalized(source.name)).iter_batches(
        batch_size=65536, columns=columns
    ):
        rows += batch.num_rows
        idx = _bbox_violations(batch, source.task)
        bad_boxes += len(idx)
        sids = batch.column("sample_id")
        examples.extend(str(sids[int(i)]) for i in idx[: max(0, 5 - len(examples))])
        labels = pc.utf8_trim_whitespace(batch.column("label").fill_null(""))
        empty += int(pc.sum(pc.equal(labels, "")).as_py() or 0)
        counts = pc.value_counts(labels)
        label_counts.update(
            dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True))
        )
        modalities.update(pc.unique(batch.column("modality")).to_pylist())
        departments.update(pc.unique(batch.column("department")).to_pylist())
        if source.task == "seg":
            seg_inputs.update(pc.unique(batch.column("source_path")).to_pylist())

    bad_mod = sorted(modalities - set(vocab["modalities"]), key=str)
    bad_dep = sorted(departments - set(vocab["departments"]), key=str)
    # Recount kept inputs from the table: cls/det rows are one input each; seg inputs are files/cases.
    kept = rows if source.task in ("cls", "det") else len(seg_inputs)
    findings = label_findings(label_counts, source.task, source.expect.classes if source.expect else None)
    outcomes = {
        "boxes_inside_image": CheckOutcome(
            bad_boxes == 0,
            "every bbox satisfies 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height (null exactly for classification)",
            {"violations": bad_boxes, "examples": ", ".join(examples) or "none"},
        ),
        "labels_non_empty": CheckOutcome(
            empty == 0, "every row has a non-empty label", {"empty_labels": empty}
        ),
        "modality_department_in_vocabulary": CheckOutcome(
            not bad_mod and not bad_dep,
            "modality and department of every row are in assets/vocabulary.yaml",
            {
                "unknown_modalities": ", ".join(map(str, bad_mod)) or "none",
                "unknown_departments": ", ".join(map(str, bad_dep)) or "none",
            },
        ),
        "inputs_accounted": CheckOutcome(
            report.inputs == kept + quarantined,
            "inputs seen = inputs kept (recounted from normalized/) + rows in quarantine/",
            {"inputs": report.inputs, "kept_in_table": kept, "quarantined_in_table": quarantined},
        ),
        "labels_plausible": CheckOutcome(
            not findings,
            "classification labels look like classes: no label holds nearly every row, none looks like an id, "
            "a bare code or a folder name",
            {"findings": "; ".join(findings) or "none", "distinct_labels": len(label_counts)},
        ),
    }
    if source.expect is not None:
        ok, table = expected_counts(source, report, len(label_counts))
        outcomes["expected_counts"] = CheckOutcome(
            ok,
            f"counts match the documented ones (expect:, tolerance {source.expect.tolerance:.0%}"
            f"{'; ' + source.expect.source if source.expect.source else ''})",
            {r["quantity"]: f"expected {r['expected']}, found {r['found']}" for r in table},
        )
    return outcomes


# ---------------------------------------------------------------- preview montage


def render_preview(
    output_root: Path, items: list[PreviewItem], tile: int = PREVIEW_TILE
) -> Image.Image | None:
    """A montage of sample images with their boxes and labels drawn (a visual check for the UI)."""
    if not items:
        return None
    cols = min(3, len(items))
    rows = (len(items) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * tile, rows * tile), "black")
    for i, item in enumerate(items):
        with Image.open(Path(output_root) / item.image) as im:
            im = im.convert("RGB")
            scale = tile / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
        draw = ImageDraw.Draw(im)
        for j, (label, box) in enumerate(item.boxes[:12]):
            colour = ("#ff4040", "#40ff40", "#4080ff", "#ffd040", "#ff40ff", "#40ffff")[j % 6]
            if box is not None:
                draw.rectangle([round(v * scale) for v in box], outline=colour, width=2)
                draw.text((round(box[0] * scale) + 2, round(box[1] * scale) + 1), label[:24], fill=colour)
            else:
                draw.text((4, 4 + 12 * j), label[:32], fill=colour)
        canvas.paste(im, ((i % cols) * tile, (i // cols) * tile))
    return canvas


def preview_markdown(img: Image.Image, max_side: int = 480) -> str:
    """A small JPEG as a data URL inside Markdown, so the Dagster UI shows it inline."""
    import base64

    thumb = img.copy()
    thumb.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=80)
    return f"![preview](data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()})"
