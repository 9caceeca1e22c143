"""Fit the GLM and compute every contrast, voxel chunk by voxel chunk."""

from __future__ import annotations

import numpy as np

from runner import glm
from runner.chunks import as_float64, chunk_size_for, chunk_slices, map_chunks
from runner.contrasts import Contrast


def fit_contrasts(Y: np.ndarray, X: np.ndarray, contrasts: list[Contrast], *,
                  memory_budget_bytes: float | None = None, n_jobs: int = 1) -> dict[str, glm.ContrastResult]:
    """Fit OLS and compute all contrasts, processing voxels in chunks sized to the memory budget.

    Parameters
    ----------
    Y : (n, V) data, any float dtype (a memmap works: only one chunk is read at a time).
    X : (n, p) design matrix.
    contrasts : contrasts to compute.

    Returns
    -------
    dict mapping contrast name to its :class:`runner.glm.ContrastResult` over all V voxels.
    """
    n, n_voxels = Y.shape
    size = chunk_size_for(n, n_voxels, memory_budget_bytes)

    def one_chunk(piece: slice) -> dict[str, glm.ContrastResult]:
        fit = glm.ols_fit(as_float64(Y[:, piece]), X)
        return {c.name: glm.compute_contrast(fit, c.matrix, c.stat_type) for c in contrasts}

    parts = list(map_chunks(one_chunk, chunk_slices(n_voxels, size), n_jobs=n_jobs))
    return {c.name: _concatenate([part[c.name] for part in parts]) for c in contrasts}


def _concatenate(parts: list[glm.ContrastResult]) -> glm.ContrastResult:
    """Join per-chunk results along the voxel axis."""
    first = parts[0]
    if len(parts) == 1:
        return first
    return glm.ContrastResult(
        stat_type=first.stat_type,
        effect=np.concatenate([p.effect for p in parts], axis=-1),
        variance=np.concatenate([p.variance for p in parts]),
        stat=np.concatenate([p.stat for p in parts]),
        p=np.concatenate([p.p for p in parts]),
        z=np.concatenate([p.z for p in parts]),
        dof=first.dof,
        df_num=first.df_num,
    )
