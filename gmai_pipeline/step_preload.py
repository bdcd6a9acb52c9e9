"""Preloaded by the multiprocess executor's forkserver (`definitions.multiprocess_executor`): the code location
is built once per run here, and every step process forked from the server starts with it."""

from gmai_pipeline import definitions

definitions.prebuild()
