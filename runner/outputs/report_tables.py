"""The report's tables as plain data: cells, the input table and its covariate summary, and the cluster tables.

A cell is ``{"parts": [(kind, text), ...], "css": str | None}`` where ``kind`` is ``text``, ``code`` or ``muted``;
a table is ``{"css", "headers": [{"text", "num"}] | None, "rows": [[cell, ...], ...]}``. The templates lay them out
(``_macros.html.j2``) and escape every text.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from runner.outputs.writer import OutputEntry
from runner.results import format_number

MAX_LEVELS_SHOWN = 12
PATH_SUFFIXES = (".nii", ".nii.gz", ".img", ".hdr", ".mgz", ".gii")
CLUSTER_COLUMNS = {  # known cluster-table columns: header shown, in display order
    "threshold": "Cluster-forming z",
    "sign": "Sign",
    "cluster_id": "Cluster",
    "x": "x",
    "y": "y",
    "z": "z",
    "peak_stat": "Peak",
    "size_voxels": "Voxels",
    "size_mm3": "Volume (mm³)",
    "tdp": "TDP ≥",
    "true_discoveries": "True discoveries ≥",
    "p_fwe": "p (FWE)",
    "mass": "Mass",
    "size_resels": "Resels",
    "cluster_p_fwe": "Cluster p (FWE)",
    "cluster_p_uncorrected": "Cluster p (uncorr.)",
    "peak_p_fwe": "Peak p (FWE)",
    "peak_p_uncorrected": "Peak p (uncorr.)",
    "peak_z": "Peak z",
}
HIDDEN_CLUSTER_COLUMNS = ("i", "j", "k", "peak_i", "peak_j", "peak_k")  # voxel indices: the mm coordinates say the same
TEXT_CLUSTER_COLUMNS = ("cluster_id", "sign", "label")  # label: a peak's atlas region (surfaces)

fmt = format_number  # numbers for a reader, as the methods state their thresholds
Parts = list[tuple[str, str]]


# -- cells and tables --------------------------------------------------------------------------------------------
def code(text: Any) -> tuple[str, str]:
    """A segment shown as code (file names, formulas, keys)."""
    return ("code", str(text))


def muted(text: Any) -> tuple[str, str]:
    """A segment shown in the muted colour."""
    return ("muted", str(text))


def parts(*segments: Any) -> Parts:
    """Segments of rich text: plain strings become ``text`` segments."""
    return [s if isinstance(s, tuple) else ("text", str(s)) for s in segments]


def cell(*segments: Any, css: str | None = None) -> dict[str, Any]:
    """One table cell."""
    return {"parts": parts(*segments), "css": css}


def count_cell(value: Any) -> dict[str, Any]:
    """A count, with thousands separators; ``n/a`` (muted) when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return cell("n/a", css="num muted")
    return cell(f"{int(value):,}", css="num")


def table(headers: list[str] | None, rows: Iterable[list[Any]], css: str = "",
          numeric: Iterable[int] = ()) -> dict[str, Any]:
    """A table; a row item that is not yet a cell becomes one (class ``num`` in the ``numeric`` columns)."""
    numeric = set(numeric)
    shown = [[c if isinstance(c, dict) else cell(c, css="num" if i in numeric else None) for i, c in enumerate(row)]
             for row in rows]
    head = [{"text": h, "num": i in numeric} for i, h in enumerate(headers)] if headers is not None else None
    return {"css": css, "headers": head, "rows": shown}


def key_value_table(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Two columns without a header: a muted key and its value (a string or a list of segments)."""
    rows = [[cell(key), {"parts": value if isinstance(value, list) else parts(value), "css": None}]
            for key, value in pairs]
    return table(None, rows, css="compact keyvalue")


def count(n: Any, noun: str) -> str:
    """``1 map``, ``1,234 voxels``; ``? maps`` when unknown."""
    if n is None:
        return f"? {noun}s"
    n = int(n)
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


# -- inputs ------------------------------------------------------------------------------------------------------
def path_columns(frame: pd.DataFrame, path_column: str = "path") -> list[str]:
    """Columns naming image files (the path column and any column whose values all look like image paths)."""
    found = []
    for column in frame.columns:
        values = frame[column].dropna()
        if column == path_column or (len(values) and values.map(
                lambda v: isinstance(v, str) and v.lower().endswith(PATH_SUFFIXES)).all()):
            found.append(column)
    return found


def covariate_summary(frame: pd.DataFrame, path_column: str = "path") -> dict[str, Any] | None:
    """Per non-path column: type, values present, missing, and a summary (mean/sd/range or level counts)."""
    columns = [c for c in frame.columns if c not in path_columns(frame, path_column)]
    if not columns:
        return None
    rows = []
    for column in columns:
        values = frame[column]
        missing = int(values.isna().sum())
        present = values.dropna()
        kind, described = describe_column(values, present)
        rows.append([cell(code(column)), cell(kind), count_cell(len(present)),
                     count_cell(missing) if missing else cell("0", css="num muted"), cell(described)])
    return table(["Column", "Type", "Values", "Missing", "Summary"], rows, css="compact", numeric={2, 3})


def describe_column(values: pd.Series, present: pd.Series) -> tuple[str, str]:
    """(kind, summary) of one column: numeric (mean, sd with ddof 1, range), identifier or categorical levels."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = present.astype(float)
        if not len(numbers):
            return "numeric", "—"
        sd = float(numbers.std(ddof=1)) if len(numbers) > 1 else float("nan")
        return "numeric", (f"mean {fmt(numbers.mean(), 4)} · sd {fmt(sd, 3)} · "
                           f"min {fmt(numbers.min(), 4)} · max {fmt(numbers.max(), 4)}")
    counts = present.astype(str).value_counts(sort=False)
    counts = counts.sort_index() if len(counts) <= MAX_LEVELS_SHOWN else counts.sort_values(ascending=False)
    if len(counts) == len(present) and len(present) > MAX_LEVELS_SHOWN:
        return "identifier", f"{len(counts)} distinct values ({present.iloc[0]} … {present.iloc[-1]})"
    shown = [f"{level}: {n}" for level, n in counts.head(MAX_LEVELS_SHOWN).items()]
    if len(counts) > MAX_LEVELS_SHOWN:
        shown.append(f"… {len(counts) - MAX_LEVELS_SHOWN} more levels")
    return "categorical", " · ".join(shown)


def dropped_table(dropped: pd.DataFrame, path_column: str = "path") -> dict[str, Any]:
    """The excluded rows with the columns that were missing (the reason they were dropped)."""
    keep = [c for c in dropped.columns if c not in path_columns(dropped, path_column)]
    rows = []
    for index, record in dropped.iterrows():
        reasons = [str(c) for c in keep if pd.isna(record[c])]
        reason = ("missing " + ", ".join(reasons)) if reasons else "excluded"
        rows.append([row_number(index)] + [fmt(record[c]) for c in keep] + [reason])
    return table(["row"] + [str(c) for c in keep] + ["reason"], rows, css="compact dropped")


def input_table(frame: pd.DataFrame, path_column: str = "path") -> dict[str, Any]:
    """Every row of the input table, image paths shortened to their file names."""
    shown = frame.copy()
    for column in path_columns(shown, path_column):
        shown[column] = [Path(str(v)).name if isinstance(v, str) else v for v in shown[column]]
    rows = [[str(i + 1)] + [fmt(v) for v in record] for i, record in enumerate(shown.itertuples(index=False))]
    return table(["#"] + [str(c) for c in shown.columns], rows, css="compact scroll")


def row_number(index: Any) -> str:
    """1-based row number of a table index (other labels as they are)."""
    return str(int(index) + 1) if isinstance(index, (int, np.integer)) else str(index)


def weight_cell(weight: float) -> dict[str, Any]:
    """A contrast weight, coloured by sign."""
    css = "num zero" if weight == 0 else ("num positive" if weight > 0 else "num negative")
    return cell(fmt(weight, 3), css=css)


# -- cluster tables ----------------------------------------------------------------------------------------------
def read_cluster_table(run_dir: Path, entry: OutputEntry) -> dict[str, Any]:
    """One cluster TSV as the report shows it: every row, known columns first, voxel indices left out.

    Returns ``{"path", "state": "rows" | "empty" | "unreadable", ...}``; with rows: ``headers`` (text, num),
    ``group`` (header cells above the coordinates), ``rows`` (``cells``, ``subpeak``, ``peak``), ``note``.
    """
    block: dict[str, Any] = {"path": entry.path}
    try:
        frame = pd.read_csv(Path(run_dir) / entry.path, sep="\t", na_values=["n/a"], keep_default_na=False,
                            dtype={"cluster_id": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        return dict(block, state="unreadable", error=str(error))
    if frame.empty:
        return dict(block, state="empty")
    ordered = [c for c in CLUSTER_COLUMNS if c in frame.columns]
    ordered += [c for c in frame.columns if c not in ordered and c not in HIDDEN_CLUSTER_COLUMNS]
    peak_label = "Peak z" if entry.stat in (None, "z", "tdp") else f"Peak {entry.stat}"
    headers = [{"text": peak_label if c == "peak_stat" else CLUSTER_COLUMNS.get(c, c),
                "num": c not in TEXT_CLUSTER_COLUMNS} for c in ordered]
    n_peaks = len(frame)
    n_clusters = int(frame["size_voxels"].notna().sum()) if "size_voxels" in frame else n_peaks
    rows = []
    for _, record in frame.iterrows():
        rows.append({"cells": [cluster_cell(c, record[c]) for c in ordered],
                     "subpeak": "size_voxels" in frame and bool(pd.isna(record.get("size_voxels"))),
                     "peak": " ".join(fmt(record[c]) for c in ("x", "y", "z") if c in frame)})
    note = count(n_clusters, "cluster") + (f", {n_peaks - n_clusters} sub-peak(s)" if n_peaks > n_clusters else "")
    group = coordinate_group_header(ordered) if all(c in ordered for c in ("x", "y", "z")) else None
    return dict(block, state="rows", headers=headers, group=group, rows=rows, note=note)


def read_plain_table(run_dir: Path, entry: OutputEntry) -> dict[str, Any]:
    """A small TSV a method asked the report to show (``shown_in_report``), every row and column as written.

    Returns ``{"path", "state": "rows" | "empty" | "unreadable", "table"?, "error"?}``.
    """
    block: dict[str, Any] = {"path": entry.path}
    try:
        frame = pd.read_csv(Path(run_dir) / entry.path, sep="\t", na_values=["n/a"], keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        return dict(block, state="unreadable", error=str(error))
    if frame.empty:
        return dict(block, state="empty")
    numeric = [i for i, c in enumerate(frame.columns) if pd.api.types.is_numeric_dtype(frame[c])]
    rows = [[fmt(value, 3) if i in numeric else str(value) for i, value in enumerate(record)]
            for record in frame.itertuples(index=False)]
    return dict(block, state="rows", table=table([str(c) for c in frame.columns], rows, css="compact",
                                                 numeric=numeric))


def coordinate_group_header(ordered: list[str]) -> list[dict[str, Any]]:
    """Header cells above the columns: one spanning x, y, z ("Peak (mm)"), empty ones elsewhere."""
    cells, i = [], 0
    while i < len(ordered):
        if ordered[i] == "x" and ordered[i + 1:i + 3] == ["y", "z"]:
            cells.append({"text": "Peak (mm)", "span": 3})
            i += 3
        else:
            cells.append({"text": "", "span": 1})
            i += 1
    return cells


def cluster_cell(column: str, value: Any) -> dict[str, Any]:
    """A cluster-table value: coordinates to 4 significant digits, peaks to 2 decimals, p-values in 3 digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return cell(css="num muted")
    if column == "sign" and isinstance(value, (int, float, np.number)):
        return cell("+" if value > 0 else "−")
    if column in TEXT_CLUSTER_COLUMNS:
        return cell(value)
    if column in ("x", "y", "z"):
        return cell(fmt(value, 4), css="num")
    if column in ("size_voxels", "size_mm3", "true_discoveries"):
        return cell(fmt(value, 6), css="num")
    if column == "peak_stat":
        return cell(f"{float(value):.2f}", css="num")
    if column == "tdp":
        return cell(f"{float(value):.3f}", css="num")
    if isinstance(value, (float, np.floating)) and ("p" in column.split("_") or column.startswith("p_")):
        return cell(p_value(float(value)), css="num")
    if isinstance(value, (int, float, np.number)):
        return cell(fmt(value, 4), css="num")
    return cell(value)


def p_value(p: float) -> str:
    """p in scientific notation below 0.001, else to 3 decimals."""
    return f"{p:.2e}" if 0 < p < 1e-3 else f"{p:.3f}"
