"""Cluster and TFCE statistics of whole maps: per-permutation maxima (the null) and the observed clusters.

Two-sided t tests form clusters and TFCE in each tail separately (positive on t, negative on -t, cluster-forming
threshold from ``cluster_forming_p / 2``), so a positive and a negative cluster never merge, and each element's
null value is the maximum over both tails. F tests are one-tailed. Clusters are voxels above the threshold
(strictly), their mass the sum of ``|stat| - threshold`` (nilearn's definition; randomise and PALM sum the
statistic itself). nilearn's cluster p-values leave the identity out of the null, which moves them by at most 1/P.
Labelling goes through :mod:`runner.inference.tfce`'s voxel graph.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as distributions

from runner.errors import RunnerError
from runner.inference.permutation.model import PermutationModel
from runner.inference.permutation.pvalues import fwe_p_values
from runner.inference.tfce import VoxelGraph, label_components, tfce

CLUSTER_METHODS = ("clustersize", "clustermass")


def cluster_forming_threshold(p: float, model: PermutationModel, two_sided: bool, on_z: bool = False) -> float:
    """Statistic threshold for a cluster-forming p (two-sided t: p/2 in each tail); ``on_z`` for z statistics."""
    if not 0 < p < 1:
        raise RunnerError(f"cluster_forming_p must be in (0, 1), got {p}")
    if on_z:
        return float(distributions.norm.isf(p / 2 if two_sided else p))
    if model.stat_type == "F":
        return float(distributions.f.isf(p, model.n_effects, model.dof))
    return float(distributions.t.isf(p / 2 if two_sided else p, model.dof))


def label_clusters(
    stat_maps: np.ndarray, threshold: float, graph: VoxelGraph, two_sided: bool
) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]:
    """Suprathreshold clusters of each map: labels (B, V), count, and per cluster its map, size and mass.

    Voxels with ``stat > threshold`` (and ``stat < -threshold`` when two-sided) form clusters within their
    tail; the mass is the sum of ``|stat| - threshold`` over the cluster (nilearn's definition).
    """
    magnitude = np.abs(stat_maps) if two_sided else stat_maps
    active = magnitude > threshold
    tail = np.sign(stat_maps).astype(np.int8) if two_sided else None
    labels, n = label_components(active, graph, tail)
    members = labels >= 0
    label_of_member = labels[members]
    if on_mesh(graph):  # cluster size on a mesh is its area, mm2 (PALM's surface cluster extent)
        area = np.broadcast_to(np.asarray(graph.element_measure, dtype=np.float64), labels.shape)[members]
        sizes = np.bincount(label_of_member, weights=area, minlength=n)
    else:
        sizes = np.bincount(label_of_member, minlength=n).astype(np.float64)
    masses = np.bincount(label_of_member, weights=magnitude[members] - threshold, minlength=n)
    owner = np.empty(n, dtype=np.int64)
    owner[label_of_member] = np.nonzero(members)[0]
    return labels, n, owner, sizes, masses


def on_mesh(graph: object) -> bool:
    """True for a mesh (TFCE area-weighted, cluster size in mm2); False for a voxel graph or grid."""
    return getattr(graph, "kind", None) == "mesh"


def cluster_maxima(
    stat_maps: np.ndarray, threshold: float, graph: VoxelGraph, two_sided: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Largest cluster size and mass of each map (0 without clusters)."""
    _, _, owner, sizes, masses = label_clusters(stat_maps, threshold, graph, two_sided)
    largest_size = np.zeros(stat_maps.shape[0])
    largest_mass = np.zeros(stat_maps.shape[0])
    np.maximum.at(largest_size, owner, sizes)
    np.maximum.at(largest_mass, owner, masses)
    return largest_size, largest_mass


def cluster_table(
    stat: np.ndarray,
    labels: np.ndarray,
    sizes: np.ndarray,
    masses: np.ndarray,
    p_values: np.ndarray,
    order_by: np.ndarray,
    graph: VoxelGraph,
) -> pd.DataFrame:
    """One row per observed cluster, largest ``order_by`` first, with its peak voxel (i, j, k).

    On a mesh, ``size_voxels`` is the cluster's area (mm2) and the peak columns hold its element index
    (``peak_i``; ``peak_j`` and ``peak_k`` are 0): the method layer turns both into the mesh table schema.
    """
    columns = ["cluster_id", "sign", "size_voxels", "mass", "p_fwe", "peak_stat", "peak_i", "peak_j", "peak_k"]
    if sizes.size == 0:
        return pd.DataFrame({name: pd.Series(dtype=float) for name in columns})
    members = np.flatnonzero(labels >= 0)
    by_height = members[np.argsort(-np.abs(stat[members]), kind="stable")]
    _, first = np.unique(labels[by_height], return_index=True)
    peaks = by_height[first]  # peak voxel of clusters 0..n-1
    rank = np.argsort(-order_by, kind="stable")
    if on_mesh(graph):
        coordinates = np.c_[peaks[rank], np.zeros((rank.size, 2), dtype=np.int64)]
    else:
        coordinates = graph.coordinates[peaks[rank]]
    table = pd.DataFrame(
        {
            "cluster_id": np.arange(1, rank.size + 1),
            "sign": np.sign(stat[peaks[rank]]).astype(int),
            "size_voxels": sizes[rank] if on_mesh(graph) else sizes[rank].astype(int),
            "mass": masses[rank],
            "p_fwe": p_values[rank],
            "peak_stat": stat[peaks[rank]],
            "peak_i": coordinates[:, 0],
            "peak_j": coordinates[:, 1],
            "peak_k": coordinates[:, 2],
        }
    )
    if on_mesh(graph):
        table["size_vertices"] = np.bincount(labels[labels >= 0], minlength=sizes.size)[rank]
    return table


def observed_tfce(
    stat: np.ndarray, null_tail: np.ndarray, graph: VoxelGraph, E: float, H: float, dh: float | str | None,
    two_sided: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TFCE of the observed map, its null (observed maximum first, then ``null_tail``) and voxel-wise FWE p."""
    enhanced = tfce(stat, graph, E, H, dh, two_sided, area_weighted=on_mesh(graph))
    null = np.concatenate([[np.max(np.abs(enhanced))], null_tail])
    return enhanced, null, fwe_p_values(np.abs(enhanced), null)


def observed_clusters(
    stat: np.ndarray, threshold: float, graph: VoxelGraph, two_sided: bool, null_tails: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, pd.DataFrame], dict[str, np.ndarray]]:
    """Clusters of the observed map for each method in ``null_tails`` (cluster size and/or mass).

    Returns per method the voxel-wise FWE p (that of the voxel's cluster, 1 outside clusters), the null
    (observed largest cluster first, then the tail), the cluster table, and each voxel's cluster size or mass
    (-inf outside clusters: what the p of a voxel is computed from).
    """
    labels, n_clusters, _, sizes, masses = label_clusters(stat[None], threshold, graph, two_sided)
    labels = labels[0]
    corrected: dict[str, np.ndarray] = {}
    nulls: dict[str, np.ndarray] = {}
    tables: dict[str, pd.DataFrame] = {}
    measures: dict[str, np.ndarray] = {}
    for name, values in (("clustersize", sizes), ("clustermass", masses)):
        if name not in null_tails:
            continue
        null = np.concatenate([[values.max() if n_clusters else 0.0], null_tails[name]])
        nulls[name] = null
        cluster_p = fwe_p_values(values, null)
        voxel_p = np.append(cluster_p, 1.0)  # label -1 (no cluster) reads the appended 1
        corrected[name] = voxel_p[np.where(labels >= 0, labels, cluster_p.size)]
        tables[name] = cluster_table(stat, labels, sizes, masses, cluster_p, values, graph)
        measures[name] = np.append(values, -np.inf)[np.where(labels >= 0, labels, values.size)]
    return corrected, nulls, tables, measures
