"""`image_folder`: `<class>/<image>` or `<split>/<class>/<image>` under `root`.

Input = each file under the layout root with one of `extensions` (DICOM included). The class is the
image's own folder, exactly one level down (two with a split folder): the two path templates
`{label}/{file}` and `{split}/{label}/{file}` of the `layout` reader, nothing looser. An image
deeper than that (CheXpert's `train/patient00001/study1/view1_frontal.jpg`) or with no class folder
is quarantined `missing_label`, because guessing would make patient ids or `part_1` a class; such
datasets declare their class with `kind: layout` (a template field or a table). Split folders:
`split_folders=True` forces the first level to be the split, `False` forbids it, `None` (default)
treats a first-level train/val/test-like folder as the split whenever a class folder is below it.
"""

from __future__ import annotations

from collections.abc import Iterator

from gmai_pipeline.catalog import ImageFolderReader
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import (
    SPLIT_ALIASES,
    Annotation,
    Event,
    Quarantined,
    ReaderContext,
    image_inputs,
)
from gmai_pipeline.readers.templates import Template

SPLIT_FOLDER = "(?i:" + "|".join(sorted(SPLIT_ALIASES, key=len, reverse=True)) + ")"


def templates(opts: ImageFolderReader) -> list[Template]:
    if opts.split_folders:
        return [Template("{split}/{label}/{file}")]
    if opts.split_folders is False:
        return [Template("{label}/{file}")]
    return [Template("{split}/{label}/{file}", {"split": SPLIT_FOLDER}), Template("{label}/{file}")]


def read(ctx: ReaderContext, opts: ImageFolderReader) -> Iterator[Event]:
    layouts = templates(opts)
    for rel in ctx.under(ctx.base, opts.extensions):
        inner = ctx.inner(rel)
        fields = next((f for t in layouts if (f := t.match(inner)) is not None), None)
        if fields is None:
            ctx.claim(rel)
            ctx.saw_image(rel)
            shown = ctx.shown(rel)
            yield Quarantined(
                shown,
                "annotate",
                Reason.MISSING_LABEL,
                f"{shown}: not directly inside a class folder (<class>/<image> or <split>/<class>/<image>); "
                "declare where the class is with kind: layout",
            )
            continue
        split = ctx.split_of(rel, fields.get("split"))
        yield from image_inputs(ctx, rel, rel, split, [Annotation((fields["label"],))])
