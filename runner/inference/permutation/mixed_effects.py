"""The mixed-effects statistic (model=mfx) under sign-flipping: z of the weighted t / F at every flip.

Rows of a mixed-effects model have their own variances ``s_i + tau2``, so they are not exchangeable and rows are
never permuted: the residuals are sign-flipped (independent and symmetric errors, ISE; Winkler et al. 2014, as for
variance groups). Each flip's statistic is the map's statistic -- weighted least squares, Knapp-Hartung variance
(or the model-based one), t or F referred to the voxel's degrees of freedom and converted to z, so that voxels with
different weights (and different effective dof) are compared on one scale for the maximum, as PALM's ``-zstat``.

Two ways to weigh a flipped dataset (``weights``):

- ``"fixed"`` (default): the weights ``1 / (s_i + tau2)`` of the unpermuted fit are held at every flip (the
  plug-in scheme). The statistic of a flip is then linear in the flipped residuals, so a block of flips is a few
  GEMMs like the OLS kernel: ``c beta* = signs @ ((X k) w e)`` with ``k = (X'WX)^-1 c'``, and the Knapp-Hartung
  sum ``e*'We* = e'We - b*' (X'WX)^-1 b*`` with ``b* = X'W e*`` (``e'We`` is unchanged by a flip). It is an
  approximation: tau2 is a function of the data that a flip changes, and the test is exact only for statistics
  recomputed whole at every flip. ``benchmarks/bench_mfx_permutation.py`` measures what it costs.
- ``"refit"``: tau2 (REML or DerSimonian-Laird, as the maps), the weights and the statistic are re-estimated at
  every flip (what metafor's ``permutest`` does for meta-regression; Viechtbauer et al. 2015). The statistic is
  then one fixed function of the data, so a one-sample test is exact under ISE; it costs a REML fit per flip and
  voxel (about 100 times the fixed scheme).

Both use the engine's regression methods: Freedman-Lane flips the nuisance-model (OLS) residuals; every
statistic here is unchanged by adding a vector of the nuisance space (weighted fits absorb it exactly, and tau2
depends on the data only through their residuals), so those residuals give the observed statistic too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runner import mfx, stats
from runner.errors import RunnerError
from runner.inference.permutation.pvalues import blockwise_null
from runner.inference.permutation_sets import PermutationSet

WEIGHTS = ("fixed", "refit")
VOXEL_CHUNK = 1024  # voxels per block of flips (fixed weights)
REFIT_COLUMNS = 32768  # flips x voxels fitted at once when tau2 is re-estimated (about 12 (n x columns) arrays)
SCHEME_REASON = ("mixed effects: every map has its own variance s_i + tau2, so rows are not exchangeable and the "
                 "residuals are sign-flipped instead (independent and symmetric errors, ISE)")


@dataclass(frozen=True)
class MixedEffectsKernel:
    """What the mixed-effects statistic needs besides the data.

    Attributes
    ----------
    design : ndarray (n, p)
    contrast : ndarray (q, p)
        t contrast when q == 1, F otherwise.
    variances : ndarray (n, V)
        First-level variances of the maps (positive).
    tau2 : ndarray (V,)
        Between-subject variance of the unpermuted fit (the fixed weights' tau2).
    estimator, knapp_hartung, dof :
        As :func:`runner.mfx.mfx_fit`.
    weights : {"fixed", "refit"}
    """

    design: np.ndarray
    contrast: np.ndarray
    variances: np.ndarray
    tau2: np.ndarray
    estimator: str = "reml"
    knapp_hartung: bool = True
    dof: str = "effective"
    weights: str = "fixed"

    @property
    def statistic(self) -> str:
        return "z"

    @property
    def n_effects(self) -> int:
        return int(self.contrast.shape[0])

    @property
    def working_rows(self) -> int:
        """Arrays of (elements x voxels) held at once, for memory budgets."""
        return 2 * self.design.shape[1] + 6


def make_kernel(design: np.ndarray, contrast: np.ndarray, variances: np.ndarray, *, estimator: str = "reml",
                knapp_hartung: bool = True, dof: str = "effective", weights: str = "fixed",
                tau2: np.ndarray | None = None) -> MixedEffectsKernel:
    """Check the variances and fit tau2 of the unpermuted data once (unless given)."""
    if weights not in WEIGHTS:
        raise RunnerError(f"mixed-effects permutation weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    design = np.asarray(design, dtype=np.float64)
    contrast = np.atleast_2d(np.asarray(contrast, dtype=np.float64))
    variances = np.asarray(variances, dtype=np.float64)
    if variances.ndim != 2 or variances.shape[0] != design.shape[0]:
        raise RunnerError(f"the first-level variances have shape {variances.shape}; the design has "
                          f"{design.shape[0]} rows")
    if not np.all(np.isfinite(variances)) or np.any(variances <= 0):
        raise RunnerError("the first-level variances must be positive and finite inside the mask")
    if tau2 is None:
        tau2 = np.zeros(variances.shape[1])
    return MixedEffectsKernel(design=design, contrast=contrast, variances=variances,
                              tau2=np.asarray(tau2, dtype=np.float64), estimator=estimator,
                              knapp_hartung=knapp_hartung, dof=dof, weights=weights)


def fit_tau2(kernel: MixedEffectsKernel, data: np.ndarray, voxels: slice) -> np.ndarray:
    """tau2 of the unpermuted data at ``voxels`` (the fixed weights), as the maps estimate it."""
    fit = mfx.mfx_fit(data, kernel.variances[:, voxels], kernel.design, estimator=kernel.estimator,
                      knapp_hartung=kernel.knapp_hartung, dof=kernel.dof)
    return fit.tau2


def flipped_statistics(kernel: MixedEffectsKernel, data: np.ndarray, voxels: slice, signs: np.ndarray) -> np.ndarray:
    """z of the mixed-effects statistic for each sign-flip of ``data`` (n, v) at ``voxels``: (B, v).

    ``signs`` (B, n) are the flips (rows are never reordered). NaN where the statistic is undefined.
    """
    data = np.asarray(data, dtype=np.float64)
    S = kernel.variances[:, voxels]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kernel.weights == "refit":
            return _refit_statistics(kernel, data, S, signs)
        return _fixed_statistics(kernel, data, S, kernel.tau2[voxels], signs)


def _refit_statistics(kernel: MixedEffectsKernel, data: np.ndarray, S: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Every flip fitted whole (tau2, weights, statistic), columns of flips x voxels at a time."""
    n, v = data.shape
    count = signs.shape[0]
    out = np.empty((count, v))
    per_step = max(1, REFIT_COLUMNS // max(v, 1))
    for first in range(0, count, per_step):
        last = min(count, first + per_step)
        flipped = signs[first:last, :, None] * data[None]  # (b, n, v)
        columns = flipped.transpose(1, 0, 2).reshape(n, -1)
        fit = mfx.mfx_fit(columns, np.tile(S, (1, last - first)), kernel.design, estimator=kernel.estimator,
                          knapp_hartung=kernel.knapp_hartung, dof=kernel.dof)
        stat_type = "t" if kernel.n_effects == 1 else "F"
        out[first:last] = mfx.compute_contrast(fit, kernel.contrast if stat_type == "F" else kernel.contrast[0],
                                               stat_type).z.reshape(last - first, v)
    return out


def _fixed_statistics(kernel: MixedEffectsKernel, data: np.ndarray, S: np.ndarray, tau2: np.ndarray,
                      signs: np.ndarray) -> np.ndarray:
    """Weights of the unpermuted fit held at every flip: GEMMs of the flips with weighted residual products."""
    X, C = kernel.design, kernel.contrast
    n, p = X.shape
    W = 1.0 / (S + tau2)
    A = mfx.invert_information(mfx.weighted_gram(X, W), X)  # (v, p, p) (X'WX)^-1, the same at every flip
    rank = mfx.design_rank(X)
    nominal = n - rank
    weighted = W * data  # w e
    # b*_j = X_j' W e* for every flip: one GEMM per design column
    projections = np.stack([signs @ (X[:, [j]] * weighted) for j in range(p)], axis=1)  # (B, p, v)
    effects = np.einsum("qi,vij,bjv->bqv", C, A, projections)  # C beta* (B, q, v)
    if kernel.knapp_hartung and nominal > 0:
        total = np.einsum("nv,nv->v", W, data * data)  # e'We, unchanged by a flip
        explained = np.einsum("biv,vij,bjv->bv", projections, A, projections)
        scale = np.maximum(total - explained, 0.0) / nominal
    else:
        scale = np.ones((1, data.shape[1]))
    voxel_dof = np.full(data.shape[1], float(nominal))
    if kernel.dof == "effective" and nominal > 0:
        voxel_dof = np.clip(W.sum(axis=0) ** 2 / np.einsum("nv,nv->v", W, W) - rank, 1.0, nominal)
    dof = np.broadcast_to(voxel_dof, (signs.shape[0], data.shape[1]))
    middle = np.einsum("ai,vij,bj->vab", C, A, C)  # C (X'WX)^-1 C'
    if C.shape[0] == 1:
        t = effects[:, 0] / np.sqrt(middle[:, 0, 0] * scale)
        t = np.where(np.isfinite(t), t, np.nan)
        return stats.t_to_z(t, dof, stats.t_logsf(t, dof))
    middle_inv = np.linalg.pinv(middle, hermitian=True)
    quadratic = np.einsum("xav,vab,xbv->xv", effects, middle_inv, effects)
    df_num = int(np.linalg.matrix_rank(C @ C.T))
    f = quadratic / (df_num * scale)
    f = np.where(np.isfinite(f), f, np.nan)
    return stats.f_to_z(f, df_num, dof)


def observed_statistics(kernel: MixedEffectsKernel, data: np.ndarray, voxels: slice) -> np.ndarray:
    """z of the unflipped data (V,) (``data`` already residualised for the regression method)."""
    return flipped_statistics(kernel, data, voxels, np.ones((1, data.shape[0])))[0]


def chunk_null_maxima(kernel: MixedEffectsKernel, data: np.ndarray, voxels: slice, permutations: PermutationSet,
                      observed: np.ndarray, two_sided: bool, start: int, stop: int,
                      block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-flip maximum of |z| (or z) over one voxel chunk and per-voxel exceedance counts (the contract of
    :func:`runner.inference.permutation.scores.chunk_null_maxima`)."""
    def tested(first: int, last: int) -> np.ndarray:
        _, signs = permutations.rows(first, last)
        z = flipped_statistics(kernel, data, voxels, signs)
        return np.abs(z) if two_sided else z

    return blockwise_null(tested, observed, start, stop, block)


def check_scheme(scheme: str) -> tuple[str, str]:
    """Sign-flips always (rows are not exchangeable); a requested row permutation is refused."""
    if scheme not in ("auto", "sign_flip"):
        raise RunnerError("model=mfx permutes no rows: every map has its own variance, so maps are not "
                          "exchangeable; the residuals are sign-flipped (leave the scheme to 'auto')")
    return "sign_flip", SCHEME_REASON
