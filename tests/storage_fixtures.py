"""The `storage` resource a test hands to `dg.materialize`, instead of setting `GMAI_*_ROOT` variables."""

from __future__ import annotations

from pathlib import Path

from gmai_pipeline.defs.resources import PipelineStorage


def storage_at(
    output_root: Path, raw_root: Path | None = None, benchmark_root: Path | None = None, demo: bool = True
) -> PipelineStorage:
    """The roots as the demo profile binds them: an empty raw or benchmark root is the demo's under the output."""
    return PipelineStorage(
        output_root=str(output_root),
        raw_root=str(raw_root) if raw_root else "",
        benchmark_root=str(benchmark_root) if benchmark_root else "",
        demo=demo,
    )
