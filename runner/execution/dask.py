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
import concurrent.futures
import contextlib
import dataclasses
import io
import logging
import mmap
import os
import pickle
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from runner.errors import RunnerError
from runner.execution.base import Progress, Task
from runner.execution.local import DEFAULT_BLAS_THREADS

log = logging.getLogger("runner")

INSTALL_HINT = ("executor=dask needs Dask: pip install 'second-level-runner[dask]' "
                "(dask[distributed], and dask-jobqueue for SLURM / PBS)")
# Resubmissions of a task cancelled because every copy of its scattered data died with its workers (Dask keeps one
# replica of data no task is reading); each time the data are scattered again first.
LOST_DATA_RENEWALS = 3


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
    share_files : bool
        Share memory-mapped arrays by file name rather than by content (see :meth:`share`).
    """

    def __init__(self, client: Any, n_workers: int | None = None, retries: int = 3,
                 blas_threads: int | None = DEFAULT_BLAS_THREADS, lookahead: int | None = None,
                 share_files: bool = True) -> None:
        self.client = client
        self.share_files = share_files
        if n_workers is None:
            n_workers = sum(client.nthreads().values())
        self._n_workers = max(1, int(n_workers))
        self._shared: dict[str, list[Any]] = {}
        self.retries = int(retries)
        self.blas_threads = blas_threads
        self.lookahead = max(1, int(lookahead)) if lookahead else 2 * self._n_workers

    @property
    def n_workers(self) -> int:
        return self._n_workers

    def share(self, value: Any) -> Any:
        """Scatter ``value`` to every worker once; tasks given the returned future receive the value itself.

        Memory-mapped arrays in ``value`` (the loader's on-disk store for large studies) travel as their file's
        name when ``share_files``: each worker maps the file and reads only the voxel chunks its tasks touch, so no
        process holds all the maps (the workers must see the same file system, as local and most HPC ones do).
        """
        if self.share_files and _holds_memmap(value):
            value = FileBacked.wrap(value)
        future = self._scatter(value)
        # the value is kept, while the caller holds the handle, to scatter it again if every copy is lost
        self._shared[future.key] = [value, None]
        weakref.finalize(future, self._shared.pop, future.key, None)
        return future

    def _scatter(self, value: Any) -> Any:
        # in a one-element list, so that a list or dict is scattered whole rather than item by item
        (future,) = self.client.scatter([value], broadcast=True, hash=False)
        return future

    def _submit(self, task: Task) -> Any:
        arguments = tuple(self._shared[a.key][1] or a if _is_future(a) and a.key in self._shared else a
                          for a in task.arguments)
        return self.client.submit(run_task, task.function, self.blas_threads, *arguments, pure=False,
                                  retries=self.retries)

    def _renew_lost(self, task: Task) -> bool:
        """Scatter again the shared values of ``task`` whose every copy was lost with their workers (Dask's
        memory manager keeps one replica of data no task is reading; scattered data cannot be recomputed).
        True when the task reads shared values (it may have been cancelled for losing one, renewed now or by an
        earlier task), so that resubmitting it can help."""
        shared = False
        for argument in task.arguments:
            if _is_future(argument) and argument.key in self._shared:
                shared = True
                entry = self._shared[argument.key]
                if (entry[1] or argument).status != "finished":
                    entry[1] = self._scatter(entry[0])
        return shared

    def map(self, tasks: Iterable[Task], progress: Progress | None = None) -> Iterator[Any]:
        """Run ``tasks`` on the workers, yielding results in task order (see :class:`runner.execution.Executor`)."""
        pending: collections.deque = collections.deque()
        try:
            for task in tasks:
                pending.append([task, self._submit(task)])
                if len(pending) >= self.lookahead:
                    yield self._collect(pending.popleft(), progress)
            while pending:
                yield self._collect(pending.popleft(), progress)
        finally:
            for _, future in pending:
                future.cancel()

    def _collect(self, entry: list[Any], progress: Progress | None) -> Any:
        """The result of one submitted task; resubmitted (up to ``LOST_DATA_RENEWALS`` times) when it was cancelled
        because its shared data were lost with their workers. That is not a failure of the task, so ``retries``
        (which counts tasks that raised) does not bound it."""
        task = entry[0]
        for attempt in range(LOST_DATA_RENEWALS + 1):
            try:
                result = entry[1].result()
                break
            except concurrent.futures.CancelledError:
                if attempt == LOST_DATA_RENEWALS or not self._renew_lost(task):
                    raise
                entry[1] = self._submit(task)
        if progress is not None:
            progress(task.weight)
        return result


def _is_future(value: Any) -> bool:
    from distributed import Future

    return isinstance(value, Future)


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
    """One task on a worker: ``function(*arguments)`` with BLAS pinned (Dask has resolved shared futures; values
    shared by file are opened here, once per worker)."""
    arguments = tuple(a.value if isinstance(a, FileBacked) else a for a in arguments)
    with pinned_blas(blas_threads):
        return function(*arguments)


# -- memory-mapped arrays shared by file name ---------------------------------------------------------------------
def _mappable(value: Any) -> bool:
    """A whole memory-mapped file (not a view of one) that can be mapped again from its name: the data cache's
    entries can; the loader's scratch file, unlinked once mapped, cannot (its contents are sent instead)."""
    if not (isinstance(value, np.memmap) and isinstance(value.base, mmap.mmap) and value.filename
            and (value.flags.c_contiguous or value.flags.f_contiguous)):
        return False
    try:
        return os.stat(value.filename).st_size >= int(value.offset) + value.nbytes
    except OSError:
        return False


def _holds_memmap(value: Any) -> bool:
    """``value`` is, or directly holds (a field of a dataclass, an item of a tuple, list or dict), a mappable array."""
    if _mappable(value):
        return True
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(_mappable(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (tuple, list)):
        return any(_mappable(item) for item in value)
    if isinstance(value, dict):
        return any(_mappable(item) for item in value.values())
    return False


def _open_memmap(filename: str, dtype: str, shape: tuple[int, ...], offset: int, order: str) -> np.ndarray:
    return np.memmap(filename, dtype=np.dtype(dtype), mode="r", shape=shape, offset=offset, order=order)


class _ByFileName(pickle.Pickler):
    """Pickles memory-mapped arrays as a call that maps their file again (read-only), everything else as usual."""

    def reducer_override(self, obj: Any) -> Any:
        if _mappable(obj):
            order = "C" if obj.flags.c_contiguous else "F"
            return _open_memmap, (str(obj.filename), obj.dtype.str, obj.shape, int(obj.offset), order)
        return NotImplemented


class FileBacked:
    """A shared value whose memory-mapped arrays travel as file names; ``value`` rebuilds it (once per process)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self._value: Any = None
        self._ready = False

    @classmethod
    def wrap(cls, value: Any) -> FileBacked:
        buffer = io.BytesIO()
        _ByFileName(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
        return cls(buffer.getvalue())

    @property
    def value(self) -> Any:
        if not self._ready:  # two threads may both build it: the same read-only value, harmless
            self._value, self._ready = pickle.loads(self.payload), True
        return self._value

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:  # the payload travels, never the opened value
        return FileBacked, (self.payload,)


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
        executor = DaskExecutor(client, n_workers=n_workers, retries=config.retries, share_files=config.share_files)
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
