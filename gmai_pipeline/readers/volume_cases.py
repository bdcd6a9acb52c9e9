"""3D cases shared by `msd` and `layout`: image volume(s) + mask file(s) -> slice rows.

One input is one image file of a case (a 4D file is one input whatever channels it holds; a case
with `_flair` and `_t1ce` files is two inputs sharing the case's masks, which are read once).
Masks: one label map, or several files combined (TotalSegmentator's one binary file per structure:
value i+1 for the i-th structure in name order, a later structure winning where two overlap, as
nnU-Net's conversion does; the overlap is counted). Channels: `channels` picks them by name (the
file's `{channel}` field, dataset.json `modality`/`channel_names`) or index; None takes every channel,
each sliced as its own image and counted (`channels_read`). The modality (and so the intensity
window: CT windowed, anything else percentile-clipped) is per case and channel when declared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from gmai_pipeline.catalog import load_vocabulary
from gmai_pipeline.decode_guard import decoder_failure, is_output_failure
from gmai_pipeline.imaging import ImageError, modality_slug, strip_volume_suffix
from gmai_pipeline.layouts import ValueSource, VolumeOptions
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Event, Kept, Quarantined, ReaderContext, at_boundary
from gmai_pipeline.readers.masks import MaskFile, ignore_values, mask_rows, value_label
from gmai_pipeline.readers.resample import on_mask_grid
from gmai_pipeline.readers.values import resolve
from gmai_pipeline.sample import Sample
from gmai_pipeline.volumes import (
    NIFTI_SUFFIXES,
    SITK_SUFFIXES,
    iter_slices,
    label_values,
    volume_to_uint8,
    window_for,
)

VOLUME_EXTENSIONS = NIFTI_SUFFIXES + SITK_SUFFIXES


@dataclass
class VolumeCase:
    case: str
    images: list[tuple[str, str | None]]  # (image file, its channel name when the file name gives one)
    masks: list[MaskFile]
    split: str | None = None  # None: from the path
    values: dict = field(default_factory=dict)  # fields/columns for modality rules
    ref: str = ""  # how the case was named (dataset.json entry), for messages
    channel_names: dict[int, str] = field(default_factory=dict)  # 4D channel index -> name
    value_names: dict[int, str] = field(default_factory=dict)  # label value -> name (dataset.json)


def selected(channels, index: int, name: str | None) -> bool:
    """Whether a channel (by index and optional name) is among the declared ones (None: all)."""
    if channels is None:
        return True
    for c in channels:
        if isinstance(c, int) and c == index:
            return True
        if isinstance(c, str) and name is not None and c.lower() == name.lower():
            return True
        if isinstance(c, str) and c.isdigit() and int(c) == index:
            return True
    return False


def check_modality(value: str, where: str | Callable[[], str]) -> str:
    allowed = load_vocabulary()["modalities"]
    if value not in allowed:
        where = where() if callable(where) else where
        raise ImageError(
            Reason.UNKNOWN_MODALITY, f"{where}: modality '{value}' is not in assets/vocabulary.yaml"
        )
    return value


def case_events(
    ctx: ReaderContext,
    opts: VolumeOptions,
    case: VolumeCase,
    modality: ValueSource | None = None,
    channels=None,
) -> Iterator[Event]:
    """One event per image file of the case (see the module docstring); cheap checks first. A part of a
    partitioned run makes the cheap checks for every case (claims and byte duplicates depend on them) and
    reads only the volumes of the cases it owns."""
    if ctx.part is not None:
        for rel in (case.ref, *(r for r, _ in case.images)):
            if rel:
                ctx.case_of[rel] = case.case
    todo = []
    for rel, channel in case.images:
        if rel is None:
            yield Quarantined(
                case.ref, "read", Reason.PATH_REFUSED, f"{case.ref}: path escapes the dataset folder"
            )
            continue
        if rel not in ctx.files:
            yield Quarantined(
                rel,
                "read",
                Reason.MISSING_FILE,
                f"{rel}: image volume named by {case.ref or 'the layout'} not found",
            )
            continue
        ctx.claim(rel)
        ctx.saw_image(rel, case.case)
        split = case.split or ctx.split_of(rel)
        excluded = ctx.exclusion(rel, split)
        if excluded is not None:
            yield Quarantined(rel, *excluded)
            continue
        todo.append((rel, channel, split))
    for m in case.masks:
        if m.rel in ctx.files:
            ctx.claim(m.rel)
    if not todo or not ctx.owns(case.case):
        return
    if ctx.part is None:
        yield from _read_case(ctx, opts, case, todo, modality, channels)
        return
    walk, ctx.counters = ctx.counters, ctx.case_counters  # a part's own counts, apart from the walk's
    try:
        yield from _read_case(ctx, opts, case, todo, modality, channels)
    finally:
        ctx.counters = walk


def _read_case(
    ctx: ReaderContext, opts: VolumeOptions, case: VolumeCase, todo: list, modality, channels
) -> Iterator[Event]:
    """The volumes of one case: labels read once, then each image file at the sample boundary."""
    missing = [m.rel for m in case.masks if m.rel not in ctx.files]
    if missing or not case.masks:
        what = ", ".join(missing) if missing else "(none declared or matched)"
        for rel, _, _ in todo:
            yield Quarantined(rel, "read", Reason.MISSING_FILE, f"{rel}: label volume {what} not found")
        return
    frames = getattr(opts, "frames", None)
    if frames is not None:  # 4D image + 4D labels, read at the declared time points
        for rel, _, split in todo:
            yield at_boundary(
                rel,
                lambda rel=rel, split=split: _frames_event(ctx, opts, case, rel, split, frames, modality),
                "volume",
            )
        return
    labels = _labels(ctx, case, opts.ignore_values)
    if isinstance(labels, ImageError):
        step = "annotate" if labels.reason == Reason.UNKNOWN_LABEL else "read"
        for rel, _, _ in todo:
            yield Quarantined(rel, step, labels.reason, labels.detail.replace("{image}", rel))
        return
    volume_labels, names, numeric, mask_name = labels
    for rel, channel, split in todo:  # each image file at the sample boundary
        yield at_boundary(
            rel,
            lambda rel=rel, channel=channel, split=split: _image_event(
                ctx,
                opts,
                case,
                rel,
                channel,
                split,
                volume_labels,
                names,
                numeric,
                mask_name,
                modality,
                channels,
            ),
            "volume",
        )


def _labels(ctx: ReaderContext, case: VolumeCase, ignore: tuple[int, ...] | str = ()):
    """(label volume, value -> name, numeric values?, mask name for messages) or ImageError; read
    once for all image files of the case, at the sample boundary (any failure is an ImageError).
    Values in `ignore` (`reader.ignore_values`) are background before anything looks at them."""
    try:
        if len(case.masks) == 1 and case.masks[0].label is None:
            m = case.masks[0]
            labels = ignore_values(ctx, ctx.volume(m.rel, is_label=True), ignore)
            unknown = [v for v in label_values(labels) if v and value_label(ctx, v, case.value_names) is None]
            if unknown:
                return ImageError(
                    Reason.UNKNOWN_LABEL,
                    f"{{image}}: label values {unknown} in {m.rel} are not in the label map",
                )
            return labels, case.value_names, True, m.rel
        return _combined(ctx, case, ignore)
    except ImageError as err:
        return err
    except Exception as exc:  # noqa: BLE001 - the sample boundary
        if is_output_failure(exc):
            raise
        return decoder_failure(exc, "{image}", "label volume")


def _combined(ctx: ReaderContext, case: VolumeCase, ignore: tuple[int, ...] | str = ()):
    """Several mask files as one label map: binary files by their label, label maps by their values."""
    combined = None
    names: dict[int, str] = {}
    by_label = sorted({m.label for m in case.masks if m.label is not None})
    index = {label: i + 1 for i, label in enumerate(by_label)}
    numeric = not by_label
    for m in sorted(case.masks, key=lambda m: (m.label or "", m.rel)):
        arr = ctx.volume(m.rel, is_label=True)
        arr = ignore_values(ctx, arr, ignore) if m.label is None else arr  # a binary file is its label
        if combined is None:
            combined = np.zeros(arr.shape, np.uint16 if len(by_label) > 254 else np.uint8)
        elif arr.shape != combined.shape:
            raise ImageError(
                Reason.SHAPE_MISMATCH,
                f"{{image}}: mask {m.rel} has shape {arr.shape}, others {combined.shape}",
            )
        fg = arr > 0
        overlap = int(np.count_nonzero(fg & (combined > 0)))
        if overlap:
            ctx.counters["mask_overlap_voxels"] += overlap
        if m.label is not None:
            combined[fg] = index[m.label]
            names[index[m.label]] = m.label
        else:
            combined[fg] = arr[fg]
    if not numeric:
        unknown = [n for n in by_label if value_label(ctx, index[n], names, numeric=False) is None]
        if unknown:
            raise ImageError(
                Reason.UNKNOWN_LABEL, f"{{image}}: structures {unknown} are not in the label map"
            )
    return combined, (names or case.value_names), numeric, f"{len(case.masks)} mask files"


def _image_event(
    ctx, opts, case, rel, channel, split, labels, names, numeric, mask_name, modality, channels
) -> Event:
    spec = getattr(opts, "resample", None)
    try:
        volume = None if spec is None else on_mask_grid(ctx, spec, rel, channel, case.masks[0].rel)
        volume = ctx.volume(rel, channels=True) if volume is None else volume
    except ImageError as err:
        return Quarantined(rel, "read", err.reason, err.detail)
    if volume.shape[:3] != labels.shape:
        return Quarantined(
            rel,
            "read",
            Reason.SHAPE_MISMATCH,
            f"{rel}: image shape {volume.shape[:3]} != label shape {labels.shape} ({mask_name})",
        )
    four_d = volume.shape[3] > 1
    rows: list[Sample] = []
    stem = strip_volume_suffix(rel)
    for c in range(volume.shape[3]):
        name = case.channel_names.get(c) if four_d else channel
        if four_d and not selected(channels, c, name):
            ctx.counters["channels_not_selected"] += 1
            continue
        ctx.counters["channels_read"] += 1
        tag = (name or str(c)) if four_d else None
        try:
            mod = _modality(ctx, modality, {**case.values, "channel": tag or channel or ""}, rel)
            image8 = volume_to_uint8(
                volume[..., c],
                window_for(modality_slug(mod), getattr(opts, "ct_window", None)),
                ctx.counters,
                rel,
            )
        except ImageError as err:
            return Quarantined(rel, "read", err.reason, err.detail)
        event = _slices(ctx, opts, rel, mask_name, split, image8, labels, names, numeric, mod, stem, tag)
        if isinstance(event, Quarantined):
            return event
        rows.extend(event)
    del volume
    if not rows:
        return Quarantined(
            rel,
            "annotate",
            Reason.EMPTY_MASK,
            f"{rel}: no slice of {mask_name} has a component above the size limits",
        )
    ctx.counters["volumes_kept"] += 1
    return Kept(rows)


def _frame_indices(case: VolumeCase, frames, rel: str) -> list[tuple[str, int]] | ImageError:
    """(column name, 0-based frame) for each declared frame column of the case."""
    out = []
    for col in frames.columns:
        cell = str(case.values.get(col) or "").strip()
        try:
            index = int(float(cell)) - frames.base
        except ValueError:
            return ImageError(
                "missing_label",
                f"{rel}: frame column '{col}' is {repr(cell) if cell else 'empty'} for case {case.case}",
            )
        out.append((str(col), index))
    return out


def _frames_event(ctx, opts, case: VolumeCase, rel: str, split: str, frames, modality) -> Event:
    """One 4D image and its 4D label volume at the declared time points (`layouts.Frames`) -> rows."""
    picked = _frame_indices(case, frames, rel)
    if isinstance(picked, ImageError):
        return Quarantined(rel, "annotate", picked.reason, picked.detail)
    if len(case.masks) != 1 or case.masks[0].label is not None:
        return Quarantined(
            rel, "read", "unsupported_mask", f"{rel}: frames need one 4D label volume per image"
        )
    mask_rel = case.masks[0].rel
    labels = ctx.volume(mask_rel, is_label=True, channels=True)
    volume = ctx.volume(rel, channels=True)
    if labels.ndim != 4 or volume.shape != labels.shape:
        return Quarantined(
            rel,
            "read",
            "shape_mismatch",
            f"{rel}: image shape {volume.shape} and label shape {labels.shape} ({mask_rel}) are not one 4D pair",
        )
    unknown = [v for v in label_values(labels) if v and value_label(ctx, v, case.value_names) is None]
    if unknown:
        return Quarantined(
            rel,
            "annotate",
            "unknown_label",
            f"{rel}: label values {unknown} in {mask_rel} are not in the label map",
        )
    late = [(c, i) for c, i in picked if not 0 <= i < volume.shape[3]]
    if late:
        return Quarantined(
            rel,
            "annotate",
            "missing_label",
            f"{rel}: frame {late[0][1] + frames.base} ('{late[0][0]}') is outside its {volume.shape[3]} time points",
        )
    mod = _modality(ctx, modality, case.values, rel)
    stem = strip_volume_suffix(rel)
    rows: list[dict] = []
    for tag, index in picked:
        ctx.counters["frames_read"] += 1
        image8 = volume_to_uint8(
            volume[..., index],
            window_for(modality_slug(mod), getattr(opts, "ct_window", None)),
            ctx.counters,
            rel,
        )
        event = _slices(
            ctx,
            opts,
            rel,
            mask_rel,
            split,
            image8,
            labels[..., index],
            case.value_names,
            True,
            mod,
            stem,
            tag,
        )
        if isinstance(event, Quarantined):
            return event
        rows.extend(event)
    del volume, labels
    if not rows:
        return Quarantined(
            rel,
            "annotate",
            "empty_mask",
            f"{rel}: no slice of {mask_rel} at the declared frames has a component above the size limits",
        )
    ctx.counters["volumes_kept"] += 1
    return Kept(rows)


def _modality(ctx: ReaderContext, spec: ValueSource | None, values: dict, rel: str) -> str:
    if spec is None:
        return ctx.source.modality
    value = resolve(spec, values) or ctx.source.modality
    return check_modality(value, rel)


def _slices(
    ctx, opts, rel, mask_name, split, image8, labels, names, numeric, modality, stem, tag
) -> list[Sample] | Quarantined:
    rows: list[Sample] = []
    store = ctx.store_for(modality)
    id_path = f"{rel}/{tag}" if tag else None
    for sl in iter_slices(
        image8,
        labels,
        opts.axes,
        opts.min_mask_fraction,
        opts.min_component_pixels,
        opts.slice_step,
        ctx.counters,
    ):
        target = f"{stem}{'_' + tag if tag else ''}_{sl.axis}{sl.index:04d}.png"
        event = mask_rows(
            ctx,
            rel,
            mask_name,
            split,
            sl.boxes,
            lambda sl=sl, target=target: store.store_array(sl.image, rel, target),
            value_names=names,
            numeric=numeric,
            axis=sl.axis,
            index=sl.index,
            modality=modality,
            id_path=id_path,
        )
        if isinstance(event, Quarantined):  # labels were checked above; only an image write can fail here
            return event
        rows.extend(event.samples)
    return rows
