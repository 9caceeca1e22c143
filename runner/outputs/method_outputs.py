"""Write what an inference method returned (``runner.results``): maps, tables and figures through the writer."""

from __future__ import annotations

from typing import Any

import numpy as np

from runner.outputs import naming
from runner.outputs.naming import map_name, safe_label
from runner.outputs.writer import OutputWriter
from runner.results import (BatchResult, IntervalFigure, MapOutput, MapViews, NullFigure, OutputRequest,
                            TableOutput)


def write_batch(writer: OutputWriter, data: Any, contrast: str, batch: BatchResult, report: bool) -> None:
    """The batch's shared outputs, then each method's outputs in order (figures only when ``report``)."""
    for request in batch.shared:
        write_request(writer, data, contrast, request, report)
    for result in batch.results.values():
        for request in result.outputs:
            write_request(writer, data, contrast, request, report)


def write_surface_map(writer: OutputWriter, surface: Any, values: np.ndarray, fill: float = 0.0,
                      **meta: Any) -> None:
    """One in-mask map (V,) of a surface analysis: a ``.dscalar.nii`` over the brain models of CIFTI inputs, else
    one ``.func.gii`` per hemisphere (``meta``: contrast, stat, correction, desc and the entry's extras)."""
    if surface.cifti is None:
        writer.surface_map(surface.split(values, fill=fill), **meta)
        return
    from runner.data.cifti import STRUCTURES, dscalar_bytes

    name = naming.cifti_map_name(meta["contrast"], meta["stat"], meta.get("correction"), desc=meta.get("desc"))
    payload = dscalar_bytes(surface.full(values, fill), surface.cifti, name[: -len("_statmap.dscalar.nii")])
    hemi = "".join(h for h, name in STRUCTURES.items() if name in surface.cifti.structures)
    writer.cifti_map(payload, hemi=hemi, structures=list(surface.cifti.structures), **meta)


def write_request(writer: OutputWriter, data: Any, contrast: str, request: OutputRequest, report: bool) -> None:
    """Write one output request; ``data`` supplies the grid (``unmask``, ``affine``, ``mask``)."""
    if isinstance(request, MapOutput) and getattr(data, "surface", None) is not None:
        write_surface_map(writer, data.surface, request.values, fill=request.fill, contrast=contrast,
                          stat=request.stat, correction=request.correction, desc=request.desc, **request.meta)
    elif isinstance(request, MapOutput):
        name = map_name(contrast, request.stat, request.correction, desc=request.desc) if request.desc else None
        writer.map(data.unmask(request.values, fill=request.fill), data.affine, contrast=contrast, stat=request.stat,
                   correction=request.correction, name=name, **request.meta)
    elif isinstance(request, TableOutput):
        frame = request.frame
        surface = getattr(data, "surface", None)
        if request.kind == "clusters" and surface is not None and surface.labels:
            from runner.data.annotation import add_label_column

            frame = add_label_column(frame, surface.labels, {h: m.vertices for h, m in surface.hemispheres.items()})
        writer.table(frame, suffix=request.suffix, kind=request.kind, contrast=contrast, stat=request.stat,
                     correction=request.correction, **request.meta)
    elif not report:
        return
    elif isinstance(request, MapViews) and getattr(data, "surface", None) is not None:
        from runner.outputs.figures_surface import write_surface_figures

        write_surface_figures(writer, data.surface, request.values, request.threshold, contrast, request.stat,
                              request.correction, request.title, vmax=request.vmax)
    elif isinstance(request, MapViews):
        from runner.outputs.results import write_map_figures

        write_map_figures(writer, data, data.unmask(request.values), request.threshold, contrast, request.stat,
                          request.correction, request.title, cut_coords_mm=request.cut_coords_mm, vmax=request.vmax)
    elif isinstance(request, NullFigure):
        from runner.outputs import figures

        writer.figure(figures.null_distribution_figure(request.null, request.observed, request.critical,
                                                       request.title, request.fitted, request.fitted_label),
                      name=f"contrast-{safe_label(contrast)}_desc-{safe_label(request.correction)}_nulldist.png",
                      contrast=contrast, correction=request.correction, view="null")
    elif isinstance(request, IntervalFigure):
        from runner.outputs import figures

        extra = {"caption": request.caption} if request.caption else {}
        writer.figure(figures.interval_figure(request.labels, request.estimates, request.lows, request.highs,
                                              request.reference, request.reference_label, request.xlabel,
                                              request.title),
                      name=f"contrast-{safe_label(contrast)}_desc-{safe_label(request.correction)}_"
                           f"{safe_label(request.view)}.png",
                      contrast=contrast, correction=request.correction, view=request.view, **extra)
    else:
        raise TypeError(f"unknown output request {type(request).__name__}")
