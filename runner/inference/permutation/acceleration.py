"""Faster permutation inference: p-values of the maximum statistic beyond what the permutations resolve.

Winkler et al. 2016 ("Faster permutation inference in brain imaging", NeuroImage 141) approximate the upper tail of
the permutation null of the maximum statistic by a distribution fitted to it:

- ``tail``: a generalised Pareto distribution (GPD) fitted to the values above a threshold ``u`` (Knijnenburg et
  al. 2009). The GPD is parameterised as Hosking & Wallis (1987): survival ``S(y) = (1 - k y / a)^(1/k)`` of the
  excess ``y = x - u`` (``S = exp(-y / a)`` when ``k = 0``; scipy's ``genpareto`` has ``c = -k``, ``scale = a``),
  fitted by their method of moments (section 3.2): with mean ``m`` and variance ``s2`` of the excesses,
  ``a = m (m^2 / s2 + 1) / 2`` and ``k = (m^2 / s2 - 1) / 2``; a positive k (a tail with an upper end) is replaced by
  the exponential tail (k = 0, a = m). The threshold is chosen as PALM does: candidate
  tails start at the empirical quantiles 0.751, 0.761, ..., 0.971 of the null; the first whose Anderson-Darling
  goodness-of-fit p (Choulakian & Stephens 2001, table 2, a and k estimated) exceeds 0.05 is kept, ``u`` being
  halfway between the last value below the tail and the first in it. Observed values above ``u`` get
  ``p = (n_tail / P) S(x - u)``; values at or below it keep the permutation p. When no candidate fits, every p
  stays the permutation p and the fit says why.
- ``gamma``: a Pearson type III (shifted gamma) distribution with the mean, standard deviation and skewness of the
  null (moment estimators), whose survival gives every p (Winkler et al. 2016, "gamma approximation").

Departures from PALM's ``palm_pareto.m``, on purpose: k is capped at 0, because a tail with an upper end gives
p = 0 to every value beyond it, a certainty 500 permutations cannot give (the maxima of t, z, cluster and TFCE
statistics have unbounded, exponential or heavier tails); the empirical CDF counts ties as ``#{null <= x} / P`` (every
tied value is in or out of a tail together, so no excess is zero); the shape used to read the Anderson-Darling table
is clipped to the table's range [-0.5, 0.9] (PALM reads it at ``max(0.5, k)``); p beyond the upper end of a
bounded tail (``k > 0``) is floored at :data:`SMALLEST_P` instead of 0, so -log10 p stays finite; the identity
(element 0, the observed maximum) is left out of the fitted null (:func:`fit_null`), since with an effect it is
an outlier that inflates the moment estimates (PALM fits the distribution with it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from runner.inference.permutation.pvalues import critical_value, fwe_p_values

ACCELERATIONS = ("none", "tail", "gamma")
TAIL_QUANTILES = tuple(q / 1000 for q in range(751, 972, 10))  # PALM's candidates 0.751 ... 0.971
GOODNESS_OF_FIT_P = 0.05  # a tail is kept when the Anderson-Darling p exceeds this
MIN_TAIL = 5  # fewer values above a candidate threshold cannot be fitted by two moments
SMALLEST_P = float(np.finfo(np.float64).tiny)

# Choulakian & Stephens (2001), table 2 (case 3: a and k estimated): upper-tail points of A^2 per shape k.
AD_SHAPES = np.array([0.9, 0.5, 0.2, 0.1, 0.0, -0.1, -0.2, -0.3, -0.4, -0.5])
AD_LEVELS = np.array([0.5, 0.25, 0.1, 0.05, 0.025, 0.01, 0.005, 0.001])
AD_POINTS = np.array([
    [0.339, 0.471, 0.641, 0.771, 0.905, 1.086, 1.226, 1.559],
    [0.356, 0.499, 0.685, 0.830, 0.978, 1.180, 1.336, 1.707],
    [0.376, 0.534, 0.741, 0.903, 1.069, 1.296, 1.471, 1.893],
    [0.386, 0.550, 0.766, 0.935, 1.110, 1.348, 1.532, 1.966],
    [0.397, 0.569, 0.796, 0.974, 1.158, 1.409, 1.603, 2.064],
    [0.410, 0.591, 0.831, 1.020, 1.215, 1.481, 1.687, 2.176],
    [0.426, 0.617, 0.873, 1.074, 1.283, 1.567, 1.788, 2.314],
    [0.445, 0.649, 0.924, 1.140, 1.365, 1.672, 1.909, 2.475],
    [0.468, 0.688, 0.985, 1.221, 1.465, 1.799, 2.058, 2.674],
    [0.496, 0.735, 1.061, 1.321, 1.590, 1.958, 2.243, 2.922],
])


@dataclass(frozen=True)
class NullFit:
    """A distribution fitted to the null of a maximum statistic (``kind`` "tail" or "gamma").

    ``fitted`` False means no candidate fitted (``reason`` says why) and p-values stay the permutation p.
    Tail: ``threshold`` u, ``n_tail`` values above it out of ``n_null``, GPD ``scale`` a and ``shape`` k
    (Hosking), Anderson-Darling ``ad_statistic`` and ``ad_p``, the ``quantile`` that started the tail and the
    number of candidates ``tried``. Gamma: ``mean``, ``sd``, ``skewness`` of the null.
    """

    kind: str
    fitted: bool
    n_null: int
    threshold: float = float("nan")
    n_tail: int = 0
    scale: float = float("nan")
    shape: float = float("nan")
    ad_statistic: float = float("nan")
    ad_p: float = float("nan")
    quantile: float = float("nan")
    tried: int = 0
    mean: float = float("nan")
    sd: float = float("nan")
    skewness: float = float("nan")
    reason: str = ""

    @property
    def tail_fraction(self) -> float:
        """Share of the null above the threshold: the p at the threshold."""
        return self.n_tail / self.n_null if self.n_null else float("nan")

    def describe(self) -> str:
        """One line for the report and run.log."""
        if not self.fitted:
            return f"{self.kind} approximation not used: {self.reason}; p-values are the permutation p"
        if self.kind == "gamma":
            return (f"gamma (Pearson III) approximation of the null: mean {self.mean:.4g}, sd {self.sd:.4g}, "
                    f"skewness {self.skewness:.3g}")
        return (f"generalised Pareto tail above {self.threshold:.4g} ({self.n_tail} of {self.n_null} null values, "
                f"from quantile {self.quantile:.3f}): scale {self.scale:.4g}, shape k {self.shape:.3g}; "
                f"Anderson-Darling A2 = {self.ad_statistic:.3f}, p = {self.ad_p:.3f} "
                f"(candidate {self.tried} of {len(TAIL_QUANTILES)})")


def gpd_fit_moments(excess: np.ndarray) -> tuple[float, float]:
    """GPD scale a and shape k of excesses over a threshold by the method of moments (Hosking & Wallis 1987, 3.2).

    The variance is the unbiased sample variance, as in PALM.
    """
    excess = np.asarray(excess, dtype=np.float64)
    mean, variance = float(np.mean(excess)), float(np.var(excess, ddof=1))
    ratio = mean * mean / variance
    return mean * (ratio + 1.0) / 2.0, (ratio - 1.0) / 2.0


def gpd_survival(excess: np.ndarray, scale: float, shape: float) -> np.ndarray:
    """``S(y) = (1 - k y / a)^(1/k)`` (``exp(-y / a)`` for k = 0); 0 beyond the upper end ``a / k`` when k > 0."""
    excess = np.asarray(excess, dtype=np.float64)
    if abs(shape) < np.finfo(np.float64).eps:
        return np.exp(-excess / scale)
    base = 1.0 - shape * excess / scale
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        survival = np.where(base > 0, np.power(np.maximum(base, 0.0), 1.0 / shape), 0.0)
    return np.where(excess <= 0, 1.0, survival)


def gpd_inverse_survival(survival: float, scale: float, shape: float) -> float:
    """The excess y with ``S(y) = survival``: ``a (1 - s^k) / k`` (``-a log s`` for k = 0)."""
    if abs(shape) < np.finfo(np.float64).eps:
        return float(-scale * np.log(survival))
    return float(scale * (1.0 - survival**shape) / shape)


def anderson_darling(probabilities: np.ndarray) -> float:
    """Anderson-Darling statistic of probabilities that are uniform under the fitted model.

    ``A2 = -n - (1/n) sum_i (2i - 1) [log z_(i) + log(1 - z_(n+1-i))]`` with ``z`` sorted ascending
    (Anderson & Darling 1954); infinite when some ``z`` is 0 or 1.
    """
    z = np.sort(np.asarray(probabilities, dtype=np.float64))
    n = z.size
    weights = 2.0 * np.arange(1, n + 1) - 1.0
    with np.errstate(divide="ignore"):
        total = np.sum(weights * (np.log(z) + np.log1p(-z[::-1])))
    return float(-n - total / n)


def anderson_darling_p(statistic: float, shape: float) -> float:
    """Approximate p of an Anderson-Darling statistic for a GPD fit with estimated a and k.

    Table 2 of Choulakian & Stephens (2001) is interpolated linearly in k (clipped to [-0.5, 0.9]), then in A2
    between its levels and extrapolated linearly beyond them (as PALM), the result clipped to [0, 1].
    """
    if not np.isfinite(statistic):
        return 0.0
    k = float(np.clip(shape, AD_SHAPES[-1], AD_SHAPES[0]))
    order = np.argsort(AD_SHAPES)
    row = np.array([np.interp(k, AD_SHAPES[order], AD_POINTS[order, j]) for j in range(AD_LEVELS.size)])
    if statistic <= row[0]:
        i = 0
    elif statistic >= row[-1]:
        i = row.size - 2
    else:
        i = int(np.searchsorted(row, statistic)) - 1
    slope = (AD_LEVELS[i + 1] - AD_LEVELS[i]) / (row[i + 1] - row[i])
    return float(np.clip(AD_LEVELS[i] + slope * (statistic - row[i]), 0.0, 1.0))


def fit_tail(null: np.ndarray, cap_shape: bool = True) -> NullFit:
    """Fit a GPD to the upper tail of a null distribution, the threshold chosen by goodness of fit (see module).

    ``cap_shape`` False keeps a positive shape (a tail with an upper end), as PALM; for comparisons only.
    """
    values = np.sort(np.asarray(null, dtype=np.float64))
    values = values[np.isfinite(values)]
    n_null = values.size
    # the empirical CDF #{null <= x} / P: tied values are in or out of a tail together
    ecdf = np.searchsorted(values, values, side="right") / max(n_null, 1)
    tried = 0
    for quantile in TAIL_QUANTILES:
        first = int(np.argmax(ecdf >= quantile)) if n_null and ecdf[-1] >= quantile else n_null
        tail = values[first:]
        if first == 0 or tail.size < MIN_TAIL or np.ptp(tail) == 0:
            continue
        tried += 1
        threshold = 0.5 * (values[first - 1] + values[first])
        excess = tail - threshold
        scale, shape = gpd_fit_moments(excess)
        if shape > 0 and cap_shape:  # a bounded tail would give p = 0 beyond its end: take the exponential tail instead
            scale, shape = float(np.mean(excess)), 0.0
        statistic = anderson_darling(1.0 - gpd_survival(excess, scale, shape))
        p = anderson_darling_p(statistic, shape)
        if p > GOODNESS_OF_FIT_P:
            return NullFit("tail", True, n_null, threshold=float(threshold), n_tail=int(tail.size), scale=scale,
                           shape=shape, ad_statistic=statistic, ad_p=p, quantile=quantile, tried=tried)
    reason = (f"no candidate tail (quantiles {TAIL_QUANTILES[0]:.3f} to {TAIL_QUANTILES[-1]:.3f}) passed the "
              f"Anderson-Darling test at p > {GOODNESS_OF_FIT_P}" if tried
              else f"the null has too few distinct values above its 75th percentile ({n_null} values)")
    return NullFit("tail", False, n_null, tried=tried, reason=reason)


def fit_gamma(null: np.ndarray) -> NullFit:
    """Mean, standard deviation and skewness (moment estimators) of the null, for the Pearson III approximation."""
    values = np.asarray(null, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 3 or np.ptp(values) == 0:
        return NullFit("gamma", False, values.size, reason="the null has fewer than 3 distinct values")
    mean = float(np.mean(values))
    centred = values - mean
    m2, m3 = float(np.mean(centred**2)), float(np.mean(centred**3))
    return NullFit("gamma", True, values.size, mean=mean, sd=float(np.sqrt(m2)), skewness=m3 / m2**1.5)


def pearson3_survival(x: np.ndarray, mean: float, sd: float, skewness: float) -> np.ndarray:
    """Survival of the Pearson type III distribution: a gamma of shape 4 / g^2, shifted and scaled to the mean,
    standard deviation and skewness g (mirrored for g < 0; the normal for g = 0)."""
    x = np.asarray(x, dtype=np.float64)
    if abs(skewness) < 1e-8:
        return special.ndtr(-(x - mean) / sd)
    alpha = 4.0 / skewness**2
    standard = alpha + 2.0 * (x - mean) / (sd * skewness)  # gamma variable (mirrored when g < 0)
    standard = np.maximum(standard, 0.0)
    return special.gammaincc(alpha, standard) if skewness > 0 else special.gammainc(alpha, standard)


def pearson3_inverse_survival(p: float, mean: float, sd: float, skewness: float) -> float:
    """The value whose Pearson III survival is ``p``."""
    if abs(skewness) < 1e-8:
        return float(mean + sd * special.ndtri(1.0 - p))
    alpha = 4.0 / skewness**2
    standard = special.gammainccinv(alpha, p) if skewness > 0 else special.gammaincinv(alpha, p)
    return float(mean + (standard - alpha) * sd * skewness / 2.0)


def fitted_density(fit: NullFit, x: np.ndarray) -> np.ndarray:
    """Density of the fitted distribution in permutations per unit of the statistic (``n_null`` times the pdf; the
    tail's only above its threshold, NaN below), for drawing over a histogram of the null."""
    x = np.asarray(x, dtype=np.float64)
    if fit.kind == "gamma":
        if abs(fit.skewness) < 1e-8:
            return fit.n_null * stats.norm.pdf(x, fit.mean, fit.sd)
        alpha = 4.0 / fit.skewness**2
        standard = alpha + 2.0 * (x - fit.mean) / (fit.sd * fit.skewness)
        return fit.n_null * stats.gamma.pdf(standard, alpha) * 2.0 / (fit.sd * abs(fit.skewness))
    excess = x - fit.threshold
    if abs(fit.shape) < np.finfo(np.float64).eps:
        pdf = np.exp(-excess / fit.scale) / fit.scale
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            pdf = np.power(np.maximum(1.0 - fit.shape * excess / fit.scale, 0.0), 1.0 / fit.shape - 1.0) / fit.scale
    return np.where(excess >= 0, fit.n_tail * pdf, np.nan)


def fit_null(null: np.ndarray, kind: str) -> NullFit | None:
    """The fit ``kind`` asks for ("tail", "gamma"; None for "none") to a null whose element 0 is the identity.

    The identity's value (the observed maximum) is left out of the fit: with a real effect it is an outlier of the
    null that would inflate the moments, and so every approximated p.
    """
    permuted = np.asarray(null, dtype=np.float64)[1:]
    if kind == "tail":
        return fit_tail(permuted)
    if kind == "gamma":
        return fit_gamma(permuted)
    return None


def accelerated_p_values(observed: np.ndarray, null: np.ndarray, fit: NullFit | None) -> np.ndarray:
    """FWE p of observed maxima-comparable values: the fitted distribution's where it applies, else permutation p.

    NaN and -inf observed values (excluded voxels, voxels outside clusters) keep p = 1.
    """
    observed = np.asarray(observed, dtype=np.float64)
    p = fwe_p_values(observed, null)
    if fit is None or not fit.fitted:
        return p
    valid = np.isfinite(observed)
    if fit.kind == "tail":
        above = valid & (observed > fit.threshold)
        fitted = fit.tail_fraction * gpd_survival(observed[above] - fit.threshold, fit.scale, fit.shape)
        p[above] = np.maximum(fitted, SMALLEST_P)
    else:
        fitted = pearson3_survival(observed[valid], fit.mean, fit.sd, fit.skewness)
        p[valid] = np.clip(fitted, SMALLEST_P, 1.0)
    return p


def accelerated_critical_value(null: np.ndarray, alpha: float, fit: NullFit | None) -> float:
    """The value an observed maximum must exceed for p < alpha under the fit (the permutation one without it, or
    when alpha is above the fitted tail)."""
    if fit is None or not fit.fitted:
        return critical_value(null, alpha)
    if fit.kind == "gamma":
        return pearson3_inverse_survival(alpha, fit.mean, fit.sd, fit.skewness)
    if alpha >= fit.tail_fraction:
        return critical_value(null, alpha)
    return fit.threshold + gpd_inverse_survival(alpha / fit.tail_fraction, fit.scale, fit.shape)
