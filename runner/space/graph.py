"""Neighbour graphs shared by grids and meshes: CSR adjacency, padded neighbour tables, connected components.

Two forms of one graph: a symmetric CSR adjacency without self loops (``scipy.sparse``) for general graph work, and
a rectangular neighbour table (``(V, K)`` element indices, ``V`` standing for "no neighbour") for the compiled
TFCE kernel and for labelling many maps at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from runner.errors import RunnerError
from runner.space.defaults import MAX_KERNEL_NEIGHBOURS


@dataclass(frozen=True)
class NeighbourTable:
    """Padded neighbour lists of ``n_elements`` elements.

    ``neighbours[i, j]`` is the ``j``-th neighbour of element ``i`` or ``n_elements`` (none). ``adjacent[j]`` is a
    bit mask of the slots whose neighbours are neighbours of slot ``j``'s neighbour for every element (a grid's
    offsets make this known in advance; 0 when unknown, as on a mesh); ``lines`` are the slots whose union-find
    entries the TFCE kernel prefetches.
    """

    n_elements: int
    neighbours: np.ndarray
    adjacent: np.ndarray
    lines: np.ndarray


def adjacency_from_edges(edges: np.ndarray, n_elements: int) -> csr_matrix:
    """Symmetric CSR adjacency (float 1.0 entries) of undirected edges; duplicates and self loops removed.

    Parameters
    ----------
    edges : np.ndarray
        (m, 2) element indices.
    n_elements : int

    Returns
    -------
    scipy.sparse.csr_matrix
        (n_elements, n_elements), sorted indices.
    """
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    edges = edges[edges[:, 0] != edges[:, 1]]
    both = np.concatenate([edges, edges[:, ::-1]])
    key = np.unique(both[:, 0] * n_elements + both[:, 1])
    rows, cols = np.divmod(key, n_elements)
    return csr_matrix((np.ones(key.size), (rows, cols)), shape=(n_elements, n_elements))


def table_from_adjacency(adjacency: csr_matrix) -> NeighbourTable:
    """Padded neighbour table of a CSR adjacency (neighbours in increasing index order, no shortcut bits)."""
    adjacency = csr_matrix(adjacency)
    adjacency.sort_indices()
    n = adjacency.shape[0]
    degree = np.diff(adjacency.indptr)
    width = int(degree.max()) if n else 0
    if width > MAX_KERNEL_NEIGHBOURS:
        raise RunnerError(f"a mesh vertex has {width} neighbours; at most {MAX_KERNEL_NEIGHBOURS} are supported "
                          "(check the faces of the surface file)")
    neighbours = np.full((n, max(width, 1)), n, dtype=np.int32)
    rows = np.repeat(np.arange(n), degree)
    slots = np.arange(adjacency.indices.size) - np.repeat(adjacency.indptr[:-1], degree)
    neighbours[rows, slots] = adjacency.indices
    return NeighbourTable(n_elements=n, neighbours=neighbours, adjacent=np.zeros(neighbours.shape[1], np.int64),
                          lines=np.arange(neighbours.shape[1], dtype=np.int64))


def adjacency_from_table(table: NeighbourTable) -> csr_matrix:
    """CSR adjacency of a neighbour table (the padding dropped)."""
    n = table.n_elements
    rows = np.repeat(np.arange(n), table.neighbours.shape[1])
    cols = table.neighbours.ravel().astype(np.int64)
    keep = cols < n
    return adjacency_from_edges(np.column_stack([rows[keep], cols[keep]]), n)


def first_occurrence_order(labels: np.ndarray, n: int) -> np.ndarray:
    """Renumber labels ``1..n`` (0 = none) so that label ``c`` is the ``c``-th label met in element order.

    This is the numbering of ``scipy.ndimage.label`` (raster order of each component's first voxel), so grids and
    meshes number their clusters alike whatever labelling algorithm ran.
    """
    labels = np.asarray(labels)
    if n == 0:
        return labels
    members = np.flatnonzero(labels > 0)
    _, first = np.unique(labels[members], return_index=True)
    order = np.argsort(first, kind="stable")  # old labels (0-based) by first appearance
    renumber = np.zeros(n + 1, dtype=labels.dtype)
    renumber[order + 1] = np.arange(1, n + 1, dtype=labels.dtype)
    return renumber[labels]


def label_graph(adjacency: csr_matrix, active: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of the active elements of a graph, numbered ``1..n`` by first element (0 = inactive)."""
    active = np.asarray(active, dtype=bool)
    members = np.flatnonzero(active)
    labels = np.zeros(active.size, dtype=np.int32)
    if members.size == 0:
        return labels, 0
    n, component = connected_components(adjacency[members][:, members], directed=False)
    labels[members] = component + 1
    return first_occurrence_order(labels, int(n)), int(n)


def label_batches(active: np.ndarray, neighbours: np.ndarray,
                  tail: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Connected components of the active elements of each of B maps, numbered across all maps.

    Parameters
    ----------
    active : np.ndarray
        (B, V) bool.
    neighbours : np.ndarray
        (V, K) padded neighbour table, ``V`` for "no neighbour" (:class:`NeighbourTable`).
    tail : np.ndarray, optional
        (B, V) int8: elements join only neighbours of the same tail (e.g. the sign of a two-sided statistic).

    Returns
    -------
    labels : np.ndarray
        (B, V) int64, -1 for inactive elements, else the component in ``0..n-1`` (components never span two maps).
    n : int
    """
    active = np.asarray(active, dtype=bool)
    n_maps, n_elements = active.shape
    stride = n_elements + 1
    padded = np.zeros((n_maps, stride), dtype=bool)
    padded[:, :n_elements] = active
    flat_active = padded.ravel()
    members = np.flatnonzero(flat_active)
    if members.size == 0:
        return np.full((n_maps, n_elements), -1, dtype=np.int64), 0
    position = np.full(flat_active.size, members.size, dtype=np.int64)
    position[members] = np.arange(members.size)
    candidates = neighbours[members % stride] + (members - members % stride)[:, None]
    candidate_position = position[candidates]
    # only neighbours after the element: each pair once; the sentinel position (members.size) is never linked
    linked = (candidate_position > np.arange(members.size)[:, None]) & (candidate_position < members.size)
    if tail is not None:
        tails = np.zeros((n_maps, stride), dtype=np.int8)
        tails[:, :n_elements] = tail
        tail_by_position = np.append(tails.ravel()[members], np.int8(0))
        linked &= tail_by_position[candidate_position] == tail_by_position[:-1, None]
    per_row = linked.sum(axis=1)
    indptr = np.zeros(members.size + 1, dtype=np.int64)
    np.cumsum(per_row, out=indptr[1:])
    targets = candidate_position[linked]
    adjacency = csr_matrix((np.ones(targets.size), targets, indptr), shape=(members.size, members.size))
    n, member_label = connected_components(adjacency, directed=True, connection="weak")
    flat_labels = np.full(flat_active.size, -1, dtype=np.int64)
    flat_labels[members] = member_label
    labels = flat_labels.reshape(n_maps, stride)[:, :n_elements].copy()
    return labels, int(n)


def cluster_maxima(values: np.ndarray, labels: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest value of each label ``1..n`` and the index of its first element (ties: lowest index).

    Same answers as ``scipy.ndimage.maximum`` / ``maximum_position`` at O(elements in clusters) cost.
    """
    flat_labels = np.asarray(labels).ravel()
    flat_values = np.asarray(values, dtype=np.float64).ravel()
    members = np.flatnonzero(flat_labels > 0)
    order = np.lexsort((members, -flat_values[members], flat_labels[members]))
    first = np.r_[True, np.diff(flat_labels[members][order]) != 0]
    winners = members[order][first]
    maxima = np.full(n_labels, -np.inf)
    positions = np.full(n_labels, -1, dtype=np.int64)
    ids = flat_labels[winners] - 1
    maxima[ids] = flat_values[winners]
    positions[ids] = winners
    return maxima, positions
