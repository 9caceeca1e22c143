"""Permutation inference for one contrast: max-T, cluster size, cluster mass and TFCE with FWE control.

The data are fixed and only the design is shuffled, so many permutations are computed at once: for a block of B
elements the shuffled, orthonormal design rows are stacked into a (B r x n) matrix and multiplied with the (n x V)
residualised data (one GEMM instead of B matrix-vector products).

Model. The design ``X`` (n x p) is split by the contrast ``C`` (q x p) into an effect space (the whitened
estimator weights ``X^+' C'``, q columns) and a nuisance space (the part of ``col(X)`` orthogonal to it, i.e. the
model under ``C beta = 0``); this is the partition of Ridgway (2009) and Beckmann et al. (2001) used by PALM and
randomise (Winkler et al. 2014, appendix A). With an orthonormal basis ``U = [U_effect, U_nuisance]`` of
``col(X)``, ``A = U' Y*``, ``ss = ||Y*||^2`` (unchanged by permutations and sign-flips) and ``dof = n - rank(X)``:

    t = sqrt(dof) A_0 / sqrt(ss - ||A||^2)          F = (dof / q) ||A_effect||^2 / (ss - ||A||^2)

Regression methods (what is shuffled, Winkler et al. 2014 table 2):
- ``freedman_lane`` (default): residuals of the nuisance-only model; the nuisance fit does not change the test.
- ``ter_braak``: residuals of the full model; the observed statistic comes from the data themselves.
- ``manly``: the data themselves.

p-values. Element 0 of the permutation set is the identity and counts as one of the ``P`` elements:
``p = #{j : null_j >= observed} / P``. For the FWE methods ``null_j`` is the maximum over the image of element
``j`` (max |t| or max t, largest cluster size or mass, max |TFCE|) and ``null_0`` is the observed maximum. With
``P = n_perm + 1`` this is nilearn's ``(1 + #{h0 >= observed}) / (1 + n_perm)``. A null value within a relative
1e-10 of the observed one counts as a tie (>=): rounding must not break the ties an exact test relies on, such as
flipping every sign (which gives -t) or swapping every pair of a paired design.

Two-sided tests (the default, for t only): max-T uses |t|; clusters and TFCE are formed in each tail separately
(positive on t, negative on -t, cluster-forming threshold from ``cluster_forming_p / 2``), so a positive and a
negative cluster never merge, and each element's null value is the maximum over both tails. F tests are
one-tailed. Clusters are voxels above the threshold (strictly), their mass the sum of ``|stat| - threshold``
(nilearn's definition; randomise and PALM sum the statistic itself). nilearn's cluster p-values leave the identity
out of the null, which moves them by at most 1/P.

Speed and memory. Max-T alone never needs whole maps: :func:`chunk_null_maxima` takes one voxel chunk and a range
of permutations and returns per-permutation maxima and per-voxel exceedance counts, which combine exactly
(``np.maximum`` and ``+``), so the data never have to be residualised or held in float64 as a whole. Clusters and
TFCE need whole maps, so those runs hold the residualised data (n x V, float64) and split the permutations into
tasks sized by ``memory_budget_bytes``. Tasks run on ``n_jobs`` threads (numpy, BLAS and the graph code release
the GIL) with one BLAS thread each when threadpoolctl is installed; task boundaries do not depend on ``n_jobs``,
so results are identical for any number of workers.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as distributions

from runner.errors import RunnerError, did_you_mean
from runner.inference.permutation_sets import (
    SCHEMES,
    PermutationSet,
    check_blocks,
    choose_scheme,
    invariant_subspace,
    make_permutation_set,
)
from runner.inference.tfce import (
    EXACT,
    VoxelGraph,
    check_tfce_step,
    label_components,
    tfce,
    tfce_maxima,
    voxel_graph,
)

METHODS = ("maxt", "clustersize", "clustermass", "tfce")
SPATIAL_METHODS = ("clustersize", "clustermass", "tfce")
REGRESSION_METHODS = ("freedman_lane", "ter_braak", "manly")
DEFAULT_MEMORY_BUDGET = 512 * 2**20
PERMUTATION_BLOCK = 256  # permutations per GEMM in the max-T loop (keeps the working set in cache)
VOXEL_CHUNK = 4096  # voxels per chunk in the max-T loop
EXACT_FIT = 1e-10  # residual sum of squares below this fraction of the total: no statistic (NaN)
TIE_TOLERANCE = 1e-10  # null values within this relative distance of the observed one count as ties

StatType = Literal["t", "F"]


@dataclass(frozen=True)
class PermutationOptions:
    """Settings of a permutation test (see the module docstring for the conventions).

    ``n_permutations`` counts the identity. ``scheme`` is "auto" (sign-flips when permuting rows cannot move
    the effect, e.g. a one-sample test; permutations otherwise), "permutation" or "sign_flip".
    ``exchangeability_blocks`` gives one integer block label per row. ``tfce_dh`` None means max/100 per map,
    "exact" the continuous TFCE integral (see :mod:`runner.inference.tfce`).
    ``progress`` is False, True (a tqdm bar) or a callable ``(done, total)``. ``memory_budget_bytes`` bounds the
    working arrays of each worker (default 512 MiB), on top of the data and, for cluster and TFCE methods, their
    float64 residuals.
    """

    n_permutations: int = 10000
    seed: int | None = 0
    two_sided: bool = True
    method: str = "freedman_lane"
    exchangeability_blocks: np.ndarray | Sequence[int] | None = None
    whole_block: bool = False
    scheme: str = "auto"
    cluster_forming_p: float = 0.001
    connectivity: int = 26
    tfce_E: float = 0.5
    tfce_H: float = 2.0
    tfce_dh: float | str | None = None
    n_jobs: int = 1
    progress: bool | Callable[[int, int], None] = False
    memory_budget_bytes: int | None = None


@dataclass(frozen=True)
class PermutationResult:
    """Observed statistic, permutation p-values and null distributions for one contrast.

    Maps are in-mask vectors (V,) in the order of ``np.flatnonzero(mask)``. ``corrected_p[method]`` is the
    FWE-corrected p of each voxel (for cluster methods the p of the voxel's cluster, 1 outside clusters);
    ``logp`` is ``-log10`` of it. ``null_max[method]`` has one value per element, identity first.
    """

    stat: np.ndarray
    stat_type: StatType
    dof: int
    n_permutations_done: int
    exhaustive: bool
    scheme: str
    method: str
    two_sided: bool
    uncorrected_p: np.ndarray
    corrected_p: dict[str, np.ndarray]
    logp: dict[str, np.ndarray]
    null_max: dict[str, np.ndarray]
    clusters: dict[str, pd.DataFrame]
    tfce: np.ndarray | None
    cluster_forming_threshold: float | None
    permutations: PermutationSet
    messages: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class PermutationModel:
    """Orthonormal bases of a partitioned design: ``basis[:, :n_effects]`` spans the effect, the rest the nuisance.

    Only the first ``n_shuffled`` columns move under the permutations; the others (nuisance directions that
    every permutation leaves in place, such as the intercept when rows are permuted) project the shuffled data
    to the same value as the unshuffled data, so they are computed once instead of once per permutation.
    """

    basis: np.ndarray
    n_effects: int
    dof: int
    stat_type: StatType
    n_shuffled: int | None = None

    def __post_init__(self) -> None:
        if self.n_shuffled is None:
            object.__setattr__(self, "n_shuffled", self.basis.shape[1])

    @property
    def nuisance(self) -> np.ndarray:
        return self.basis[:, self.n_effects :]

    @property
    def moving(self) -> np.ndarray:
        """Basis columns whose projections change from one permutation to the next."""
        return self.basis[:, : self.n_shuffled]

    @property
    def fixed(self) -> np.ndarray:
        """Nuisance columns invariant under the permutations."""
        return self.basis[:, self.n_shuffled :]


def separate_invariant_nuisance(model: PermutationModel, invariant: np.ndarray) -> PermutationModel:
    """Move nuisance directions lying in ``invariant`` (vectors every permutation keeps) to the end of the basis.

    For a permutation P with P' u = u, ``u' (P R) = u' R``: such a direction adds the same sum of squares to the
    fit of every permutation. Found as the principal directions between the nuisance space and ``invariant``
    with cosine 1.
    """
    nuisance = model.nuisance
    if nuisance.shape[1] == 0 or invariant.shape[1] == 0:
        return model
    rotation, cosines, _ = np.linalg.svd(nuisance.T @ invariant, full_matrices=True)
    n_fixed = int(np.sum(cosines > 1 - 1e-10))
    if n_fixed == 0:
        return model
    rotated = nuisance @ rotation  # first n_fixed columns lie in the invariant space
    basis = np.hstack([model.basis[:, : model.n_effects], rotated[:, n_fixed:], rotated[:, :n_fixed]])
    return PermutationModel(np.ascontiguousarray(basis), model.n_effects, model.dof, model.stat_type,
                            n_shuffled=model.basis.shape[1] - n_fixed)


def partition_model(design: np.ndarray, contrast: np.ndarray) -> PermutationModel:
    """Split the design into effect and nuisance spaces for a contrast (Ridgway 2009; Winkler et al. 2014).

    Parameters
    ----------
    design : ndarray, shape (n, p)
    contrast : ndarray, shape (q, p) or (p,)

    Returns
    -------
    PermutationModel
    """
    design = np.asarray(design, dtype=np.float64)
    contrast = np.atleast_2d(np.asarray(contrast, dtype=np.float64))
    if design.ndim != 2:
        raise RunnerError(f"the design matrix must be 2D (maps x regressors), got shape {design.shape}")
    n_rows, n_columns = design.shape
    if contrast.ndim != 2 or contrast.shape[1] != n_columns:
        raise RunnerError(
            f"the contrast has {contrast.shape[-1]} columns but the design has {n_columns} regressors"
        )
    if not (np.all(np.isfinite(design)) and np.all(np.isfinite(contrast))):
        raise RunnerError("the design matrix and the contrast must be finite")
    left, singular, right_t = np.linalg.svd(design, full_matrices=False)
    tolerance = max(design.shape) * np.finfo(np.float64).eps * (singular[0] if singular.size else 0.0)
    rank = int(np.sum(singular > tolerance))
    if rank == 0:
        raise RunnerError("the design matrix is zero")
    left, singular, right = left[:, :rank], singular[:rank], right_t[:rank].T
    estimable = contrast @ right @ right.T
    if np.linalg.norm(contrast - estimable) > 1e-8 * max(1.0, np.linalg.norm(contrast)):
        raise RunnerError("the contrast is not estimable with this design (it weights a rank-deficient part)")
    weights = left @ np.diag(1.0 / singular) @ right.T @ contrast.T  # (n, q): effect = weights' Y
    gram = weights.T @ weights
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    if eigenvalues[0] <= 1e-10 * eigenvalues[-1] or eigenvalues[-1] <= 0:
        raise RunnerError("the rows of the F contrast are linearly dependent; remove the redundant rows")
    effect = weights @ eigenvectors @ np.diag(eigenvalues**-0.5) @ eigenvectors.T
    remainder = left - effect @ (effect.T @ left)
    nuisance_left = np.linalg.svd(remainder, full_matrices=False)[0]
    n_nuisance = rank - contrast.shape[0]
    nuisance = nuisance_left[:, :n_nuisance]
    dof = n_rows - rank
    if dof < 1:
        raise RunnerError(f"no residual degrees of freedom: {n_rows} maps for a design of rank {rank}")
    return PermutationModel(
        basis=np.ascontiguousarray(np.hstack([effect, nuisance])),
        n_effects=contrast.shape[0],
        dof=dof,
        stat_type="t" if contrast.shape[0] == 1 else "F",
    )


def residualise(data: np.ndarray, model: PermutationModel, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Data to shuffle and data giving the observed statistic, in float64.

    Freedman–Lane shuffles the nuisance-model residuals (which also give the observed statistic), ter Braak the
    full-model residuals and Manly the data.
    """
    data = np.asarray(data, dtype=np.float64)
    if method == "freedman_lane":
        nuisance = model.nuisance
        if nuisance.shape[1] == 0:
            return data, data
        residuals = data - nuisance @ (nuisance.T @ data)
        return residuals, residuals
    if method == "ter_braak":
        return data - model.basis @ (model.basis.T @ data), data
    return data, data


# -------------------------------------------------------------------------------------------- statistics


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


def _test_scores(
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


def _score_mode(model: PermutationModel, two_sided: bool) -> str:
    if model.stat_type == "F":
        return "F"
    return "abs" if two_sided else "signed"


def observed_scores(data: np.ndarray, model: PermutationModel, mode: str) -> np.ndarray:
    """Scores of the unshuffled data (n, V); NaN where the model fits exactly or the data are constant zero."""
    projections = (model.basis.T @ data)[None]
    sum_squares = np.einsum("ij,ij->j", data, data)
    scores = _test_scores(projections, sum_squares, model.n_effects, mode)[0]
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
    mode = _score_mode(model, two_sided)
    shuffled, _ = residualise(data, model, method)
    excluded = np.isnan(observed)
    if excluded.any():
        shuffled = shuffled.copy()
        shuffled[:, excluded] = 0.0
    sum_squares = _moving_sum_squares(shuffled, model)
    reference = _tie_reference(observed)
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
            scores = _test_scores(projections, sum_squares, n_effects, mode, workspace)
        maxima[first - start : last - start] = np.fmax.reduce(scores, axis=1, initial=-np.inf)
        exceeded = np.greater_equal(scores, reference, out=exceed_buffer[:count])
        exceedances += np.count_nonzero(exceeded, axis=0)
    if explained_fraction:  # back from u to s = u / (1 - |u|), keeping the sign of one-sided scores
        with np.errstate(divide="ignore", invalid="ignore"):
            maxima = maxima / (1.0 - np.abs(maxima))
    return maxima, exceedances


def _moving_sum_squares(data: np.ndarray, model: PermutationModel) -> np.ndarray:
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


# ------------------------------------------------------------------------------------------------ clusters


def cluster_forming_threshold(p: float, model: PermutationModel, two_sided: bool) -> float:
    """Statistic threshold for a cluster-forming p (two-sided t: p/2 in each tail)."""
    if not 0 < p < 1:
        raise RunnerError(f"cluster_forming_p must be in (0, 1), got {p}")
    if model.stat_type == "F":
        return float(distributions.f.isf(p, model.n_effects, model.dof))
    return float(distributions.t.isf(p / 2 if two_sided else p, model.dof))


def _clusters(
    stat_maps: np.ndarray, threshold: float, graph: VoxelGraph, two_sided: bool
) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]:
    """Suprathreshold clusters of each map: labels (B, V), count, and per cluster its map, size and mass.

    Voxels with ``stat > threshold`` (and ``stat < -threshold`` when two-sided) form clusters within their
    tail; the mass is the sum of ``|stat| - threshold`` over the cluster (nilearn's definition).
    """
    magnitude = np.abs(stat_maps) if two_sided else stat_maps
    active = magnitude > threshold
    tail = np.sign(stat_maps).astype(np.int8) if two_sided else None
    labels, n = label_components(active, graph, tail)
    members = labels >= 0
    label_of_member = labels[members]
    sizes = np.bincount(label_of_member, minlength=n).astype(np.float64)
    masses = np.bincount(label_of_member, weights=magnitude[members] - threshold, minlength=n)
    owner = np.empty(n, dtype=np.int64)
    owner[label_of_member] = np.nonzero(members)[0]
    return labels, n, owner, sizes, masses


def _cluster_maxima(
    stat_maps: np.ndarray, threshold: float, graph: VoxelGraph, two_sided: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Largest cluster size and mass of each map (0 without clusters)."""
    _, _, owner, sizes, masses = _clusters(stat_maps, threshold, graph, two_sided)
    largest_size = np.zeros(stat_maps.shape[0])
    largest_mass = np.zeros(stat_maps.shape[0])
    np.maximum.at(largest_size, owner, sizes)
    np.maximum.at(largest_mass, owner, masses)
    return largest_size, largest_mass


def _cluster_table(
    stat: np.ndarray,
    labels: np.ndarray,
    sizes: np.ndarray,
    masses: np.ndarray,
    p_values: np.ndarray,
    order_by: np.ndarray,
    graph: VoxelGraph,
) -> pd.DataFrame:
    """One row per observed cluster, largest ``order_by`` first, with its peak voxel (i, j, k)."""
    columns = ["cluster_id", "sign", "size_voxels", "mass", "p_fwe", "peak_stat", "peak_i", "peak_j", "peak_k"]
    if sizes.size == 0:
        return pd.DataFrame({name: pd.Series(dtype=float) for name in columns})
    members = np.flatnonzero(labels >= 0)
    by_height = members[np.argsort(-np.abs(stat[members]), kind="stable")]
    _, first = np.unique(labels[by_height], return_index=True)
    peaks = by_height[first]  # peak voxel of clusters 0..n-1
    rank = np.argsort(-order_by, kind="stable")
    coordinates = graph.coordinates[peaks[rank]]
    return pd.DataFrame(
        {
            "cluster_id": np.arange(1, rank.size + 1),
            "sign": np.sign(stat[peaks[rank]]).astype(int),
            "size_voxels": sizes[rank].astype(int),
            "mass": masses[rank],
            "p_fwe": p_values[rank],
            "peak_stat": stat[peaks[rank]],
            "peak_i": coordinates[:, 0],
            "peak_j": coordinates[:, 1],
            "peak_k": coordinates[:, 2],
        }
    )


# ------------------------------------------------------------------------------------------------ p-values


def _tie_reference(observed: np.ndarray) -> np.ndarray:
    """Observed values lowered by the tie tolerance (NaN -> +inf: never exceeded)."""
    lowered = observed - TIE_TOLERANCE * np.abs(observed)
    return np.where(np.isnan(observed), np.inf, lowered)


def fwe_p_values(observed: np.ndarray, null_max: np.ndarray) -> np.ndarray:
    """``#{j : null_max_j >= observed} / P`` for each observed value, ties within 1e-10 (NaN observed -> 1)."""
    ordered = np.sort(null_max)
    counts = ordered.size - np.searchsorted(ordered, _tie_reference(observed), side="left")
    p = counts / ordered.size
    return np.where(np.isnan(observed), 1.0, p)


# ------------------------------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class _Job:
    """Everything the tasks share (read-only)."""

    data: np.ndarray
    model: PermutationModel
    permutations: PermutationSet
    observed: np.ndarray
    mode: str
    method: str
    methods: tuple[str, ...]
    graph: VoxelGraph | None
    threshold: float | None
    options: PermutationOptions
    spatial_two_sided: bool
    sum_squares: np.ndarray | None = None


def _maxt_task(job: _Job, first: int, last: int, voxel_chunk: int) -> dict[str, np.ndarray]:
    n_voxels = job.data.shape[1]
    maxima = np.full(last - first, -np.inf)
    exceedances = np.zeros(n_voxels, dtype=np.int64)
    workspace: dict[str, np.ndarray] = {}
    for v0 in range(0, n_voxels, voxel_chunk):
        v1 = min(n_voxels, v0 + voxel_chunk)
        chunk_max, chunk_exceed = chunk_null_maxima(
            job.data[:, v0:v1], job.model, job.permutations, job.observed[v0:v1],
            job.method, job.options.two_sided, first, last, workspace=workspace,
        )
        np.maximum(maxima, chunk_max, out=maxima)
        exceedances[v0:v1] += chunk_exceed
    return {"maxt": maxima, "exceedances": exceedances}


def _spatial_task(job: _Job, first: int, last: int) -> dict[str, np.ndarray]:
    """Whole statistic maps for elements first..last-1, then their max-T, cluster and TFCE maxima."""
    model, options = job.model, job.options
    orders, signs = job.permutations.rows(first, last)
    rows = shuffled_basis(model.moving, orders, signs)
    projections = (rows @ job.data).reshape(last - first, model.n_shuffled, -1)
    map_mode = "F" if model.stat_type == "F" else "signed"
    scores = _test_scores(projections, job.sum_squares, model.n_effects, map_mode)
    del projections
    test = np.abs(scores) if job.mode == "abs" else scores
    out: dict[str, np.ndarray] = {
        "maxt": np.fmax.reduce(test, axis=1, initial=-np.inf),
        "exceedances": np.count_nonzero(test >= _tie_reference(job.observed), axis=0),
    }
    del test
    stat_maps = scores_to_statistics(scores, model, map_mode)
    del scores
    if "clustersize" in job.methods or "clustermass" in job.methods:
        out["clustersize"], out["clustermass"] = _cluster_maxima(
            stat_maps, job.threshold, job.graph, job.spatial_two_sided
        )
    if "tfce" in job.methods:
        out["tfce"] = tfce_maxima(
            stat_maps, job.graph, options.tfce_E, options.tfce_H, options.tfce_dh, job.spatial_two_sided
        )
    return out


def _progress_reporter(progress: bool | Callable[[int, int], None], total: int):
    """A function ``advance(count)`` and a ``close()`` for a tqdm bar, a callback or nothing."""
    if callable(progress):
        done = [0]

        def advance(count: int) -> None:
            done[0] += count
            progress(done[0], total)

        return advance, lambda: None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="perm", desc="permutations")
        return bar.update, bar.close
    return (lambda count: None), (lambda: None)


def _run_tasks(
    tasks: list[tuple[int, int]],
    work: Callable[[int, int], dict[str, np.ndarray]],
    n_jobs: int,
    progress: bool | Callable[[int, int], None],
    total: int,
) -> list[dict[str, np.ndarray]]:
    """Run tasks (element ranges) serially or on threads; results come back in task order."""
    advance, close = _progress_reporter(progress, total)
    advance(1)  # the identity
    results: list[dict[str, np.ndarray] | None] = [None] * len(tasks)
    try:
        if n_jobs == 1 or len(tasks) == 1:
            for index, (first, last) in enumerate(tasks):
                results[index] = work(first, last)
                advance(last - first)
        else:
            with _single_threaded_blas(), ThreadPoolExecutor(max_workers=n_jobs) as pool:
                futures = {pool.submit(work, first, last): index for index, (first, last) in enumerate(tasks)}
                for future, index in futures.items():
                    results[index] = future.result()
                    advance(tasks[index][1] - tasks[index][0])
    finally:
        close()
    return results  # type: ignore[return-value]


def _single_threaded_blas():
    """One BLAS thread per worker while workers run in parallel (threadpoolctl if installed).

    Every worker calling a multi-threaded BLAS oversubscribes the cores, which OpenBLAS handles badly; the
    results do not change (GEMM splits its output, not its sums, between threads).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _resolve_jobs(n_jobs: int) -> int:
    if n_jobs == 0:
        raise RunnerError("n_jobs must be a positive number of workers, or negative to count back from all CPUs")
    cpus = os.cpu_count() or 1
    return max(1, cpus + 1 + n_jobs) if n_jobs < 0 else int(n_jobs)


def _validate(
    data: np.ndarray, design: np.ndarray, mask: np.ndarray | None, methods: Sequence[str], options: PermutationOptions
) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(dict.fromkeys(str(m).lower() for m in methods))
    if not methods:
        raise RunnerError(f"no permutation method requested; choose among {', '.join(METHODS)}")
    for name in methods:
        if name not in METHODS:
            raise RunnerError(f"unknown permutation method {name!r}: {did_you_mean(name, METHODS)}")
    if options.method not in REGRESSION_METHODS:
        raise RunnerError(f"unknown permutation regression method {options.method!r}: "
                          f"{did_you_mean(options.method, REGRESSION_METHODS)}")
    if options.scheme not in SCHEMES:
        raise RunnerError(f"unknown permutation scheme {options.scheme!r}: {did_you_mean(options.scheme, SCHEMES)}")
    if data.ndim != 2:
        raise RunnerError(f"the data must be a 2D array (maps x voxels), got shape {data.shape}")
    if data.shape[0] != design.shape[0]:
        raise RunnerError(f"the data have {data.shape[0]} maps but the design matrix has {design.shape[0]} rows")
    if data.shape[1] == 0:
        raise RunnerError("the data have no voxels")
    if options.tfce_E <= 0 or options.tfce_H <= 0:
        raise RunnerError(f"tfce_E and tfce_H must be positive, got {options.tfce_E} and {options.tfce_H}")
    check_tfce_step(options.tfce_dh)
    if any(m in SPATIAL_METHODS for m in methods):
        if mask is None:
            spatial = ", ".join(m for m in methods if m in SPATIAL_METHODS)
            raise RunnerError(f"permutation methods {spatial} need the 3D mask")
        if int(np.count_nonzero(mask)) != data.shape[1]:
            raise RunnerError(f"the mask has {int(np.count_nonzero(mask))} voxels but the data have {data.shape[1]}")
    return methods


def permutation_inference(
    Y: np.ndarray,
    X: np.ndarray,
    contrast: np.ndarray,
    mask: np.ndarray | None,
    methods: Sequence[str] = ("maxt",),
    options: PermutationOptions | None = None,
) -> PermutationResult:
    """Permutation test of one contrast with FWE-corrected p-values for the requested methods.

    Parameters
    ----------
    Y : ndarray, shape (n, V)
        In-mask data, one row per map (float64, float32 or a memmap).
    X : ndarray, shape (n, p)
        Design matrix.
    contrast : ndarray, shape (q, p) or (p,)
        t contrast when q == 1, F contrast otherwise.
    mask : ndarray of bool, shape (X, Y, Z), or None
        Needed for cluster and TFCE methods; voxel order is ``np.flatnonzero(mask)``.
    methods : sequence of {"maxt", "clustersize", "clustermass", "tfce"}
    options : PermutationOptions

    Returns
    -------
    PermutationResult
    """
    options = options or PermutationOptions()
    if not hasattr(Y, "ndim"):
        Y = np.asarray(Y)
    design = np.asarray(X, dtype=np.float64)
    if design.ndim == 1:
        design = design[:, None]
    methods = _validate(Y, design, mask, methods, options)
    if not np.all(np.isfinite(Y)):
        raise RunnerError("the data contain NaN or infinite values inside the mask")
    model = partition_model(design, contrast)
    blocks = check_blocks(
        None if options.exchangeability_blocks is None else np.asarray(options.exchangeability_blocks),
        design.shape[0], options.whole_block,
    )
    scheme = options.scheme
    if scheme == "auto":
        scheme = choose_scheme(model.basis[:, : model.n_effects], blocks, options.whole_block)
    permutations = make_permutation_set(
        design, options.n_permutations, options.seed, scheme, blocks, options.whole_block
    )
    if scheme == "permutation":
        model = separate_invariant_nuisance(model, invariant_subspace(blocks, design.shape[0], options.whole_block))
    two_sided = bool(options.two_sided) and model.stat_type == "t"
    mode = _score_mode(model, two_sided)
    n_jobs = _resolve_jobs(options.n_jobs)
    budget = int(options.memory_budget_bytes or DEFAULT_MEMORY_BUDGET)
    n_elements, (n_rows, n_voxels) = permutations.size, Y.shape
    rank = model.basis.shape[1]

    messages = [permutations.describe()]
    if permutations.size < 20:
        messages.append(f"only {permutations.size} elements: the smallest attainable p-value is 1/{permutations.size}")
    messages.append(
        f"{model.stat_type} test, {model.dof} degrees of freedom, {options.method.replace('_', '-')} regression"
        + (", two-sided" if two_sided else ", one-sided" if model.stat_type == "t" else "")
    )

    spatial = [m for m in methods if m in SPATIAL_METHODS]
    graph = voxel_graph(mask, options.connectivity) if spatial else None
    threshold = None
    if "clustersize" in methods or "clustermass" in methods:
        threshold = cluster_forming_threshold(options.cluster_forming_p, model, two_sided)
        messages.append(
            f"cluster-forming threshold {model.stat_type} > {threshold:.4g} (p < {options.cluster_forming_p}"
            f"{', two-sided' if two_sided else ''}), connectivity {options.connectivity}"
        )

    # observed statistics, chunk by chunk over voxels; two-sided t tests compare |t|
    map_mode = "F" if model.stat_type == "F" else "signed"
    signed = np.empty(n_voxels)
    chunk = max(1, min(n_voxels, budget // (8 * (3 * n_rows + 4 * rank + 8))))
    for v0 in range(0, n_voxels, chunk):
        _, observed_data = residualise(Y[:, v0 : v0 + chunk], model, options.method)
        signed[v0 : v0 + chunk] = observed_scores(observed_data, model, map_mode)
    observed = np.abs(signed) if mode == "abs" else signed
    stat = scores_to_statistics(signed, model, map_mode)
    excluded = np.isnan(observed)
    if excluded.all():
        raise RunnerError("every voxel has zero residual variance; nothing to test")
    if excluded.any():
        messages.append(f"{int(excluded.sum())} voxel(s) with zero residual variance get no statistic (NaN, p = 1)")

    if spatial:
        shuffled, _ = residualise(Y, model, options.method)
        if excluded.any():
            shuffled = shuffled.copy() if shuffled is Y else shuffled
            shuffled[:, excluded] = 0.0
        # fixed by the budget alone (not by n_jobs) so that results do not depend on the number of workers
        per_element = 8 * n_voxels * (rank + 4) + 40 * n_voxels
        task_size = max(1, min(n_elements - 1, budget // per_element))
        job = _Job(shuffled, model, permutations, observed, mode, options.method, methods, graph,
                   threshold, options, two_sided, _moving_sum_squares(shuffled, model))
        work = lambda first, last: _spatial_task(job, first, last)  # noqa: E731
    else:
        voxel_chunk = max(256, min(VOXEL_CHUNK, n_voxels))
        task_size = max(PERMUTATION_BLOCK, min(1024, math.ceil((n_elements - 1) / max(1, 4 * n_jobs))))
        task_size = PERMUTATION_BLOCK * math.ceil(task_size / PERMUTATION_BLOCK)
        job = _Job(Y, model, permutations, observed, mode, options.method, methods, None, None, options, two_sided)
        work = lambda first, last: _maxt_task(job, first, last, voxel_chunk)  # noqa: E731
    tasks = [(first, min(n_elements, first + task_size)) for first in range(1, n_elements, task_size)]
    results = _run_tasks(tasks, work, n_jobs, options.progress, n_elements)

    def gather(key: str) -> np.ndarray:
        return np.concatenate([r[key] for r in results]) if results else np.zeros(0)

    exceedances = sum((r["exceedances"] for r in results), np.zeros(n_voxels, dtype=np.int64))
    uncorrected = np.where(excluded, 1.0, (1.0 + exceedances) / n_elements)
    stat = np.where(excluded, np.nan, stat)

    corrected: dict[str, np.ndarray] = {}
    null_max: dict[str, np.ndarray] = {}
    clusters: dict[str, pd.DataFrame] = {}
    if "maxt" in methods:
        null_scores = np.concatenate([[np.nanmax(observed)], gather("maxt")])
        corrected["maxt"] = fwe_p_values(observed, null_scores)
        null_max["maxt"] = scores_to_statistics(null_scores, model, mode)

    tfce_map = None
    if spatial:
        stat_for_maps = np.where(excluded, 0.0, stat)
        if "tfce" in methods:
            tfce_map = tfce(stat_for_maps, graph, options.tfce_E, options.tfce_H, options.tfce_dh, two_sided)
            null_tfce = np.concatenate([[np.max(np.abs(tfce_map))], gather("tfce")])
            null_max["tfce"] = null_tfce
            corrected["tfce"] = fwe_p_values(np.abs(tfce_map), null_tfce)
        if threshold is not None:
            labels, n_clusters, _, sizes, masses = _clusters(stat_for_maps[None], threshold, graph, two_sided)
            labels = labels[0]
            for name, values in (("clustersize", sizes), ("clustermass", masses)):
                if name not in methods:
                    continue
                null = np.concatenate([[values.max() if n_clusters else 0.0], gather(name)])
                null_max[name] = null
                cluster_p = fwe_p_values(values, null)
                voxel_p = np.append(cluster_p, 1.0)  # label -1 (no cluster) reads the appended 1
                corrected[name] = voxel_p[np.where(labels >= 0, labels, cluster_p.size)]
                clusters[name] = _cluster_table(stat_for_maps, labels, sizes, masses, cluster_p, values, graph)
        if "tfce" in methods:
            step = ("max/100 per map and tail" if options.tfce_dh is None
                    else "exact integral" if options.tfce_dh == EXACT else f"dh = {options.tfce_dh}")
            messages.append(
                f"TFCE E = {options.tfce_E}, H = {options.tfce_H}, {step}, connectivity {options.connectivity}"
            )

    corrected = {m: corrected[m] for m in methods}
    return PermutationResult(
        stat=stat,
        stat_type=model.stat_type,
        dof=model.dof,
        n_permutations_done=n_elements,
        exhaustive=permutations.exhaustive,
        scheme=permutations.scheme,
        method=options.method,
        two_sided=two_sided,
        uncorrected_p=uncorrected,
        corrected_p=corrected,
        logp={m: -np.log10(p) for m, p in corrected.items()},
        null_max={m: null_max[m] for m in methods},
        clusters=clusters,
        tfce=tfce_map,
        cluster_forming_threshold=threshold,
        permutations=permutations,
        messages=messages,
    )
