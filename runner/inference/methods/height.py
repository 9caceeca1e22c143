"""Voxel-level height thresholds (fpr, fdr, bonferroni) with an optional cluster-extent filter, as nilearn's
``threshold_stats_img``; clusters and peaks of the surviving voxels."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runner.checks import check, in_open_unit, non_negative
from runner.inference.registry import ContrastInputs, InferenceMethod, register
from runner.results import BatchResult, MapOutput, MapViews, MethodResult, TableOutput, format_number, table_peak

log = logging.getLogger("runner.inference")


@dataclass
class HeightCorrection:
    """Parametric voxel-wise threshold with optional cluster-extent filter (nilearn's threshold_stats_img)."""

    alpha: float = field(default=0.05, metadata=check(in_open_unit))
    cluster_threshold: int = field(default=0, metadata=check(non_negative))
    two_sided: bool = True


@dataclass
class FprCorrection(HeightCorrection):
    alpha: float = field(default=0.001, metadata=check(in_open_unit))


@dataclass
class FdrCorrection(HeightCorrection):
    pass


@dataclass
class BonferroniCorrection(HeightCorrection):
    pass


def effective_two_sided(stat_type: str, requested: bool) -> bool:
    """F statistics are one-sided by nature (their z is the upper tail)."""
    return requested and stat_type == "t"


def count_clusters(table: Any) -> int:
    """Clusters in a cluster table (sub-peak rows have no size)."""
    if table.empty:
        return 0
    return int(table["size_voxels"].notna().sum())


def run_height(inputs: ContrastInputs, params_by_method: dict[str, Any]) -> BatchResult:
    """Threshold one contrast's z map with one height-control method; its map, cluster table and figures."""
    from runner.inference import clusters, parametric

    (method, params), = params_by_method.items()
    data, contrast, result = inputs.data, inputs.contrast, inputs.fit
    two_sided = effective_two_sided(result.stat_type, params.two_sided)
    z = np.where(np.isfinite(result.z), result.z, 0.0)
    threshold = parametric.height_threshold(result.z, method, params.alpha, two_sided)  # NaN z: not a test
    z3d = data.unmask(z)
    thresholded = clusters.threshold_map(z3d, data.mask, threshold, params.cluster_threshold, two_sided)
    table = clusters.cluster_table(z3d, data.affine, threshold, params.cluster_threshold, two_sided)
    meta = dict(alpha=params.alpha, threshold=threshold if np.isfinite(threshold) else None)
    surviving = thresholded[data.mask]
    n_surviving = int(np.count_nonzero(thresholded))
    n_clusters = count_clusters(table)
    peak = float(z[np.argmax(np.abs(z))]) if z.size else float("nan")
    log.info("contrast %s, %s alpha=%g: threshold z=%.3f, %d voxel(s) in %d cluster(s)", contrast.name, method,
             params.alpha, threshold, n_surviving, n_clusters)
    outputs = [
        MapOutput(surviving, stat="z", correction=method,
                  meta=dict(meta, two_sided=two_sided, cluster_threshold=params.cluster_threshold)),
        TableOutput(table, suffix="clusters", kind="clusters", stat="z", correction=method, meta=meta),
        MapViews(surviving, stat="z", correction=method, threshold=threshold,
                 title=f"{contrast.name}: z, {method} alpha={params.alpha:g}", cut_coords_mm=table_peak(table)),
    ]
    text = (f"{'|z|' if two_sided else 'z'} ≥ {format_number(threshold, 3)}" if np.isfinite(threshold)
            else "none reachable")
    summary = {"threshold": threshold, "n_voxels": n_surviving, "n_clusters": n_clusters, "peak": peak,
               "alpha": params.alpha, "threshold_text": text}
    return BatchResult({method: MethodResult(method, outputs, summary)})


for _name, _schema, _what in (
        ("fpr", FprCorrection, "uncorrected voxel-level p < alpha (false positive rate)"),
        ("fdr", FdrCorrection, "Benjamini-Hochberg false discovery rate q < alpha"),
        ("bonferroni", BonferroniCorrection, "family-wise error < alpha by Bonferroni over the in-mask voxels")):
    register(InferenceMethod(name=_name, family="parametric", schema=_schema, run=run_height, description=_what))
