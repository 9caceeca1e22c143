"""Euler characteristic (EC) densities of Gaussian (Z), Student t and F random fields, dimensions 0 to 3.

The EC density rho_d(u) is the expected Euler characteristic of the excursion set above u per unit of d-dimensional
resel volume; the expected EC of a search volume is sum_d R_d rho_d(u) (Worsley et al. 1996, Hum Brain Mapp 4:58-73,
Table 2; Worsley 1994, Adv Appl Probab 26:13-42 for the t and F fields). With a = 4 ln 2 (the roughness of a field of
unit FWHM):

- Gaussian:  rho_0 = 1 - Phi(u);  rho_d = a^(d/2) (2 pi)^(-(d+1)/2) He_(d-1)(u) exp(-u^2/2), He the Hermite
  polynomials 1, u, u^2 - 1.
- t with v degrees of freedom, c = (1 + u^2/v)^(-(v-1)/2):  rho_1 = a^(1/2) / (2 pi) c;
  rho_2 = a / (2 pi)^(3/2) Gamma((v+1)/2) / (Gamma(v/2) (v/2)^(1/2)) u c;
  rho_3 = a^(3/2) / (2 pi)^2 c ((v-1) u^2/v - 1).
- F with (k, v) degrees of freedom, x = k u / v, b = (a / (2 pi)):  rho_1 = b^(1/2) sqrt(2) G(1) x^((k-1)/2) (1+x)^s;
  rho_2 = b G(2) x^((k-2)/2) (1+x)^s ((v-1) x - (k-1));
  rho_3 = b^(3/2) G(3) / sqrt(2) x^((k-3)/2) (1+x)^s ((v-1)(v-2) x^2 - (2vk - v - k - 1) x + (k-1)(k-2)),
  with s = -(v+k-2)/2 and G(d) = Gamma((v+k-d)/2) / (Gamma(v/2) Gamma(k/2)).

Densities are returned as a log-magnitude and a sign so that extreme thresholds (t = 40 with 10 degrees of freedom,
z = 40) keep exact, finite logarithms instead of underflowing to 0.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import special, stats as scipy_stats

from runner import stats
from runner.errors import RunnerError

StatType = Literal["Z", "t", "F"]
STAT_TYPES = ("Z", "t", "F")
ROUGHNESS_UNIT_FWHM = 4.0 * np.log(2.0)  # lambda of a Gaussian field with FWHM 1 (Worsley et al. 1992)
MAX_DIMENSION = 3


def check_stat_type(stat_type: str) -> str:
    """Normalise ``stat_type`` ("Z"/"z", "t"/"T", "F"/"f") or raise RunnerError naming the allowed values."""
    normalised = {"z": "Z", "t": "t", "f": "F"}.get(str(stat_type).lower())
    if normalised is None:
        raise RunnerError(f"stat_type must be one of Z, t, F, got {stat_type!r}")
    return normalised


def check_df(stat_type: str, df: tuple[float, float] | float | None) -> tuple[float, float]:
    """Degrees of freedom as (df_interest, df_error), as SPM passes them; a number means (1, number)."""
    if stat_type == "Z":
        return (1.0, np.inf)
    if df is None:
        raise RunnerError(f"a {stat_type} field needs its degrees of freedom")
    values = (1.0, float(df)) if np.ndim(df) == 0 else tuple(float(d) for d in df)
    if len(values) != 2 or not all(np.isfinite(values)) or min(values) <= 0:
        raise RunnerError(f"degrees of freedom must be two positive numbers (interest, error), got {df!r}")
    if stat_type == "t" and values[0] != 1:
        raise RunnerError(f"a t field has 1 degree of freedom of interest, got {values[0]}")
    return values


def _signed_log(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore"):
        return np.log(np.abs(values)), np.sign(values)


def _gaussian(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    log_mag = np.empty((4,) + u.shape)
    sign = np.ones((4,) + u.shape)
    log_mag[0] = scipy_stats.norm.logsf(u)
    log_tail = -0.5 * u * u
    hermite = (np.ones_like(u), u, u * u - 1.0)
    for d in range(1, 4):
        poly_log, poly_sign = _signed_log(hermite[d - 1])
        log_mag[d] = (d / 2) * np.log(ROUGHNESS_UNIT_FWHM) - ((d + 1) / 2) * np.log(2 * np.pi) + log_tail + poly_log
        sign[d] = poly_sign
    return log_mag, sign


def _student(u: np.ndarray, v: float) -> tuple[np.ndarray, np.ndarray]:
    log_mag = np.empty((4,) + u.shape)
    sign = np.ones((4,) + u.shape)
    # t_logsf handles u < 0 through scipy; log-space series for the deep upper tail.
    log_mag[0] = stats.t_logsf(u, v)
    log_c = -0.5 * (v - 1.0) * np.log1p(u * u / v)
    log_a = np.log(ROUGHNESS_UNIT_FWHM)
    log_mag[1] = 0.5 * log_a - np.log(2 * np.pi) + log_c
    gamma_ratio = special.gammaln((v + 1) / 2) - special.gammaln(v / 2) - 0.5 * np.log(v / 2)
    u_log, u_sign = _signed_log(u)
    log_mag[2] = log_a - 1.5 * np.log(2 * np.pi) + gamma_ratio + u_log + log_c
    sign[2] = u_sign
    poly_log, poly_sign = _signed_log((v - 1.0) * u * u / v - 1.0)
    log_mag[3] = 1.5 * log_a - 2.0 * np.log(2 * np.pi) + log_c + poly_log
    sign[3] = poly_sign
    return log_mag, sign


def _fisher(u: np.ndarray, k: float, v: float) -> tuple[np.ndarray, np.ndarray]:
    log_mag = np.full((4,) + u.shape, -np.inf)
    sign = np.zeros((4,) + u.shape)
    log_mag[0] = np.where(u > 0, stats.f_logsf(np.maximum(u, 0.0), k, v), 0.0)
    sign[0] = 1.0
    positive = u > 0  # the excursion set above 0 is the whole volume: no boundary or curvature terms
    x = np.where(positive, k * u / v, 1.0)
    log_x = np.log(x)
    log_b = np.log(ROUGHNESS_UNIT_FWHM / (2 * np.pi))
    log_norm = special.gammaln(v / 2) + special.gammaln(k / 2)
    log_tail = -0.5 * (v + k - 2.0) * np.log1p(x)

    def log_g(d: int) -> float:
        return special.gammaln((v + k - d) / 2) - log_norm

    terms = [
        (0.5 * log_b + log_g(1) + 0.5 * np.log(2.0) + 0.5 * (k - 1) * log_x + log_tail, np.ones_like(x)),
        (log_b + log_g(2) + 0.5 * (k - 2) * log_x + log_tail, (v - 1) * x - (k - 1)),
        (1.5 * log_b + log_g(3) - 0.5 * np.log(2.0) + 0.5 * (k - 3) * log_x + log_tail,
         (v - 1) * (v - 2) * x * x - (2 * v * k - v - k - 1) * x + (k - 1) * (k - 2)),
    ]
    for d, (base, polynomial) in enumerate(terms, start=1):
        poly_log, poly_sign = _signed_log(polynomial)
        log_mag[d] = np.where(positive, base + poly_log, -np.inf)
        sign[d] = np.where(positive, poly_sign, 0.0)
    return log_mag, sign


def log_ec_densities(
    stat_type: StatType, u: np.ndarray | float, df: tuple[float, float] | float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """EC densities rho_0..rho_3 at thresholds ``u`` as log-magnitudes and signs.

    Parameters
    ----------
    stat_type : {"Z", "t", "F"}
        The random field.
    u : float or np.ndarray
        Thresholds on the statistic's scale (F thresholds are >= 0 to be meaningful).
    df : (df_interest, df_error) or float
        Degrees of freedom (a number is the error dof of a t field); ignored for Z.

    Returns
    -------
    log_magnitude, sign : np.ndarray
        Arrays of shape ``(4,) + np.shape(u)``; rho_d = sign[d] * exp(log_magnitude[d]) (-inf where sign is 0).
    """
    stat_type = check_stat_type(stat_type)
    k, v = check_df(stat_type, df)
    u = np.asarray(u, dtype=float)
    if stat_type == "Z":
        return _gaussian(u)
    if stat_type == "t":
        return _student(u, v)
    return _fisher(u, k, v)


def ec_densities(
    stat_type: StatType, u: np.ndarray | float, df: tuple[float, float] | float | None = None
) -> np.ndarray:
    """EC densities rho_0..rho_3 at ``u`` as plain numbers, shape ``(4,) + np.shape(u)`` (may underflow to 0)."""
    log_mag, sign = log_ec_densities(stat_type, u, df)
    with np.errstate(invalid="ignore"):
        return np.where(sign == 0, 0.0, sign * np.exp(log_mag))


def log_uncorrected_p(
    stat_type: StatType, u: np.ndarray | float, df: tuple[float, float] | float | None = None
) -> np.ndarray:
    """Natural log of the voxel-wise (uncorrected) p value P(S >= u): rho_0 in log space."""
    stat_type = check_stat_type(stat_type)
    k, v = check_df(stat_type, df)
    u = np.asarray(u, dtype=float)
    if stat_type == "Z":
        return scipy_stats.norm.logsf(u)
    if stat_type == "t":
        return stats.t_logsf(u, v)
    return np.where(u > 0, stats.f_logsf(np.maximum(u, 0.0), k, v), 0.0)


def threshold_from_p(
    stat_type: StatType, p: float, df: tuple[float, float] | float | None = None
) -> float:
    """Statistic value whose upper-tail probability is ``p`` (the cluster-forming threshold for a p)."""
    stat_type = check_stat_type(stat_type)
    k, v = check_df(stat_type, df)
    if stat_type == "Z":
        return float(scipy_stats.norm.isf(p))
    if stat_type == "t":
        return float(scipy_stats.t.isf(p, v))
    return float(scipy_stats.f.isf(p, k, v))
