"""report.html: one self-contained page per run, rendered from ``templates/report.html.j2``.

The page is a single file a reader can mail or archive: figures are embedded as base64 PNGs read from the files the
run registered, the style sheet is inline, there is no script and no reference to anything on the network. What it
shows is built as plain data by :mod:`runner.outputs.report_model`; the template lays it out, escaping every text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.outputs.report_model import ReportModel
from runner.outputs.templating import render
from runner.outputs.writer import OutputEntry, OutputWriter

REPORT_NAME = "report.html"
TEMPLATE = "report.html.j2"


def write_report(writer: OutputWriter, settings: Any, data: Any, design: Any, contrasts: Any,
                 fields: dict[str, Any], summary: dict[str, Any]) -> None:
    """Write report.html (registered with kind ``report``) from the run's registered outputs and settings.

    Parameters
    ----------
    writer : OutputWriter
        The run's writer; its entries name the figures and cluster tables to show.
    settings : RunSettings
        The validated settings of the run.
    data : GroupData
        The loaded data (table, mask, affine, notes).
    design : Design
        The design matrix, the rows kept and the rows dropped for missing values.
    contrasts : list of Contrast
        The contrasts, in the order of the configuration.
    fields : dict
        Manifest fields gathered so far (``notes``, ``versions``, ``dof``, ``config_sha256``, ...).
    summary : dict
        ``{"contrasts": {name: {method: {threshold, n_voxels, n_clusters, peak, alpha, threshold_text, ...}}}}``.
    """
    page = ReportPage(writer.run_dir, list(writer.entries), settings, data, design, list(contrasts), fields,
                      summary, shown_dir=writer.published_dir).render()
    writer.text(page, name=REPORT_NAME, kind="report")


class ReportPage:
    """One run's report: :meth:`model` is the page as plain data, :meth:`render` its HTML."""

    def __init__(self, run_dir: Path, entries: list[OutputEntry], settings: Any, data: Any, design: Any,
                 contrasts: list[Any], fields: dict[str, Any], summary: dict[str, Any],
                 shown_dir: Path | None = None) -> None:
        self._model = ReportModel(run_dir, entries, settings, data, design, contrasts, fields, summary,
                                  shown_dir=shown_dir)

    def model(self) -> dict[str, Any]:
        """The view model the template lays out (build it once per page: figures are read as it is built)."""
        return self._model.build()

    def render(self) -> str:
        return render(TEMPLATE, **self.model())
