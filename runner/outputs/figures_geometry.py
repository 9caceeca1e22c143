"""Voxel/mm geometry for the brain figures: peak and cut coordinates, RAS reorientation, slices and extents.

Pure functions on arrays. Grids are assumed axis-aligned (no rotation or shear); axes may be permuted or
flipped (negative diagonal entries), which :func:`to_ras` undoes so that drawing code can always put x (left to
right), y (posterior to anterior) and z (inferior to superior) along increasing array indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.affines import apply_affine
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

Coordinates = tuple[float, float, float]


def finite_or_zero(volume: np.ndarray) -> np.ndarray:
    """The volume as float64 with NaN and infinities set to 0 (drawn as empty)."""
    values = np.asarray(volume, dtype=float)
    return np.where(np.isfinite(values), values, 0.0)


def peak_coordinates_mm(volume: np.ndarray, affine: np.ndarray) -> Coordinates | None:
    """World coordinates (mm) of the voxel with the largest absolute value.

    Parameters
    ----------
    volume : np.ndarray
        3D statistical map; NaN counts as 0.
    affine : np.ndarray
        4x4 voxel-to-mm affine of ``volume``.

    Returns
    -------
    tuple of float or None
        ``(x, y, z)`` of the peak voxel centre (first voxel in C order on ties), or None when the map holds no
        non-zero finite value.
    """
    magnitude = np.abs(finite_or_zero(volume))
    if magnitude.size == 0 or not np.any(magnitude > 0):
        return None
    index = np.unravel_index(int(np.argmax(magnitude)), magnitude.shape)
    return _as_coordinates(apply_affine(np.asarray(affine, dtype=float), np.array(index, dtype=float)))


def snap_to_voxel_centre(coordinates_mm: tuple[float, float, float], affine: np.ndarray,
                         shape: tuple[int, ...]) -> Coordinates:
    """The centre of the grid voxel nearest to ``coordinates_mm`` (clipped to the grid)."""
    affine = np.asarray(affine, dtype=float)
    index = apply_affine(np.linalg.inv(affine), np.asarray(coordinates_mm, dtype=float))
    index = np.clip(np.rint(index), 0, np.asarray(shape[:3]) - 1)
    return _as_coordinates(apply_affine(affine, index))


def slice_cut_coords(volume: np.ndarray, affine: np.ndarray, cut_coords_mm: tuple[float, float, float] | None = None,
                     background: np.ndarray | None = None) -> Coordinates:
    """Where the three orthogonal slices of :func:`stat_map_slices_figure` cut, in mm (voxel centres).

    Parameters
    ----------
    volume : np.ndarray
        3D statistical map (NaN counts as 0).
    affine : np.ndarray
        4x4 affine shared by ``volume`` and ``background``.
    cut_coords_mm : tuple of float, optional
        Requested cut; snapped to the nearest voxel centre. Default: the peak ``|value|`` voxel.
    background : np.ndarray, optional
        Used only when the map is empty: the cut then goes through the centre of the background's extent.

    Returns
    -------
    tuple of float
        ``(x, y, z)`` in mm of the voxel centre the slices go through.
    """
    shape = np.shape(volume)
    if cut_coords_mm is None:
        peak = peak_coordinates_mm(volume, affine)
        if peak is not None:
            return peak
        support = None if background is None else finite_or_zero(background) != 0
        lower, upper = _support_bounds(support, shape)
        centre_index = (np.asarray(lower) + np.asarray(upper)) / 2.0
        cut_coords_mm = tuple(apply_affine(np.asarray(affine, dtype=float), centre_index))
    return snap_to_voxel_centre(cut_coords_mm, affine, shape)


@dataclass(frozen=True)
class RasGrid:
    """A volume reoriented so array axes 0, 1, 2 run along +x, +y, +z, with its voxel-centre coordinates."""

    affine: np.ndarray
    shape: tuple[int, int, int]

    def centres(self, axis: int) -> np.ndarray:
        """Voxel-centre coordinates (mm) along one axis."""
        return self.affine[axis, axis] * np.arange(self.shape[axis]) + self.affine[axis, 3]

    def index_of(self, axis: int, coordinate_mm: float) -> int:
        """The index of the voxel centre nearest to ``coordinate_mm`` along ``axis`` (clipped)."""
        index = (coordinate_mm - self.affine[axis, 3]) / self.affine[axis, axis]
        return int(np.clip(np.rint(index), 0, self.shape[axis] - 1))

    def edges(self, axis: int, lower: int = 0, upper: int | None = None) -> tuple[float, float]:
        """Outer edges (mm) of voxels ``lower..upper`` (inclusive) along ``axis``: the extent imshow needs."""
        upper = self.shape[axis] - 1 if upper is None else upper
        centres = self.centres(axis)
        half = abs(self.affine[axis, axis]) / 2.0
        return float(centres[lower] - half), float(centres[upper] + half)


def to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, RasGrid]:
    """Permute and flip the array axes so that indices increase along +x, +y, +z (RAS+).

    Parameters
    ----------
    volume : np.ndarray
        3D array on the grid of ``affine``.
    affine : np.ndarray
        4x4 axis-aligned affine (permutations and negative voxel sizes allowed).

    Returns
    -------
    data : np.ndarray
        The reoriented array.
    grid : RasGrid
        Its affine (positive diagonal) and shape.
    """
    affine = np.asarray(affine, dtype=float)
    volume = np.asarray(volume)
    orientation = io_orientation(affine)
    data = apply_orientation(volume, orientation)
    ras_affine = affine @ inv_ornt_aff(orientation, volume.shape)
    return data, RasGrid(affine=ras_affine, shape=tuple(int(n) for n in data.shape[:3]))


def display_bounds(supports: list[np.ndarray | None], shape: tuple[int, ...],
                   margin: int = 2) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Index bounds (inclusive) of the union of boolean supports plus a margin; the whole grid if all are empty."""
    union = None
    for support in supports:
        if support is not None and np.any(support):
            union = support if union is None else (union | support)
    lower, upper = _support_bounds(union, shape)
    lower = tuple(max(0, low - margin) for low in lower)
    upper = tuple(min(n - 1, up + margin) for up, n in zip(upper, shape[:3]))
    return lower, upper


def signed_maximum_projection(volume: np.ndarray, axis: int) -> np.ndarray:
    """Project along ``axis`` keeping, for each ray, the value of largest magnitude with its sign."""
    values = finite_or_zero(volume)
    if values.shape[axis] == 0:
        return np.zeros(np.delete(values.shape, axis))
    index = np.expand_dims(np.argmax(np.abs(values), axis=axis), axis)
    return np.take_along_axis(values, index, axis=axis).squeeze(axis)


def _support_bounds(support: np.ndarray | None, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Inclusive index bounds of a boolean support, or of the whole grid when it is empty or missing."""
    if support is None or not np.any(support):
        return (0, 0, 0), tuple(int(n) - 1 for n in shape[:3])
    where = np.nonzero(support)
    return tuple(int(w.min()) for w in where), tuple(int(w.max()) for w in where)


def _as_coordinates(values: np.ndarray) -> Coordinates:
    """Three python floats, rounded to 1e-6 mm so that -0.0 and float noise do not show in labels."""
    return tuple(float(np.round(v, 6)) + 0.0 for v in values)  # type: ignore[return-value]
