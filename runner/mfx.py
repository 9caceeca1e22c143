"""Mixed-effects (random-effects) group model over voxels using the first-level variances: pure numpy.

At every voxel the n first-level effects follow ``y_i ~ N(x_i beta, s_i + tau2)``, where ``s_i`` is the first-level
variance of map i (known) and ``tau2`` the between-subject variance (estimated). This is the model of FSL FLAME,
AFNI 3dMEMA and random-effects meta-regression (PyMARE, metafor):

- ``tau2`` by restricted maximum likelihood (REML, Fisher scoring; Harville 1977, as in metafor's ``rma``) or by the
  DerSimonian-Laird method of moments generalised to meta-regression (DerSimonian & Laird 1986; Raudenbush 2009);
  ``tau2 >= 0`` always;
- ``beta`` by weighted least squares with weights ``w_i = 1 / (s_i + tau2)``: ``beta = (X'WX)^-1 X'W y``;
- a t contrast ``c beta`` has variance ``q c (X'WX)^-1 c'``, where ``q = e'We / (n - rank(X))`` is the
  Knapp-Hartung factor (Knapp & Hartung 2003; the default) or ``q = 1`` (the model-based variance, FLAME1-like);
- it is referred to a t distribution on ``n_eff - rank(X)`` degrees of freedom (the default, ``dof="effective"``)
  with ``n_eff = (sum w_i)^2 / sum w_i^2`` Kish's effective number of maps under the fitted weights, or on
  ``n - rank(X)`` (``dof="residual"``). With equal weights both are ``n - rank(X)``. Unequal weights rest the
  estimate on fewer maps than n, and the null simulations of ``benchmarks/bench_mfx.py`` show what ``n - rank(X)``
  then costs: with 24 maps whose first-level variances span 100x and tau2 0.16-0.5, Bonferroni FWE 0.35-0.40 at
  alpha 0.05 (0.006-0.034 with the effective dof). F contrasts use the same covariance on ``(rank(C), dof)``.

Every voxel has its own weights, so the small (p x p) systems are batched over voxels (no Python loop over voxels);
the REML iterations stop per voxel and are bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runner import stats
from runner.glm import ContrastResult, design_rank

ESTIMATORS = ("reml", "dl")
DOF_RULES = ("effective", "residual")
MAX_ITERATIONS = 200  # Fisher scoring on the REML likelihood converges in ~5-20 steps; a bound, not a budget
MAX_HALVINGS = 30  # step-halvings of one scoring step before it is taken anyway
TOLERANCE = 1e-10  # stop when |change in tau2| <= TOLERANCE * (tau2 + mean first-level variance)


@dataclass(frozen=True)
class MixedEffectsFit:
    """Result of a mixed-effects fit of Y (n x V) with first-level variances S (n x V) on X (n x p)."""

    beta: np.ndarray  # (p, V) weighted least-squares estimates at the fitted tau2
    tau2: np.ndarray  # (V,) between-subject variance, >= 0
    covariance: np.ndarray  # (V, p, p) (X'WX)^-1, the model-based covariance of beta
    scale: np.ndarray  # (V,) Knapp-Hartung factor e'We / dof (1 when not used)
    dof: int  # n - rank(X), the nominal degrees of freedom
    voxel_dof: np.ndarray  # (V,) degrees of freedom of the t / F reference at each voxel (see the module docstring)
    iterations: int  # REML iterations of the slowest voxel (0 for DL)
    converged: np.ndarray  # (V,) bool: REML converged within MAX_ITERATIONS (always True for DL)


def weighted_gram(X: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``X' diag(weights_v) X`` for every voxel v (V, p, p): one GEMM of the weights with the products of columns."""
    n, p = X.shape
    pairs = (X[:, :, None] * X[:, None, :]).reshape(n, p * p)
    return (weights.T @ pairs).reshape(-1, p, p)


def invert_information(information: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``(X'WX)^-1`` of every voxel: LU when X has full column rank (fast; positive weights keep X'WX invertible),
    the pseudo-inverse when X is rank deficient."""
    if X.shape[1] == 1:
        with np.errstate(divide="ignore"):
            return 1.0 / information
    if design_rank(X) < X.shape[1]:
        return np.linalg.pinv(information, hermitian=True)
    return np.linalg.inv(information)


def _weighted_fit(Y: np.ndarray, W: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WLS at every voxel with its own weights: ``A = (X'WX)^-1`` (V, p, p), ``beta`` (p, V), residuals (n, V)."""
    A = invert_information(weighted_gram(X, W), X)
    beta = np.einsum("vij,vj->iv", A, (W * Y).T @ X)
    return A, beta, Y - X @ beta


def _trace_AB(A: np.ndarray, X: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``tr(A_v X' diag(weights_v) X)`` for every voxel v."""
    return np.einsum("vij,vji->v", A, weighted_gram(X, weights))


def tau2_dersimonian_laird(Y: np.ndarray, S: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Between-subject variance by the method of moments (DerSimonian & Laird 1986, meta-regression form).

    ``tau2 = max(0, (Q - (n - p)) / tr(P))`` with ``Q = sum_i w_i e_i^2`` the weighted residual sum of squares under
    ``w_i = 1 / s_i`` and ``tr(P) = sum_i w_i - tr((X'WX)^-1 X'W^2X)`` (Raudenbush 2009, eq. 16.22).

    Parameters
    ----------
    Y : (n, V) first-level effects.
    S : (n, V) first-level variances, positive and finite.
    X : (n, p) design matrix.

    Returns
    -------
    (V,) tau2 >= 0; zero when the design leaves no residual degrees of freedom.
    """
    Y, S, X = _as_arrays(Y, S, X)
    n = X.shape[0]
    rank = design_rank(X)
    if n <= rank:
        return np.zeros(Y.shape[1])
    W = 1.0 / S
    A, _, residuals = _weighted_fit(Y, W, X)
    q = np.einsum("nv,nv->v", W, residuals**2)
    trace_p = W.sum(axis=0) - _trace_AB(A, X, W**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau2 = (q - (n - rank)) / trace_p
    return np.where(np.isfinite(tau2), np.maximum(tau2, 0.0), 0.0)


def tau2_reml(Y: np.ndarray, S: np.ndarray, X: np.ndarray, *, max_iterations: int = MAX_ITERATIONS,
              tolerance: float = TOLERANCE) -> tuple[np.ndarray, int, np.ndarray]:
    """Between-subject variance by restricted maximum likelihood (Fisher scoring, truncated at zero).

    With ``P = W - WX(X'WX)^-1X'W`` the REML score is ``(y'PPy - tr(P)) / 2`` and the expected information
    ``tr(PP) / 2`` (Harville 1977; Viechtbauer 2005, eq. 12), so each step is
    ``tau2 <- max(0, tau2 + (y'PPy - tr(P)) / tr(PP))``, started at the DerSimonian-Laird estimate.
    ``Py = W e`` with ``e`` the WLS residuals, hence ``y'PPy = sum_i w_i^2 e_i^2``.

    Parameters
    ----------
    Y, S, X : as in :func:`tau2_dersimonian_laird`.
    max_iterations : bound on the number of steps; voxels still moving then are reported as not converged.
    tolerance : a voxel stops when its step is below ``tolerance * (tau2 + mean_i s_i)``.

    Returns
    -------
    tau2 (V,), the number of iterations the slowest voxel took, and a (V,) bool of converged voxels.
    """
    Y, S, X = _as_arrays(Y, S, X)
    n_voxels = Y.shape[1]
    tau2 = tau2_dersimonian_laird(Y, S, X)
    converged = np.zeros(n_voxels, dtype=bool)
    if X.shape[0] <= design_rank(X):
        return tau2, 0, np.ones(n_voxels, dtype=bool)
    scale = S.mean(axis=0)
    active = np.arange(n_voxels)
    iteration = 0
    while active.size and iteration < max_iterations:
        iteration += 1
        t = tau2[active]
        Ya, Sa = Y[:, active], S[:, active]
        likelihood, step = _reml_likelihood_and_step(Ya, Sa, X, t)
        updated = np.maximum(t + step, 0.0)
        # Step-halving (Jennrich & Sampson 1976): a scoring step that lowers the restricted likelihood (it can
        # overshoot, e.g. bounce off tau2 = 0) is halved until it does not.
        for _ in range(MAX_HALVINGS):
            worse = _reml_likelihood(Ya, Sa, X, updated) < likelihood - 1e-12 * np.abs(likelihood)
            if not worse.any():
                break
            step = np.where(worse, step / 2, step)
            updated = np.where(worse, np.maximum(t + step, 0.0), updated)
        done = np.abs(updated - t) <= tolerance * (updated + scale[active])
        tau2[active] = updated
        converged[active[done]] = True
        active = active[~done]
    return tau2, iteration, converged


def _reml_likelihood(Y: np.ndarray, S: np.ndarray, X: np.ndarray, tau2: np.ndarray) -> np.ndarray:
    """Restricted log-likelihood up to a constant: ``-(sum log(s_i + tau2) + log|X'WX| + e'We) / 2``."""
    W = 1.0 / (S + tau2)
    information = weighted_gram(X, W)
    _, log_det = np.linalg.slogdet(information)
    A = invert_information(information, X)
    beta = np.einsum("vij,vj->iv", A, (W * Y).T @ X)
    residuals = Y - X @ beta
    return -0.5 * (np.log(S + tau2).sum(axis=0) + log_det + np.einsum("nv,nv->v", W, residuals**2))


def _reml_likelihood_and_step(Y: np.ndarray, S: np.ndarray, X: np.ndarray,
                              tau2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The restricted log-likelihood at ``tau2`` and a step on tau2.

    The score is ``(y'PPy - tr(P)) / 2``; the step divides it by the observed information ``y'PPPy - tr(PP) / 2``
    (Newton) where that is positive, else by the expected information ``tr(PP) / 2`` (Fisher scoring).
    """
    W = 1.0 / (S + tau2)
    A, _, residuals = _weighted_fit(Y, W, X)
    W2 = W**2
    B2 = weighted_gram(X, W2)  # X'W^2X
    B3 = weighted_gram(X, W2 * W)  # X'W^3X
    AB2 = A @ B2
    trace_p = W.sum(axis=0) - np.einsum("vii->v", AB2)
    # tr(PP) = tr(W^2) - 2 tr(A X'W^3X) + tr(A X'W^2X A X'W^2X)
    trace_pp = W2.sum(axis=0) - 2 * np.einsum("vij,vji->v", A, B3) + np.einsum("vij,vji->v", AB2, AB2)
    ypp_y = np.einsum("nv,nv->v", W2, residuals**2)
    # Observed information (twice it): 2 y'PPPy - tr(PP), with y'PPPy = u'Pu, u = Py = We.
    u = W * residuals
    pu = W * u - W * (X @ np.einsum("vij,vj->iv", A, (W * u).T @ X))
    observed = 2 * np.einsum("nv,nv->v", u, pu) - trace_pp
    # Newton where the likelihood is locally concave (quadratic convergence), Fisher scoring elsewhere.
    curvature = np.where(observed > 0, observed, trace_pp)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = (ypp_y - trace_p) / curvature
    _, log_det_a = np.linalg.slogdet(A)
    likelihood = -0.5 * (np.log(S + tau2).sum(axis=0) - log_det_a + np.einsum("nv,nv->v", W, residuals**2))
    return likelihood, np.where(np.isfinite(step), step, 0.0)


def mfx_fit(Y: np.ndarray, S: np.ndarray, X: np.ndarray, *, estimator: str = "reml",
            knapp_hartung: bool = True, dof: str = "effective") -> MixedEffectsFit:
    """Fit the mixed-effects model at every voxel.

    Parameters
    ----------
    Y : (n, V) first-level effects (rows are maps, columns in-mask voxels).
    S : (n, V) their first-level variances: positive and finite (the data layer refuses others by file).
    X : (n, p) design matrix.
    estimator : ``"reml"`` (default) or ``"dl"`` (DerSimonian-Laird) for tau2.
    knapp_hartung : scale the covariance of beta by ``e'We / (n - rank(X))`` (Knapp & Hartung 2003).
    dof : ``"effective"`` (``n_eff - rank(X)``, at least 1) or ``"residual"`` (``n - rank(X)``) degrees of freedom.

    Returns
    -------
    MixedEffectsFit with beta, tau2, (X'WX)^-1, the Knapp-Hartung factor, dof and convergence.
    """
    Y, S, X = _as_arrays(Y, S, X)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if dof not in DOF_RULES:
        raise ValueError(f"dof must be one of {DOF_RULES}, got {dof!r}")
    if np.any(~np.isfinite(S)) or np.any(S <= 0):
        raise ValueError("first-level variances must be positive and finite")
    if estimator == "reml":
        tau2, iterations, converged = tau2_reml(Y, S, X)
    else:
        tau2, iterations, converged = tau2_dersimonian_laird(Y, S, X), 0, np.ones(Y.shape[1], dtype=bool)
    W = 1.0 / (S + tau2)
    A, beta, residuals = _weighted_fit(Y, W, X)
    rank = design_rank(X)
    nominal = X.shape[0] - rank
    if knapp_hartung and nominal > 0:
        scale = np.einsum("nv,nv->v", W, residuals**2) / nominal
    else:
        scale = np.ones(Y.shape[1])
    voxel_dof = np.full(Y.shape[1], float(nominal))
    if dof == "effective" and nominal > 0:
        effective = W.sum(axis=0) ** 2 / np.einsum("nv,nv->v", W, W) - rank  # Kish (1965) effective sample size
        voxel_dof = np.clip(effective, 1.0, nominal)
    return MixedEffectsFit(beta=beta, tau2=tau2, covariance=A, scale=scale, dof=nominal, voxel_dof=voxel_dof,
                           iterations=iterations, converged=converged)


def t_contrast(fit: MixedEffectsFit, contrast: np.ndarray) -> ContrastResult:
    """t statistic of one contrast vector c: ``t = c beta / sqrt(q c (X'WX)^-1 c')``; p and z on ``voxel_dof``."""
    c = np.asarray(contrast, dtype=float).reshape(-1)
    effect = c @ fit.beta
    variance = np.einsum("i,vij,j->v", c, fit.covariance, c) * fit.scale
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(variance > 0, effect / np.sqrt(variance), np.nan)
    log_p = stats.t_logsf(t, fit.voxel_dof)
    z = stats.t_to_z(t, fit.voxel_dof, log_p)
    return ContrastResult("t", effect, variance, t, np.exp(log_p), z, fit.dof, 1)


def f_contrast(fit: MixedEffectsFit, contrast: np.ndarray) -> ContrastResult:
    """F statistic of a contrast matrix C (q x p): ``(C b)' [C (X'WX)^-1 C']^-1 (C b) / (rank(C) q_KH)``.

    ``variance`` holds the Knapp-Hartung factor (1 without it), the analogue of OLS's residual variance.
    """
    C = np.atleast_2d(np.asarray(contrast, dtype=float))
    effect = C @ fit.beta
    middle = np.einsum("ai,vij,bj->vab", C, fit.covariance, C)
    df_num = int(np.linalg.matrix_rank(C @ C.T))
    middle_inv = np.linalg.pinv(middle, hermitian=True)
    quadratic = np.einsum("av,vab,bv->v", effect, middle_inv, effect)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(fit.scale > 0, quadratic / (df_num * fit.scale), np.nan)
    z = stats.f_to_z(f, df_num, fit.voxel_dof)
    p = np.exp(stats.f_logsf(f, df_num, fit.voxel_dof))
    return ContrastResult("F", effect, fit.scale, f, p, z, fit.dof, df_num)


def compute_contrast(fit: MixedEffectsFit, contrast: np.ndarray, stat_type: str) -> ContrastResult:
    """Dispatch to :func:`t_contrast` or :func:`f_contrast`."""
    if stat_type == "t":
        return t_contrast(fit, contrast)
    if stat_type == "F":
        return f_contrast(fit, contrast)
    raise ValueError(f"stat_type must be 't' or 'F', got {stat_type!r}")


def _as_arrays(Y: np.ndarray, S: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=float)
    Y = np.asarray(Y, dtype=float)
    S = np.asarray(S, dtype=float)
    if Y.ndim == 1:
        Y, S = Y[:, None], S.reshape(-1, 1)
    if Y.shape != S.shape:
        raise ValueError(f"effects {Y.shape} and variances {S.shape} differ in shape")
    if Y.shape[0] != X.shape[0]:
        raise ValueError(f"Y has {Y.shape[0]} rows but the design has {X.shape[0]}")
    return Y, S, X
