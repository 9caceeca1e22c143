"""The Dask executor: tasks on the workers of a Dask cluster (this machine, a running scheduler, SLURM or PBS).

It implements :class:`runner.execution.base.Executor`: :meth:`DaskExecutor.share` scatters a value to every worker
once (broadcast), :meth:`DaskExecutor.map` submits tasks with a bounded look-ahead and yields their results in task
order. A task that raises is resubmitted ``retries`` times; a task whose worker died is rescheduled by the scheduler
on another worker (up to ``distributed.scheduler.allowed-failures`` times), so a lost worker does not change the
result. Each task runs with BLAS pinned to one thread, as on the local executor, so results are identical bit for
bit on both (on workers with the same CPU type: BLAS picks its kernels by CPU).

:func:`open_executor` turns the ``executor`` settings into an executor for one run and closes the client and any
cluster it started when the run ends, normally or not. Dask is an optional dependency (``pip install '.[dask]'``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from runner.errors import RunnerError
from runner.execution.base import Progress, Task
from runner.execution.local import DEFAULT_BLAS_THREADS

log = logging.getLogger("runner")

INSTALL_HINT = ("executor=dask needs Dask: pip install 'second-level-runner[dask]' "
                "(dask[distributed], and dask-jobqueue for SLURM / PBS)")


def import_distributed() -> Any:
    """The ``distributed`` module, or one RunnerError saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise RunnerError(INSTALL_HINT) from None
    return distributed


class DaskExecutor:
    """Tasks on the workers of a Dask ``Client``, results in task order.

    Parameters
    ----------
    client : distributed.Client
        Connected client; the executor does not close it (see :func:`open_executor`).
    n_workers : int, optional
        Tasks that may run at once, used to size blocks (default: the threads of the workers connected now, at
        least 1). Results do not depend on it.
    retries : int
        Resubmissions of a task that raised an exception (a dead worker's tasks are rescheduled by the scheduler).
    blas_threads : int or None
        BLAS threads while a task runs (1, as :class:`runner.execution.LocalExecutor`, for identical results).
    lookahead : int, optional
        Tasks submitted and not yet consumed at most (default 2 x n_workers), which bounds the results held.
    """

    def __init__(self, client: Any, n_workers: int | None = None, retries: int = 3,
                 blas_threads: int | None = DEFAULT_BLAS_THREADS, lookahead: int | None = None) -> None:
        self.client = client
        if n_workers is None:
            n_workers = sum(client.nthreads().values())
        self._n_workers = max(1, int(n_workers))
        self.retries = int(retries)
        self.blas_threads = blas_threads
        self.lookahead = max(1, int(lookahead)) if lookahead else 2 * self._n_workers

    @property
    def n_workers(self) -> int:
        return self._n_workers

    def share(self, value: Any) -> Any:
        """Scatter ``value`` to every worker once; tasks given the returned future receive the value itself."""
        # in a one-element list, so that a list or dict is scattered whole rather than item by item
        (future,) = self.client.scatter([value], broadcast=True, hash=False)
        return future

    def map(self, tasks: Iterable[Task], progress: Progress | None = None) -> Iterator[Any]:
        """Run ``tasks`` on the workers, yielding results in task order (see :class:`runner.execution.Executor`)."""
        pending: collections.deque = collections.deque()
        try:
            for task in tasks:
                future = self.client.submit(run_task, task.function, self.blas_threads, *task.arguments,
                                            pure=False, retries=self.retries)
                pending.append((task.weight, future))
                if len(pending) >= self.lookahead:
                    yield _collect(pending.popleft(), progress)
            while pending:
                yield _collect(pending.popleft(), progress)
        finally:
            for _, future in pending:
                future.cancel()


def _collect(entry: tuple[int, Any], progress: Progress | None) -> Any:
    weight, future = entry
    result = future.result()
    if progress is not None:
        progress(weight)
    return result


# -- on the worker -----------------------------------------------------------------------------------------------
_pin_lock = threading.Lock()
_pin_state: dict[str, Any] = {"count": 0, "limiter": None}


@contextlib.contextmanager
def pinned_blas(threads: int | None) -> Iterator[None]:
    """BLAS limited to ``threads`` while any task of this process runs (a worker may run several at once: the
    limit is set by the first and lifted by the last, since threadpoolctl's limit is process-wide)."""
    if threads is None:
        yield
        return
    with _pin_lock:
        if _pin_state["count"] == 0:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:  # a declared dependency; without it BLAS keeps its own setting
                threadpool_limits = None
            _pin_state["limiter"] = (threadpool_limits(limits=int(threads), user_api="blas")
                                     if threadpool_limits is not None else None)
        _pin_state["count"] += 1
    try:
        yield
    finally:
        with _pin_lock:
            _pin_state["count"] -= 1
            if _pin_state["count"] == 0 and _pin_state["limiter"] is not None:
                _pin_state["limiter"].restore_original_limits()
                _pin_state["limiter"] = None


def run_task(function: Any, blas_threads: int | None, *arguments: Any) -> Any:
    """One task on a worker: ``function(*arguments)`` with BLAS pinned (Dask has resolved shared futures)."""
    with pinned_blas(blas_threads):
        return function(*arguments)


# -- one run's executor ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def open_executor(config: Any, n_jobs: int = 1) -> Iterator[DaskExecutor]:
    """A :class:`DaskExecutor` for one run from the ``executor`` settings; closed (with any cluster it started)
    when the block ends, also on an error or an interruption.

    Connects to ``config.address`` when set (RunnerError when no scheduler answers within
    ``config.connect_timeout`` seconds), else starts ``config.cluster`` with ``config.n_workers`` workers
    (default ``n_jobs``). Logs the dashboard link.
    """
    distributed = import_distributed()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_dask_logs())
        if config.address:
            client = _connect(distributed, config)
            stack.callback(client.close)
            n_workers = config.n_workers
            where = f"scheduler {config.address}"
        else:
            n_workers = int(config.n_workers or max(1, n_jobs))
            cluster = start_cluster(config, n_workers)
            stack.callback(cluster.close)
            client = distributed.Client(cluster, timeout=f"{config.connect_timeout}s")
            stack.callback(client.close)
            n_workers *= int(config.threads_per_worker if config.cluster == "local" else config.cores)
            where = f"a {config.cluster} cluster of {config.n_workers or max(1, n_jobs)} worker(s) started for the run"
        executor = DaskExecutor(client, n_workers=n_workers, retries=config.retries)
        log.info("executor: Dask, %s, %d task(s) at once; dashboard %s", where, executor.n_workers,
                 _dashboard(client))
        yield executor


@contextlib.contextmanager
def _quiet_dask_logs() -> Iterator[None]:
    """Dask's own INFO messages (workers starting, closing) stay out of run.log; its warnings and errors do not."""
    loggers = [logging.getLogger(name) for name in ("distributed", "dask_jobqueue")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _connect(distributed: Any, config: Any) -> Any:
    try:
        return distributed.Client(config.address, timeout=f"{config.connect_timeout}s")
    except (OSError, TimeoutError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunnerError(f"executor.address {config.address}: no Dask scheduler answered within "
                          f"{config.connect_timeout:g} s ({reason}); start one (dask scheduler) or check the address"
                          ) from None


def start_cluster(config: Any, n_workers: int) -> Any:
    """The cluster ``config.cluster`` names, with ``n_workers`` workers asked for (not waited for)."""
    if config.cluster == "local":
        distributed = import_distributed()
        return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=config.threads_per_worker,
                                        processes=config.processes, memory_limit=config.memory_limit,
                                        dashboard_address=config.dashboard_address,
                                        local_directory=config.local_directory, silence_logs=logging.ERROR)
    cluster = batch_cluster(config)
    cluster.scale(n_workers)
    return cluster


def batch_cluster(config: Any) -> Any:
    """A dask-jobqueue cluster (SLURM or PBS), one worker per job running ``cores`` threads, not yet scaled."""
    try:
        import dask_jobqueue
    except ImportError:
        raise RunnerError(f"executor.cluster={config.cluster} needs dask-jobqueue: pip install "
                          "'second-level-runner[dask]'") from None
    kind = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[config.cluster]
    options = dict(queue=config.queue, account=config.account, walltime=config.walltime, cores=config.cores,
                   memory=config.memory, processes=1, job_extra_directives=list(config.job_extra),
                   local_directory=config.local_directory,
                   scheduler_options={"dashboard_address": config.dashboard_address})
    return kind(**{key: value for key, value in options.items() if value is not None})


def _dashboard(client: Any) -> str:
    try:
        return str(client.dashboard_link)
    except Exception:  # no dashboard (bokeh missing or disabled): the run does not need one
        return "not available"
