"""OmniMedVQA, original release: `QA_information/{Open-access,Restricted-access}/<set>.json` + `Images/`.

Each JSON file is a list of questions (`question_id`, `question_type`, `question`, `gt_answer`,
`option_A`..`option_D`, `image_path` relative to the release root, `modality_type` or
`modality`). Several questions may show one image: each image is yielded once, under the
`question_id` of its first question. The Restricted-access part is only present for those who
obtained it; whatever is there is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from gmai_pipeline.benchmarks.base import BenchmarkImage, read_image_file

BENCHMARK = "OmniMedVQA"
ACCESS_DIRS = ("Open-access", "Restricted-access")


def detect(folder: Path) -> bool:
    return (folder / "QA_information").is_dir()


def read(folder: Path, problems: list[str]) -> Iterator[BenchmarkImage]:
    seen: set[str] = set()
    for access in ACCESS_DIRS:
        for qa_file in sorted((folder / "QA_information" / access).glob("*.json")):
            try:
                items = json.loads(qa_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                problems.append(f"{BENCHMARK}: {qa_file}: unreadable JSON ({exc})")
                continue
            if not isinstance(items, list):
                problems.append(f"{BENCHMARK}: {qa_file}: expected a list of questions")
                continue
            for item in items:
                image_path = str(item.get("image_path", "")).strip().lstrip("./")
                if not image_path:
                    problems.append(
                        f"{BENCHMARK}: {qa_file}: question {item.get('question_id')} has no image_path"
                    )
                    continue
                if image_path in seen:
                    continue
                seen.add(image_path)
                got = read_image_file(folder / image_path, BENCHMARK, str(item.get("question_id")), problems)
                if got is not None:
                    yield got
