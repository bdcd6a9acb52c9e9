"""Content-addressed response cache: `llm_cache/<k[:2]>/<k[2:4]>/<key>.json`, one atomic file per request.

Every answer is stored, valid or not, so a re-run replays the same decisions (including the one
retry of an invalid answer, whose prompt differs and so has its own key) and sends nothing.
Transport failures are not stored: a re-run tries them again.
"""

from __future__ import annotations

import json
from pathlib import Path

from gmai_pipeline.generation.requests import Completion
from gmai_pipeline.storage import atomic_write_text


class ResponseCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:4] / f"{key}.json"

    def get(self, key: str) -> Completion | None:
        path = self.path(key)
        try:
            data = json.loads(path.read_bytes())
            if not isinstance(data, dict) or data.get("key") != key:
                return None
            return Completion.from_json(data["response"], cached=True)
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
        ):  # absent, or damaged (e.g. a disk filled up): a miss
            return None

    def put(self, key: str, completion: Completion) -> None:
        atomic_write_text(
            self.path(key), json.dumps({"key": key, "response": completion.to_json()}, ensure_ascii=False)
        )

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists()
