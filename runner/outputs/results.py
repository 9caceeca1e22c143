"""Turn fitted contrasts and inference results into files through the OutputWriter (maps, tables, figures)."""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
import pandas as pd

from runner import glm
from runner.contrasts import Contrast
from runner.data.loader import GroupData
from runner.design import Design
from runner.inference import ari, clusters, parametric
from runner.outputs.writer import OutputWriter

log = logging.getLogger(__name__)

CONTRAST_MAPS_T = ("effect", "variance", "t", "z", "p")
CONTRAST_MAPS_F = ("F", "z", "p")


def write_design(writer: OutputWriter, design: Design, contrasts: list[Contrast], report: bool = True) -> None:
    """design_matrix.tsv (+ PNG) and one contrast-matrix figure per contrast."""
    writer.table(design.matrix, suffix="design_matrix", kind="design", name="design_matrix.tsv")
    weights = pd.DataFrame(
        [{"contrast": c.name, "type": c.stat_type, "row": r + 1, **dict(zip(design.columns, row))}
         for c in contrasts for r, row in enumerate(c.matrix)])
    writer.table(weights, suffix="contrasts", kind="design", name="contrasts.tsv")
    if not report:
        return
    from runner.outputs import figures

    writer.figure(figures.design_matrix_figure(design.matrix), name="design_matrix.png")
    for contrast in contrasts:
        writer.figure(figures.contrast_matrix_figure(contrast.matrix, design.columns, contrast.name),
                      name=f"contrast-{_label(contrast.name)}_design.png", contrast=contrast.name)


def write_contrast_maps(writer: OutputWriter, data: GroupData, contrasts: list[Contrast],
                        fitted: dict[str, glm.ContrastResult]) -> list[str]:
    """Effect, variance, t (or F), z and p maps of every contrast (0 outside the mask); returns warnings."""
    notes: list[str] = []
    for contrast in contrasts:
        result = fitted[contrast.name]
        maps = {"effect": result.effect, "variance": result.variance, "t": result.stat, "F": result.stat,
                "z": result.z, "p": result.p}
        names = CONTRAST_MAPS_T if result.stat_type == "t" else CONTRAST_MAPS_F
        for stat in names:
            writer.map(data.unmask(np.asarray(maps[stat], dtype=float)), data.affine, contrast=contrast.name,
                       stat=stat, dof=result.dof, stat_type=result.stat_type)
        n_nan = int(np.sum(~np.isfinite(result.stat)))
        if n_nan:
            message = (f"contrast {contrast.name}: {n_nan} voxel(s) have no statistic (zero residual variance "
                       "across maps); they are NaN in the maps and never survive a threshold")
            log.warning(message)
            notes.append(message)
    return notes


def covariate_of_interest(contrast: Contrast, design: Design) -> int | None:
    """Index of the single continuous design column a t contrast tests (e.g. age in VBM), else None."""
    if contrast.stat_type != "t":
        return None
    weights = np.flatnonzero(contrast.vector)
    if weights.size != 1:
        return None
    column = design.matrix.iloc[:, int(weights[0])].to_numpy(dtype=float)
    return int(weights[0]) if np.unique(column).size > 2 else None


def write_covariate_figure(writer: OutputWriter, data: GroupData, design: Design, contrast: Contrast,
                           result: glm.ContrastResult) -> None:
    """Partial-residual scatter at the contrast's peak voxel against the covariate it tests, with the fitted slope.

    The other regressors' fitted contributions are removed from the values, so the points scatter around the line
    of slope equal to the contrast's effect (as in SPM's "plot fitted responses"); the mean of the removed part is
    added back so the values stay on their natural scale.
    """
    from runner.outputs import figures

    column = covariate_of_interest(contrast, design)
    z = np.where(np.isfinite(result.z), result.z, 0.0)
    if column is None or not np.any(z):
        return
    peak = int(np.argmax(np.abs(z)))
    X = design.matrix.to_numpy(dtype=float)
    y = np.asarray(data.Y[:, peak], dtype=float)
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    others = np.arange(X.shape[1]) != column
    nuisance = X[:, others] @ beta[others]
    adjusted = y - nuisance + nuisance.mean()  # keep the values on their natural scale
    peak_mm = data.affine @ np.r_[np.argwhere(data.mask)[peak], 1.0]
    name = design.columns[column]
    title = (f"{contrast.name}: peak voxel ({peak_mm[0]:.0f}, {peak_mm[1]:.0f}, {peak_mm[2]:.0f}) mm, "
             f"z = {z[peak]:.2f}")
    figure = figures.covariate_scatter_figure(adjusted, X[:, column], name, title, fitted=(float(nuisance.mean()), float(beta[column])),
                                              value_label="value adjusted for other regressors")
    writer.figure(figure, name=f"contrast-{_label(contrast.name)}_scatter.png", contrast=contrast.name,
                  view="scatter", peak_mm=[float(v) for v in peak_mm[:3]])


def effective_two_sided(result: glm.ContrastResult, requested: bool) -> bool:
    """F statistics are one-sided by nature (their z is the upper tail)."""
    return requested and result.stat_type == "t"


def parametric_inference(writer: OutputWriter, data: GroupData, contrast: Contrast, result: glm.ContrastResult,
                         method: str, params: Any, report: bool = True) -> dict[str, Any]:
    """Threshold one contrast's z map with fpr/fdr/bonferroni, write the map, its cluster table and figures."""
    two_sided = effective_two_sided(result, params.two_sided)
    threshold = parametric.height_threshold(result.z, method, params.alpha, two_sided)  # NaN z: not a test
    z = np.where(np.isfinite(result.z), result.z, 0.0)
    z3d = data.unmask(z)
    thresholded = clusters.threshold_map(z3d, data.mask, threshold, params.cluster_threshold, two_sided)
    table = clusters.cluster_table(z3d, data.affine, threshold, params.cluster_threshold, two_sided)
    meta = dict(contrast=contrast.name, correction=method, alpha=params.alpha,
                threshold=threshold if np.isfinite(threshold) else None)
    writer.map(thresholded, data.affine, stat="z", two_sided=two_sided,
               cluster_threshold=params.cluster_threshold, **meta)
    writer.table(table, suffix="clusters", kind="clusters", stat="z", **meta)
    n_surviving = int(np.count_nonzero(thresholded))
    n_clusters = _count_clusters(table)
    peak = float(z[np.argmax(np.abs(z))]) if z.size else float("nan")
    log.info("contrast %s, %s alpha=%g: threshold z=%.3f, %d voxel(s) in %d cluster(s)", contrast.name, method,
             params.alpha, threshold, n_surviving, n_clusters)
    if report:
        write_map_figures(writer, data, thresholded, threshold, contrast.name, "z", method,
                          f"{contrast.name}: z, {method} alpha={params.alpha:g}")
    return {"threshold": threshold, "n_voxels": n_surviving, "n_clusters": n_clusters, "peak": peak,
            "alpha": params.alpha}


def ari_inference(writer: OutputWriter, data: GroupData, contrast: Contrast, result: glm.ContrastResult,
                  params: Any, report: bool = True) -> dict[str, Any]:
    """All-Resolutions Inference on one contrast's z map: the TDP map and the cluster table."""
    z = np.where(np.isfinite(result.z), result.z, 0.0)
    signs = [1.0, -1.0] if effective_two_sided(result, params.two_sided) else [1.0]
    tables, tdp_total = [], np.zeros(data.mask.shape)
    for sign in signs:
        tdp3d, table = ari.cluster_tdp(data.unmask(sign * z), data.mask, params.thresholds, params.alpha,
                                       affine=data.affine)
        tdp_total = np.where(tdp3d > 0, sign * tdp3d, tdp_total) if sign < 0 else tdp3d
        tables.append(table.assign(sign="positive" if sign > 0 else "negative"))
    table = pd.concat(tables, ignore_index=True)
    meta = dict(contrast=contrast.name, correction="ari", alpha=params.alpha)
    writer.map(tdp_total, data.affine, stat="tdp", thresholds=list(params.thresholds), **meta)
    writer.table(table, suffix="clusters", kind="clusters", stat="tdp", **meta)
    inside = tdp_total != 0
    z3d = data.unmask(z)
    peak_index = np.unravel_index(int(np.argmax(np.where(inside, np.abs(z3d), -1.0))), z3d.shape)
    peak_mm = tuple(float(v) for v in (data.affine @ np.r_[peak_index, 1.0])[:3]) if inside.any() else None
    if report:
        write_map_figures(writer, data, tdp_total, None, contrast.name, "tdp", "ari",
                          f"{contrast.name}: true-discovery proportion (ARI, alpha={params.alpha:g})",
                          cut_coords_mm=peak_mm)
    return {"threshold": float(min(params.thresholds)), "n_voxels": int(np.count_nonzero(tdp_total)),
            "n_clusters": int(len(table)), "peak": float(z3d[peak_index]) if inside.any() else 0.0,
            "max_tdp": float(np.max(np.abs(tdp_total))) if tdp_total.size else 0.0, "alpha": params.alpha}


# -- figures -----------------------------------------------------------------------------------------------------
def background_for(data: GroupData) -> np.ndarray:
    """The bundled MNI T1 template on the data grid (background of the brain figures)."""
    return _background(tuple(data.mask.shape), data.affine.tobytes())


@functools.lru_cache(maxsize=4)
def _background(shape: tuple[int, ...], affine_bytes: bytes) -> np.ndarray:
    from runner.data.images import Grid, resample
    from runner.resources import mni_template

    template = mni_template(2)
    source = Grid(tuple(template.shape[:3]), template.affine)  # type: ignore[arg-type]
    target = Grid(shape, np.frombuffer(affine_bytes).reshape(4, 4))  # type: ignore[arg-type]
    return resample(np.asarray(template.dataobj, dtype=float), source, target)


def write_map_figures(writer: OutputWriter, data: GroupData, volume: np.ndarray, threshold: float | None,
                      contrast: str, stat: str, correction: str | None, title: str,
                      cut_coords_mm: tuple[float, float, float] | None = None) -> None:
    """Orthogonal slices through the peak (or ``cut_coords_mm``), an axial montage and a glass brain of one map."""
    from runner.outputs import figures_brain

    background = background_for(data)
    shown = threshold if threshold is not None and np.isfinite(threshold) else None
    base = f"contrast-{_label(contrast)}_stat-{_label(stat)}" + (f"_corr-{_label(correction)}" if correction else "")
    meta = dict(contrast=contrast, stat=stat, correction=correction)
    writer.figure(figures_brain.stat_map_slices_figure(volume, data.affine, background, shown, title,
                                                       cut_coords_mm=cut_coords_mm),
                  name=f"{base}_slices.png", view="slices", **meta)
    writer.figure(figures_brain.stat_map_montage_figure(volume, data.affine, background, shown, title),
                  name=f"{base}_montage.png", view="montage", **meta)
    writer.figure(figures_brain.glass_brain_figure(volume, data.affine, shown, title, mask=data.mask),
                  name=f"{base}_glassbrain.png", view="glassbrain", **meta)


def _count_clusters(table: pd.DataFrame) -> int:
    if table.empty:
        return 0
    return int(table["size_voxels"].notna().sum())


def _label(text: str) -> str:
    from runner.outputs.naming import safe_label

    return safe_label(text)
