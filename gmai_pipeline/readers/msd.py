"""`msd`: Medical Segmentation Decathlon / nnU-Net: `dataset.json`, `imagesTr/`, `labelsTr/`.

Input = each case: each `training` entry of `dataset.json` (an image volume and its label
volume), or, without a usable `dataset.json`, each volume in `images_dir` paired with the
same-named volume in `labels_dir` (nnU-Net's `_0000` channel suffix is stripped to find it).
Volumes in `images_dir` that no case uses are `unreferenced_file` inputs. Label volumes no case uses
are not inputs; they are listed among the ignored files (asset metadata). NIfTI is read with
nibabel, MHA/NRRD with SimpleITK, both in canonical RAS+ orientation (`gmai_pipeline.volumes`).

A kept case gives one row per kept component per kept slice, along each configured axis
(SA-Med2D rules in `gmai_pipeline.volumes`); what was filtered is counted in the asset metadata.
Quarantined: unreadable/truncated volume, label shape != image shape (`shape_mismatch`), label
values missing from the label map (`unknown_label`), nothing left after filtering (`empty_mask`).
Label names: the catalog `labels` (keyed by value or by dataset.json name) when given, else
dataset.json `labels` (MSD's `{"1": "liver"}` or nnU-Net v2's `{"liver": 1}`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from gmai_pipeline.catalog import MsdReader
from gmai_pipeline.imaging import ImageError, strip_volume_suffix
from gmai_pipeline.readers.base import (
    Event,
    Kept,
    Quarantined,
    ReaderContext,
    at_boundary,
    join,
    unreferenced,
)
from gmai_pipeline.readers.mask_pairs import mask_rows, value_label
from gmai_pipeline.volumes import (
    NIFTI_SUFFIXES,
    SITK_SUFFIXES,
    iter_slices,
    read_volume,
    volume_to_uint8,
    window_for,
)

VOLUME_EXTENSIONS = NIFTI_SUFFIXES + SITK_SUFFIXES
DETACHED_HEADERS = (".mhd", ".nhdr")


def _label_names(raw) -> dict[int, str]:
    names: dict[int, str] = {}
    for k, v in (raw or {}).items():
        if str(k).lstrip("-").isdigit():
            names[int(k)] = str(v)
        elif isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
            names[int(v)] = str(k)
    return names


def _cases(
    ctx: ReaderContext, opts: MsdReader
) -> tuple[list[tuple[str | None, str, str | None]], dict[int, str], list[Event]]:
    """[(image rel, how it was named, label rel)], label names, and events for a bad dataset.json."""
    events: list[Event] = []
    if opts.dataset_json in ctx.files:
        ctx.claim(opts.dataset_json)
        try:
            meta = json.loads(ctx.read(opts.dataset_json))
            training = meta.get("training")
            if isinstance(training, list) and training:
                cases = []
                for entry in training:
                    image, label = str(entry.get("image", "")), str(entry.get("label", ""))
                    cases.append((join("", image), image, join("", label) if label else None))
                return cases, _label_names(meta.get("labels")), events
            names = _label_names(meta.get("labels"))
        except ImageError as err:
            events.append(Quarantined(opts.dataset_json, "read", err.reason, err.detail))
            names = {}
        except (ValueError, AttributeError, TypeError) as exc:
            events.append(
                Quarantined(
                    opts.dataset_json, "read", "unreadable", f"{opts.dataset_json}: not valid JSON ({exc})"
                )
            )
            names = {}
    else:
        names = {}
    labels_dir = opts.labels_dir.strip("/")
    cases = []
    for rel in ctx.under(opts.images_dir, VOLUME_EXTENSIONS):
        base = strip_volume_suffix(rel.rsplit("/", 1)[-1])
        ext = rel[len(strip_volume_suffix(rel)) :]
        stem = base[:-5] if len(base) > 5 and base[-5] == "_" and base[-4:].isdigit() else base
        cases.append((rel, rel, f"{labels_dir}/{stem}{ext}"))
    return cases, names, events


def load(ctx: ReaderContext, rel: str, is_label: bool = False) -> np.ndarray:
    """A volume read through a verified descriptor (`ReaderContext.open`), with the decode budget."""
    with ctx.open(rel) as f:
        if rel.lower().endswith(DETACHED_HEADERS):  # the header names a data file beside it: by path
            return read_volume(ctx.fs_path(rel), rel, is_label, ctx.store.budget)
        return read_volume(f, rel, is_label, ctx.store.budget)


def read(ctx: ReaderContext, opts: MsdReader) -> Iterator[Event]:
    cases, names, events = _cases(ctx, opts)
    yield from events
    window = window_for(ctx.slug, opts.ct_window)
    for rel, ref, label_rel in cases:
        yield at_boundary(
            rel or ref,
            lambda rel=rel, ref=ref, label_rel=label_rel: _case(
                ctx, opts, rel, ref, label_rel, names, window
            ),
            "volume",
        )
    yield from unreferenced(ctx, opts.images_dir, VOLUME_EXTENSIONS)


def _case(ctx, opts: MsdReader, rel, ref, label_rel, names, window) -> Event:
    if rel is None:
        return Quarantined(ref, "read", "path_refused", f"{ref}: path escapes the dataset folder")
    if rel not in ctx.files:
        return Quarantined(
            rel, "read", "missing_file", f"{rel}: image volume named in {opts.dataset_json} not found"
        )
    ctx.claim(rel)
    if label_rel is None or label_rel not in ctx.files:
        return Quarantined(rel, "read", "missing_file", f"{rel}: label volume {label_rel} not found")
    ctx.claim(label_rel)
    split = ctx.split_of(rel)
    excluded = ctx.exclusion(rel, split)
    if excluded is not None:
        return Quarantined(rel, *excluded)
    try:
        labels = load(ctx, label_rel, is_label=True)
        values = (
            np.flatnonzero(np.bincount(labels.ravel())) if labels.dtype != np.uint32 else np.unique(labels)
        )
        unknown = [int(v) for v in values if v and value_label(ctx, int(v), names) is None]
        if unknown:
            return Quarantined(
                rel,
                "annotate",
                "unknown_label",
                f"{rel}: label values {unknown} in {label_rel} are not in the label map",
            )
        volume = load(ctx, rel)
        if volume.shape != labels.shape:
            return Quarantined(
                rel,
                "read",
                "shape_mismatch",
                f"{rel}: image shape {volume.shape} != label shape {labels.shape} ({label_rel})",
            )
        image8 = volume_to_uint8(volume, window, ctx.counters, rel)
        del volume
    except ImageError as err:
        return Quarantined(rel, "read", err.reason, err.detail)
    stem = strip_volume_suffix(rel)
    rows: list[dict] = []
    for sl in iter_slices(
        image8,
        labels,
        opts.axes,
        opts.min_mask_fraction,
        opts.min_component_pixels,
        opts.slice_step,
        ctx.counters,
    ):
        target = f"{stem}_{sl.axis}{sl.index:04d}.png"
        event = mask_rows(
            ctx,
            rel,
            label_rel,
            split,
            sl.boxes,
            lambda sl=sl, target=target: ctx.store.store_array(sl.image, rel, target),
            value_names=names,
            axis=sl.axis,
            index=sl.index,
        )
        if isinstance(event, Quarantined):  # labels were checked above; only an image write can fail here
            return event
        rows.extend(event.rows)
    if not rows:
        return Quarantined(
            rel,
            "annotate",
            "empty_mask",
            f"{rel}: no slice of {label_rel} has a component above the size limits",
        )
    ctx.counters["volumes_kept"] += 1
    return Kept(rows)
