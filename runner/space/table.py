"""The one cluster-table schema, built from a Space, a statistic vector and cluster labels.

Columns, in order (the space decides the last five names):

==================  ==============================================================================================
``cluster_id``      str: ``"1"``, ``"2"``... by decreasing peak (or by ``order_by``); sub-peaks ``"1a"``, ``"1b"``
``x, y, z``         float, mm: position of the peak (of the sub-peak on sub-peak rows)
``peak_stat``       float: statistic at that peak (negative clusters keep their sign)
size                ``size_voxels`` (grid) or ``size_vertices`` (mesh): Int64, missing on sub-peak rows
measure             ``size_mm3`` (grid: voxels x voxel volume) or ``area_mm2`` (mesh: summed vertex areas): float,
                    NaN on sub-peak rows
index               ``i, j, k`` (grid indices, Int64) or ``hemi`` (str) and ``vertex`` (index in its hemisphere's
                    mesh, Int64)
extra               per-cluster columns a method adds (e.g. ``tdp``, ``p_fwe``), missing on sub-peak rows
==================  ==============================================================================================

Parametric cluster tables (:func:`runner.inference.clusters.cluster_table`) publish exactly these columns; ARI
publishes them with its own columns first (:func:`runner.inference.ari.cluster_tdp_in_space`).
"""

from __future__ import annotations

from collections.abc import Mapping
from string import ascii_lowercase

import numpy as np
import pandas as pd

from runner.space.base import Space, select_peaks
from runner.space.defaults import MAX_SUBPEAKS, MIN_DISTANCE_MM
from runner.space.graph import cluster_maxima

POSITION_COLUMNS = ["cluster_id", "x", "y", "z", "peak_stat"]


def table_columns(space: Space) -> list[str]:
    """Column names of a cluster table on ``space`` (without extra columns)."""
    return POSITION_COLUMNS + list(space.size_columns) + list(space.index_columns)


def empty_cluster_table(space: Space, extra: Mapping[str, np.dtype | str] | None = None) -> pd.DataFrame:
    """A table without rows, with the schema's columns and types."""
    table = pd.DataFrame({column: pd.Series(dtype=np.float64) for column in table_columns(space)})
    for name, dtype in (extra or {}).items():
        table[name] = pd.Series(dtype=dtype)
    return typed_cluster_table(table, space)


def typed_cluster_table(table: pd.DataFrame, space: Space) -> pd.DataFrame:
    """Column types: string ids, nullable integer sizes and indices, float positions and measures."""
    size, measure = space.size_columns
    table["cluster_id"] = table["cluster_id"].astype(str)
    for column in [size] + [c for c in space.index_columns if c != "hemi"]:
        table[column] = table[column].astype("Int64")
    if "hemi" in space.index_columns:
        table["hemi"] = table["hemi"].astype(str)
    for column in ("x", "y", "z", "peak_stat", measure):
        table[column] = table[column].astype(np.float64)
    return table


def cluster_table(
    space: Space,
    values: np.ndarray,
    labels: np.ndarray,
    n_clusters: int,
    *,
    sign: float = 1.0,
    first_id: int = 1,
    subpeaks: bool = True,
    min_distance: float = MIN_DISTANCE_MM,
    max_subpeaks: int = MAX_SUBPEAKS,
    strict_min_distance: bool = False,
    order_by: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per cluster (plus sub-peak rows), in the schema of this module.

    Parameters
    ----------
    space : Space
    values : np.ndarray
        (V,) statistic with the clusters' tail made positive (``sign * stat``).
    labels : np.ndarray
        (V,) cluster labels ``1..n_clusters``, 0 outside clusters (:meth:`Space.label`).
    n_clusters : int
    sign : float
        Multiplies ``peak_stat`` back (-1 for a negative tail).
    first_id : int
        Number of the first cluster (nilearn counts rows across tails, see ``clusters.cluster_table``).
    subpeaks : bool
        True: peaks are local maxima (plateau centres, nilearn's ``get_clusters_table``) and up to
        ``max_subpeaks`` sub-peaks follow each cluster. False: the peak is the cluster's largest value (lowest
        element index among ties) and no sub-peaks.
    min_distance, strict_min_distance
        Spacing of reported peaks in mm (:func:`runner.space.base.select_peaks`).
    order_by : np.ndarray, optional
        (n_clusters,) rows by decreasing ``order_by`` instead of decreasing peak (ties: label order).
    extra : mapping, optional
        Column name -> (n_clusters,) per-cluster values, indexed by label - 1, appended after the schema.

    Returns
    -------
    pandas.DataFrame
    """
    size_column, measure_column = space.size_columns
    extra = dict(extra or {})
    if n_clusters == 0:
        return empty_cluster_table(space, {name: np.asarray(v).dtype for name, v in extra.items()})
    values = np.asarray(values, dtype=np.float64)
    counts, measures = space.extent(labels, n_clusters)
    maxima, first_max = cluster_maxima(values, labels, n_clusters)
    ranking = np.argsort(-(maxima if order_by is None else np.asarray(order_by)), kind="stable")
    found = space.local_maxima(values, labels, n_clusters) if subpeaks else None
    rows: list[dict] = []
    for rank, cluster in enumerate(ranking):
        if found is None:
            peaks, peak_values = first_max[cluster:cluster + 1], maxima[cluster:cluster + 1]
        else:
            peaks, peak_values = found[cluster]
            kept = select_peaks(space.coordinates(peaks), peak_values, min_distance, max_subpeaks + 1,
                                strict_min_distance)
            peaks, peak_values = peaks[kept], peak_values[kept]
        xyz = space.coordinates(peaks)
        index = space.index_values(peaks)
        for position in range(len(peaks)):
            is_peak = position == 0
            row = {
                "cluster_id": str(first_id + rank) + ("" if is_peak else ascii_lowercase[position - 1]),
                "x": xyz[position, 0],
                "y": xyz[position, 1],
                "z": xyz[position, 2],
                "peak_stat": sign * peak_values[position],
                size_column: int(counts[cluster]) if is_peak else pd.NA,
                measure_column: measures[cluster] if is_peak else np.nan,
            }
            for column in space.index_columns:
                row[column] = index[column][position]
            for name, per_cluster in extra.items():
                row[name] = per_cluster[cluster] if is_peak else pd.NA
            rows.append(row)
    table = pd.DataFrame(rows, columns=table_columns(space) + list(extra))
    return typed_cluster_table(table, space)
