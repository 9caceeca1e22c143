"""All-Resolutions Inference: a lower bound on the true-discovery proportion (TDP) of every cluster.

Closed testing with Simes local tests (Goeman & Solari 2011) gives simultaneous lower bounds on the number
of active voxels in any set of voxels; Rosenblatt et al. (2018, NeuroImage 181:786) apply it to clusters
of a z map. The bounds are valid at level ``alpha`` for all clusters and all thresholds at once, so
thresholds may be chosen after seeing the data. The shortcut through the Hommel value ``h`` is from
Goeman, Meijer, Krebs & Solari (2019, Biometrika 106:841). Matches nilearn's ``cluster_level_inference``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from nibabel.affines import apply_affine
from scipy.stats import norm

from runner.errors import RunnerError
from runner.inference.clusters import DEFAULT_CONNECTIVITY, label, label_maxima, voxel_volume
from runner.inference.parametric import check_alpha

DEFAULT_THRESHOLDS = (3.0,)


def hommel_value(p_values: np.ndarray, alpha: float) -> int:
    """Hommel value: the size of the largest set of hypotheses that Simes' test does not reject.

    ``h = max{i : p_(n-i+k) > k * alpha / i for k = 1..i}`` (0 when even the largest p-value is <= alpha),
    with ``p_(1) <= ... <= p_(n)``. Computed without a loop over ``i``: rank ``r`` (with ``p_(r) < alpha``)
    forbids every size ``i > n - r`` with ``i >= b_r = alpha / ((alpha - p_(r)) / (n - r))``, the abscissa
    where Simes' line through ``(n, alpha)`` meets ``p_(r)``.

    Parameters
    ----------
    p_values : np.ndarray
        One p-value per hypothesis (every in-mask voxel).
    alpha : float
        Level of the closed testing procedure, in (0, 1).

    Returns
    -------
    int
        ``h`` in ``0..n``.
    """
    alpha = check_alpha(alpha)
    p_sorted = np.sort(np.asarray(p_values, dtype=np.float64).ravel())
    n_tests = p_sorted.size
    if n_tests == 0:
        raise RunnerError("cannot compute the Hommel value: no p-values")
    if np.isnan(p_sorted).any():
        raise RunnerError("cannot compute the Hommel value: NaN p-values")
    if p_sorted[-1] <= alpha:
        return 0
    rank_from_end = n_tests - np.arange(1, n_tests)  # n - r for r = 1..n-1
    p_head = p_sorted[:-1]
    binding = p_head < alpha
    if not binding.any():
        return n_tests
    crossing = alpha / ((alpha - p_head[binding]) / rank_from_end[binding])
    largest_allowed = np.maximum(rank_from_end[binding], np.ceil(crossing) - 1)
    return int(min(n_tests, largest_allowed.min()))


def true_discoveries(p_values: np.ndarray, hommel: int, alpha: float) -> int:
    """Lower bound on the number of active voxels among ``p_values`` (one cluster).

    ``d = max(0, max_{u >= 1} 1 - u + #{i : h * p_i <= u * alpha})`` (Goeman et al. 2019, Lemma 1); it is
    enough to try ``u = max(1, ceil(h * p_i / alpha))``. With ``h = 0`` every voxel is a discovery.
    nilearn lets ``u`` be 0 when ``h * p_i == 0`` (h = 0, or p underflowing for z > ~38) and then reports a
    proportion above 1; here ``u >= 1`` as in the paper.
    """
    p_values = np.asarray(p_values, dtype=np.float64).ravel()
    if p_values.size == 0:
        return 0
    smallest_step = np.maximum(np.ceil(hommel * p_values / alpha), 1.0)
    steps = np.sort(smallest_step)
    last_of_each_step = np.append(steps[1:] != steps[:-1], True)
    n_at_or_below = np.arange(1, steps.size + 1)[last_of_each_step]
    criterion = 1.0 - steps[last_of_each_step] + n_at_or_below
    return int(max(0.0, criterion.max()))


def tdp_lower_bound(p_values: np.ndarray, hommel: int, alpha: float) -> float:
    """Lower bound on the true-discovery proportion of a cluster: ``true_discoveries / cluster size``.

    Parameters
    ----------
    p_values : np.ndarray
        One-sided p-values of the cluster's voxels.
    hommel : int
        Hommel value of all in-mask p-values (:func:`hommel_value`).
    alpha : float
        Level of the procedure, the same as for ``hommel``.

    Returns
    -------
    float
        TDP bound in [0, 1], simultaneously valid over all clusters with probability ``1 - alpha``.
    """
    alpha = check_alpha(alpha)
    p_values = np.asarray(p_values, dtype=np.float64).ravel()
    if p_values.size == 0:
        raise RunnerError("cannot bound the true-discovery proportion of an empty cluster")
    return true_discoveries(p_values, hommel, alpha) / p_values.size


def _check_thresholds(thresholds: float | Sequence[float]) -> list[float]:
    values = [thresholds] if np.isscalar(thresholds) else list(thresholds)
    if not values:
        raise RunnerError("ARI needs at least one cluster-forming threshold")
    checked = []
    for value in values:
        value = float(value)
        if not (np.isfinite(value) and value >= 0):
            raise RunnerError(f"ARI cluster-forming thresholds must be finite and >= 0, got {value}")
        checked.append(value)
    return sorted(checked)


def cluster_tdp(
    z3d: np.ndarray,
    mask3d: np.ndarray,
    thresholds: float | Sequence[float] = DEFAULT_THRESHOLDS,
    alpha: float = 0.05,
    connectivity: int = DEFAULT_CONNECTIVITY,
    affine: np.ndarray | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """TDP lower bound of every positive cluster of a z map, at one or several cluster-forming thresholds.

    p-values are one-sided, ``norm.sf(z)``, over all in-mask voxels (negative z included) and give one
    Hommel value. Clusters are ``z > threshold`` (strict) within the mask. Thresholds are processed in
    increasing order and each writes its clusters' bounds into the map, so a voxel shows the bound of the
    smallest cluster (highest threshold) containing it, as nilearn's ``cluster_level_inference``.

    Parameters
    ----------
    z3d : np.ndarray
        3D z map; non-finite values count as 0.
    mask3d : np.ndarray
        3D mask of the same shape.
    thresholds : float or sequence of float
        Cluster-forming thresholds on the z scale, >= 0.
    alpha : float
        Level: with probability ``1 - alpha`` all reported bounds hold.
    connectivity : {6, 18, 26}
        Neighbourhood defining clusters; nilearn uses 6.
    affine : np.ndarray or None
        4x4 affine; when given the table also has ``x, y, z`` (mm) and ``size_mm3``.

    Returns
    -------
    tdp3d : np.ndarray
        float64 map of TDP bounds, 0 outside clusters and outside the mask.
    table : pandas.DataFrame
        One row per cluster per threshold, thresholds increasing and clusters by decreasing peak:
        ``threshold, cluster_id`` (int, from 1 at each threshold), ``size_voxels, tdp, true_discoveries,
        peak_stat, i, j, k`` and, with an affine, ``x, y, z, size_mm3``.
    """
    alpha = check_alpha(alpha)
    thresholds = _check_thresholds(thresholds)
    z3d = np.asarray(z3d, dtype=np.float64)
    mask = np.asarray(mask3d) != 0
    if z3d.ndim != 3 or mask.shape != z3d.shape:
        raise RunnerError(f"ARI needs a 3D z map and a mask of the same shape, got {z3d.shape} and {mask.shape}")
    if not mask.any():
        raise RunnerError("ARI: the mask is empty")
    # voxels without a statistic (NaN) are not hypotheses: never in a cluster and not counted in Hommel's m
    tested = mask & np.isfinite(z3d)
    if not tested.any():
        raise RunnerError("ARI: no voxel of the mask has a statistic")
    z_map = np.where(tested, z3d, 0.0)
    p_map = norm.sf(z_map)
    hommel = hommel_value(p_map[tested], alpha)

    tdp_map = np.zeros(z3d.shape)
    rows: list[dict] = []
    for threshold in thresholds:
        labels, n_clusters = label(z_map > threshold, connectivity)
        if n_clusters == 0:
            continue
        in_cluster = labels > 0
        cluster_of_voxel = labels[in_cluster]
        order = np.argsort(cluster_of_voxel, kind="stable")
        sizes = np.bincount(cluster_of_voxel, minlength=n_clusters + 1)[1:]
        p_by_cluster = np.split(p_map[in_cluster][order], np.cumsum(sizes)[:-1])
        discoveries = np.array([true_discoveries(p, hommel, alpha) for p in p_by_cluster])
        tdp = discoveries / sizes
        tdp_map[in_cluster] = tdp[cluster_of_voxel - 1]

        peak_stats, flat_peaks = label_maxima(z_map, labels, n_clusters)
        peak_ijk = np.column_stack(np.unravel_index(flat_peaks, labels.shape)).astype(int).reshape(-1, 3)
        for rank, cluster in enumerate(np.argsort(-peak_stats, kind="stable")):
            rows.append({
                "threshold": threshold,
                "cluster_id": rank + 1,
                "size_voxels": int(sizes[cluster]),
                "tdp": float(tdp[cluster]),
                "true_discoveries": int(discoveries[cluster]),
                "peak_stat": float(peak_stats[cluster]),
                "i": int(peak_ijk[cluster, 0]),
                "j": int(peak_ijk[cluster, 1]),
                "k": int(peak_ijk[cluster, 2]),
            })
    columns = ["threshold", "cluster_id", "size_voxels", "tdp", "true_discoveries", "peak_stat", "i", "j", "k"]
    table = pd.DataFrame(rows, columns=columns)
    for column in ("cluster_id", "size_voxels", "true_discoveries", "i", "j", "k"):
        table[column] = table[column].astype(np.int64)
    for column in ("threshold", "tdp", "peak_stat"):
        table[column] = table[column].astype(np.float64)
    if affine is not None:
        xyz = apply_affine(np.asarray(affine, dtype=np.float64), table[["i", "j", "k"]].to_numpy())
        table["x"], table["y"], table["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        table["size_mm3"] = table["size_voxels"] * voxel_volume(affine)
    return tdp_map, table
