"""Peak- and cluster-level RFT family-wise error against closed forms, inversions and simulated maxima."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, special, stats

from runner.errors import RunnerError
from runner.inference.rft import ec_densities, fwe
from runner.inference.rft.resels import resel_counts

A = 4 * np.log(2)
BOX = resel_counts(np.ones((40, 48, 36), bool), [3.0, 3.5, 4.0])
N_VOXELS = 40 * 48 * 36


def gaussian_expected_ec(u: float, counts) -> float:
    """sum_d R_d rho_d(u) for a Gaussian field, written out from Worsley et al. (1996) Table 2."""
    g = np.exp(-u * u / 2)
    rho = [stats.norm.sf(u), np.sqrt(A) / (2 * np.pi) * g, A / (2 * np.pi) ** 1.5 * u * g,
           A**1.5 / (2 * np.pi) ** 2 * (u * u - 1) * g]
    return float(np.dot(counts, rho))


@pytest.mark.parametrize("u", [2.5, 3.5, 4.5, 6.0])
def test_gaussian_peak_p_is_one_minus_exp_of_expected_ec(u):
    expected = 1 - np.exp(-gaussian_expected_ec(u, BOX))
    np.testing.assert_allclose(fwe.peak_fwe_p(u, "Z", None, BOX), expected, rtol=1e-10)
    two_sided = 1 - np.exp(-2 * gaussian_expected_ec(u, BOX))
    np.testing.assert_allclose(fwe.peak_fwe_p(-u, "Z", None, BOX, two_sided=True), two_sided, rtol=1e-10)


@pytest.mark.parametrize("stat_type, df", [("Z", None), ("t", 11), ("t", 60), ("F", (3, 20))])
def test_peak_p_decreases_with_height_and_stays_finite_in_the_far_tail(stat_type, df):
    u = np.linspace(2.0, 60.0, 300)
    log_p = fwe.peak_fwe_log_p(u, stat_type, df, BOX, n_voxels=N_VOXELS)
    assert np.all(np.isfinite(log_p)) and np.all(log_p <= 0)
    assert np.all(np.diff(log_p) <= 0)
    below_one = log_p[:-1] < -1e-6  # p saturates at 1 for low thresholds on this large volume
    assert below_one.sum() > 250 and np.all(np.diff(log_p)[below_one] < 0)


@pytest.mark.parametrize("stat_type, df", [("Z", None), ("t", 11), ("t", 200), ("F", (2, 30))])
@pytest.mark.parametrize("alpha", [0.05, 0.01, 1e-6])
def test_height_threshold_inverts_the_rft_p(stat_type, df, alpha):
    u = fwe.rft_height_threshold(alpha, stat_type, df, BOX)
    np.testing.assert_allclose(fwe.rft_log_p(u, stat_type, df, BOX), np.log(alpha), rtol=1e-8)


def test_two_sided_threshold_and_bonferroni_minimum():
    u = fwe.fwe_height_threshold(0.05, "t", 20, BOX, n_voxels=N_VOXELS, two_sided=True)
    np.testing.assert_allclose(fwe.peak_fwe_p(u, "t", 20, BOX, N_VOXELS, two_sided=True), 0.05, rtol=1e-7)
    assert u > fwe.fwe_height_threshold(0.05, "t", 20, BOX, n_voxels=N_VOXELS)
    # Rough data (FWHM 0.5 voxels) have more resels than voxels: Bonferroni is smaller and SPM reports it.
    rough = resel_counts(np.ones((20, 20, 20), bool), 0.5)
    bonferroni_u = stats.t.isf(0.05 / 8000, 20)
    assert fwe.rft_height_threshold(0.05, "t", 20, rough) > bonferroni_u
    np.testing.assert_allclose(fwe.fwe_height_threshold(0.05, "t", 20, rough, n_voxels=8000), bonferroni_u,
                               rtol=1e-9)
    np.testing.assert_allclose(fwe.peak_fwe_p(5.0, "t", 20, rough, n_voxels=8000), 8000 * stats.t.sf(5.0, 20),
                               rtol=1e-9)


def test_nan_statistics_keep_nan_and_f_rejects_two_sided():
    assert np.isnan(fwe.peak_fwe_log_p(np.array([np.nan]), "t", 10, BOX))[0]
    with pytest.raises(RunnerError, match="two_sided"):
        fwe.peak_fwe_p(3.0, "F", (2, 10), BOX, two_sided=True)
    with pytest.raises(RunnerError, match="resel counts"):
        fwe.peak_fwe_p(3.0, "Z", None, [1, np.nan, 3, 4])


def test_negative_resel_counts_of_a_porous_mask_keep_their_sign():
    # A porous mask (many tunnels) has a negative Euler characteristic R0, and R1 can be negative too: the expected
    # EC is the signed sum sum_d R_d rho_d (computed here from plain EC densities), and p is 1 where it is not positive.
    counts = np.array([-3150.0, -825.6, 5000.75, 433.27])
    for u in (4.0, 5.0, 6.0):
        rho = np.maximum(ec_densities.ec_densities("t", u, 29), 0.0)
        expected = float(np.sum(counts * rho))
        assert expected > 0
        np.testing.assert_allclose(np.exp(fwe.log_expected_ec(u, "t", 29, counts)), expected, rtol=1e-10)
        np.testing.assert_allclose(fwe.peak_fwe_p(u, "t", 29, counts), -np.expm1(-expected), rtol=1e-10)
    low = 0.5
    assert np.sum(counts * np.maximum(ec_densities.ec_densities("t", low, 29), 0.0)) < 0
    assert fwe.peak_fwe_p(low, "t", 29, counts) == 1.0
    threshold = fwe.rft_height_threshold(0.05, "t", 29, counts)
    np.testing.assert_allclose(fwe.peak_fwe_p(threshold, "t", 29, counts), 0.05, rtol=1e-8)


def test_cluster_level_closed_forms_for_a_gaussian_field():
    # Friston et al. (1994): E_k = R3 rho_0 / (R3 rho_3) resels, P(K >= k) = exp(-beta k^(2/3)) with
    # beta = (Gamma(5/2) / E_k)^(2/3), and the cluster FWE p = 1 - exp(-E_c P(K >= k)).
    u = 3.09
    g = np.exp(-u * u / 2)
    rho0, rho3 = stats.norm.sf(u), A**1.5 / (2 * np.pi) ** 2 * (u * u - 1) * g
    expected_k = rho0 / rho3
    beta = (special.gamma(2.5) / expected_k) ** (2 / 3)
    expected_c = gaussian_expected_ec(u, BOX)
    result = fwe.cluster_expectations(u, "Z", None, BOX)
    np.testing.assert_allclose(result.expected_resels_per_cluster, expected_k, rtol=1e-10)
    np.testing.assert_allclose(result.expected_clusters, expected_c, rtol=1e-10)
    k = np.array([0.0, 0.5, 2.0, 10.0])
    log_p_fwe, log_p_unc = fwe.cluster_log_p(k, result)
    np.testing.assert_allclose(np.exp(log_p_unc), np.exp(-beta * k ** (2 / 3)), rtol=1e-10)
    np.testing.assert_allclose(np.exp(log_p_fwe), -np.expm1(-expected_c * np.exp(-beta * k ** (2 / 3))),
                               rtol=1e-10)
    # Set level: c or more clusters is the Poisson tail with mean E_c P(K >= k).
    log_p_set, _ = fwe.cluster_log_p(2.0, result, n_clusters=3)
    mean = expected_c * np.exp(-beta * 2.0 ** (2 / 3))
    np.testing.assert_allclose(np.exp(log_p_set), stats.poisson.sf(2, mean), rtol=1e-9)


@pytest.mark.parametrize("stat_type, df", [("Z", None), ("t", 15), ("F", (2, 25))])
def test_cluster_p_decreases_with_extent_and_the_extent_threshold_inverts_it(stat_type, df):
    from runner.inference.rft.ec_densities import threshold_from_p

    u = threshold_from_p(stat_type, 0.001, df)
    result = fwe.cluster_expectations(u, stat_type, df, BOX)
    k = np.linspace(0.0, 20.0, 200)
    log_p_fwe, log_p_unc = fwe.cluster_log_p(k, result)
    assert np.all(np.diff(log_p_fwe) < 0) and np.all(np.diff(log_p_unc) < 0)
    threshold = fwe.cluster_extent_threshold(0.05, result)
    np.testing.assert_allclose(np.exp(fwe.cluster_log_p(threshold, result)[0]), 0.05, rtol=1e-9)


def test_peak_p_matches_simulated_maxima_of_smooth_gaussian_fields():
    # 2D Gaussian fields of FWHM 8 pixels: the fraction whose maximum reaches u estimates P(max >= u).
    rng = np.random.default_rng(4)
    shape, fwhm, u = (160, 160), 8.0, 3.6
    sigma = fwhm / np.sqrt(8 * np.log(2))
    maxima = []
    for _ in range(8):
        fields = ndimage.gaussian_filter(rng.standard_normal((40,) + shape), (0, sigma, sigma), mode="wrap")
        fields /= fields.std(axis=(1, 2), keepdims=True)
        maxima.append(fields.max(axis=(1, 2)))
    observed = np.mean(np.concatenate(maxima) >= u)
    predicted = float(fwe.peak_fwe_p(u, "Z", None, resel_counts(np.ones(shape + (1,), bool), fwhm)))
    standard_error = np.sqrt(predicted * (1 - predicted) / 320)
    assert abs(observed - predicted) < 3.5 * standard_error, (observed, predicted)
