"""Family-wise error by random field theory: peak-level p, height thresholds and cluster-level p, in log space.

- Peak level: P(max S >= u) ~ 1 - exp(-E[EC(u)]), E[EC(u)] = sum_d R_d rho_d(u) (Worsley et al. 1996, Hum Brain
  Mapp 4:58-73; the Poisson form as in SPM's ``spm_P_RF``). SPM reports the smaller of this and Bonferroni
  (``spm_P``): we do the same when the number of voxels is given. Negative densities (low thresholds) count as 0;
  SPM floors them at machine epsilon, which only matters where p is already 1 or where log space makes a floor
  unnecessary. Resel counts may be negative: R0 is the Euler characteristic and R1 a sum of the Euler
  characteristics of cross-sections, both negative for porous masks (an intersection mask with scattered holes has
  many tunnels). The expectation keeps their signs; where the signed sum is not positive (low thresholds, where the
  Euler characteristic heuristic says nothing) the RFT p is 1 (SPM floors it at machine epsilon instead, i.e. p ~ 0),
  so such voxels get the Bonferroni p.
- Cluster level (Friston et al. 1994, Hum Brain Mapp 1:210-220; Worsley et al. 1996): above a cluster-forming
  threshold u the expected number of clusters is E_c = E[EC(u)], the expected resels per cluster is
  E_k = R_D rho_0(u) / (R_D rho_D(u)), and a cluster's extent K (resels) satisfies P(K >= k) = exp(-beta k^(2/D)) with
  beta = (Gamma(D/2 + 1) / E_k)^(2/D). The probability of c or more clusters of at least k resels is the Poisson tail
  with mean E_c P(K >= k); c = 1 gives the cluster-level FWE p.

Two-sided t or Z tests double E[EC] (excursions of either sign); an F field is one-tailed by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from runner.errors import RunnerError
from runner.inference.rft.ec_densities import (
    StatType,
    check_df,
    check_stat_type,
    log_ec_densities,
    log_uncorrected_p,
    threshold_from_p,
)
from runner.inference.rft.resels import search_dimension

_SERIES_SWITCH = -20.0  # below this log(E), log(1 - exp(-E)) = log(E) - E/2 to double precision


def _check_resels(resel_counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(resel_counts, dtype=float).ravel()
    if counts.size > 4 or counts.size == 0 or not np.all(np.isfinite(counts)):
        raise RunnerError(f"resel counts must be 1 to 4 finite numbers R0..R3, got {counts.tolist()}")
    return np.concatenate([counts, np.zeros(4 - counts.size)])


def _check_tail(stat_type: str, two_sided: bool) -> None:
    if two_sided and stat_type == "F":
        raise RunnerError("two_sided does not apply to F statistics (an F test is already two-sided)")


def log_one_minus_exp_neg(log_mean: np.ndarray) -> np.ndarray:
    """log(1 - exp(-m)) for m = exp(log_mean): the log probability that a Poisson(m) count is at least one."""
    log_mean = np.asarray(log_mean, dtype=float)
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        mean = np.exp(log_mean)
        exact = np.log(-np.expm1(-mean))
        return np.where(log_mean < _SERIES_SWITCH, log_mean - 0.5 * mean, exact)


def log_expected_ec(
    u: np.ndarray | float,
    stat_type: StatType,
    df: tuple[float, float] | float | None,
    resel_counts: np.ndarray,
    two_sided: bool = False,
) -> np.ndarray:
    """Natural log of the expected Euler characteristic sum_d R_d max(rho_d(u), 0) of the excursion set above u.

    +inf where the sum is not positive (negative resel counts of a porous mask at low thresholds): p is then 1.
    """
    stat_type = check_stat_type(stat_type)
    _check_tail(stat_type, two_sided)
    counts = _check_resels(resel_counts)
    log_mag, sign = log_ec_densities(stat_type, u, df)
    with np.errstate(divide="ignore"):
        log_counts = np.log(np.abs(counts)).reshape((4,) + (1,) * np.ndim(u))
    count_sign = np.sign(counts).reshape((4,) + (1,) * np.ndim(u))
    used = (sign > 0) & (log_counts > -np.inf)
    terms = np.where(used, log_counts + log_mag, -np.inf)
    weights = np.where(used, count_sign, 1.0)
    with np.errstate(divide="ignore"):
        out, total_sign = special.logsumexp(terms, axis=0, b=weights, return_sign=True)
    out = np.where((total_sign < 0) | ((total_sign == 0) & np.any(used & (count_sign < 0), axis=0)), np.inf, out)
    return out + np.log(2.0) if two_sided else out


def _statistic_for_tail(u: np.ndarray, two_sided: bool) -> np.ndarray:
    return np.abs(u) if two_sided else u


def rft_log_p(
    u: np.ndarray | float,
    stat_type: StatType,
    df: tuple[float, float] | float | None,
    resel_counts: np.ndarray,
    two_sided: bool = False,
) -> np.ndarray:
    """Natural log of the RFT family-wise p value P(max S >= u) = 1 - exp(-E[EC(u)]) (random field theory only)."""
    u = _statistic_for_tail(np.asarray(u, dtype=float), two_sided)
    return np.minimum(log_one_minus_exp_neg(log_expected_ec(u, stat_type, df, resel_counts, two_sided)), 0.0)


def bonferroni_log_p(
    u: np.ndarray | float,
    stat_type: StatType,
    df: tuple[float, float] | float | None,
    n_voxels: int,
    two_sided: bool = False,
) -> np.ndarray:
    """Natural log of the Bonferroni family-wise p value min(1, n_voxels p) (SPM's ``spm_P_Bonf``)."""
    stat_type = check_stat_type(stat_type)
    _check_tail(stat_type, two_sided)
    u = _statistic_for_tail(np.asarray(u, dtype=float), two_sided)
    log_p = log_uncorrected_p(stat_type, u, df) + np.log(float(n_voxels)) + (np.log(2.0) if two_sided else 0.0)
    return np.minimum(log_p, 0.0)


def peak_fwe_log_p(
    u: np.ndarray | float,
    stat_type: StatType,
    df: tuple[float, float] | float | None,
    resel_counts: np.ndarray,
    n_voxels: int | None = None,
    two_sided: bool = False,
) -> np.ndarray:
    """Natural log of the peak-level FWE p at statistic values ``u``, as SPM reports it.

    Parameters
    ----------
    u : float or np.ndarray
        Statistic values (e.g. every in-mask voxel, or the peaks of a table).
    stat_type : {"Z", "t", "F"}
    df : (df_interest, df_error) or float
        Degrees of freedom; a number is a t field's error dof.
    resel_counts : (4,) array
        R0..R3 of the search volume.
    n_voxels : int or None
        Voxels in the search volume; when given, the p value is min(RFT, Bonferroni) as in SPM's ``spm_P``.
    two_sided : bool
        Test |S| (t and Z only).

    Returns
    -------
    np.ndarray
        log p, same shape as ``u``; NaN statistics give NaN.
    """
    u = np.asarray(u, dtype=float)
    log_p = rft_log_p(u, stat_type, df, resel_counts, two_sided)
    if n_voxels is not None:
        log_p = np.minimum(log_p, bonferroni_log_p(u, stat_type, df, n_voxels, two_sided))
    return np.where(np.isnan(u), np.nan, log_p)


def peak_fwe_p(
    u: np.ndarray | float,
    stat_type: StatType,
    df: tuple[float, float] | float | None,
    resel_counts: np.ndarray,
    n_voxels: int | None = None,
    two_sided: bool = False,
) -> np.ndarray:
    """Peak-level FWE p (see :func:`peak_fwe_log_p`); may underflow to 0 where the log stays finite."""
    return np.exp(peak_fwe_log_p(u, stat_type, df, resel_counts, n_voxels, two_sided))


def _solve_threshold(log_p_of_u, alpha: float, start: float) -> float:
    """Smallest-effort root of log p(u) = log alpha for a p decreasing in u, bracketed outward from ``start``."""
    target = np.log(alpha)

    def gap(x: float) -> float:
        return float(log_p_of_u(np.array(x))) - target

    low, high = start, start + 1.0
    for _ in range(200):
        if gap(low) >= 0:
            break
        low -= 1.0
    else:  # p never reaches alpha: every threshold controls the FWE
        return -np.inf
    while gap(high) > 0:
        high = high + max(1.0, high - low)
        if high > 1e8:
            return np.inf
    return float(optimize.brentq(gap, low, high, xtol=1e-10, rtol=1e-12))


def rft_height_threshold(
    alpha: float,
    stat_type: StatType,
    df: tuple[float, float] | float | None,
    resel_counts: np.ndarray,
    two_sided: bool = False,
) -> float:
    """Statistic value u with RFT FWE p(u) = alpha (SPM's ``spm_uc_RF``), found by Brent's method in log space."""
    stat_type = check_stat_type(stat_type)
    start = _uncorrected_threshold(alpha / (2.0 if two_sided else 1.0), stat_type, df)
    return _solve_threshold(lambda x: rft_log_p(x, stat_type, df, resel_counts, two_sided), alpha, start)


def bonferroni_height_threshold(
    alpha: float,
    stat_type: StatType,
    df: tuple[float, float] | float | None,
    n_voxels: int,
    two_sided: bool = False,
) -> float:
    """Statistic value whose uncorrected p is alpha / n_voxels (halved again when two-sided)."""
    return _uncorrected_threshold(alpha / n_voxels / (2.0 if two_sided else 1.0), check_stat_type(stat_type), df)


def _uncorrected_threshold(p: float, stat_type: str, df) -> float:
    """u with P(S >= u) = p, solved in log space so that tiny p (Bonferroni on many voxels) stays exact."""
    guess = threshold_from_p(stat_type, min(max(p, 1e-300), 0.5), df)
    if p > 1e-250:
        return guess
    return _solve_threshold(lambda x: log_uncorrected_p(stat_type, x, df), p, guess)


def fwe_height_threshold(
    alpha: float,
    stat_type: StatType,
    df: tuple[float, float] | float | None,
    resel_counts: np.ndarray,
    n_voxels: int | None = None,
    two_sided: bool = False,
) -> float:
    """FWE height threshold for ``alpha``: min(RFT, Bonferroni) when ``n_voxels`` is given (SPM's ``spm_uc``).

    A statistic strictly above the returned value has peak-level FWE p below alpha.
    """
    if not 0 < alpha < 1:
        raise RunnerError(f"alpha must be in (0, 1), got {alpha!r}")
    u = rft_height_threshold(alpha, stat_type, df, resel_counts, two_sided)
    if n_voxels is not None:
        u = min(u, bonferroni_height_threshold(alpha, stat_type, df, n_voxels, two_sided))
    return u


@dataclass(frozen=True)
class ClusterExpectations:
    """What random field theory expects of the clusters above a cluster-forming threshold (SPM's Ec and Ek)."""

    threshold: float  # cluster-forming threshold u (statistic scale)
    dimension: int  # D, the dimension of the search volume
    log_expected_clusters: float  # log E_c = log E[EC(u)] (both tails when two-sided)
    log_expected_resels_per_cluster: float  # log E_k = log(rho_0(u) / rho_D(u))
    beta: float  # P(K >= k) = exp(-beta k^(2/D))

    @property
    def expected_clusters(self) -> float:
        """E_c, the expected number of clusters above u (SPM's <c> before the extent threshold)."""
        return float(np.exp(self.log_expected_clusters))

    @property
    def expected_resels_per_cluster(self) -> float:
        """E_k, the expected extent of one cluster in resels (divide by resels per voxel for SPM's <k>)."""
        return float(np.exp(self.log_expected_resels_per_cluster))


def cluster_expectations(
    u: float,
    stat_type: StatType,
    df: tuple[float, float] | float | None,
    resel_counts: np.ndarray,
    two_sided: bool = False,
) -> ClusterExpectations:
    """Expected number of clusters and expected cluster extent (resels) above the cluster-forming threshold u."""
    stat_type = check_stat_type(stat_type)
    check_df(stat_type, df)
    counts = _check_resels(resel_counts)
    dimension = search_dimension(counts)
    log_ec = float(log_expected_ec(float(u), stat_type, df, counts, two_sided))
    log_mag, sign = log_ec_densities(stat_type, float(u), df)
    if dimension == 0 or sign[dimension] <= 0:
        log_ek = np.inf  # no curvature term above u: every cluster is as large as the search volume allows
    else:
        log_ek = float(log_mag[0] - log_mag[dimension])
    beta = 0.0 if dimension == 0 else float(np.exp((2.0 / dimension) * (special.gammaln(dimension / 2 + 1) - log_ek)))
    return ClusterExpectations(float(u), dimension, log_ec, log_ek, beta)


def cluster_log_p(
    extent_resels: np.ndarray | float,
    expectations: ClusterExpectations,
    n_clusters: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Natural logs of the cluster-level FWE p and of the uncorrected p for clusters of ``extent_resels``.

    Parameters
    ----------
    extent_resels : float or np.ndarray
        Cluster extents in resels (voxels times resels per voxel).
    expectations : ClusterExpectations
        From :func:`cluster_expectations` at the cluster-forming threshold.
    n_clusters : int
        c in P(c or more clusters of at least k resels); 1 gives the FWE p of a cluster, the number of clusters
        observed gives SPM's set-level p (with ``extent_resels`` the extent threshold).

    Returns
    -------
    log_p_fwe, log_p_uncorrected : np.ndarray
        log P(c or more clusters >= k) and log P(K >= k) for a single cluster.
    """
    k = np.asarray(extent_resels, dtype=float)
    d = expectations.dimension
    if d == 0:
        log_p_unc = np.zeros_like(k)
    else:
        log_p_unc = np.where(k > 0, -expectations.beta * np.power(np.maximum(k, 0.0), 2.0 / d), 0.0)
    log_mean = expectations.log_expected_clusters + log_p_unc
    if n_clusters <= 1:
        log_p_fwe = log_one_minus_exp_neg(log_mean)
    else:  # Poisson upper tail P(N >= c) = P(c, m), the regularised lower incomplete gamma
        with np.errstate(divide="ignore"):
            log_p_fwe = np.log(special.gammainc(n_clusters, np.exp(log_mean)))
    return np.minimum(log_p_fwe, 0.0), log_p_unc


def cluster_extent_threshold(alpha: float, expectations: ClusterExpectations) -> float:
    """Smallest extent k (resels) with cluster-level FWE p <= alpha: k = (log(E_c / -log(1 - alpha)) / beta)^(D/2)."""
    if not 0 < alpha < 1:
        raise RunnerError(f"alpha must be in (0, 1), got {alpha!r}")
    log_needed = np.log(-np.log1p(-alpha))
    margin = expectations.log_expected_clusters - log_needed
    if margin <= 0:
        return 0.0
    if expectations.beta == 0:
        return np.inf
    return float((margin / expectations.beta) ** (expectations.dimension / 2.0))
