"""SLAKE test split (original release `Slake1.0/`): `test.json` + `imgs/<xmlabN>/source.jpg`.

`test.json` lists questions (`qid`, `img_id`, `img_name` like `xmlab0/source.jpg`, `question`,
`answer`, `q_lang` en/zh). Both languages show the same images; each image is yielded once under
the `qid` of its first question. The folder may be the `Slake1.0/` folder itself or hold it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from gmai_pipeline.benchmarks.base import BenchmarkImage, first_existing, read_image_file

BENCHMARK = "SLAKE"


def read(folder: Path, problems: list[str]) -> Iterator[BenchmarkImage]:
    test_json = first_existing(folder / "test.json", folder / "Slake1.0" / "test.json")
    if test_json is None:
        return
    root = test_json.parent
    try:
        items = json.loads(test_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{BENCHMARK}: {test_json}: unreadable JSON ({exc})")
        return
    seen: set[str] = set()
    for item in items:
        name = str(item.get("img_name", "")).strip()
        if not name or name in seen:
            continue
        seen.add(name)
        got = read_image_file(root / "imgs" / name, BENCHMARK, str(item.get("qid", name)), problems)
        if got is not None:
            yield got
