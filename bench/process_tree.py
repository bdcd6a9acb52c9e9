"""CPU time of a whole process tree, the executor's forkserver and its step processes included.

Dagster's multiprocess executor forks its step processes from a forkserver that outlives the run process
unwaited: their CPU time would be lost to init. A bench that is the subreaper of what it starts adopts them,
and reaping them adds their time to `resource.getrusage(RUSAGE_CHILDREN)`."""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> None:
    """Become the subreaper of every descendant (Linux; elsewhere a no-op)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap() -> None:
    """Wait for every child and adopted descendant (the forkserver exits once its run process is gone)."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
