"""multirun_summary.html: one page per sweep, beside multirun_summary.tsv.

A table of the jobs (status, runtime, overrides, the error of a failed job, voxels surviving) with relative links to
each job's report.html, and a plot of the voxels surviving against the swept parameter(s), embedded as a base64
PNG. Like the run report, the page is one file with inline CSS (the report's style sheet), no script and nothing
fetched from the network; it is rendered from ``templates/sweep.html.j2``.
"""

from __future__ import annotations

import base64
import io
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from runner.outputs.atomic import write_text_atomic
from runner.outputs.report import REPORT_NAME
from runner.outputs.templating import render

SWEEP_REPORT_NAME = "multirun_summary.html"
OVERRIDE_PREFIX = "override:"
COUNT_SUFFIX = "/n_voxels"
SERIES = "contrast/correction"
TEMPLATE = "sweep.html.j2"


def write_sweep_report(sweep_dir: Path, frame: pd.DataFrame) -> Path:
    """Write multirun_summary.html in ``sweep_dir`` (atomically) and return its path.

    Parameters
    ----------
    sweep_dir : Path
        The sweep directory (job folders below it, ``multirun_summary.tsv`` in it).
    frame : pandas.DataFrame
        One row per job, as :func:`runner.sweeps.summarise_sweep` builds it: ``job``, ``status``, ``error``,
        ``runtime_seconds``, ``overrides``, ``override:<key>`` and ``<contrast>/<method>/<field>`` columns.

    Returns
    -------
    Path
        The page written.
    """
    sweep_dir = Path(sweep_dir)
    page = render_sweep_report(sweep_dir, frame)
    return write_text_atomic(sweep_dir / SWEEP_REPORT_NAME, page)


def render_sweep_report(sweep_dir: Path, frame: pd.DataFrame) -> str:
    """The HTML of the sweep page (``templates/sweep.html.j2`` laying out :func:`sweep_model`)."""
    return render(TEMPLATE, **sweep_model(Path(sweep_dir), frame))


def sweep_model(sweep_dir: Path, frame: pd.DataFrame) -> dict[str, Any]:
    """The sweep page as plain data: the jobs by status, the swept keys, the failures, the plot and the jobs table.

    Nothing here reads the clock: the same sweep directory gives the same page.
    """
    frame = frame.reset_index(drop=True) if frame is not None else pd.DataFrame()
    n_jobs = len(frame)
    statuses = frame["status"].fillna("unknown").astype(str) if "status" in frame else pd.Series(dtype=str)
    counts = statuses.value_counts()
    failed = frame[statuses != "complete"] if n_jobs else frame
    return {
        "title": f"Multirun summary: {sweep_dir.name}",
        "name": sweep_dir.name,
        "jobs_text": f"{n_jobs} job{'' if n_jobs == 1 else 's'}",
        "statuses": [f"{n} {s}" for s, n in counts.items()],
        "sweep_dir": str(sweep_dir),
        "swept": swept_keys(frame),
        "failed": [{"job": _text(r.get("job")), "message": _text(r.get("error")) or _text(r.get("status")) or "unknown"}
                   for _, r in failed.iterrows()],
        "plot": surviving_voxels_png(frame),
        "jobs": jobs_table(sweep_dir, frame),
    }


def swept_keys(frame: pd.DataFrame) -> list[str]:
    """The override keys that take more than one value across the jobs (all override keys if none does)."""
    keys = [c[len(OVERRIDE_PREFIX):] for c in frame.columns if str(c).startswith(OVERRIDE_PREFIX)]
    varying = [k for k in keys if frame[OVERRIDE_PREFIX + k].astype(str).nunique(dropna=False) > 1]
    return varying or keys


def count_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if str(c).endswith(COUNT_SUFFIX)]


def jobs_table(sweep_dir: Path, frame: pd.DataFrame) -> dict[str, Any] | None:
    """One row per job: the job (linked to its report.html when there is one), status, runtime, swept values,
    voxels surviving per contrast/correction, the overrides and the error of a job that did not complete."""
    if frame.empty:
        return None
    swept = swept_keys(frame)
    counts = count_columns(frame)
    rows = []
    for _, row in frame.iterrows():
        job = _text(row.get("job"))
        status = _text(row.get("status")) or "unknown"
        has_report = bool(job) and (sweep_dir / job / REPORT_NAME).is_file()
        has_log = status != "complete" and bool(job) and (sweep_dir / job / "run.log").is_file()
        rows.append({
            "job": _breakable(job),
            "report_href": _href(job + "/" + REPORT_NAME) if has_report else None,
            "status": status, "status_css": _status_class(status),
            "runtime": _number(row.get("runtime_seconds"), 3),
            "swept": [_text(row.get(OVERRIDE_PREFIX + k)) for k in swept],
            "counts": [_count(row.get(c)) for c in counts],
            "overrides": _text(row.get("overrides")).split(),
            "error": _text(row.get("error")),
            "log_href": _href(job + "/run.log") if has_log else None,
        })
    return {"swept": swept, "counts": [c[:-len(COUNT_SUFFIX)] for c in counts], "rows": rows}


def surviving_voxels_long(frame: pd.DataFrame) -> tuple[pd.DataFrame, str | None, str | None]:
    """Long table for the plot: one row per job x ``<contrast>/<method>``, with the x key and the series label.

    The x axis is the first swept key whose values are all numbers (else the first swept key); lines are
    ``contrast/correction``, split further by any other swept key that varies within one of them (a swept
    ``correction`` is already in the line's name, so it does not split lines again).
    """
    keys, counts = swept_keys(frame), count_columns(frame)
    if frame.empty or not keys or not counts:
        return pd.DataFrame(), None, None
    records = []
    for _, row in frame.iterrows():
        for column in counts:
            value = row.get(column)
            if value is None or pd.isna(value):
                continue
            record = {SERIES: column[:-len(COUNT_SUFFIX)], "voxels surviving": float(value)}
            record.update({k: row.get(OVERRIDE_PREFIX + k) for k in keys})
            records.append(record)
    long = pd.DataFrame(records)
    if long.empty:
        return long, None, None
    numeric = {k: pd.to_numeric(long[k], errors="coerce") for k in keys}
    x = next((k for k in keys if numeric[k].notna().all()), keys[0])
    if numeric[x].notna().all():
        long[x] = numeric[x]
    else:
        long[x] = long[x].astype(str)
    splitting = [k for k in keys if k != x and long.groupby(SERIES)[k].nunique(dropna=False).max() > 1]
    hue = SERIES
    if splitting:
        hue = SERIES + ", " + ", ".join(splitting)
        long[hue] = long[SERIES] + ", " + long[splitting].astype(str).agg(", ".join, axis=1)
    return long, x, hue


def surviving_voxels_png(frame: pd.DataFrame) -> str | None:
    """The plot as base64 PNG, or None when there is nothing to plot."""
    long, x, hue = surviving_voxels_long(frame)
    if long.empty or x is None:
        return None
    from runner.outputs.figures import surviving_voxels_figure

    fig = surviving_voxels_figure(long, x=x, y="voxels surviving", hue=hue,
                                  title=f"Voxels surviving by {x}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# -- helpers -----------------------------------------------------------------------------------------------------
def _href(path: str) -> str:
    return quote(path.replace("\\", "/"), safe="/")


def _breakable(text: str) -> list[str]:
    """Pieces of a job name between which the line may wrap (after the separators Hydra puts in job names)."""
    return [piece for piece in re.split(r"(?<=[_/])", text) if piece] or [""]


def _text(value: Any) -> str:
    if value is None:
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value)


def _number(value: Any, digits: int) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(number) else f"{number:.{digits}g}"


def _count(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(number) else f"{int(number):,}"


def _status_class(status: str) -> str:
    return {"complete": "ok", "running": "running"}.get(status, "failed")
