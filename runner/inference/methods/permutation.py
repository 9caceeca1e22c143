"""Permutation family-wise error (randomise / PALM style): max-T, cluster size, cluster mass and TFCE.

The four methods share one pass over the same permutations when their permutation settings agree; each then gets
its -log10 FWE p map, its thresholded statistic map, its null distribution of the maximum and its cluster table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

from runner.checks import check, in_open_unit, non_negative, one_of, positive, tfce_step
from runner.errors import RunnerError, did_you_mean
from runner.inference.registry import ContrastInputs, InferenceMethod, register
from runner.space.defaults import TFCE_E_SURFACE, TFCE_H_SURFACE
from runner.results import (BatchResult, MapOutput, MapViews, MethodResult, NullFigure, TableOutput,
                            format_number, table_peak)

log = logging.getLogger("runner.inference")

FEW_PERMUTATIONS = 1000  # fewer makes p-values coarse: the smallest attainable p is 1 / n_permutations
MIXED_EFFECTS_WEIGHTS = "fixed"  # model=mfx: weights of the unpermuted fit held at every flip (measured in benchmarks/)


@dataclass
class PermutationCorrection:
    """Permutation / sign-flip FWE inference (randomise/PALM style)."""

    alpha: float = field(default=0.05, metadata=check(in_open_unit))
    n_permutations: int = field(default=10000, metadata=check(positive))
    seed: Optional[int] = field(default=None, metadata=check(non_negative))  # default: the run's seed
    two_sided: bool = True
    method: str = field(default="freedman_lane", metadata=check(one_of("freedman_lane", "ter_braak", "manly")))
    exchangeability_blocks: Optional[str] = None  # table column
    whole_block: bool = False
    n_jobs: Optional[int] = None  # default: the run's n_jobs
    # table column of variance groups, or "auto" (the categorical columns the contrast tests): v / G statistic
    # and sign-flips (Winkler et al. 2014; see runner.inference.permutation.variance_groups)
    variance_groups: Optional[str] = None
    # "tail": a generalised Pareto tail fitted to the null of the maximum (threshold by Anderson-Darling, as PALM),
    # "gamma": a Pearson III with the null's moments; p below 1 / n_permutations (Winkler et al. 2016; see
    # runner.inference.permutation.acceleration)
    accel: str = field(default="none", metadata=check(one_of("none", "tail", "gamma")))
    # FWE over every contrast of the run: the maximum over contrasts, the contrasts permuted together (PALM -corrcon)
    across_contrasts: bool = False


@dataclass
class MaxTCorrection(PermutationCorrection):
    pass


@dataclass
class ClusterCorrection(PermutationCorrection):
    cluster_forming_p: float = field(default=0.001, metadata=check(in_open_unit))
    connectivity: int = field(default=26, metadata=check(one_of(6, 18, 26)))


@dataclass
class ClusterSizeCorrection(ClusterCorrection):
    pass


@dataclass
class ClusterMassCorrection(ClusterCorrection):
    pass


@dataclass
class TfceCorrection(PermutationCorrection):
    E: float = field(default=0.5, metadata=check(positive))
    H: float = field(default=2.0, metadata=check(positive))
    # threshold step: a positive number, None for max/100 per map, or "exact" for the continuous integral (Any so
    # that Hydra keeps a number a number and "exact" a string; checked by tfce_step)
    dh: Any = field(default=None, metadata=check(tfce_step))
    connectivity: int = field(default=26, metadata=check(one_of(6, 18, 26)))


# what the critical value of each method measures, for the report
MEASURES = {"maxt": ("", ""), "npc": ("", ""), "clustersize": ("cluster size", " voxels"),
            "clustermass": ("cluster mass", ""),
            "tfce": ("TFCE", "")}
MESH_UNITS = {"clustersize": " mm2"}  # on a mesh, cluster size is the cluster's area


def _engine_settings(params: Any, inputs: ContrastInputs) -> tuple[dict[str, Any], dict[str, Any]]:
    """Engine settings of one method's config: (shared by a pass over the permutations, specific to the method)."""
    from runner.outputs.progress import progress_enabled

    settings, design = inputs.settings, inputs.design
    blocks = None
    if params.exchangeability_blocks:
        column = params.exchangeability_blocks
        if column not in design.table.columns:
            raise RunnerError(f"exchangeability_blocks names column {column!r}, which is not in the table; "
                              f"{did_you_mean(column, design.table.columns)}")
        blocks = tuple(int(b) for b in pd.factorize(design.table[column].astype(str))[0] + 1)
    budget = int(settings.memory_budget_gb * 1024**3 / 4) if settings.memory_budget_gb else None
    groups = None
    if getattr(params, "variance_groups", None):
        from runner.inference.methods.variance_groups import resolve_variance_groups

        groups = resolve_variance_groups(params.variance_groups, inputs)
    shared = dict(n_permutations=params.n_permutations, seed=settings.seed if params.seed is None else params.seed,
                  two_sided=params.two_sided, method=params.method, exchangeability_blocks=blocks,
                  whole_block=params.whole_block, n_jobs=params.n_jobs or settings.n_jobs,
                  progress=progress_enabled(settings.progress), memory_budget_bytes=budget)
    if groups is not None:
        shared["variance_groups"] = groups
    specific: dict[str, Any] = {}
    for key in ("cluster_forming_p", "connectivity"):
        if hasattr(params, key):
            specific[key] = getattr(params, key)
    if hasattr(params, "E"):
        specific.update(tfce_E=params.E, tfce_H=params.H, tfce_dh=params.dh)
    return shared, specific


def passes(params_by_method: dict[str, Any], inputs: ContrastInputs) -> list[tuple[Any, list[str]]]:
    """Methods sharing the same permutation settings run in one pass over the same permutations."""
    from runner.inference.permutation import PermutationOptions

    grouped: dict[tuple, tuple[dict[str, Any], dict[str, Any], list[str]]] = {}
    for method, params in params_by_method.items():
        shared, specific = _engine_settings(params, inputs)
        key = tuple(sorted(shared.items()))
        _, merged, names = grouped.setdefault(key, (shared, {}, []))
        for name, value in specific.items():
            if name in merged and merged[name] != value:
                raise RunnerError(f"correction methods {', '.join(names)} and {method} run in one permutation "
                                  f"pass but set {name} differently ({merged[name]} vs {value})")
            merged[name] = value
        names.append(method)
    return [(PermutationOptions(**shared, **specific), names) for shared, specific, names in grouped.values()]


def run_permutation(inputs: ContrastInputs, params_by_method: dict[str, Any]) -> BatchResult:
    """Permutation inference of one contrast for every requested method (one pass per distinct settings)."""
    return permutation_batch(inputs, params_by_method, permutation_outcomes(inputs, passes(params_by_method, inputs)))


Outcomes = list[tuple[Any, list[str], Any]]  # (PermutationOptions, method names, PermutationResult) per pass


def permutation_outcomes(inputs: ContrastInputs, all_passes: list[tuple[Any, list[str]]]) -> Outcomes:
    """Run each pass of one contrast: ``(options, method names, PermutationResult)`` per pass."""
    from runner.inference.permutation import permutation_inference

    data, contrast = inputs.data, inputs.contrast
    X = inputs.design.matrix.to_numpy(dtype=float)
    out = []
    for options, names in all_passes:
        if inputs.settings.model.kind == "mfx":
            options = mixed_effects_options(options, inputs)
        log.info("contrast %s: permutation inference (%s), %d permutations requested", contrast.name,
                 ", ".join(names), options.n_permutations)
        space = data.surface.space if data.surface is not None else data.mask  # a mesh is its own graph
        out.append((options, names, permutation_inference(data.Y, X, contrast.matrix, space, names, options,
                                                          executor=inputs.executor)))
    return out


def permutation_batch(inputs: ContrastInputs, params_by_method: dict[str, Any], outcomes: Outcomes,
                      across: dict[str, Any] | None = None) -> BatchResult:
    """The outputs of one contrast's passes; ``across`` holds the null over contrasts of methods corrected
    across contrasts (:mod:`.null_maximum`)."""
    from runner.inference.methods.null_maximum import reassess

    data, contrast = inputs.data, inputs.contrast
    batch = BatchResult(results={})
    for number, (options, names, outcome) in enumerate(outcomes):
        if data.surface is not None and "tfce" in names and options.tfce_E != TFCE_E_SURFACE:
            batch.notes.append(f"contrast {contrast.name}: TFCE on the surface with E = {options.tfce_E:g}; "
                               f"E = {TFCE_E_SURFACE:g}, H = {TFCE_H_SURFACE:g} are the usual surface setting "
                               "(correction.tfce.E)")
        for message in outcome.messages:
            log.info("contrast %s: %s", contrast.name, message)
        if outcome.n_permutations_done < FEW_PERMUTATIONS and not outcome.exhaustive:
            batch.notes.append(f"contrast {contrast.name}: only {outcome.n_permutations_done} permutations "
                               f"({', '.join(names)}); p-values are coarse (smallest "
                               f"{1 / outcome.n_permutations_done:.2g})")
        label = "permutation" + (str(number + 1) if len(outcomes) > 1 else "")
        meta = dict(n_permutations=outcome.n_permutations_done, exhaustive=outcome.exhaustive,
                    scheme=outcome.scheme, regression=outcome.method, two_sided=outcome.two_sided, methods=names)
        batch.shared.append(MapOutput(outcome.uncorrected_p, stat="p", correction=None, fill=1.0, desc=label,
                                      meta=meta))
        if outcome.dof_map is not None:
            from runner.inference.methods.variance_groups import statistic_maps

            rank = contrast.matrix.shape[0]
            batch.shared.extend(statistic_maps(outcome, rank, label if len(outcomes) > 1 else None, meta))
        if outcome.tfce is not None:
            batch.shared.append(MapOutput(outcome.tfce, stat="tfce", correction=None, meta=meta))
        for method in names:
            params = params_by_method[method]
            method_outcome, facts = reassess(outcome, method, params, (across or {}).get(method))
            for fact in facts.get("notes", []):
                batch.notes.append(f"contrast {contrast.name}, {method}: {fact}")
            batch.results[method] = _method_result(inputs, method_outcome, method, params, facts)
    return batch


def mixed_effects_options(options: Any, inputs: ContrastInputs) -> Any:
    """model=mfx: the engine fits the mixed-effects statistic (z) at every sign-flip, with the fixed weights of
    the unpermuted fit (see :mod:`runner.inference.permutation.mixed_effects` for the choice and its check)."""
    from dataclasses import replace

    from runner.inference.permutation import MixedEffectsOptions

    if inputs.variances is None:
        raise RunnerError("model=mfx: the permutation methods need the first-level variance maps")
    model = inputs.settings.model
    return replace(options, mixed_effects=MixedEffectsOptions(
        variances=inputs.variances, estimator=model.tau2_estimator, knapp_hartung=model.knapp_hartung,
        dof=model.dof, weights=MIXED_EFFECTS_WEIGHTS))


def _method_result(inputs: ContrastInputs, outcome: Any, method: str, params: Any,
                   facts: dict[str, Any] | None = None) -> MethodResult:
    """logp map, thresholded statistic map, null distribution and cluster table of one FWE method; ``facts``
    (from :func:`.null_maximum.reassess`) carry the critical value and summary entries of a fitted tail or a
    correction across contrasts."""
    from runner.inference.permutation.pvalues import critical_value

    contrast, alpha = inputs.contrast, params.alpha
    facts = facts or {}
    logp = outcome.logp[method]
    if outcome.two_sided:
        logp = signed_logp(logp, outcome.stat)
    null = outcome.null_max[method]
    critical = facts["critical"](alpha) if "critical" in facts else critical_value(null, alpha)
    # the null's own scale (z-scores when maxima of different statistics were compared across contrasts)
    null_critical = facts["null_critical"](alpha) if "null_critical" in facts else critical
    observed_max = facts.get("observed_max", float(null[0]) if null.size else float("nan"))
    surviving = outcome.corrected_p[method] < alpha
    meta = dict(alpha=alpha, n_permutations=outcome.n_permutations_done, exhaustive=outcome.exhaustive,
                two_sided=outcome.two_sided)
    stat = np.where(np.isfinite(outcome.stat), outcome.stat, 0.0)
    stat_name = outcome.statistic
    thresholded = np.where(surviving, stat, 0.0)
    table = permutation_cluster_table(inputs, stat, thresholded, outcome, method)
    n_voxels = int(np.count_nonzero(thresholded))
    size = "size_vertices" if inputs.data.surface is not None else "size_voxels"
    n_clusters = int(table[size].notna().sum()) if len(table) else 0
    title = f"{contrast.name}: {method} null distribution ({null.size} permutations)"
    outputs = [
        MapOutput(logp, stat="logp", correction=method, meta=dict(meta, signed=outcome.two_sided)),
        MapOutput(thresholded, stat=stat_name, correction=method, meta=dict(meta, threshold=critical)),
        TableOutput(pd.DataFrame({"permutation": np.arange(null.size), "max_statistic": null}), suffix="nulldist",
                    kind="table", stat=stat_name, correction=method, meta=dict(meta, threshold=null_critical)),
        TableOutput(table, suffix="clusters", kind="clusters", stat=stat_name, correction=method, meta=meta),
        NullFigure(null, observed_max, null_critical, method, title, facts.get("fitted_curve"),
                   facts.get("fitted_label", "")),
        MapViews(logp, stat="logp", correction=method, threshold=-np.log10(alpha),
                 title=f"{contrast.name}: -log10 FWE p ({method}, {outcome.n_permutations_done} permutations)"
                 + (", signed by t" if outcome.two_sided else ""), cut_coords_mm=table_peak(table)),
    ]
    log.info("contrast %s, %s alpha=%g: critical value %.4g, %d voxel(s) in %d cluster(s)", contrast.name, method,
             alpha, critical, n_voxels, n_clusters)
    peak = float(stat[np.argmax(np.abs(stat))]) if stat.size else float("nan")
    summary = {"threshold": critical, "n_voxels": n_voxels, "n_clusters": n_clusters, "peak": peak, "alpha": alpha,
               "threshold_text": threshold_text(method, params, critical, outcome,
                                                mesh=inputs.data.surface is not None)}
    if outcome.dof_map is not None:  # variance groups: say which statistic and scheme ran, and why
        summary.update(statistic=outcome.statistic, scheme=outcome.scheme, scheme_reason=outcome.scheme_reason)
    summary.update(facts.get("summary", {}))
    return MethodResult(method, outputs, summary)


def signed_logp(logp: np.ndarray, stat: np.ndarray) -> np.ndarray:
    """-log10 p carrying the sign of the statistic, for two-sided tests (FSL/PALM's signed logp convention).

    A two-sided p says how unlikely the effect is, not its direction; signing it by t keeps a deactivation from
    being drawn (and read) as an activation. Voxels without a statistic keep an unsigned value.
    """
    return np.where(np.asarray(stat) < 0, -np.asarray(logp), np.asarray(logp))


def threshold_text(method: str, params: Any, critical: float, outcome: Any, mesh: bool = False) -> str:
    """How the report states the bar: the statistic (max-T) or the cluster measure it is set on."""
    if not np.isfinite(critical):
        return "none reachable"
    measure, unit = MEASURES[method]
    unit = MESH_UNITS.get(method, unit) if mesh else unit
    if not measure:
        stat = outcome.statistic
        return f"{'|' + stat + '|' if outcome.two_sided else stat} ≥ {format_number(critical, 3)}"
    forming = getattr(params, "cluster_forming_p", None)
    return (f"{measure} ≥ {format_number(critical, 4)}{unit}"
            + (f" (cluster-forming p < {format_number(forming)})" if forming and method != "tfce" else ""))


def permutation_cluster_table(inputs: ContrastInputs, stat: np.ndarray, thresholded: np.ndarray, outcome: Any,
                              method: str) -> pd.DataFrame:
    """Clusters with their FWE p (cluster methods), or the surviving voxels' clusters and peaks (maxt, tfce)."""
    from runner.inference import clusters as cluster_tools

    data = inputs.data
    if data.surface is not None:
        return _mesh_cluster_table(data.space, stat, thresholded, outcome, method)
    if method in outcome.clusters:
        table = outcome.clusters[method].copy()
        if len(table):
            ijk = table[["peak_i", "peak_j", "peak_k"]].to_numpy(dtype=float)
            xyz = (data.affine @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
            table.insert(1, "x", xyz[:, 0])
            table.insert(2, "y", xyz[:, 1])
            table.insert(3, "z", xyz[:, 2])
            table["size_mm3"] = table["size_voxels"] * cluster_tools.voxel_volume(data.affine)
        return table
    volume = data.unmask(thresholded)
    nonzero = np.abs(thresholded[thresholded != 0])
    if nonzero.size == 0:
        return cluster_tools.cluster_table(volume, data.affine, 1.0, 0, False).iloc[0:0]
    level = float(nonzero.min()) * (1 - 1e-9)
    table = cluster_tools.cluster_table(volume, data.affine, level, 0, two_sided=bool(np.any(thresholded < 0)))
    corrected = data.unmask(outcome.corrected_p[method], fill=1.0)
    ijk = table[["i", "j", "k"]].to_numpy(dtype=int)
    table["p_fwe"] = corrected[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    return table


def _mesh_cluster_table(space: Any, stat: np.ndarray, thresholded: np.ndarray, outcome: Any,
                        method: str) -> pd.DataFrame:
    """The mesh cluster-table schema: the engine's clusters (size as area), or the surviving vertices' clusters."""
    from runner.inference import clusters as cluster_tools

    if method in outcome.clusters:
        engine = outcome.clusters[method]
        element = engine["peak_i"].to_numpy(dtype=np.int64)
        xyz = space.coordinates(element)
        index = space.index_values(element)
        return pd.DataFrame({"cluster_id": engine["cluster_id"].astype(str), "sign": engine["sign"],
                             "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "peak_stat": engine["peak_stat"],
                             "size_vertices": engine["size_vertices"].astype("Int64") if len(engine)
                             else pd.Series(dtype="Int64"),
                             "area_mm2": engine["size_voxels"].astype(float), "hemi": index["hemi"],
                             "vertex": index["vertex"], "mass": engine["mass"], "p_fwe": engine["p_fwe"]})
    nonzero = np.abs(thresholded[thresholded != 0])
    if nonzero.size == 0:
        return cluster_tools.cluster_table_in_space(space, np.zeros_like(stat), 1.0).iloc[0:0]
    level = float(nonzero.min()) * (1 - 1e-9)
    table = cluster_tools.cluster_table_in_space(space, thresholded, level, 0,
                                                 two_sided=bool(np.any(thresholded < 0)))
    # the p of each reported peak, found by its hemisphere and vertex (peaks are elements of the space)
    index = space.index_values(np.arange(space.n_elements))
    lookup = {(str(h), int(v)): element for element, (h, v) in enumerate(zip(index["hemi"], index["vertex"]))}
    peaks = [lookup[(str(h), int(v))] for h, v in zip(table["hemi"], table["vertex"])]
    table["p_fwe"] = outcome.corrected_p[method][np.asarray(peaks, dtype=np.int64)]
    return table


def run_permutation_contrasts(every: list[ContrastInputs], params_by_method: dict[str, Any]):
    """Contrast by contrast (as ``run_permutation``), unless a method is corrected across contrasts: then every
    contrast runs on one permutation set first and the maxima are combined (:mod:`.null_maximum`)."""
    if not any(getattr(p, "across_contrasts", False) for p in params_by_method.values()):
        for inputs in every:
            yield inputs.contrast.name, run_permutation(inputs, params_by_method)
        return
    from runner.inference.methods.null_maximum import run_across_contrasts

    yield from run_across_contrasts(every, params_by_method)


for _name, _schema, _what in (
        ("maxt", MaxTCorrection, "voxel-level FWE from the permutation distribution of the maximum statistic"),
        ("clustersize", ClusterSizeCorrection, "cluster-level FWE on cluster size (permutation)"),
        ("clustermass", ClusterMassCorrection, "cluster-level FWE on cluster mass (permutation)"),
        ("tfce", TfceCorrection, "threshold-free cluster enhancement with permutation FWE")):
    register(InferenceMethod(name=_name, family="permutation", schema=_schema, run=run_permutation,
                             description=_what, shared_pass=True, run_contrasts=run_permutation_contrasts))
