"""Threshold-free cluster enhancement (TFCE) and connected components on the in-mask voxel graph.

TFCE (Smith & Nichols 2009) replaces each voxel's statistic ``s`` by

    TFCE(v) = sum_{k >= 1, k dh <= s(v)} e_k(v)^E (k dh)^H dh

where ``e_k(v)`` is the number of voxels in the cluster that contains ``v`` when the map is thresholded at
``k dh`` (voxels with ``s >= k dh``). The step ``dh`` defaults to a hundredth of the map's maximum, recomputed for
every map and every tail (the last threshold is the maximum itself, as in ``numpy.linspace``, so that rounding
never drops the peak), and the sum is multiplied by ``dh`` so that it approximates the integral: these are
PALM's conventions (``palm_tfce.m``). nilearn uses the same 100 steps (as fslmaths does, its documentation says)
but does not multiply by ``dh``, so its values are ours divided by the step. Two-sided maps are enhanced tail by
tail: positive voxels on ``s``, negative voxels on ``-s`` (the negative tail comes back negative), so a positive
and a negative cluster never merge.

Speed comes from never labelling a whole volume per threshold. Voxels are sorted by their level (how many
thresholds they pass) and added from the highest level down; at each level only the new voxels and their
already-present neighbours are handed to a union step (``scipy.sparse.csgraph.connected_components`` on the
graph of *components* plus new voxels), so each voxel-neighbour pair is examined once; what remains per level
is relabelling the voxels already present (a gather). Small maps (permutations) are processed many at a time so
that they share each level's union step; whole-brain maps one or two at a time so the working arrays stay in cache.
The result equals labelling the thresholded volume at every level (``scipy.ndimage.label``), to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from runner.errors import RunnerError

TFCE_E = 0.5
TFCE_H = 2.0
TFCE_STEPS = 100
BATCH_VOXELS = 500_000  # maps enhanced together: enough to share each level's union step among small maps,
# few enough that the rank array of a batch of large maps stays in cache (one or two whole-brain maps)
CONNECTIVITIES = {6: 1, 18: 2, 26: 3}


@dataclass(frozen=True)
class VoxelGraph:
    """In-mask voxels and their neighbours; voxel ``i`` is ``np.flatnonzero(mask)[i]`` (C order).

    ``neighbours[i]`` lists the in-mask indices of voxel ``i``'s neighbours; ``n_voxels`` stands for "outside
    the mask" so the table is rectangular.
    """

    shape: tuple[int, int, int]
    n_voxels: int
    connectivity: int
    neighbours: np.ndarray
    coordinates: np.ndarray


def voxel_graph(mask: np.ndarray, connectivity: int = 26) -> VoxelGraph:
    """Build the neighbour table of the in-mask voxels of a 3D boolean mask.

    Parameters
    ----------
    mask : ndarray of bool, shape (X, Y, Z)
    connectivity : {6, 18, 26}
        Face, face+edge or face+edge+corner neighbours (``generate_binary_structure(3, 1 | 2 | 3)``).

    Returns
    -------
    VoxelGraph
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise RunnerError(f"the mask must be a 3D array, got {mask.ndim} dimension(s)")
    if connectivity not in CONNECTIVITIES:
        raise RunnerError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    mask = mask.astype(bool)
    n_voxels = int(mask.sum())
    structure = ndimage.generate_binary_structure(3, CONNECTIVITIES[connectivity])
    offsets = np.argwhere(structure) - 1
    offsets = offsets[np.any(offsets != 0, axis=1)]
    padded = np.pad(mask, 1)
    index = np.full(padded.shape, n_voxels, dtype=np.int32)
    index[padded] = np.arange(n_voxels, dtype=np.int32)
    coordinates = np.argwhere(padded)
    neighbours = np.empty((n_voxels, len(offsets)), dtype=np.int32)
    for column, offset in enumerate(offsets):
        shifted = coordinates + offset
        neighbours[:, column] = index[shifted[:, 0], shifted[:, 1], shifted[:, 2]]
    return VoxelGraph(
        shape=tuple(int(s) for s in mask.shape),
        n_voxels=n_voxels,
        connectivity=connectivity,
        neighbours=neighbours,
        coordinates=(coordinates - 1).astype(np.int32),
    )


def _check_maps(maps: np.ndarray, graph: VoxelGraph) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 1:
        maps = maps[None, :]
    if maps.ndim != 2 or maps.shape[1] != graph.n_voxels:
        raise RunnerError(
            f"statistic maps must have {graph.n_voxels} in-mask values per map, got shape {maps.shape}"
        )
    return np.where(np.isfinite(maps), maps, 0.0)


def threshold_levels(values: np.ndarray, step: float, n_levels: int, top: float | None = None) -> np.ndarray:
    """Number of thresholds ``k * step`` (k = 1..n_levels) at or below each value, as int16.

    With ``top`` the last threshold is ``top`` itself (``numpy.linspace(0, top, n_levels + 1)[1:]``), so the
    map's maximum always reaches the last level whatever the rounding of ``n_levels * (top / n_levels)``.
    Computed from ``floor(values / step)`` and corrected by direct comparison with the thresholds, so the
    result is exactly ``sum_k [values >= threshold_k]``.
    """
    thresholds = step * np.arange(1, n_levels + 2, dtype=np.float64)
    if top is not None:
        thresholds[n_levels - 1] = top
    level = np.floor(np.clip(values / step, 0, n_levels)).astype(np.int16)
    up = (level < n_levels) & (values >= thresholds[level])
    level += up
    down = (level > 0) & (values < thresholds[np.maximum(level - 1, 0)])
    level -= down
    return level


def _tail_levels(
    maps: np.ndarray, two_sided: bool, dh: float | None, steps: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Threshold levels of every (map, tail) pair, one row each (row ``tails * b + t``; t = 1 is -map).

    Returns the levels (rows of V + 1 values, the last one standing for "outside the mask"), the step of each
    row and the highest level.
    """
    n_maps, n_voxels = maps.shape
    tails = (1.0, -1.0) if two_sided else (1.0,)
    levels = np.zeros((n_maps * len(tails), n_voxels + 1), dtype=np.int16)
    steps_used = np.ones(n_maps * len(tails))
    top_level = 0
    for b in range(n_maps):
        for t, sign in enumerate(tails):
            row = b * len(tails) + t
            values = sign * maps[b]
            top = float(np.max(values)) if n_voxels else 0.0
            if top <= 0:
                continue
            step = top / steps if dh is None else float(dh)
            n_levels = steps if dh is None else int(np.floor(top / step)) + 1
            if n_levels > np.iinfo(np.int16).max - 1:
                raise RunnerError(
                    f"tfce_dh={dh} gives {n_levels} thresholds for a map whose maximum is {top:.3g}; "
                    "use a larger step"
                )
            levels[row, :n_voxels] = threshold_levels(values, step, n_levels, top if dh is None else None)
            steps_used[row] = step
            top_level = max(top_level, int(levels[row].max()))
    return levels, steps_used, top_level


def _enhance(
    maps: np.ndarray,
    graph: VoxelGraph,
    two_sided: bool,
    E: float,
    H: float,
    dh: float | None,
    steps: int,
    want_maps: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-map maximum |TFCE| and, optionally, the TFCE maps (see the module docstring for the algorithm).

    Each (map, tail) pair is a row of its own, so a voxel's neighbours from another tail or another map are
    simply never active in its row. Voxels of all rows are sorted by level, highest first ("rank"); at each
    level the new voxels are linked to neighbours of lower rank (already present) and the union runs on the
    graph of the current components plus the new voxels.
    """
    n_maps, n_voxels = maps.shape
    tails = 2 if two_sided else 1
    stride = n_voxels + 1
    levels, steps_used, top_level = _tail_levels(maps, two_sided, dh, steps)
    n_rows = levels.shape[0]
    flat = levels.ravel()
    if flat.size >= np.iinfo(np.int32).max:
        raise RunnerError("too many voxels in one TFCE batch; lower the memory budget")
    active = np.flatnonzero(flat)
    n_active = active.size
    maxima = np.zeros(n_maps)
    if n_active == 0:
        return maxima, (np.zeros((n_maps, n_voxels)) if want_maps else None)

    # rows of the active voxels without a division: active is sorted, so rows come in runs
    bounds = np.searchsorted(active, np.arange(n_rows + 1) * stride)
    row_of_active = np.repeat(np.arange(n_rows, dtype=np.int32), np.diff(bounds))
    key_type = np.uint8 if top_level < 256 else np.uint16
    depth = (top_level - flat[active]).astype(key_type)  # 0 for the highest level: sort ascending, stably
    by_level = np.argsort(depth, kind="stable")
    order = active[by_level].astype(np.int32)
    row_of_voxel = row_of_active[by_level]
    base = row_of_voxel * np.int32(stride)
    voxel_in_map = order - base
    rank = np.full(flat.size, n_active, dtype=np.int32)
    rank[order] = np.arange(n_active, dtype=np.int32)
    entered = np.cumsum(np.bincount(depth, minlength=top_level))
    del depth, by_level, row_of_active, active
    factor = steps_used ** (H + 1.0)  # contribution at level k: extent^E * k^H * dh^(H + 1)
    height = np.arange(top_level + 1, dtype=np.float64) ** H

    component = np.empty(n_active, dtype=np.int32)
    sizes = np.zeros(0)
    best = np.zeros(0)
    row_of_component = np.zeros(0, dtype=np.int32)
    accumulated = np.zeros(n_active) if want_maps else None
    n_before, n_components = 0, 0
    neighbours = graph.neighbours
    n_neighbours = neighbours.shape[1]
    for step_index in range(top_level):
        k = top_level - step_index
        n_now = int(entered[step_index])
        n_new = n_now - n_before
        if n_new:
            component[n_before:n_now] = np.arange(n_components, n_components + n_new, dtype=np.int32)
            candidates = neighbours[voxel_in_map[n_before:n_now]]
            candidates += base[n_before:n_now, None]
            candidate_rank = rank[candidates]
            # link each new voxel to the neighbours already present (lower rank): every pair exactly once
            linked = candidate_rank < np.arange(n_before, n_now, dtype=np.int32)[:, None]
            flags = linked.view(np.uint8)
            per_row = flags[:, 0].astype(np.int64)
            for column in range(1, n_neighbours):  # faster than a reduction along a short last axis
                per_row += flags[:, column]
            node_sizes = np.concatenate([sizes, np.ones(n_new)])
            node_best = np.concatenate([best, np.zeros(n_new)])
            node_row = np.concatenate([row_of_component, row_of_voxel[n_before:n_now]])
            n_nodes = n_components + n_new
            targets = component[np.compress(linked.ravel(), candidate_rank.ravel())]
            if targets.size:
                indptr = np.zeros(n_nodes + 1, dtype=np.int64)
                np.cumsum(per_row, out=indptr[n_components + 1 :])
                adjacency = csr_matrix((np.ones(targets.size), targets, indptr), shape=(n_nodes, n_nodes))
                n_components, label = connected_components(adjacency, directed=True, connection="weak")
                label = label.astype(np.int32)
                component[:n_now] = label[component[:n_now]]
                sizes = np.bincount(label, weights=node_sizes, minlength=n_components)
                best = np.zeros(n_components)
                np.maximum.at(best, label, node_best)
                row_of_component = np.empty(n_components, dtype=np.int32)
                row_of_component[label] = node_row
            else:
                n_components, sizes, best, row_of_component = n_nodes, node_sizes, node_best, node_row
        n_before = n_now
        contribution = sizes**E * (height[k] * factor[row_of_component])
        best += contribution
        if want_maps:
            accumulated[:n_now] += contribution[component[:n_now]]
    np.maximum.at(maxima, row_of_component // tails, best)
    if not want_maps:
        return maxima, None
    enhanced = np.zeros(flat.size)
    enhanced[order] = accumulated
    enhanced = enhanced.reshape(n_maps, tails, stride)[:, :, :n_voxels]
    return maxima, (enhanced[:, 0] - enhanced[:, 1] if two_sided else enhanced[:, 0].copy())


def tfce(
    stat: np.ndarray,
    graph: VoxelGraph,
    E: float = TFCE_E,
    H: float = TFCE_H,
    dh: float | None = None,
    two_sided: bool = True,
    steps: int = TFCE_STEPS,
) -> np.ndarray:
    """TFCE map(s) of in-mask statistic values.

    Parameters
    ----------
    stat : ndarray, shape (V,) or (B, V)
        Statistic values in the graph's voxel order; non-finite values count as 0.
    graph : VoxelGraph
    E, H : float
        Extent and height exponents (0.5 and 2 for 3D images).
    dh : float or None
        Threshold step; None uses ``max / steps`` per map and tail.
    two_sided : bool
        Enhance the negative tail too (returned negative); otherwise negative values are ignored.
    steps : int
        Number of thresholds when ``dh`` is None.

    Returns
    -------
    ndarray, same shape as ``stat``
    """
    stat = np.asarray(stat)
    maps = _check_maps(stat, graph)
    batch = max(1, BATCH_VOXELS // max(1, graph.n_voxels))
    enhanced = np.concatenate(
        [_enhance(maps[i : i + batch], graph, two_sided, E, H, dh, steps, want_maps=True)[1]
         for i in range(0, maps.shape[0], batch)]
    )
    return enhanced[0] if stat.ndim == 1 else enhanced


def tfce_maxima(
    stats: np.ndarray,
    graph: VoxelGraph,
    E: float = TFCE_E,
    H: float = TFCE_H,
    dh: float | None = None,
    two_sided: bool = True,
    steps: int = TFCE_STEPS,
) -> np.ndarray:
    """Maximum |TFCE| of each map, without building the maps (the statistic of the permutation null).

    Parameters are those of :func:`tfce`; ``stats`` has shape (B, V). Returns shape (B,).
    """
    maps = _check_maps(stats, graph)
    batch = max(1, BATCH_VOXELS // max(1, graph.n_voxels))
    return np.concatenate(
        [_enhance(maps[i : i + batch], graph, two_sided, E, H, dh, steps, want_maps=False)[0]
         for i in range(0, maps.shape[0], batch)]
    )


def label_components(active: np.ndarray, graph: VoxelGraph, tail: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Connected components of the active voxels of each map, numbered across all maps.

    Parameters
    ----------
    active : ndarray of bool, shape (B, V)
    graph : VoxelGraph
    tail : ndarray of int8, shape (B, V), optional
        Voxels are joined only to neighbours of the same tail (e.g. the sign of a two-sided statistic).

    Returns
    -------
    labels : ndarray of int64, shape (B, V)
        -1 for inactive voxels, else the component index in ``0..n-1`` (components never span two maps).
    n : int
    """
    active = np.asarray(active, dtype=bool)
    n_maps, n_voxels = active.shape
    stride = n_voxels + 1
    padded = np.zeros((n_maps, stride), dtype=bool)
    padded[:, :n_voxels] = active
    flat_active = padded.ravel()
    members = np.flatnonzero(flat_active)
    if members.size == 0:
        return np.full((n_maps, n_voxels), -1, dtype=np.int64), 0
    position = np.full(flat_active.size, members.size, dtype=np.int64)
    position[members] = np.arange(members.size)
    candidates = graph.neighbours[members % stride] + (members - members % stride)[:, None]
    candidate_position = position[candidates]
    # only neighbours after the voxel: each pair once; the sentinel position (members.size) is never linked
    linked = (candidate_position > np.arange(members.size)[:, None]) & (candidate_position < members.size)
    if tail is not None:
        tails = np.zeros((n_maps, stride), dtype=np.int8)
        tails[:, :n_voxels] = tail
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
    labels = flat_labels.reshape(n_maps, stride)[:, :n_voxels].copy()
    return labels, int(n)
