"""Brain figures of a statistical map: orthogonal slices, an axial montage and a glass brain.

Pure functions: arrays in, a new :class:`matplotlib.figure.Figure` out (no pyplot state, so figures can be built
from several threads). Neurological convention as in nilearn: left hemisphere on the left, anterior on the right
of sagittal views. NaN is drawn as empty; a map where nothing survives still gives a figure whose title says so.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import Colormap, LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure
from scipy.ndimage import gaussian_filter

from runner.outputs.figures_geometry import (
    RasGrid,
    display_bounds,
    finite_or_zero,
    signed_maximum_projection,
    slice_cut_coords,
    to_ras,
)

# cold-hot: positive dark red -> red -> yellow, negative dark blue -> blue -> light blue. Values near 0 are dark
# (quiet on an unthresholded map), while anything past a typical threshold (a third of the range or more) is
# already bright red or blue, so survivors stand out on a grey anatomy and on white.
STAT_COLORMAP = LinearSegmentedColormap.from_list(
    "runner_cold_hot",
    [(0.0, (0.6, 0.95, 1.0)), (0.25, (0.0, 0.55, 1.0)), (0.4, (0.0, 0.1, 0.85)), (0.5, (0.12, 0.12, 0.25)),
     (0.5, (0.25, 0.12, 0.12)), (0.6, (0.85, 0.0, 0.0)), (0.75, (1.0, 0.4, 0.0)), (1.0, (1.0, 1.0, 0.3))],
)

FIGURE_WIDTH_INCHES = 10.0
DARK_BACKGROUND = "black"
DARK_TEXT = "white"
LIGHT_TEXT = "black"

# Views as (name, axis sliced or projected, horizontal axis, vertical axis) on the RAS grid.
ORTHOGONAL_VIEWS = (("sagittal", 0, 1, 2), ("coronal", 1, 0, 2), ("axial", 2, 0, 1))
AXIS_NAMES = "xyz"


def stat_map_slices_figure(volume: np.ndarray, affine: np.ndarray, background: np.ndarray | None = None,
                           threshold: float | None = None, title: str = "",
                           cut_coords_mm: tuple[float, float, float] | None = None, vmax: float | None = None,
                           *, cmap: str | Colormap = STAT_COLORMAP) -> Figure:
    """Sagittal, coronal and axial slices through the peak, stats over a grey background.

    Parameters
    ----------
    volume : np.ndarray
        3D statistical map; NaN is drawn as empty.
    affine : np.ndarray
        4x4 axis-aligned affine shared by ``volume`` and ``background`` (any voxel size, flips allowed).
    background : np.ndarray, optional
        3D anatomy on the same grid, drawn in grey.
    threshold : float, optional
        Voxels with ``|value| >= threshold`` are coloured; None colours every non-zero voxel.
    title : str
        First line of the title; the second states the threshold and how many voxels survive.
    cut_coords_mm : tuple of float, optional
        Where the slices cut (snapped to a voxel centre); default the peak ``|value|`` voxel, see
        :func:`runner.outputs.figures_geometry.slice_cut_coords`.
    vmax : float, optional
        End of the symmetric colour scale; default the largest ``|value|``.
    cmap : str or Colormap
        Diverging colour map for the statistic.

    Returns
    -------
    matplotlib.figure.Figure
        Axes labelled ``"sagittal"``, ``"coronal"``, ``"axial"`` (crosshair lines carry gid ``"crosshair"``) and
        ``"colorbar"``.
    """
    stat = finite_or_zero(volume)
    cut = slice_cut_coords(stat, affine, cut_coords_mm, background)
    stat_ras, grid = to_ras(stat, affine)
    background_ras = None if background is None else to_ras(finite_or_zero(background), affine)[0]
    survivors = _survivors(stat_ras, threshold)
    cut_index = tuple(grid.index_of(axis, cut[axis]) for axis in range(3))
    lower, upper = display_bounds([None if background_ras is None else background_ras != 0, stat_ras != 0],
                                  grid.shape)
    lower = tuple(min(low, c) for low, c in zip(lower, cut_index))
    upper = tuple(max(up, c) for up, c in zip(upper, cut_index))
    extents = {axis: grid.edges(axis, lower[axis], upper[axis]) for axis in range(3)}
    aspects = [_span(extents[h]) / _span(extents[v]) for _, _, h, v in ORTHOGONAL_VIEWS]

    panels, colorbar_rect, height = _row_layout(aspects, gap=0.08, label_room=0.3)
    fig = Figure(figsize=(FIGURE_WIDTH_INCHES, height), facecolor=DARK_BACKGROUND)

    norm = _symmetric_norm(stat, vmax)
    for (name, fixed, horizontal, vertical), rect in zip(ORTHOGONAL_VIEWS, panels):
        ax = fig.add_axes(rect, label=name)
        stat_slice = np.take(stat_ras, cut_index[fixed], axis=fixed).T
        keep = np.take(survivors, cut_index[fixed], axis=fixed).T
        background_slice = None if background_ras is None else np.take(background_ras, cut_index[fixed],
                                                                       axis=fixed).T
        _draw_slice(ax, grid, horizontal, vertical, stat_slice, keep, background_slice, background_ras, norm, cmap)
        ax.set_xlim(extents[horizontal])
        ax.set_ylim(extents[vertical])
        for line in (ax.axvline(cut[horizontal], color=DARK_TEXT, linewidth=0.8, alpha=0.75),
                     ax.axhline(cut[vertical], color=DARK_TEXT, linewidth=0.8, alpha=0.75)):
            line.set_gid("crosshair")
        _coordinate_label(ax, f"{AXIS_NAMES[fixed]} = {_mm(cut[fixed])} mm", fontsize=11)
        _orientation_letters(ax, horizontal, DARK_TEXT)

    if survivors.any():  # nothing coloured, nothing for a colour bar to explain
        _draw_colorbar(fig, colorbar_rect, stat, norm, threshold, cmap, DARK_TEXT)
    _draw_title(fig, title, threshold, int(survivors.sum()), height, DARK_TEXT)
    return fig


def stat_map_montage_figure(volume: np.ndarray, affine: np.ndarray, background: np.ndarray | None = None,
                            threshold: float | None = None, title: str = "", n_slices: int = 12,
                            *, vmax: float | None = None, cmap: str | Colormap = STAT_COLORMAP) -> Figure:
    """Axial slices evenly spaced through the brain (a lightbox), stats over a grey background.

    Parameters
    ----------
    volume, affine, background, threshold, title, vmax, cmap
        As in :func:`stat_map_slices_figure`.
    n_slices : int
        Number of axial slices, spread evenly over the extent of the background (or of the map without one);
        fewer when the grid has fewer slices.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per slice, labelled ``"axial z=<mm>"``, plus ``"colorbar"``.
    """
    stat = finite_or_zero(volume)
    stat_ras, grid = to_ras(stat, affine)
    background_ras = None if background is None else to_ras(finite_or_zero(background), affine)[0]
    survivors = _survivors(stat_ras, threshold)
    lower, upper = display_bounds([None if background_ras is None else background_ras != 0, stat_ras != 0],
                                  grid.shape, margin=1)
    z_indices = _evenly_spaced(lower[2], upper[2], max(int(n_slices), 1))
    x_extent, y_extent = grid.edges(0, lower[0], upper[0]), grid.edges(1, lower[1], upper[1])
    aspect = _span(x_extent) / _span(y_extent)

    n_columns = min(len(z_indices), 6)
    n_rows = int(np.ceil(len(z_indices) / n_columns))
    title_height, bottom, left, colorbar_room, gap, label_room = 0.75, 0.05, 0.05, 0.9, 0.04, 0.25
    panel_width = (FIGURE_WIDTH_INCHES - left - colorbar_room - gap * (n_columns - 1)) / n_columns
    panel_height = panel_width / aspect
    if panel_height > 3.2:
        panel_height, panel_width = 3.2, 3.2 * aspect
    row_height = panel_height + label_room
    height = title_height + bottom + n_rows * row_height + (n_rows - 1) * gap
    fig = Figure(figsize=(FIGURE_WIDTH_INCHES, height), facecolor=DARK_BACKGROUND)

    norm = _symmetric_norm(stat, vmax)
    for number, z_index in enumerate(z_indices):
        row, column = divmod(number, n_columns)
        x0 = left + column * (panel_width + gap)
        y0 = height - title_height - (row + 1) * row_height - row * gap + label_room
        z_mm = float(grid.centres(2)[z_index])
        ax = fig.add_axes(_fraction(x0, y0, panel_width, panel_height, height), label=f"axial z={_mm(z_mm)}")
        background_slice = None if background_ras is None else background_ras[:, :, z_index].T
        _draw_slice(ax, grid, 0, 1, stat_ras[:, :, z_index].T, survivors[:, :, z_index].T, background_slice,
                    background_ras, norm, cmap)
        ax.set_xlim(x_extent)
        ax.set_ylim(y_extent)
        _coordinate_label(ax, f"z = {_mm(z_mm)}", fontsize=9)
        if number == 0:
            _orientation_letters(ax, 0, DARK_TEXT, fontsize=9)

    grid_height = n_rows * row_height + (n_rows - 1) * gap
    colorbar_left = left + n_columns * panel_width + (n_columns - 1) * gap + 0.3
    if survivors.any():
        _draw_colorbar(fig, _fraction(colorbar_left, bottom + 0.1 * grid_height, 0.16, 0.8 * grid_height, height),
                       stat, norm, threshold, cmap, DARK_TEXT)
    _draw_title(fig, title, threshold, int(survivors.sum()), height, DARK_TEXT)
    return fig


def glass_brain_figure(volume: np.ndarray, affine: np.ndarray, threshold: float | None = None, title: str = "",
                       mask: np.ndarray | None = None, *, vmax: float | None = None,
                       cmap: str | Colormap = STAT_COLORMAP) -> Figure:
    """Signed maximum-intensity projections (sagittal, coronal, axial) inside the outline of the brain mask.

    Each ray shows the value of largest magnitude with its sign, so positive and negative effects of a
    two-sided map both appear.

    Parameters
    ----------
    volume, affine, threshold, title, vmax, cmap
        As in :func:`stat_map_slices_figure`.
    mask : np.ndarray, optional
        3D analysis mask on the same grid; the outline of its projection is drawn in each view. Without it
        only the statistics are drawn, within the extent of the grid.

    Returns
    -------
    matplotlib.figure.Figure
        Axes labelled ``"sagittal"``, ``"coronal"``, ``"axial"`` and ``"colorbar"``.
    """
    stat = finite_or_zero(volume)
    stat_ras, grid = to_ras(stat, affine)
    mask_ras = None if mask is None else to_ras(finite_or_zero(mask) != 0, affine)[0]
    survivors = _survivors(stat_ras, threshold)
    lower, upper = display_bounds([mask_ras, stat_ras != 0], grid.shape, margin=2)
    extents = {axis: grid.edges(axis, lower[axis], upper[axis]) for axis in range(3)}
    aspects = [_span(extents[h]) / _span(extents[v]) for _, _, h, v in ORTHOGONAL_VIEWS]

    panels, colorbar_rect, height = _row_layout(aspects, gap=0.15)
    fig = Figure(figsize=(FIGURE_WIDTH_INCHES, height), facecolor="white")

    norm = _symmetric_norm(stat, vmax)
    for (name, projected, horizontal, vertical), rect in zip(ORTHOGONAL_VIEWS, panels):
        ax = fig.add_axes(rect, label=name)
        ax.set_axis_off()
        extent = (*grid.edges(horizontal), *grid.edges(vertical))
        if mask_ras is not None and mask_ras.any():
            _draw_outline(ax, grid, horizontal, vertical, mask_ras, projected)
        projection = signed_maximum_projection(np.where(survivors, stat_ras, 0.0), projected).T
        ax.imshow(np.ma.masked_equal(projection, 0.0), cmap=cmap, norm=norm, origin="lower", extent=extent,
                  interpolation="nearest", zorder=2)
        ax.set_xlim(extents[horizontal])
        ax.set_ylim(extents[vertical])
        _orientation_letters(ax, horizontal, LIGHT_TEXT)

    if survivors.any():
        _draw_colorbar(fig, colorbar_rect, stat, norm, threshold, cmap, LIGHT_TEXT)
    _draw_title(fig, title, threshold, int(survivors.sum()), height, LIGHT_TEXT)
    return fig


# -- layout ------------------------------------------------------------------------------------------------------
Rect = tuple[float, float, float, float]


def _row_layout(aspects: list[float], gap: float, title_height: float = 0.75, margin: float = 0.1,
                colorbar_room: float = 0.95, max_panel_height: float = 4.0,
                label_room: float = 0.0) -> tuple[list[Rect], Rect, float]:
    """Panels of a common height side by side (widths from their mm aspect), then a colour bar.

    Returns the panel rectangles and the colour-bar rectangle in figure fractions, and the figure height (inches);
    ``label_room`` inches are left under the panels for their coordinate labels.
    """
    available = FIGURE_WIDTH_INCHES - 2 * margin - colorbar_room - gap * (len(aspects) - 1)
    panel_height = min(available / sum(aspects), max_panel_height)
    bottom = margin + label_room
    height = panel_height + title_height + bottom
    x = margin + (available - panel_height * sum(aspects)) / 2.0
    panels = []
    for aspect in aspects:
        panels.append(_fraction(x, bottom, panel_height * aspect, panel_height, height))
        x += panel_height * aspect + gap
    colorbar = _fraction(x - gap + 0.3, bottom + 0.1 * panel_height, 0.16, 0.8 * panel_height, height)
    return panels, colorbar, height


def _fraction(left: float, bottom: float, width: float, height: float, figure_height: float) -> Rect:
    """A rectangle given in inches as figure fractions."""
    return (left / FIGURE_WIDTH_INCHES, bottom / figure_height, width / FIGURE_WIDTH_INCHES, height / figure_height)


# -- drawing helpers ---------------------------------------------------------------------------------------------
def _draw_slice(ax, grid: RasGrid, horizontal: int, vertical: int, stat_slice: np.ndarray, keep: np.ndarray,
                background_slice: np.ndarray | None, background_volume: np.ndarray | None, norm: Normalize,
                cmap: str | Colormap) -> None:
    """One slice: grey background, then the surviving statistics on top (slices are (vertical, horizontal))."""
    ax.set_axis_off()
    ax.set_facecolor(DARK_BACKGROUND)
    extent = (*grid.edges(horizontal), *grid.edges(vertical))
    if background_slice is not None and background_volume is not None:
        low, high = _background_limits(background_volume)
        ax.imshow(np.ma.masked_equal(background_slice, 0.0), cmap="gray", vmin=low, vmax=high, origin="lower",
                  extent=extent, interpolation="bilinear")
    ax.imshow(np.ma.masked_where(~keep, stat_slice), cmap=cmap, norm=norm, origin="lower", extent=extent,
              interpolation="nearest")


def _draw_outline(ax, grid: RasGrid, horizontal: int, vertical: int, mask: np.ndarray, projected: int) -> None:
    """Light fill, inner depth contours and a dark outline of the mask's projection (the 'glass')."""
    centres_h, centres_v = grid.centres(horizontal), grid.centres(vertical)
    # Thickness of the brain along each ray, smoothed by one voxel so the outline is not a staircase.
    thickness = gaussian_filter(mask.sum(axis=projected).astype(float).T, sigma=1.0)
    silhouette = gaussian_filter(mask.any(axis=projected).astype(float).T, sigma=1.0)
    ax.contourf(centres_h, centres_v, silhouette, levels=[0.5, 2.0], colors=["#f2f2f2"], zorder=0)
    deepest = thickness.max()
    if deepest > 0:
        ax.contour(centres_h, centres_v, thickness, levels=deepest * np.array([0.45, 0.75]), colors=["#c8c8c8"],
                   linewidths=0.8, zorder=1)
    ax.contour(centres_h, centres_v, silhouette, levels=[0.5], colors=["#3c3c3c"], linewidths=1.6, zorder=3)


def _draw_colorbar(fig: Figure, rect: tuple[float, float, float, float], stat: np.ndarray, norm: Normalize,
                   threshold: float | None, cmap: str | Colormap, text_colour: str) -> None:
    """A vertical colour bar over the signs present in the map, the sub-threshold band greyed out."""
    ax = fig.add_axes(rect, label="colorbar")
    vmax = float(norm.vmax)
    has_negative, has_positive = bool((stat < 0).any()), bool((stat > 0).any())
    low = -vmax if has_negative or not has_positive else 0.0
    high = vmax if has_positive or not has_negative else 0.0
    gradient = np.linspace(low, high, 256)[:, None]
    ax.imshow(gradient, cmap=cmap, norm=norm, aspect="auto", origin="lower", extent=(0.0, 1.0, low, high))
    ticks = [low, high]
    if threshold is not None and threshold > 0:
        band = min(float(threshold), vmax)
        ax.axhspan(max(low, -band), min(high, band), color="0.5", zorder=2)
        ticks += [t for t in (-band, band) if low <= t <= high]
    if low < 0 < high:
        ticks.append(0.0)
    ax.set_ylim(low, high)
    ax.set_xticks([])
    ax.yaxis.tick_right()
    ax.set_yticks(sorted(set(ticks)))
    ax.set_yticklabels([f"{t:.3g}" for t in sorted(set(ticks))])
    ax.tick_params(axis="y", colors=text_colour, labelsize=9, length=3)
    for spine in ax.spines.values():
        spine.set_edgecolor(text_colour)
        spine.set_linewidth(0.6)


def _draw_title(fig: Figure, title: str, threshold: float | None, n_surviving: int, height: float,
                colour: str) -> None:
    """Title on the first line; threshold and survivor count (or "no voxels survive") on the second."""
    if threshold is None:
        detail = f"unthresholded, {n_surviving} non-zero voxels" if n_surviving else "no voxels survive (empty map)"
    elif n_surviving:
        detail = f"threshold |stat| ≥ {threshold:.3g}, {n_surviving} voxels survive"
    else:
        detail = f"no voxels survive |stat| ≥ {threshold:.3g}"
    top = 1.0 - 0.12 / height
    fig.text(0.01, top, title or "Statistical map", color=colour, fontsize=13, ha="left", va="top",
             fontweight="bold")
    fig.text(0.01, top - 0.3 / height, detail, color=colour, fontsize=10, ha="left", va="top", alpha=0.85)


def _coordinate_label(ax, text: str, fontsize: float) -> None:
    """The slice position under its panel (not on it, so it never hides the brain)."""
    ax.text(0.5, -0.02, text, transform=ax.transAxes, color=DARK_TEXT, fontsize=fontsize, ha="center", va="top")


def _orientation_letters(ax, horizontal: int, colour: str, fontsize: float = 11) -> None:
    """L/R on views whose horizontal axis is x, P/A on sagittal views (neurological convention)."""
    left, right = ("L", "R") if horizontal == 0 else ("P", "A")
    for x, letter, align in ((0.03, left, "left"), (0.97, right, "right")):
        ax.text(x, 0.97, letter, transform=ax.transAxes, color=colour, fontsize=fontsize, ha=align, va="top")


# -- values ------------------------------------------------------------------------------------------------------
def _survivors(stat: np.ndarray, threshold: float | None) -> np.ndarray:
    """Voxels drawn: non-zero and, with a threshold, ``|value| >= threshold``."""
    keep = stat != 0
    if threshold is not None:
        keep &= np.abs(stat) >= threshold
    return keep


def _symmetric_norm(stat: np.ndarray, vmax: float | None) -> Normalize:
    """``[-vmax, vmax]`` with vmax the largest ``|value|`` by default (1 for an empty map)."""
    if vmax is None or not np.isfinite(vmax) or vmax <= 0:
        vmax = float(np.abs(stat).max()) if stat.size else 0.0
    return Normalize(vmin=-vmax if vmax > 0 else -1.0, vmax=vmax if vmax > 0 else 1.0)


def _background_limits(background: np.ndarray) -> tuple[float, float]:
    """Grey-scale window of the anatomy: robust percentiles of its non-zero voxels."""
    values = background[background != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    low = min(low, 0.0)  # keep 0 black for a non-negative anatomy, as a T1 template is usually shown
    return low, high if high > low else low + 1.0


def _evenly_spaced(first: int, last: int, count: int) -> list[int]:
    """Up to ``count`` distinct indices spread evenly inside ``[first, last]``, avoiding the outermost slices."""
    if last - first + 1 <= count:
        return list(range(first, last + 1))
    positions = np.linspace(first, last, count + 2)[1:-1]
    return sorted({int(round(p)) for p in positions})


def _span(extent: tuple[float, float]) -> float:
    """Length of an extent (at least a tiny positive number, so aspects stay finite)."""
    return max(abs(extent[1] - extent[0]), 1e-6)


def _mm(value: float) -> str:
    """A coordinate for a label: integers without decimals, others with one."""
    rounded = round(float(value), 1) + 0.0  # no "-0"
    return f"{rounded:.0f}" if rounded == int(rounded) else f"{rounded:.1f}"
