"""`dicom` with `labels_json`: labels from an MD.ai annotation export, joined on a UID in each file's header.

MIDRC-RICORD-1c keeps its study-level labels (Typical / Indeterminate / Atypical appearance, Negative for
pneumonia) in the MD.ai export beside the TCIA tree (RICORD-1a's is
`MIDRC-RICORD-1a_annotations_labelgroup_all_2020-Dec-8.json`: neuro-ml/amid:amid/midrc.py). The export's
layout (mdai/mdai-client-py:mdai/utils/common_utils.py `json_to_dataframe`): `datasets[].annotations[]`,
each with `labelId` and the `StudyInstanceUID` / `SeriesInstanceUID` / `SOPInstanceUID` it is on, and
`labelGroups[].labels[]` giving each `id` its `name`.

Privacy: the join key is a DICOM header value. It is read from the file's header inside the reader,
looked up in the export's index and dropped; it is never stored, logged, counted by value or put in a
message, and the row keeps the file's pseudonymous name (`dicom.Names`), as every DICOM row does. The
export's own UIDs stay in the in-memory index of this read only.

What one input is: one DICOM file (as the `dicom` reader). Only annotations whose label name is a key of
the catalog's labels count (others, such as RICORD's airspace-disease grading group, are another
question); several annotators' labels of one study are decided by majority, a tie is
`conflicting_labels`; a study without any counted label is `missing_label`.
"""

from __future__ import annotations

import fnmatch
import json
from collections import Counter, defaultdict
from collections.abc import Iterator

from gmai_pipeline.catalog import DicomJsonLabels, DicomReader
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Event, Quarantined, ReaderContext, at_boundary


def _file_of(ctx: ReaderContext, spec: DicomJsonLabels) -> str | Quarantined:
    pattern = ctx.at(spec.file)
    hits = sorted(p for p in ctx.files if fnmatch.fnmatchcase(p, pattern))
    if len(hits) != 1:
        found = "no file" if not hits else f"{len(hits)} files"
        detail = (
            f"{pattern}: {found} in the dataset folder match the annotation export's name; name exactly one"
        )
        return Quarantined(pattern, "read", Reason.MISSING_FILE, detail)
    return hits[0]


def load(ctx: ReaderContext, spec: DicomJsonLabels) -> tuple[str, dict[str, list[str]]] | Quarantined:
    """(the export's path, {UID: label names of its annotations}), or why it cannot be used."""
    rel = _file_of(ctx, spec)
    if isinstance(rel, Quarantined):
        return rel
    ctx.claim(rel)
    try:
        data = json.loads(ctx.read(rel))
        names = {
            str(lab["id"]): str(lab.get("name") or "").strip()
            for group in data.get("labelGroups") or []
            for lab in group.get("labels") or []
        }
        index: dict[str, list[str]] = defaultdict(list)
        for dataset in data.get("datasets") or []:
            for ann in dataset.get("annotations") or []:
                key, name = ann.get(spec.key), names.get(str(ann.get("labelId")))
                if key and name:
                    index[str(key)].append(name)
    except ImageError as err:
        return Quarantined(rel, "read", err.reason, err.detail)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        detail = f"{rel}: not an MD.ai annotation export (datasets, labelGroups) ({type(exc).__name__})"
        return Quarantined(rel, "read", Reason.UNREADABLE, detail)
    ctx.counters["annotation_export_labels"] += sum(len(v) for v in index.values())
    return rel, dict(index)


def inputs(ctx: ReaderContext, opts: DicomReader, names, dicom_like: list[str]) -> Iterator[Event]:
    """One event per DICOM file; every file quarantined `missing_file` when the export cannot be read."""
    from gmai_pipeline.readers import dicom

    spec: DicomJsonLabels = opts.labels_json  # type: ignore[assignment]
    loaded = load(ctx, spec)
    if isinstance(loaded, Quarantined):
        yield loaded
        for rel in dicom_like:
            ctx.claim(rel)
            ctx.saw_image(rel)
            shown = names.unread(rel)
            yield Quarantined(
                shown, "annotate", Reason.MISSING_LABEL, f"{shown}: its annotation export cannot be read"
            )
        return
    json_rel, index = loaded
    for rel in dicom_like:
        ctx.claim(rel)
        ctx.saw_image(rel)
        yield at_boundary(
            lambda rel=rel: names.unread(rel),
            lambda rel=rel: _file(ctx, spec, dicom, rel, json_rel, index),
            "DICOM file",
        )


def _file(ctx: ReaderContext, spec: DicomJsonLabels, dicom, rel: str, json_rel: str, index) -> Event:
    names = ctx.dicom_names
    split = ctx.split_of(rel)
    if split not in ctx.source.splits:
        shown = names.unread(rel)
        return Quarantined(
            shown, "read", Reason.SPLIT_EXCLUDED, f"{shown}: split '{split}' not in the catalog's splits"
        )
    header = dicom.read_header(ctx, rel)
    if isinstance(header, Quarantined):
        return header
    with dicom.quiet():  # the key: read, looked up, gone (pydicom's warnings can quote values)
        found = index.get(str(getattr(header.ds, spec.key, "") or ""), ())
    counted = [n for n in found if not ctx.source.labels or n in ctx.source.labels]
    if not counted:
        what = "no annotation" if not found else "no annotation with a label of the catalog's labels"
        return Quarantined(
            header.shown, "annotate", Reason.MISSING_LABEL, f"{header.shown}: {what} in {json_rel}"
        )
    top = Counter(counted).most_common()
    if len(top) > 1 and top[0][1] == top[1][1]:
        return Quarantined(
            header.shown,
            "annotate",
            Reason.CONFLICTING_LABELS,
            f"{header.shown}: its annotators in {json_rel} disagree ({', '.join(sorted(n for n, _ in top))})",
        )
    label, reason = ctx.label([top[0][0]])
    if label is None:
        detail = f"{header.shown}: label in {json_rel} is not in the catalog's labels"
        return Quarantined(header.shown, "annotate", reason or Reason.UNKNOWN_LABEL, detail)
    return dicom.kept_row(ctx, header, split, label)
