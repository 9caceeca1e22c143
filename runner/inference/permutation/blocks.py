"""Blocks of permutations: what one task computes, and how the elements are cut into tasks.

The permutation set is drawn whole from the seed before any block is cut, and every GEMM multiplies a fixed
*unit* of elements on a grid that starts at element 1 (the identity gives the observed statistic): a block is a
whole number of units. So the arithmetic of every element -- and therefore the results, bit for bit -- does not
depend on the block size or on the number or kind of workers; blocks only decide how work is scheduled.
Maxima are concatenated and exceedance counts added (integers), both exactly.

Max-T alone never needs whole maps: a block loops over voxel chunks (:func:`~.scores.chunk_null_maxima`), so the
data never have to be residualised or held in float64 as a whole. Clusters and TFCE need whole maps: those blocks
read the residualised data (n x V, float64) and process one unit of whole maps at a time, the unit sized by the
memory budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runner.chunks import read_block, release_pages
from runner.inference.permutation import mixed_effects
from runner.inference.permutation.mixed_effects import MixedEffectsKernel
from runner.inference.permutation.model import PermutationModel, residualise
from runner.inference.permutation.pvalues import tie_reference
from runner.inference.permutation.scores import (
    PERMUTATION_BLOCK,
    chunk_null_maxima,
    scores_from_projections,
    scores_to_statistics,
    shuffled_basis,
)
from runner.inference.permutation.spatial import CLUSTER_METHODS, cluster_maxima, on_mesh
from runner.inference.permutation.variance_groups import VOXEL_CHUNK as KERNEL_VOXEL_CHUNK
from runner.inference.permutation.variance_groups import VarianceGroupKernel, shuffled_statistics
from runner.inference.permutation.variance_groups import chunk_null_maxima as kernel_null_maxima
from runner.inference.permutation_sets import PermutationSet
from runner.inference.tfce import VoxelGraph, tfce_maxima

VOXEL_CHUNK = 4096  # voxels per chunk in the max-T loop
MAX_BLOCK = 1024  # permutations per task at most by default (more only when one unit is larger)
TASKS_PER_WORKER = 4  # default blocks: about this many tasks per worker, for load balance and progress


@dataclass(frozen=True)
class BlockWork:
    """Everything the tasks of one permutation test read (shared once with every worker, never modified).

    ``data`` is the raw data for max-T blocks and the residualised float64 data (excluded voxels zeroed) for
    spatial blocks. ``unit`` is the number of elements per GEMM. ``kernel`` is the statistic kernel: None for the
    pooled-variance t/F scores of :mod:`.scores`, a :class:`~.variance_groups.VarianceGroupKernel` for v/G.
    """

    data: np.ndarray
    model: PermutationModel
    permutations: PermutationSet
    observed: np.ndarray
    mode: str
    regression: str
    two_sided: bool
    unit: int
    methods: tuple[str, ...] = ("maxt",)
    graph: VoxelGraph | None = None
    threshold: float | None = None
    tfce_E: float = 0.5
    tfce_H: float = 2.0
    tfce_dh: float | str | None = None
    sum_squares: np.ndarray | None = None
    kernel: VarianceGroupKernel | MixedEffectsKernel | None = None


def spatial_unit(n_elements: int, n_voxels: int, rank: int, budget_bytes: int) -> int:
    """Elements per GEMM for whole maps: as many as the budget holds (projections, scores, maps and labelling
    take about ``8 V (rank + 4) + 40 V`` bytes per element), at least one."""
    per_element = 8 * n_voxels * (rank + 4) + 40 * n_voxels
    return max(1, min(n_elements - 1, budget_bytes // per_element))


def default_block_size(n_elements: int, unit: int, n_workers: int) -> int:
    """About TASKS_PER_WORKER tasks per worker, at least one unit, at most max(unit, MAX_BLOCK) elements."""
    wanted = math.ceil((n_elements - 1) / max(1, TASKS_PER_WORKER * n_workers))
    return max(unit, min(max(unit, MAX_BLOCK), wanted))


def block_bounds(n_elements: int, unit: int, block_size: int) -> list[tuple[int, int]]:
    """Element ranges ``[first, last)`` of the tasks, from element 1, each a whole number of units (``block_size``
    rounded up; the last block may be shorter)."""
    size = unit * max(1, math.ceil(int(block_size) / unit))
    return [(first, min(n_elements, first + size)) for first in range(1, n_elements, size)]


def maxt_voxel_chunk(n_voxels: int, kernel: object = None) -> int:
    """Voxels per chunk of the max-T loop: every task cuts the voxels on this one grid, so that each chunk's
    arithmetic (and so every bit of the result) is the same however the voxels are spread over tasks."""
    return max(256, min(VOXEL_CHUNK if kernel is None else KERNEL_VOXEL_CHUNK, n_voxels))


def voxel_groups(n_voxels: int, chunk: int, n_groups: int) -> list[tuple[int, int]]:
    """``n_groups`` (at most one per chunk) contiguous voxel ranges on the chunk grid, as even as the grid allows."""
    n_chunks = max(1, math.ceil(n_voxels / chunk))
    n_groups = max(1, min(int(n_groups), n_chunks))
    edges = [round(g * n_chunks / n_groups) * chunk for g in range(n_groups + 1)]
    return [(edges[g], min(n_voxels, edges[g + 1])) for g in range(n_groups)]


def maxt_tasks(n_elements: int, block_size: int, n_voxels: int, chunk: int,
               wanted: int) -> list[tuple[int, int, int, int, int]]:
    """Max-T tasks ``(first, last, v0, v1, weight)``: permutation blocks, each cut into voxel ranges when there are
    fewer blocks than ``wanted`` tasks (1,000 permutations make 4 blocks; 16 workers want more tasks). Maxima are
    combined with ``max`` and counts added, both exactly, so the split never changes a bit of the result. Weights
    are the block's permutations shared out over its ranges (integers, for progress)."""
    blocks = block_bounds(n_elements, PERMUTATION_BLOCK, block_size)
    groups = voxel_groups(n_voxels, chunk, math.ceil(wanted / max(1, len(blocks))))
    tasks = []
    for first, last in blocks:
        shares = np.diff(np.round(np.linspace(0, last - first, len(groups) + 1)).astype(int))
        tasks.extend((first, last, v0, v1, int(w)) for (v0, v1), w in zip(groups, shares))
    return tasks


def merge_voxel_ranges(results: list[dict[str, np.ndarray]], n_voxels: int) -> list[dict[str, np.ndarray]]:
    """One result per permutation block from the results of its voxel ranges (consecutive, in task order): maxima
    combined by ``max``, counts placed at their voxels (exact, whatever the ranges)."""
    merged: list[dict[str, np.ndarray]] = []
    for result in results:
        v0, v1 = (int(v) for v in result["voxels"])
        if v0 == 0:
            merged.append({"maxt": result["maxt"].copy(), "exceedances": np.zeros(n_voxels, dtype=np.int64)})
        else:
            np.maximum(merged[-1]["maxt"], result["maxt"], out=merged[-1]["maxt"])
        merged[-1]["exceedances"][v0:v1] += result["exceedances"]
    return merged


def maxt_block(work: BlockWork, first: int, last: int, v_start: int = 0,
               v_stop: int | None = None) -> dict[str, np.ndarray]:
    """Max-T null maxima of elements ``first..last-1`` over voxels ``v_start..v_stop-1`` and those voxels' exceedance
    counts, chunk by chunk of the :func:`maxt_voxel_chunk` grid."""
    n_voxels = work.data.shape[1]
    v_stop = n_voxels if v_stop is None else v_stop
    voxel_chunk = maxt_voxel_chunk(n_voxels, work.kernel)
    maxima = np.full(last - first, -np.inf)
    exceedances = np.zeros(v_stop - v_start, dtype=np.int64)
    workspace: dict[str, np.ndarray] = {}
    for v0 in range(v_start, v_stop, voxel_chunk):
        v1 = min(v_stop, v0 + voxel_chunk)
        data = read_block(work.data, slice(None), slice(v0, v1))  # a store: only this chunk's bytes
        if isinstance(work.kernel, MixedEffectsKernel):
            shuffled, _ = residualise(data, work.model, work.regression)
            chunk_max, chunk_exceed = mixed_effects.chunk_null_maxima(
                work.kernel, shuffled, slice(v0, v1), work.permutations, work.observed[v0:v1], work.two_sided,
                first, last, block=PERMUTATION_BLOCK,
            )
        elif work.kernel is not None:
            chunk_max, chunk_exceed = kernel_null_maxima(
                work.kernel, data, work.model, work.permutations, work.observed[v0:v1],
                work.regression, work.two_sided, first, last, block=PERMUTATION_BLOCK,
            )
        else:
            chunk_max, chunk_exceed = chunk_null_maxima(
                data, work.model, work.permutations, work.observed[v0:v1],
                work.regression, work.two_sided, first, last, block=PERMUTATION_BLOCK, workspace=workspace,
            )
        np.maximum(maxima, chunk_max, out=maxima)
        exceedances[v0 - v_start : v1 - v_start] += chunk_exceed
        release_pages(work.data)  # a memory-mapped store: hold one chunk's pages at a time
    return {"maxt": maxima, "exceedances": exceedances, "voxels": np.array([v_start, v_stop])}


def spatial_block(work: BlockWork, first: int, last: int) -> dict[str, np.ndarray]:
    """Max-T, cluster and TFCE maxima of elements ``first..last-1`` (whole maps, one unit at a time)."""
    parts = [_spatial_unit(work, start, min(last, start + work.unit)) for start in range(first, last, work.unit)]
    out = {key: np.concatenate([part[key] for part in parts]) for key in parts[0] if key != "exceedances"}
    out["exceedances"] = sum((part["exceedances"] for part in parts[1:]), parts[0]["exceedances"])
    return out


def _spatial_unit(work: BlockWork, first: int, last: int) -> dict[str, np.ndarray]:
    """Whole statistic maps for elements first..last-1 (one GEMM), then their max-T, cluster and TFCE maxima."""
    model = work.model
    orders, signs = work.permutations.rows(first, last)
    if isinstance(work.kernel, MixedEffectsKernel):
        return _kernel_maps(work, orders, signs)
    if work.kernel is not None:
        return _kernel_maps(work, orders, signs)
    rows = shuffled_basis(model.moving, orders, signs)
    projections = (rows @ work.data).reshape(last - first, model.n_shuffled, -1)
    map_mode = "F" if model.stat_type == "F" else "signed"
    scores = scores_from_projections(projections, work.sum_squares, model.n_effects, map_mode)
    del projections
    test = np.abs(scores) if work.mode == "abs" else scores
    out: dict[str, np.ndarray] = {
        "maxt": np.fmax.reduce(test, axis=1, initial=-np.inf),
        "exceedances": np.count_nonzero(test >= tie_reference(work.observed), axis=0),
    }
    del test
    stat_maps = scores_to_statistics(scores, model, map_mode)
    del scores
    if any(m in CLUSTER_METHODS for m in work.methods):
        out["clustersize"], out["clustermass"] = cluster_maxima(stat_maps, work.threshold, work.graph,
                                                                work.two_sided)
    if "tfce" in work.methods:
        out["tfce"] = tfce_maxima(stat_maps, work.graph, work.tfce_E, work.tfce_H, work.tfce_dh, work.two_sided,
                                  area_weighted=on_mesh(work.graph))
    return out


def _kernel_maps(work: BlockWork, orders: np.ndarray, signs: np.ndarray) -> dict[str, np.ndarray]:
    """Whole v / G maps of one unit of elements, then their max-T, cluster and TFCE maxima (``work.sum_squares``
    holds the squared residualised data here)."""
    if isinstance(work.kernel, MixedEffectsKernel):
        stat_maps = mixed_effects.flipped_statistics(work.kernel, work.data, slice(None), signs)
    else:
        stat_maps, _ = shuffled_statistics(work.kernel, work.data, work.sum_squares, orders, signs, with_dof=False)
    test = np.abs(stat_maps) if work.mode == "abs" else stat_maps
    out: dict[str, np.ndarray] = {
        "maxt": np.fmax.reduce(test, axis=1, initial=-np.inf),
        "exceedances": np.count_nonzero(test >= tie_reference(work.observed), axis=0),
    }
    del test
    stat_maps = np.where(np.isnan(stat_maps), 0.0, stat_maps)
    if any(m in CLUSTER_METHODS for m in work.methods):
        out["clustersize"], out["clustermass"] = cluster_maxima(stat_maps, work.threshold, work.graph,
                                                                work.two_sided)
    if "tfce" in work.methods:
        # mixed effects on a mesh: area-weighted as the t maps (variance groups keep their unweighted TFCE)
        out["tfce"] = tfce_maxima(stat_maps, work.graph, work.tfce_E, work.tfce_H, work.tfce_dh, work.two_sided,
                                  area_weighted=isinstance(work.kernel, MixedEffectsKernel) and on_mesh(work.graph))
    return out
