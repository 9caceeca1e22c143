"""Null calibration: on simulated null data the family-wise error rate of every method stays at its level or below.

The suite runs a light version (60 datasets, 100 permutations, a 10^3 grid) that checks the whole distribution of
each dataset's smallest FWE p-value at several levels, which keeps the power to catch a broken method: the test below
shows that it flags Manly's raw-data permutation under a strong correlated nuisance, and uncorrected p-values.
``benchmarks/calibration.py`` runs the same checks on 500 datasets with 1000 permutations on a 12^3 grid.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage
from scipy import stats as distributions

from runner.inference.permutation import PermutationOptions, permutation_inference

N_DATASETS = int(os.environ.get("RUNNER_CALIBRATION_DATASETS", 60))
N_PERMUTATIONS = int(os.environ.get("RUNNER_CALIBRATION_PERMUTATIONS", 100))
GRID = (int(os.environ.get("RUNNER_CALIBRATION_GRID", 10)),) * 3
LEVELS = (0.05, 0.2, 0.5)  # P(smallest FWE p <= level) <= level for a valid method, at every level
CHANCE = 0.001  # of a false alarm per method and level (binomial tail), so the whole module rarely flakes


def smooth_noise(rng: np.random.Generator, n: int, mask: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """n maps of Gaussian noise smoothed with a sigma of 1.5 voxels (FWHM about 3.5 voxels), unit variance."""
    rows = []
    for _ in range(n):
        volume = ndimage.gaussian_filter(rng.standard_normal(mask.shape), sigma)
        rows.append(volume[mask] / volume[mask].std())
    return np.asarray(rows)


def smallest_corrected_p(make_dataset, methods, options) -> dict[str, np.ndarray]:
    """Per method, each null dataset's smallest FWE-corrected p-value (the dataset is a family-wise error at level a
    when it is <= a)."""
    smallest = {method: np.empty(N_DATASETS) for method in methods}
    for index in range(N_DATASETS):
        Y, X, contrast, mask = make_dataset(index)
        result = permutation_inference(Y, X, contrast, mask, methods, replace(options, seed=index))
        for method in methods:
            smallest[method][index] = result.corrected_p[method].min()
    return smallest


def too_many(smallest: np.ndarray) -> list[tuple[float, float]]:
    """(level, rate) where more datasets reject than a valid method allows: above the (1 - CHANCE) quantile of
    Bin(N, level), the most rejections that a method with FWE exactly at the level gives but once in 1/CHANCE."""
    flagged = []
    for level in LEVELS:
        rate = float(np.mean(smallest <= level))
        if np.sum(smallest <= level) > distributions.binom.ppf(1 - CHANCE, len(smallest), level):
            flagged.append((level, rate))
    return flagged


def report(name: str, smallest: dict[str, np.ndarray]) -> None:
    rates = {m: [round(float(np.mean(p <= level)), 3) for level in LEVELS] for m, p in smallest.items()}
    bounds = [round(float(distributions.binom.ppf(1 - CHANCE, N_DATASETS, level)) / N_DATASETS, 3) for level in LEVELS]
    print(f"{name}: FWE rates at {LEVELS} over {N_DATASETS} null datasets, {N_PERMUTATIONS} permutations: {rates}"
          f" (largest allowed: {bounds})")


def one_sample_null():
    mask = np.ones(GRID, dtype=bool)
    mask[0, :, :] = mask[:, 0, :] = False  # an irregular border
    n = 12
    rng = np.random.default_rng(2024)

    def dataset(_index):
        return smooth_noise(rng, n, mask), np.ones((n, 1)), np.array([[1.0]]), mask

    return dataset


def correlated_nuisance_null(seed: int = 7):
    """No effect of the regressor of interest; a large one of a nuisance covariate correlated with it (r ~ 0.7)."""
    mask = np.ones(GRID, dtype=bool)
    n = 16
    rng = np.random.default_rng(seed)
    nuisance_pattern = ndimage.gaussian_filter(rng.standard_normal(GRID), 2.0)[mask]
    nuisance_pattern = 2.0 + nuisance_pattern / nuisance_pattern.std()

    def dataset(_index):
        x = rng.standard_normal(n)
        z = 0.7 * x + np.sqrt(1 - 0.7**2) * rng.standard_normal(n)
        X = np.column_stack([np.ones(n), x, z])
        Y = 3.0 + np.outer(z, nuisance_pattern) + smooth_noise(rng, n, mask)
        return Y, X, np.array([[0.0, 1.0, 0.0]]), mask

    return dataset


def test_one_sample_sign_flips_control_the_family_wise_error():
    methods = ("maxt", "clustersize", "clustermass", "tfce")
    options = PermutationOptions(n_permutations=N_PERMUTATIONS, cluster_forming_p=0.01)
    smallest = smallest_corrected_p(one_sample_null(), methods, options)
    report("one-sample sign-flips", smallest)
    for method, p in smallest.items():
        assert too_many(p) == [], method
    # sign-flipping is exact for symmetric errors: max-T is not merely conservative (its smallest p is uniform)
    for level in LEVELS:
        assert np.sum(smallest["maxt"] <= level) >= distributions.binom.ppf(CHANCE, N_DATASETS, level), level


def test_freedman_lane_controls_the_family_wise_error_with_a_correlated_nuisance():
    methods = ("maxt", "clustermass", "tfce")
    options = PermutationOptions(n_permutations=N_PERMUTATIONS, cluster_forming_p=0.01, method="freedman_lane")
    smallest = smallest_corrected_p(correlated_nuisance_null(), methods, options)
    report("Freedman-Lane", smallest)
    for method, p in smallest.items():
        assert too_many(p) == [], method


def test_the_light_calibration_flags_broken_inference():
    """The check has power: Manly's permutation of the raw data ignores the nuisance (invalid here), and the
    smallest uncorrected voxel p-value is no family-wise p-value at all."""
    options = PermutationOptions(n_permutations=N_PERMUTATIONS, cluster_forming_p=0.01, method="manly")
    smallest = smallest_corrected_p(correlated_nuisance_null(seed=8), ("maxt",), options)
    assert too_many(smallest["maxt"]) != []

    dataset = one_sample_null()
    uncorrected = np.empty(N_DATASETS)
    for index in range(N_DATASETS):
        Y, _, _, _ = dataset(index)
        t = Y.mean(axis=0) / (Y.std(axis=0, ddof=1) / np.sqrt(len(Y)))
        uncorrected[index] = (2 * distributions.t.sf(np.abs(t), len(Y) - 1)).min()
    assert too_many(uncorrected) != []
