"""Height thresholds: closed forms, a hand-computed Benjamini-Hochberg example, statsmodels, nilearn, null data."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy.stats import binom, norm

from oracles import smooth_z_map
from runner.errors import RunnerError
from runner.inference.parametric import fdr_threshold, height_threshold

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
BLOBS = [((6, 8, 9), 5.0), ((13, 15, 8), -4.5), ((10, 18, 12), 3.5)]


def test_fpr_is_the_normal_quantile_of_alpha_per_tail():
    assert height_threshold(None, "fpr", 0.05, two_sided=True) == pytest.approx(1.959963984540054, abs=1e-12)
    assert height_threshold(None, "fpr", 0.05, two_sided=False) == pytest.approx(1.6448536269514722, abs=1e-12)
    assert height_threshold(None, "fpr", 0.001, two_sided=False) == pytest.approx(3.090232306167813, abs=1e-12)


@pytest.mark.parametrize("two_sided", [True, False])
def test_bonferroni_divides_alpha_by_the_number_of_voxels(two_sided):
    z = np.random.default_rng(0).standard_normal(1000)
    tails = 2 if two_sided else 1
    expected = norm.isf(0.05 / (tails * 1000))
    assert height_threshold(z, "bonferroni", 0.05, two_sided) == pytest.approx(expected, abs=1e-12)


def test_fdr_by_hand():
    # p = sf(z): 3.2e-5, 2.3e-4, 2.6e-3, 6.2e-3, 0.0287, 0.115 against 0.05 * k / 6 = 0.0083 ... 0.05:
    # rank 5 (z = 1.9) is the largest with p < 0.05 k / 6, rank 6 (0.115 > 0.05) fails.
    z = np.array([1.2, 4.0, 2.5, 3.5, 1.9, 2.8])
    assert fdr_threshold(z, 0.05) == pytest.approx(1.9, abs=1e-11)
    assert fdr_threshold(z, 0.05) < 1.9  # the voxel at the threshold survives a strict ">" too


def test_fdr_is_step_up():
    # alpha * k / n = 0.025, 0.05, 0.075, 0.1: rank 2 fails (0.06 > 0.05) but rank 3 passes (0.07 < 0.075).
    z = norm.isf([0.001, 0.06, 0.07, 0.9])
    assert fdr_threshold(z, 0.1) == pytest.approx(norm.isf(0.07), abs=1e-11)


def test_fdr_without_discoveries_is_infinite():
    z = np.array([0.1, -0.3, 1.0, 1.5])
    assert fdr_threshold(z, 0.05) == np.inf
    assert height_threshold(z, "fdr", 0.05) == np.inf


def test_two_sided_fdr_rejects_what_benjamini_hochberg_rejects_on_two_sided_p_values():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(3)
    z = np.concatenate([rng.standard_normal(900), rng.normal(3.5, 1.0, 60), rng.normal(-3.5, 1.0, 40)])
    rejected, *_ = multitest.multipletests(2 * norm.sf(np.abs(z)), alpha=0.05, method="fdr_bh")
    threshold = height_threshold(z, "fdr", 0.05, two_sided=True)
    assert rejected.sum() > 50
    np.testing.assert_array_equal(np.abs(z) >= threshold, rejected)


@pytest.mark.parametrize("two_sided", [True, False])
def test_voxels_without_a_statistic_are_not_counted_as_tests(two_sided):
    """NaN z (zero residual variance) is not a test: Bonferroni divides alpha by the finite count, BH ranks the
    finite p-values only (expectations from the closed form and from statsmodels on the finite values)."""
    rng = np.random.default_rng(1)
    z = np.concatenate([rng.standard_normal(300), rng.normal(3.6, 0.5, 40)])
    with_nan = np.concatenate([z, np.full(660, np.nan)])  # 1000 voxels, 340 of them with a statistic
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    alpha_tail = 0.05 / 2 if two_sided else 0.05
    bonferroni = height_threshold(with_nan, "bonferroni", 0.05, two_sided)
    assert bonferroni == pytest.approx(norm.isf(alpha_tail / 340), abs=1e-12)
    assert bonferroni < norm.isf(alpha_tail / 1000)  # counting NaN voxels would make it stricter
    p = 2 * norm.sf(np.abs(z)) if two_sided else norm.sf(z)
    rejected, *_ = multitest.multipletests(p, alpha=0.05, method="fdr_bh")
    threshold = height_threshold(with_nan, "fdr", 0.05, two_sided)
    assert 30 < rejected.sum() < 340
    np.testing.assert_array_equal((np.abs(z) if two_sided else z) >= threshold, rejected)


def test_a_map_without_any_statistic_is_refused():
    for method in ("fdr", "bonferroni"):
        with pytest.raises(RunnerError, match="no in-mask voxel has a statistic"):
            height_threshold(np.full(10, np.nan), method, 0.05)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method", ["fpr", "fdr", "bonferroni"])
@pytest.mark.parametrize("two_sided", [True, False])
def test_thresholds_equal_nilearn(seed, method, two_sided):
    glm = pytest.importorskip("nilearn.glm")
    z, mask = smooth_z_map(seed, BLOBS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, expected = glm.threshold_stats_img(
            nib.Nifti1Image(z, AFFINE),
            nib.Nifti1Image(mask.astype(np.uint8), AFFINE),
            alpha=0.05,
            height_control=method,
            two_sided=two_sided,
        )
    assert height_threshold(z[mask], method, 0.05, two_sided) == pytest.approx(expected, abs=1e-10)


def test_error_rates_on_null_data_are_at_most_nominal():
    """Under the complete null, FDR control is family-wise error control: both at most alpha."""
    n_simulations, n_voxels, alpha = 300, 500, 0.05
    null_z = np.random.default_rng(2024).standard_normal((n_simulations, n_voxels))
    upper = binom.ppf(0.975, n_simulations, alpha)  # 95% interval upper end for a true rate of alpha
    for method in ("bonferroni", "fdr"):
        for two_sided in (True, False):
            thresholds = np.array([height_threshold(z, method, alpha, two_sided) for z in null_z])
            tested = np.abs(null_z) if two_sided else null_z
            any_false_positive = (tested >= thresholds[:, None]).any(axis=1)
            assert any_false_positive.sum() <= upper, (method, two_sided, any_false_positive.sum())
            assert any_false_positive.sum() > 0  # not trivially conservative


@pytest.mark.parametrize("alpha", [0, 1, 1.5, -0.1, "x", None])
def test_alpha_outside_the_unit_interval_is_a_user_error(alpha):
    with pytest.raises(RunnerError, match="alpha must be"):
        height_threshold(np.zeros(10), "fdr", alpha)


def test_unknown_method_suggests_the_closest():
    with pytest.raises(RunnerError, match="did you mean 'fdr'") as error:
        height_threshold(np.zeros(10), "fdrr", 0.05)
    assert "\n" not in str(error.value)


def test_data_driven_methods_need_data():
    with pytest.raises(RunnerError, match="needs the z values"):
        height_threshold(None, "bonferroni", 0.05)
    with pytest.raises(RunnerError, match="no in-mask voxel has a statistic"):
        height_threshold(np.array([]), "fdr", 0.05)
