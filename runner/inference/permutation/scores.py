"""Scores of shuffled designs: the GEMM kernels that turn blocks of permutations into statistics.

For a block of B elements the shuffled rows of the orthonormal model basis are stacked into a (B r x n) matrix and
multiplied with the (n x V) shuffled data (one GEMM instead of B matrix-vector products). With ``U = [U_effect,
U_nuisance]``, ``A = U' Y*``, ``ss = ||Y*||^2`` (unchanged by permutations and sign-flips) and ``dof = n - rank(X)``:

    t = sqrt(dof) A_0 / sqrt(ss - ||A||^2)          F = (dof / q) ||A_effect||^2 / (ss - ||A||^2)

Kernels compare *scores*, monotone in the statistic and cheaper: t^2 / dof (two-sided t), t |t| / dof (one-sided
t), q F / dof (F); :func:`scores_to_statistics` converts back.
"""

from __future__ import annotations

import numpy as np

from runner.inference.permutation.model import PermutationModel, residualise
from runner.inference.permutation.pvalues import tie_reference
from runner.inference.permutation_sets import PermutationSet

PERMUTATION_BLOCK = 256  # permutations per GEMM in the max-T loop (keeps the working set in cache)
EXACT_FIT = 1e-10  # residual sum of squares below this fraction of the total: no statistic (NaN)


def shuffled_basis(basis: np.ndarray, orders: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Rows ``G`` with ``G_j @ R = basis' (signs_j * R[orders_j])`` for each element j, stacked as (B r, n)."""
    n_elements, n_rows = signs.shape
    identity = np.arange(n_rows)
    if np.all(orders == identity):
        stacked = basis.T[None, :, :] * signs[:, None, :]
    else:
        inverse = np.argsort(orders, axis=1)
        moved_signs = np.take_along_axis(signs, inverse, axis=1)
        stacked = np.transpose(basis[inverse], (0, 2, 1)) * moved_signs[:, None, :]
    return np.ascontiguousarray(stacked).reshape(n_elements * basis.shape[1], n_rows)


def scores_from_projections(
    projections: np.ndarray,
    sum_squares: np.ndarray,
    n_effects: int,
    mode: str,
    workspace: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Scores monotone in the test statistic from projections A = U' Y* of shape (B, r, V).

    ``mode`` "abs": t^2 / dof (two-sided t); "signed": t |t| / dof (one-sided t, signed maps); "F": q F / dof.
    With a ``workspace`` the result lives in its scratch arrays (valid until the next call).
    """
    count, rank, n_voxels = projections.shape
    if workspace is None:
        explained, numerator = np.empty((count, n_voxels)), np.empty((count, n_voxels))
    else:
        explained = _scratch(workspace, "explained", count * n_voxels, np.float64).reshape(count, n_voxels)
        numerator = _scratch(workspace, "numerator", count * n_voxels, np.float64).reshape(count, n_voxels)
    first = projections[:, 0, :]
    np.multiply(first, first, out=explained)
    for i in range(1, n_effects):
        explained += projections[:, i, :] ** 2
    if mode == "signed":
        np.abs(first, out=numerator)
        numerator *= first
    else:
        numerator[...] = explained
    for i in range(n_effects, rank):
        component = projections[:, i, :]
        explained += component * component
    residual = np.subtract(sum_squares, explained, out=explained)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(numerator, residual, out=numerator)


def scores_to_statistics(scores: np.ndarray, model: PermutationModel, mode: str) -> np.ndarray:
    """Convert scores back to t (signed unless mode is "abs") or F."""
    if mode == "F":
        return scores * (model.dof / model.n_effects)
    magnitude = np.sqrt(np.abs(scores) * model.dof)
    return magnitude if mode == "abs" else np.copysign(magnitude, scores)


def score_mode(model: PermutationModel, two_sided: bool) -> str:
    """How scores compare across elements: "F", "abs" (two-sided t: |t|) or "signed" (one-sided t)."""
    if model.stat_type == "F":
        return "F"
    return "abs" if two_sided else "signed"


def observed_scores(data: np.ndarray, model: PermutationModel, mode: str) -> np.ndarray:
    """Scores of the unshuffled data (n, V); NaN where the model fits exactly or the data are constant zero."""
    projections = (model.basis.T @ data)[None]
    sum_squares = np.einsum("ij,ij->j", data, data)
    scores = scores_from_projections(projections, sum_squares, model.n_effects, mode)[0]
    residual = sum_squares - np.einsum("ij,ij->j", projections[0], projections[0])
    scores[~(residual > EXACT_FIT * sum_squares)] = np.nan
    return scores


def chunk_null_maxima(
    data: np.ndarray,
    model: PermutationModel,
    permutations: PermutationSet,
    observed: np.ndarray,
    method: str = "freedman_lane",
    two_sided: bool = True,
    start: int = 1,
    stop: int | None = None,
    block: int = PERMUTATION_BLOCK,
    workspace: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-permutation maximum score over one voxel chunk, and per-voxel exceedance counts.

    Everything a worker needs travels in the arguments, so chunks can be computed anywhere and combined with
    ``np.maximum`` (maxima) and ``+`` (counts).

    Parameters
    ----------
    data : ndarray, shape (n, Vc)
        Raw data of the chunk (any float dtype); residualised here according to ``method``.
    model : PermutationModel
    permutations : PermutationSet
    observed : ndarray, shape (Vc,)
        Observed scores of the chunk (:func:`observed_scores`); NaN voxels take no part.
    method, two_sided : see :class:`PermutationOptions`
    start, stop : int
        Elements of the permutation set to run (default: all but the identity).
    block : int
        Elements per GEMM.
    workspace : dict, optional
        Scratch arrays kept between calls (filled on first use); reusing them avoids the page faults of fresh
        multi-megabyte temporaries for every chunk.

    Returns
    -------
    maxima : ndarray, shape (stop - start,)
        Largest score of each element over the chunk (-inf when every voxel is excluded).
    exceedances : ndarray of int64, shape (Vc,)
        Number of elements whose score is at least the observed one.
    """
    stop = permutations.size if stop is None else stop
    mode = score_mode(model, two_sided)
    shuffled, _ = residualise(data, model, method)
    excluded = np.isnan(observed)
    if excluded.any():
        shuffled = shuffled.copy()
        shuffled[:, excluded] = 0.0
    sum_squares = moving_sum_squares(shuffled, model)
    reference = tie_reference(observed)
    n_effects, rank = model.n_effects, model.n_shuffled
    # Without nuisance the score s = e / (ss - e) is a monotone function of the explained fraction u = e / ss:
    # comparing and maximising u saves two passes over every (permutation x voxel) block.
    explained_fraction = rank == n_effects
    if explained_fraction:
        inverse_sum_squares = 1.0 / sum_squares
        with np.errstate(divide="ignore", invalid="ignore"):
            reference = np.where(np.isinf(reference), np.inf, reference / (1.0 + np.abs(reference)))
    maxima = np.full(stop - start, -np.inf)
    n_voxels = data.shape[1]
    exceedances = np.zeros(n_voxels, dtype=np.int64)
    block = max(1, min(block, stop - start))
    workspace = {} if workspace is None else workspace
    projection_buffer = _scratch(workspace, "projections", block * rank * n_voxels, np.float64)
    projection_buffer = projection_buffer.reshape(block * rank, n_voxels)
    score_buffer = _scratch(workspace, "scores", block * n_voxels, np.float64).reshape(block, n_voxels)
    exceed_buffer = _scratch(workspace, "exceeded", block * n_voxels, np.bool_).reshape(block, n_voxels)
    for first in range(start, stop, block):
        last = min(stop, first + block)
        count = last - first
        orders, signs = permutations.rows(first, last)
        rows = shuffled_basis(model.moving, orders, signs)
        projections = np.matmul(rows, shuffled, out=projection_buffer[: count * rank]).reshape(count, rank, -1)
        if explained_fraction:
            scores = _explained_fractions(projections, inverse_sum_squares, mode, score_buffer[:count])
        else:
            scores = scores_from_projections(projections, sum_squares, n_effects, mode, workspace)
        maxima[first - start : last - start] = np.fmax.reduce(scores, axis=1, initial=-np.inf)
        exceeded = np.greater_equal(scores, reference, out=exceed_buffer[:count])
        exceedances += np.count_nonzero(exceeded, axis=0)
    if explained_fraction:  # back from u to s = u / (1 - |u|), keeping the sign of one-sided scores
        with np.errstate(divide="ignore", invalid="ignore"):
            maxima = maxima / (1.0 - np.abs(maxima))
    return maxima, exceedances


def moving_sum_squares(data: np.ndarray, model: PermutationModel) -> np.ndarray:
    """Per-voxel sum of squares left after the fixed (permutation-invariant) nuisance directions.

    Permutations and sign-flips keep ``||Y*||^2``, and the fixed directions explain the same amount in every
    permutation, so subtracting it once leaves the moving part of the fit. All-zero voxels get 1 (score 0).
    """
    sum_squares = np.einsum("ij,ij->j", data, data)
    fixed = model.fixed
    if fixed.shape[1]:
        fixed_projection = fixed.T @ data
        sum_squares -= np.add.reduce(fixed_projection * fixed_projection, axis=0)
    sum_squares[~(sum_squares > 0)] = 1.0
    return sum_squares


def _scratch(workspace: dict[str, np.ndarray], name: str, size: int, dtype) -> np.ndarray:
    """A flat scratch array of at least ``size`` elements, kept in ``workspace`` for the next call."""
    array = workspace.get(name)
    if array is None or array.size < size:
        array = workspace[name] = np.empty(size, dtype=dtype)
    return array[:size]


def _explained_fractions(
    projections: np.ndarray, inverse_sum_squares: np.ndarray, mode: str, out: np.ndarray
) -> np.ndarray:
    """u = ||A_effect||^2 / ss (signed by A_0 in "signed" mode) for a model without nuisance, into ``out``."""
    first = projections[:, 0, :]
    if mode == "signed":
        np.abs(first, out=out)
        out *= first
    else:
        np.multiply(first, first, out=out)
        for i in range(1, projections.shape[1]):
            out += projections[:, i, :] ** 2
    out *= inverse_sum_squares
    return out
