"""Smoothness estimates from residuals of white noise smoothed to a known FWHM (Kiebel et al. 1999)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from runner.errors import RunnerError
from runner.inference.rft.smoothness import estimate_smoothness


def smooth_noise(rng, n: int, shape: tuple[int, int, int], fwhm) -> np.ndarray:
    """n maps of white noise smoothed by a Gaussian of the given FWHM (voxels), periodic so it is stationary."""
    sigma = np.broadcast_to(np.asarray(fwhm, float), (3,)) / np.sqrt(8 * np.log(2))
    return ndimage.gaussian_filter(rng.standard_normal((n,) + shape), (0, *sigma), mode="wrap")


def residuals_of(maps: np.ndarray, mask: np.ndarray, design: np.ndarray) -> np.ndarray:
    y = maps[:, mask]
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    return y - design @ beta


@pytest.mark.parametrize("fwhm", [4.0, 8.0])
def test_fwhm_of_smoothed_white_noise_within_ten_percent(fwhm):
    rng = np.random.default_rng(int(fwhm))
    shape = (64, 64, 64)
    mask = np.ones(shape, bool)
    maps = smooth_noise(rng, 12, shape, fwhm)
    result = estimate_smoothness(residuals_of(maps, mask, np.ones((12, 1))), mask, np.diag([2, 2, 2, 1.0]), 11)
    np.testing.assert_allclose(result.fwhm_voxels, fwhm, rtol=0.10)
    np.testing.assert_allclose(result.fwhm_mm, 2 * result.fwhm_voxels)
    # Resels per voxel of a stationary field: 1 / prod(FWHM) at every voxel, on average.
    np.testing.assert_allclose(np.nanmean(result.resels_per_voxel), fwhm**-3, rtol=0.15)
    assert result.dimension == 3 and result.n_voxels_used == mask.sum()


def test_anisotropic_smoothness_and_voxel_sizes():
    rng = np.random.default_rng(5)
    shape = (48, 48, 48)
    fwhm = np.array([3.5, 5.0, 7.0])
    mask = np.ones(shape, bool)
    maps = smooth_noise(rng, 16, shape, fwhm)
    affine = np.diag([1.5, 2.0, 3.0, 1.0])
    result = estimate_smoothness(residuals_of(maps, mask, np.ones((16, 1))), mask, affine, 15)
    np.testing.assert_allclose(result.fwhm_voxels, fwhm, rtol=0.10)
    np.testing.assert_allclose(result.fwhm_mm, result.fwhm_voxels * [1.5, 2.0, 3.0])
    np.testing.assert_allclose(result.resel_size_voxels, np.prod(result.fwhm_voxels))


def test_degrees_of_freedom_correction_with_a_subset_of_residual_maps():
    # 24 maps and 12 regressors leave 12 dof: each residual map carries half the noise variance. Scaling the average
    # over maps by n / dof (SPM) keeps the estimate unbiased, for all maps or for a subset standardised by the full
    # fit's residual variance; leaving the factor out would inflate the FWHM by sqrt(2).
    rng = np.random.default_rng(11)
    shape = (40, 40, 40)
    n, p, fwhm = 24, 12, 4.0
    mask = np.ones(shape, bool)
    design = np.column_stack([np.ones(n), rng.standard_normal((n, p - 1))])
    residuals = residuals_of(smooth_noise(rng, n, shape, fwhm), mask, design)
    variance = np.sum(residuals**2, axis=0) / (n - p)
    every_map = estimate_smoothness(residuals, mask, np.eye(4), n - p)
    subset = estimate_smoothness(residuals[:8], mask, np.eye(4), n - p, residual_variance=variance, n_maps=n)
    uncorrected = estimate_smoothness(residuals[:8], mask, np.eye(4), n - p, residual_variance=variance,
                                      n_maps=n - p)
    np.testing.assert_allclose(every_map.fwhm_voxels, fwhm, rtol=0.10)
    np.testing.assert_allclose(subset.fwhm_voxels, fwhm, rtol=0.10)
    assert np.all(uncorrected.fwhm_voxels / fwhm > 1.25)


def test_irregular_mask_uses_in_mask_neighbours_only():
    rng = np.random.default_rng(3)
    shape = (56, 56, 56)
    grid = np.indices(shape) - 27.5
    mask = (grid**2).sum(axis=0) <= 24**2
    mask[20:36, 20:36, :] = False  # a hole through the ball
    maps = smooth_noise(rng, 16, shape, 4.0)
    # Values outside the mask must not leak in: set them to garbage before the fit.
    maps[:, ~mask] = 1e6
    result = estimate_smoothness(residuals_of(maps, mask, np.ones((16, 1))), mask, np.eye(4), 15)
    np.testing.assert_allclose(result.fwhm_voxels, 4.0, rtol=0.10)


def test_isolated_voxels_and_constant_voxels_have_no_estimate():
    rng = np.random.default_rng(0)
    mask = np.zeros((10, 10, 10), bool)
    mask[2:8, 2:8, 2:8] = True
    mask[0, 0, 0] = True  # no in-mask neighbour along any axis
    residuals = rng.standard_normal((6, int(mask.sum())))
    residuals[:, 5] = 0.0  # zero variance at voxel (2, 2, 6)
    result = estimate_smoothness(residuals, mask, np.eye(4), 5)
    # Voxel 6, (2, 2, 7), has only the constant voxel as a neighbour along z: no derivative there either.
    undefined = [0, 5, 6]
    assert np.all(np.isnan(result.resels_per_voxel[undefined]))
    assert np.all(np.isfinite(np.delete(result.resels_per_voxel, undefined)))


def test_slice_grids_have_two_dimensions():
    rng = np.random.default_rng(8)
    shape = (96, 96, 1)
    sigma = 6.0 / np.sqrt(8 * np.log(2))
    maps = ndimage.gaussian_filter(rng.standard_normal((16, 96, 96)), (0, sigma, sigma), mode="wrap")[..., None]
    mask = np.ones(shape, bool)
    result = estimate_smoothness(residuals_of(maps, mask, np.ones((16, 1))), mask, np.eye(4), 15)
    assert result.dimension == 2 and result.fwhm_voxels[2] == 1.0
    np.testing.assert_allclose(result.fwhm_voxels[:2], 6.0, rtol=0.10)


def test_bad_inputs_are_user_errors():
    mask = np.ones((4, 4, 4), bool)
    with pytest.raises(RunnerError, match="residuals"):
        estimate_smoothness(np.zeros((5, 10)), mask, np.eye(4), 4)
    with pytest.raises(RunnerError, match="degrees of freedom"):
        estimate_smoothness(np.zeros((5, 64)), mask, np.eye(4), 0)
