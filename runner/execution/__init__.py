"""Executors: the one way the runner runs independent tasks (voxel chunks, blocks of permutations) on workers.

``base`` holds the protocol and :class:`Task`; ``local`` the thread executor used today; ``progress`` reports work
done as tasks finish. A distributed executor (Dask, issue 13) implements the same protocol.
"""

from runner.execution.base import Executor, Progress, Task, run_all
from runner.execution.local import LocalExecutor, blas_limit, resolve_workers
from runner.execution.progress import ProgressReporter

__all__ = ["Executor", "LocalExecutor", "Progress", "ProgressReporter", "Task", "blas_limit", "resolve_workers",
           "run_all"]
