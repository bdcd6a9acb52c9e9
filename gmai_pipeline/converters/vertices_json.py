"""`format: vertices_json`: ASAP outlines as BCNB exports them beside each slide (`WSIs/<id>.json`):
`{"positive": [{"vertices": [[x, y], ...]}, ...]}`, one key per annotation group, each a list of
polygons in level-0 pixels (bupt-ai-cz/BALNMP:preprocessing/cut_tumor_regions.py reads
`json['positive'][i]['vertices']`). The group key is each shape's label; a polygon without three
distinct vertices is skipped and counted (`degenerate_polygon`), an entry with no `vertices` list is
`not_an_area`, and a file that is not such a mapping is `unreadable`, naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from gmai_pipeline.converters.polygons import Parsed, _simple
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason


def read_vertices_json(source: Path | bytes, name: str) -> Parsed:
    try:
        data = json.loads(source if isinstance(source, bytes | bytearray) else Path(source).read_bytes())
    except OSError as exc:
        raise ImageError(Reason.MISSING_FILE, f"{name}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise ImageError(Reason.UNREADABLE, f"{name}: not valid JSON ({exc})") from None
    if not isinstance(data, Mapping) or not all(isinstance(v, list) for v in data.values()):
        raise ImageError(
            Reason.UNREADABLE, f"{name}: not a map of group -> list of {{'vertices': [[x, y], ...]}}"
        )
    out = Parsed()
    for group, entries in data.items():
        for i, entry in enumerate(entries, start=1):
            where = f"{name} {group} {i}"
            points = entry.get("vertices") if isinstance(entry, Mapping) else None
            if not isinstance(points, list):
                out.add((Reason.NOT_AN_AREA, f"{where}: no vertices list"))
                continue
            try:
                pts = [[float(p[0]), float(p[1])] for p in points]
            except (TypeError, ValueError, IndexError):
                raise ImageError(Reason.UNREADABLE, f"{where}: vertices are not [x, y] pairs") from None
            out.add(_simple(str(group), pts, where))
    return out
