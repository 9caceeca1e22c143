"""Surface figures: lateral and medial views of both hemispheres, a thresholded map over sulcal depth.

Pure matplotlib (no 3D toolkit): each view is an orthographic projection of the triangles onto a sagittal plane,
drawn back to front (painter's algorithm) with Lambert shading from the viewer, sulcal depth as grey background
and each face coloured by its most extreme vertex when that vertex passes the threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from runner.outputs.figures_brain import DARK_TEXT, STAT_COLORMAP, _draw_colorbar

# (panel title, hemisphere, viewer on the -x side?): lateral of L and medial of R are seen from the left
VIEWS = (("left lateral", "L", True), ("left medial", "L", False), ("right medial", "R", True),
         ("right lateral", "R", False))
BACKGROUND = "black"


def project(vertices: np.ndarray, from_left: bool) -> tuple[np.ndarray, np.ndarray]:
    """Screen positions (N, 2) and depth towards the viewer (N,) of a view along x (anterior at the screen's
    left when looking from the left, at its right when looking from the right)."""
    if from_left:
        return np.c_[-vertices[:, 1], vertices[:, 2]], -vertices[:, 0]
    return np.c_[vertices[:, 1], vertices[:, 2]], vertices[:, 0]


def face_colours(vertices: np.ndarray, faces: np.ndarray, values: np.ndarray, sulc: np.ndarray | None,
                 threshold: float | None, norm: Normalize, from_left: bool) -> tuple[np.ndarray, np.ndarray]:
    """Draw order (back to front) and RGBA colour of every face: shaded sulcal grey, the map where it passes."""
    corners = vertices[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    shade = 0.35 + 0.65 * np.abs(normals[:, 0])  # Lambert term for a light at the viewer (along x)
    if sulc is not None:
        grey = np.where(sulc[faces].mean(axis=1) > 0, 0.45, 0.7)  # deep (sulci) darker, as FreeSurfer shows it
    else:
        grey = np.full(len(faces), 0.6)
    colours = np.c_[np.repeat(grey[:, None], 3, axis=1), np.ones(len(faces))]
    # a face shows its most extreme vertex, so a lone surviving vertex is drawn (as the fan of its triangles)
    corner_values = values[faces]
    face_values = corner_values[np.arange(len(faces)), np.argmax(np.abs(corner_values), axis=1)]
    shown = (face_values != 0) & np.isfinite(face_values)
    if threshold is not None:
        shown &= np.abs(face_values) >= threshold
    colours[shown] = STAT_COLORMAP(norm(face_values[shown]))
    colours[:, :3] *= shade[:, None]
    _, depth = project(vertices, from_left)
    order = np.argsort(depth[faces].mean(axis=1), kind="stable")
    return order, colours


def surface_views_figure(hemispheres: dict[str, Any], values: dict[str, np.ndarray], threshold: float | None,
                         title: str, vmax: float | None = None) -> Figure:
    """Lateral and medial views of both hemispheres with a colour bar.

    Parameters
    ----------
    hemispheres : {"L": Hemisphere, "R": Hemisphere}
        Objects with ``vertices``, ``faces`` and optionally ``inflated`` (drawn when present) and ``sulc``.
    values : {"L": (N_L,), "R": (N_R,)}
        The map on every vertex (0 where nothing is shown).
    threshold : float or None
        Faces whose most extreme vertex is below it in ``|value|`` are not coloured; None colours every non-zero
        face.
    title : str
    vmax : float, optional
        End of the colour scale (default: the largest ``|value|``).
    """
    every = np.concatenate([np.asarray(v, dtype=float) for v in values.values()])
    every = np.where(np.isfinite(every), every, 0.0)
    top = float(vmax) if vmax else float(np.max(np.abs(every), initial=0.0)) or 1.0
    norm = Normalize(-top, top)
    height = 3.2
    fig = Figure(figsize=(10.0, height), facecolor=BACKGROUND)
    width = 0.205
    for number, (name, hemi, from_left) in enumerate(VIEWS):
        mesh = hemispheres[hemi]
        vertices = np.asarray(mesh.inflated if getattr(mesh, "inflated", None) is not None else mesh.vertices)
        faces = np.asarray(mesh.faces)
        hemi_values = np.where(np.isfinite(values[hemi]), values[hemi], 0.0)
        order, colours = face_colours(vertices, faces, hemi_values, getattr(mesh, "sulc", None), threshold, norm,
                                      from_left)
        screen, _ = project(vertices, from_left)
        ax = fig.add_axes((0.01 + number * (width + 0.01), 0.04, width, 0.72), label=name)
        ax.set_facecolor(BACKGROUND)
        ax.add_collection(PolyCollection(screen[faces[order]], facecolors=colours[order], edgecolors="none",
                                         antialiased=False))
        ax.set_xlim(screen[:, 0].min(), screen[:, 0].max())
        ax.set_ylim(screen[:, 1].min(), screen[:, 1].max())
        ax.set_aspect("equal")
        ax.axis("off")
        ax.text(0.5, -0.02, name, transform=ax.transAxes, color=DARK_TEXT, fontsize=9, ha="center", va="top")
    n_shown = int(np.count_nonzero(np.abs(every) >= threshold) if threshold is not None
                  else np.count_nonzero(every))
    _draw_colorbar(fig, (0.9, 0.12, 0.016, 0.56), every, norm, threshold, STAT_COLORMAP, DARK_TEXT)
    if threshold is None:
        detail = f"unthresholded, {n_shown} non-zero vertices" if n_shown else "no vertices survive (empty map)"
    elif n_shown:
        detail = f"threshold |stat| ≥ {threshold:.3g}, {n_shown} vertices survive"
    else:
        detail = f"no vertices survive |stat| ≥ {threshold:.3g}"
    fig.text(0.01, 1.0 - 0.12 / height, title or "Statistical map", color=DARK_TEXT, fontsize=13, ha="left",
             va="top", fontweight="bold")
    fig.text(0.01, 1.0 - 0.42 / height, detail, color=DARK_TEXT, fontsize=10, ha="left", va="top", alpha=0.85)
    return fig


def write_surface_figures(writer: Any, surface: Any, values: np.ndarray, threshold: float | None, contrast: str,
                          stat: str, correction: str | None, title: str, vmax: float | None = None) -> None:
    """The lateral/medial views of one in-mask map (V,), through the writer (``view="surface"``)."""
    from runner.outputs.naming import safe_label

    shown = threshold if threshold is not None and np.isfinite(threshold) else None
    base = f"contrast-{safe_label(contrast)}_stat-{safe_label(stat)}" + (
        f"_desc-{safe_label(correction)}" if correction else "")
    figure = surface_views_figure(surface.hemispheres, surface.split(np.asarray(values, dtype=float)), shown, title,
                                  vmax=vmax)
    writer.figure(figure, name=f"{base}_surface.png", contrast=contrast, stat=stat, correction=correction,
                  view="surface")
