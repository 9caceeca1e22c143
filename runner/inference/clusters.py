"""Connected components of thresholded maps: cluster-extent filtering, cluster measures and peak tables.

Semantics follow nilearn 0.14 (``threshold_img`` / ``threshold_stats_img`` and ``get_clusters_table``):

- a voxel survives the height threshold when ``z >= threshold`` (``|z| >= threshold`` two-sided);
- clusters are face-connected (6-connectivity) by default, positive and negative voxels never share a cluster,
  and a cluster survives the extent threshold when it has at least ``cluster_threshold`` voxels;
- cluster tables relabel the surviving voxels with a strict ``z > threshold`` and report, per cluster, the peak
  and up to three sub-peaks (local maxima over the 26 neighbours, plateaus reduced to their centre of mass).

The work is done on a :class:`runner.space.Space` (``*_in_space`` functions, any grid or mesh, ``(V,)`` vectors);
the functions on 3D maps are thin wrappers that view the whole grid as the space.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from runner.errors import RunnerError
from runner.space import GridSpace, Space
from runner.space.defaults import CONNECTIVITY_RANK, MAX_SUBPEAKS, MIN_DISTANCE_MM, PARAMETRIC_CONNECTIVITY
from runner.space.graph import cluster_maxima
from runner.space.grid import check_affine, connectivity_structure, voxel_volume
from runner.space.table import cluster_table as space_cluster_table
from runner.space.table import empty_cluster_table, table_columns

DEFAULT_CONNECTIVITY = PARAMETRIC_CONNECTIVITY
DEFAULT_MIN_DISTANCE_MM = MIN_DISTANCE_MM
CLUSTER_TABLE_COLUMNS = table_columns(GridSpace.whole_grid((1, 1, 1)))

__all__ = [
    "CLUSTER_TABLE_COLUMNS", "CONNECTIVITY_RANK", "DEFAULT_CONNECTIVITY", "DEFAULT_MIN_DISTANCE_MM", "MAX_SUBPEAKS",
    "apply_height_threshold", "cluster_extents", "cluster_table", "cluster_table_in_space", "connectivity_structure",
    "label", "label_maxima", "remove_small_clusters", "remove_small_clusters_in_space", "threshold_in_space",
    "threshold_map", "voxel_volume",
]


def label(binary3d: np.ndarray, connectivity: int = DEFAULT_CONNECTIVITY) -> tuple[np.ndarray, int]:
    """Label the connected components of a 3D boolean array.

    Parameters
    ----------
    binary3d : np.ndarray
        3D array; nonzero voxels are in a cluster.
    connectivity : {6, 18, 26}
        Neighbourhood defining adjacency.

    Returns
    -------
    labels : np.ndarray
        int32 array of the same shape, 0 outside clusters and 1..n inside, numbered in C order of first voxel.
    n : int
        Number of clusters.
    """
    binary3d = np.asarray(binary3d)
    if binary3d.ndim != 3:
        raise RunnerError(f"expected a 3D map to label, got shape {binary3d.shape}")
    space = GridSpace.whole_grid(binary3d.shape, connectivity=connectivity)
    labels, n = space.label((binary3d != 0).ravel())
    return labels.reshape(binary3d.shape), n


def label_maxima(values: np.ndarray, labels: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest value of each label 1..n and the flat index of its first voxel in C order (ties: lowest index)."""
    return cluster_maxima(values, labels, n_labels)


def _check_map(stat3d: np.ndarray, name: str = "statistic map") -> np.ndarray:
    """Copy as float64 with non-finite values set to 0 (nilearn's ``ensure_finite``)."""
    values = np.array(stat3d, dtype=np.float64)
    if values.ndim != 3:
        raise RunnerError(f"the {name} must be 3D, got shape {values.shape}")
    values[~np.isfinite(values)] = 0.0
    return values


def _check_threshold(threshold: float, two_sided: bool, name: str = "threshold") -> float:
    threshold = float(threshold)
    if np.isnan(threshold):
        raise RunnerError(f"{name} must be a number, got NaN")
    if two_sided and threshold < 0:
        raise RunnerError(f"{name} must be >= 0 for a two-sided test, got {threshold}")
    return threshold


def _check_cluster_threshold(cluster_threshold: float) -> float:
    cluster_threshold = float(cluster_threshold)
    if not cluster_threshold >= 0:
        raise RunnerError(f"cluster_threshold must be >= 0 voxels, got {cluster_threshold}")
    return cluster_threshold


def apply_height_threshold(stat: np.ndarray, threshold: float, two_sided: bool = True) -> np.ndarray:
    """Zero the elements below the height threshold (nilearn ``threshold_img`` rule); any shape.

    Two-sided: keep ``|z| >= threshold``. One-sided: keep ``z >= threshold``, or ``z <= threshold`` when the
    threshold is negative. Returns a new array.
    """
    threshold = _check_threshold(threshold, two_sided)
    values = np.array(stat, dtype=np.float64)
    if two_sided:
        below = np.abs(values) < threshold
    elif threshold >= 0:
        below = values < threshold
    else:
        below = values > threshold
    values[below] = 0.0
    return values


def remove_small_clusters_in_space(space: Space, thresholded: np.ndarray, cluster_threshold: float) -> np.ndarray:
    """Zero the clusters with fewer than ``cluster_threshold`` elements; positive and negative elements apart.

    Parameters
    ----------
    space : Space
    thresholded : np.ndarray
        (V,) height-thresholded values (0 where not supra-threshold).
    cluster_threshold : float
        Minimum cluster size in elements (voxels or vertices); clusters of exactly this size survive.

    Returns
    -------
    np.ndarray
        A new (V,) array with the small clusters set to 0.
    """
    cluster_threshold = _check_cluster_threshold(cluster_threshold)
    values = np.array(thresholded, dtype=np.float64)
    if cluster_threshold <= 0:
        return values
    for tail in (values > 0, values < 0):
        labels, n = space.label(tail)
        if n == 0:
            continue
        sizes = np.bincount(labels, minlength=n + 1)
        too_small = sizes < cluster_threshold
        too_small[0] = False
        values[too_small[labels]] = 0.0
    return values


def remove_small_clusters(
    thresholded3d: np.ndarray,
    cluster_threshold: float,
    connectivity: int = DEFAULT_CONNECTIVITY,
) -> np.ndarray:
    """:func:`remove_small_clusters_in_space` on a whole 3D grid (a new 3D array)."""
    values = np.asarray(thresholded3d, dtype=np.float64)
    space = GridSpace.whole_grid(values.shape, connectivity=connectivity)
    return remove_small_clusters_in_space(space, values.ravel(), cluster_threshold).reshape(values.shape)


def threshold_in_space(space: Space, z: np.ndarray, threshold: float, cluster_threshold: float = 0,
                       two_sided: bool = True) -> np.ndarray:
    """Height- and extent-thresholded in-mask values, as nilearn's ``threshold_stats_img`` returns them.

    Parameters
    ----------
    space : Space
    z : np.ndarray
        (V,) statistic (z scale); non-finite values count as 0.
    threshold : float
        Height threshold; elements with ``z >= threshold`` (``|z|`` when two-sided) survive; ``inf`` keeps none.
    cluster_threshold : float
        Minimum cluster size in elements (0: no extent threshold).
    two_sided : bool
        Keep both tails (clusters of each sign formed separately) or the positive tail only.

    Returns
    -------
    np.ndarray
        (V,) float64 equal to ``z`` on surviving elements and 0 elsewhere.
    """
    values = np.array(z, dtype=np.float64)
    values[~np.isfinite(values)] = 0.0
    values = apply_height_threshold(values, threshold, two_sided)
    return remove_small_clusters_in_space(space, values, cluster_threshold)


def threshold_map(
    z3d: np.ndarray,
    mask3d: np.ndarray | None,
    threshold: float,
    cluster_threshold: float = 0,
    two_sided: bool = True,
    connectivity: int = DEFAULT_CONNECTIVITY,
) -> np.ndarray:
    """Height- and extent-thresholded 3D map (:func:`threshold_in_space` on the grid, 0 outside ``mask3d``).

    Parameters
    ----------
    z3d : np.ndarray
        3D statistic map (z scale); non-finite values count as 0.
    mask3d : np.ndarray or None
        3D mask; voxels outside it are set to 0 first. None keeps the whole grid.
    threshold, cluster_threshold, two_sided
        See :func:`threshold_in_space`.
    connectivity : {6, 18, 26}
        Neighbourhood for the extent threshold; nilearn uses 6.

    Returns
    -------
    np.ndarray
        float64 map equal to ``z3d`` on surviving voxels and 0 elsewhere.
    """
    values = _check_map(z3d)
    if mask3d is not None:
        mask3d = np.asarray(mask3d)
        if mask3d.shape != values.shape:
            raise RunnerError(f"mask shape {mask3d.shape} does not match the map shape {values.shape}")
        values[mask3d == 0] = 0.0
    space = GridSpace.whole_grid(values.shape, connectivity=connectivity)
    return threshold_in_space(space, values.ravel(), threshold, cluster_threshold, two_sided).reshape(values.shape)


def cluster_extents(
    stat3d: np.ndarray,
    threshold: float,
    connectivity: int = DEFAULT_CONNECTIVITY,
    two_sided: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters of ``stat > threshold`` (and ``stat < -threshold`` if two-sided) with their sizes and masses.

    The cluster-forming rule (strict ">") and the mass (sum of ``|stat| - threshold`` over the cluster) are
    those of nilearn's ``permuted_ols``; NaN voxels belong to no cluster.

    Returns
    -------
    labels : np.ndarray
        int array, 0 outside clusters; positive clusters are 1..P, negative clusters P+1..P+N.
    sizes : np.ndarray
        (P+N,) number of voxels of cluster ``labels == c`` at index ``c - 1``.
    masses : np.ndarray
        (P+N,) cluster masses, same indexing.
    """
    threshold = _check_threshold(threshold, two_sided)
    stat3d = np.asarray(stat3d, dtype=np.float64)
    labels, n_positive = label(stat3d > threshold, connectivity)
    if two_sided:
        negative, n_negative = label(stat3d < -threshold, connectivity)
        labels = labels + np.where(negative > 0, negative + n_positive, 0).astype(labels.dtype)
    else:
        n_negative = 0
    n_clusters = n_positive + n_negative
    flat = labels.ravel()
    in_cluster = flat > 0
    excess = np.abs(stat3d.ravel()[in_cluster]) - threshold
    sizes = np.bincount(flat[in_cluster], minlength=n_clusters + 1)[1:]
    masses = np.bincount(flat[in_cluster], weights=excess, minlength=n_clusters + 1)[1:]
    return labels, sizes.astype(np.int64), masses


def cluster_table_in_space(
    space: Space,
    stat: np.ndarray,
    stat_threshold: float,
    cluster_threshold: float = 0,
    two_sided: bool = False,
    min_distance: float = DEFAULT_MIN_DISTANCE_MM,
    strict_min_distance: bool = False,
) -> pd.DataFrame:
    """Clusters with their peak and up to three sub-peaks, as nilearn's ``get_clusters_table``, on any space.

    The values are thresholded as :func:`threshold_in_space` does (``>= stat_threshold``, small clusters
    removed), then clusters are formed from elements strictly above ``stat_threshold`` (below
    ``-stat_threshold`` for the negative tail) and sorted by decreasing peak (most extreme first in the negative
    tail). Positive clusters come first. Cluster ids count table rows as nilearn does: the first negative
    cluster is numbered one more than the number of rows (peaks and sub-peaks) of the positive tail.

    Parameters
    ----------
    space : Space
    stat : np.ndarray
        (V,) statistic; non-finite values count as 0.
    stat_threshold : float
        Cluster-forming threshold, >= 0.
    cluster_threshold : float
        Minimum cluster size in elements.
    two_sided : bool
        Report negative clusters too.
    min_distance : float
        Minimum distance in mm between reported peaks of a cluster (:func:`runner.space.select_peaks`).
    strict_min_distance : bool
        Enforce ``min_distance`` between all reported peaks of a cluster instead of nilearn's rule.

    Returns
    -------
    pandas.DataFrame
        The schema of :mod:`runner.space.table` (grid: ``cluster_id, x, y, z, peak_stat, size_voxels,
        size_mm3, i, j, k``).
    """
    stat_threshold = _check_threshold(stat_threshold, two_sided, name="stat_threshold")
    if stat_threshold < 0:
        raise RunnerError(
            f"stat_threshold must be >= 0, got {stat_threshold}; for the negative tail use two_sided or -stat"
        )
    if not float(min_distance) > 0:
        raise RunnerError(f"min_distance must be > 0 mm, got {min_distance}")
    surviving = threshold_in_space(space, stat, stat_threshold, cluster_threshold, two_sided)
    tables: list[pd.DataFrame] = []
    n_rows = 0
    for sign in (1.0, -1.0) if two_sided else (1.0,):
        signed = surviving * sign
        labels, n_clusters = space.label(signed > stat_threshold)
        if n_clusters == 0:
            continue
        table = space_cluster_table(space, signed, labels, n_clusters, sign=sign, first_id=n_rows + 1,
                                    min_distance=min_distance, max_subpeaks=MAX_SUBPEAKS,
                                    strict_min_distance=strict_min_distance)
        n_rows += len(table)
        tables.append(table)
    if not tables:
        return empty_cluster_table(space)
    return pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]


def cluster_table(
    stat3d: np.ndarray,
    affine: np.ndarray,
    stat_threshold: float,
    cluster_threshold: float = 0,
    two_sided: bool = False,
    min_distance: float = DEFAULT_MIN_DISTANCE_MM,
    connectivity: int = DEFAULT_CONNECTIVITY,
    strict_min_distance: bool = False,
) -> pd.DataFrame:
    """:func:`cluster_table_in_space` on a 3D map (0 outside the mask) over its whole grid.

    Parameters
    ----------
    stat3d : np.ndarray
        3D statistic map, 0 outside the mask; non-finite values count as 0.
    affine : np.ndarray
        4x4 voxel-to-mm affine.
    connectivity : {6, 18, 26}
        Neighbourhood defining clusters (nilearn: 6).
    stat_threshold, cluster_threshold, two_sided, min_distance, strict_min_distance
        See :func:`cluster_table_in_space`.

    Returns
    -------
    pandas.DataFrame
        Columns ``cluster_id`` (str), ``x, y, z`` (mm), ``peak_stat``, ``size_voxels`` (Int64, missing on
        sub-peak rows), ``size_mm3`` (float, NaN on sub-peak rows), ``i, j, k`` (grid indices of the peak).
    """
    affine = check_affine(affine)
    values = _check_map(stat3d)
    space = GridSpace.whole_grid(values.shape, affine, connectivity)
    return cluster_table_in_space(space, values.ravel(), stat_threshold, cluster_threshold, two_sided,
                                  min_distance, strict_min_distance)
