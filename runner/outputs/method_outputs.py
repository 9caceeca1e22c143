"""Write what an inference method returned (``runner.results``): maps, tables and figures through the writer."""

from __future__ import annotations

from typing import Any

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


def write_request(writer: OutputWriter, data: Any, contrast: str, request: OutputRequest, report: bool) -> None:
    """Write one output request; ``data`` supplies the grid (``unmask``, ``affine``, ``mask``)."""
    if isinstance(request, MapOutput) and getattr(data, "surface", None) is not None:
        writer.surface_map(data.surface.split(request.values, fill=request.fill), contrast=contrast,
                           stat=request.stat, correction=request.correction, desc=request.desc, **request.meta)
    elif isinstance(request, MapOutput):
        name = map_name(contrast, request.stat, request.correction, desc=request.desc) if request.desc else None
        writer.map(data.unmask(request.values, fill=request.fill), data.affine, contrast=contrast, stat=request.stat,
                   correction=request.correction, name=name, **request.meta)
    elif isinstance(request, TableOutput):
        writer.table(request.frame, suffix=request.suffix, kind=request.kind, contrast=contrast, stat=request.stat,
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
                      name=f"contrast-{safe_label(contrast)}_corr-{safe_label(request.correction)}_nulldist.png",
                      contrast=contrast, correction=request.correction, view="null")
    elif isinstance(request, IntervalFigure):
        from runner.outputs import figures

        extra = {"caption": request.caption} if request.caption else {}
        writer.figure(figures.interval_figure(request.labels, request.estimates, request.lows, request.highs,
                                              request.reference, request.reference_label, request.xlabel,
                                              request.title),
                      name=f"contrast-{safe_label(contrast)}_corr-{safe_label(request.correction)}_"
                           f"{safe_label(request.view)}.png",
                      contrast=contrast, correction=request.correction, view=request.view, **extra)
    else:
        raise TypeError(f"unknown output request {type(request).__name__}")
