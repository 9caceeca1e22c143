"""Run the permutation engine for one contrast and write its outputs (logp maps, p maps, TFCE, nulls, clusters)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from runner import glm
from runner.config import RunSettings
from runner.contrasts import Contrast
from runner.data.loader import GroupData
from runner.design import Design
from runner.errors import RunnerError, did_you_mean
from runner.inference import clusters as cluster_tools
from runner.inference.permutation import PermutationOptions, PermutationResult, permutation_inference
from runner.outputs.progress import progress_enabled
from runner.outputs.results import table_peak, write_map_figures
from runner.outputs.writer import OutputWriter

log = logging.getLogger(__name__)

def _settings(params: Any, settings: RunSettings, design: Design) -> tuple[dict[str, Any], dict[str, Any]]:
    """Engine settings of one method's config: (shared by a pass over the permutations, specific to the method)."""
    blocks = None
    if params.exchangeability_blocks:
        column = params.exchangeability_blocks
        if column not in design.table.columns:
            raise RunnerError(f"exchangeability_blocks names column {column!r}, which is not in the table; "
                              f"{did_you_mean(column, design.table.columns)}")
        blocks = tuple(int(b) for b in pd.factorize(design.table[column].astype(str))[0] + 1)
    budget = int(settings.memory_budget_gb * 1024**3 / 4) if settings.memory_budget_gb else None
    shared = dict(n_permutations=params.n_permutations, seed=settings.seed if params.seed is None else params.seed,
                  two_sided=params.two_sided, method=params.method, exchangeability_blocks=blocks,
                  whole_block=params.whole_block, n_jobs=params.n_jobs or settings.n_jobs,
                  progress=progress_enabled(settings.progress), memory_budget_bytes=budget)
    specific: dict[str, Any] = {}
    for key in ("cluster_forming_p", "connectivity"):
        if hasattr(params, key):
            specific[key] = getattr(params, key)
    if hasattr(params, "E"):
        specific.update(tfce_E=params.E, tfce_H=params.H, tfce_dh=params.dh)
    return shared, specific


def _groups(methods: dict[str, Any], settings: RunSettings,
            design: Design) -> list[tuple[PermutationOptions, list[str]]]:
    """Methods sharing the same permutation settings run in one pass over the same permutations."""
    passes: dict[tuple, tuple[dict[str, Any], dict[str, Any], list[str]]] = {}
    for method, params in methods.items():
        shared, specific = _settings(params, settings, design)
        key = tuple(sorted(shared.items()))
        _, merged, names = passes.setdefault(key, (shared, {}, []))
        for name, value in specific.items():
            if name in merged and merged[name] != value:
                raise RunnerError(f"correction methods {', '.join(names)} and {method} run in one permutation "
                                  f"pass but set {name} differently ({merged[name]} vs {value})")
            merged[name] = value
        names.append(method)
    return [(PermutationOptions(**shared, **specific), names) for shared, specific, names in passes.values()]


def run_permutations(writer: OutputWriter, data: GroupData, design: Design, contrast: Contrast,
                     result: glm.ContrastResult, methods: dict[str, Any],
                     settings: RunSettings) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Permutation inference of one contrast for every requested method; returns summary rows and notes."""
    rows: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    X = design.matrix.to_numpy(dtype=float)
    passes = _groups(methods, settings, design)
    for number, (options, names) in enumerate(passes):
        log.info("contrast %s: permutation inference (%s), %d permutations requested", contrast.name,
                 ", ".join(names), options.n_permutations)
        outcome = permutation_inference(data.Y, X, contrast.matrix, data.mask, names, options)
        for message in outcome.messages:
            log.info("contrast %s: %s", contrast.name, message)
        if outcome.n_permutations_done < 1000 and not outcome.exhaustive:
            notes.append(f"contrast {contrast.name}: only {outcome.n_permutations_done} permutations "
                         f"({', '.join(names)}); p-values are coarse (smallest {1 / outcome.n_permutations_done:.2g})")
        _write_shared(writer, data, contrast, outcome, names,
                      "permutation" + (str(number + 1) if len(passes) > 1 else ""))
        for method in names:
            rows[method] = _write_method(writer, data, contrast, outcome, method, methods[method].alpha,
                                         settings.report)
    return rows, notes


def _write_shared(writer: OutputWriter, data: GroupData, contrast: Contrast, outcome: PermutationResult,
                  names: list[str], label: str) -> None:
    """Uncorrected permutation p (and the TFCE map) are shared by the methods of one pass."""
    meta = dict(contrast=contrast.name, n_permutations=outcome.n_permutations_done, exhaustive=outcome.exhaustive,
                scheme=outcome.scheme, regression=outcome.method, two_sided=outcome.two_sided, methods=names)
    from runner.outputs.naming import safe_label

    writer.map(data.unmask(outcome.uncorrected_p, fill=1.0), data.affine, stat="p", correction=None,
               name=f"contrast-{safe_label(contrast.name)}_stat-p_desc-{label}_statmap.nii.gz",
               **meta)
    if outcome.tfce is not None:
        writer.map(data.unmask(outcome.tfce), data.affine, stat="tfce", correction=None, **meta)


def critical_value(null: np.ndarray, alpha: float) -> float:
    """The value an observed maximum must exceed (strictly) for FWE p = #{null >= observed} / P to be < alpha.

    At most ceil(alpha P) - 1 null values may reach the observed one, so the bar is the ceil(alpha P)-th largest.
    """
    if not null.size:
        return float("nan")
    allowed = int(np.ceil(alpha * null.size)) - 1
    if allowed < 0:
        return float("inf")
    return float(np.sort(null)[::-1][allowed])


def signed_logp(logp: np.ndarray, stat: np.ndarray) -> np.ndarray:
    """-log10 p carrying the sign of the statistic, for two-sided tests (FSL/PALM's signed logp convention).

    A two-sided p says how unlikely the effect is, not its direction; signing it by t keeps a deactivation from
    being drawn (and read) as an activation. Voxels without a statistic keep an unsigned value.
    """
    return np.where(np.asarray(stat) < 0, -np.asarray(logp), np.asarray(logp))


def _write_method(writer: OutputWriter, data: GroupData, contrast: Contrast, outcome: PermutationResult,
                  method: str, alpha: float, report: bool) -> dict[str, Any]:
    """logp map, thresholded statistic map, null distribution and cluster table of one FWE method."""
    corrected = outcome.corrected_p[method]
    logp = outcome.logp[method]
    if outcome.two_sided:
        logp = signed_logp(logp, outcome.stat)
    null = outcome.null_max[method]
    critical = critical_value(null, alpha)
    surviving = corrected < alpha
    meta = dict(contrast=contrast.name, correction=method, alpha=alpha, n_permutations=outcome.n_permutations_done,
                exhaustive=outcome.exhaustive, two_sided=outcome.two_sided)
    writer.map(data.unmask(logp), data.affine, stat="logp", signed=outcome.two_sided, **meta)
    stat = np.where(np.isfinite(outcome.stat), outcome.stat, 0.0)
    stat_name = outcome.stat_type
    thresholded = np.where(surviving, stat, 0.0)
    writer.map(data.unmask(thresholded), data.affine, stat=stat_name, threshold=critical, **meta)
    writer.table(pd.DataFrame({"permutation": np.arange(null.size), "max_statistic": null}), suffix="nulldist",
                 kind="table", stat=stat_name, threshold=critical, **meta)
    table = _cluster_table(data, stat, thresholded, outcome, method)
    writer.table(table, suffix="clusters", kind="clusters", stat=stat_name, **meta)
    n_voxels = int(np.count_nonzero(thresholded))
    n_clusters = int(table["size_voxels"].notna().sum()) if len(table) else 0
    if report:
        from runner.outputs import figures

        observed = float(null[0]) if null.size else float("nan")
        writer.figure(figures.null_distribution_figure(null, observed, critical,
                                                       f"{contrast.name}: {method} null distribution "
                                                       f"({null.size} permutations)"),
                      name=f"contrast-{_label(contrast.name)}_corr-{_label(method)}_nulldist.png",
                      contrast=contrast.name, correction=method, view="null")
        write_map_figures(writer, data, data.unmask(logp), -np.log10(alpha), contrast.name, "logp", method,
                          f"{contrast.name}: -log10 FWE p ({method}, {outcome.n_permutations_done} permutations)"
                          + (", signed by t" if outcome.two_sided else ""), cut_coords_mm=table_peak(table))
    log.info("contrast %s, %s alpha=%g: critical value %.4g, %d voxel(s) in %d cluster(s)", contrast.name, method,
             alpha, critical, n_voxels, n_clusters)
    peak = float(stat[np.argmax(np.abs(stat))]) if stat.size else float("nan")
    return {"threshold": critical, "n_voxels": n_voxels, "n_clusters": n_clusters, "peak": peak, "alpha": alpha}


def _cluster_table(data: GroupData, stat: np.ndarray, thresholded: np.ndarray, outcome: PermutationResult,
                   method: str) -> pd.DataFrame:
    """Clusters with their FWE p (cluster methods), or the surviving voxels' clusters and peaks (maxt, tfce)."""
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


def _label(text: str) -> str:
    from runner.outputs.naming import safe_label

    return safe_label(text)
