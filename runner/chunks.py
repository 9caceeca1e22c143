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

    When ``Y`` is memory-mapped, the chunk is read from its file (:func:`read_block`), so a study larger than memory
    holds one chunk at a time (the operating system keeps the file in its page cache, outside the process).
    """
    block = np.array(read_block(Y, slice(None), piece), dtype=np.float64, order="C")  # one layout: same rounding
    release_pages(Y)
    return block


def read_block(Y: np.ndarray, rows: slice, columns: slice) -> np.ndarray:
    """``Y[rows, columns]``: a view of an array in memory; for a memory-mapped store, a C-ordered copy in the
    store's dtype read from its file with positioned reads.

    Reading a narrow range of voxels of every map through the mapping would touch every map's row: on kernels that
    map the page cache's large folios whole, the process's resident size (which Dask's nanny watches against its
    memory limit) then grows to nearly the whole file for one chunk. ``pread`` copies only the bytes asked for.
    """
    path = _store_file(Y)
    if path is None:
        return Y[rows, columns]
    n_rows, n_columns = Y.shape
    r0, r1, r_step = rows.indices(n_rows)
    c0, c1, c_step = columns.indices(n_columns)
    if r_step != 1 or c_step != 1:
        return np.ascontiguousarray(Y[rows, columns])
    out = np.empty((max(0, r1 - r0), max(0, c1 - c0)), dtype=Y.dtype)
    itemsize, offset = Y.dtype.itemsize, int(Y.offset)
    fd = os.open(path, os.O_RDONLY)
    try:
        if c0 == 0 and c1 == n_columns:  # whole maps: one read
            _read_exactly(fd, out.reshape(-1), offset + r0 * n_columns * itemsize)
        else:
            for i, row in enumerate(range(r0, r1)):
                _read_exactly(fd, out[i], offset + (row * n_columns + c0) * itemsize)
    finally:
        os.close(fd)
    return out


def _store_file(Y: np.ndarray) -> str | None:
    """The file behind a whole, C-ordered 2D memory map (as ``np.load(mmap_mode=...)`` gives), else None."""
    if not (isinstance(Y, np.memmap) and Y.ndim == 2 and isinstance(Y.base, mmap.mmap) and Y.filename
            and Y.flags.c_contiguous):
        return None
    try:
        if os.stat(Y.filename).st_size < int(Y.offset) + Y.nbytes:
            return None
    except OSError:  # unlinked (the loader's scratch file): read through the mapping
        return None
    return str(Y.filename)


def _read_exactly(fd: int, buffer: np.ndarray, position: int) -> None:
    view = memoryview(buffer).cast("B")
    done = 0
    while done < len(view):
        count = os.preadv(fd, [view[done:]], position + done)
        if count <= 0:
            raise OSError(f"short read of the memory-mapped store at byte {position + done}")
        done += count


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
