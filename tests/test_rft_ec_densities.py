"""EC densities of Z, t and F fields against closed forms, limits, a published example and simulated fields."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, special, stats

from runner.inference.rft.ec_densities import ec_densities, log_ec_densities
from runner.inference.rft.fwe import log_expected_ec
from runner.inference.rft.resels import lattice_counts, resel_counts

A = 4 * np.log(2)
THRESHOLDS = np.array([-2.0, -0.5, 0.3, 1.0, 2.5, 3.7, 5.0])


def test_gaussian_densities_are_the_hermite_closed_forms():
    # Worsley et al. (1996) Table 2 / Adler (1981): rho_d = A^(d/2) (2 pi)^-(d+1)/2 He_(d-1)(u) exp(-u^2/2).
    u = THRESHOLDS
    g = np.exp(-u**2 / 2)
    expected = np.stack([stats.norm.sf(u), np.sqrt(A) / (2 * np.pi) * g, A / (2 * np.pi) ** 1.5 * u * g,
                         A**1.5 / (2 * np.pi) ** 2 * (u**2 - 1) * g])
    np.testing.assert_allclose(ec_densities("Z", u), expected, rtol=1e-12, atol=1e-300)


def test_t_densities_tend_to_the_gaussian_ones():
    u = THRESHOLDS
    np.testing.assert_allclose(ec_densities("t", u, 1e9), ec_densities("Z", u), rtol=1e-6, atol=1e-9)
    # ...and are heavier-tailed at low dof: at u = 4 every density exceeds the Gaussian one.
    assert np.all(ec_densities("t", 4.0, 10) > ec_densities("Z", 4.0))


@pytest.mark.parametrize("v", [5.0, 12.0, 40.0])
def test_f_with_one_numerator_dof_is_a_two_tailed_t(v):
    # F(1, v) = T^2: the excursion set {F >= u^2} is {T >= u} plus {T <= -u}, which has the same EC, so each
    # F density at u^2 is twice the t density at u.
    u = np.array([0.5, 1.5, 3.0, 6.0])
    np.testing.assert_allclose(ec_densities("F", u**2, (1, v)), 2 * ec_densities("t", u, v), rtol=1e-10)


def chi_square_densities(u: np.ndarray, k: int) -> np.ndarray:
    """Worsley (1994) chi-square field EC densities, written out here as the large-v limit of k F(k, v)."""
    common = u ** ((k - 1) / 2) * np.exp(-u / 2) / (2 ** ((k - 2) / 2) * special.gamma(k / 2))
    return np.stack([
        stats.chi2.sf(u, k),
        np.sqrt(A / (2 * np.pi)) * common,
        A / (2 * np.pi) * common / np.sqrt(u) * (u - (k - 1)),
        (A / (2 * np.pi)) ** 1.5 * common / u * (u**2 - (2 * k - 1) * u + (k - 1) * (k - 2)),
    ])


@pytest.mark.parametrize("k", [2, 3, 5])
def test_f_densities_tend_to_the_chi_square_field(k):
    u = np.array([1.0, 4.0, 9.0, 16.0])  # chi-square scale
    np.testing.assert_allclose(ec_densities("F", u / k, (k, 1e8)), chi_square_densities(u, k), rtol=1e-5, atol=1e-7)


def test_published_two_dimensional_example():
    # Brett, Penny & Kiebel (2004), "An introduction to random field theory", Human Brain Function 2nd ed., ch. 44:
    # a 100-resel 2D image (FWHM 10 pixels on 100 x 100 pixels), E[EC] = R (4 ln 2)(2 pi)^-3/2 Z exp(-Z^2/2),
    # "for a Z threshold of 3.8 ... an expected EC of 0.049".
    expected_ec = np.exp(log_expected_ec(3.8, "Z", None, [0, 0, 100, 0]))
    assert round(float(expected_ec), 3) == 0.049


def test_extreme_thresholds_keep_finite_logarithms():
    import mpmath

    u, v = np.array([60.0, 400.0]), 400.0
    log_mag, sign = log_ec_densities("t", u, v)
    assert np.all(np.isfinite(log_mag)) and np.all(sign == 1)
    # rho_1 = A^(1/2) / (2 pi) (1 + u^2/v)^(-(v-1)/2): its log written directly.
    expected = 0.5 * np.log(A) - np.log(2 * np.pi) - (v - 1) / 2 * np.log1p(u**2 / v)
    np.testing.assert_allclose(log_mag[1], expected, rtol=1e-12)
    # rho_0 = P(T >= 400) ~ 1e-522, far below double precision: compare its log with mpmath's incomplete beta.
    mpmath.mp.dps = 50
    tail = 0.5 * mpmath.betainc(v / 2, 0.5, 0, v / (v + mpmath.mpf(400) ** 2), regularized=True)
    np.testing.assert_allclose(log_mag[0, 1], float(mpmath.log(tail)), rtol=1e-10)
    assert log_mag[0, 1] < np.log(1e-300)
    z_log, _ = log_ec_densities("Z", 45.0)
    np.testing.assert_allclose(z_log[0], stats.norm.logsf(45.0), rtol=1e-12)


def smooth_fields(rng, count: int, shape: tuple[int, int], fwhm: float) -> np.ndarray:
    sigma = fwhm / np.sqrt(8 * np.log(2))
    fields = ndimage.gaussian_filter(rng.standard_normal((count,) + shape), (0, sigma, sigma), mode="wrap")
    return fields / fields.std(axis=(1, 2), keepdims=True)


def simulated_mean_ec(statistic_maps: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = np.array([[lattice_counts(m[:, :, None] > u).euler_characteristic for u in thresholds]
                       for m in statistic_maps])
    return counts.mean(axis=0), counts.std(axis=0, ddof=1) / np.sqrt(len(counts))


FWHM = 8.0
U = np.array([-1.0, 1.0, 2.0, 3.0])


def assert_close_to_simulation(expected, mean, standard_error):
    # Within 4 standard errors plus 5% (the lattice EC of a field sampled every FWHM/8 is not quite the continuum's).
    assert np.all(np.abs(mean - expected) <= 4 * standard_error + 0.05 * np.abs(expected)), (mean, expected)


def test_gaussian_field_expected_ec_matches_simulated_excursion_sets():
    rng = np.random.default_rng(0)
    maps = smooth_fields(rng, 24, (200, 200), FWHM)
    resels = resel_counts(np.ones((200, 200, 1)), FWHM)
    mean, se = simulated_mean_ec(maps, U)
    assert_close_to_simulation(resels @ ec_densities("Z", U), mean, se)


def test_t_field_expected_ec_matches_simulated_excursion_sets():
    rng = np.random.default_rng(1)
    n = 10
    t_maps = []
    for _ in range(50):
        fields = smooth_fields(rng, n, (96, 96), FWHM)
        t_maps.append(fields.mean(axis=0) / fields.std(axis=0, ddof=1) * np.sqrt(n))
    resels = resel_counts(np.ones((96, 96, 1)), FWHM)
    mean, se = simulated_mean_ec(np.array(t_maps), U)
    assert_close_to_simulation(resels @ ec_densities("t", U, n - 1), mean, se)
    # The Gaussian densities would be far off at u = 3 (the test can fail).
    assert abs(resels @ ec_densities("Z", 3.0) - mean[-1]) > 8 * se[-1]


def test_f_field_expected_ec_matches_simulated_excursion_sets():
    rng = np.random.default_rng(2)
    k, v = 3, 9
    f_maps = []
    for _ in range(50):
        fields = smooth_fields(rng, k + v, (96, 96), FWHM)
        f_maps.append((fields[:k] ** 2).mean(axis=0) / (fields[k:] ** 2).mean(axis=0))
    thresholds = np.array([0.5, 1.5, 3.0, 5.0])
    resels = resel_counts(np.ones((96, 96, 1)), FWHM)
    mean, se = simulated_mean_ec(np.array(f_maps), thresholds)
    assert_close_to_simulation(resels @ ec_densities("F", thresholds, (k, v)), mean, se)
