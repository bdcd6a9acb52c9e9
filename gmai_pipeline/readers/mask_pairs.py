"""`mask_pairs`: 2D image + label mask, `images/x.png` with `masks/x<mask_suffix><mask_extension>`.

Input = each image file under `images_dir` (when masks live in the same folder, files ending in
`<mask_suffix><mask_extension>` are masks, not inputs). A kept input gives one row per kept
connected component of each label value (same mask-to-box code as the 3D path,
`gmai_pipeline.volumes.mask_boxes`). Quarantined: no mask file (`missing_file`), mask size !=
image size (`shape_mismatch`), no component left after the area filters (`empty_mask`), a mask
value the label map does not know (`unknown_label`; the raw label is the value as text, e.g. "1"
or "255"), a colour mask whose channels differ (`unsupported_mask`). Masks are read as label
indices: palette PNGs give their indices, grey PNGs their values; `background` / `threshold` declare
other encodings (`layouts.MaskEncoding`). Images may be DICOM (`readers.masks`).
A mask without an image is not an input; it is listed among the ignored files (asset metadata).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath

from gmai_pipeline.catalog import IMAGE_EXTENSIONS_2D, MaskPairsReader
from gmai_pipeline.readers.base import Event, ReaderContext
from gmai_pipeline.readers.masks import MaskFile, seg_image


def read(ctx: ReaderContext, opts: MaskPairsReader) -> Iterator[Event]:
    images_dir, masks_dir = ctx.at(opts.images_dir), ctx.at(opts.masks_dir)
    mask_tail = f"{opts.mask_suffix}{opts.mask_extension}".lower()
    for rel in ctx.under(images_dir, IMAGE_EXTENSIONS_2D):
        if masks_dir == images_dir and opts.mask_suffix and rel.lower().endswith(mask_tail):
            continue
        inner = PurePosixPath(rel[len(images_dir) + 1 :] if images_dir else rel)
        mask_rel = str(
            PurePosixPath(masks_dir) / inner.with_name(inner.stem + opts.mask_suffix + opts.mask_extension)
        )
        ctx.claim(rel)
        ctx.saw_image(rel)
        masks = [MaskFile(mask_rel, encoding=opts)] if mask_rel in ctx.files else []
        yield seg_image(ctx, opts, rel, masks, ctx.split_of(rel), None, mask_rel)
