"""report.html and multirun_summary.html: self-contained pages that show every figure and every cluster row.

The pages are read back with the standard library's HTML parser (no extra dependency): expectations come from the
files the run wrote (manifest.json, the cluster TSVs, the PNGs, the thresholded maps), not from the report code.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import run_analysis

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
URL_ATTRIBUTES = {"href", "src", "srcset", "action", "formaction", "poster", "data", "background"}


class Page(HTMLParser):
    """What the tests need from a page: images, links, cluster tables, text per section; nesting is checked."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.errors: list[str] = []
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.section_text: dict[str, list[str]] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.empty_tables: set[str] = set()
        self.figcaptions: list[str] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_tbody = False
        self._caption: list[str] | None = None
        self._empty: str | None = None
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {[t for t, _ in self.stack]}")

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        self.urls += [v for k, v in attributes.items() if k in URL_ATTRIBUTES]
        if tag == "img":
            self.images.append(attributes)
        if tag == "a" and "href" in attributes:
            self.links.append(attributes["href"])
        if tag == "table" and "data-file" in attributes:
            self._table = attributes["data-file"]
            self.tables[self._table] = []
        if tag == "tbody":
            self._in_tbody = True
        if tag == "tr" and self._table and self._in_tbody:
            self._row = []
        if tag == "td" and self._row is not None:
            self._cell = []
        if tag == "figcaption":
            self._caption = []
        if tag == "p" and "empty" in attributes.get("class", "").split():
            self._empty = attributes.get("data-file")
        if tag not in VOID_ELEMENTS:
            self.stack.append((tag, attributes))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID_ELEMENTS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in VOID_ELEMENTS:
            return
        if not self.stack or self.stack[-1][0] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1][0] if self.stack else 'nothing'}")
            return
        self.stack.pop()
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        if tag == "tbody":
            self._in_tbody = False
        if tag == "table":
            self._table = None
        if tag == "figcaption" and self._caption is not None:
            self.figcaptions.append("".join(self._caption))
            self._caption = None
        if tag == "p" and self._empty is not None:
            self.empty_tables.add(self._empty)
            self._empty = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._caption is not None:
            self._caption.append(data)
        for tag, attributes in self.stack:
            if tag == "section" and attributes.get("id"):
                self.section_text.setdefault(attributes["id"], []).append(data)

    def text_of(self, section: str) -> str:
        return " ".join(" ".join(self.section_text.get(section, [])).split())


def parse(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert not page.errors, page.errors[:5]
    return text, page


def outputs(run_dir: Path, kind: str) -> list[dict]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return [e for e in manifest["outputs"] if e["kind"] == kind]


def read_clusters(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"cluster_id": str})


def assert_self_contained(text: str, page: Page) -> None:
    """No script, no style sheet or font fetched, no URL pointing off the machine; images are data URIs."""
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert "@import" not in text and "url(" not in text
    for url in page.urls:  # embedded images, anchors in the page, or files beside it (relative paths)
        local = url.startswith(("data:image/png;base64,", "#")) or not (url.startswith("//") or ":" in url)
        assert local, url[:80]
    assert re.search(r"https?://", text) is None
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)


@pytest.fixture(scope="module")
def complex_run(tmp_path_factory) -> Path:
    """Group difference with covariates, t and F contrasts, FPR and FDR (one FDR table is empty)."""
    run_dir = tmp_path_factory.mktemp("report") / "complex"
    run_analysis(run_dir, ["+experiment=complex_contrast", "cache=false"])
    return run_dir


@pytest.fixture(scope="module")
def dropped_row_run(tmp_path_factory) -> Path:
    """A study whose table has one missing age (dropped), and a contrast name full of HTML."""
    from runner.demo.datasets import ensure_demo

    folder = tmp_path_factory.mktemp("dropped")
    source = ensure_demo("localizer")
    table = pd.read_csv(source, sep="\t")
    table["path"] = [str((source.parent / p).resolve()) for p in table["path"]]
    table = table.drop(columns=[c for c in table.columns if c.endswith("_path")])
    table.loc[3, "age"] = np.nan
    table.to_csv(folder / "table.tsv", sep="\t", index=False, na_rep="n/a")
    run_dir = folder / "run"
    run_analysis(run_dir, [f"data.table={folder / 'table.tsv'}", "design.formula=age",
                           "design.drop_missing=true", "correction=[fdr]", "cache=false",
                           """contrasts=[{name:'<i>age</i> & "slope"',expr:age}]"""])
    return run_dir


# -- the run report ----------------------------------------------------------------------------------------------
def test_report_is_registered_self_contained_html(complex_run):
    (entry,) = outputs(complex_run, "report")
    assert entry["path"] == "report.html"
    text, page = parse(complex_run / "report.html")
    assert text.startswith("<!DOCTYPE html>")
    assert_self_contained(text, page)
    for section in ("warnings", "summary", "configuration", "inputs", "design", "results", "run"):
        assert section in page.section_text, section
    toc_targets = {href[1:] for href in page.links if href.startswith("#")}
    ids = set(re.findall(r'id="([^"]+)"', text))
    assert toc_targets and toc_targets <= ids


def test_report_embeds_every_figure_of_the_manifest(complex_run):
    _, page = parse(complex_run / "report.html")
    figures = outputs(complex_run, "figure")
    assert len(figures) >= 1 + 3 + 3 * 2 * 3  # design, one per contrast, slices/montage/glass brain per correction
    shown = {img["data-src"]: img for img in page.images}
    assert len(page.images) == len(figures) and set(shown) == {f["path"] for f in figures}
    for figure in figures:
        img = shown[figure["path"]]
        assert img["alt"] == figure["path"]
        payload = base64.b64decode(img["src"].split(",", 1)[1])
        assert hashlib.sha256(payload).hexdigest() == figure["sha256"]


def test_every_figure_is_a_png_of_plausible_size(complex_run):
    from PIL import Image

    for figure in outputs(complex_run, "figure"):
        path = complex_run / figure["path"]
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE), figure["path"]
        assert 5_000 <= len(data) <= 2_000_000, (figure["path"], len(data))
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            assert min(image.size) >= 100 and max(image.size) <= 4000, image.size


def test_report_shows_every_row_of_every_cluster_table(complex_run):
    _, page = parse(complex_run / "report.html")
    tables = outputs(complex_run, "clusters")
    assert len(tables) == 6
    n_empty = 0
    for entry in tables:
        frame = read_clusters(complex_run / entry["path"])
        if frame.empty:
            n_empty += 1
            assert entry["path"] in page.empty_tables
            continue
        rows = page.tables[entry["path"]]
        assert len(rows) == len(frame), entry["path"]
        header = list(frame.columns)
        for shown, (_, expected) in zip(rows, frame.iterrows()):
            # cells follow the report's column order: cluster, x, y, z, peak, voxels, volume
            assert shown[0] == expected["cluster_id"]
            assert [float(v) for v in shown[1:4]] == pytest.approx(list(expected[["x", "y", "z"]]), abs=1e-6)
            assert float(shown[4]) == pytest.approx(expected["peak_stat"], abs=0.006)
            if "size_voxels" in header and pd.notna(expected["size_voxels"]):
                assert float(shown[5].replace(",", "")) == expected["size_voxels"]
                assert float(shown[6].replace(",", "")) == pytest.approx(expected["size_mm3"])
    assert n_empty >= 1  # the empty-table path is exercised (fluency with FDR: nothing survives)


def test_empty_cluster_table_says_no_clusters_survive(complex_run):
    text, page = parse(complex_run / "report.html")
    empties = [e for e in outputs(complex_run, "clusters") if read_clusters(complex_run / e["path"]).empty]
    assert empties
    for empty in empties:
        assert empty["path"] in page.empty_tables
    assert "No clusters survive this threshold." in text
    assert "none reachable" in page.text_of("summary")


def test_slices_cut_through_the_peak_listed_first_in_the_cluster_table(complex_run):
    from runner.outputs.figures import slice_cut_coords

    _, page = parse(complex_run / "report.html")
    maps = {(e["contrast"], e["correction"]): e for e in outputs(complex_run, "map") if e["correction"]}
    checked = 0
    for entry in outputs(complex_run, "clusters"):
        table = read_clusters(complex_run / entry["path"])
        if table.empty:
            continue
        # The first row is the strongest positive peak; here no negative peak is stronger (checked), so it is
        # the peak of the whole map, where the slices cut.
        first = table.iloc[0]
        assert abs(first["peak_stat"]) == pytest.approx(table["peak_stat"].abs().max())
        image = nib.load(complex_run / maps[(entry["contrast"], entry["correction"])]["path"])
        cut = slice_cut_coords(np.asanyarray(image.dataobj), image.affine)
        assert cut == pytest.approx(tuple(first[["x", "y", "z"]]), abs=1e-3)
        slices = next(e for e in outputs(complex_run, "figure") if e.get("view") == "slices"
                      and e["contrast"] == entry["contrast"] and e["correction"] == entry["correction"])
        caption = next(c for c in page.figcaptions if slices["path"] in c)
        assert "at x = {:g}, y = {:g}, z = {:g} mm".format(*first[["x", "y", "z"]]) in caption
        checked += 1
    n_tables = len(outputs(complex_run, "clusters"))
    n_empty = sum(read_clusters(complex_run / e["path"]).empty for e in outputs(complex_run, "clusters"))
    assert checked == n_tables - n_empty >= 3


def test_report_shows_config_inputs_design_and_contrast_weights(complex_run):
    text, page = parse(complex_run / "report.html")
    config = (complex_run / "config.yaml").read_text()
    formula = "C(group, Treatment('control')) + center(age) + C(sex) + fluency"
    assert formula in page.text_of("configuration")
    assert f"{len(config.splitlines())} lines" in page.text_of("configuration")
    inputs = page.text_of("inputs")
    table = pd.read_csv(Path(json.loads((complex_run / "manifest.json").read_text())["inputs"][0]["path"])
                        .parents[1] / "table.tsv", sep="\t")
    assert f"mean {table['age'].mean():.4g} · sd {table['age'].std():.3g}" in inputs
    counts = table["group"].value_counts()
    assert f"control: {counts['control']} · patient: {counts['patient']}" in inputs
    assert "rows excluded 0" in inputs
    assert "No warnings" in page.text_of("warnings")
    weights = page.text_of("design")
    for name in ("patientMinusControl", "fluency", "groupOrFluency row 1", "groupOrFluency row 2"):
        assert name in weights


def test_warnings_name_dropped_rows_and_user_strings_are_escaped(dropped_row_run):
    text, page = parse(dropped_row_run / "report.html")
    assert_self_contained(text, page)
    warnings = page.text_of("warnings")
    assert "dropped 1 row(s) with missing values" in warnings and "sub-04" in warnings
    inputs = page.text_of("inputs")
    assert "rows excluded 1" in inputs and "missing age" in inputs
    assert "29 maps" in inputs
    # The contrast name is shown as text, never as markup.
    assert "<i>age</i>" not in text
    assert '&lt;i&gt;age&lt;/i&gt; &amp; &#34;slope&#34;' in text
    assert '<i>age</i> & "slope"' in page.text_of("results")
    assert "i" not in page.tags


def test_report_survives_missing_figures_and_minimal_inputs(complex_run, tmp_path):
    """Figures absent (report figures not made, or a file gone) and no data/design objects: still a full page."""
    from runner.outputs.report import ReportPage
    from runner.outputs.writer import OutputEntry

    manifest = json.loads((complex_run / "manifest.json").read_text())
    entries = []
    for record in manifest["outputs"]:
        if record["kind"] in ("figure", "report"):
            continue
        known = {k: record.pop(k) for k in ("path", "kind", "contrast", "stat", "correction", "alpha",
                                             "threshold", "sha256")}
        entries.append(OutputEntry(**known, extra=record))
    entries.append(OutputEntry(path="gone_slices.png", kind="figure", contrast="fluency", correction="fpr",
                               extra={"view": "slices"}))
    page_text = ReportPage(complex_run, entries, settings=None, data=None, design=None, contrasts=[],
                           fields={"notes": ["resampled 2 input(s) to the reference grid"]},
                           summary=manifest["summary"]).render()
    page = Page(page_text)
    assert not page.errors and not page.images
    assert "resampled 2 input(s)" in page.text_of("warnings")
    assert page_text.count("No figure was made for this correction.") == 6
    assert page_text.count("Figure file(s) missing: gone_slices.png") == 1
    assert all(e["path"] in page.tables or e["path"] in page.empty_tables for e in outputs(complex_run, "clusters"))


def parameter_tables(text: str) -> dict[str, list[dict[str, object]]]:
    """The configuration's per-correction parameter tables: rows of key, value, schema default, at-default mark."""
    class Tables(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.tables: dict[str, list[dict[str, object]]] = {}
            self.method = self.row = self.cell = None

        def handle_starttag(self, tag, attrs):
            attributes = dict(attrs)
            if tag == "table" and "data-correction" in attributes:
                self.method = attributes["data-correction"]
                self.tables[self.method] = []
            elif tag == "tr" and self.method and attributes.get("class"):
                self.row = {"cells": [], "at_default": attributes["class"] == "at-default"}
            elif tag == "td" and self.row is not None:
                self.cell = []
            elif tag == "span" and self.cell is not None and attributes.get("class") == "tag":
                self.row["tagged"] = True

        def handle_endtag(self, tag):
            if tag == "td" and self.cell is not None:
                self.row["cells"].append(" ".join("".join(self.cell).split()))
                self.cell = None
            elif tag == "tr" and self.row is not None:
                self.tables[self.method].append(self.row)
                self.row = None
            elif tag == "table":
                self.method = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    parser = Tables()
    parser.feed(text)
    return parser.tables


def test_configuration_states_every_correction_parameter_and_marks_defaults(tmp_path):
    """Every parameter of every configured correction, with the ones set on the command line marked as changed
    beside their schema default (fpr's own default alpha 0.001, not the 0.05 of its parent schema)."""
    import yaml
    from omegaconf import OmegaConf

    from conftest import compose
    from runner.config import build_settings
    from runner.outputs.report import ReportPage

    overrides = ["correction=[fpr,fdr,tfce]", "correction.fpr.alpha=0.05", "correction.tfce.n_permutations=50",
                 "correction.tfce.dh=exact"]
    config = compose(overrides)
    resolved = OmegaConf.to_container(config, resolve=True)["correction"]
    text = ReportPage(tmp_path, [], build_settings(config), None, None, [], {}, {}).render()
    tables = parameter_tables(text)
    assert list(tables) == ["fpr", "fdr", "tfce"]
    changed = {"correction.fpr.alpha": 0.001, "correction.tfce.n_permutations": 10000, "correction.tfce.dh": None}
    for method, values in resolved.items():
        rows = {row["cells"][0]: row for row in tables[method]}
        assert set(rows) == {f"correction.{method}.{key}" for key in values}, method
        for key, value in values.items():
            row = rows[f"correction.{method}.{key}"]
            shown, default = row["cells"][1].removesuffix(" default"), row["cells"][2]
            assert yaml.safe_load(shown) == value, (key, shown)
            if row["cells"][0] in changed:
                assert not row["at_default"] and not row.get("tagged")
                assert yaml.safe_load(default) == changed[row["cells"][0]]
            else:
                assert row["at_default"] and row.get("tagged") and yaml.safe_load(default) == value, row
    assert len(tables["tfce"]) == 15 and tables["fdr"][0]["cells"][1] == "0.05 default"


def test_pages_read_no_clock(complex_run, tmp_path, monkeypatch):
    """The same run renders the same page: the only time shown is the manifest's written_at."""
    import time

    from runner.outputs.report import ReportPage
    from runner.outputs.sweep_report import render_sweep_report

    manifest = json.loads((complex_run / "manifest.json").read_text())
    monkeypatch.setattr(time, "strftime", lambda *args, **kwargs: "CLOCK READ")
    pages = [ReportPage(complex_run, [], None, None, None, [], {}, manifest["summary"]).render() for _ in range(2)]
    assert pages[0] == pages[1] and "CLOCK READ" not in pages[0]
    assert re.findall(r"\d{4}-\d\d-\d\d[ T][\d:+-]+", pages[0]) == [manifest["written_at"].replace("T", " ")]
    empty = ReportPage(tmp_path, [], None, None, None, [], {}, {}).render()  # no manifest: no time at all
    assert re.search(r"\d{4}-\d\d-\d\d", empty) is None and "CLOCK READ" not in empty
    frame = pd.DataFrame({"job": ["a"], "status": ["complete"], "override:alpha": ["0.05"]})
    sweep = render_sweep_report(tmp_path, frame)
    assert re.search(r"\d{4}-\d\d-\d\d", sweep) is None and "CLOCK READ" not in sweep


# -- the sweep page ----------------------------------------------------------------------------------------------
def test_sweep_summary_page_links_every_report_and_plots_surviving_voxels(tmp_path):
    from runner.sweeps import write_summary

    sweep = tmp_path / "sweep"
    for fwhm in (0, 6):
        run_analysis(sweep / f"data.smoothing_fwhm-{fwhm}", ["correction=fdr", f"data.smoothing_fwhm={fwhm}",
                                                              "cache=false"])
    broken = sweep / "data.smoothing_fwhm-bad"
    broken.mkdir(parents=True)
    # the records each job of a sweep leaves in the sweep folder (runner.sweeps): the broken job left no manifest
    (sweep / ".runner_sweep_id").write_text("s1\n")
    records = sweep / ".runner-sweep" / "s1"
    records.mkdir(parents=True)
    jobs = [(f"data.smoothing_fwhm-{f}", [f"data.smoothing_fwhm={f}"], "complete") for f in (0, 6)]
    jobs.append(("data.smoothing_fwhm-bad", ["data.smoothing_fwhm=bad"], "failed"))
    for number, (folder, overrides, outcome) in enumerate(jobs):
        record = {"sweep_id": "s1", "job_dir": str(sweep / folder), "outcome": outcome,
                  "overrides": ["correction=fdr", *overrides]}
        (records / f"job-{number}.json").write_text(json.dumps(record))

    write_summary(sweep)
    page_path = sweep / "multirun_summary.html"
    assert page_path.is_file() and (sweep / "multirun_summary.tsv").is_file()
    text, page = parse(page_path)
    assert_self_contained(text, page)
    reports = [href for href in page.links if href.endswith("report.html")]
    assert sorted(unquote(h) for h in reports) == [f"data.smoothing_fwhm-{f}/report.html" for f in (0, 6)]
    assert all((sweep / unquote(href)).is_file() for href in reports)
    (plot,) = page.images
    payload = base64.b64decode(plot["src"].split(",", 1)[1])
    assert payload.startswith(PNG_SIGNATURE) and 5_000 <= len(payload) <= 2_000_000
    assert "no manifest.json" in text and "(no report)" in text and "1 failed" in text
    assert not list(sweep.glob(".tmp-*"))


def test_sweep_plot_puts_the_numeric_swept_key_on_x_and_one_line_per_correction():
    from runner.outputs.sweep_report import surviving_voxels_long

    frame = pd.DataFrame({
        "job": ["a", "b", "c", "d"], "status": ["complete"] * 4,
        "override:correction": ["fdr", "fdr", "bonferroni", "bonferroni"],
        "override:data.smoothing_fwhm": ["0", "6", "0", "6"],
        "mean/fdr/n_voxels": [517, 807, None, None], "mean/bonferroni/n_voxels": [None, None, 174, 280],
    })
    long, x, hue = surviving_voxels_long(frame)
    assert x == "data.smoothing_fwhm" and hue == "contrast/correction"
    assert sorted(long[hue].unique()) == ["mean/bonferroni", "mean/fdr"]
    fdr = long[long[hue] == "mean/fdr"].sort_values(x)
    assert list(fdr[x]) == [0, 6] and list(fdr["voxels surviving"]) == [517, 807]


# -- in a browser ------------------------------------------------------------------------------------------------
def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.browser
@pytest.mark.skipif(chromium() is None, reason="headless Chromium is not installed")
def test_report_renders_in_headless_chromium(complex_run, tmp_path):
    from PIL import Image

    screenshot = tmp_path / "report.png"
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}",
               "--window-size=1280,2000", (complex_run / "report.html").resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert screenshot.is_file(), result.stderr[-2000:]
    assert screenshot.stat().st_size > 50_000
    with Image.open(screenshot) as image:
        assert image.size == (1280, 2000)
        pixels = np.asarray(image.convert("RGB"))
    # Text, tables and figures: many colours and most rows of the page not blank.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
    row_has_ink = (np.abs(np.diff(pixels.astype(int), axis=1)).sum(axis=(1, 2)) > 0)
    assert row_has_ink.mean() > 0.5
