"""Mass-univariate ordinary least squares over voxels: pure numpy, arrays in, arrays out.

Every voxel shares the design, so one pseudo-inverse serves all voxels and the fit is a matrix product
(no loop over voxels). Degenerate voxels (zero residual variance) give NaN statistics on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runner import stats

RANK_TOLERANCE = 1e-10  # relative singular-value cut-off for the design's rank
CONSTANT_TOLERANCE = 1e-12  # residual RMS below this fraction of the voxel's scale counts as zero


@dataclass(frozen=True)
class OLSFit:
    """Result of an OLS fit of Y (n x V) on X (n x p)."""

    beta: np.ndarray  # (p, V) parameter estimates
    residual_variance: np.ndarray  # (V,) RSS / dof
    dof: int  # n - rank(X)
    covariance_unscaled: np.ndarray  # (p, p) pinv(X'X)


@dataclass(frozen=True)
class ContrastResult:
    """Statistics of one contrast at every voxel. For t contrasts ``p`` is one-sided (upper tail), as in nilearn."""

    stat_type: str  # "t" or "F"
    effect: np.ndarray  # (V,) for t, (q, V) for F
    variance: np.ndarray  # (V,) variance of the effect (t) or residual variance (F)
    stat: np.ndarray  # (V,)
    p: np.ndarray  # (V,)
    z: np.ndarray  # (V,)
    dof: int
    df_num: int = 1


def design_rank(X: np.ndarray) -> int:
    """Numerical rank of a design matrix (relative tolerance RANK_TOLERANCE)."""
    singular = np.linalg.svd(np.asarray(X, dtype=float), compute_uv=False)
    if singular.size == 0 or singular[0] == 0:
        return 0
    return int(np.sum(singular > RANK_TOLERANCE * singular[0]))


def ols_fit(Y: np.ndarray, X: np.ndarray) -> OLSFit:
    """Fit Y = X beta + e by least squares at every voxel.

    Parameters
    ----------
    Y : (n, V) array of data (rows are maps, columns in-mask voxels).
    X : (n, p) design matrix.

    Returns
    -------
    OLSFit with betas, residual variance (RSS / (n - rank)), dof and pinv(X'X).
    """
    X = np.asarray(X, dtype=float)
    Y = np.asarray(Y, dtype=float)
    if Y.ndim == 1:
        Y = Y[:, None]
    n = X.shape[0]
    if Y.shape[0] != n:
        raise ValueError(f"Y has {Y.shape[0]} rows but the design has {n}")
    pinv_x = np.linalg.pinv(X, rcond=RANK_TOLERANCE)
    beta = pinv_x @ Y
    residuals = Y - X @ beta
    rss = np.einsum("ij,ij->j", residuals, residuals)
    # Constant voxels leave rounding-level residuals; call them exactly zero so their statistics are NaN.
    scale = np.max(np.abs(Y), axis=0) if n else np.zeros(Y.shape[1])
    rss = np.where(rss <= n * (CONSTANT_TOLERANCE * scale) ** 2, 0.0, rss)
    dof = n - design_rank(X)
    with np.errstate(divide="ignore", invalid="ignore"):
        residual_variance = rss / dof if dof > 0 else np.full(Y.shape[1], np.nan)
    return OLSFit(beta=beta, residual_variance=residual_variance, dof=dof,
                  covariance_unscaled=pinv_x @ pinv_x.T)


def t_contrast(fit: OLSFit, contrast: np.ndarray) -> ContrastResult:
    """t statistic of one contrast vector c: t = c beta / sqrt(c (X'X)^- c' sigma^2).

    Parameters
    ----------
    fit : OLSFit from :func:`ols_fit`.
    contrast : (p,) or (1, p) contrast weights.
    """
    c = np.asarray(contrast, dtype=float).reshape(-1)
    effect = c @ fit.beta
    variance = float(c @ fit.covariance_unscaled @ c) * fit.residual_variance
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(variance > 0, effect / np.sqrt(variance), np.nan)
    log_p = stats.t_logsf(t, fit.dof)
    z = stats.t_to_z(t, fit.dof, log_p)
    p = np.exp(log_p)
    return ContrastResult("t", effect, variance, t, p, z, fit.dof, 1)


def f_contrast(fit: OLSFit, contrast: np.ndarray) -> ContrastResult:
    """F statistic of a contrast matrix C (q x p): (C b)' [C (X'X)^- C']^-1 (C b) / (rank * sigma^2)."""
    C = np.atleast_2d(np.asarray(contrast, dtype=float))
    effect = C @ fit.beta
    middle = C @ fit.covariance_unscaled @ C.T
    df_num = int(np.linalg.matrix_rank(middle))
    middle_inv = np.linalg.pinv(middle)
    quadratic = np.einsum("iv,ij,jv->v", effect, middle_inv, effect)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = quadratic / (df_num * fit.residual_variance)
    f = np.where(fit.residual_variance > 0, f, np.nan)
    z = stats.f_to_z(f, df_num, fit.dof)
    p = np.exp(stats.f_logsf(f, df_num, fit.dof))
    return ContrastResult("F", effect, fit.residual_variance, f, p, z, fit.dof, df_num)


def compute_contrast(fit: OLSFit, contrast: np.ndarray, stat_type: str) -> ContrastResult:
    """Dispatch to :func:`t_contrast` or :func:`f_contrast`."""
    if stat_type == "t":
        return t_contrast(fit, contrast)
    if stat_type == "F":
        return f_contrast(fit, contrast)
    raise ValueError(f"stat_type must be 't' or 'F', got {stat_type!r}")
