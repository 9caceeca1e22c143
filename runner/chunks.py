"""Voxel chunks: the one loop over the data. OLS and max-statistics are independent per voxel, so a study larger than
memory, or one spread over a cluster, is the same code with another loop here (e.g. a Dask bag of chunks)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

T = TypeVar("T")

DEFAULT_CHUNK_BYTES = 256 * 1024**2  # working set per chunk when no budget is given


def chunk_slices(n_voxels: int, chunk_size: int) -> list[slice]:
    """Contiguous voxel ranges of at most ``chunk_size`` voxels covering 0..n_voxels."""
    chunk_size = max(1, int(chunk_size))
    return [slice(start, min(start + chunk_size, n_voxels)) for start in range(0, n_voxels, chunk_size)]


def chunk_size_for(n_rows: int, n_voxels: int, budget_bytes: float | None = None, copies: int = 4,
                   itemsize: int = 8) -> int:
    """Voxels per chunk so that ``copies`` float arrays of (n_rows x chunk) fit in the budget."""
    budget = DEFAULT_CHUNK_BYTES if budget_bytes is None else float(budget_bytes)
    per_voxel = max(1, n_rows) * itemsize * copies
    return int(max(1, min(n_voxels, budget // per_voxel)))


def map_chunks(func: Callable[[slice], T], slices: Iterable[slice], n_jobs: int = 1,
               progress: Callable[[int], None] | None = None) -> Iterator[T]:
    """Apply ``func`` to every voxel slice, in order, locally (threads: numpy releases the GIL in BLAS)."""
    slices = list(slices)
    if n_jobs <= 1 or len(slices) <= 1:
        for piece in slices:
            result = func(piece)
            if progress:
                progress(piece.stop - piece.start)
            yield result
        return
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        for piece, result in zip(slices, pool.map(func, slices)):
            if progress:
                progress(piece.stop - piece.start)
            yield result


def as_float64(block: np.ndarray) -> np.ndarray:
    """Statistics are computed in float64 whatever the storage type (float32, memmap)."""
    return np.asarray(block, dtype=np.float64)
