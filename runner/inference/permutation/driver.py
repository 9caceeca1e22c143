"""``permutation_inference``: validate, draw the permutation set, run blocks of permutations on an executor, gather.

The steps follow PALM: partition the model (:mod:`.model`), draw the permutation set
(:mod:`runner.inference.permutation_sets`), compute the observed statistic and the null maxima block by block
(:mod:`.scores`, :mod:`.spatial`, :mod:`.blocks`), then p-values (:mod:`.pvalues`). Blocks are tasks of a
:class:`runner.execution.Executor` (local threads unless one is given); their results are gathered in block order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from runner.chunks import read_block, release_pages
from runner.errors import RunnerError, did_you_mean
from runner.execution import Executor, LocalExecutor, ProgressReporter, Task, resolve_workers
from runner.inference.permutation.blocks import (
    TASKS_PER_WORKER,
    BlockWork,
    block_bounds,
    default_block_size,
    maxt_block,
    maxt_tasks,
    maxt_voxel_chunk,
    merge_voxel_ranges,
    spatial_block,
    spatial_unit,
)
from runner.inference.permutation import mixed_effects
from runner.inference.permutation.model import partition_model, residualise, separate_invariant_nuisance
from runner.inference.permutation.options import (
    DEFAULT_MEMORY_BUDGET,
    METHODS,
    REGRESSION_METHODS,
    SPATIAL_METHODS,
    PermutationOptions,
    PermutationResult,
)
from runner.inference.permutation.pvalues import fwe_p_values, uncorrected_p_values
from runner.inference.permutation.scores import (
    PERMUTATION_BLOCK,
    moving_sum_squares,
    observed_scores,
    score_mode,
    scores_to_statistics,
)
from runner.inference.permutation.variance_groups import (
    make_kernel,
    observed_statistics,
    variance_group_scheme,
)
from runner.inference.permutation.spatial import (
    CLUSTER_METHODS,
    cluster_forming_threshold,
    observed_clusters,
    observed_tfce,
)
from runner.inference.permutation_sets import (
    SCHEMES,
    check_blocks,
    choose_scheme,
    invariant_subspace,
    make_permutation_set,
)
from runner.inference.tfce import EXACT, check_tfce_step, voxel_graph
from runner.space.mesh import MeshSpace


def _validate(
    data: np.ndarray, design: np.ndarray, mask: np.ndarray | None, methods: Sequence[str], options: PermutationOptions
) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(dict.fromkeys(str(m).lower() for m in methods))
    if not methods:
        raise RunnerError(f"no permutation method requested; choose among {', '.join(METHODS)}")
    for name in methods:
        if name not in METHODS:
            raise RunnerError(f"unknown permutation method {name!r}: {did_you_mean(name, METHODS)}")
    if options.method not in REGRESSION_METHODS:
        raise RunnerError(f"unknown permutation regression method {options.method!r}: "
                          f"{did_you_mean(options.method, REGRESSION_METHODS)}")
    if options.scheme not in SCHEMES:
        raise RunnerError(f"unknown permutation scheme {options.scheme!r}: {did_you_mean(options.scheme, SCHEMES)}")
    if data.ndim != 2:
        raise RunnerError(f"the data must be a 2D array (maps x voxels), got shape {data.shape}")
    if data.shape[0] != design.shape[0]:
        raise RunnerError(f"the data have {data.shape[0]} maps but the design matrix has {design.shape[0]} rows")
    if data.shape[1] == 0:
        raise RunnerError("the data have no voxels")
    if options.tfce_E <= 0 or options.tfce_H <= 0:
        raise RunnerError(f"tfce_E and tfce_H must be positive, got {options.tfce_E} and {options.tfce_H}")
    check_tfce_step(options.tfce_dh)
    if any(m in SPATIAL_METHODS for m in methods):
        if mask is None:
            spatial = ", ".join(m for m in methods if m in SPATIAL_METHODS)
            raise RunnerError(f"permutation methods {spatial} need the 3D mask")
        n_mask = mask.n_elements if isinstance(mask, MeshSpace) else int(np.count_nonzero(mask))
        if n_mask != data.shape[1]:
            raise RunnerError(f"the mask has {n_mask} elements but the data have {data.shape[1]}")
    return methods


def _all_finite(Y: np.ndarray, chunk: int = 4096) -> bool:
    """No NaN or infinity in ``Y``, checked voxel chunk by chunk (a memory-mapped store stays on disk)."""
    for v0 in range(0, Y.shape[1], chunk):
        if not np.isfinite(read_block(Y, slice(None), slice(v0, v0 + chunk))).all():
            return False
        release_pages(Y)
    return True


def permutation_inference(
    Y: np.ndarray,
    X: np.ndarray,
    contrast: np.ndarray,
    mask: np.ndarray | None,
    methods: Sequence[str] = ("maxt",),
    options: PermutationOptions | None = None,
    executor: Executor | None = None,
) -> PermutationResult:
    """Permutation test of one contrast with FWE-corrected p-values for the requested methods.

    Parameters
    ----------
    Y : ndarray, shape (n, V)
        In-mask data, one row per map (float64, float32 or a memmap).
    X : ndarray, shape (n, p)
        Design matrix.
    contrast : ndarray, shape (q, p) or (p,)
        t contrast when q == 1, F contrast otherwise.
    mask : ndarray of bool, shape (X, Y, Z), a MeshSpace, or None
        Needed for cluster and TFCE methods; voxel order is ``np.flatnonzero(mask)``. On a MeshSpace, clusters
        follow the triangles' edges, cluster size is their area (mm2) and TFCE is area-weighted.
    methods : sequence of {"maxt", "clustersize", "clustermass", "tfce"}
    options : PermutationOptions
    executor : Executor, optional
        Runs the blocks of permutations (default: ``options.n_jobs`` local threads). The results do not depend on
        it, nor on its number of workers, nor on ``options.block_size``.

    Returns
    -------
    PermutationResult
    """
    options = options or PermutationOptions()
    if not hasattr(Y, "ndim"):
        Y = np.asarray(Y)
    design = np.asarray(X, dtype=np.float64)
    if design.ndim == 1:
        design = design[:, None]
    methods = _validate(Y, design, mask, methods, options)
    if not _all_finite(Y):
        raise RunnerError("the data contain NaN or infinite values inside the mask")
    if options.block_size is not None and int(options.block_size) < 1:
        raise RunnerError(f"block_size must be a positive number of permutations, got {options.block_size}")
    executor = executor or LocalExecutor(resolve_workers(options.n_jobs))
    model = partition_model(design, contrast)
    blocks = check_blocks(
        None if options.exchangeability_blocks is None else np.asarray(options.exchangeability_blocks),
        design.shape[0], options.whole_block,
    )
    scheme, scheme_reason = _choose_scheme(options, model, blocks)
    permutations = make_permutation_set(
        design, options.n_permutations, options.seed, scheme, blocks, options.whole_block
    )
    if scheme == "permutation":
        model = separate_invariant_nuisance(model, invariant_subspace(blocks, design.shape[0], options.whole_block))
    # the statistic kernel: pooled-variance t/F scores (.scores), with variance groups v/G (.variance_groups), or
    # the mixed-effects z (.mixed_effects)
    kernel = None if options.variance_groups is None else make_kernel(model, np.asarray(options.variance_groups))
    mixed = options.mixed_effects
    if mixed is not None:
        kernel = mixed_effects.make_kernel(design, np.atleast_2d(contrast), mixed.variances,
                                           estimator=mixed.estimator, knapp_hartung=mixed.knapp_hartung,
                                           dof=mixed.dof, weights=mixed.weights)
    statistic = model.stat_type if kernel is None else kernel.statistic
    two_sided = bool(options.two_sided) and model.stat_type == "t"
    mode = score_mode(model, two_sided) if mixed is None else ("abs" if two_sided else "signed")
    budget = int(options.memory_budget_bytes or DEFAULT_MEMORY_BUDGET)
    n_elements, (n_rows, n_voxels) = permutations.size, Y.shape
    rank = model.basis.shape[1]

    messages = [permutations.describe(), f"scheme: {scheme.replace('_', '-')} ({scheme_reason})"]
    if permutations.size < 20:
        messages.append(f"only {permutations.size} elements: the smallest attainable p-value is 1/{permutations.size}")
    messages.append(
        f"{model.stat_type} test, {model.dof} degrees of freedom, {options.method.replace('_', '-')} regression"
        + (", two-sided" if two_sided else ", one-sided" if model.stat_type == "t" else "")
    )
    if mixed is not None:
        messages.append(
            f"statistic z of the mixed-effects {model.stat_type} ({mixed.estimator.upper()} tau2, "
            + ("Knapp-Hartung" if mixed.knapp_hartung else "model-based") + f" variance, {mixed.dof} dof); "
            + ("weights of the unpermuted fit held at every flip" if mixed.weights == "fixed"
               else "tau2 and the weights re-estimated at every flip"))
    elif kernel is not None:
        messages.append(
            f"statistic {statistic} (Winkler et al. 2014) with {kernel.n_groups} variance groups of "
            f"{', '.join(str(int(n)) for n in kernel.sizes)} rows; degrees of freedom per voxel "
            + ("(Welch-Satterthwaite)" if statistic == "v" else "(Welch's approximate F)")
            + "; cluster-forming threshold on the statistic at the ordinary "
            + f"{model.stat_type} quantile"
        )

    spatial = [m for m in methods if m in SPATIAL_METHODS]
    # a mesh is its own graph (edges of its triangles; TFCE and cluster size weighted by vertex area)
    graph = (mask if isinstance(mask, MeshSpace) else voxel_graph(mask, options.connectivity)) if spatial else None
    neighbourhood = "mesh edges" if isinstance(mask, MeshSpace) else f"connectivity {options.connectivity}"
    threshold = None
    if any(m in CLUSTER_METHODS for m in methods):
        threshold = cluster_forming_threshold(options.cluster_forming_p, model, two_sided, on_z=mixed is not None)
        forming_stat = "z" if mixed is not None else model.stat_type
        messages.append(
            f"cluster-forming threshold {forming_stat} > {threshold:.4g} (p < {options.cluster_forming_p}"
            f"{', two-sided' if two_sided else ''}), {neighbourhood}"
        )

    # observed statistics, chunk by chunk over voxels; two-sided t tests compare |t|
    map_mode = "F" if model.stat_type == "F" else "signed"
    signed = np.empty(n_voxels)
    dof_map = None if (kernel is None or mixed is not None) else np.empty(n_voxels)
    chunk = max(1, min(n_voxels, budget // (8 * (3 * n_rows + 4 * rank + 8))))
    if mixed is not None:  # tau2 of the unflipped data (the maps' tau2) fixes the weights, chunk by chunk below
        kernel = dataclasses.replace(kernel, tau2=np.empty(n_voxels))
        chunk = max(1, min(n_voxels, budget // (8 * 16 * n_rows)))
    elif kernel is not None:
        chunk = max(1, min(n_voxels, budget // (8 * (2 * n_rows + kernel.working_rows))))
    for v0 in range(0, n_voxels, chunk):
        data = read_block(Y, slice(None), slice(v0, v0 + chunk))  # a store: only this chunk's bytes
        if mixed is not None:
            voxels = slice(v0, v0 + chunk)
            kernel.tau2[voxels] = mixed_effects.fit_tau2(kernel, data, voxels)
            _, observed_data = residualise(data, model, options.method)
            signed[voxels] = mixed_effects.observed_statistics(kernel, observed_data, voxels)
            release_pages(Y)
            continue
        if kernel is not None:
            signed[v0 : v0 + chunk], dof_map[v0 : v0 + chunk] = observed_statistics(kernel, data, model,
                                                                                   options.method)
            continue
        _, observed_data = residualise(data, model, options.method)
        signed[v0 : v0 + chunk] = observed_scores(observed_data, model, map_mode)
        release_pages(Y)
    observed = np.abs(signed) if mode == "abs" else signed
    stat = signed.copy() if kernel is not None else scores_to_statistics(signed, model, map_mode)
    excluded = np.isnan(observed)
    if excluded.all():
        raise RunnerError("every voxel has zero residual variance; nothing to test")
    if excluded.any():
        messages.append(f"{int(excluded.sum())} voxel(s) with zero residual variance get no statistic (NaN, p = 1)")

    # the null, in blocks of permutations run by the executor
    common = dict(model=model, permutations=permutations, observed=observed, mode=mode, regression=options.method,
                  two_sided=two_sided, kernel=kernel)
    if spatial:
        shuffled, _ = residualise(Y, model, options.method)
        if excluded.any():
            shuffled = shuffled.copy() if shuffled is Y else shuffled
            shuffled[:, excluded] = 0.0
        unit = spatial_unit(n_elements, n_voxels, rank if kernel is None else kernel.working_rows, budget)
        # the t/F kernel reads the moving sum of squares, the v/G kernel the squared data
        sum_squares = (moving_sum_squares(shuffled, model) if kernel is None
                       else None if mixed is not None else shuffled * shuffled)
        work = BlockWork(data=shuffled, unit=unit, methods=methods, graph=graph, threshold=threshold,
                         tfce_E=options.tfce_E, tfce_H=options.tfce_H, tfce_dh=options.tfce_dh,
                         sum_squares=sum_squares, **common)
    else:
        unit = PERMUTATION_BLOCK
        work = BlockWork(data=Y, unit=unit, **common)
    block_size = options.block_size or default_block_size(n_elements, unit, executor.n_workers)
    shared = executor.share(work)
    if spatial:
        tasks = [Task(spatial_block, (shared, first, last), weight=last - first)
                 for first, last in block_bounds(n_elements, unit, block_size)]
    else:  # few permutation blocks are cut into voxel ranges too, so that every worker has tasks
        chunk = maxt_voxel_chunk(n_voxels, kernel)
        tasks = [Task(maxt_block, (shared, first, last, v0, v1), weight=weight) for first, last, v0, v1, weight
                 in maxt_tasks(n_elements, block_size, n_voxels, chunk, TASKS_PER_WORKER * executor.n_workers)]
    with ProgressReporter(options.progress, n_elements, "permutations", "perm") as reporter:
        reporter.advance(1)  # the identity
        results = list(executor.map(tasks, reporter.advance))
    if not spatial:
        results = merge_voxel_ranges(results, n_voxels)

    def gather(key: str) -> np.ndarray:
        return np.concatenate([r[key] for r in results]) if results else np.zeros(0)

    exceedances = sum((r["exceedances"] for r in results), np.zeros(n_voxels, dtype=np.int64))
    uncorrected = uncorrected_p_values(exceedances, n_elements, excluded)
    stat = np.where(excluded, np.nan, stat)

    corrected: dict[str, np.ndarray] = {}
    null_max: dict[str, np.ndarray] = {}
    clusters: dict[str, pd.DataFrame] = {}
    measures: dict[str, np.ndarray] = {}
    if "maxt" in methods:
        null_scores = np.concatenate([[np.nanmax(observed)], gather("maxt")])
        corrected["maxt"] = fwe_p_values(observed, null_scores)
        null_max["maxt"] = null_scores if kernel is not None else scores_to_statistics(null_scores, model, mode)
        measures["maxt"] = observed if kernel is not None else scores_to_statistics(observed, model, mode)

    tfce_map = None
    stat_for_maps = np.where(excluded, 0.0, stat)
    if "tfce" in methods:
        tfce_map, null_max["tfce"], corrected["tfce"] = observed_tfce(
            stat_for_maps, gather("tfce"), graph, options.tfce_E, options.tfce_H, options.tfce_dh, two_sided
        )
        measures["tfce"] = np.abs(tfce_map)
    if threshold is not None:
        tails = {name: gather(name) for name in CLUSTER_METHODS if name in methods}
        cluster_p, cluster_null, clusters, cluster_measures = observed_clusters(stat_for_maps, threshold, graph,
                                                                               two_sided, tails)
        measures.update(cluster_measures)
        corrected.update(cluster_p)
        null_max.update(cluster_null)
    if "tfce" in methods:
        step = ("max/100 per map and tail" if options.tfce_dh is None
                else "exact integral" if options.tfce_dh == EXACT else f"dh = {options.tfce_dh}")
        messages.append(f"TFCE E = {options.tfce_E}, H = {options.tfce_H}, {step}, {neighbourhood}")

    corrected = {m: corrected[m] for m in methods}
    return PermutationResult(
        stat=stat,
        stat_type=model.stat_type,
        dof=model.dof,
        n_permutations_done=n_elements,
        exhaustive=permutations.exhaustive,
        scheme=permutations.scheme,
        method=options.method,
        two_sided=two_sided,
        uncorrected_p=uncorrected,
        corrected_p=corrected,
        logp={m: -np.log10(p) for m, p in corrected.items()},
        null_max={m: null_max[m] for m in methods},
        clusters=clusters,
        tfce=tfce_map,
        cluster_forming_threshold=threshold,
        permutations=permutations,
        messages=messages,
        statistic=statistic,
        dof_map=None if dof_map is None else np.where(excluded, np.nan, dof_map),
        scheme_reason=scheme_reason,
        observed_measure={m: measures[m] for m in methods},
    )


def planned_scheme(X: np.ndarray, contrast: np.ndarray, options: PermutationOptions) -> tuple[str, str]:
    """The scheme :func:`permutation_inference` would run for this contrast, and why (no data read)."""
    design = np.asarray(X, dtype=np.float64)
    design = design[:, None] if design.ndim == 1 else design
    blocks = check_blocks(
        None if options.exchangeability_blocks is None else np.asarray(options.exchangeability_blocks),
        design.shape[0], options.whole_block,
    )
    return _choose_scheme(options, partition_model(design, contrast), blocks)


def _choose_scheme(options: PermutationOptions, model, blocks: np.ndarray | None) -> tuple[str, str]:
    """The scheme to run and why: variance groups decide it (:func:`~.variance_groups.variance_group_scheme`),
    else ``auto`` sign-flips when permuting rows cannot move the effect and permutes otherwise."""
    if options.mixed_effects is not None:
        return mixed_effects.check_scheme(options.scheme)
    if options.variance_groups is not None:
        return variance_group_scheme(options.scheme, np.asarray(options.variance_groups), blocks)
    if options.scheme != "auto":
        return options.scheme, "requested"
    scheme = choose_scheme(model.basis[:, : model.n_effects], blocks, options.whole_block)
    if scheme == "sign_flip":
        return scheme, "auto: permuting rows cannot move the effect (e.g. a one-sample test), so signs are flipped"
    return scheme, "auto: rows are exchangeable under the null, so they are permuted"
