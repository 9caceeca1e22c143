"""The local executor: tasks on threads of this process (numpy, BLAS and numba release the GIL)."""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from runner.errors import RunnerError
from runner.execution.base import Progress, Task

DEFAULT_BLAS_THREADS = 1  # per worker: parallelism comes from workers, and results do not depend on their number


def resolve_workers(n_jobs: int) -> int:
    """Number of workers for an ``n_jobs`` setting: positive as given, negative counts back from all CPUs
    (-1: every CPU, -2: all but one)."""
    n_jobs = int(n_jobs)
    if n_jobs == 0:
        raise RunnerError("n_jobs must be a positive number of workers, or negative to count back from all CPUs")
    cpus = os.cpu_count() or 1
    return max(1, cpus + 1 + n_jobs) if n_jobs < 0 else n_jobs


class LocalExecutor:
    """Tasks on ``n_workers`` threads of this process, results in task order.

    Parameters
    ----------
    n_workers : int
        Threads running tasks at the same time (1: in the calling thread, no pool).
    blas_threads : int or None
        BLAS threads of each worker while tasks run (threadpoolctl). The default, 1, whatever ``n_workers``: BLAS
        rounds differently with another number of threads, so fixing it keeps results independent of the number
        of workers, and several workers each running a multi-threaded BLAS would oversubscribe the cores. None
        leaves BLAS alone (for tasks that do not call it, such as decoding images). The limit is process-wide
        while :meth:`map` runs.
    lookahead : int, optional
        Tasks in flight at most (default 2 x n_workers), which bounds the memory held by finished results.
    """

    def __init__(self, n_workers: int = 1, blas_threads: int | None = DEFAULT_BLAS_THREADS,
                 lookahead: int | None = None) -> None:
        if int(n_workers) < 1:
            raise RunnerError(f"an executor needs at least one worker, got {n_workers}")
        self._n_workers = int(n_workers)
        self.blas_threads = blas_threads
        self.lookahead = max(1, int(lookahead)) if lookahead else 2 * self._n_workers

    @property
    def n_workers(self) -> int:
        return self._n_workers

    def share(self, value: Any) -> Any:
        """Threads share memory: the handle is the value."""
        return value

    def map(self, tasks: Iterable[Task], progress: Progress | None = None) -> Iterator[Any]:
        """Run ``tasks``, yielding results in task order (see :class:`runner.execution.base.Executor`)."""
        with blas_limit(self.blas_threads):
            if self._n_workers == 1:
                for task in tasks:
                    result = task()
                    if progress is not None:
                        progress(task.weight)
                    yield result
                return
            yield from self._pool_map(tasks, progress)

    def _pool_map(self, tasks: Iterable[Task], progress: Progress | None) -> Iterator[Any]:
        pool = ThreadPoolExecutor(max_workers=self._n_workers)
        pending: collections.deque = collections.deque()
        try:
            for task in tasks:
                pending.append((task.weight, pool.submit(task)))
                if len(pending) >= self.lookahead:
                    yield _collect(pending.popleft(), progress)
            while pending:
                yield _collect(pending.popleft(), progress)
        finally:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def _collect(entry: tuple[int, Any], progress: Progress | None) -> Any:
    weight, future = entry
    result = future.result()
    if progress is not None:
        progress(weight)
    return result


def blas_limit(threads: int | None):
    """A context in which BLAS uses at most ``threads`` threads (nothing when None or threadpoolctl is missing)."""
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # declared as a dependency; without it BLAS keeps its own setting
        return contextlib.nullcontext()
    return threadpool_limits(limits=int(threads), user_api="blas")
