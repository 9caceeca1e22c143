"""FWE p-values and critical values against brute-force counting over the null."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runner.inference.permutation import critical_value, fwe_p_values
from runner.inference.permutation.pvalues import uncorrected_p_values


def _brute_p(observed: float, null: np.ndarray) -> float:
    return sum(1 for value in null if value >= observed) / len(null)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fwe_p_is_the_share_of_null_maxima_at_or_above_the_observed_value(seed):
    rng = np.random.default_rng(seed)
    null = rng.gamma(2.0, size=57)
    observed = np.concatenate([rng.gamma(2.0, size=40), null[:5], [null.max() * 2, 0.0]])
    expected = [_brute_p(value, null) for value in observed]
    np.testing.assert_array_equal(fwe_p_values(observed, null), expected)


def test_rounding_does_not_break_ties_and_nan_gets_one():
    null = np.array([1.0, 2.0, 3.0, 4.0])
    # 3 (1 + 1e-12) ties with 3 (an exact test's mirrored element rounds like this); 3 (1 + 1e-8) does not
    p = fwe_p_values(np.array([3.0 * (1 + 1e-12), 3.0 * (1 + 1e-8), np.nan]), null)
    np.testing.assert_array_equal(p, [0.5, 0.25, 1.0])


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.5])
@pytest.mark.parametrize("size", [20, 101, 1000])
def test_critical_value_separates_p_below_alpha_from_the_rest(alpha, size):
    """Observed values above the critical value, and only those, have FWE p < alpha (brute-force counts)."""
    rng = np.random.default_rng(size)
    null = rng.standard_normal(size)
    bar = critical_value(null, alpha)
    candidates = np.concatenate([null, null + 1e-6, null - 1e-6])
    brute = (null[None, :] >= candidates[:, None]).mean(axis=1)  # every pair compared, no sorting
    np.testing.assert_array_equal(brute < alpha, candidates > bar)
    assert bar == np.sort(null)[::-1][math.ceil(alpha * size) - 1]


def test_critical_value_edge_cases():
    assert critical_value(np.array([]), 0.05) != critical_value(np.array([]), 0.05)  # NaN: no null
    # alpha P < 1: only a value above the whole null (never the observed maximum, which is in it) gets p < alpha
    assert critical_value(np.array([1.0, 2.0]), 0.4) == 2.0


def test_uncorrected_p_counts_the_identity():
    p = uncorrected_p_values(np.array([0, 3, 9]), 10, np.array([False, False, True]))
    np.testing.assert_array_equal(p, [0.1, 0.4, 1.0])
