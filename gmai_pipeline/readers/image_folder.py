"""`image_folder`: `<class>/<image>` or `<split>/<class>/<image>` under `root`.

Input = each file under `root` with one of `extensions`. The class is the first folder below the
split folder (deeper folders, e.g. per patient, are allowed); an image with no class folder above
it is quarantined `missing_label`. Split folders: `split_folders=True` forces the first level to be
the split, `False` forbids it, `None` (default) treats a first-level train/val/test-like folder as
the split whenever the path is deep enough to still hold a class folder.
"""

from __future__ import annotations

from collections.abc import Iterator

from gmai_pipeline.catalog import ImageFolderReader
from gmai_pipeline.readers.base import (
    SPLIT_ALIASES,
    Annotation,
    Event,
    Quarantined,
    ReaderContext,
    image_inputs,
)


def read(ctx: ReaderContext, opts: ImageFolderReader) -> Iterator[Event]:
    root = opts.root.strip("/")
    for rel in ctx.under(root, opts.extensions):
        parts = rel[len(root) + 1 :].split("/") if root else rel.split("/")
        split = None
        if opts.split_folders or (
            opts.split_folders is None and len(parts) >= 3 and parts[0].lower() in SPLIT_ALIASES
        ):
            split, parts = parts[0], parts[1:]
        if len(parts) < 2:
            ctx.claim(rel)
            yield Quarantined(rel, "annotate", "missing_label", f"{rel}: not inside a class folder")
            continue
        yield from image_inputs(ctx, rel, rel, ctx.split_of(rel, split), [Annotation((parts[0],))])
