"""Domain modules import without Dagster: the package's `__init__` loads no definitions.

A pure function (`gmai_pipeline.hashing`) used from a notebook, a training node or a bench script must not
pay for building the code location, nor fail because `GMAI_EXECUTOR` or `GMAI_PROFILE` is set wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOMAIN_MODULES = (
    "gmai_pipeline",
    "gmai_pipeline.hashing",
    "gmai_pipeline.settings",
    "gmai_pipeline.catalog",
    "gmai_pipeline.storage",
    "gmai_pipeline.readers",
)


def _loaded_dagster_modules(modules: tuple[str, ...], env: dict[str, str]) -> list[str]:
    code = (
        f"import json, sys; import {', '.join(modules)}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0].startswith('dagster'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_domain_modules_load_no_dagster_module() -> None:
    # A wrong executor or profile is a definitions problem: it must not break the import of a pure function.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GMAI_EXECUTOR": "no-such-executor", "GMAI_PROFILE": "nope"}
    loaded = _loaded_dagster_modules(DOMAIN_MODULES, env)
    assert not loaded, f"importing {', '.join(DOMAIN_MODULES)} loaded {loaded[:10]}"


def test_the_code_location_does_load_dagster() -> None:
    """The check above can fail: the definitions module does pull Dagster in."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert "dagster" in _loaded_dagster_modules(("gmai_pipeline.definitions",), env)
