"""Tail and gamma acceleration of the permutation null (Winkler et al. 2016), checked against scipy.stats and
direct computations of the formulas; the engine-level check (500 permutations + tail against a long reference)
is in tests/test_permutation_palm.py."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from runner.inference.permutation.acceleration import (
    AD_LEVELS,
    AD_POINTS,
    AD_SHAPES,
    accelerated_critical_value,
    accelerated_p_values,
    anderson_darling,
    anderson_darling_p,
    fit_gamma,
    fit_tail,
    gpd_fit_moments,
    gpd_inverse_survival,
    gpd_survival,
    pearson3_inverse_survival,
    pearson3_survival,
)
from runner.inference.permutation.pvalues import fwe_p_values


@pytest.mark.parametrize("k", [-0.3, 0.0, 0.25])
def test_gpd_survival_is_scipy_genpareto_with_c_minus_k(k):
    scale = 1.7
    y = np.linspace(0, 12, 97)
    expected = stats.genpareto.sf(y, c=-k, scale=scale)
    np.testing.assert_allclose(gpd_survival(y, scale, k), expected, rtol=1e-12, atol=1e-300)
    for s in (0.5, 1e-3, 1e-7):
        assert stats.genpareto.sf(gpd_inverse_survival(s, scale, k), c=-k, scale=scale) == pytest.approx(s, rel=1e-9)


def test_gpd_moment_fit_matches_sample_mean_and_variance():
    rng = np.random.default_rng(1)
    sample = stats.genpareto.rvs(c=-0.15, scale=2.0, size=200_000, random_state=rng)
    scale, k = gpd_fit_moments(sample)
    mean, variance = stats.genpareto.stats(c=-k, scale=scale, moments="mv")
    assert float(mean) == pytest.approx(sample.mean(), rel=1e-10)
    assert float(variance) == pytest.approx(sample.var(ddof=1), rel=1e-10)
    assert k == pytest.approx(0.15, abs=0.03) and scale == pytest.approx(2.0, rel=0.03)


def test_anderson_darling_matches_scipy_goodness_of_fit():
    rng = np.random.default_rng(2)
    sample = stats.genpareto.rvs(c=0.1, scale=1.0, size=80, random_state=rng)
    ours = anderson_darling(stats.genpareto.cdf(sample, c=0.1, scale=1.0))
    reference = stats.goodness_of_fit(stats.genpareto, sample, known_params=dict(c=0.1, loc=0.0, scale=1.0),
                                      statistic="ad", n_mc_samples=9, rng=rng).statistic
    assert ours == pytest.approx(reference, rel=1e-10)


def test_anderson_darling_p_reads_choulakian_stephens_table():
    for row, k in enumerate(AD_SHAPES):
        for col, level in enumerate(AD_LEVELS):
            assert anderson_darling_p(AD_POINTS[row, col], k) == pytest.approx(level, abs=1e-12)
    # halfway between the k = 0 and k = 0.1 rows, at the 0.05 column
    assert anderson_darling_p(0.5 * (0.935 + 0.974), 0.05) == pytest.approx(0.05, abs=1e-12)
    statistics = np.linspace(0.2, 4.0, 50)
    p = [anderson_darling_p(a, 0.2) for a in statistics]
    assert np.all(np.diff(p) <= 0) and p[0] > 0.5 and p[-1] == 0.0  # extrapolated past the table, clipped
    assert anderson_darling_p(np.inf, 0.0) == 0.0


def test_tail_fit_of_gumbel_maxima_tracks_the_true_tail():
    rng = np.random.default_rng(3)
    null = stats.gumbel_r.rvs(loc=3.0, scale=0.4, size=1000, random_state=rng)
    fit = fit_tail(null)
    assert fit.fitted and fit.ad_p > 0.05 and fit.n_tail >= 20
    assert fit.threshold == pytest.approx(np.quantile(null, fit.quantile), abs=0.2)
    for true_p in (1e-2, 1e-3, 1e-4):
        x = stats.gumbel_r.isf(true_p, loc=3.0, scale=0.4)
        p = accelerated_p_values(np.array([x]), null, fit)[0]
        assert true_p / 4 < p < true_p * 4, (true_p, p)
    # below the tail threshold the permutation p stays
    low = np.array([np.quantile(null, 0.3)])
    assert accelerated_p_values(low, null, fit)[0] == fwe_p_values(low, null)[0]
    critical = accelerated_critical_value(null, 0.001, fit)
    assert accelerated_p_values(np.array([critical]), null, fit)[0] == pytest.approx(0.001, rel=1e-6)


def test_tail_falls_back_to_permutation_p_when_nothing_fits():
    null = np.r_[np.zeros(900), np.ones(95), [5.0, 6.0, 50.0, 400.0, 3000.0]]  # a few wild values over ties
    fit = fit_tail(null)
    assert not fit.fitted and "permutation p" in fit.describe()
    observed = np.array([0.5, 7.0, 5000.0, np.nan, -np.inf])
    np.testing.assert_array_equal(accelerated_p_values(observed, null, fit), fwe_p_values(observed, null))
    assert accelerated_critical_value(null, 0.05, fit) == accelerated_critical_value(null, 0.05, None)


@pytest.mark.parametrize("skew", [-0.8, 0.0, 0.6, 1.5])
def test_pearson3_survival_is_scipy_pearson3(skew):
    x = np.linspace(-4, 9, 61)
    np.testing.assert_allclose(pearson3_survival(x, 1.0, 1.3, skew),
                               stats.pearson3.sf(x, skew, loc=1.0, scale=1.3), rtol=1e-9, atol=1e-14)
    for p in (0.05, 1e-4):
        value = pearson3_inverse_survival(p, 1.0, 1.3, skew)
        assert stats.pearson3.sf(value, skew, loc=1.0, scale=1.3) == pytest.approx(p, rel=1e-7)


def test_gamma_fit_uses_moment_estimators():
    rng = np.random.default_rng(4)
    null = rng.gamma(3.0, 1.0, size=5000)
    fit = fit_gamma(null)
    assert fit.mean == pytest.approx(null.mean()) and fit.sd == pytest.approx(null.std())
    assert fit.skewness == pytest.approx(stats.skew(null, bias=True))
    x = np.array([10.0, 14.0, np.nan])
    p = accelerated_p_values(x, null, fit)
    np.testing.assert_allclose(p[:2], stats.gamma.sf(x[:2], 3.0), rtol=0.5)
    assert p[2] == 1.0


def test_fitted_density_is_the_scaled_scipy_pdf():
    from runner.inference.permutation.acceleration import NullFit, fitted_density

    tail = NullFit("tail", True, 500, threshold=2.0, n_tail=100, scale=0.7, shape=-0.2)
    x = np.linspace(0.0, 9.0, 50)
    expected = 100 * stats.genpareto.pdf(x - 2.0, c=0.2, scale=0.7)
    np.testing.assert_allclose(fitted_density(tail, x)[x >= 2], expected[x >= 2], rtol=1e-10)
    assert np.isnan(fitted_density(tail, x)[x < 2]).all()
    gamma = NullFit("gamma", True, 400, mean=3.0, sd=0.8, skewness=0.9)
    np.testing.assert_allclose(fitted_density(gamma, x), 400 * stats.pearson3.pdf(x, 0.9, loc=3.0, scale=0.8),
                               rtol=1e-9, atol=1e-300)
