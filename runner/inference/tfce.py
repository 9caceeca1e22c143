"""Threshold-free cluster enhancement (TFCE) and connected components on the neighbour graph of a grid or mesh.

TFCE (Smith & Nichols 2009) replaces each voxel's statistic ``s`` by an integral over cluster-forming thresholds,

    TFCE(v) = integral_0^{s(v)} e_h(v)^E h^H dh

where ``e_h(v)`` is the number of voxels in the cluster that contains ``v`` when the map is thresholded at ``h``
(voxels with ``s >= h``); on a surface it is usually the cluster's area, the summed vertex areas
(``area_weighted=True``, with E = 1 and H = 2). Any :class:`runner.space.Space` (a voxel grid or a mesh) or a
:class:`runner.space.VoxelGraph` gives the neighbours. Two ways of evaluating it are offered:

- stepped (the default, as PALM, FSL and nilearn): the sum over thresholds ``k dh`` (k >= 1, ``k dh <= s(v)``) of
  ``e_k(v)^E (k dh)^H dh``. The step ``dh`` defaults to a hundredth of the map's maximum, recomputed for every
  map and every tail (the last threshold is the maximum itself, as in ``numpy.linspace``, so that rounding never
  drops the peak), and the sum is multiplied by ``dh`` so that it approximates the integral: these are PALM's
  conventions (``palm_tfce.m``). nilearn uses the same 100 steps (as fslmaths does, its documentation says) but
  does not multiply by ``dh``, so its values are ours divided by the step.
- exact (``dh="exact"``): the integral itself. ``e_h(v)`` only changes at the statistic values of the voxels, so
  between two consecutive values it is constant and the integral is a sum of ``e^E (b^(H+1) - a^(H+1)) / (H+1)``
  over those intervals (eTFCE: Chen, Weeda, Nichols & Goeman, arXiv:2603.03004). It has no step to choose and no
  discretisation error.

Two-sided maps are enhanced tail by tail: positive voxels on ``s``, negative voxels on ``-s`` (the negative tail
comes back negative), so a positive and a negative cluster never merge.

Algorithm. Both are computed from one merge tree per map and tail (a union-find, as eTFCE's): voxels are added from
the highest value down (stepped: by threshold level, with a counting sort) and each is joined to its neighbours
already present. A cluster's extent only changes when it grows, so each cluster keeps the height down to which its
contribution has been counted; when it grows (or at the end) the contribution of the heights in between,
``extent^E (F(since) - F(now))``, is added at once, with ``F(level) = sum_{k <= level} k^H dh^(H+1)`` (stepped) or
``F(h) = h^(H+1) / (H+1)`` (exact). That contribution belongs to every member: it is added to the cluster's root,
and a member's TFCE is the sum along its path to the root (union by size keeps paths short; when a cluster joins
a larger one its root's sum is rebased on the new root). The largest TFCE of a cluster is tracked along the way,
so the permutation null (the maximum) needs no per-voxel pass. The cost is one pass over each voxel's neighbours
plus near-constant union-find work, O(V alpha(V)), plus a counting sort by level (stepped: O(V + number of steps))
or a sort of the values (exact). The result equals labelling the thresholded volume at every threshold
(``scipy.ndimage.label``) to rounding.

Speed. Visiting voxels in value order jumps all over the volume, so memory latency dominates: the kernels (numba,
compiled on first use and cached on disk) prefetch the neighbour lists and union-find entries of the voxels a few
steps ahead, read which neighbours are present as one bit mask, and skip the root search for a present neighbour
adjacent to one already joined (the two were joined when the later of them was added). They release the GIL, so
permutation workers on threads run them in parallel.
"""

from __future__ import annotations

import math
import numbers

import llvmlite.binding as llvm_binding
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from runner.errors import RunnerError
from runner.space import GridSpace, Space, VoxelGraph
from runner.space.defaults import CONNECTIVITY_RANK, PERMUTATION_CONNECTIVITY, TFCE_E, TFCE_H, TFCE_STEPS
from runner.space.graph import NeighbourTable, label_batches
from runner.space.grid import grid_neighbour_table

EXACT = "exact"  # the dh that asks for the continuous integral
MAX_LEVELS = 1_000_000  # thresholds per map with a fixed step: beyond this use the exact integral
CONNECTIVITIES = CONNECTIVITY_RANK
Graph = VoxelGraph | Space  # what the functions below accept: a voxel graph, or any grid or mesh space


def voxel_graph(mask: np.ndarray, connectivity: int = PERMUTATION_CONNECTIVITY) -> VoxelGraph:
    """Neighbour table of the in-mask voxels of a 3D boolean mask (:meth:`runner.space.GridSpace.voxel_graph`).

    Parameters
    ----------
    mask : ndarray of bool, shape (X, Y, Z)
    connectivity : {6, 18, 26}
        Face, face+edge or face+edge+corner neighbours (``generate_binary_structure(3, 1 | 2 | 3)``).

    Returns
    -------
    VoxelGraph
    """
    return GridSpace(mask, np.eye(4), connectivity).voxel_graph()


def neighbour_table(graph: Graph) -> NeighbourTable:
    """The padded neighbour lists of a VoxelGraph or a Space."""
    if isinstance(graph, VoxelGraph):
        return grid_neighbour_table(graph)
    return graph.neighbour_table()


def _n_elements(graph: Graph) -> int:
    return graph.n_voxels if isinstance(graph, VoxelGraph) else graph.n_elements


def _check_maps(maps: np.ndarray, graph: Graph) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float64)
    n_elements = _n_elements(graph)
    if maps.ndim == 1:
        maps = maps[None, :]
    if maps.ndim != 2 or maps.shape[1] != n_elements:
        raise RunnerError(
            f"statistic maps must have {n_elements} in-mask values per map, got shape {maps.shape}"
        )
    return np.where(np.isfinite(maps), maps, 0.0)


PREFETCH_FAR = 8  # voxels ahead whose neighbour-table row and own records are prefetched
PREFETCH_NEAR = 4  # voxels ahead whose neighbours' union-find entries are prefetched (their row is in cache by then)


@intrinsic
def _prefetch(typingctx, array, index):
    """Hint the CPU to fetch ``array[index]`` (a 1D array) into the cache; no effect on results.

    The merge tree visits voxels in value order, all over the volume: without prefetching most of its time is
    spent waiting for memory.
    """
    if not isinstance(array, types.Array) or array.ndim != 1 or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        name = "llvm.prefetch.p0" if llvm_binding.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32]), name)
        builder.call(function, [address, i32(0), i32(3), i32(1)])  # read, keep in all cache levels, data
        return context.get_dummy_value()

    return types.void(array, index), codegen


@intrinsic
def _trailing_zeros(typingctx, value):
    """Index of the lowest set bit of a non-zero 64-bit integer (``llvm.cttz``)."""
    if not isinstance(value, types.Integer) or value.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]), "llvm.cttz.i64")
        return builder.call(function, [args[0], ir.IntType(1)(1)])

    return types.int64(value), codegen


@numba.njit(cache=True, nogil=True)
def _counting_order(keys, n_keys, order, counts):
    """Voxels with key >= 1 into ``order``, highest key first, voxels of one key in index order; returns how many."""
    counts[: n_keys + 1] = 0
    for v in range(keys.size):
        counts[keys[v]] += 1
    position = 0
    for k in range(n_keys, 0, -1):
        count = counts[k]
        counts[k] = position
        position += count
    for v in range(keys.size):
        k = keys[v]
        if k > 0:
            order[counts[k]] = v
            counts[k] += 1
    return position


@numba.njit(cache=True, nogil=True)
def _level_order(values, top, dh, steps, H, order, heights, keys, counts):
    """Stepped TFCE: the voxels with at least one threshold, highest level first (a counting sort).

    A voxel's level is the number of thresholds ``k step`` (k = 1..n_levels; with the automatic step the last one
    is ``top`` itself, as ``numpy.linspace(0, top, n_levels + 1)[1:]``) at or below its value: ``floor(value /
    step)`` corrected by direct comparison with the thresholds, so that rounding never moves a voxel sitting on a
    threshold. Writes ``heights[i] = sum_{k <= level} k^H`` of ``order[i]``; returns the number of voxels ordered and
    ``step^(H+1)``, the factor from these sums to TFCE.
    """
    if dh > 0.0:
        step = dh
        n_levels = int(math.floor(top / step)) + 1
    else:
        step = top / steps
        n_levels = steps
    thresholds = step * np.arange(1, n_levels + 2).astype(np.float64)
    if dh <= 0.0:
        thresholds[n_levels - 1] = top
    for v in range(values.size):
        value = values[v]
        level = int(math.floor(min(max(value / step, 0.0), float(n_levels))))
        if level < n_levels and value >= thresholds[level]:
            level += 1
        if level > 0 and value < thresholds[level - 1]:
            level -= 1
        keys[v] = level
    n_active = _counting_order(keys, n_levels, order, counts)
    cumulative = np.zeros(n_levels + 1)
    for k in range(1, n_levels + 1):
        cumulative[k] = cumulative[k - 1] + float(k) ** H
    for i in range(n_active):
        heights[i] = cumulative[keys[order[i]]]
    return n_active, step ** (H + 1.0)


@numba.njit(cache=True, nogil=True)
def _value_order(values, top, H, order, heights, keys, counts):
    """Exact TFCE: the positive voxels by decreasing value, ``heights[i] = value^(H+1)`` of ``order[i]``.

    A counting sort into about one bucket per voxel (buckets of equal width, monotone in the value), then each
    bucket sorted on its own: linear time for the smooth maps of imaging, O(n log n) at worst. Returns the
    number of voxels ordered and ``1 / (H+1)``, the factor from these powers to TFCE.
    """
    n_buckets = 0
    for v in range(values.size):
        n_buckets += values[v] > 0.0
    for v in range(values.size):
        value = values[v]
        keys[v] = 0 if not value > 0.0 else min(int(value / top * n_buckets), n_buckets - 1) + 1
    n_active = _counting_order(keys, n_buckets, order, counts)
    start = 0
    while start < n_active:
        stop = start + 1
        while stop < n_active and keys[order[stop]] == keys[order[start]]:
            stop += 1
        if stop - start <= 16:  # insertion sort, decreasing values
            for i in range(start + 1, stop):
                voxel = order[i]
                j = i
                while j > start and values[order[j - 1]] < values[voxel]:
                    order[j] = order[j - 1]
                    j -= 1
                order[j] = voxel
        else:
            segment = order[start:stop].copy()
            ranked = np.argsort(-values[segment])
            for i in range(stop - start):
                order[start + i] = segment[ranked[i]]
        start = stop
    for i in range(n_active):
        heights[i] = values[order[i]] ** (H + 1.0)
    return n_active, 1.0 / (H + 1.0)


@numba.njit(cache=True, nogil=True, inline="always")
def _extent_power(cluster, size, extent, weighted, square_root, E):
    """extent^E of a cluster: its element count, or (area-weighted) its summed element measure."""
    amount = extent[cluster] if weighted else float(size[cluster])
    return math.sqrt(amount) if square_root else amount ** E


@numba.njit(cache=True, nogil=True)
def _merge_tree(order, heights, n_active, neighbours, adjacent, lines, E, parent, size, since, best, offset,
                want_maps, weights, extent, weighted):
    """Add the voxels in ``order`` one by one, joining each to its neighbours already present (union-find).

    ``parent[u] < 0`` marks voxels not yet added (and the index ``V`` that stands for "outside the mask").
    ``since[root]`` is the height (as in ``heights``) down to which a cluster's contribution has been counted,
    ``best[root]`` the largest TFCE among its members, ``offset`` the contributions (a member's TFCE is the sum of
    ``offset`` along its path to the root). A present neighbour adjacent to one already joined (bit set in
    ``adjacent[j]``) is in the same cluster and needs no find. With ``weighted``, ``extent[root]`` is the summed
    ``weights`` of a cluster's members and replaces the count in the extent term. Returns the largest TFCE, in
    height units.
    """
    n_neighbours = neighbours.shape[1]
    table = neighbours.reshape(-1)
    square_root = E == 0.5
    for i in range(n_active):
        if i + PREFETCH_FAR < n_active:
            far = order[i + PREFETCH_FAR]
            _prefetch(table, far * n_neighbours)
            _prefetch(table, far * n_neighbours + n_neighbours - 1)
            _prefetch(size, far)
            _prefetch(since, far)
            _prefetch(best, far)
            if want_maps:
                _prefetch(offset, far)
        if i + PREFETCH_NEAR < n_active:
            near = order[i + PREFETCH_NEAR]
            for line in lines:
                _prefetch(parent, neighbours[near, line])
        voxel = order[i]
        now = heights[i]
        present = 0  # bit j: neighbour j already added (a mask rather than a branch per neighbour)
        for j in range(n_neighbours):
            present |= np.int64(parent[neighbours[voxel, j]] >= 0) << j
        parent[voxel] = voxel
        size[voxel] = 1
        if weighted:
            extent[voxel] = weights[voxel]
        since[voxel] = now
        best[voxel] = 0.0
        if want_maps:
            offset[voxel] = 0.0
        root = voxel
        joined = 0
        while present:
            bit = present & -present
            present ^= bit
            j = _trailing_zeros(bit)
            joined |= bit
            if adjacent[j] & joined:
                continue
            other = neighbours[voxel, j]
            # the other root, halving the path (a node that skips its parent takes over the parent's offset)
            while True:
                up = parent[other]
                if up == other:
                    break
                above = parent[up]
                if above != up:
                    if want_maps:
                        offset[other] += offset[up]
                    parent[other] = above
                other = above
            if other == root:
                continue
            # both clusters contribute with their present extent down to this height, then merge
            for cluster in (root, other):
                gap = since[cluster] - now
                if gap > 0.0:
                    gain = _extent_power(cluster, size, extent, weighted, square_root, E) * gap
                    best[cluster] += gain
                    if want_maps:
                        offset[cluster] += gain
                    since[cluster] = now
            if size[other] > size[root]:
                root, other = other, root
            parent[other] = root
            size[root] += size[other]
            if weighted:
                extent[root] += extent[other]
            if best[other] > best[root]:
                best[root] = best[other]
            if want_maps:
                offset[other] -= offset[root]
    peak = 0.0
    for i in range(n_active):
        voxel = order[i]
        if parent[voxel] == voxel:  # a root: its contribution from its last height down to 0
            gain = _extent_power(voxel, size, extent, weighted, square_root, E) * since[voxel]
            best[voxel] += gain
            if want_maps:
                offset[voxel] += gain
            if best[voxel] > peak:
                peak = best[voxel]
    return peak


@numba.njit(cache=True, nogil=True)
def _enhance(maps, neighbours, adjacent, lines, E, H, dh, steps, exact, two_sided, want_maps, weights):
    """Largest |TFCE| of each map and, if ``want_maps``, the TFCE maps (see the module docstring)."""
    n_maps, n_voxels = maps.shape
    maxima = np.zeros(n_maps)
    enhanced = np.zeros((n_maps if want_maps else 0, n_voxels))
    parent = np.full(n_voxels + 1, -1, dtype=np.int32)
    size = np.empty(n_voxels, dtype=np.int32)
    since = np.empty(n_voxels)
    best = np.empty(n_voxels)
    offset = np.empty(n_voxels if want_maps else 0)
    weighted = weights.size > 0
    extent = np.empty(n_voxels if weighted else 0)
    order = np.empty(n_voxels, dtype=np.int32)
    heights = np.empty(n_voxels)
    keys = np.empty(n_voxels, dtype=np.int32)
    values = np.empty(n_voxels)
    counts = np.empty(n_voxels + 2 if exact else steps + 2, dtype=np.int64)
    for b in range(n_maps):
        for tail in range(2 if two_sided else 1):
            sign = 1.0 if tail == 0 else -1.0
            top = 0.0
            for v in range(n_voxels):
                values[v] = sign * maps[b, v]
                if values[v] > top:
                    top = values[v]
            if top <= 0.0:
                continue
            if exact:
                n_active, factor = _value_order(values, top, H, order, heights, keys, counts)
            else:
                n_levels = steps if dh <= 0.0 else int(math.floor(top / dh)) + 1
                if counts.size < n_levels + 2:
                    counts = np.empty(n_levels + 2, dtype=np.int64)
                n_active, factor = _level_order(values, top, dh, steps, H, order, heights, keys, counts)
            peak = _merge_tree(order, heights, n_active, neighbours, adjacent, lines, E, parent, size, since, best,
                               offset, want_maps, weights, extent, weighted)
            maxima[b] = max(maxima[b], peak * factor)
            if want_maps:  # a voxel's TFCE: the contributions along its path to the root
                for i in range(n_active):
                    voxel = order[i]
                    total = 0.0
                    node = voxel
                    while True:
                        total += offset[node]
                        up = parent[node]
                        if up == node:
                            break
                        node = up
                    enhanced[b, voxel] = sign * factor * total
            for i in range(n_active):
                parent[order[i]] = -1
    return maxima, enhanced


def check_tfce_step(dh: float | str | None) -> tuple[float, bool]:
    """Validate a TFCE ``dh`` (a positive number, None for max/100, or "exact"); returns (step, exact), step 0
    standing for the automatic step."""
    if dh is None:
        return 0.0, False
    if isinstance(dh, str) and dh == EXACT:
        return 0.0, True
    if isinstance(dh, numbers.Real) and not isinstance(dh, (bool, np.bool_)) and math.isfinite(dh) and dh > 0:
        return float(dh), False
    raise RunnerError(f"tfce dh must be a positive number, null (max/100) or 'exact', got {dh!r}")


def _run(maps: np.ndarray, graph: Graph, E: float, H: float, dh: float | str | None, two_sided: bool,
         steps: int, want_maps: bool, area_weighted: bool) -> tuple[np.ndarray, np.ndarray]:
    step, exact = check_tfce_step(dh)
    if step > 0 and maps.size:
        top = float(np.max(np.abs(maps)))
        if top / step > MAX_LEVELS:
            raise RunnerError(f"tfce dh={dh} gives {top / step:.3g} thresholds for a map whose maximum is "
                              f"{top:.3g}; use a larger step, or 'exact'")
    if not exact and step == 0 and steps < 1:
        raise RunnerError(f"the number of TFCE steps must be positive, got {steps}")
    if area_weighted and isinstance(graph, VoxelGraph):
        raise RunnerError("area-weighted TFCE needs a Space (its element measures), not a voxel graph")
    weights = np.asarray(graph.element_measure, dtype=np.float64) if area_weighted else np.empty(0)
    table = neighbour_table(graph)
    return _enhance(np.ascontiguousarray(maps, dtype=np.float64), table.neighbours, table.adjacent, table.lines,
                    float(E), float(H), step, int(steps), exact, bool(two_sided), want_maps, weights)


def tfce(
    stat: np.ndarray,
    graph: Graph,
    E: float = TFCE_E,
    H: float = TFCE_H,
    dh: float | str | None = None,
    two_sided: bool = True,
    steps: int = TFCE_STEPS,
    area_weighted: bool = False,
) -> np.ndarray:
    """TFCE map(s) of in-mask statistic values.

    Parameters
    ----------
    stat : ndarray, shape (V,) or (B, V)
        Statistic values in the graph's element order; non-finite values count as 0.
    graph : VoxelGraph or Space
        Voxel grid or mesh whose neighbours define clusters.
    E, H : float
        Extent and height exponents (0.5 and 2 for 3D images, 1 and 2 on surfaces).
    dh : float, None or "exact"
        Threshold step; None uses ``max / steps`` per map and tail; "exact" integrates over every height.
    two_sided : bool
        Enhance the negative tail too (returned negative); otherwise negative values are ignored.
    steps : int
        Number of thresholds when ``dh`` is None.
    area_weighted : bool
        Measure a cluster's extent as the sum of its elements' measures (vertex areas in mm2 on a mesh, as
        surface TFCE does) instead of their number. Needs a Space.

    Returns
    -------
    ndarray, same shape as ``stat``
    """
    stat = np.asarray(stat)
    maps = _check_maps(stat, graph)
    enhanced = _run(maps, graph, E, H, dh, two_sided, steps, want_maps=True, area_weighted=area_weighted)[1]
    return enhanced[0] if stat.ndim == 1 else enhanced


def tfce_maxima(
    stats: np.ndarray,
    graph: Graph,
    E: float = TFCE_E,
    H: float = TFCE_H,
    dh: float | str | None = None,
    two_sided: bool = True,
    steps: int = TFCE_STEPS,
    area_weighted: bool = False,
) -> np.ndarray:
    """Maximum |TFCE| of each map, without building the maps (the statistic of the permutation null).

    Parameters are those of :func:`tfce`; ``stats`` has shape (B, V). Returns shape (B,).
    """
    maps = _check_maps(stats, graph)
    return _run(maps, graph, E, H, dh, two_sided, steps, want_maps=False, area_weighted=area_weighted)[0]


def label_components(active: np.ndarray, graph: Graph, tail: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Connected components of the active elements of each map, numbered across all maps.

    Parameters
    ----------
    active : ndarray of bool, shape (B, V)
    graph : VoxelGraph or Space
    tail : ndarray of int8, shape (B, V), optional
        Elements are joined only to neighbours of the same tail (e.g. the sign of a two-sided statistic).

    Returns
    -------
    labels : ndarray of int64, shape (B, V)
        -1 for inactive elements, else the component index in ``0..n-1`` (components never span two maps).
    n : int
    """
    neighbours = graph.neighbours if isinstance(graph, VoxelGraph) else graph.neighbour_table().neighbours
    return label_batches(active, neighbours, tail)
