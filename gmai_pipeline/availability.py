"""Which catalogued datasets a release holds: included, absent, failed or not normalized yet.

Nobody has all 219 datasets, so a dataset whose raw folder is missing is *absent*: listed with its
download URL, never an error. A dataset that is present but cannot be used (its scan or reader
raised, nothing could be kept, a check on its table failed) is *failed*: the step that found it
writes a failure record (`failures/<name>.json`), the dataset is left out of `annotations`, and the
release is built from the others; the record is removed when the dataset next succeeds. Records are
files under the output root, like every table, so the state survives a wiped Dagster instance and
any run (a sensor run for one dataset, a full build) sees the same inventory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from gmai_pipeline.storage import OutputLayout, atomic_write_text

STAGES = ("source", "normalize")
MAX_MESSAGE = 2000  # characters of a failure message kept in the record (a reader's message can be long)


class CatalogEntry(Protocol):
    name: str
    title: str
    url: str | None
    license: str


@dataclass(frozen=True)
class DatasetFailure:
    dataset: str
    stage: str  # "source" (the raw-folder scan) or "normalize" (reader, tables, checks)
    message: str
    at: str  # ISO 8601, UTC

    def line(self) -> str:
        return f"{self.dataset} ({self.stage}, {self.at}): {self.message}"


def failure_path(layout: OutputLayout, dataset: str) -> Path:
    return layout.root / "failures" / f"{dataset}.json"


def record_failure(layout: OutputLayout, dataset: str, stage: str, message: str) -> DatasetFailure:
    """Write (atomically) why `dataset` is not usable; it stays out of the release until it succeeds."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (expected one of {', '.join(STAGES)})")
    failure = DatasetFailure(
        dataset, stage, message[:MAX_MESSAGE], datetime.now(UTC).isoformat(timespec="seconds")
    )
    atomic_write_text(failure_path(layout, dataset), json.dumps(asdict(failure), indent=1) + "\n")
    return failure


def read_failure(layout: OutputLayout, dataset: str) -> DatasetFailure | None:
    path = failure_path(layout, dataset)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # a damaged record still keeps the dataset out, and says so
        return DatasetFailure(dataset, "normalize", f"unreadable failure record {path}: {exc}", "unknown")
    return DatasetFailure(**{k: str(data.get(k, "")) for k in ("dataset", "stage", "message", "at")})


def clear_failure(layout: OutputLayout, dataset: str, stage: str | None = None) -> None:
    """Forget a failure: any (stage None) or only one recorded by `stage`."""
    current = read_failure(layout, dataset)
    if current is not None and (stage is None or current.stage == stage):
        failure_path(layout, dataset).unlink(missing_ok=True)


def raw_folder(raw_root: Path, dataset: str) -> Path:
    return Path(raw_root) / dataset


def is_present(raw_root: Path, dataset: str) -> bool:
    return raw_folder(raw_root, dataset).is_dir()


@dataclass(frozen=True)
class Absent:
    dataset: str
    title: str
    folder: str
    url: str
    license: str


@dataclass
class Inventory:
    """Every catalogued dataset in exactly one of four lists."""

    included: list[str] = field(default_factory=list)  # normalized table present and not failed
    absent: list[Absent] = field(default_factory=list)  # no raw folder (and nothing usable from before)
    failed: list[DatasetFailure] = field(default_factory=list)  # present, but its last attempt failed
    pending: list[str] = field(default_factory=list)  # present, never normalized (e.g. not in this run)
    without_raw: list[str] = field(default_factory=list)  # included from an earlier run; raw folder gone

    def summary(self) -> str:
        return (
            f"{len(self.included)} datasets included, {len(self.absent)} absent, {len(self.failed)} failed, "
            f"{len(self.pending)} present but not normalized yet"
        )


def take_inventory(sources: Iterable[CatalogEntry], raw_root: Path, layout: OutputLayout) -> Inventory:
    """Sort the catalog by what the release can use now; costs a few `stat` calls per dataset.

    A normalized table outlives its raw folder (the images were copied into the output root), so a
    dataset normalized earlier whose download was since removed stays in; a failure record only
    counts while the raw folder is there: removing the folder is how a user gives a failed dataset up,
    and it is then listed as absent.
    """
    inv = Inventory()
    for s in sources:
        present = is_present(raw_root, s.name)
        failure = read_failure(layout, s.name)
        if failure is not None and present:
            inv.failed.append(failure)
        elif failure is None and layout.normalized(s.name).exists():
            inv.included.append(s.name)
            if not present:
                inv.without_raw.append(s.name)
        elif present:
            inv.pending.append(s.name)
        else:
            inv.absent.append(
                Absent(
                    s.name,
                    s.title,
                    str(raw_folder(raw_root, s.name)),
                    s.url or "no URL known (see the catalog entry's provenance)",
                    s.license,
                )
            )
    return inv


def failures_message(failed: list[DatasetFailure], absent: int = 0) -> str:
    """One message naming every failed dataset and why: what a user reads as the run's outcome."""
    head = (
        f"{len(failed)} present dataset{'s' if len(failed) != 1 else ''} failed and "
        f"{'are' if len(failed) != 1 else 'is'} not in this release (the release was built from the others"
        + (
            f"; {absent} absent dataset{'s are' if absent != 1 else ' is'} listed in annotations' metadata, "
            "not failures"
            if absent
            else ""
        )
        + "): "
    )
    return head + "; ".join(f.line() for f in failed)
