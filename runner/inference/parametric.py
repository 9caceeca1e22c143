"""Voxel-level height thresholds: uncorrected (fpr), Benjamini-Hochberg FDR and Bonferroni.

The numbers follow nilearn's ``threshold_stats_img(height_control=...)``: thresholds are on the z scale, a
two-sided test halves alpha and thresholds ``|z|``, and the map is later kept where ``z >= threshold``
(see :func:`runner.inference.clusters.threshold_map`). One difference: a voxel without a statistic (NaN z, e.g.
zero residual variance) is not a test, so it is not counted in Bonferroni's or Benjamini-Hochberg's number of tests
(nilearn's masker turns it into a z of 0, which counts it and makes both corrections stricter than they should be).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.stats import norm

from runner.errors import RunnerError, did_you_mean

HEIGHT_CONTROL_METHODS = ("fpr", "fdr", "bonferroni")
HeightControl = Literal["fpr", "fdr", "bonferroni"]

# Subtracted from the z value that sets the FDR threshold so that this voxel also survives a strict ">" test
# (cluster tables label voxels with z > threshold), as nilearn does.
FDR_TIE_MARGIN = 1.0e-12


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Return ``alpha`` as a float, or raise RunnerError unless 0 < alpha < 1."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise RunnerError(f"{name} must be a number in (0, 1), got {alpha!r}") from None
    if not 0.0 < value < 1.0:
        raise RunnerError(f"{name} must be in (0, 1), got {alpha!r}")
    return value


def finite_values(z: np.ndarray) -> np.ndarray:
    """The tests: in-mask statistics as a 1-D float array without NaN or +-inf (voxels without a statistic)."""
    values = np.asarray(z, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def fdr_threshold(z: np.ndarray, alpha: float) -> float:
    """Benjamini-Hochberg step-up threshold on one-sided z values.

    The p-values are ``norm.sf(z)``; the largest rank ``k`` with ``p_(k) < alpha * k / n`` (strict, as nilearn)
    sets the threshold to the k-th largest z value minus 1e-12, so that voxel survives ``z > threshold`` too
    (Benjamini & Hochberg 1995).

    Parameters
    ----------
    z : np.ndarray
        z values of all tests (in-mask voxels; non-finite values are not tests and are left out); pass ``|z|``
        with ``alpha / 2`` for a two-sided test.
    alpha : float
        False discovery rate, in (0, 1).

    Returns
    -------
    float
        The z threshold, or ``inf`` when no test is rejected.
    """
    alpha = check_alpha(alpha)
    values = finite_values(z)
    n_tests = values.size
    if n_tests == 0:
        raise RunnerError("cannot compute an FDR threshold: no in-mask voxel has a statistic")
    z_descending = -np.sort(-values)
    p_ascending = norm.sf(z_descending)
    step_up_line = alpha * np.arange(1, n_tests + 1) / n_tests
    rejected = np.flatnonzero(p_ascending < step_up_line)
    if rejected.size == 0:
        return float(np.inf)
    return float(z_descending[rejected[-1]] - FDR_TIE_MARGIN)


def bonferroni_threshold(n_tests: int, alpha: float) -> float:
    """One-sided z threshold controlling the family-wise error over ``n_tests`` tests: ``isf(alpha / n_tests)``."""
    alpha = check_alpha(alpha)
    if n_tests < 1:
        raise RunnerError("cannot compute a Bonferroni threshold: no in-mask voxel has a statistic")
    return float(norm.isf(alpha / n_tests))


def height_threshold(
    z: np.ndarray | None,
    method: HeightControl,
    alpha: float,
    two_sided: bool = True,
) -> float:
    """z threshold for a voxel-level error control, as nilearn's ``threshold_stats_img``.

    A two-sided test uses ``alpha / 2`` and, for FDR, the absolute z values; non-finite z values (voxels without
    a statistic) are not tests: they are left out of the number of tests.

    Parameters
    ----------
    z : np.ndarray or None
        In-mask z values, shape (V,), NaN where a voxel has no statistic. Not used (may be None) for ``"fpr"``.
    method : {"fpr", "fdr", "bonferroni"}
        ``fpr``: uncorrected p < alpha; ``fdr``: Benjamini-Hochberg q < alpha; ``bonferroni``: family-wise
        error < alpha over the in-mask voxels that have a statistic.
    alpha : float
        Error rate, in (0, 1).
    two_sided : bool
        Threshold ``|z|`` (True) or the positive tail only (False).

    Returns
    -------
    float
        The threshold; voxels with ``z >= threshold`` (``|z|`` if two-sided) survive. ``inf`` when FDR
        rejects nothing.
    """
    if method not in HEIGHT_CONTROL_METHODS:
        raise RunnerError(f"unknown height control {method!r}: {did_you_mean(str(method), HEIGHT_CONTROL_METHODS)}")
    alpha = check_alpha(alpha)
    alpha_per_tail = alpha / 2 if two_sided else alpha
    if method == "fpr":
        return float(norm.isf(alpha_per_tail))
    if z is None:
        raise RunnerError(f"height control {method!r} needs the z values of the in-mask voxels")
    values = finite_values(z)
    if method == "bonferroni":
        return bonferroni_threshold(values.size, alpha_per_tail)
    if two_sided:
        values = np.abs(values)
    return fdr_threshold(values, alpha_per_tail)
