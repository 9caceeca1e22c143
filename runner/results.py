"""What inference hands to the writers: output requests as plain data (arrays and tables, no files).

Inference methods return a :class:`MethodResult` listing the maps, tables and figures to write, in order; the stage
layer passes it to ``runner.outputs.method_outputs``, which names and writes them. Neither side imports the other:
this module is the contract between them. Values are vectors over the analysed elements (in-mask voxels), shape (V,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:  # only annotations: importing a method's schema (to check a config) need not load pandas
    import pandas as pd


@dataclass(frozen=True)
class MapOutput:
    """A statistical map to write: ``values`` (V,) put back on the grid with ``fill`` outside the analysed elements.

    ``correction`` None means an uncorrected map of the method's family (named without the method in ``desc-``); ``desc`` adds a
    BIDS ``desc-`` entity to the name built from contrast, stat and correction.
    """

    values: np.ndarray
    stat: str
    correction: str | None
    fill: float = 0.0
    desc: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TableOutput:
    """A TSV table to write, named ``contrast-<c>_desc-<m>_<suffix>.tsv``.

    Tables of kind ``clusters`` are shown in the report; give other tables ``meta={"shown_in_report": True}`` to
    show them too (every row, as written).
    """

    frame: pd.DataFrame
    suffix: str
    kind: str
    stat: str | None
    correction: str | None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MapViews:
    """Figures of one map: orthogonal slices (through ``cut_coords_mm`` or the peak), montage and glass brain."""

    values: np.ndarray
    stat: str
    correction: str | None
    threshold: float | None
    title: str
    cut_coords_mm: tuple[float, float, float] | None = None
    vmax: float | None = None  # end of the colour scale (default: the map's largest |value|)


@dataclass(frozen=True)
class NullFigure:
    """Histogram of a permutation null distribution of the maximum statistic, with the observed and critical values."""

    null: np.ndarray
    observed: float
    critical: float
    correction: str
    title: str
    fitted: tuple[np.ndarray, np.ndarray] | None = None  # (x, permutations per unit of x) of a fitted distribution
    fitted_label: str = ""


@dataclass(frozen=True)
class IntervalFigure:
    """Estimates with their intervals, one row per label, and a reference line (e.g. a measured error rate and its
    confidence interval per method, against the nominal alpha)."""

    labels: tuple[str, ...]
    estimates: np.ndarray
    lows: np.ndarray
    highs: np.ndarray
    reference: float
    reference_label: str
    xlabel: str
    title: str
    correction: str
    view: str = "intervals"
    caption: str | None = None


OutputRequest = Union[MapOutput, TableOutput, MapViews, NullFigure, IntervalFigure]
FIGURES = (MapViews, NullFigure, IntervalFigure)


@dataclass
class MethodResult:
    """One inference method's outcome for one contrast: outputs to write (in order) and its summary row.

    ``summary`` holds at least ``threshold``, ``n_voxels``, ``n_clusters``, ``peak`` and ``alpha`` (the manifest's and
    the sweep summary's columns) and ``threshold_text``, how the report states the threshold.
    """

    method: str
    outputs: list[OutputRequest] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class BatchResult:
    """The outcome of one batch of methods on one contrast (e.g. the permutation methods sharing one pass).

    ``shared`` lists outputs common to the batch (written first), ``results`` one :class:`MethodResult` per method.
    """

    results: dict[str, MethodResult]
    shared: list[OutputRequest] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def format_number(value: Any, digits: int = 4) -> str:
    """Numbers for a reader: integers as integers, others with ``digits`` significant digits; n/a for missing."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if value == round(value) and abs(value) < 1e15:
            return str(int(round(value)))
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_number(v, digits) for v in value) + "]"
    return str(value)


def table_peak(table: pd.DataFrame | None) -> tuple[float, float, float] | None:
    """The reported peak: ``x, y, z`` (mm) of a cluster table's first row (None for an empty table)."""
    if table is None or table.empty or not {"x", "y", "z"} <= set(table.columns):
        return None
    first = table.iloc[0]
    return float(first["x"]), float(first["y"]), float(first["z"])
