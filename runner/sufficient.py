"""OLS from additive sufficient statistics over batches of subjects, for studies whose maps no single process
should hold: each task reads a batch of maps (rows) over a chunk of voxels, the batches' statistics are added, and
the fit follows from the sums (the "big linear models" approach of BLM, Maullin-Sapey & Nichols 2022, NeuroImage
250:118898, which sums XᵀX, XᵀY and YᵀY).

The design is small and known whole, so XᵀX needs no pass over the data; XᵀY is summed in an orthonormal basis of
the design's columns (thin SVD X = U S Vᵀ, rank r), because the normal equations with XᵀX square the condition
number of an uncentred design (an age column around 50 loses six digits):

    Uᵀ Y = Σ_batches U[b]ᵀ Y[b],   YᵀY = Σ_batches Y[b]ᵀY[b] (per voxel)
    β = V S⁻¹ UᵀY = X⁺ Y,   RSS = YᵀY − ‖UᵀY‖²  (Pythagoras: Y = UUᵀY + residuals),   σ² = RSS / (n − r)

The residual sum of squares is a difference of sums, so it carries a rounding error of about ε·YᵀY (ε = machine
epsilon) rather than ε·RSS: results agree with :func:`runner.glm.ols_fit` (which forms the residuals) to about
1e-10 relative on ordinary data, not bit for bit, and a voxel whose RSS is within ``ROUNDING_FACTOR`` ε·YᵀY of zero
counts as constant (NaN statistics, as in :mod:`runner.glm`). Batches are added in row order per voxel chunk, so
the result does not depend on the executor or the number of workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from runner import glm
from runner.chunks import chunk_size_for, chunk_slices, read_block, release_pages
from runner.contrasts import Contrast
from runner.execution import Executor, LocalExecutor, Task
from runner.model import RESULT_ARRAYS, _concatenate, resident_bytes

log = logging.getLogger(__name__)

BATCH_COPIES = 3  # arrays of (batch x chunk) alive in one task: the block read, its float64 copy, its squares
ROUNDING_FACTOR = 64.0  # RSS below this many ε·YᵀY is rounding of the subtraction, not residual variance


@dataclass(frozen=True)
class DesignBasis:
    """Thin SVD of the design, X = U S Vᵀ, cut at its numerical rank (as :func:`runner.glm.design_rank`)."""

    U: np.ndarray  # (n, r) orthonormal columns
    singular_values: np.ndarray  # (r,)
    Vt: np.ndarray  # (r, p)

    @classmethod
    def of(cls, X: np.ndarray) -> DesignBasis:
        U, S, Vt = np.linalg.svd(np.asarray(X, dtype=np.float64), full_matrices=False)
        rank = int(np.sum(S > glm.RANK_TOLERANCE * S.max())) if S.size else 0
        return cls(U=U[:, :rank], singular_values=S[:rank], Vt=Vt[:rank])


@dataclass(frozen=True)
class SufficientStatistics:
    """Sums over the maps of one batch (or several, added): n, UᵀY (r, V), YᵀY (V,), and max |Y| (V,)."""

    n: int
    uty: np.ndarray
    yty: np.ndarray
    abs_max: np.ndarray

    def __add__(self, other: SufficientStatistics) -> SufficientStatistics:
        return SufficientStatistics(self.n + other.n, self.uty + other.uty, self.yty + other.yty,
                                    np.maximum(self.abs_max, other.abs_max))


def batch_statistics(Y: np.ndarray, U: np.ndarray) -> SufficientStatistics:
    """Sufficient statistics of the maps ``Y`` (n_batch, V) with their rows ``U`` (n_batch, r) of the basis."""
    Y = np.asarray(Y, dtype=np.float64)
    return SufficientStatistics(n=Y.shape[0], uty=np.asarray(U).T @ Y, yty=np.einsum("ij,ij->j", Y, Y),
                                abs_max=np.max(np.abs(Y), axis=0) if len(Y) else np.zeros(Y.shape[1]))


def fit_from_statistics(stats: SufficientStatistics, basis: DesignBasis) -> glm.OLSFit:
    """OLS fit from the summed statistics: the same :class:`runner.glm.OLSFit` as :func:`runner.glm.ols_fit`, so
    every contrast function applies."""
    scaled_v = basis.Vt.T / basis.singular_values  # V S⁻¹, (p, r)
    beta = scaled_v @ stats.uty
    rss = stats.yty - np.einsum("rv,rv->v", stats.uty, stats.uty)
    rounding = np.maximum(ROUNDING_FACTOR * np.finfo(float).eps * stats.yty,
                          stats.n * (glm.CONSTANT_TOLERANCE * stats.abs_max) ** 2)
    rss = np.where(rss <= rounding, 0.0, rss)
    dof = stats.n - basis.singular_values.size
    with np.errstate(divide="ignore", invalid="ignore"):
        residual_variance = rss / dof if dof > 0 else np.full(rss.shape, np.nan)
    return glm.OLSFit(beta=beta, residual_variance=residual_variance, dof=dof,
                      covariance_unscaled=scaled_v @ scaled_v.T)


def statistics_task(Y: np.ndarray, U: np.ndarray, rows: slice, voxels: slice) -> SufficientStatistics:
    """One task: the statistics of maps ``rows`` over ``voxels`` (only that block of ``Y`` is read)."""
    block = np.array(read_block(Y, rows, voxels), dtype=np.float64)
    release_pages(Y)
    return batch_statistics(block, U[rows])


def fit_contrasts_by_batches(Y: np.ndarray, X: np.ndarray, contrasts: list[Contrast], *, batch_maps: int = 1000,
                             chunk_voxels: int | None = None, memory_budget_bytes: float | None = None,
                             executor: Executor | None = None) -> dict[str, glm.ContrastResult]:
    """Every contrast from sufficient statistics: tasks of ``batch_maps`` maps x a chunk of voxels.

    Parameters
    ----------
    Y : (n, V) data (a memmap works: each task reads its block).
    X : (n, p) design matrix.
    contrasts : contrasts to compute.
    batch_maps : maps per task (memory per task about ``BATCH_COPIES`` x 8 x batch_maps x chunk bytes).
    chunk_voxels : voxels per task; None: sized as :func:`runner.model.fit_contrasts` sizes its chunks, from
        ``memory_budget_bytes`` shared by the tasks in flight (one per worker).
    executor : where the tasks run (default: one local thread).

    Returns
    -------
    dict mapping contrast name to its :class:`runner.glm.ContrastResult` over all V voxels.
    """
    X = np.asarray(X, dtype=np.float64)
    n, n_voxels = Y.shape
    executor = executor or LocalExecutor(1)
    basis = DesignBasis.of(X)
    batch_maps = max(1, min(n, int(batch_maps)))
    if chunk_voxels is None:
        working = None
        if memory_budget_bytes is not None:
            results = RESULT_ARRAYS * 8 * n_voxels * sum(max(1, c.matrix.shape[0]) for c in contrasts)
            working = (float(memory_budget_bytes) - resident_bytes(Y) - results) / max(1, executor.n_workers)
        chunk_voxels = chunk_size_for(batch_maps, n_voxels, working, copies=BATCH_COPIES)
    row_batches = chunk_slices(n, batch_maps)
    voxel_chunks = chunk_slices(n_voxels, max(1, int(chunk_voxels)))
    log.info("fitting OLS from sufficient statistics at %d voxel(s) of %d map(s): %d batch(es) of up to %d map(s) "
             "x %d voxel chunk(s) of up to %d voxel(s)", n_voxels, n, len(row_batches), batch_maps,
             len(voxel_chunks), int(chunk_voxels))
    shared = executor.share(Y)
    tasks = [Task(statistics_task, (shared, basis.U, rows, voxels), weight=voxels.stop - voxels.start)
             for voxels in voxel_chunks for rows in row_batches]
    results = iter(executor.map(tasks))
    parts: list[dict[str, glm.ContrastResult]] = []
    for _ in voxel_chunks:
        total = next(results)
        for _ in row_batches[1:]:
            total = total + next(results)  # in row order: the same sums whatever ran where
        fit = fit_from_statistics(total, basis)
        parts.append({c.name: glm.compute_contrast(fit, c.matrix, c.stat_type) for c in contrasts})
    return {c.name: _concatenate([part[c.name] for part in parts]) for c in contrasts}
