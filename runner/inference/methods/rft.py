"""Family-wise error by random field theory, as SPM reports it: voxel-level FWE p, the FWE height threshold, the
cluster table with cluster- and peak-level p values, and the footer printed under it.

The statistics live in :mod:`runner.inference.rft`; this module runs them on one fitted contrast: residuals of the
study's design -> smoothness (FWHM, resels per voxel) -> resel counts of the mask -> p values and thresholds.

One-sided by default, as SPM: a t contrast tests its positive tail (test ``-c`` for the other one). ``two_sided``
doubles the expected Euler characteristic (both tails, Worsley et al. 1996) and tests |t|; an F test is one-tailed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runner.checks import check, in_open_unit, non_negative
from runner.inference.methods.height import effective_two_sided
from runner.inference.registry import ContrastInputs, InferenceMethod, register
from runner.results import BatchResult, MapOutput, MapViews, MethodResult, TableOutput, format_number, table_peak

log = logging.getLogger("runner.inference")

RESIDUAL_CHUNK_VOXELS = 65536  # residuals are computed this many voxels at a time (memory of the float64 copy)


@dataclass
class RftCorrection:
    """Random field theory FWE (SPM): voxel level at ``alpha``, cluster level above ``cluster_forming_p``."""

    alpha: float = field(default=0.05, metadata=check(in_open_unit))
    cluster_forming_p: float = field(default=0.001, metadata=check(in_open_unit))
    two_sided: bool = False  # SPM tests the positive tail of a t contrast
    extent_threshold: int = field(default=0, metadata=check(non_negative))  # voxels; smaller clusters not listed


def ols_residuals(Y: np.ndarray, X: np.ndarray, chunk_voxels: int = RESIDUAL_CHUNK_VOXELS) -> np.ndarray:
    """Residuals e = Y - X pinv(X) Y of an OLS fit at every voxel, (n, V) float64, computed chunk by chunk.

    Parameters
    ----------
    Y : np.ndarray
        (n, V) data (float32, float64 or a memmap).
    X : np.ndarray
        (n, p) design matrix.
    chunk_voxels : int
        Voxels read and projected at once.

    Returns
    -------
    np.ndarray
        (n, V) residuals.
    """
    X = np.asarray(X, dtype=float)
    projector = np.linalg.pinv(X)
    out = np.empty(Y.shape, dtype=float)
    for start in range(0, Y.shape[1], chunk_voxels):
        block = np.asarray(Y[:, start:start + chunk_voxels], dtype=float)
        out[:, start:start + chunk_voxels] = block - X @ (projector @ block)
    return out


_LAST_SMOOTHNESS: list[tuple[Any, Any, Any]] = []  # (Y, X, Smoothness) of the last study, shared by contrasts


def study_smoothness(inputs: ContrastInputs) -> Any:
    """The study's smoothness from the residuals of its design (the same for every contrast, so kept once)."""
    from runner.inference.rft.smoothness import estimate_smoothness

    data, matrix = inputs.data, inputs.design.matrix
    for Y, X, smoothness in _LAST_SMOOTHNESS:
        if Y is data.Y and X is matrix:
            return smoothness
    X = matrix.to_numpy(dtype=float)
    residuals = ols_residuals(data.Y, X)
    smoothness = estimate_smoothness(residuals, data.mask, data.affine, inputs.fit.dof)
    _LAST_SMOOTHNESS[:] = [(data.Y, matrix, smoothness)]
    return smoothness


def search_volume(inputs: ContrastInputs, two_sided: bool) -> tuple[Any, Any]:
    """(Smoothness, SearchVolume) of the contrast: statistic type, dof, resel counts, FWHM, voxels, tail."""
    from runner.inference.rft.resels import resel_counts
    from runner.inference.rft.table import SearchVolume

    smoothness = study_smoothness(inputs)
    result = inputs.fit
    counts = resel_counts(inputs.data.mask, smoothness.fwhm_voxels)
    # model=mfx: each voxel's t has its own (effective) degrees of freedom, so the field is its z map (a Gaussian
    # field, SPM's "Z"); the smoothness is still estimated from the design's OLS residuals
    stat_type = "Z" if mixed_effects(inputs) else result.stat_type
    volume = SearchVolume.build(stat_type, (float(result.df_num), float(result.dof)), counts,
                                smoothness.fwhm_voxels, smoothness.voxel_size_mm, int(inputs.data.mask.sum()),
                                two_sided)
    return smoothness, volume


def mixed_effects(inputs: ContrastInputs) -> bool:
    """True with model=mfx: the random field is the contrast's z map."""
    return inputs.settings.model.kind == "mfx"


def footer_pairs(footer: dict[str, Any], stat: str, cluster_forming_p: float, alpha: float) -> list[list[str]]:
    """SPM's footer (``spm_list``) as (label, text) pairs for the report, from :func:`rft.table.spm_footer`."""
    n = format_number
    fwhm_mm = " ".join(n(v, 3) for v in footer["fwhm_mm"])
    fwhm_vox = " ".join(n(v, 3) for v in footer["fwhm_voxels"])
    return [
        ["Height threshold", f"{stat} = {n(footer['height_threshold'], 4)}, p = {n(footer['height_p_uncorrected'])} "
                             f"({n(footer['height_p_fwe'], 3)} FWE) — cluster-forming p < {n(cluster_forming_p)}"],
        ["Extent threshold", f"k = {footer['extent_threshold_voxels']} voxels, p = "
                             f"{n(footer['extent_p_uncorrected'], 3)} ({n(footer['extent_p_fwe'], 3)} FWE)"],
        ["Expected voxels per cluster, <k>", n(footer["expected_voxels_per_cluster"], 4)],
        ["Expected number of clusters, <c>", n(footer["expected_number_of_clusters"], 4)],
        [f"FWE p < {n(alpha)}: height, extent", f"{stat} > {n(footer['fwe_height_threshold'], 4)} (voxel level), "
                                               f"k ≥ {n(footer['fwe_extent_threshold_voxels'])} voxels "
                                               "(cluster level)"],
        ["Degrees of freedom", f"[{n(footer['dof'][0])}, {n(footer['dof'][1])}]"],
        ["FWHM", f"{fwhm_mm} mm; {fwhm_vox} voxels"],
        ["Volume", f"{footer['search_volume_mm3']:,.0f} mm³ = {footer['search_volume_voxels']:,} voxels = "
                   f"{n(footer['search_volume_resels'], 4)} resels"],
        ["Voxel size", " ".join(n(v, 3) for v in footer["voxel_size_mm"]) + " mm"],
        ["RESEL size", f"{n(footer['resel_size_voxels'], 4)} voxels"],
    ]


def run_rft(inputs: ContrastInputs, params_by_method: dict[str, Any]) -> BatchResult:
    """Voxel-level FWE map, thresholded z map, RPV map, SPM's cluster table and footer for one contrast.

    The voxel level thresholds z where the statistic exceeds the FWE height threshold (``stat-z_desc-rft``); the
    cluster level keeps the clusters above the cluster-forming threshold whose cluster FWE p is below alpha
    (``stat-z_desc-rftClusterlevel``).
    """
    from runner.inference.methods.permutation import signed_logp
    from runner.inference.rft import fwe
    from runner.inference.rft.ec_densities import threshold_from_p
    from runner.inference.rft.table import cluster_table, spm_footer

    (method, params), = params_by_method.items()
    data, contrast, result = inputs.data, inputs.contrast, inputs.fit
    two_sided = effective_two_sided(result.stat_type, params.two_sided)
    smoothness, volume = search_volume(inputs, two_sided)
    stat_type, df, counts = volume.stat_type, volume.df, volume.resel_counts
    stat = np.asarray(result.z if mixed_effects(inputs) else result.stat, dtype=float)

    # Voxel level: FWE p = min(RFT, Bonferroni) at every voxel (spm_P), threshold u with p(u) = alpha (spm_uc).
    log_p = fwe.peak_fwe_log_p(np.where(np.isfinite(stat), stat, np.nan), stat_type, df, counts, volume.n_voxels,
                               two_sided)
    logp = np.where(np.isfinite(log_p), -log_p / np.log(10.0), 0.0)
    if two_sided:
        logp = signed_logp(logp, stat)
    height = fwe.fwe_height_threshold(params.alpha, stat_type, df, counts, volume.n_voxels, two_sided)
    tail = np.abs(stat) if two_sided else stat
    surviving = np.isfinite(stat) & (tail > height)
    z = np.where(np.isfinite(result.z), result.z, 0.0)
    thresholded = np.where(surviving, z, 0.0)
    from runner import stats  # here, not at the top: checking a config imports this module's schema

    z_height = (float(stats.z_from_logsf(fwe_log_uncorrected(stat_type, height, df))) if np.isfinite(height)
                else height)  # the same threshold on the z scale (equal one-sided tail probability)

    # Cluster level: clusters above the cluster-forming threshold, SPM's table and footer.
    forming = threshold_from_p(stat_type, params.cluster_forming_p / (2.0 if two_sided else 1.0), df)
    table = cluster_table(data.unmask(np.where(np.isfinite(stat), stat, 0.0)), data.mask, data.affine, volume,
                          forming, params.extent_threshold)
    footer = spm_footer(volume, forming, params.extent_threshold, params.alpha)
    cluster_rows = table[table["size_voxels"].notna()]
    significant = cluster_rows[cluster_rows["cluster_p_fwe"] < params.alpha]
    in_clusters = significant_cluster_voxels(data.unmask(np.where(np.isfinite(stat), stat, 0.0)), data.mask,
                                             forming, two_sided, significant)

    meta = dict(alpha=params.alpha, two_sided=two_sided)
    stat_label = "|" + stat_type + "|" if two_sided else stat_type
    outputs = [
        MapOutput(logp, stat="logp", correction=method, meta=dict(meta, signed=two_sided, level="voxel")),
        MapOutput(thresholded, stat="z", correction=method,
                  meta=dict(meta, threshold=z_height, height_threshold=height, height_stat=stat_type)),
        MapOutput(np.where(in_clusters, z, 0.0), stat="z", correction=method, desc="clusterlevel",
                  meta=dict(meta, level="cluster", cluster_forming_p=params.cluster_forming_p,
                            cluster_forming_threshold=forming, extent_threshold=params.extent_threshold)),
        MapOutput(np.nan_to_num(smoothness.resels_per_voxel, nan=0.0), stat="rpv", correction=method,
                  meta=dict(fwhm_voxels=smoothness.fwhm_voxels.tolist())),
        TableOutput(table, suffix="clusters", kind="clusters", stat=stat_type, correction=method,
                    meta=dict(meta, threshold=forming, cluster_forming_p=params.cluster_forming_p,
                              extent_threshold=params.extent_threshold)),
        MapViews(thresholded, stat="z", correction=method, threshold=z_height,
                 title=f"{contrast.name}: z, RFT voxel-level FWE alpha={params.alpha:g} ({stat_label} > "
                       f"{height:.3g})", cut_coords_mm=table_peak(table)),
    ]
    n_surviving = int(surviving.sum())
    log.info("contrast %s, rft alpha=%g: FWHM %s mm, resels %s, height threshold %s=%.3f, %d voxel(s); "
             "%d of %d cluster(s) at cluster-forming p<%g significant", contrast.name, params.alpha,
             np.round(smoothness.fwhm_mm, 2).tolist(), np.round(counts, 1).tolist(), stat_type, height,
             n_surviving, len(significant), len(cluster_rows), params.cluster_forming_p)
    summary = {
        "threshold": height, "n_voxels": n_surviving, "n_clusters": int(len(significant)),
        "peak": float(stat[np.nanargmax(np.abs(stat))]) if np.isfinite(stat).any() else float("nan"),
        "alpha": params.alpha,
        "threshold_text": (f"{stat_label} > {format_number(height, 4)} (voxel-level FWE); clusters above "
                           f"p < {format_number(params.cluster_forming_p)} with cluster-level FWE p < "
                           f"{format_number(params.alpha)}") if np.isfinite(height) else "none reachable",
        "height_threshold": height,
        "cluster_forming_threshold": forming,
        "n_voxels_in_significant_clusters": int(significant["size_voxels"].sum()) if len(significant) else 0,
        "fwhm_mm": smoothness.fwhm_mm.tolist(),
        "fwhm_voxels": smoothness.fwhm_voxels.tolist(),
        "resel_counts": [float(c) for c in counts],
        "search_volume_mm3": footer["search_volume_mm3"],
        "dof": float(result.dof),
        "spm_footer": footer,
        "footer_title": "Under the table, as SPM prints it: thresholds, smoothness and search volume",
        "footer": footer_pairs(footer, stat_type, params.cluster_forming_p, params.alpha),
    }
    return BatchResult({method: MethodResult(method, outputs, summary)})


def significant_cluster_voxels(stat3d: np.ndarray, mask: np.ndarray, forming: float, two_sided: bool,
                               significant: Any) -> np.ndarray:
    """(V,) True in the clusters of the table's ``significant`` rows: the components (SPM's 18-connectivity) above
    the cluster-forming threshold that hold each significant cluster's peak voxel."""
    from runner.inference.rft.table import label_clusters

    inside = np.zeros(mask.shape, dtype=bool)
    for sign in (1.0, -1.0) if two_sided else (1.0,):
        labels, _ = label_clusters(np.where(mask, sign * stat3d, -np.inf) > forming)
        peaks = significant[np.sign(significant["peak_stat"]) == sign] if two_sided else significant
        chosen = labels[peaks["i"].to_numpy(int), peaks["j"].to_numpy(int), peaks["k"].to_numpy(int)]
        inside |= np.isin(labels, chosen[chosen > 0])
    return inside[mask]


def fwe_log_uncorrected(stat_type: str, u: float, df: Any) -> float:
    """log P(S >= u) of the statistic (for the z value of a threshold on the t or F scale)."""
    from runner.inference.rft.ec_densities import log_uncorrected_p

    return float(log_uncorrected_p(stat_type, u, df))


register(InferenceMethod(name="rft", family="parametric", schema=RftCorrection, run=run_rft,
                         description="family-wise error by random field theory (SPM): voxel and cluster level"))
