"""Report to Dagster through Pipes when launched by it, otherwise to plain logging.

Only rank 0 opens the Pipes channel; every rank logs. Metadata values are plain JSON values or
dagster-pipes' {"raw_value", "type"} form (paths, JSON).
"""

from __future__ import annotations

import logging
import sys

from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

log = logging.getLogger("training_jobs")


class Reporter:
    def __init__(self, rank: int = 0):
        logging.basicConfig(
            level=logging.INFO, stream=sys.stdout, format=f"%(asctime)s rank{rank} %(levelname)s %(message)s"
        )
        self.rank = rank
        launched = PipesEnvVarParamsLoader().is_dagster_pipes_process()
        self._pipes_cm = open_dagster_pipes() if rank == 0 and launched else None
        self.pipes = self._pipes_cm.__enter__() if self._pipes_cm else None

    def info(self, msg: str) -> None:
        log.info(msg)
        if self.pipes:
            self.pipes.log.info(msg)

    def warning(self, msg: str) -> None:
        log.warning(msg)
        if self.pipes:
            self.pipes.log.warning(msg)

    def materialize(self, metadata: dict) -> None:
        log.info(
            "final metrics: %s",
            {k: (v["raw_value"] if isinstance(v, dict) else v) for k, v in metadata.items()},
        )
        if self.pipes:
            self.pipes.report_asset_materialization(metadata=metadata)

    def close(self, exc: BaseException | None = None) -> None:
        if self._pipes_cm:
            self._pipes_cm.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
            self._pipes_cm = self.pipes = None
