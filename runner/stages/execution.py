"""The run's executor, built from the ``executor`` settings before any data are read and closed when the run ends."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from runner.config import RunSettings
from runner.execution import Executor


@contextlib.contextmanager
def run_executor(settings: RunSettings) -> Iterator[Executor | None]:
    """The executor of the voxel loop and the permutations for one run.

    ``executor=local``: None, so each stage keeps its own local threads (``n_jobs``, a method's ``n_jobs``).
    ``executor=dask``: a :class:`runner.execution.dask.DaskExecutor`, connected (or its cluster started) here, so
    that an unreachable scheduler is reported before the maps are loaded; closed on exit, also on an error or an
    interruption.
    """
    if settings.executor.engine != "dask":
        yield None
        return
    from runner.execution.dask import open_executor

    with open_executor(settings.executor, settings.n_jobs) as executor:
        yield executor
