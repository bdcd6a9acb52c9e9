"""The catalog report: per entry, what is verified and how; and the catalog's mix next to the paper's Table 3.

`python -m gmai_pipeline.catalog_report` prints it (`--summary` leaves out the per-entry table,
`--fixtures` also runs every fixture, `--out FILE` writes the Markdown); the `catalog_report` asset shows
the same in the UI. Per entry: verified (its catalog section is written and its fixture is declared, and
passes when run), reader kind, licence and where it is stated, whether images may go to an external LLM,
the documented counts (`expect:`), the fixture's state. Totals by task, modality, department and clinical
task are shares of the 219 sources; the paper's Table 3 gives shares of GMAI-VL-5.5M's samples, and only
its largest rows, so the comparison is of direction, not of exact figures.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gmai_pipeline.catalog import SourceDataset, load_catalog
from gmai_pipeline.catalog_records import PENDING_STATE, RECORDS_DIR, Record, load_records
from gmai_pipeline.settings import SOURCES_DIR
from gmai_pipeline.storage import atomic_write_text

# GMAI-VL paper (Li et al., "GMAI-VL & GMAI-VL-5.5M"), Table 3: distribution of GMAI-VL-5.5M, percent of samples.
PAPER_TABLE3: dict[str, dict[str, float]] = {
    "task_type": {"2d_cls": 50.4, "3d_seg": 30.3, "2d_seg": 12.7, "2d_det": 6.6},
    "modality": {
        "CT": 26.8,
        "MR": 24.7,
        "Endoscopy": 12.6,
        "Pathology": 11.2,
        "X-Ray": 6.7,
        "Fundus": 5.3,
        "Ultrasound": 3.0,
    },
    "department": {
        "Orthopedic Surgery": 12.9,
        "General Surgery": 10.3,
        "Gastroenterology": 9.7,
        "Hematology": 9.2,
        "Pulmonary Medicine": 9.0,
        "Sports Medicine": 8.2,
    },
    "clinical_task": {
        "Disease Diagnosis": 40.4,
        "Organ Recognition": 16.0,
        "Bone Recognition": 8.5,
        "Severity Grading": 6.1,
        "Surgeon Action Recognition": 6.0,
    },
}
DIMENSIONS = ("task_type", "modality", "department", "clinical_task")


@dataclass(frozen=True)
class EntryStatus:
    name: str
    task_type: str
    modality: str
    department: str
    verified: bool
    state: str  # "catalog section written", or why not ("catalog section not written yet; converter pending ...")
    reader: str
    licence: str
    licence_source: str
    external_llm: bool
    expect: str
    fixture: str


@dataclass(frozen=True)
class MixRow:
    value: str
    count: int
    share: float  # percent of the entries
    paper: float | None  # percent in the paper's Table 3, None where Table 3 lists no row


@dataclass
class CatalogReport:
    entries: list[EntryStatus]
    mix: dict[str, list[MixRow]]

    @property
    def verified(self) -> int:
        return sum(e.verified for e in self.entries)

    def summary(self) -> dict[str, int]:
        pending = [e for e in self.entries if not e.verified]
        return {
            "entries": len(self.entries),
            "verified": self.verified,
            "catalog section not written yet": len(pending),
            "of which converter pending": sum("converter pending" in e.state for e in pending),
            "of which schema gap": sum("schema gap" in e.state for e in pending),
            "licence known": sum(e.licence != "unknown" for e in self.entries),
            "licence unknown": sum(e.licence == "unknown" for e in self.entries),
            "external LLM allowed": sum(e.external_llm for e in self.entries),
        }

    def mix_markdown(self) -> str:
        parts = [
            "## The mix next to the paper's Table 3",
            "",
            "Shares of the catalog's sources; the paper's column is Table 3 of the GMAI-VL paper (shares of",
            "GMAI-VL-5.5M's samples; it lists only its largest rows, '-' elsewhere).",
        ]
        for dim in DIMENSIONS:
            rows = [
                [r.value, str(r.count), f"{r.share:.1f}%", "-" if r.paper is None else f"{r.paper:.1f}%"]
                for r in self.mix[dim]
            ]
            parts += ["", f"### {dim}", "", md_table([dim, "sources", "share", "paper (Table 3)"], rows)]
        return "\n".join(parts)

    def markdown(self, entries: bool = True) -> str:
        parts = [
            "# Catalog report",
            "",
            md_table(["", "count"], [[k, str(v)] for k, v in self.summary().items()]),
        ]
        parts += ["", self.mix_markdown()]
        if entries:
            head = [
                "entry",
                "verified",
                "reader",
                "licence",
                "licence stated at",
                "external LLM",
                "expect",
                "fixture",
            ]
            rows = [
                [
                    e.name,
                    "yes" if e.verified else f"no: {e.state}",
                    e.reader,
                    e.licence,
                    e.licence_source,
                    "allowed" if e.external_llm else "no",
                    e.expect or "-",
                    e.fixture,
                ]
                for e in self.entries
            ]
            parts += ["", "## Entries", "", md_table(head, rows)]
        return "\n".join(parts) + "\n"


def md_table(head: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _expect(source: SourceDataset) -> str:
    e = source.expect
    if e is None:
        return ""
    counts = ", ".join(
        f"{k} {getattr(e, k)}" for k in ("images", "cases", "classes") if getattr(e, k) is not None
    )
    return counts + (f" (±{e.tolerance:.0%})" if e.tolerance else "")


def _short(text: str | None, limit: int = 90) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def entry_status(
    source: SourceDataset, record: Record | None, fixture_result: list[str] | None = None
) -> EntryStatus:
    """One entry's row; `fixture_result`: the problems of a fixture run ([] = passed), None = not run."""
    if record is None:
        state, fixture, licence_source = "no research record", "none", ""
    elif record.catalog is None:
        state = PENDING_STATE + (f"; {record.blocker}" if record.blocker else "")
        fixture, licence_source = (
            "none",
            record.license.where or "looked: " + "; ".join(record.license.looked or []),
        )
    else:
        state = "catalog section written"
        n = len(record.catalog.fixture.files)
        fixture = f"{n} files, declared"
        if fixture_result is not None:
            fixture = f"{n} files, passes" if not fixture_result else f"{n} files, FAILS: {fixture_result[0]}"
        licence_source = record.license.where or "looked: " + "; ".join(record.license.looked or [])
    verified = record is not None and record.catalog is not None and not fixture_result
    return EntryStatus(
        name=source.name,
        task_type=source.task_type,
        modality=source.modality,
        department=source.department,
        verified=verified,
        state=state,
        reader=source.reader.kind,
        licence=source.license,
        licence_source=_short(licence_source),
        external_llm=source.external_llm_allowed,
        expect=_expect(source),
        fixture=fixture,
    )


def mix(sources: list[SourceDataset]) -> dict[str, list[MixRow]]:
    """Counts and shares per value of each dimension, beside the paper's share where Table 3 has one."""
    out = {}
    for dim in DIMENSIONS:
        counts = Counter(getattr(s, dim) for s in sources)
        paper = PAPER_TABLE3[dim]
        values = sorted(set(counts) | set(paper), key=lambda v: (-counts.get(v, 0), -paper.get(v, 0), v))
        out[dim] = [
            MixRow(v, counts.get(v, 0), 100 * counts.get(v, 0) / max(1, len(sources)), paper.get(v))
            for v in values
        ]
    return out


def run_fixtures(sources: list[SourceDataset], records: dict[str, Record]) -> dict[str, list[str]]:
    """Every declared fixture, built and read in a temporary folder: name -> problems ([] = passed)."""
    from gmai_pipeline.catalog_fixtures import run_fixture

    results = {}
    for s in sources:
        r = records.get(s.name)
        if r is None or r.catalog is None:
            continue
        with tempfile.TemporaryDirectory(prefix=f"fixture-{s.name}-") as tmp:
            try:
                results[s.name] = run_fixture(s, r.catalog.fixture, Path(tmp)).problems
            except Exception as exc:  # a fixture that cannot even be built is a failed fixture, named
                results[s.name] = [f"{type(exc).__name__}: {exc}"]
    return results


def build_report(
    catalog_dir: Path = SOURCES_DIR, records_dir: Path = RECORDS_DIR, with_fixtures: bool = False
) -> CatalogReport:
    sources = load_catalog((catalog_dir,))
    records = load_records(records_dir) if records_dir.is_dir() else {}
    results = run_fixtures(sources, records) if with_fixtures else {}
    entries = [entry_status(s, records.get(s.name), results.get(s.name)) for s in sources]
    return CatalogReport(entries, mix(sources))


def main(argv: list[str] | None = None) -> CatalogReport:
    p = argparse.ArgumentParser(
        prog="python -m gmai_pipeline.catalog_report", description=__doc__.splitlines()[0]
    )
    p.add_argument("--catalog", type=Path, default=SOURCES_DIR)
    p.add_argument("--records", type=Path, default=RECORDS_DIR)
    p.add_argument(
        "--fixtures", action="store_true", help="build and read every declared fixture (about 10 s)"
    )
    p.add_argument("--summary", action="store_true", help="leave out the per-entry table")
    p.add_argument("--out", type=Path, help="also write the Markdown to this file")
    args = p.parse_args(argv)
    report = build_report(args.catalog, args.records, args.fixtures)
    text = report.markdown(entries=not args.summary)
    if args.out:
        atomic_write_text(args.out, report.markdown())
    print(text, end="")
    return report


if __name__ == "__main__":
    main()
