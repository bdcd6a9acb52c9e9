"""`msd`: Medical Segmentation Decathlon / nnU-Net: `dataset.json`, `imagesTr/`, `labelsTr/`.

Input = each image file of each case (`volume_cases`): the `training` entries of `dataset.json`
(split train), `validation` (val) and `test` (test; without labels they are quarantined, usually as
`split_excluded`), paths resolved relative to the json's own folder; or, without a `training` list,
each volume in `images_dir` paired with the same-named volume in `labels_dir`. nnU-Net's `_0000`
channel suffix is only recognised where the dataset says it uses it (see `MsdReader.channel_suffix`):
AMOS's `amos_0001.nii.gz` pairs with `labelsTr/amos_0001.nii.gz`, not with `amos.nii.gz`. Volumes in
`images_dir` that no case uses are `unreferenced_file` inputs; label volumes no case uses are listed
among the ignored files. NIfTI is read with nibabel, MHA/NRRD with SimpleITK, both in RAS+.

Label names: the catalog `labels` (keyed by value or by dataset.json name) when given, else
dataset.json `labels` (MSD's `{"1": "liver"}` or nnU-Net v2's `{"liver": 1}`). Channel names of 4D
images: dataset.json `modality` / `channel_names`. Modality per case (`modality`, e.g. AMOS ids >= 500
are MR) sets the intensity window: only CT is windowed as CT.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterator

from gmai_pipeline.catalog import MsdReader
from gmai_pipeline.imaging import ImageError, strip_volume_suffix
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Event, Quarantined, ReaderContext, join, unreferenced_file
from gmai_pipeline.readers.templates import all_hold
from gmai_pipeline.readers.volume_cases import VOLUME_EXTENSIONS, MaskFile, VolumeCase, case_events, selected

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
LISTS = (("training", "train"), ("validation", "val"), ("test", "test"))


def _index_names(raw) -> dict[int, str]:
    """{value: name} from MSD's `{"1": "liver"}` or nnU-Net v2's `{"liver": 1}`."""
    names: dict[int, str] = {}
    for k, v in (raw or {}).items():
        if str(k).lstrip("-").isdigit():
            names[int(k)] = str(v)
        elif isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
            names[int(v)] = str(k)
    return names


def _ext(rel: str) -> str:
    return rel[len(strip_volume_suffix(rel)) :]


def _case_values(ctx: ReaderContext, rel: str, case: str) -> dict[str, str]:
    name = rel.rsplit("/", 1)[-1]
    return {"case": case, "file": name, "stem": strip_volume_suffix(name), "path": ctx.inner(rel)}


class _Builder:
    """Cases of one dataset, with the filters and channel choice applied (`filtered` are not inputs)."""

    def __init__(self, ctx: ReaderContext, opts: MsdReader, channel_names: dict[int, str], value_names):
        self.ctx, self.opts = ctx, opts
        self.channel_names, self.value_names = channel_names, value_names
        self.cases: list[VolumeCase] = []
        self.filtered: set[str] = set()

    def add(
        self, case: str, images: list[tuple[str, str | None]], label: str | None, split, ref: str
    ) -> None:
        values = _case_values(self.ctx, images[0][0] if images and images[0][0] else ref, case)
        if all_hold(self.opts.filters, values) is not None:
            self.ctx.counters["cases_filtered"] += 1
            self.filtered.update(r for r, _ in images if r)
            return
        kept = []
        for i, (rel, channel) in enumerate(images):
            index = int(channel) if channel is not None and channel.isdigit() else i
            name = self.channel_names.get(index, channel)
            if channel is not None and not selected(self.opts.channels, index, name):
                self.ctx.counters["channels_not_selected"] += 1
                self.filtered.add(rel)
                continue
            kept.append((rel, name))
        if not kept:
            return
        masks = [MaskFile(label)] if label else []
        self.cases.append(
            VolumeCase(case, kept, masks, split, values, ref, self.channel_names, self.value_names)
        )


def _suffixed(ctx: ReaderContext, image_rel: str) -> list[tuple[str, str]]:
    """nnU-Net channel files `<case>_0000<ext>`, `<case>_0001<ext>` ... of an image named without suffix."""
    base, ext = strip_volume_suffix(image_rel), _ext(image_rel)
    found = []
    for c in range(1000):
        rel = f"{base}_{c:04d}{ext}"
        if rel not in ctx.files:
            break
        found.append((rel, f"{c:04d}"))
    return found


def _from_lists(ctx: ReaderContext, b: _Builder, meta: dict, json_dir: str, opts: MsdReader) -> bool:
    """Cases from dataset.json's training/validation/test lists; False when it has no training list."""
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        return False
    for key, split in LISTS:
        for entry in meta.get(key) or []:
            image = str(entry.get("image", "") if isinstance(entry, dict) else entry)
            label = str(entry.get("label", "") or "") if isinstance(entry, dict) else ""
            rel = join(json_dir, image)
            label_rel = join(json_dir, label) if label else None
            case = strip_volume_suffix(image.rsplit("/", 1)[-1])
            images: list[tuple[str, str | None]] = [(rel, None)] if rel else []
            if rel and rel not in ctx.files and opts.channel_suffix is not False:
                images = _suffixed(ctx, rel) or images  # nnU-Net v1: the list omits the suffix
            if rel is None:
                b.cases.append(VolumeCase(case, [(None, None)], [], split, ref=image))  # type: ignore[list-item]
                continue
            b.add(case, images, label_rel, split, image)
    return True


def _from_folders(
    ctx: ReaderContext, b: _Builder, opts: MsdReader, suffix: bool, file_ending: str | None
) -> None:
    """Cases by pairing `images_dir` with `labels_dir` (channel files grouped when `suffix`)."""
    images_dir, labels_dir = ctx.at(opts.images_dir), ctx.at(opts.labels_dir)
    groups: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    exts: dict[str, str] = {}
    for rel in ctx.under(images_dir, (file_ending,) if file_ending else VOLUME_EXTENSIONS):
        stem, ext = strip_volume_suffix(rel), _ext(rel)
        m = CHANNEL_SUFFIX.match(stem.rsplit("/", 1)[-1]) if suffix else None
        key = stem[: len(stem) - 5] if m else stem
        groups[key].append((rel, m.group("channel") if m else None))
        exts[key] = ext
    for key in sorted(groups):
        inner = key[len(images_dir) + 1 :] if images_dir else key
        label = posixpath.join(labels_dir, inner + exts[key]) if labels_dir else inner + exts[key]
        b.add(inner.rsplit("/", 1)[-1], sorted(groups[key]), label, None, inner)


def read(ctx: ReaderContext, opts: MsdReader) -> Iterator[Event]:
    json_rel = ctx.at(opts.dataset_json)
    meta: dict = {}
    if json_rel in ctx.files:
        ctx.claim(json_rel)
        try:
            meta = json.loads(ctx.read(json_rel))
            if not isinstance(meta, dict):
                raise TypeError("not a JSON object")
        except ImageError as err:  # changed or swapped since the scan
            yield Quarantined(json_rel, "read", err.reason, err.detail)
            meta = {}
        except (ValueError, TypeError) as exc:
            yield Quarantined(json_rel, "read", Reason.UNREADABLE, f"{json_rel}: not valid JSON ({exc})")
            meta = {}
    v2 = "file_ending" in meta or "channel_names" in meta
    channel_names = _index_names(meta.get("channel_names") or meta.get("modality"))
    b = _Builder(ctx, opts, channel_names, _index_names(meta.get("labels")))
    json_dir = posixpath.dirname(json_rel)
    if not _from_lists(ctx, b, meta, json_dir, opts):
        suffix = opts.channel_suffix if opts.channel_suffix is not None else v2
        _from_folders(ctx, b, opts, suffix, meta.get("file_ending") if v2 else None)
    for case in b.cases:
        yield from case_events(ctx, opts, case, opts.modality, opts.channels)
    for rel in ctx.under(ctx.at(opts.images_dir), VOLUME_EXTENSIONS):
        if rel not in ctx.claimed and rel not in b.filtered:
            yield unreferenced_file(ctx, rel)
