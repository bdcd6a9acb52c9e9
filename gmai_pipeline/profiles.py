"""Resource profiles: `resources/<profile>/<resource>.yaml`, chosen by `GMAI_PROFILE` (default `demo`).

A profile is a folder so each resource (llm, gpu_cluster, storage...) keeps its own small file;
`${VAR}` and `${VAR:-default}` in values are filled from the environment at load time, which is
how secrets stay out of the repository and out of asset metadata. `${VAR:?hint}` (the shell's
"required" form) makes the variable mandatory: loading fails with `MissingVariableError`, naming the
variable, the file and the hint, instead of quietly running with an empty value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from gmai_pipeline import safe_yaml
from gmai_pipeline.settings import RESOURCES_DIR

PROFILES = ("demo", "local", "slurm")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}")


class MissingVariableError(ValueError):
    """A `${VAR:?hint}` value whose variable is unset or empty."""

    def __init__(self, variable: str, hint: str, path: Path):
        self.variable, self.hint, self.path = variable, hint, path
        super().__init__(f"{path}: set {variable}" + (f" ({hint})" if hint else ""))


def profile_name() -> str:
    return os.environ.get("GMAI_PROFILE", "demo")


def expand_env(value: Any, path: Path | None = None) -> Any:
    """`${VAR}`, `${VAR:-default}` and `${VAR:?hint}` in every string of `value` filled from the environment now.

    `path` (the file the value came from) is named when a required variable is missing.
    """
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            name, op, arg = m.group(1), m.group(2), m.group(3) or ""
            found = os.environ.get(name, "")
            if op == ":?" and not found:
                raise MissingVariableError(name, arg.strip(), path or Path("(profile)"))
            if op == ":-" and not found:  # the shell's ${VAR:-x}: unset or empty takes the default
                return arg
            return found

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, path) for v in value]
    return value


def env_reference(value: Any) -> tuple[str, str] | None:
    """(variable, default) when `value` is exactly one `${VAR}` or `${VAR:-default}`, else None.

    Such a value can be handed to Dagster as `dg.EnvVar(VAR)`: the run reads the variable when it
    starts, and only its name is stored with the run (what `jobs.py` does for the Celery broker URL).
    """
    if not isinstance(value, str):
        return None
    m = _VAR.fullmatch(value.strip())
    if not m or m.group(2) == ":?":
        return None
    return m.group(1), m.group(3) or ""


def _profile_file(resource: str, profile: str | None, root: Path) -> Path:
    profile = profile or profile_name()
    folder = root / profile
    if not folder.is_dir():
        raise FileNotFoundError(f"resource profile '{profile}' not found: expected the folder {folder}")
    return folder / f"{resource}.yaml"


def raw_resource_config(
    resource: str, profile: str | None = None, root: Path = RESOURCES_DIR
) -> dict[str, Any]:
    """The `resource` section of a profile as written (no expansion); {} if the profile has none."""
    path = _profile_file(resource, profile, root)
    if not path.exists():
        return {}
    data = safe_yaml.load(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def load_resource_config(
    resource: str, profile: str | None = None, root: Path = RESOURCES_DIR
) -> dict[str, Any]:
    """The `resource` section of a profile, with environment variables expanded; {} if the profile has none."""
    return expand_env(raw_resource_config(resource, profile, root), _profile_file(resource, profile, root))
