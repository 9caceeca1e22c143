"""Voxel chunks: the one loop over the data, and the memory budget that sizes it.

OLS and max-statistics are independent per voxel: the model fits one chunk of voxels at a time, and a max-T null
distribution is the element-wise maximum of per-chunk maxima (:func:`reduce_chunks` with ``np.maximum``). Every
loop over chunks is a list of tasks run by an executor (:mod:`runner.execution`): local threads today, a
distributed executor later, without changing the callers.
"""

from __future__ import annotations

import functools
import mmap
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

from runner.execution import Executor, LocalExecutor, Task

T = TypeVar("T")
R = TypeVar("R")

GIB = 1024**3
DEFAULT_CHUNK_BYTES = 256 * 1024**2  # working set per chunk when no budget is given
DEFAULT_BUDGET_FRACTION = 0.5  # memory_budget_gb=null: half of the memory available when the run starts
FALLBACK_AVAILABLE_BYTES = 4 * GIB  # when the system does not say how much memory is available
MIN_WORKING_BYTES = 16 * 1024**2  # never plan chunks on less than this, whatever the budget says
# Chunks are at most this wide, and a multiple of CHUNK_ALIGN voxels when the budget makes them narrower: a run's
# numbers then do not depend on its budget (BLAS rounds the same way for the same width), only on the chunk width.
MAX_CHUNK_VOXELS = 32768
CHUNK_ALIGN = 1024


# -- the budget --------------------------------------------------------------------------------------------------
def available_memory_bytes() -> int:
    """Memory the system can give this process now: MemAvailable from /proc/meminfo (Linux), else free pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return FALLBACK_AVAILABLE_BYTES


def memory_budget_bytes(memory_budget_gb: float | None) -> int:
    """The run's memory budget in bytes: the setting, or half of the available memory when it is null."""
    if memory_budget_gb:
        return int(float(memory_budget_gb) * GIB)
    return int(DEFAULT_BUDGET_FRACTION * available_memory_bytes())


def chunk_slices(n_voxels: int, chunk_size: int) -> list[slice]:
    """Contiguous voxel ranges of at most ``chunk_size`` voxels covering 0..n_voxels."""
    chunk_size = max(1, int(chunk_size))
    return [slice(start, min(start + chunk_size, n_voxels)) for start in range(0, n_voxels, chunk_size)]


def chunk_size_for(n_rows: int, n_voxels: int, budget_bytes: float | None = None, copies: int = 4,
                   itemsize: int = 8) -> int:
    """Voxels per chunk so that ``copies`` float arrays of (n_rows x chunk) fit in the budget (at most
    MAX_CHUNK_VOXELS, rounded down to a multiple of CHUNK_ALIGN when that is possible)."""
    budget = DEFAULT_CHUNK_BYTES if budget_bytes is None else max(float(budget_bytes), MIN_WORKING_BYTES)
    per_voxel = max(1, n_rows) * itemsize * copies
    size = int(min(MAX_CHUNK_VOXELS, budget // per_voxel))
    if size >= CHUNK_ALIGN:
        size -= size % CHUNK_ALIGN
    return int(max(1, min(n_voxels, size)))


# -- the loop ----------------------------------------------------------------------------------------------------
def ordered_map(func: Callable[[T], R], items: Iterable[T], n_jobs: int = 1, executor: Executor | None = None,
                lookahead: int | None = None) -> Iterator[R]:
    """``map(func, items)`` in order, on ``n_jobs`` local threads or on ``executor``.

    At most ``lookahead`` (default 2 x n_jobs) items are in flight, so results waiting to be consumed stay few
    (memory is bounded whatever the number of items) and an interruption cancels what has not started. Without an
    executor BLAS is left alone (this serves I/O such as decoding images; statistics go through :func:`map_chunks`).
    """
    executor = executor or LocalExecutor(max(1, n_jobs), blas_threads=None, lookahead=lookahead)
    return executor.map(Task(func, (item,)) for item in items)


def map_chunks(func: Callable[..., T], slices: Iterable[slice], n_jobs: int = 1,
               progress: Callable[[int], None] | None = None, executor: Executor | None = None,
               arguments: tuple = ()) -> Iterator[T]:
    """``func(*arguments, piece)`` for every voxel slice, in order, on ``executor`` (default: ``n_jobs`` threads).

    ``progress`` receives the number of voxels of each finished chunk. For an executor that runs tasks elsewhere,
    ``func`` must be a module-level function and large ``arguments`` handed over with ``executor.share``.
    """
    executor = executor or LocalExecutor(max(1, n_jobs))
    tasks = (Task(func, (*arguments, piece), weight=piece.stop - piece.start) for piece in slices)
    return executor.map(tasks, progress)


def reduce_chunks(func: Callable[..., R], slices: Iterable[slice], combine: Callable[[R, R], R],
                  n_jobs: int = 1, executor: Executor | None = None, arguments: tuple = ()) -> R:
    """Combine per-chunk results in chunk order, e.g. ``combine=np.maximum`` over per-chunk maxima."""
    return functools.reduce(combine, map_chunks(func, slices, n_jobs=n_jobs, executor=executor, arguments=arguments))


# -- reading chunks ----------------------------------------------------------------------------------------------
def read_chunk(Y: np.ndarray, piece: slice) -> np.ndarray:
    """Voxels ``piece`` of every map as a float64 copy (statistics are float64 whatever the storage type).

    When ``Y`` is memory-mapped, the file pages touched are released afterwards, so a study larger than memory
    holds one chunk at a time (the operating system keeps them in its page cache, outside the process).
    """
    block = np.array(Y[:, piece], dtype=np.float64, order="C")  # one layout: BLAS rounds the same way every run
    release_pages(Y)
    return block


def release_pages(array: np.ndarray) -> None:
    """Drop the pages of a memory-mapped array from this process (the file keeps the data)."""
    handle = getattr(array, "_mmap", None)
    if handle is None or not hasattr(handle, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        handle.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # closed, or a platform without it: memory is then the OS's business
        pass


def as_float64(block: np.ndarray) -> np.ndarray:
    """Statistics are computed in float64 whatever the storage type (float32, memmap)."""
    return np.asarray(block, dtype=np.float64)
