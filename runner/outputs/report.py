"""report.html: one self-contained page per run.

The page is a single file a reader can mail or archive: figures are embedded as base64 PNGs read from the files the
run registered, the style sheet is inline, there is no script and no reference to anything on the network. It reads
top to bottom like the analysis: warnings, results at a glance, configuration, inputs, design and contrasts, then
one section per contrast with, per correction, the threshold, the surviving voxels, the figures and the cluster
table (every row of every cluster TSV the run wrote).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from runner.outputs.naming import safe_label
from runner.results import format_number
from runner.outputs.writer import OutputEntry, OutputWriter

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
# Fewer permutations than this makes p-values coarse (the smallest attainable p is 1 / n_permutations).
FEW_PERMUTATIONS = 1000
MAX_LEVELS_SHOWN = 12
VIEW_ORDER = ("slices", "glassbrain", "montage")
VIEW_CAPTIONS = {
    "slices": "Orthogonal slices through the peak",
    "glassbrain": "Glass brain (maximum-intensity projections)",
    "montage": "Axial montage",
    "null": "Permutation null distribution of the maximum statistic",
    "null_distribution": "Permutation null distribution of the maximum statistic",
    "scatter": "Values at the peak against a covariate",
}
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
}
HIDDEN_CLUSTER_COLUMNS = ("i", "j", "k", "peak_i", "peak_j", "peak_k")  # voxel indices: the mm coordinates say the same to a reader
PATH_SUFFIXES = (".nii", ".nii.gz", ".img", ".hdr", ".mgz", ".gii")


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
        ``{"contrasts": {name: {method: {threshold, n_voxels, n_clusters, peak, alpha, ...}}}}``.
    """
    page = ReportPage(writer.run_dir, list(writer.entries), settings, data, design, list(contrasts), fields,
                      summary, shown_dir=writer.published_dir).render()
    writer.text(page, name=REPORT_NAME, kind="report")


# -- the page ----------------------------------------------------------------------------------------------------
class ReportPage:
    """Builds the HTML of one report; every string that comes from the user or a file goes through ``esc``."""

    def __init__(self, run_dir: Path, entries: list[OutputEntry], settings: Any, data: Any, design: Any,
                 contrasts: list[Any], fields: dict[str, Any], summary: dict[str, Any],
                 shown_dir: Path | None = None) -> None:
        self.run_dir = Path(run_dir)  # where the files are read now (the staging folder while the run is on)
        self.shown_dir = Path(shown_dir or run_dir)  # where the reader finds them
        self.entries = entries
        self.settings = settings
        self.data = data
        self.design = design
        self.contrasts = contrasts
        self.fields = fields or {}
        self.results: dict[str, dict[str, Any]] = dict((summary or {}).get("contrasts") or {})
        self.placed: set[str] = set()  # figures shown
        self.unreadable: set[str] = set()  # figures registered whose file cannot be read
        names = [getattr(c, "name", str(c)) for c in contrasts]
        names += [c for c in self.results if c not in names]
        names += [e.contrast for e in entries if e.contrast and e.contrast not in names]
        self.contrast_names = list(dict.fromkeys(names))
        self.anchors = {name: f"contrast-{i + 1}-{safe_label(name)}" for i, name in enumerate(self.contrast_names)}

    # -- structure ---------------------------------------------------------------------------------------------
    def render(self) -> str:
        sections = [
            ("warnings", "Warnings", self.warnings_section()),
            ("summary", "Results at a glance", self.summary_section()),
            ("configuration", "Configuration", self.configuration_section()),
            ("inputs", "Inputs", self.inputs_section()),
            ("design", "Design and contrasts", self.design_section()),
        ]
        contrast_sections = [self.contrast_section(name) for name in self.contrast_names]
        other = self.other_figures_section()
        run_info = self.run_section()
        body = [self.header(), self.table_of_contents(sections, bool(other))]
        for anchor, title, content in sections:
            body.append(f'<section id="{anchor}"><h2>{esc(title)}</h2>{content}</section>')
        body.append('<section id="results"><h2>Results by contrast</h2>' + "".join(contrast_sections) + "</section>")
        if other:
            body.append(f'<section id="other-figures"><h2>Other figures</h2>{other}</section>')
        body.append(f'<section id="run"><h2>Run information</h2>{run_info}</section>')
        title = f"Second-level analysis: {self.analysis_name()}"
        return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
                + "\n".join(body) + "\n</main>\n</body>\n</html>\n")

    def analysis_name(self) -> str:
        return str(getattr(self.settings, "name", "") or self.shown_dir.name)

    def header(self) -> str:
        n_maps = getattr(self.data, "n_maps", self.fields.get("n_maps"))
        n_voxels = getattr(self.data, "n_voxels", self.fields.get("n_voxels"))
        methods = self.methods_in_order()
        facts = [f"{_count(n_maps, 'map')}", f"{_count(n_voxels, 'voxel')} in the mask",
                 f"{_count(len(self.contrast_names), 'contrast')}",
                 "corrections: " + (", ".join(methods) if methods else "none")]
        written = self.fields.get("written_at") or pd.Timestamp.now().strftime("%Y-%m-%d %H:%M")
        return (f'<header><p class="kicker">Second-level analysis report</p>'
                f"<h1>{esc(self.analysis_name())}</h1>"
                f'<p class="facts">{" · ".join(esc(f) for f in facts)}</p>'
                f'<p class="muted">Run directory <code>{esc(self.shown_dir)}</code> · written {esc(written)}</p>'
                "</header>")

    def table_of_contents(self, sections: list[tuple[str, str, str]], other: bool) -> str:
        items = []
        for anchor, title, _ in sections:
            label = esc(title)
            if anchor == "warnings":
                n = len(self.collect_warnings())
                label += f' <span class="badge {"warn" if n else "ok"}">{n}</span>'
            items.append(f'<li><a href="#{anchor}">{label}</a></li>')
        nested = []
        for name in self.contrast_names:
            methods = []
            for method in self.methods_for(name):
                row = self.results.get(name, {}).get(method, {})
                n = row.get("n_voxels")
                suffix = f" ({_count(n, 'voxel')})" if n is not None else ""
                methods.append(f'<a href="#{self.anchors[name]}-{safe_label(method)}">{esc(method)}{esc(suffix)}</a>')
            nested.append(f'<li><a href="#{self.anchors[name]}">{esc(name)}</a>'
                          + (f'<span class="toc-methods">{" · ".join(methods)}</span>' if methods else "") + "</li>")
        items.append('<li><a href="#results">Results by contrast</a><ul>' + "".join(nested) + "</ul></li>")
        if other:
            items.append('<li><a href="#other-figures">Other figures</a></li>')
        items.append('<li><a href="#run">Run information</a></li>')
        return f'<nav class="toc"><h2>Contents</h2><ol>{"".join(items)}</ol></nav>'

    # -- warnings ----------------------------------------------------------------------------------------------
    def collect_warnings(self) -> list[str]:
        """Notes of the run (resampling, dropped rows, excluded voxels ...) and coarse permutation p-values."""
        found: list[str] = []
        for key in ("notes", "warnings"):
            found += [str(n) for n in _as_list(self.fields.get(key))]
        for contrast, methods in self.results.items():
            for method, row in (methods or {}).items():
                if not isinstance(row, dict):
                    continue
                for key in ("notes", "warnings"):
                    found += [f"{contrast}, {method}: {n}" for n in _as_list(row.get(key))]
                entry = self.thresholded_map(contrast, method)
                n_permutations = row.get("n_permutations", entry.extra.get("n_permutations") if entry else None)
                exhaustive = bool(entry.extra.get("exhaustive")) if entry else False
                already = any("permutations" in note and contrast in note for note in found)
                if (isinstance(n_permutations, (int, float)) and 0 < n_permutations < FEW_PERMUTATIONS
                        and not exhaustive and not already):
                    found.append(f"contrast {contrast}, {method}: only {int(n_permutations)} permutations; the "
                                 f"smallest attainable p-value is {1 / n_permutations:.2g}, so corrected p-values "
                                 "are coarse")
        return list(dict.fromkeys(found))

    def warnings_section(self) -> str:
        warnings = self.collect_warnings()
        if not warnings:
            return '<div class="callout ok">No warnings: every input was used as given.</div>'
        items = "".join(f"<li>{esc(w)}</li>" for w in warnings)
        return f'<div class="callout warn"><ul class="warnings">{items}</ul></div>'

    # -- results at a glance ------------------------------------------------------------------------------------
    def summary_section(self) -> str:
        rows = []
        for name in self.contrast_names:
            for method in self.methods_for(name):
                row = self.results.get(name, {}).get(method, {})
                map_entry = self.thresholded_map(name, method)
                link = f'<a href="#{self.anchors[name]}-{safe_label(method)}">{esc(method)}</a>'
                rows.append([esc(name), link, esc(_fmt(row.get("alpha", _entry_value(map_entry, "alpha")))),
                             esc(self.threshold_text(name, method, row)), _num_cell(row.get("n_voxels")),
                             _num_cell(row.get("n_clusters")), esc(_fmt(row.get("peak"), 3))])
        if not rows:
            return '<p class="muted">No contrast was thresholded (no correction method configured).</p>'
        return _html_table(["Contrast", "Correction", "α", "Threshold", "Voxels surviving", "Clusters",
                            "Peak statistic"], rows, css="compact summary", numeric={4, 5, 6})

    def threshold_text(self, contrast: str, method: str, row: dict[str, Any]) -> str:
        """The method's own statement of its threshold (``threshold_text`` in its summary row), else ``stat ≥ t``."""
        if row.get("threshold_text"):
            return str(row["threshold_text"])
        threshold = row.get("threshold", _entry_value(self.thresholded_map(contrast, method), "threshold"))
        if threshold is None or (isinstance(threshold, float) and not math.isfinite(threshold)):
            return "none reachable"
        entry = self.thresholded_map(contrast, method)
        two_sided = (entry.extra.get("two_sided") if entry else None)
        stat = (entry.stat if entry and entry.stat else "z")
        return f"{'|' + stat + '|' if two_sided else stat} ≥ {_fmt(threshold, 3)}"

    # -- configuration -----------------------------------------------------------------------------------------
    def configuration_section(self) -> str:
        rows = [[esc(k), v] for k, v in self.key_settings()]
        table = _html_table(["Setting", "Value"], rows, css="compact keyvalue", header=False)
        text, source = self.config_text()
        return (table + f'<details class="config"><summary>Resolved configuration ({esc(source)}, '
                f"{len(text.splitlines())} lines)</summary><pre>{esc(text)}</pre></details>")

    def key_settings(self) -> list[tuple[str, str]]:
        s = self.settings
        data = getattr(s, "data", None)
        design = getattr(s, "design", None)
        out: list[tuple[str, str]] = []
        if data is not None:
            source = next(((label, getattr(data, key)) for key, label in
                           (("image_4d", "4D image"), ("glob", "files"), ("table", "table"), ("demo", "demo dataset"))
                           if getattr(data, key, None)), None)
            if source:
                out.append(("data", f"{esc(source[0])} <code>{esc(source[1])}</code>"))
            if getattr(data, "query", None):
                out.append(("data.query", f"<code>{esc(data.query)}</code>"))
            mask = (f"<code>{esc(data.mask)}</code>" if getattr(data, "mask", None) else
                    f"automatic ({esc(getattr(data, 'mask_strategy', 'nonzero'))}"
                    + (f", threshold {esc(_fmt(data.mask_threshold))})" if getattr(data, "mask_strategy", "")
                       in ("absolute", "relative") else ")"))
            out.append(("mask", mask))
            fwhm = getattr(data, "smoothing_fwhm", None)
            out.append(("smoothing", f"{esc(_fmt(fwhm))} mm FWHM" if fwhm else "none"))
        if design is not None:
            if getattr(design, "matrix", None):
                out.append(("design", f"matrix <code>{esc(design.matrix)}</code>"))
            else:
                out.append(("design.formula", f"<code>{esc(design.formula)}</code>"))
            out.append(("missing values", "rows dropped" if getattr(design, "drop_missing", False) else "refused"))
        for method, params in (getattr(s, "correction", None) or {}).items():
            values = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params or {})
            text = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items() if v is not None)
            out.append((f"correction.{method}", esc(text) or "defaults"))
        for key in ("seed", "n_jobs"):
            if hasattr(s, key):
                out.append((key, esc(getattr(s, key))))
        return out

    def config_text(self) -> tuple[str, str]:
        """The registered config.yaml's text when there is one, else the settings as YAML."""
        entry = next((e for e in self.entries if e.kind == "config"), None)
        if entry is not None and (self.run_dir / entry.path).is_file():
            return (self.run_dir / entry.path).read_text(encoding="utf-8", errors="replace"), entry.path
        import yaml

        values = dataclasses.asdict(self.settings) if dataclasses.is_dataclass(self.settings) else {}
        return yaml.safe_dump(values, sort_keys=False, default_flow_style=False), "settings"

    # -- inputs ------------------------------------------------------------------------------------------------
    def inputs_section(self) -> str:
        table = self.input_table()
        parts = []
        mask = getattr(self.data, "mask", None)
        affine = getattr(self.data, "affine", None)
        facts = [("maps analysed", _count(getattr(self.data, "n_maps", len(table)), "map"))]
        if mask is not None:
            facts.append(("voxels in the mask", f"{int(np.sum(mask)):,}"))
            grid = " × ".join(str(n) for n in np.shape(mask))
            if affine is not None:
                sizes = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
                grid += " voxels of " + " × ".join(_fmt(v, 3) for v in sizes) + " mm"
            facts.append(("grid", grid))
        dropped = self.dropped_rows()
        facts.append(("rows excluded", str(len(dropped))))
        parts.append(_html_table(["", ""], [[esc(k), esc(v)] for k, v in facts], css="compact keyvalue",
                                 header=False))
        parts.append(f"<h3>Covariates of the {_count(len(table), 'map')} analysed</h3>"
                     + self.covariate_summary(table))
        if len(dropped):
            parts.append("<h3>Rows excluded</h3>" + self.dropped_table(dropped))
        if len(table):
            shown = table.copy()
            for column in self.path_columns(shown):
                shown[column] = [Path(str(v)).name if isinstance(v, str) else v for v in shown[column]]
            rows = [[esc(i + 1)] + [esc(_fmt(v)) for v in record] for i, record in
                    enumerate(shown.itertuples(index=False))]
            parts.append(f'<details><summary>Input table ({len(table)} rows)</summary>'
                         + _html_table(["#"] + [str(c) for c in shown.columns], rows, css="compact scroll")
                         + "</details>")
        return "".join(parts)

    def input_table(self) -> pd.DataFrame:
        for source in (self.design, self.data):
            table = getattr(source, "table", None)
            if isinstance(table, pd.DataFrame):
                return table
        return pd.DataFrame()

    def dropped_rows(self) -> pd.DataFrame:
        dropped = getattr(self.design, "dropped", None)
        return dropped if isinstance(dropped, pd.DataFrame) else pd.DataFrame()

    def path_columns(self, table: pd.DataFrame) -> list[str]:
        """Columns naming image files (the path column and any column whose values all look like image paths)."""
        path_column = getattr(getattr(self.settings, "data", None), "path_column", "path")
        found = []
        for column in table.columns:
            values = table[column].dropna()
            if column == path_column or (len(values) and values.map(
                    lambda v: isinstance(v, str) and v.lower().endswith(PATH_SUFFIXES)).all()):
                found.append(column)
        return found

    def covariate_summary(self, table: pd.DataFrame) -> str:
        columns = [c for c in table.columns if c not in self.path_columns(table)]
        if not columns:
            return '<p class="muted">The input table has no covariates.</p>'
        rows = []
        for column in columns:
            values = table[column]
            missing = int(values.isna().sum())
            present = values.dropna()
            if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
                numbers = present.astype(float)
                sd = float(numbers.std(ddof=1)) if len(numbers) > 1 else float("nan")
                described = (f"mean {_fmt(numbers.mean(), 4)} · sd {_fmt(sd, 3)} · "
                             f"min {_fmt(numbers.min(), 4)} · max {_fmt(numbers.max(), 4)}" if len(numbers) else "—")
                kind = "numeric"
            else:
                counts = present.astype(str).value_counts(sort=False)
                counts = counts.sort_index() if len(counts) <= MAX_LEVELS_SHOWN else counts.sort_values(
                    ascending=False)
                if len(counts) == len(present) and len(present) > MAX_LEVELS_SHOWN:
                    kind = "identifier"
                    described = f"{len(counts)} distinct values ({present.iloc[0]} … {present.iloc[-1]})"
                else:
                    kind = "categorical"
                    shown = [f"{level}: {n}" for level, n in counts.head(MAX_LEVELS_SHOWN).items()]
                    if len(counts) > MAX_LEVELS_SHOWN:
                        shown.append(f"… {len(counts) - MAX_LEVELS_SHOWN} more levels")
                    described = " · ".join(shown)
            rows.append([f"<code>{esc(column)}</code>", esc(kind), _num_cell(len(present)),
                         _num_cell(missing) if missing else '<td class="num muted">0</td>', esc(described)])
        return _html_table(["Column", "Type", "Values", "Missing", "Summary"], rows, css="compact",
                           numeric={2, 3})

    def dropped_table(self, dropped: pd.DataFrame) -> str:
        """The excluded rows with the columns that were missing (the reason they were dropped)."""
        keep = [c for c in dropped.columns if c not in self.path_columns(dropped)]
        rows = []
        for index, record in dropped.iterrows():
            reasons = [str(c) for c in keep if pd.isna(record[c])]
            reason = ("missing " + ", ".join(reasons)) if reasons else "excluded"
            rows.append([esc(_row_number(index))] + [esc(_fmt(record[c])) for c in keep] + [esc(reason)])
        return _html_table(["row"] + [str(c) for c in keep] + ["reason"], rows, css="compact dropped")

    # -- design ------------------------------------------------------------------------------------------------
    def design_section(self) -> str:
        parts = []
        matrix = getattr(self.design, "matrix", None)
        if isinstance(matrix, pd.DataFrame):
            parts.append(f"<p>{_count(matrix.shape[0], 'map')} × {_count(matrix.shape[1], 'regressor')}: "
                         + ", ".join(f"<code>{esc(c)}</code>" for c in matrix.columns) + ".</p>")
        figure = next((e for e in self.figures() if e.contrast is None and Path(e.path).stem == "design_matrix"),
                      None)
        if figure is not None:
            parts.append(self.figure_html(figure, "Design matrix (left) and the cosine similarity of its columns "
                                                  "(right)", css="design"))
        parts.append("<h3>Contrast weights</h3>" + self.contrast_weights())
        contrast_figures = [self.figure_html(e, f"Contrast {e.contrast}") for e in self.figures()
                            if e.contrast is not None and e.correction is None and e.path.endswith("_design.png")]
        if contrast_figures:
            parts.append('<div class="figure-row">' + "".join(contrast_figures) + "</div>")
        return "".join(parts)

    def contrast_weights(self) -> str:
        columns = list(getattr(self.design, "columns", None) or
                       [str(c) for c in getattr(getattr(self.design, "matrix", None), "columns", [])])
        rows = []
        for contrast in self.contrasts:
            matrix = np.atleast_2d(np.asarray(getattr(contrast, "matrix", []), dtype=float))
            stat_type = getattr(contrast, "stat_type", "t" if matrix.shape[0] == 1 else "F")
            for r, weights in enumerate(matrix):
                label = esc(contrast.name) + (f' <span class="muted">row {r + 1}</span>' if len(matrix) > 1 else "")
                cells = [label, esc(stat_type)] + [_weight_cell(w) for w in weights]
                rows.append(cells)
        if not rows:
            return '<p class="muted">No contrasts.</p>'
        return _html_table(["Contrast", "Test"] + columns, rows, css="compact weights scroll",
                           numeric=set(range(2, 2 + len(columns))))

    # -- per contrast ------------------------------------------------------------------------------------------
    def contrast_section(self, name: str) -> str:
        anchor = self.anchors[name]
        contrast = next((c for c in self.contrasts if getattr(c, "name", None) == name), None)
        stat_type = getattr(contrast, "stat_type", None)
        dof = (self.fields.get("dof") or {}).get(name)
        subtitle = []
        if stat_type:
            subtitle.append(f"{stat_type} contrast")
        if dof is not None:
            subtitle.append(f"{_fmt(dof)} degrees of freedom")
        parts = [f'<section class="contrast" id="{anchor}"><h2 class="contrast-title">Contrast '
                 f"<code>{esc(name)}</code></h2>"]
        if subtitle:
            parts.append(f'<p class="muted">{esc(" · ".join(subtitle))}</p>')
        methods = self.methods_for(name)
        if not methods:
            parts.append('<p class="muted">No correction was applied to this contrast.</p>')
        for method in methods:
            parts.append(self.method_section(name, method))
        extra = [e for e in self.figures() if e.contrast == name and e.correction is None
                 and not e.path.endswith("_design.png") and e.path not in self.placed]
        if extra:
            parts.append(f"<h3>{esc(name)} · more figures</h3>" + "".join(self.figure_html(e) for e in extra))
        return "".join(parts) + "</section>"

    def method_section(self, name: str, method: str) -> str:
        row = self.results.get(name, {}).get(method, {}) or {}
        map_entry = self.thresholded_map(name, method)
        anchor = f"{self.anchors[name]}-{safe_label(method)}"
        parts = [f'<section class="method" id="{anchor}"><h3>{esc(name)} · {esc(method)}</h3>']
        parts.append(self.method_facts(name, method, row, map_entry))
        figures = sorted((e for e in self.figures() if e.contrast == name and e.correction == method),
                         key=lambda e: _view_rank(e))
        shown = "".join(self.figure_html(e) for e in figures)
        parts.append(shown or '<p class="muted">No figure was made for this correction.</p>')
        missing = [e.path for e in figures if e.path in self.unreadable]
        if missing:
            parts.append(f'<p class="muted">Figure file(s) missing: {esc(", ".join(missing))}</p>')
        tables = [e for e in self.entries if e.kind == "clusters" and e.contrast == name and e.correction == method]
        for entry in tables:
            parts.append(self.cluster_table(entry))
        if not tables:
            parts.append('<p class="muted">No cluster table was written for this correction.</p>')
        return "".join(parts) + "</section>"

    def method_facts(self, name: str, method: str, row: dict[str, Any], map_entry: OutputEntry | None) -> str:
        alpha = row.get("alpha", _entry_value(map_entry, "alpha"))
        facts = []
        if alpha is not None:
            facts.append(("α", _fmt(alpha)))
        facts.append(("threshold", self.threshold_text(name, method, row)))
        if map_entry is not None and map_entry.extra.get("two_sided") is not None:
            facts.append(("test", "two-sided" if map_entry.extra["two_sided"] else "one-sided"))
        extent = map_entry.extra.get("cluster_threshold") if map_entry is not None else None
        if extent:
            facts.append(("cluster extent", f"≥ {_fmt(extent)} voxels"))
        if map_entry is not None and map_entry.extra.get("n_permutations") and "n_permutations" not in row:
            facts.append(("permutations", f"{int(map_entry.extra['n_permutations']):,}"
                          + (" (exhaustive)" if map_entry.extra.get("exhaustive") else "")))
        if row.get("n_voxels") is not None:
            facts.append(("voxels surviving", f"{int(row['n_voxels']):,}"))
        if row.get("n_clusters") is not None:
            facts.append(("clusters", f"{int(row['n_clusters']):,}"))
        if row.get("peak") is not None:
            facts.append(("peak statistic", _fmt(row["peak"], 3)))
        shown = {"alpha", "threshold", "threshold_text", "family", "n_voxels", "n_clusters", "peak", "notes", "warnings"}
        for key, value in row.items():
            if key not in shown and isinstance(value, (int, float, str, bool, np.generic)) and value is not None:
                facts.append((key.replace("_", " "), _fmt(value, 4)))
        items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts)
        return f'<dl class="facts-grid">{items}</dl>'

    def cluster_table(self, entry: OutputEntry) -> str:
        path = self.run_dir / entry.path
        try:
            frame = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False,
                                dtype={"cluster_id": str})
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            return f'<p class="callout warn">Cluster table {esc(entry.path)} could not be read: {esc(error)}</p>'
        caption = f'Cluster table <code>{esc(entry.path)}</code>'
        if frame.empty:
            return (f'<div class="clusters-block"><p class="caption">{caption}</p>'
                    f'<p class="empty" data-file="{esc(entry.path)}">No clusters survive this threshold.</p></div>')
        ordered = [c for c in CLUSTER_COLUMNS if c in frame.columns]
        ordered += [c for c in frame.columns if c not in ordered and c not in HIDDEN_CLUSTER_COLUMNS]
        peak_label = "Peak z" if entry.stat in (None, "z", "tdp") else f"Peak {entry.stat}"
        headers = [peak_label if c == "peak_stat" else CLUSTER_COLUMNS.get(c, c) for c in ordered]
        n_peaks = len(frame)
        n_clusters = int(frame["size_voxels"].notna().sum()) if "size_voxels" in frame else n_peaks
        body = []
        for _, record in frame.iterrows():
            sub_peak = "size_voxels" in frame and pd.isna(record.get("size_voxels"))
            cells = "".join(_cluster_cell(c, record[c]) for c in ordered)
            coords = " ".join(_fmt(record[c]) for c in ("x", "y", "z") if c in frame)
            body.append(f'<tr{" class=subpeak" if sub_peak else ""} data-peak="{esc(coords)}">{cells}</tr>')
        head = "".join(f"<th{' class=num' if c not in ('cluster_id', 'sign') else ''}>{esc(h)}</th>"
                       for c, h in zip(ordered, headers))
        group = ""
        if all(c in ordered for c in ("x", "y", "z")):
            group = self.coordinate_group_header(ordered)
        note = f"{_count(n_clusters, 'cluster')}" + (f", {n_peaks - n_clusters} sub-peak(s)" if n_peaks > n_clusters
                                                    else "")
        return (f'<div class="clusters-block"><p class="caption">{caption} · {esc(note)} · peak coordinates in '
                f"MNI mm</p><div class=\"table-wrap\"><table class=\"clusters compact\" "
                f'data-file="{esc(entry.path)}"><thead>{group}<tr>{head}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table></div></div>")

    @staticmethod
    def coordinate_group_header(ordered: list[str]) -> str:
        cells, i = [], 0
        while i < len(ordered):
            if ordered[i] == "x" and ordered[i + 1:i + 3] == ["y", "z"]:
                cells.append('<th colspan="3" class="group">Peak (mm)</th>')
                i += 3
            else:
                cells.append("<th></th>")
                i += 1
        return f'<tr class="group-row">{"".join(cells)}</tr>'

    # -- figures -----------------------------------------------------------------------------------------------
    def figures(self) -> list[OutputEntry]:
        return [e for e in self.entries if e.kind == "figure"]

    def figure_html(self, entry: OutputEntry, caption: str | None = None, css: str | None = None) -> str:
        """An embedded PNG (base64 data URI) with its file name in ``data-src`` and ``alt``."""
        path = self.run_dir / entry.path
        try:
            payload = base64.b64encode(path.read_bytes()).decode("ascii")
        except OSError:
            if entry.path not in self.unreadable:
                log.warning("report: figure %s is registered but cannot be read; left out", entry.path)
            self.unreadable.add(entry.path)
            return ""
        self.placed.add(entry.path)
        view = str(entry.extra.get("view") or "")
        text = caption or VIEW_CAPTIONS.get(view) or Path(entry.path).stem.replace("_", " ")
        detail = self.cut_caption(entry) if view == "slices" else ""
        return (f'<figure class="plot {esc(css or view or "other")}"><img src="data:image/png;base64,{payload}" '
                f'alt="{esc(entry.path)}" data-src="{esc(entry.path)}">'
                f"<figcaption>{esc(text)}{esc(detail)} · <code>{esc(entry.path)}</code></figcaption></figure>")

    def cut_caption(self, entry: OutputEntry) -> str:
        """Where the slices cut (the peak of the map they show), read back from the thresholded map."""
        map_entry = next((e for e in self.entries if e.kind == "map" and e.contrast == entry.contrast
                          and e.correction == entry.correction and e.stat == entry.stat), None)
        if map_entry is None:
            return ""
        try:
            import nibabel as nib

            from runner.outputs.figures_geometry import peak_coordinates_mm

            image = nib.load(self.run_dir / map_entry.path)
            peak = peak_coordinates_mm(np.asanyarray(image.dataobj), image.affine)
        except Exception:  # a caption is not worth failing the report for
            return ""
        if peak is None:
            return " (nothing survives)"
        return " at x = {}, y = {}, z = {} mm".format(*(_fmt(v) for v in peak))

    def other_figures_section(self) -> str:
        # Rendered after the contrast sections so that only figures no section showed land here.
        return "".join(self.figure_html(e) for e in self.figures()
                       if e.path not in self.placed and e.path not in self.unreadable)

    # -- run information ---------------------------------------------------------------------------------------
    def run_section(self) -> str:
        rows = []
        for key, label in (("status", "status"), ("config_sha256", "config sha256"), ("seed", "seed"),
                           ("data_cache", "data cache")):
            if self.fields.get(key) is not None:
                rows.append([esc(label), f"<code>{esc(self.fields[key])}</code>"])
        overrides = self.fields.get("overrides")
        if overrides:
            rows.append(["overrides", " ".join(f"<code>{esc(o)}</code>" for o in overrides)])
        command = self.fields.get("command")
        if command:
            rows.append(["command", f"<code>{esc(' '.join(map(str, command)))}</code>"])
        versions = self.fields.get("versions") or {}
        if versions:
            rows.append(["versions", esc(" · ".join(f"{k} {v}" for k, v in versions.items()))])
        parts = [_html_table(["", ""], rows, css="compact keyvalue", header=False)] if rows else []
        outputs = [e for e in self.entries if e.kind != "report"]
        items = "".join(f'<tr><td><a href="{esc(_href(e.path))}">{esc(e.path)}</a></td><td>{esc(e.kind)}</td></tr>'
                        for e in outputs)
        parts.append(f"<details><summary>Output files ({len(outputs)}; manifest.json lists them with their sha256)"
                     f'</summary><table class="compact"><thead><tr><th>File</th><th>Kind</th></tr></thead>'
                     f"<tbody>{items}</tbody></table></details>")
        return "".join(parts)

    # -- lookups -----------------------------------------------------------------------------------------------
    def methods_in_order(self) -> list[str]:
        configured = list((getattr(self.settings, "correction", None) or {}).keys())
        seen = [m for methods in self.results.values() for m in (methods or {})]
        seen += [e.correction for e in self.entries if e.correction]
        return list(dict.fromkeys(configured + [m for m in seen if m]))

    def methods_for(self, contrast: str) -> list[str]:
        present = set(self.results.get(contrast, {}) or {})
        present |= {e.correction for e in self.entries if e.contrast == contrast and e.correction}
        return [m for m in self.methods_in_order() if m in present]

    def thresholded_map(self, contrast: str, method: str) -> OutputEntry | None:
        """The map a correction thresholded (the one with a threshold when there are several, e.g. logp too)."""
        maps = [e for e in self.entries if e.kind == "map" and e.contrast == contrast and e.correction == method]
        return next((e for e in maps if e.threshold is not None), maps[0] if maps else None)


# -- small helpers -----------------------------------------------------------------------------------------------
def esc(value: Any) -> str:
    """HTML-escape any value (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


def _href(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _count(n: Any, noun: str) -> str:
    if n is None:
        return f"? {noun}s"
    n = int(n)
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


_fmt = format_number  # numbers for a reader, as the methods state their thresholds


def _entry_value(entry: OutputEntry | None, key: str) -> Any:
    return getattr(entry, key, None) if entry is not None else None


def _row_number(index: Any) -> str:
    return str(int(index) + 1) if isinstance(index, (int, np.integer)) else str(index)


def _view_rank(entry: OutputEntry) -> tuple[int, str]:
    view = str(entry.extra.get("view") or "")
    return (VIEW_ORDER.index(view) if view in VIEW_ORDER else len(VIEW_ORDER), entry.path)


def _num_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td class="num muted">n/a</td>'
    return f'<td class="num">{int(value):,}</td>'


def _weight_cell(weight: float) -> str:
    css = "num zero" if weight == 0 else ("num positive" if weight > 0 else "num negative")
    return f'<td class="{css}">{esc(_fmt(weight, 3))}</td>'


def _cluster_cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td class="num muted"></td>'
    if column == "sign" and isinstance(value, (int, float, np.number)):
        return f"<td>{'+' if value > 0 else '−'}</td>"
    if column in ("cluster_id", "sign"):
        return f"<td>{esc(value)}</td>"
    if column in ("x", "y", "z"):
        return f'<td class="num">{esc(_fmt(value, 4))}</td>'
    if column in ("size_voxels", "size_mm3", "true_discoveries"):
        return f'<td class="num">{esc(_fmt(value, 6))}</td>'
    if column == "peak_stat":
        return f'<td class="num">{float(value):.2f}</td>'
    if column == "tdp":
        return f'<td class="num">{float(value):.3f}</td>'
    if isinstance(value, (float, np.floating)) and ("p" in column.split("_") or column.startswith("p_")):
        return f'<td class="num">{_p_value(float(value))}</td>'
    if isinstance(value, (int, float, np.number)):
        return f'<td class="num">{esc(_fmt(value, 4))}</td>'
    return f"<td>{esc(value)}</td>"


def _p_value(p: float) -> str:
    return f"{p:.2e}" if 0 < p < 1e-3 else f"{p:.3f}"


def _html_table(headers: list[str], rows: Iterable[list[str]], css: str = "", header: bool = True,
                numeric: set[int] | None = None) -> str:
    """A table from escaped cell contents; a cell that already is a ``<td>`` is used as it is."""
    numeric = numeric or set()
    head = ""
    if header:
        head = "<thead><tr>" + "".join(f"<th{' class=num' if i in numeric else ''}>{esc(h)}</th>"
                                       for i, h in enumerate(headers)) + "</tr></thead>"
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if cell.startswith("<td"):
                cells.append(cell)
            else:
                cells.append(f"<td{' class=num' if i in numeric else ''}>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="table-wrap"><table class="{css}">{head}<tbody>{"".join(body)}</tbody></table></div>'


STYLE = """
:root { --ink: #1a202c; --muted: #5a6478; --line: #e2e8f0; --accent: #2b6cb0; --panel: #f7fafc;
        --warn-bg: #fffaf0; --warn-line: #dd6b20; --ok-bg: #f0fff4; --ok-line: #38a169; }
* { box-sizing: border-box; }
html { font-size: 15px; }
body { margin: 0; color: var(--ink); background: #edf0f4;
       font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif;
       line-height: 1.45; }
main { max-width: 1120px; margin: 24px auto; padding: 28px 40px 40px; background: #fff;
       border: 1px solid var(--line); border-radius: 6px; }
header { border-bottom: 3px solid var(--accent); padding-bottom: 12px; margin-bottom: 20px; }
.kicker { margin: 0; color: var(--accent); font-size: 0.8rem; font-weight: 600; letter-spacing: 0.08em;
          text-transform: uppercase; }
h1 { margin: 4px 0 6px; font-size: 1.9rem; font-weight: 650; }
h2 { font-size: 1.35rem; margin: 34px 0 12px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.08rem; margin: 22px 0 8px; }
section.contrast > h2.contrast-title { background: var(--panel); border: 1px solid var(--line);
       border-left: 4px solid var(--accent); padding: 8px 12px; border-radius: 4px; }
section.method { margin: 0 0 28px; padding-left: 12px; border-left: 2px solid var(--line); }
section.method > h3 { margin-top: 18px; }
p { margin: 6px 0 10px; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code, pre { font-family: "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 0.86em; }
code { background: var(--panel); padding: 0 3px; border-radius: 3px; overflow-wrap: anywhere; }
pre { background: var(--panel); border: 1px solid var(--line); padding: 10px 12px; border-radius: 4px;
      overflow-x: auto; line-height: 1.35; }
.muted { color: var(--muted); }
.facts { margin: 0; font-size: 1.02rem; }
header .muted { font-size: 0.86rem; margin-top: 4px; }
nav.toc { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 10px 18px 8px; }
nav.toc h2 { border: 0; margin: 0 0 4px; font-size: 1rem; text-transform: uppercase; letter-spacing: 0.06em;
             color: var(--muted); }
nav.toc ol { margin: 0; padding-left: 20px; columns: 2; column-gap: 36px; }
nav.toc li { margin: 2px 0; break-inside: avoid; }
nav.toc ul { margin: 2px 0 4px; padding-left: 16px; list-style: disc; }
.toc-methods { display: block; font-size: 0.85rem; color: var(--muted); }
.badge { display: inline-block; min-width: 1.5em; padding: 0 6px; border-radius: 9px; font-size: 0.78rem;
         text-align: center; color: #fff; }
.badge.warn { background: var(--warn-line); }
.badge.ok { background: var(--ok-line); }
.callout { border: 1px solid var(--line); border-left: 4px solid; border-radius: 4px; padding: 8px 14px; }
.callout.warn { background: var(--warn-bg); border-left-color: var(--warn-line); }
.callout.ok { background: var(--ok-bg); border-left-color: var(--ok-line); }
ul.warnings { margin: 2px 0; padding-left: 18px; }
ul.warnings li { margin: 3px 0; }
.table-wrap { overflow-x: auto; margin: 6px 0 12px; }
table { border-collapse: collapse; font-size: 0.88rem; }
table.compact th, table.compact td { padding: 3px 10px; }
th { text-align: left; font-weight: 600; border-bottom: 2px solid #cbd5e0; background: var(--panel);
     white-space: nowrap; }
td { border-bottom: 1px solid var(--line); vertical-align: top; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fbfcfd; }
table.keyvalue td:first-child { color: var(--muted); white-space: nowrap; padding-right: 18px; }
table.keyvalue td { border-bottom: 1px dotted var(--line); }
table.summary { min-width: 70%; }
table.weights td.zero { color: #a0aec0; }
table.weights td.positive { color: #c53030; font-weight: 600; }
table.weights td.negative { color: #2b6cb0; font-weight: 600; }
tr.group-row th { border-bottom: 0; text-align: center; font-weight: 500; color: var(--muted);
                  font-size: 0.8rem; padding-bottom: 0; }
tr.group-row th.group { border-bottom: 1px solid #cbd5e0; }
tr.subpeak td { color: var(--muted); font-size: 0.95em; }
tr.subpeak td:first-child { padding-left: 22px; }
.clusters-block { margin: 10px 0 4px; }
.caption { font-size: 0.86rem; color: var(--muted); margin: 6px 0 2px; }
p.empty { padding: 8px 12px; background: var(--panel); border: 1px dashed #cbd5e0; border-radius: 4px;
          color: var(--muted); display: inline-block; margin: 4px 0; }
dl.facts-grid { display: flex; flex-wrap: wrap; gap: 6px 26px; margin: 6px 0 12px; padding: 8px 12px;
                background: var(--panel); border-radius: 4px; border: 1px solid var(--line); }
dl.facts-grid div { display: flex; flex-direction: column; }
dl.facts-grid dt { font-size: 0.76rem; letter-spacing: 0.02em; color: var(--muted); }
dl.facts-grid dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; }
figure.plot { margin: 10px 0 16px; }
figure.plot img { display: block; max-width: 100%; height: auto; border-radius: 3px; border: 1px solid var(--line); }
figcaption { font-size: 0.82rem; color: var(--muted); margin-top: 4px; }
.figure-row { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
.figure-row figure.plot { margin: 4px 0; flex: 0 1 320px; }
figure.plot.design img { max-width: 820px; }
details { margin: 10px 0; }
summary { cursor: pointer; color: var(--accent); font-weight: 500; }
details > .table-wrap, details > table { margin-top: 8px; }
@media print {
  body { background: #fff; }
  main { border: 0; margin: 0; padding: 0; max-width: none; }
  figure, table, dl { break-inside: avoid; }
  details > summary { display: none; }
  details:not([open]) > *:not(summary) { display: block; }
}
"""
