"""Figures of a run: design and contrast matrices, permutation nulls, covariate scatter and multirun summaries.

Every function is pure: arrays or DataFrames in, a new :class:`matplotlib.figure.Figure` out, built without pyplot
so figures can be made from several threads; :class:`runner.outputs.writer.OutputWriter` saves them. The brain
figures live in :mod:`runner.outputs.figures_brain` and are re-exported here.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from runner.outputs.figures_brain import (
    STAT_COLORMAP,
    glass_brain_figure,
    stat_map_montage_figure,
    stat_map_slices_figure,
)
from runner.outputs.figures_geometry import peak_coordinates_mm, slice_cut_coords

__all__ = [
    "STAT_COLORMAP",
    "contrast_matrix_figure",
    "covariate_scatter_figure",
    "design_matrix_figure",
    "glass_brain_figure",
    "interval_figure",
    "null_distribution_figure",
    "peak_coordinates_mm",
    "slice_cut_coords",
    "stat_map_montage_figure",
    "stat_map_slices_figure",
    "surviving_voxels_figure",
]

MATRIX_COLORMAP = "RdBu_r"
MAX_LABEL_CHARACTERS = 32
MAX_ANNOTATED_COLUMNS = 16
LABEL_ROTATION = 55.0
POINT_COLOUR = "#2b6cb0"
LINE_COLOUR = "#c53030"


def design_matrix_figure(design: pd.DataFrame) -> Figure:
    """The design matrix as a grey heat map (rows = maps) beside the cosine similarity of its columns.

    Each column is divided by its largest absolute value before display, as nilearn's ``plot_design_matrix``
    does, so regressors on different scales (age in years, a 0/1 dummy) stay readable. The cosine matrix shows how
    far from orthogonal the regressors are (1 or -1: collinear, 0: orthogonal).

    Parameters
    ----------
    design : pandas.DataFrame
        Design matrix, maps x regressors, columns named.

    Returns
    -------
    matplotlib.figure.Figure
        Axes labelled ``"design_matrix"`` and ``"orthogonality"`` (plus their colour bars); one x tick label per
        column, in column order.
    """
    names = [str(c) for c in design.columns]
    values = design.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float) if len(names) else np.zeros((0, 0))
    n_maps, n_columns = values.shape
    labels = [_short_label(n) for n in names]
    width = float(np.clip(4.0 + 0.9 * n_columns, 9.0, 12.0))
    label_size = _label_size(min((width - 2.5) / 2.25, 4.5) / max(n_columns, 1))
    fig = Figure(figsize=(width, 6.5), layout="constrained")
    heat_ax, cosine_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.25]})
    heat_ax.set_label("design_matrix")
    cosine_ax.set_label("orthogonality")
    fig.suptitle(f"Design matrix: {n_maps} maps × {n_columns} regressors", fontsize=13)

    if n_maps == 0 or n_columns == 0:
        for ax in (heat_ax, cosine_ax):
            ax.set_axis_off()
            ax.text(0.5, 0.5, "empty design matrix", ha="center", va="center", transform=ax.transAxes)
        return fig

    scale = np.abs(np.where(np.isfinite(values), values, 0.0)).max(axis=0)
    scaled = values / np.where(scale > 0, scale, 1.0)
    lowest = float(np.min(scaled, where=np.isfinite(scaled), initial=0.0))
    image = heat_ax.imshow(np.ma.masked_invalid(scaled), cmap="gray", vmin=min(0.0, lowest), vmax=1.0,
                           aspect="auto", interpolation="nearest")
    _column_labels_on_top(heat_ax, labels, label_size)
    heat_ax.set_ylabel("map (row of the design)")
    heat_ax.yaxis.get_major_locator().set_params(integer=True)
    heat_ax.set_title("regressors (each scaled by its max |value|)", fontsize=10, loc="left")
    fig.colorbar(image, ax=heat_ax, location="bottom", shrink=0.6, pad=0.02, label="value / max |value|")

    cosine = _cosine_similarity(values)
    image = cosine_ax.imshow(np.ma.masked_invalid(cosine), cmap=MATRIX_COLORMAP, vmin=-1.0, vmax=1.0,
                             interpolation="nearest")
    _column_labels_on_top(cosine_ax, labels, label_size)
    cosine_ax.set_yticks(range(n_columns), labels, fontsize=label_size)
    cosine_ax.set_title("orthogonality: cosine of columns", fontsize=10, loc="left")
    if n_columns <= MAX_ANNOTATED_COLUMNS:
        _annotate_cells(cosine_ax, cosine, Normalize(-1.0, 1.0), fontsize=float(np.clip(120 / n_columns, 6, 10)),
                        fixed_decimals=True)
    fig.colorbar(image, ax=cosine_ax, shrink=0.6, pad=0.02, label="cosine similarity")
    return fig


def contrast_matrix_figure(contrast: np.ndarray, column_names: list[str], name: str, *,
                           stat_type: str | None = None) -> Figure:
    """The contrast weights over the design's columns, values written in the cells.

    Parameters
    ----------
    contrast : np.ndarray
        Weights, shape ``(q, p)`` (a vector is taken as one row).
    column_names : list of str
        The ``p`` design-matrix column names.
    name : str
        Contrast name, used in the title.
    stat_type : {"t", "F"}, optional
        Shown in the title; default t for one row, F for several.

    Returns
    -------
    matplotlib.figure.Figure
        One axes labelled ``"contrast_matrix"``; weights written in the cells (a colour bar instead when there are
        too many columns to write them).
    """
    weights = np.atleast_2d(np.asarray(contrast, dtype=float))
    n_rows, n_columns = weights.shape
    labels = [_short_label(str(c)) for c in column_names]
    if len(labels) != n_columns:
        labels = (labels + [f"column {i + 1}" for i in range(len(labels), n_columns)])[:n_columns]
    annotated = n_columns <= 2 * MAX_ANNOTATED_COLUMNS
    cell = float(np.clip(9.0 / max(n_columns, 1), 0.25, 0.8))
    label_size = _label_size(cell)
    label_room = 0.08 * max((len(s) for s in labels), default=0)
    width = float(np.clip(1.8 + cell * n_columns + (0 if annotated else 1.2), 5.0, 12.0))
    height = float(np.clip(1.0 + cell * n_rows + label_room, 2.5, 8.0))
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot(label="contrast_matrix")
    stat_type = stat_type or ("t" if n_rows == 1 else "F")
    kind = f"{stat_type} contrast" + ("" if n_rows == 1 else f", {n_rows} rows")
    fig.suptitle(f"Contrast: {name} ({kind})", fontsize=13)

    largest = float(np.abs(weights).max(where=np.isfinite(weights), initial=0.0))
    norm = Normalize(-largest if largest > 0 else -1.0, largest if largest > 0 else 1.0)
    image = ax.imshow(np.ma.masked_invalid(weights), cmap=MATRIX_COLORMAP, norm=norm, aspect="equal",
                      interpolation="nearest")
    _column_labels_on_top(ax, labels, label_size)
    row_labels = [name] if n_rows == 1 else [f"row {i + 1}" for i in range(n_rows)]
    ax.set_yticks(range(n_rows), [_short_label(r, 24) for r in row_labels], fontsize=10)
    if annotated:
        # The weights are written in the cells, so the colours need no colour bar.
        _annotate_cells(ax, weights, norm, fontsize=float(np.clip(160 / max(n_columns, 1), 6, 10)), digits=3)
    else:
        fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02, label="weight")
    return fig


def null_distribution_figure(null_max: np.ndarray, observed_max: float, threshold: float, title: str,
                             fitted: tuple[np.ndarray, np.ndarray] | None = None, fitted_label: str = "") -> Figure:
    """Histogram of the permutation distribution of the maximum statistic, observed maximum and threshold marked.

    Parameters
    ----------
    null_max : np.ndarray
        Maximum statistic of each permutation (NaN values are dropped).
    observed_max : float
        Maximum statistic of the unpermuted data.
    threshold : float
        Corrected threshold taken from this distribution (e.g. its 95th percentile).
    title : str
        Figure title.
    fitted : (x, density), optional
        A distribution fitted to the null (e.g. its tail), as permutations per unit of the statistic: drawn as a
        line scaled to the histogram's bin width.
    fitted_label : str
        Legend entry of the fitted line.

    Returns
    -------
    matplotlib.figure.Figure
        One axes labelled ``"null_distribution"``.
    """
    null = np.asarray(null_max, dtype=float).ravel()
    null = null[np.isfinite(null)]
    fig = Figure(figsize=(8.0, 4.5), layout="constrained")
    ax = fig.add_subplot(label="null_distribution")
    ax.set_title(title or "Permutation null distribution of the maximum statistic", fontsize=12)
    ax.set_xlabel("maximum statistic over the map, per permutation")
    ax.set_ylabel("permutations")
    observed_label = None
    if null.size:
        bins = int(np.clip(np.sqrt(null.size) * 2, 10, 60))
        _, edges, _ = ax.hist(null, bins=bins, color="#a0aec0", edgecolor="#4a5568", linewidth=0.5,
                              label=f"null ({null.size} permutations)")
        if fitted is not None:
            x, density = fitted
            ax.plot(x, np.asarray(density) * (edges[1] - edges[0]), color="#2b6cb0", linewidth=1.8,
                    label=fitted_label or "fitted")
        if observed_max is not None and np.isfinite(observed_max):
            n_reaching = int(np.sum(null >= observed_max))
            observed_label = (f"observed maximum = {observed_max:.3g}\n"
                              f"({n_reaching} of {null.size} permutations reach it)")
    else:
        ax.text(0.5, 0.5, "no permutations to show", transform=ax.transAxes, ha="center", va="center")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.5, label=f"threshold = {threshold:.3g}")
    if observed_max is not None and np.isfinite(observed_max):
        ax.axvline(observed_max, color=LINE_COLOUR, linewidth=2.0,
                   label=observed_label or f"observed maximum = {observed_max:.3g}")
    ax.spines[["top", "right"]].set_visible(False)
    if ax.get_legend_handles_labels()[0]:
        # Below the axes: the vertical lines can be anywhere, so a legend inside would hide one of them.
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    return fig


def interval_figure(labels: list[str] | tuple[str, ...], estimates: np.ndarray, lows: np.ndarray,
                    highs: np.ndarray, reference: float, reference_label: str, xlabel: str, title: str) -> Figure:
    """Point estimates with their intervals (one row per label, first on top) and a vertical reference line.

    Parameters
    ----------
    labels : sequence of str
        Row labels.
    estimates, lows, highs : np.ndarray
        Estimate and interval bounds per row.
    reference : float
        Where the reference line is drawn (e.g. the nominal alpha).
    reference_label, xlabel, title : str
        Legend entry of the line, axis label, title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes labelled ``"intervals"``.
    """
    estimates, lows, highs = (np.asarray(v, dtype=float).ravel() for v in (estimates, lows, highs))
    n = len(labels)
    fig = Figure(figsize=(8.0, 1.2 + 0.45 * max(n, 1)), layout="constrained")
    ax = fig.add_subplot(label="intervals")
    rows = np.arange(n)[::-1]
    ax.errorbar(estimates, rows, xerr=[estimates - lows, highs - estimates], fmt="o", color=POINT_COLOUR,
                ecolor=POINT_COLOUR, capsize=4, label="estimate and 95% interval")
    ax.axvline(reference, color=LINE_COLOUR, linestyle="--", label=reference_label)
    ax.set_yticks(rows, [_short_label(str(label)) for label in labels])
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlim(0.0, max(float(np.nanmax(highs)) if n else 0.0, reference) * 1.15 or 1.0)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=12)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig


def covariate_scatter_figure(values: np.ndarray, covariate: np.ndarray, covariate_name: str, title: str,
                             fitted: tuple[float, float] | None = None, groups: np.ndarray | None = None,
                             *, value_label: str = "value at the peak voxel") -> Figure:
    """Each map's value at a voxel (e.g. the peak of a VBM effect) against a covariate, with the fitted line.

    Parameters
    ----------
    values : np.ndarray
        Shape ``(n,)``: one value per map.
    covariate : np.ndarray
        Shape ``(n,)``: the covariate of each map.
    covariate_name : str
        Axis label for the covariate.
    title : str
        Figure title.
    fitted : tuple of float, optional
        ``(intercept, slope)`` of the model's line; with other regressors in the model this is the line at
        their reference values, drawn as given.
    groups : np.ndarray, optional
        Shape ``(n,)``: a group label per map; points are coloured by group.
    value_label : str
        Axis label for the values.

    Returns
    -------
    matplotlib.figure.Figure
        One axes labelled ``"covariate_scatter"``; pairs with a missing value are left out.
    """
    y = np.asarray(values, dtype=float).ravel()
    x = np.asarray(covariate, dtype=float).ravel()
    group_labels = None if groups is None else np.asarray(groups).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    ax = fig.add_subplot(label="covariate_scatter")
    ax.set_title(title or f"{value_label} against {covariate_name}", fontsize=12)
    ax.set_xlabel(covariate_name)
    ax.set_ylabel(value_label)
    ax.spines[["top", "right"]].set_visible(False)
    if not keep.any():
        ax.text(0.5, 0.5, "no maps with finite values", transform=ax.transAxes, ha="center", va="center")
        return fig

    if group_labels is not None and group_labels.shape == y.shape:
        palette = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#718096"]
        for number, level in enumerate(sorted(pd.unique(group_labels[keep]), key=str)):
            chosen = keep & (group_labels == level)
            ax.scatter(x[chosen], y[chosen], s=28, alpha=0.8, color=palette[number % len(palette)],
                       edgecolor="white", linewidth=0.5, label=f"{level} (n={int(chosen.sum())})")
    else:
        ax.scatter(x[keep], y[keep], s=28, alpha=0.8, color=POINT_COLOUR, edgecolor="white", linewidth=0.5,
                   label=f"maps (n={int(keep.sum())})")
    if fitted is not None and all(np.isfinite(fitted)):
        intercept, slope = (float(v) for v in fitted)
        line_x = np.linspace(x[keep].min(), x[keep].max(), 2)
        ax.plot(line_x, intercept + slope * line_x, color=LINE_COLOUR, linewidth=2.0,
                label=f"fit: {intercept:.3g} {'+' if slope >= 0 else '−'} {abs(slope):.3g} × {covariate_name}")
    ax.legend(fontsize=9, frameon=False, loc="best")
    return fig


def surviving_voxels_figure(frame: pd.DataFrame, x: str, y: str, hue: str | None = None,
                            *, title: str | None = None) -> Figure:
    """A multirun summary: ``y`` (e.g. voxels surviving) against a swept parameter ``x``, one line per ``hue``.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per run.
    x, y : str
        Columns for the horizontal axis (numeric, or categories in order of appearance) and the vertical axis.
    hue : str, optional
        Column whose levels get separate lines.
    title : str, optional
        Figure title; default ``"<y> by <x>"``.

    Returns
    -------
    matplotlib.figure.Figure
        One axes labelled ``"surviving_voxels"``.
    """
    fig = Figure(figsize=(8.0, 4.5), layout="constrained")
    ax = fig.add_subplot(label="surviving_voxels")
    ax.set_title(title or f"{y} by {x}", fontsize=12)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.spines[["top", "right"]].set_visible(False)
    missing = [c for c in (x, y) + ((hue,) if hue else ()) if c not in frame.columns]
    data = frame.loc[:, []] if missing else frame.assign(_y=pd.to_numeric(frame[y], errors="coerce"))
    if missing or data.empty or not data["_y"].notna().any():
        reason = f"missing columns: {', '.join(missing)}" if missing else "no runs to summarise"
        ax.text(0.5, 0.5, reason, transform=ax.transAxes, ha="center", va="center")
        return fig

    numeric_x = pd.api.types.is_numeric_dtype(data[x])
    categories = list(pd.unique(data[x]))
    groups = [(None, data)] if hue is None else list(data.groupby(hue, sort=True, dropna=False))
    for level, rows in groups:
        rows = rows[rows["_y"].notna()]
        if numeric_x:
            rows = rows.sort_values(x)
            positions = rows[x].to_numpy(dtype=float)
        else:
            positions = np.array([categories.index(v) for v in rows[x]], dtype=float)
            order = np.argsort(positions, kind="stable")
            rows, positions = rows.iloc[order], positions[order]
        ax.plot(positions, rows["_y"].to_numpy(dtype=float), marker="o", linewidth=1.8, markersize=5,
                label=None if hue is None else f"{hue} = {level}")
    if not numeric_x:
        ax.set_xticks(range(len(categories)), [str(c) for c in categories])
    if hue is not None:
        ax.legend(fontsize=9, frameon=False, loc="best")
    ax.grid(axis="y", color="#e2e8f0", linewidth=0.8)
    ax.set_axisbelow(True)
    return fig


# -- helpers -----------------------------------------------------------------------------------------------------
def _cosine_similarity(values: np.ndarray) -> np.ndarray:
    """Cosine of the angle between columns; NaN for an all-zero column (no direction)."""
    filled = np.where(np.isfinite(values), values, 0.0)
    norms = np.linalg.norm(filled, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = filled / norms
        cosine = unit.T @ unit
    cosine[~np.isfinite(cosine)] = np.nan
    return np.clip(cosine, -1.0, 1.0)


def _label_size(column_spacing_inches: float) -> float:
    """Font size (points) at which labels rotated by LABEL_ROTATION on columns this far apart do not overlap."""
    perpendicular_gap = column_spacing_inches * 72.0 * np.sin(np.radians(LABEL_ROTATION))
    return float(np.clip(perpendicular_gap / 1.3, 5.0, 10.0))  # a line of text is ~1.3 font sizes high


def _column_labels_on_top(ax, labels: list[str], fontsize: float) -> None:
    """Column names above a matrix, rotated so long patsy names do not overlap."""
    ax.xaxis.tick_top()
    ax.set_xticks(range(len(labels)), labels, rotation=LABEL_ROTATION, ha="left", rotation_mode="anchor",
                  fontsize=fontsize)
    ax.tick_params(axis="x", length=2, pad=2)


def _annotate_cells(ax, matrix: np.ndarray, norm: Normalize, fontsize: float, digits: int = 2,
                    fixed_decimals: bool = False) -> None:
    """Write each cell's value (white on dark cells); empty cells say n/a.

    Values get ``digits`` significant digits (integers as integers) or, with ``fixed_decimals``, ``digits``
    decimals so a matrix of similarities reads as a table.
    """
    for (row, column), value in np.ndenumerate(matrix):
        if not np.isfinite(value):
            ax.text(column, row, "n/a", ha="center", va="center", fontsize=fontsize, color="0.4")
            continue
        value = float(value) + 0.0  # no "-0"
        if fixed_decimals:
            text = f"{value:.{digits}f}"
        elif value == round(value):
            text = f"{value:.0f}"
        else:
            text = f"{value:.{digits}g}"
        dark = abs(norm(value) - 0.5) > 0.3
        ax.text(column, row, text, ha="center", va="center", fontsize=fontsize, color="white" if dark else "black")


# The coding arguments of a patsy term: C(group, Treatment(reference='control'))[T.patient] -> C(group)[T.patient]
_PATSY_CODING = re.compile(r"C\(\s*([^,()]+?)\s*,[^\[]*\)(?=\[)")


def _short_label(label: str, limit: int = MAX_LABEL_CHARACTERS) -> str:
    """A column name as shown: unchanged up to ``limit`` characters, else without patsy coding arguments and,
    if still too long, shortened in the middle (both ends carry meaning in patsy names)."""
    if len(label) <= limit:
        return label
    label = _PATSY_CODING.sub(r"C(\1)", label)
    if len(label) <= limit:
        return label
    keep = (limit - 1) // 2
    return f"{label[:keep]}…{label[-keep:]}"
