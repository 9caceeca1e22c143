"""Null calibration: on simulated null data the family-wise error rate of every method stays at alpha or below."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage
from scipy import stats as distributions

from runner.inference.permutation import PermutationOptions, permutation_inference

ALPHA = 0.05
N_DATASETS = 200
N_PERMUTATIONS = 250
GRID = (12, 12, 12)


def smooth_noise(rng: np.random.Generator, n: int, mask: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """n maps of Gaussian noise smoothed with a sigma of 1.5 voxels (FWHM about 3.5 voxels), unit variance."""
    rows = []
    for _ in range(n):
        volume = ndimage.gaussian_filter(rng.standard_normal(mask.shape), sigma)
        rows.append(volume[mask] / volume[mask].std())
    return np.asarray(rows)


def binomial_interval(n: int, p: float) -> tuple[float, float]:
    """Central 95% interval of the proportion of rejections among n independent tests at level p."""
    return distributions.binom.ppf(0.025, n, p) / n, distributions.binom.ppf(0.975, n, p) / n


def family_wise_rates(make_dataset, methods, options) -> dict[str, float]:
    rejections = {method: 0 for method in methods}
    for index in range(N_DATASETS):
        Y, X, contrast, mask = make_dataset(index)
        result = permutation_inference(Y, X, contrast, mask, methods, replace(options, seed=index))
        for method in methods:
            rejections[method] += bool(np.any(result.corrected_p[method] <= ALPHA))
    return {method: count / N_DATASETS for method, count in rejections.items()}


@pytest.mark.slow
def test_one_sample_sign_flips_control_the_family_wise_error():
    mask = np.ones(GRID, dtype=bool)
    mask[0, :, :] = mask[:, 0, :] = False  # an irregular border
    n = 12
    rng = np.random.default_rng(2024)

    def dataset(_index):
        return smooth_noise(rng, n, mask), np.ones((n, 1)), np.array([[1.0]]), mask

    methods = ("maxt", "clustersize", "clustermass", "tfce")
    options = PermutationOptions(n_permutations=N_PERMUTATIONS, cluster_forming_p=0.01)
    rates = family_wise_rates(dataset, methods, options)
    low, high = binomial_interval(N_DATASETS, ALPHA)
    print(f"one-sample FWE rates over {N_DATASETS} null datasets: {rates} (95% interval {low:.3f}-{high:.3f})")
    for method, rate in rates.items():
        assert rate <= high, (method, rate)
    # sign-flipping is exact for symmetric errors: max-T is not merely conservative
    assert rates["maxt"] >= low


@pytest.mark.slow
def test_freedman_lane_controls_the_family_wise_error_with_a_correlated_nuisance():
    """No effect of the regressor of interest; a large one of a nuisance covariate correlated with it (r ~ 0.7)."""
    mask = np.ones(GRID, dtype=bool)
    n = 16
    rng = np.random.default_rng(7)
    nuisance_pattern = ndimage.gaussian_filter(rng.standard_normal(GRID), 2.0)[mask]
    nuisance_pattern = 2.0 + nuisance_pattern / nuisance_pattern.std()

    def dataset(_index):
        x = rng.standard_normal(n)
        z = 0.7 * x + np.sqrt(1 - 0.7**2) * rng.standard_normal(n)
        X = np.column_stack([np.ones(n), x, z])
        Y = 3.0 + np.outer(z, nuisance_pattern) + smooth_noise(rng, n, mask)
        return Y, X, np.array([[0.0, 1.0, 0.0]]), mask

    methods = ("maxt", "clustermass", "tfce")
    options = PermutationOptions(n_permutations=N_PERMUTATIONS, cluster_forming_p=0.01,
                                 method="freedman_lane")
    rates = family_wise_rates(dataset, methods, options)
    low, high = binomial_interval(N_DATASETS, ALPHA)
    print(f"Freedman-Lane FWE rates over {N_DATASETS} null datasets: {rates} (95% interval {low:.3f}-{high:.3f})")
    for method, rate in rates.items():
        assert rate <= high, (method, rate)
