"""XML files as table rows (`reader.table.xml`): labels that live in per-record XML documents.

Open-i's Indiana University chest X-ray collection ships one report per XML file
(`NLMCXR_reports.tgz` -> `ecgen-radiology/<n>.xml`) whose `MeSH/major` terms are the findings and whose
`parentImage` elements (attribute `id`, e.g. `CXR1_1_IM-0001-3001`) name the images of that report
(`<id>.png` in `NLMCXR_png.tgz`); mlmed/torchxrayvision:torchxrayvision/datasets.py `Openi_Dataset`
reads them exactly so. A declaration turns each document into rows like a CSV's:

    table:
      file: "ecgen-radiology/*.xml"                 # one document per report
      image: image_id
      xml: {rows: ".//parentImage", columns: {image_id: "@id", findings: {path: ".//MeSH/major", head: "/"}}}
    label: {column: findings, delimiter: "|"}       # one input per finding, as NIH's `A|B`

A column is `@name` (an attribute of the row element) or an ElementPath searched from the document
root (every match's text, joined with `joiner`); `head` keeps each text up to its first separator
(MeSH `Cardiomegaly/borderline` -> `Cardiomegaly`: the descriptor without its qualifiers). Parsing is
the standard library's on the verified bytes; a DTD or entity declaration is refused, so a crafted
file cannot expand or reach outside.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from pydantic import Field

from gmai_pipeline.converters._masks import Options
from gmai_pipeline.quarantine import Reason


class XmlColumn(Options):
    path: str = Field(min_length=1)  # `@attr` of the row element, or an ElementPath from the document root
    head: str | None = None  # keep each text up to this separator (MeSH qualifiers after '/')


class XmlRows(Options):
    rows: str = Field(min_length=1)  # ElementPath of the row elements, from the document root
    columns: dict[str, str | XmlColumn] = Field(min_length=1)
    joiner: str = "|"  # between the texts of a path column with several matches

    def column(self, name: str) -> XmlColumn:
        c = self.columns[name]
        return c if isinstance(c, XmlColumn) else XmlColumn(path=c)


def rows(data: bytes, rel: str, spec: XmlRows, wanted) -> list[tuple[int, dict]]:
    """(row number, wanted column -> text) per row element; raises `tables.TableError` when unusable."""
    from gmai_pipeline.readers.tables import TableError

    missing = [c for c in wanted if c not in spec.columns]
    if missing:
        raise TableError(
            Reason.UNREADABLE,
            f"{rel}: column(s) {missing} not among table.xml.columns {sorted(spec.columns)}",
        )
    head = data[:4096].upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in data.upper():
        raise TableError(Reason.UNREADABLE, f"{rel}: XML with a DTD or entities is refused")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise TableError(Reason.UNREADABLE, f"{rel}: not well-formed XML ({exc})") from None
    shared = {}
    for name in wanted:
        col = spec.column(name)
        if not col.path.startswith("@"):
            texts = [(e.text or "").strip() for e in root.findall(col.path)]
            if col.head:
                texts = [t.split(col.head, 1)[0].strip() for t in texts]
            shared[name] = spec.joiner.join(dict.fromkeys(t for t in texts if t))
    out = []
    for i, element in enumerate(root.findall(spec.rows), start=1):
        row = dict(shared)
        for name in wanted:
            col = spec.column(name)
            if col.path.startswith("@"):
                row[name] = (element.get(col.path[1:]) or "").strip()
        out.append((i, row))
    return out
