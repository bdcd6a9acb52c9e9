"""`yolo`: `images/<...>/x.jpg` with `labels/<...>/x.txt` lines `class cx cy w h` (normalized).

Input = each non-empty line of each label file (a line with more than 5 numbers is a polygon;
its box is the polygon's extent), plus each image without a label file or with an empty one
(`no_annotation`: YOLO's background images), plus each label file with no image (`missing_file`,
one input per file). Class names come from `classes_file` (one per line); label candidates are the
class name, then the index. Without a classes file the index is the raw label. Split folders
(`images/train/...`) set the split.
"""

from __future__ import annotations

from collections.abc import Iterator

from gmai_pipeline.catalog import IMAGE_EXTENSIONS_2D, YoloReader
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Annotation, Event, Quarantined, ReaderContext, image_inputs


def _line(line: str, classes: list[str], where: str) -> Annotation:
    parts = line.split()
    try:
        idx = int(float(parts[0]))
        coords = [float(v) for v in parts[1:]]
    except (ValueError, IndexError):
        return Annotation(
            (), where=where, error=(Reason.UNREADABLE, f"{where}: not 'class cx cy w h' ({line[:60]!r})")
        )
    if len(coords) < 4 or (len(coords) > 4 and len(coords) % 2):
        return Annotation(
            (), where=where, error=(Reason.UNREADABLE, f"{where}: expected 4 box numbers or polygon pairs")
        )
    if classes and not 0 <= idx < len(classes):
        return Annotation(
            (),
            where=where,
            error=(
                Reason.UNKNOWN_LABEL,
                f"{where}: class {idx} not in the classes file ({len(classes)} classes)",
            ),
        )
    names = (classes[idx], str(idx)) if classes else (str(idx),)
    if len(coords) == 4:
        cx, cy, w, h = coords
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    else:
        xs, ys = coords[0::2], coords[1::2]
        box = (min(xs), min(ys), max(xs), max(ys))
    return Annotation(names, box, normalized=True, where=where)


def _label_path(labels_dir: str, inner: str) -> str:
    """`labels_dir/inner` with its suffix replaced by `.txt` (`PurePath.with_suffix`, as string
    operations: this runs for every image)."""
    leaf = inner.rsplit("/", 1)[-1]
    i = leaf.rfind(".")
    base = inner[: len(inner) - len(leaf) + i] if 0 < i < len(leaf) - 1 else inner
    return f"{labels_dir}/{base}.txt" if labels_dir else f"{base}.txt"


def read(ctx: ReaderContext, opts: YoloReader) -> Iterator[Event]:
    classes: list[str] = []
    classes_file = ctx.at(opts.classes_file)
    if classes_file in ctx.files:
        ctx.claim(classes_file)
        try:
            text = ctx.read(classes_file).decode("utf-8", errors="replace")
        except ImageError:
            text = ""  # every label line then names an unknown class index, and says so
        classes = [c.strip() for c in text.splitlines() if c.strip()]
    images_dir, labels_dir = ctx.at(opts.images_dir), ctx.at(opts.labels_dir)
    for rel in ctx.under(images_dir, IMAGE_EXTENSIONS_2D):
        inner = rel[len(images_dir) + 1 :] if images_dir else rel
        label_rel = _label_path(labels_dir, inner)
        anns: list[Annotation] = []
        if label_rel in ctx.files:
            ctx.claim(label_rel)
            try:
                text = ctx.read(label_rel).decode("utf-8", errors="replace")
                anns = [
                    _line(ln, classes, f"{label_rel} line {i}")
                    for i, ln in enumerate(text.splitlines(), 1)
                    if ln.strip()
                ]
            except ImageError as err:
                anns = [Annotation((), where=label_rel, error=(err.reason, err.detail))]
        yield from image_inputs(ctx, rel, rel, ctx.split_of(rel), anns)
    for label_rel in ctx.under(labels_dir, (".txt",)):
        if label_rel not in ctx.claimed and label_rel != classes_file:
            ctx.claim(label_rel)
            yield Quarantined(
                label_rel,
                "read",
                Reason.MISSING_FILE,
                f"{label_rel}: label file has no image in {images_dir}/",
            )
