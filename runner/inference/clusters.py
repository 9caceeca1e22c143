"""Connected components of thresholded maps: cluster-extent filtering, cluster measures and peak tables.

Semantics follow nilearn 0.14 (``threshold_img`` / ``threshold_stats_img`` and ``get_clusters_table``):

- a voxel survives the height threshold when ``z >= threshold`` (``|z| >= threshold`` two-sided);
- clusters are face-connected (6-connectivity) by default, positive and negative voxels never share a cluster,
  and a cluster survives the extent threshold when it has at least ``cluster_threshold`` voxels;
- cluster tables relabel the surviving voxels with a strict ``z > threshold`` and report, per cluster, the peak
  and up to three sub-peaks (local maxima over the 26 neighbours, plateaus reduced to their centre of mass).
"""

from __future__ import annotations

from string import ascii_lowercase

import numpy as np
import pandas as pd
from nibabel.affines import apply_affine
from scipy import ndimage

from runner.errors import RunnerError

# nilearn clusters with face connectivity (NN1) in threshold_img, get_clusters_table, permuted_ols and ARI.
DEFAULT_CONNECTIVITY = 6
CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}  # neighbours sharing a face / an edge / a corner
DEFAULT_MIN_DISTANCE_MM = 8.0
MAX_SUBPEAKS = 3

CLUSTER_TABLE_COLUMNS = ["cluster_id", "x", "y", "z", "peak_stat", "size_voxels", "size_mm3", "i", "j", "k"]


def connectivity_structure(connectivity: int) -> np.ndarray:
    """3x3x3 boolean structuring element for 6 (faces), 18 (faces and edges) or 26 (all) neighbours."""
    if connectivity not in CONNECTIVITY_RANK:
        raise RunnerError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    return ndimage.generate_binary_structure(3, CONNECTIVITY_RANK[connectivity])


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
    labels, n = ndimage.label(binary3d != 0, structure=connectivity_structure(connectivity))
    return labels, int(n)


def label_maxima(values: np.ndarray, labels: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest value of each label 1..n and the flat index of its first voxel in C order (ties: lowest index).

    Same answers as ``scipy.ndimage.maximum`` / ``maximum_position`` but costs O(voxels in clusters), not a sort of
    the whole grid per call.
    """
    flat_labels = np.asarray(labels).ravel()
    members = np.flatnonzero(flat_labels > 0)
    member_values = np.asarray(values, dtype=np.float64).ravel()[members]
    order = np.lexsort((members, -member_values, flat_labels[members]))
    first = np.r_[True, np.diff(flat_labels[members][order]) != 0]
    winners = members[order][first]
    maxima = np.full(n_labels, -np.inf)
    positions = np.full(n_labels, -1, dtype=np.int64)
    ids = flat_labels[winners] - 1
    maxima[ids] = np.asarray(values, dtype=np.float64).ravel()[winners]
    positions[ids] = winners
    return maxima, positions


def voxel_volume(affine: np.ndarray) -> float:
    """Volume of one voxel in mm3: the product of the voxel sizes (norms of the affine's columns)."""
    affine = _check_affine(affine)
    return float(np.prod(np.sqrt(np.sum(affine[:3, :3] ** 2, axis=0))))


def _check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise RunnerError(f"affine must be a 4x4 matrix, got shape {affine.shape}")
    return affine


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


def apply_height_threshold(stat3d: np.ndarray, threshold: float, two_sided: bool = True) -> np.ndarray:
    """Zero the voxels below the height threshold (nilearn ``threshold_img`` rule).

    Two-sided: keep ``|z| >= threshold``. One-sided: keep ``z >= threshold``, or ``z <= threshold`` when the
    threshold is negative. Returns a new array.
    """
    threshold = _check_threshold(threshold, two_sided)
    values = np.array(stat3d, dtype=np.float64)
    if two_sided:
        below = np.abs(values) < threshold
    elif threshold >= 0:
        below = values < threshold
    else:
        below = values > threshold
    values[below] = 0.0
    return values


def remove_small_clusters(
    thresholded3d: np.ndarray,
    cluster_threshold: float,
    connectivity: int = DEFAULT_CONNECTIVITY,
) -> np.ndarray:
    """Zero the clusters with fewer than ``cluster_threshold`` voxels; positive and negative voxels apart.

    Parameters
    ----------
    thresholded3d : np.ndarray
        Height-thresholded 3D map (0 where not supra-threshold).
    cluster_threshold : float
        Minimum cluster size in voxels; clusters of exactly this size survive.
    connectivity : {6, 18, 26}
        Neighbourhood defining clusters.

    Returns
    -------
    np.ndarray
        A new array with the small clusters set to 0.
    """
    cluster_threshold = _check_cluster_threshold(cluster_threshold)
    values = np.array(thresholded3d, dtype=np.float64)
    if cluster_threshold <= 0:
        return values
    for tail in (values > 0, values < 0):
        labels, n = label(tail, connectivity)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())
        too_small = sizes < cluster_threshold
        too_small[0] = False
        values[too_small[labels]] = 0.0
    return values


def threshold_map(
    z3d: np.ndarray,
    mask3d: np.ndarray | None,
    threshold: float,
    cluster_threshold: float = 0,
    two_sided: bool = True,
    connectivity: int = DEFAULT_CONNECTIVITY,
) -> np.ndarray:
    """Height- and extent-thresholded map, as nilearn's ``threshold_stats_img`` returns it.

    Parameters
    ----------
    z3d : np.ndarray
        3D statistic map (z scale); non-finite values count as 0.
    mask3d : np.ndarray or None
        3D mask; voxels outside it are set to 0 first. None keeps the whole grid.
    threshold : float
        Height threshold (e.g. from :func:`runner.inference.parametric.height_threshold`); voxels with
        ``z >= threshold`` (``|z|`` when two-sided) survive; ``inf`` keeps nothing.
    cluster_threshold : float
        Minimum cluster size in voxels (0: no extent threshold).
    two_sided : bool
        Keep both tails (clusters of each sign formed separately) or the positive tail only.
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
    values = apply_height_threshold(values, threshold, two_sided)
    return remove_small_clusters(values, cluster_threshold, connectivity)


def cluster_extents(
    stat3d: np.ndarray,
    threshold: float,
    connectivity: int = DEFAULT_CONNECTIVITY,
    two_sided: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters of ``stat > threshold`` (and ``stat < -threshold`` if two-sided) with their sizes and masses.

    The cluster-forming rule (strict ">") and the mass (sum of ``|stat| - threshold`` over the cluster) are
    those of nilearn's ``permuted_ols``; NaN voxels belong to no cluster.

    Parameters
    ----------
    stat3d : np.ndarray
        3D statistic map.
    threshold : float
        Cluster-forming threshold (>= 0 when two-sided).
    connectivity : {6, 18, 26}
        Neighbourhood defining clusters.
    two_sided : bool
        Also form clusters in the negative tail.

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


def _expanded_box(box: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """A bounding box grown by one voxel on each side, clipped to the grid."""
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, shape, strict=True))


def _plateau_centres(values: np.ndarray, plateaus: np.ndarray, n_plateaus: int, origin: np.ndarray) -> np.ndarray:
    """Value-weighted centre of mass of each labelled plateau, in grid indices (``origin`` = box corner)."""
    flat_labels = plateaus.ravel()
    total = np.bincount(flat_labels, weights=values.ravel(), minlength=n_plateaus + 1)[1:]
    centres = np.empty((n_plateaus, 3))
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = values.shape[axis]
        index = (np.arange(values.shape[axis]) + origin[axis]).astype(np.float64).reshape(shape)
        moment = np.bincount(flat_labels, weights=(values * index).ravel(), minlength=n_plateaus + 1)[1:]
        centres[:, axis] = moment / total
    return centres


def local_maxima(values: np.ndarray, origin: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of one cluster, one per plateau, as nilearn's ``get_clusters_table`` finds them.

    A voxel is a maximum when no voxel among its 26 neighbours is larger; unless the whole cluster is
    (nearly) constant, voxels inside a flat neighbourhood are not maxima. Face-connected maxima form a
    plateau, reported at its centre of mass rounded to the nearest voxel (half to even), or at the plateau
    voxel nearest to that centre when the centre falls outside the plateau (e.g. a ring).

    Parameters
    ----------
    values : np.ndarray
        3D array holding the cluster's (positive) values and 0 elsewhere; a box around the cluster with a
        one-voxel margin where the grid allows.
    origin : np.ndarray or None
        Grid index of ``values[0, 0, 0]``, so that the returned indices are in the full grid.

    Returns
    -------
    ijk : np.ndarray
        (n, 3) int grid indices of the maxima, in plateau label order.
    peak_values : np.ndarray
        (n,) values at ``ijk``.
    """
    origin = np.zeros(3, dtype=int) if origin is None else np.asarray(origin, dtype=int)
    inside = values != 0
    neighbourhood_max = ndimage.maximum_filter(values, size=3)
    is_maximum = (values == neighbourhood_max) & inside
    cluster_values = values[inside]
    if not np.isclose(cluster_values.max(), cluster_values.min()):
        is_maximum &= neighbourhood_max > ndimage.minimum_filter(values, size=3)
    plateaus, n_plateaus = ndimage.label(is_maximum)  # face connectivity, as nilearn
    centres = np.round(_plateau_centres(values, plateaus, n_plateaus, origin)).astype(int)
    local = centres - origin
    plateau_index = np.arange(1, n_plateaus + 1)
    outside = plateaus[local[:, 0], local[:, 1], local[:, 2]] != plateau_index
    if np.any(outside):
        plateau_voxels = np.argwhere(plateaus > 0)
        plateau_of_voxel = plateaus[plateaus > 0]
        for row in np.flatnonzero(outside):
            candidates = plateau_voxels[plateau_of_voxel == plateau_index[row]]
            distance = np.linalg.norm(candidates - local[row], axis=1)
            local[row] = candidates[np.argmin(distance)]
    peak_values = values[local[:, 0], local[:, 1], local[:, 2]]
    return local + origin, peak_values


def select_peaks(
    ijk: np.ndarray,
    peak_values: np.ndarray,
    affine: np.ndarray,
    min_distance: float = DEFAULT_MIN_DISTANCE_MM,
    max_peaks: int = MAX_SUBPEAKS + 1,
    strict_min_distance: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the highest local maxima that are more than ``min_distance`` mm apart.

    Maxima are visited by decreasing value. With nilearn's rule (default) a candidate is compared with the
    last peak kept only, so a kept peak can lie within ``min_distance`` of an earlier, higher one; with
    ``strict_min_distance`` it must be farther than ``min_distance`` from every peak kept before it.

    Returns
    -------
    ijk : np.ndarray
        (m, 3) grid indices of the kept peaks, highest first, ``m <= max_peaks``.
    peak_values : np.ndarray
        (m,) their values.
    """
    order = np.argsort(-peak_values, kind="stable")
    ijk, peak_values = ijk[order], peak_values[order]
    xyz = apply_affine(affine, ijk)
    kept = [0]
    for candidate in range(1, len(order)):
        if len(kept) >= max_peaks:
            break
        others = xyz[kept] if strict_min_distance else xyz[kept[-1:]]
        if np.all(np.linalg.norm(others - xyz[candidate], axis=1) > min_distance):
            kept.append(candidate)
    return ijk[kept], peak_values[kept]


def _empty_cluster_table() -> pd.DataFrame:
    return _typed(pd.DataFrame({column: pd.Series(dtype=np.float64) for column in CLUSTER_TABLE_COLUMNS}))


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """Column types of a cluster table: string ids, nullable integer sizes and indices, float coordinates."""
    table["cluster_id"] = table["cluster_id"].astype(str)
    for column in ("size_voxels", "i", "j", "k"):
        table[column] = table[column].astype("Int64")
    for column in ("x", "y", "z", "peak_stat", "size_mm3"):
        table[column] = table[column].astype(np.float64)
    return table


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
    """Clusters with their peak and up to three sub-peaks, as nilearn's ``get_clusters_table``.

    The map is thresholded as :func:`threshold_map` does (``>= stat_threshold``, small clusters removed),
    then clusters are formed from voxels strictly above ``stat_threshold`` (below ``-stat_threshold`` for the
    negative tail) and sorted by decreasing peak (most extreme first in the negative tail). Positive clusters
    come first. Cluster ids count table rows as nilearn does: the first negative cluster is numbered one
    more than the number of rows (peaks and sub-peaks) of the positive tail. Sub-peaks are ``"1a"``, ``"1b"``...

    Parameters
    ----------
    stat3d : np.ndarray
        3D statistic map, 0 outside the mask; non-finite values count as 0.
    affine : np.ndarray
        4x4 voxel-to-mm affine.
    stat_threshold : float
        Cluster-forming threshold, >= 0.
    cluster_threshold : float
        Minimum cluster size in voxels.
    two_sided : bool
        Report negative clusters too.
    min_distance : float
        Minimum distance in mm between reported peaks of a cluster (see :func:`select_peaks`).
    connectivity : {6, 18, 26}
        Neighbourhood defining clusters (nilearn: 6).
    strict_min_distance : bool
        Enforce ``min_distance`` between all reported peaks of a cluster instead of nilearn's rule.

    Returns
    -------
    pandas.DataFrame
        Columns ``cluster_id`` (str), ``x, y, z`` (mm), ``peak_stat``, ``size_voxels`` (Int64, missing on
        sub-peak rows), ``size_mm3`` (float, NaN on sub-peak rows), ``i, j, k`` (grid indices of the peak).
    """
    affine = _check_affine(affine)
    stat_threshold = _check_threshold(stat_threshold, two_sided, name="stat_threshold")
    if stat_threshold < 0:
        raise RunnerError(
            f"stat_threshold must be >= 0, got {stat_threshold}; for the negative tail use two_sided or -stat"
        )
    if not float(min_distance) > 0:
        raise RunnerError(f"min_distance must be > 0 mm, got {min_distance}")
    surviving = threshold_map(stat3d, None, stat_threshold, cluster_threshold, two_sided, connectivity)
    volume = voxel_volume(affine)
    rows: list[dict] = []
    for sign in (1.0, -1.0) if two_sided else (1.0,):
        signed = surviving * sign
        labels, n_clusters = label(signed > stat_threshold, connectivity)
        if n_clusters == 0:
            continue
        first_id = len(rows) + 1
        peaks, _ = label_maxima(signed, labels, n_clusters)
        sizes = np.bincount(labels.ravel(), minlength=n_clusters + 1)
        boxes = ndimage.find_objects(labels)
        for rank, cluster in enumerate(np.argsort(-peaks, kind="stable") + 1):
            box = _expanded_box(boxes[cluster - 1], labels.shape)
            values = np.where(labels[box] == cluster, signed[box], 0.0)
            origin = np.array([s.start for s in box])
            ijk, peak_values = local_maxima(values, origin)
            ijk, peak_values = select_peaks(ijk, peak_values, affine, min_distance, MAX_SUBPEAKS + 1,
                                            strict_min_distance)
            xyz = apply_affine(affine, ijk)
            for position in range(len(peak_values)):
                is_peak = position == 0
                name = str(first_id + rank) + ("" if is_peak else ascii_lowercase[position - 1])
                rows.append({
                    "cluster_id": name,
                    "x": xyz[position, 0],
                    "y": xyz[position, 1],
                    "z": xyz[position, 2],
                    "peak_stat": sign * peak_values[position],
                    "size_voxels": int(sizes[cluster]) if is_peak else pd.NA,
                    "size_mm3": sizes[cluster] * volume if is_peak else np.nan,
                    "i": int(ijk[position, 0]),
                    "j": int(ijk[position, 1]),
                    "k": int(ijk[position, 2]),
                })
    if not rows:
        return _empty_cluster_table()
    return _typed(pd.DataFrame(rows, columns=CLUSTER_TABLE_COLUMNS))
