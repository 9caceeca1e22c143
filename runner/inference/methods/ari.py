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
from runner.results import BatchResult, MapOutput, MapViews, MethodResult, TableOutput, format_number


@dataclass
class AriCorrection:
    """All-Resolutions Inference: lower bound of the true-discovery proportion per cluster."""

    alpha: float = field(default=0.05, metadata=check(in_open_unit))
    thresholds: List[float] = field(default_factory=lambda: [3.0])
    two_sided: bool = False


def run_ari(inputs: ContrastInputs, params_by_method: dict[str, Any]) -> BatchResult:
    """The TDP map (signed when two-sided) and the cluster table of one contrast."""
    from runner.inference import ari

    (method, params), = params_by_method.items()
    data, contrast, result = inputs.data, inputs.contrast, inputs.fit
    z = np.where(np.isfinite(result.z), result.z, 0.0)
    signs = [1.0, -1.0] if effective_two_sided(result.stat_type, params.two_sided) else [1.0]
    tables, tdp_total = [], np.zeros(data.mask.shape)
    for sign in signs:
        tdp3d, table = ari.cluster_tdp(data.unmask(sign * z), data.mask, params.thresholds, params.alpha,
                                       affine=data.affine)
        tdp_total = np.where(tdp3d > 0, sign * tdp3d, tdp_total) if sign < 0 else tdp3d
        tables.append(table.assign(sign="positive" if sign > 0 else "negative"))
    table = pd.concat(tables, ignore_index=True)
    tdp = tdp_total[data.mask]
    inside = tdp_total != 0
    z3d = data.unmask(z)
    peak_index = np.unravel_index(int(np.argmax(np.where(inside, np.abs(z3d), -1.0))), z3d.shape)
    peak_mm = tuple(float(v) for v in (data.affine @ np.r_[peak_index, 1.0])[:3]) if inside.any() else None
    meta = dict(alpha=params.alpha)
    outputs = [
        MapOutput(tdp, stat="tdp", correction=method, meta=dict(meta, thresholds=list(params.thresholds))),
        TableOutput(table, suffix="clusters", kind="clusters", stat="tdp", correction=method, meta=meta),
        MapViews(tdp, stat="tdp", correction=method, threshold=None,
                 title=f"{contrast.name}: true-discovery proportion (ARI, alpha={params.alpha:g})",
                 cut_coords_mm=peak_mm),
    ]
    threshold = float(min(params.thresholds))
    summary = {"threshold": threshold, "n_voxels": int(np.count_nonzero(tdp_total)), "n_clusters": int(len(table)),
               "peak": float(z3d[peak_index]) if inside.any() else 0.0,
               "max_tdp": float(np.max(np.abs(tdp_total))) if tdp_total.size else 0.0, "alpha": params.alpha,
               "threshold_text": f"z ≥ {format_number(threshold, 3)} (cluster-forming)"}
    return BatchResult({method: MethodResult(method, outputs, summary)})


register(InferenceMethod(name="ari", family="ari", schema=AriCorrection, run=run_ari,
                         description="true-discovery proportion per cluster (All-Resolutions Inference)"))
