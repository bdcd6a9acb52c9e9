"""Where the pipeline reads and writes: the `storage` resource, bound once for the whole code location.

Assets, checks and sensors take `storage: PipelineStorage` as a parameter instead of reading the
environment; tests pass one in `dg.materialize(..., resources={"storage": ...})`. The profile's
`storage.yaml` (`resources/<profile>/storage.yaml`, chosen by `GMAI_PROFILE`) says where the roots come
from: `${GMAI_OUTPUT_ROOT:-data}` becomes `dg.EnvVar("GMAI_OUTPUT_ROOT")` while the variable is set
(the run reads it when it starts, and only its name is stored with the run), the default otherwise, so
the DESIGN contracts `GMAI_OUTPUT_ROOT`, `GMAI_RAW_ROOT` and `GMAI_BENCHMARK_ROOT` keep working.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from gmai_pipeline.profiles import env_reference, expand_env, profile_name, raw_resource_config
from gmai_pipeline.settings import RESOURCES_DIR
from gmai_pipeline.storage import OutputLayout

# What a profile without storage.yaml gets: the environment contract, no demo inputs.
ENV_CONTRACT: dict[str, Any] = {
    "output_root": "${GMAI_OUTPUT_ROOT:-data}",
    "raw_root": "${GMAI_RAW_ROOT:-}",
    "benchmark_root": "${GMAI_BENCHMARK_ROOT:-}",
}


def bind_env(value: Any, annotation: Any) -> Any:
    """A profile value for a resource field: a text field written exactly `${VAR}` / `${VAR:-default}` becomes
    `dg.EnvVar(VAR)` while VAR is set (read when the run starts, only the name stored), the default while not;
    anything else is expanded now."""
    ref = env_reference(value)
    if ref is None or annotation is not str:
        return expand_env(value)
    name, default = ref
    # Read when the definitions load, never in an asset: dg.EnvVar has no default, so bind it only while set.
    return dg.EnvVar(name) if os.environ.get(name) else default


def _value(field: Any) -> Any:
    """A field's value outside a run too (a resource built by hand keeps an unresolved `dg.EnvVar`)."""
    return field.get_value("") if isinstance(field, dg.EnvVar) else field


class PipelineStorage(dg.ConfigurableResource):
    """The three roots of DESIGN.md "Contracts", and whether the demo fills the ones left empty.

    `demo` is the demo profile's switch (resources/demo/storage.yaml): an empty `raw_root` or
    `benchmark_root` then means "the demo's generated inputs under the output root", and the demo's small
    sizes apply (1 MB shards, short evaluation answers). Elsewhere an empty root still resolves under the
    output root, but nothing is generated there: a missing benchmark folder is reported with its path.
    """

    output_root: str = "data"
    raw_root: str = ""  # empty: <output_root>/demo_raw
    benchmark_root: str = ""  # empty: <output_root>/demo_benchmarks
    demo: bool = False

    @classmethod
    def from_profile(cls, profile: str | None = None, root: Path = RESOURCES_DIR) -> PipelineStorage:
        """`resources/<profile>/storage.yaml` (the environment contract where the profile has none)."""
        raw = raw_resource_config("storage", profile, root) or dict(ENV_CONTRACT)
        unknown = sorted(set(raw) - set(cls.model_fields))
        if unknown:
            where = root / (profile or profile_name()) / "storage.yaml"
            raise ValueError(
                f"{where}: storage has no setting {unknown} (settings: {', '.join(cls.model_fields)})"
            )
        return cls(**{key: bind_env(value, cls.model_fields[key].annotation) for key, value in raw.items()})

    @property
    def output(self) -> Path:
        return Path(_value(self.output_root) or "data").resolve()

    def layout(self) -> OutputLayout:
        return OutputLayout(self.output)

    @property
    def raw(self) -> Path:
        """Dataset `X` lives in `raw / X`."""
        given = _value(self.raw_root)
        return Path(given).resolve() if given else self.output / "demo_raw"

    @property
    def benchmarks(self) -> Path:
        given = _value(self.benchmark_root)
        return Path(given).resolve() if given else self.output / "demo_benchmarks"

    @property
    def demo_raw(self) -> bool:
        """The demo's raw data: the demo profile with no raw root given."""
        return bool(self.demo and not _value(self.raw_root))

    @property
    def demo_benchmarks(self) -> bool:
        return bool(self.demo and not _value(self.benchmark_root))

    def ensure_benchmarks(self, log: Callable[[str], None] | None = None) -> Path:
        """The benchmark root, with the demo's benchmarks written there first when this is the demo's."""
        root = self.benchmarks
        if self.demo_benchmarks and not root.exists():
            from gmai_pipeline.demo import ensure_demo_benchmarks

            ensure_demo_benchmarks(root)
            if log:
                log(f"generated demo benchmarks in {root}")
        return root


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources={"storage": PipelineStorage.from_profile()})
