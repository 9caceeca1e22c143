"""multirun_summary.html: one page per sweep, beside multirun_summary.tsv.

A table of the jobs (status, runtime, overrides, the error of a failed job, voxels surviving) with relative links to
each job's report.html, and a plot of the voxels surviving against the swept parameter(s), embedded as a base64
PNG. Like the run report, the page is one file with inline CSS, no script and nothing fetched from the network.
"""

from __future__ import annotations

import base64
import io
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from runner.outputs.atomic import write_text_atomic
from runner.outputs.report import REPORT_NAME, esc
from runner.outputs.report import STYLE as REPORT_STYLE

SWEEP_REPORT_NAME = "multirun_summary.html"
OVERRIDE_PREFIX = "override:"
COUNT_SUFFIX = "/n_voxels"
SERIES = "contrast/correction"


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
    """The HTML of the sweep page."""
    frame = frame.reset_index(drop=True) if frame is not None else pd.DataFrame()
    n_jobs = len(frame)
    statuses = frame["status"].fillna("unknown").astype(str) if "status" in frame else pd.Series(dtype=str)
    counts = statuses.value_counts()
    status_text = " · ".join(f"{n} {esc(s)}" for s, n in counts.items()) or "no jobs"
    swept = swept_keys(frame)
    plot = surviving_voxels_png(frame)
    parts = [
        '<header><p class="kicker">Multirun summary</p>'
        f"<h1>{esc(sweep_dir.name)}</h1>"
        f'<p class="facts">{n_jobs} job{"" if n_jobs == 1 else "s"}: {status_text}</p>'
        f'<p class="muted">Sweep directory <code>{esc(sweep_dir)}</code> · written '
        f'{esc(time.strftime("%Y-%m-%d %H:%M"))} · swept: '
        + (", ".join(f"<code>{esc(k)}</code>" for k in swept) or "nothing") + "</p></header>",
    ]
    failed = frame[statuses != "complete"] if n_jobs else frame
    if len(failed):
        items = "".join(f"<li><code>{esc(r.get('job'))}</code>: {esc(_text(r.get('error')) or r.get('status'))}</li>"
                        for _, r in failed.iterrows())
        parts.append(f'<div class="callout warn"><strong>{len(failed)} job(s) did not complete</strong>'
                     f'<ul class="warnings">{items}</ul></div>')
    parts.append("<h2>Voxels surviving</h2>")
    if plot is not None:
        parts.append(f'<figure class="plot"><img src="data:image/png;base64,{plot}" '
                     f'alt="voxels surviving across the sweep" data-src="surviving_voxels">'
                     f"<figcaption>Voxels surviving each correction, per contrast, across the swept "
                     f"parameter(s)</figcaption></figure>")
    else:
        parts.append('<p class="muted">Nothing to plot: no completed job reported surviving voxels.</p>')
    parts.append("<h2>Jobs</h2>" + jobs_table(sweep_dir, frame))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>Multirun summary: {esc(sweep_dir.name)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            "<main>\n" + "\n".join(parts) + "\n</main>\n</body>\n</html>\n")


def swept_keys(frame: pd.DataFrame) -> list[str]:
    """The override keys that take more than one value across the jobs (all override keys if none does)."""
    keys = [c[len(OVERRIDE_PREFIX):] for c in frame.columns if str(c).startswith(OVERRIDE_PREFIX)]
    varying = [k for k in keys if frame[OVERRIDE_PREFIX + k].astype(str).nunique(dropna=False) > 1]
    return varying or keys


def count_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if str(c).endswith(COUNT_SUFFIX)]


def jobs_table(sweep_dir: Path, frame: pd.DataFrame) -> str:
    """One row per job: the job (linked to its report.html when there is one), status, runtime, swept values,
    voxels surviving per contrast/correction, the overrides and the error of a job that did not complete."""
    if frame.empty:
        return '<p class="muted">No jobs found in this sweep directory.</p>'
    swept = swept_keys(frame)
    counts = count_columns(frame)
    group = ('<tr class="group-row"><th colspan="3"></th>' + (f'<th colspan="{len(swept)}"></th>' if swept else "")
             + (f'<th colspan="{len(counts)}" class="group">Voxels surviving</th>' if counts else "")
             + '<th colspan="2"></th></tr>')
    head = ("<th>Job</th><th>Status</th><th class=num>Runtime (s)</th>"
            + "".join(f"<th>{esc(k)}</th>" for k in swept)
            + "".join(f"<th class=num>{esc(c[:-len(COUNT_SUFFIX)])}</th>" for c in counts)
            + "<th>Overrides</th><th>Error</th>")
    rows = []
    for _, row in frame.iterrows():
        job = _text(row.get("job"))
        status = _text(row.get("status")) or "unknown"
        if job and (sweep_dir / job / REPORT_NAME).is_file():
            job_cell = f'<a class="report" href="{esc(_href(job + "/" + REPORT_NAME))}">{_breakable(job)}</a>'
        else:
            job_cell = f'{_breakable(job)} <span class="muted nowrap">(no report)</span>'
        error = esc(_text(row.get("error")))
        if status != "complete" and job and (sweep_dir / job / "run.log").is_file():
            error += f' <a href="{esc(_href(job + "/run.log"))}">run.log</a>'
        overrides = "".join(f"<code>{esc(o)}</code>" for o in _text(row.get("overrides")).split())
        cells = [f'<td class="job">{job_cell}</td>',
                 f'<td><span class="status {esc(_status_class(status))}">{esc(status)}</span></td>',
                 f'<td class="num">{esc(_number(row.get("runtime_seconds"), 3))}</td>']
        cells += [f"<td>{esc(_text(row.get(OVERRIDE_PREFIX + k)))}</td>" for k in swept]
        cells += [f'<td class="num">{esc(_count(row.get(c))) or "<span class=muted>–</span>"}</td>'
                  for c in counts]
        cells += [f'<td class="overrides">{overrides}</td>', f'<td class="error">{error}</td>']
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="table-wrap"><table class="jobs compact"><thead>{group}<tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


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


def _breakable(text: str) -> str:
    """Escaped text that may wrap after the separators Hydra puts in job names."""
    return esc(text).replace("_", "_<wbr>").replace("/", "/<wbr>")


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


# The run report's stylesheet, plus the rules only this page needs.
STYLE = REPORT_STYLE + """
td.job { min-width: 160px; max-width: 300px; }
.nowrap { white-space: nowrap; }
td.overrides code { display: block; white-space: nowrap; margin: 1px 0; }
tr.group-row th { border-bottom: 0; text-align: center; font-weight: 500; color: var(--muted);
                  font-size: 0.8rem; padding-bottom: 0; background: #fff; }
tr.group-row th.group { border-bottom: 1px solid #cbd5e0; background: var(--panel); }
td.error { min-width: 240px; max-width: 420px; color: #9b2c2c; overflow-wrap: anywhere; }
.status { display: inline-block; padding: 0 8px; border-radius: 9px; font-size: 0.8rem; color: #fff; }
.status.ok { background: #38a169; }
.status.running { background: #d69e2e; }
.status.failed { background: #c53030; }
figure.plot { margin: 10px 0 16px; }
figure.plot img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 3px; }
"""
