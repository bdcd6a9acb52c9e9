"""3D volumes assembled from stacks of 2D section files (`images: {path: ..., stack: z}`).

Serial-section EM ships a volume as one picture per section (MitoEM: `im/im0000.png ... im0999.png`,
labels `mito-train-v2/seg0000.tif ...`): the `stack` field numbers the sections, and every file that
agrees on the other fields and on the split is one stack, one input (the split is per section, so
MitoEM's train, val and test ranges become three stacks, as torch-em builds three volumes). A stack
that fits the decode budget is assembled (x, y, z) and sliced along every declared axis like a volume
file; one that does not (4096 x 4096 x 400 sections) is streamed one section at a time, which only the
sections' own plane allows (`axes: [2]`); otherwise it is quarantined `too_large` with that fix. Each
section's masks are read as 2D masks (`masks._mask_2d`), so instance ids under a fixed `label` become
one structure. Sections keep their number in sample ids and file names.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from gmai_pipeline.decode_guard import decoder_failure, is_output_failure
from gmai_pipeline.imaging import ImageError, classify_error, declared_bytes, modality_slug
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Event, Kept, Quarantined, ReaderContext, at_boundary
from gmai_pipeline.readers.masks import MaskFile, _mask_2d, mask_rows
from gmai_pipeline.sample import Sample
from gmai_pipeline.volumes import iter_slices, volume_to_uint8, window_for

# bytes per voxel of an assembled stack: the float32 volume, its uint8 copy, and a uint16 label map
VOXEL_BYTES = 4 + 1 + 2


def stack_events(
    ctx: ReaderContext,
    opts,
    found: list,
    split_of: Callable[[str, dict], str | None],
    masks_of: Callable[[object], list[MaskFile]],
    modality: str,
    unknown_split: Callable[[str], Quarantined],
) -> Iterator[Event]:
    """One event per stack (module docstring). `found`: the matched section files (`layout.Found`)."""
    key_fields = [f for f in opts.images.fields() if f != opts.images.stack]
    stacks: dict[tuple, list[tuple[int, object]]] = defaultdict(list)
    for f in found:
        ctx.claim(f.rel)
        split = split_of(f.rel, f.fields)
        if split is None:
            yield unknown_split(f.rel)
            continue
        key = "/".join(f.fields[k] for k in key_fields) or "stack"
        ctx.saw_image(f.rel, key)
        stacks[(key, split)].append((int(f.fields[opts.images.stack]), f))
    for (key, split), sections in sorted(stacks.items()):
        sections.sort(key=lambda s: s[0])
        ref = sections[0][1].rel
        what = f"stack {key} ({len(sections)} sections {sections[0][0]}-{sections[-1][0]}, {split})"
        masks = [masks_of(f) for _, f in sections]
        for ms in masks:
            for m in ms:
                ctx.claim(m.rel)
        excluded = ctx.exclusion(ref, split, bytes_dedup=False)
        if excluded is not None:
            step, reason, detail = excluded
            yield Quarantined(ref, step, reason, f"{detail} ({what})")
            continue
        yield at_boundary(
            ref, lambda s=sections, m=masks, w=what, p=split: _read(ctx, opts, s, m, p, modality, w), "volume"
        )


def _size(ctx: ReaderContext, rel: str) -> tuple[int, int, int]:
    """(width, height, declared bytes) of a section from its header."""
    try:
        with Image.open(io.BytesIO(ctx.read(rel))) as im:
            return im.width, im.height, declared_bytes(im)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise classify_error(exc, rel) from None


def _section(ctx: ReaderContext, rel: str, size: tuple[int, int]) -> np.ndarray:
    """A section as float32 (x, y) in the volume orientation `volumes.plane` stores back as the picture."""
    data = ctx.read(rel)
    try:
        with Image.open(io.BytesIO(data)) as im:
            ctx.store.budget.check(declared_bytes(im), rel, f"a {im.width}x{im.height} {im.mode} section")
            if im.size != size:
                raise ImageError(
                    Reason.SHAPE_MISMATCH, f"{rel}: section is {im.width}x{im.height}, the stack's {size}"
                )
            arr = np.asarray(im.convert("F") if im.mode not in ("L", "I;16", "I", "F") else im, np.float32)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise classify_error(exc, rel) from None
    return arr[::-1].T


def _labels(ctx: ReaderContext, rel: str, masks: list[MaskFile], size: tuple[int, int]):
    if not masks:
        raise ImageError(Reason.MISSING_FILE, f"{rel}: no mask file for this section")
    labels, names, numeric, desc = _mask_2d(ctx, masks, size, rel, lambda r: r)
    return labels[::-1].T, names, numeric, desc


def _read(ctx, opts, sections, masks, split: str, modality: str, what: str) -> Event:
    ref = sections[0][1].rel
    try:
        width, height, _ = _size(ctx, ref)
        need = width * height * len(sections) * VOXEL_BYTES
        fits = need <= ctx.store.budget.limit
        if not fits and tuple(opts.axes) != (2,):
            return Quarantined(
                ref,
                "read",
                Reason.TOO_LARGE,
                f"{ref}: {what} of {width}x{height} would need {need >> 20} MiB assembled, over the decode "
                "budget; declare axes: [2] to read it section by section",
            )
        window = window_for(modality_slug(modality), getattr(opts, "ct_window", None))
        groups = [sections] if fits else [[s] for s in sections]
        group_masks = [masks] if fits else [[m] for m in masks]
        rows: list[Sample] = []
        for group, gm in zip(groups, group_masks, strict=True):
            event = _group_rows(ctx, opts, ref, group, gm, (width, height), split, modality, window)
            if isinstance(event, Quarantined):
                return event
            rows.extend(event)
    except ImageError as err:
        return Quarantined(ref, "read", err.reason, f"{err.detail} ({what})")
    except Exception as exc:  # noqa: BLE001 - the sample boundary
        if is_output_failure(exc):
            raise
        err = decoder_failure(exc, ref, "section")
        return Quarantined(ref, "read", err.reason, err.detail)
    ctx.counters["stacks_streamed" if not fits else "stacks_assembled"] += 1
    if not rows:
        return Quarantined(
            ref,
            "annotate",
            Reason.EMPTY_MASK,
            f"{ref}: no section of {what} has a component above the size limits",
        )
    ctx.counters["volumes_kept"] += 1
    return Kept(rows)


def _group_rows(ctx, opts, ref, group, masks, size, split, modality, window) -> list[Sample] | Quarantined:
    """Rows of consecutive sections assembled into one (x, y, n) volume."""
    volume = np.stack([_section(ctx, f.rel, size) for _, f in group], axis=-1)
    maps = [_labels(ctx, f.rel, m, size) for (_, f), m in zip(group, masks, strict=True)]
    names, numeric = maps[0][1], maps[0][2]
    labels = np.stack([m[0] for m in maps], axis=-1)
    ctx.counters["sections_read"] += len(group)
    image8 = volume_to_uint8(volume, window, ctx.counters, group[0][1].rel)
    del volume
    rows: list[Sample] = []
    store = ctx.store_for(modality)
    for sl in iter_slices(
        image8,
        labels,
        opts.axes,
        opts.min_mask_fraction,
        opts.min_component_pixels,
        opts.slice_step,
        ctx.counters,
    ):
        # rows name the stack's input (its first section); a z slice keeps its section number and file
        z, f = group[sl.index] if sl.axis == "z" else (sl.index, group[0][1])
        index = z if sl.axis == "z" else sl.index
        target = f"{f.rel.rsplit('.', 1)[0]}_{sl.axis}{index:04d}.png"
        mask_name = maps[sl.index][3] if sl.axis == "z" else f"{len(group)} mask sections"
        event = mask_rows(
            ctx,
            ref,
            mask_name,
            split,
            sl.boxes,
            lambda sl=sl, target=target: store.store_array(sl.image, ref, target),
            value_names=names,
            numeric=numeric,
            axis=sl.axis,
            index=index,
            modality=modality,
        )
        if isinstance(event, Quarantined):
            return event
        rows.extend(event.samples)
    return rows
