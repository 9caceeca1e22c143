"""Resel counts R0..R3 of a search volume given on a voxel lattice (Worsley et al. 1996, Hum Brain Mapp 4:58-73).

The search volume is the union of the closed unit cells spanned by in-mask voxel centres: a point per voxel, a
segment between two in-mask neighbours along an axis, a square where four in-plane neighbours are in the mask and a
cube where all eight corners are. Intrinsic volumes (Lipschitz-Killing curvatures) are additive, so the volume of this
complex follows from the number of its cells by inclusion-exclusion. For unit spacing, a closed edge along axis a has
mu_0 = 1 and mu_1 = 1 (its length); a closed square in the plane (a, b) has mu_0 = 1, mu_1 = 2 (one per side direction,
half its perimeter) and mu_2 = 1 (its area); a unit cube has mu_0 = 1, mu_1 = 3, mu_2 = 3 and mu_3 = 1. Solving the
inclusion-exclusion over the cells gives, with P points, E_a edges along axis a, F_ab faces in the plane (a, b) and
C cubes:

    R0 = P - sum_a E_a + sum_ab F_ab - C                                  (the Euler characteristic, exact)
    R1 = sum_a (E_a - F_ab - F_ac + C) / w_a
    R2 = sum_ab (F_ab - C) / (w_a w_b)
    R3 = C / (w_x w_y w_z)

where w is the FWHM in voxels along each axis: scaling axis a by 1 / w_a turns voxel units into resel units.
R1 counts, per axis, the Euler characteristic of each cross-section between consecutive planes; R2 the projected
areas. These are the counts SPM's ``spm_resels_vol`` reports. For a digitised ball the staircase boundary makes R1 and
R2 about 3/2 of the smooth ball's 4r and 2 pi r^2 (each projection is counted along each axis), while R0 and R3 match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runner.errors import RunnerError


@dataclass(frozen=True)
class LatticeCounts:
    """Cells of the cubical complex spanned by a mask: points, edges per axis, faces per plane, cubes."""

    points: int
    edges: tuple[int, int, int]  # along x, y, z (array axes 0, 1, 2)
    faces: tuple[int, int, int]  # in the planes xy, xz, yz
    cubes: int

    @property
    def euler_characteristic(self) -> int:
        """Components minus tunnels plus cavities of the search volume: P - E + F - C."""
        return self.points - sum(self.edges) + sum(self.faces) - self.cubes


def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim > 3 or mask.ndim == 0:
        raise RunnerError(f"the search-volume mask must be 1D, 2D or 3D, got shape {mask.shape}")
    mask = mask != 0
    return mask.reshape(mask.shape + (1,) * (3 - mask.ndim))


def lattice_counts(mask: np.ndarray) -> LatticeCounts:
    """Count the points, edges, faces and cubes of the cubical complex spanned by a mask's voxels.

    Parameters
    ----------
    mask : np.ndarray
        1D, 2D or 3D array; nonzero voxels are in the search volume. Missing trailing axes count as size 1.

    Returns
    -------
    LatticeCounts
    """
    m = _as_mask(mask)
    # Pairs of neighbours along one axis: m[1:] & m[:-1] on that axis.
    ex = m[1:, :, :] & m[:-1, :, :]
    ey = m[:, 1:, :] & m[:, :-1, :]
    ez = m[:, :, 1:] & m[:, :, :-1]
    fxy = ex[:, 1:, :] & ex[:, :-1, :]
    fxz = ex[:, :, 1:] & ex[:, :, :-1]
    fyz = ey[:, :, 1:] & ey[:, :, :-1]
    cubes = fxy[:, :, 1:] & fxy[:, :, :-1]
    return LatticeCounts(
        points=int(m.sum()),
        edges=(int(ex.sum()), int(ey.sum()), int(ez.sum())),
        faces=(int(fxy.sum()), int(fxz.sum()), int(fyz.sum())),
        cubes=int(cubes.sum()),
    )


def _fwhm_triplet(fwhm_voxels: float | np.ndarray) -> np.ndarray:
    fwhm = np.broadcast_to(np.asarray(fwhm_voxels, dtype=float), (3,)).copy()
    if not np.all(np.isfinite(fwhm)) or np.any(fwhm <= 0):
        raise RunnerError(f"the FWHM in voxels must be positive and finite, got {fwhm.tolist()}")
    return fwhm


def resel_counts_from_lattice(counts: LatticeCounts, fwhm_voxels: float | np.ndarray) -> np.ndarray:
    """Resel counts [R0, R1, R2, R3] of a counted mask for a smoothness of ``fwhm_voxels`` (scalar or per axis).

    The counts depend on the mask only; this scaling is what changes with the smoothness estimate, so simulations
    count once and call this per dataset.
    """
    rx, ry, rz = 1.0 / _fwhm_triplet(fwhm_voxels)
    ex, ey, ez = counts.edges
    fxy, fxz, fyz = counts.faces
    c = counts.cubes
    r0 = counts.euler_characteristic
    r1 = (ex - fxy - fxz + c) * rx + (ey - fxy - fyz + c) * ry + (ez - fxz - fyz + c) * rz
    r2 = (fxy - c) * rx * ry + (fxz - c) * rx * rz + (fyz - c) * ry * rz
    r3 = c * rx * ry * rz
    return np.array([r0, r1, r2, r3], dtype=float)


def resel_counts(mask: np.ndarray, fwhm_voxels: float | np.ndarray) -> np.ndarray:
    """Resel counts [R0, R1, R2, R3] of the search volume defined by ``mask`` (Worsley et al. 1996).

    Parameters
    ----------
    mask : np.ndarray
        1D, 2D or 3D array; nonzero voxels are in the search volume.
    fwhm_voxels : float or (3,) array
        Smoothness as the FWHM in voxels along each array axis.

    Returns
    -------
    np.ndarray
        (4,) float: Euler characteristic, resel diameter, resel half-surface, resel volume.
    """
    return resel_counts_from_lattice(lattice_counts(mask), fwhm_voxels)


def search_dimension(counts: np.ndarray) -> int:
    """Dimension D of the search volume: the index of the last nonzero resel count (0 for a set of points)."""
    nonzero = np.flatnonzero(np.asarray(counts, dtype=float) != 0)
    return int(nonzero[-1]) if nonzero.size else 0
