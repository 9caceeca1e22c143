"""Pure building blocks for the simulated demo datasets: planted blobs and smooth noise on a grid.

Nothing here touches files; ``runner.demo.datasets`` composes these into datasets on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

FWHM_PER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))
# Blobs are cut at this many standard deviations, so the ground truth is exactly 0 elsewhere.
BLOB_TRUNCATE_SIGMAS = 2.5


@dataclass(frozen=True)
class Blob:
    """An isotropic Gaussian bump of signal: peak ``amplitude`` at ``center_mm`` (MNI), width ``sigma_mm``."""

    label: str
    center_mm: tuple[float, float, float]
    sigma_mm: float
    amplitude: float

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly description, for dataset_description.json."""
        return {
            "label": self.label,
            "center_mm": list(self.center_mm),
            "sigma_mm": self.sigma_mm,
            "fwhm_mm": round(self.sigma_mm * FWHM_PER_SIGMA, 2),
            "amplitude": self.amplitude,
        }


def voxel_coordinates_mm(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """World (mm) coordinates of every voxel centre, shape ``shape + (3,)``."""
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ grid + affine[:3, 3:4]
    return world.T.reshape(*shape, 3)


def blob_map(blobs: list[Blob], mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Sum of truncated Gaussian blobs inside ``mask`` (float64, 0 outside the mask and the blobs).

    Parameters
    ----------
    blobs : list of Blob
        Signal to plant; overlapping blobs add up.
    mask : np.ndarray
        3D boolean brain mask.
    affine : np.ndarray
        4x4 voxel-to-mm affine of the grid.

    Returns
    -------
    np.ndarray
        Array of ``mask.shape``.
    """
    world = voxel_coordinates_mm(mask.shape, affine)
    signal = np.zeros(mask.shape, dtype=np.float64)
    for blob in blobs:
        squared_distance = np.sum((world - np.asarray(blob.center_mm)) ** 2, axis=-1)
        bump = np.exp(-0.5 * squared_distance / blob.sigma_mm**2)
        bump[squared_distance > (BLOB_TRUNCATE_SIGMAS * blob.sigma_mm) ** 2] = 0.0
        signal += blob.amplitude * bump
    signal[~mask] = 0.0
    return signal


def smoothing_sigma_voxels(fwhm_mm: float, affine: np.ndarray) -> np.ndarray:
    """Per-axis Gaussian sigma in voxels for a kernel of ``fwhm_mm`` on the grid of ``affine``."""
    voxel_mm = np.sqrt(np.sum(affine[:3, :3] ** 2, axis=0))
    return fwhm_mm / FWHM_PER_SIGMA / voxel_mm


def _filtered_white_noise_std(sigma_voxels: np.ndarray) -> float:
    """Standard deviation of unit white noise after ``gaussian_filter`` (root of the kernel energy)."""
    half = np.ceil(4.0 * sigma_voxels).astype(int) + 1
    impulse = np.zeros(tuple(2 * half + 1))
    impulse[tuple(half)] = 1.0
    kernel = ndimage.gaussian_filter(impulse, sigma_voxels, mode="constant")
    return float(np.sqrt(np.sum(kernel**2)))


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], affine: np.ndarray, fwhm_mm: float
) -> np.ndarray:
    """Stationary Gaussian noise of unit variance and smoothness ``fwhm_mm`` (filtered white noise).

    The field is drawn on the whole grid, so its variance does not drop at the brain's edge.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (the only one used, so a seeded generator gives identical fields).
    shape : tuple of int
        Grid shape.
    affine : np.ndarray
        4x4 voxel-to-mm affine (for the voxel size).
    fwhm_mm : float
        Full width at half maximum of the Gaussian smoothing kernel.

    Returns
    -------
    np.ndarray
        float64 array of ``shape``.
    """
    sigma = smoothing_sigma_voxels(fwhm_mm, affine)
    white = rng.standard_normal(shape)
    field = ndimage.gaussian_filter(white, sigma, mode="wrap")
    return field / _filtered_white_noise_std(sigma)


def quantize(values: np.ndarray, step_exponent: int) -> np.ndarray:
    """Round to multiples of 2**-step_exponent, as float32.

    Values with few significant bits leave the low mantissa bytes at zero, so gzip shrinks the demo
    maps several-fold; the rounding error (step / sqrt(12)) is far below the simulated noise. A non-zero value
    never rounds to 0 (it becomes +-step): an exact 0 inside the brain would punch a hole in every automatic
    "non-zero in all maps" mask, and the holes would change the mask's topology (its Euler characteristic, which
    random field theory uses) as real data do not.
    """
    step = 2.0**-step_exponent
    rounded = np.round(values / step) * step
    rounded = np.where((rounded == 0) & (values != 0), np.sign(values) * step, rounded)
    return rounded.astype(np.float32)
