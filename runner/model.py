"""Fit the group model (OLS, or mixed effects with first-level variances) and compute every contrast, voxel chunk by
voxel chunk within a memory budget."""

from __future__ import annotations

import logging

import numpy as np

from runner import glm, mfx
from runner.chunks import chunk_size_for, chunk_slices, map_chunks, read_chunk
from runner.contrasts import Contrast
from runner.execution import Executor, LocalExecutor

log = logging.getLogger(__name__)

RESULT_ARRAYS = 6  # effect, variance, stat, p, z (+ a temporary) per contrast and voxel, float64
MFX_CHUNK_COPIES = 12  # mixed effects: data, variances, weights, residuals and their products, (V, p, p) systems
CHUNK_COPIES = 4  # float64 (n x chunk) arrays alive while one chunk is fitted: data, fitted values, residuals, |Y|


def resident_bytes(Y: np.ndarray) -> int:
    """Bytes of ``Y`` held in this process's memory (0 for a memory-mapped file)."""
    return 0 if isinstance(Y, np.memmap) else int(Y.nbytes)


def fit_contrasts(Y: np.ndarray, X: np.ndarray, contrasts: list[Contrast], *,
                  memory_budget_bytes: float | None = None, n_jobs: int = 1,
                  executor: Executor | None = None) -> dict[str, glm.ContrastResult]:
    """Fit OLS and compute all contrasts, processing voxels in chunks sized to the memory budget.

    Parameters
    ----------
    Y : (n, V) data, any float dtype (a memmap works: one chunk is read at a time, then its pages are released).
    X : (n, p) design matrix.
    contrasts : contrasts to compute.
    memory_budget_bytes : memory the whole run may use; the data held in memory and the results are taken off it,
        the rest is shared by the chunks in flight (one per worker). None: 256 MB per chunk.
    executor : run the chunks on this :class:`runner.execution.Executor` instead of ``n_jobs`` local threads.

    Returns
    -------
    dict mapping contrast name to its :class:`runner.glm.ContrastResult` over all V voxels.
    """
    n, n_voxels = Y.shape
    executor = executor or LocalExecutor(n_jobs)
    working = None
    if memory_budget_bytes is not None:
        results = RESULT_ARRAYS * 8 * n_voxels * sum(max(1, c.matrix.shape[0]) for c in contrasts)
        working = (float(memory_budget_bytes) - resident_bytes(Y) - results) / max(1, executor.n_workers)
    mapped = isinstance(Y, np.memmap)  # its pages of one chunk are resident until read_chunk releases them
    size = chunk_size_for(n, n_voxels, working, copies=CHUNK_COPIES + mapped)
    slices = chunk_slices(n_voxels, size)
    log.info("fitting OLS at %d voxel(s) of %d map(s) in %d chunk(s) of up to %d voxel(s)%s", n_voxels, n,
             len(slices), size, " (data memory-mapped)" if mapped else "")

    arguments = (executor.share(Y), X, contrasts)
    parts = list(map_chunks(fit_chunk, slices, executor=executor, arguments=arguments))
    return {c.name: _concatenate([part[c.name] for part in parts]) for c in contrasts}


def fit_contrasts_mfx(Y: np.ndarray, S: np.ndarray, X: np.ndarray, contrasts: list[Contrast], *,
                      estimator: str = "reml", knapp_hartung: bool = True, dof: str = "effective",
                      memory_budget_bytes: float | None = None, n_jobs: int = 1,
                      executor: Executor | None = None) -> tuple[dict[str, glm.ContrastResult], np.ndarray,
                                                                 np.ndarray, int]:
    """Mixed-effects fit (:func:`runner.mfx.mfx_fit`) and every contrast, in voxel chunks as :func:`fit_contrasts`.

    Parameters
    ----------
    Y : (n, V) first-level effects.
    S : (n, V) their first-level variances (positive, finite).
    X, contrasts, memory_budget_bytes, n_jobs, executor : as in :func:`fit_contrasts`.
    estimator : ``"reml"`` or ``"dl"`` for the between-subject variance tau2.
    knapp_hartung : use the Knapp-Hartung variance of the contrasts.
    dof : ``"effective"`` or ``"residual"`` degrees of freedom (:func:`runner.mfx.mfx_fit`).

    Returns
    -------
    The contrast results by name, tau2 (V,), the degrees of freedom at each voxel (V,), and the number of voxels
    whose REML iterations did not converge.
    """
    n, n_voxels = Y.shape
    executor = executor or LocalExecutor(n_jobs)
    working = None
    if memory_budget_bytes is not None:
        results = (RESULT_ARRAYS * sum(max(1, c.matrix.shape[0]) for c in contrasts) + 2) * 8 * n_voxels
        working = (float(memory_budget_bytes) - resident_bytes(Y) - resident_bytes(S) - results) \
            / max(1, executor.n_workers)
    size = chunk_size_for(n, n_voxels, working, copies=MFX_CHUNK_COPIES + X.shape[1] ** 2)
    slices = chunk_slices(n_voxels, size)
    log.info("fitting mixed effects (tau2 by %s) at %d voxel(s) of %d map(s) in %d chunk(s)", estimator.upper(),
             n_voxels, n, len(slices))
    arguments = (executor.share(Y), executor.share(S), X, contrasts, estimator, knapp_hartung, dof)
    parts = list(map_chunks(fit_chunk_mfx, slices, executor=executor, arguments=arguments))
    fitted = {c.name: _concatenate([part[0][c.name] for part in parts]) for c in contrasts}
    tau2 = np.concatenate([part[1] for part in parts])
    voxel_dof = np.concatenate([part[2] for part in parts])
    return fitted, tau2, voxel_dof, int(sum(part[3] for part in parts))


def fit_chunk_mfx(Y: np.ndarray, S: np.ndarray, X: np.ndarray, contrasts: list[Contrast], estimator: str,
                  knapp_hartung: bool, dof: str,
                  piece: slice) -> tuple[dict[str, glm.ContrastResult], np.ndarray, np.ndarray, int]:
    """Mixed effects and every contrast at the voxels ``piece`` (one task of the voxel loop)."""
    fit = mfx.mfx_fit(read_chunk(Y, piece), read_chunk(S, piece), X, estimator=estimator,
                      knapp_hartung=knapp_hartung, dof=dof)
    results = {c.name: mfx.compute_contrast(fit, c.matrix, c.stat_type) for c in contrasts}
    return results, fit.tau2, fit.voxel_dof, int(np.sum(~fit.converged))


def fit_chunk(Y: np.ndarray, X: np.ndarray, contrasts: list[Contrast],
              piece: slice) -> dict[str, glm.ContrastResult]:
    """OLS and every contrast at the voxels ``piece`` of ``Y`` (one task of the voxel loop)."""
    fit = glm.ols_fit(read_chunk(Y, piece), X)
    return {c.name: glm.compute_contrast(fit, c.matrix, c.stat_type) for c in contrasts}


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
