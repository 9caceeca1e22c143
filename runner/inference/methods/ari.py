"""All-Resolutions Inference (Rosenblatt et al. 2018): a lower bound on the true-discovery proportion of every cluster
of supra-threshold voxels, valid simultaneously over all clusters and thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

import numpy as np
import pandas as pd

from runner.checks import check, in_open_unit
from runner.inference.methods.height import effective_two_sided
from runner.inference.registry import ContrastInputs, InferenceMethod, register
from runner.results import BatchResult, MapOutput, MapViews, MethodResult, TableOutput, format_number, table_peak


@dataclass
class AriCorrection:
    """All-Resolutions Inference: lower bound of the true-discovery proportion per cluster."""

    alpha: float = field(default=0.05, metadata=check(in_open_unit))
    thresholds: List[float] = field(default_factory=lambda: [3.0])
    two_sided: bool = False


def run_ari(inputs: ContrastInputs, params_by_method: dict[str, Any]) -> BatchResult:
    """The TDP map (signed when two-sided) and the cluster table of one contrast, on the data's Space (the grid's
    face-connected clusters, or the mesh's triangle edges). Elements without a statistic (NaN) are not tests."""
    from runner.inference import ari

    (method, params), = params_by_method.items()
    data, contrast, result = inputs.data, inputs.contrast, inputs.fit
    z = np.asarray(result.z, dtype=np.float64)
    signs = [1.0, -1.0] if effective_two_sided(result.stat_type, params.two_sided) else [1.0]
    tables, tdp = [], np.zeros(z.shape)
    for sign in signs:
        tdp_sign, table = ari.cluster_tdp_in_space(data.space, sign * z, params.thresholds, params.alpha)
        tdp = np.where(tdp_sign > 0, sign * tdp_sign, tdp)
        tables.append(table.assign(sign="positive" if sign > 0 else "negative"))
    table = pd.concat(tables, ignore_index=True)
    inside = tdp != 0
    meta = dict(alpha=params.alpha)
    outputs = [
        MapOutput(tdp, stat="tdp", correction=method, meta=dict(meta, thresholds=list(params.thresholds))),
        TableOutput(table, suffix="clusters", kind="clusters", stat="tdp", correction=method, meta=meta),
        # a TDP is a proportion: the colour scale ends at 1 (-1 for the negative tail), not at the map's max
        MapViews(tdp, stat="tdp", correction=method, threshold=None,
                 title=f"{contrast.name}: true-discovery proportion (ARI, alpha={params.alpha:g})",
                 cut_coords_mm=table_peak(table), vmax=1.0),
    ]
    threshold = float(min(params.thresholds))
    per_threshold = clusters_per_threshold(table, params.thresholds)
    peak = float(z[np.argmax(np.where(inside, np.abs(np.nan_to_num(z)), -1.0))]) if inside.any() else 0.0
    summary = {"threshold": threshold, "n_voxels": int(np.count_nonzero(tdp)),
               "n_clusters": per_threshold[_threshold_key(threshold)], "n_clusters_per_threshold": per_threshold,
               "peak": peak, "max_tdp": float(np.max(np.abs(tdp))) if tdp.size else 0.0, "alpha": params.alpha,
               "threshold_text": f"z ≥ {format_number(threshold, 3)} (cluster-forming)"}
    return BatchResult({method: MethodResult(method, outputs, summary)})


def clusters_per_threshold(table: pd.DataFrame, thresholds: list[float]) -> dict[str, int]:
    """Number of ARI clusters (both signs) at each cluster-forming threshold, keyed by the threshold as text.

    The ARI table has one row per cluster per threshold, and clusters at a higher threshold are nested in those at a
    lower one, so the table's length counts the same blob several times.
    """
    counts = {_threshold_key(t): 0 for t in sorted(thresholds)}
    for threshold, n in table.groupby("threshold").size().items():
        counts[_threshold_key(threshold)] = int(n)
    return counts


def _threshold_key(threshold: float) -> str:
    return f"{float(threshold):g}"


register(InferenceMethod(name="ari", family="ari", schema=AriCorrection, run=run_ari,
                         description="true-discovery proportion per cluster (All-Resolutions Inference)"))
