"""The run report's view model: everything report.html shows, as plain data for ``report.html.j2``.

The model reads the run's registered outputs (figures as base64 PNGs, cluster TSVs, the thresholded maps for the
slice captions), the settings, the data, the design and the summary rows the inference methods returned; it writes
no HTML. It reads like the page: warnings, results at a glance, configuration, inputs, design and contrasts, one
section per contrast with, per correction, its facts, figures and cluster tables, other figures, run information.
"""

from __future__ import annotations

import base64
import logging
import math
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from runner.outputs import report_config, report_tables
from runner.outputs.manifest import read_manifest
from runner.outputs.naming import safe_label
from runner.outputs.report_tables import cell, code, count, count_cell, fmt, key_value_table, parts, table
from runner.outputs.writer import OutputEntry

log = logging.getLogger(__name__)

# Fewer permutations than this makes p-values coarse (the smallest attainable p is 1 / n_permutations).
FEW_PERMUTATIONS = 1000
VIEW_ORDER = ("slices", "surface", "glassbrain", "montage")
VIEW_CAPTIONS = {
    "surface": "Lateral and medial views of both hemispheres (inflated surface, sulcal depth in grey)",
    "slices": "Orthogonal slices through the peak",
    "glassbrain": "Glass brain (maximum-intensity projections)",
    "montage": "Axial montage",
    "null": "Permutation null distribution of the maximum statistic",
    "null_distribution": "Permutation null distribution of the maximum statistic",
    "scatter": "Values at the peak against a covariate",
}
SECTIONS = (("warnings", "Warnings"), ("summary", "Results at a glance"), ("configuration", "Configuration"),
            ("inputs", "Inputs"), ("design", "Design and contrasts"))
SHOWN_FACTS = {"alpha", "threshold", "threshold_text", "family", "n_voxels", "n_clusters", "peak", "notes",
               "warnings", "footer", "footer_title"}


class ReportModel:
    """Builds the page's data once (:meth:`build`); figures are embedded at most once, in the order the page shows
    them, and registered figures whose file cannot be read are listed as missing."""

    def __init__(self, run_dir: Path, entries: list[OutputEntry], settings: Any, data: Any, design: Any,
                 contrasts: list[Any], fields: dict[str, Any], summary: dict[str, Any],
                 shown_dir: Path | None = None) -> None:
        self.run_dir = Path(run_dir)  # where the files are read now (the staging folder while the run is on)
        self.shown_dir = Path(shown_dir or run_dir)  # where the reader finds them
        self.entries = list(entries)
        self.settings = settings
        self.data = data
        self.design = design
        self.contrasts = list(contrasts)
        self.fields = fields or {}
        self.results: dict[str, dict[str, Any]] = dict((summary or {}).get("contrasts") or {})
        self.placed: set[str] = set()  # figures shown
        self.unreadable: set[str] = set()  # figures registered whose file cannot be read
        names = [getattr(c, "name", str(c)) for c in self.contrasts]
        names += [c for c in self.results if c not in names]
        names += [e.contrast for e in self.entries if e.contrast and e.contrast not in names]
        self.contrast_names = list(dict.fromkeys(names))
        self.anchors = {name: f"contrast-{i + 1}-{safe_label(name)}" for i, name in enumerate(self.contrast_names)}

    # -- the page ----------------------------------------------------------------------------------------------
    def build(self) -> dict[str, Any]:
        """The page as plain data, section by section (contrast sections before "other figures", which lists only
        the figures no section showed)."""
        page: dict[str, Any] = {
            "title": f"Second-level analysis: {self.analysis_name()}",
            "header": self.header(),
            "warnings": self.collect_warnings(),
            "summary": self.summary_table(),
            "configuration": self.configuration(),
            "inputs": self.inputs(),
            "design": self.design_part(),
        }
        page["contrasts"] = [self.contrast_part(name) for name in self.contrast_names]
        page["other_figures"] = [f for f in (self.figure(e) for e in self.figures()
                                             if e.path not in self.placed and e.path not in self.unreadable) if f]
        page["run"] = self.run_information()
        page["toc"] = self.table_of_contents(page)
        return page

    def analysis_name(self) -> str:
        return str(getattr(self.settings, "name", "") or self.shown_dir.name)

    def header(self) -> dict[str, Any]:
        n_maps = getattr(self.data, "n_maps", self.fields.get("n_maps"))
        n_voxels = getattr(self.data, "n_voxels", self.fields.get("n_voxels"))
        methods = self.methods_in_order()
        on_surface = getattr(self.data, "surface", None) is not None
        elements = (f"{int(n_voxels):,} vertices" if on_surface and n_voxels is not None
                    else count(n_voxels, "voxel"))
        facts = [count(n_maps, "map"), f"{elements} in the mask",
                 count(len(self.contrast_names), "contrast"),
                 "corrections: " + (", ".join(methods) if methods else "none")]
        return {"name": self.analysis_name(), "facts": facts, "run_dir": str(self.shown_dir),
                "written": self.written()}

    def written(self) -> str | None:
        """When, from the manifest only (no clock read here, so the same run renders the same page): the
        ``written_at`` given, else that of the manifest on disk (the run's start while it is running)."""
        stamp, status = self.fields.get("written_at"), None
        if not stamp:
            manifest = read_manifest(self.run_dir) or {}
            stamp, status = manifest.get("written_at"), manifest.get("status")
        if not stamp:
            return None
        return ("started " if status == "running" else "written ") + str(stamp).replace("T", " ")

    def table_of_contents(self, page: dict[str, Any]) -> dict[str, Any]:
        sections = [{"anchor": anchor, "title": title, "badge": None} for anchor, title in SECTIONS]
        n = len(page["warnings"])
        sections[0]["badge"] = {"n": n, "css": "warn" if n else "ok"}
        contrasts = [{"anchor": c["anchor"], "name": c["name"],
                      "methods": [{"anchor": m["anchor"], "label": m["toc_label"]} for m in c["methods"]]}
                     for c in page["contrasts"]]
        return {"sections": sections, "contrasts": contrasts, "other": bool(page["other_figures"])}

    # -- warnings ----------------------------------------------------------------------------------------------
    def collect_warnings(self) -> list[str]:
        """Notes of the run (resampling, dropped rows, excluded voxels ...) and coarse permutation p-values."""
        found: list[str] = []
        for key in ("notes", "warnings"):
            found += [str(n) for n in as_list(self.fields.get(key))]
        for contrast, methods in self.results.items():
            for method, row in (methods or {}).items():
                if not isinstance(row, dict):
                    continue
                for key in ("notes", "warnings"):
                    found += [f"{contrast}, {method}: {n}" for n in as_list(row.get(key))]
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

    # -- results at a glance ------------------------------------------------------------------------------------
    def summary_table(self) -> dict[str, Any] | None:
        rows = []
        for name in self.contrast_names:
            for method in self.methods_for(name):
                row = self.row(name, method)
                alpha = row.get("alpha", entry_value(self.thresholded_map(name, method), "alpha"))
                link = {"parts": [("link", method, f"#{self.method_anchor(name, method)}")], "css": None}
                rows.append([name, link, fmt(alpha), self.threshold_text(name, method, row),
                             count_cell(row.get("n_voxels")), count_cell(row.get("n_clusters")),
                             fmt(row.get("peak"), 3)])
        if not rows:
            return None
        return table(["Contrast", "Correction", "α", "Threshold", "Voxels surviving", "Clusters", "Peak statistic"],
                     rows, css="compact summary", numeric={4, 5, 6})

    def threshold_text(self, contrast: str, method: str, row: dict[str, Any]) -> str:
        """The method's own statement of its threshold (``threshold_text`` in its summary row), else ``stat ≥ t``."""
        if row.get("threshold_text"):
            return str(row["threshold_text"])
        entry = self.thresholded_map(contrast, method)
        threshold = row.get("threshold", entry_value(entry, "threshold"))
        if threshold is None or (isinstance(threshold, float) and not math.isfinite(threshold)):
            return "none reachable"
        two_sided = entry.extra.get("two_sided") if entry else None
        stat = entry.stat if entry and entry.stat else "z"
        return f"{'|' + stat + '|' if two_sided else stat} ≥ {fmt(threshold, 3)}"

    # -- configuration -----------------------------------------------------------------------------------------
    def configuration(self) -> dict[str, Any]:
        text, source = report_config.config_text(self.run_dir, self.entries, self.settings)
        return {"settings": key_value_table(report_config.key_settings(self.settings)),
                "corrections": report_config.correction_parameters(self.settings),
                "config": {"text": text, "source": source, "n_lines": len(text.splitlines())}}

    # -- inputs ------------------------------------------------------------------------------------------------
    def inputs(self) -> dict[str, Any]:
        frame = self.input_frame()
        path_column = getattr(getattr(self.settings, "data", None), "path_column", "path")
        mask = getattr(self.data, "mask", None)
        affine = getattr(self.data, "affine", None)
        facts = [("maps analysed", count(getattr(self.data, "n_maps", len(frame)), "map"))]
        surface = getattr(self.data, "surface", None)
        if surface is not None:
            facts.append(("vertices in the mask", f"{int(np.sum(mask)):,}"))
            facts.append(("mesh", f"{surface.name}: " + ", ".join(
                f"{hemi} {len(m.vertices):,} vertices" for hemi, m in surface.hemispheres.items())))
        elif mask is not None:
            facts.append(("voxels in the mask", f"{int(np.sum(mask)):,}"))
            grid = " × ".join(str(n) for n in np.shape(mask))
            if affine is not None:
                sizes = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
                grid += " voxels of " + " × ".join(fmt(v, 3) for v in sizes) + " mm"
            facts.append(("grid", grid))
        dropped = self.dropped_rows()
        facts.append(("rows excluded", str(len(dropped))))
        return {"facts": key_value_table(facts), "n_analysed": count(len(frame), "map"),
                "covariates": report_tables.covariate_summary(frame, path_column),
                "dropped": report_tables.dropped_table(dropped, path_column) if len(dropped) else None,
                "table": report_tables.input_table(frame, path_column) if len(frame) else None,
                "n_rows": len(frame)}

    def input_frame(self) -> pd.DataFrame:
        for source in (self.design, self.data):
            frame = getattr(source, "table", None)
            if isinstance(frame, pd.DataFrame):
                return frame
        return pd.DataFrame()

    def dropped_rows(self) -> pd.DataFrame:
        dropped = getattr(self.design, "dropped", None)
        return dropped if isinstance(dropped, pd.DataFrame) else pd.DataFrame()

    # -- design ------------------------------------------------------------------------------------------------
    def design_part(self) -> dict[str, Any]:
        matrix = getattr(self.design, "matrix", None)
        shape = None
        if isinstance(matrix, pd.DataFrame):
            shape = {"text": f"{count(matrix.shape[0], 'map')} × {count(matrix.shape[1], 'regressor')}",
                     "columns": [str(c) for c in matrix.columns]}
        entry = next((e for e in self.figures() if e.contrast is None and Path(e.path).stem == "design_matrix"), None)
        figure = (self.figure(entry, "Design matrix (left) and the cosine similarity of its columns (right)",
                              css="design") if entry is not None else None)
        weights = self.contrast_weights()
        contrast_figures = [self.figure(e, f"Contrast {e.contrast}") for e in self.figures()
                            if e.contrast is not None and e.correction is None and e.path.endswith("_design.png")]
        return {"matrix": shape, "figure": figure, "weights": weights,
                "contrast_figures": [f for f in contrast_figures if f]}

    def contrast_weights(self) -> dict[str, Any] | None:
        columns = list(getattr(self.design, "columns", None) or
                       [str(c) for c in getattr(getattr(self.design, "matrix", None), "columns", [])])
        rows = []
        for contrast in self.contrasts:
            matrix = np.atleast_2d(np.asarray(getattr(contrast, "matrix", []), dtype=float))
            stat_type = getattr(contrast, "stat_type", "t" if matrix.shape[0] == 1 else "F")
            for r, weights in enumerate(matrix):
                label = parts(contrast.name) + ([("text", " "), ("muted", f"row {r + 1}")] if len(matrix) > 1
                                                 else [])
                rows.append([{"parts": label, "css": None}, stat_type]
                            + [report_tables.weight_cell(w) for w in weights])
        if not rows:
            return None
        return table(["Contrast", "Test"] + columns, rows, css="compact weights scroll",
                     numeric=range(2, 2 + len(columns)))

    # -- per contrast ------------------------------------------------------------------------------------------
    def contrast_part(self, name: str) -> dict[str, Any]:
        contrast = next((c for c in self.contrasts if getattr(c, "name", None) == name), None)
        stat_type = getattr(contrast, "stat_type", None)
        dof = (self.fields.get("dof") or {}).get(name)
        subtitle = []
        if stat_type:
            subtitle.append(f"{stat_type} contrast")
        if dof is not None:
            subtitle.append(f"{fmt(dof)} degrees of freedom")
        methods = [self.method_part(name, method) for method in self.methods_for(name)]
        extra = [self.figure(e) for e in self.figures() if e.contrast == name and e.correction is None
                 and not e.path.endswith("_design.png") and e.path not in self.placed]
        return {"anchor": self.anchors[name], "name": name, "subtitle": " · ".join(subtitle), "methods": methods,
                "extra_figures": [f for f in extra if f]}

    def element_count(self, n: Any) -> str:
        """``12 voxels`` (volumes) or ``12 vertices`` (surfaces)."""
        if getattr(self.data, "surface", None) is not None:
            return f"{int(n):,} {'vertex' if int(n) == 1 else 'vertices'}"
        return count(n, "voxel")

    def method_part(self, name: str, method: str) -> dict[str, Any]:
        row = self.row(name, method)
        figures = sorted((e for e in self.figures() if e.contrast == name and e.correction == method), key=view_rank)
        shown = [f for f in (self.figure(e) for e in figures) if f]
        n = row.get("n_voxels")
        tables = [e for e in self.entries if e.kind == "clusters" and e.contrast == name and e.correction == method]
        other_tables = [e for e in self.entries if e.kind == "table" and e.contrast == name
                        and e.correction == method and e.extra.get("shown_in_report")]
        return {"anchor": self.method_anchor(name, method), "name": method,
                "toc_label": method + (f" ({self.element_count(n)})" if n is not None else ""),
                "facts": self.method_facts(name, method, row), "figures": shown,
                "missing": [e.path for e in figures if e.path in self.unreadable],
                "tables": [report_tables.read_plain_table(self.run_dir, e) for e in other_tables],
                "cluster_tables": [report_tables.read_cluster_table(self.run_dir, e) for e in tables],
                "footer": footer_table(row.get("footer")),
                "footer_title": str(row.get("footer_title") or "Footer")}

    def method_facts(self, name: str, method: str, row: dict[str, Any]) -> list[tuple[str, str]]:
        """α, threshold, sidedness, extent, permutations, what survives, then any other value of the summary row."""
        entry = self.thresholded_map(name, method)
        extra = entry.extra if entry is not None else {}
        alpha = row.get("alpha", entry_value(entry, "alpha"))
        facts = []
        if alpha is not None:
            facts.append(("α", fmt(alpha)))
        facts.append(("threshold", self.threshold_text(name, method, row)))
        if extra.get("two_sided") is not None:
            facts.append(("test", "two-sided" if extra["two_sided"] else "one-sided"))
        element = "vertices" if getattr(self.data, "surface", None) is not None else "voxels"
        if extra.get("cluster_threshold"):
            facts.append(("cluster extent", f"≥ {fmt(extra['cluster_threshold'])} {element}"))
        if extra.get("n_permutations") and "n_permutations" not in row:
            facts.append(("permutations", f"{int(extra['n_permutations']):,}"
                          + (" (exhaustive)" if extra.get("exhaustive") else "")))
        if row.get("n_voxels") is not None:
            facts.append((f"{element} surviving", f"{int(row['n_voxels']):,}"))
        if row.get("n_clusters") is not None:
            facts.append(("clusters", f"{int(row['n_clusters']):,}"))
        if row.get("peak") is not None:
            facts.append(("peak statistic", fmt(row["peak"], 3)))
        for key, value in row.items():
            if key not in SHOWN_FACTS and isinstance(value, (int, float, str, bool, np.generic)):
                facts.append((key.replace("_", " "), fmt(value, 4)))
        return facts

    # -- figures -----------------------------------------------------------------------------------------------
    def figures(self) -> list[OutputEntry]:
        return [e for e in self.entries if e.kind == "figure"]

    def figure(self, entry: OutputEntry, caption: str | None = None, css: str | None = None) -> dict[str, Any] | None:
        """An embedded PNG (base64) with its caption, or None (logged once) when the file cannot be read."""
        try:
            payload = base64.b64encode((self.run_dir / entry.path).read_bytes()).decode("ascii")
        except OSError:
            if entry.path not in self.unreadable:
                log.warning("report: figure %s is registered but cannot be read; left out", entry.path)
            self.unreadable.add(entry.path)
            return None
        self.placed.add(entry.path)
        view = str(entry.extra.get("view") or "")
        text = (caption or entry.extra.get("caption") or VIEW_CAPTIONS.get(view)
                or Path(entry.path).stem.replace("_", " "))
        detail = self.cut_caption(entry) if view == "slices" else ""
        return {"payload": payload, "path": entry.path, "css": css or view or "other", "caption": text + detail}

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
        return " at x = {}, y = {}, z = {} mm".format(*(fmt(v) for v in peak))

    # -- run information ---------------------------------------------------------------------------------------
    def run_information(self) -> dict[str, Any]:
        pairs: list[tuple[str, Any]] = []
        for key, label in (("status", "status"), ("config_sha256", "config sha256"), ("seed", "seed"),
                           ("data_cache", "data cache")):
            if self.fields.get(key) is not None:
                pairs.append((label, parts(code(self.fields[key]))))
        overrides = self.fields.get("overrides")
        if overrides:
            segments: list[Any] = []
            for i, override in enumerate(overrides):
                segments += ([" "] if i else []) + [code(override)]
            pairs.append(("overrides", parts(*segments)))
        command = self.fields.get("command")
        if command:
            pairs.append(("command", parts(code(" ".join(map(str, command))))))
        versions = self.fields.get("versions") or {}
        if versions:
            pairs.append(("versions", " · ".join(f"{k} {v}" for k, v in versions.items())))
        outputs = [{"href": quote(e.path, safe="/"), "path": e.path, "kind": e.kind}
                   for e in self.entries if e.kind != "report"]
        return {"facts": key_value_table(pairs) if pairs else None, "outputs": outputs}

    # -- lookups -----------------------------------------------------------------------------------------------
    def row(self, contrast: str, method: str) -> dict[str, Any]:
        return self.results.get(contrast, {}).get(method, {}) or {}

    def method_anchor(self, contrast: str, method: str) -> str:
        return f"{self.anchors[contrast]}-{safe_label(method)}"

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


def footer_table(pairs: Any) -> dict[str, Any] | None:
    """A method's footer (summary row key ``footer``: label/value pairs, e.g. SPM's lines under its results table)
    as a key-value table; None when the method has none."""
    if not isinstance(pairs, (list, tuple)) or not pairs:
        return None
    return key_value_table([(str(pair[0]), str(pair[1])) for pair in pairs
                            if isinstance(pair, (list, tuple)) and len(pair) == 2])


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def entry_value(entry: OutputEntry | None, key: str) -> Any:
    return getattr(entry, key, None) if entry is not None else None


def view_rank(entry: OutputEntry) -> tuple[int, str]:
    view = str(entry.extra.get("view") or "")
    return (VIEW_ORDER.index(view) if view in VIEW_ORDER else len(VIEW_ORDER), entry.path)
