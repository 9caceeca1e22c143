"""Isotropic Gaussian smoothing given in mm, converted per axis so anisotropic voxels are handled."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from runner.errors import RunnerError

FWHM_PER_SIGMA = np.sqrt(8.0 * np.log(2.0))


def fwhm_to_sigma_voxels(fwhm_mm: float, affine: np.ndarray) -> np.ndarray:
    """Gaussian sigma in voxels along each axis for a FWHM in mm."""
    voxel_sizes = np.sqrt(np.sum(np.asarray(affine)[:3, :3] ** 2, axis=0))
    return float(fwhm_mm) / (FWHM_PER_SIGMA * voxel_sizes)


def smooth_volume(volume: np.ndarray, affine: np.ndarray, fwhm_mm: float | None) -> np.ndarray:
    """Smooth a 3D volume with a Gaussian of ``fwhm_mm`` (non-finite voxels count as 0, as in nilearn and SPM).

    Applied separably along each axis (scipy's gaussian_filter1d, reflecting borders, kernel truncated at
    4 sigma), which is the same kernel nilearn applies in its maskers.
    """
    out = np.where(np.isfinite(volume), volume, 0.0).astype(np.float64, copy=True)
    if not fwhm_mm:
        return out
    for axis, sigma in enumerate(fwhm_to_sigma_voxels(fwhm_mm, affine)):
        if sigma > 0:
            gaussian_filter1d(out, sigma, axis=axis, output=out)
    return out


def check_smoothing(fwhm_mm: float | None, grid) -> None:
    """Refuse a kernel wider than the whole field of view: it would flatten every map (and its Gaussian kernel,
    4 sigma each side, would be allocated at that size)."""
    if not fwhm_mm:
        return
    extent = np.asarray(grid.shape, dtype=float) * np.sqrt(np.sum(np.asarray(grid.affine)[:3, :3] ** 2, axis=0))
    if fwhm_mm > extent.max():
        field = " x ".join(f"{e:g}" for e in np.round(extent, 1))
        raise RunnerError(f"data.smoothing_fwhm={fwhm_mm:g} mm is wider than the field of view of the data "
                          f"({field} mm) and would flatten every map; give a FWHM below {extent.max():g} mm "
                          "(6-8 mm is usual)")
