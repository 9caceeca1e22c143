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
from scipy.stats import norm

from runner.errors import RunnerError
from runner.inference.parametric import check_alpha
from runner.space import GridSpace, Space
from runner.space.defaults import PARAMETRIC_CONNECTIVITY as DEFAULT_CONNECTIVITY
from runner.space.table import cluster_table, empty_cluster_table

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


def cluster_tdp_in_space(
    space: Space,
    z: np.ndarray,
    thresholds: float | Sequence[float] = DEFAULT_THRESHOLDS,
    alpha: float = 0.05,
) -> tuple[np.ndarray, pd.DataFrame]:
    """TDP lower bound of every positive cluster of a z vector on a space, at one or several thresholds.

    p-values are one-sided, ``norm.sf(z)``, over all in-mask elements (negative z included) and give one
    Hommel value. Clusters are ``z > threshold`` (strict). Thresholds are processed in increasing order and
    each writes its clusters' bounds into the map, so an element shows the bound of the smallest cluster
    (highest threshold) containing it, as nilearn's ``cluster_level_inference``.

    Parameters
    ----------
    space : Space
        Grid or mesh; its neighbour graph defines clusters.
    z : np.ndarray
        (V,) z values; non-finite values count as 0.
    thresholds : float or sequence of float
        Cluster-forming thresholds on the z scale, >= 0.
    alpha : float
        Level: with probability ``1 - alpha`` all reported bounds hold.

    Returns
    -------
    tdp : np.ndarray
        (V,) TDP bounds, 0 outside clusters.
    table : pandas.DataFrame
        One row per cluster per threshold, thresholds increasing and clusters by decreasing peak (the largest z,
        lowest element index among ties): ``threshold, cluster_id`` (int, from 1 at each threshold), size
        (``size_voxels`` / ``size_vertices``), ``tdp, true_discoveries, peak_stat``, the space's index columns,
        ``x, y, z`` and the measure (``size_mm3`` / ``area_mm2``): the schema of :mod:`runner.space.table`
        with ARI's columns first.
    """
    alpha = check_alpha(alpha)
    thresholds = _check_thresholds(thresholds)
    if space.n_elements == 0:
        raise RunnerError("ARI: the mask is empty")
    # elements without a statistic (NaN) are not hypotheses: never in a cluster and not counted in Hommel's m
    z = np.asarray(z, dtype=np.float64)
    tested = np.isfinite(z)
    if not tested.any():
        raise RunnerError("ARI: no voxel of the mask has a statistic")
    z = np.where(tested, z, 0.0)
    p = norm.sf(z)
    hommel = hommel_value(p[tested], alpha)
    size_column, measure_column = space.size_columns
    columns = ["threshold", "cluster_id", size_column, "tdp", "true_discoveries", "peak_stat",
               *space.index_columns, "x", "y", "z", measure_column]

    tdp_values = np.zeros(space.n_elements)
    tables: list[pd.DataFrame] = []
    for threshold in thresholds:
        labels, n_clusters = space.label(tested & (z > threshold))
        if n_clusters == 0:
            continue
        in_cluster = labels > 0
        cluster_of_element = labels[in_cluster]
        order = np.argsort(cluster_of_element, kind="stable")
        sizes = np.bincount(cluster_of_element, minlength=n_clusters + 1)[1:]
        p_by_cluster = np.split(p[in_cluster][order], np.cumsum(sizes)[:-1])
        discoveries = np.array([true_discoveries(values, hommel, alpha) for values in p_by_cluster])
        tdp = discoveries / sizes
        tdp_values[in_cluster] = tdp[cluster_of_element - 1]
        table = cluster_table(space, z, labels, n_clusters, subpeaks=False,
                              extra={"tdp": tdp, "true_discoveries": discoveries})
        tables.append(table.assign(threshold=threshold))
    if tables:
        table = pd.concat(tables, ignore_index=True)[columns]
    else:
        table = empty_cluster_table(space).assign(threshold=np.float64(), tdp=np.float64(),
                                                  true_discoveries=np.int64())[columns]
    for column in ("cluster_id", size_column, "true_discoveries", *space.index_columns):
        if column != "hemi":
            table[column] = table[column].astype(np.int64)
    for column in ("threshold", "tdp", "peak_stat"):
        table[column] = table[column].astype(np.float64)
    return tdp_values, table


def cluster_tdp(
    z3d: np.ndarray,
    mask3d: np.ndarray,
    thresholds: float | Sequence[float] = DEFAULT_THRESHOLDS,
    alpha: float = 0.05,
    connectivity: int = DEFAULT_CONNECTIVITY,
    affine: np.ndarray | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """:func:`cluster_tdp_in_space` on a 3D z map and its mask.

    Parameters
    ----------
    z3d : np.ndarray
        3D z map; non-finite values count as 0.
    mask3d : np.ndarray
        3D mask of the same shape.
    thresholds, alpha
        See :func:`cluster_tdp_in_space`.
    connectivity : {6, 18, 26}
        Neighbourhood defining clusters; nilearn uses 6.
    affine : np.ndarray or None
        4x4 affine; without one the table has no ``x, y, z`` and ``size_mm3``.

    Returns
    -------
    tdp3d : np.ndarray
        float64 map of TDP bounds, 0 outside clusters and outside the mask.
    table : pandas.DataFrame
        ``threshold, cluster_id, size_voxels, tdp, true_discoveries, peak_stat, i, j, k`` and, with an affine,
        ``x, y, z, size_mm3``.
    """
    z3d = np.asarray(z3d, dtype=np.float64)
    mask = np.asarray(mask3d) != 0
    if z3d.ndim != 3 or mask.shape != z3d.shape:
        raise RunnerError(f"ARI needs a 3D z map and a mask of the same shape, got {z3d.shape} and {mask.shape}")
    space = GridSpace(mask, np.eye(4) if affine is None else affine, connectivity)
    tdp, table = cluster_tdp_in_space(space, z3d[mask], thresholds, alpha)
    if affine is None:
        table = table.drop(columns=["x", "y", "z", "size_mm3"])
    return space.to_volume(tdp), table
