"""Write the design, the contrast maps and the per-contrast figures through the OutputWriter."""

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
from runner.outputs.method_outputs import write_surface_map
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
            if data.surface is not None:
                write_surface_map(writer, data.surface, np.asarray(maps[stat], dtype=float), contrast=contrast.name,
                                  stat=stat, dof=result.dof, stat_type=result.stat_type)
                continue
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
    if data.surface is not None:
        peak_mm = data.space.coordinates(np.array([peak]))[0]
    else:
        peak_mm = data.affine @ np.r_[np.argwhere(data.mask)[peak], 1.0]
    name = design.columns[column]
    title = (f"{contrast.name}: peak voxel ({peak_mm[0]:.0f}, {peak_mm[1]:.0f}, {peak_mm[2]:.0f}) mm, "
             f"z = {z[peak]:.2f}")
    figure = figures.covariate_scatter_figure(adjusted, X[:, column], name, title, fitted=(float(nuisance.mean()), float(beta[column])),
                                              value_label="value adjusted for other regressors")
    writer.figure(figure, name=f"contrast-{_label(contrast.name)}_scatter.png", contrast=contrast.name,
                  view="scatter", peak_mm=[float(v) for v in peak_mm[:3]])


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
                      cut_coords_mm: tuple[float, float, float] | None = None, vmax: float | None = None) -> None:
    """Orthogonal slices through ``cut_coords_mm`` (the reported peak; default the map's largest ``|value|``), an
    axial montage and a glass brain of one map; ``vmax`` ends the colour scale (default the largest ``|value|``).

    The slices figure's manifest entry records where it cuts (``cut_coords_mm``, snapped to a voxel centre).
    """
    from runner.outputs import figures_brain
    from runner.outputs.figures_geometry import slice_cut_coords

    background = background_for(data)
    cut = slice_cut_coords(volume, data.affine, cut_coords_mm, background)
    shown = threshold if threshold is not None and np.isfinite(threshold) else None
    base = f"contrast-{_label(contrast)}_stat-{_label(stat)}" + (f"_desc-{_label(correction)}" if correction else "")
    meta = dict(contrast=contrast, stat=stat, correction=correction)
    writer.figure(figures_brain.stat_map_slices_figure(volume, data.affine, background, shown, title,
                                                       cut_coords_mm=cut, vmax=vmax),
                  name=f"{base}_slices.png", view="slices", cut_coords_mm=[float(v) for v in cut], **meta)
    writer.figure(figures_brain.stat_map_montage_figure(volume, data.affine, background, shown, title, vmax=vmax),
                  name=f"{base}_montage.png", view="montage", **meta)
    writer.figure(figures_brain.glass_brain_figure(volume, data.affine, shown, title, mask=data.mask, vmax=vmax),
                  name=f"{base}_glassbrain.png", view="glassbrain", **meta)


def _label(text: str) -> str:
    from runner.outputs.naming import safe_label

    return safe_label(text)
