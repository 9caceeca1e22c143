"""Compose the stages of one analysis: data -> design -> contrasts -> model -> inference -> outputs.

``run(settings, run_dir)`` is a plain function (tests call it directly); the Hydra entry point in ``runner.cli`` only
builds the settings and the run directory and reports errors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from runner import model
from runner.config import PARAMETRIC, PERMUTATION, RunSettings
from runner.contrasts import Contrast, build_contrast
from runner.chunks import memory_budget_bytes
from runner.data.checks import validate_table
from runner.data.loader import CheckedInputs, GroupData, load_group_data, validate_inputs
from runner.data.sources import InputSet, apply_query, from_4d, from_glob, from_table
from runner.design import Design, build_design
from runner.errors import RunnerError
from runner.outputs.atomic import remove_stale_temporaries
from runner.outputs.manifest import read_manifest
from runner.outputs.naming import check_distinct_labels
from runner.outputs.writer import OutputWriter, remove_partial_outputs
from runner.signals import interruptible

log = logging.getLogger("runner")

PACKAGES = ("second-level-runner", "numpy", "scipy", "nibabel", "pandas", "patsy", "numba", "llvmlite", "threadpoolctl",
            "hydra-core", "omegaconf", "PyYAML", "matplotlib")


class Timings(dict):
    """Wall-clock seconds per stage, recorded in the manifest."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 4)


EXECUTION_KEYS = ("overwrite", "resume", "progress", "n_jobs", "cache", "cache_dir", "hydra")


def config_hash(resolved: dict[str, Any]) -> str:
    """sha256 of the resolved analysis config without execution-only keys: equal hashes, same analysis."""
    analysis = {k: v for k, v in resolved.items() if k not in EXECUTION_KEYS}
    text = json.dumps(analysis, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# -- stages ------------------------------------------------------------------------------------------------------
def gather_inputs(settings: RunSettings) -> InputSet:
    """The input table and images named by the ``data`` group (demo, table, glob or 4D)."""
    data = settings.data
    if data.image_4d:
        from runner.data.images import read_header

        header = read_header(Path(data.image_4d), what="data.image_4d")
        inputs = from_4d(header.path, Path(data.table) if data.table else None, header.n_volumes)
    elif data.glob:
        inputs = from_glob(data.glob, Path(data.participants) if data.participants else None,
                           data.subject_pattern, data.subject_column)
    else:
        table = data.table
        if table is None and data.demo:
            from runner.demo.datasets import ensure_demo

            table = str(ensure_demo(data.demo))
            log.info("demo dataset %r: %s", data.demo, table)
        inputs = from_table(Path(table), data.path_column)  # type: ignore[arg-type]
    if data.query:
        inputs = apply_query(inputs, data.query)
    log.info("inputs: %d map(s), table columns: %s", len(inputs.images), ", ".join(map(str, inputs.table.columns)))
    return inputs


def id_column(settings: RunSettings, inputs: InputSet) -> str | None:
    if settings.data.id_column:
        return settings.data.id_column
    return next((c for c in ("participant_id", "subject", "subject_id") if c in inputs.table.columns), None)


def make_design(settings: RunSettings, inputs: InputSet) -> tuple[Design, InputSet]:
    """Design matrix, dropping (or refusing) rows with missing values; the inputs restricted to the kept rows."""
    inputs = validate_table(inputs, None if settings.design.matrix else settings.design.formula,
                            id_column(settings, inputs))
    design = build_design(inputs.table, formula=None if settings.design.matrix else settings.design.formula,
                          matrix_path=Path(settings.design.matrix) if settings.design.matrix else None,
                          drop_missing=settings.design.drop_missing, id_column=id_column(settings, inputs))
    if len(design.dropped):
        keep = ~inputs.table.index.isin(design.dropped.index)
        import pandas as pd

        inputs = inputs.select(pd.Series(keep))
    log.info("design: %d map(s) x %d column(s): %s", *design.matrix.shape, ", ".join(design.columns))
    return design, inputs


def make_contrasts(settings: RunSettings, design: Design) -> list[Contrast]:
    if not settings.contrasts:
        raise RunnerError("no contrasts: add e.g. contrasts=[{name:mean,expr:Intercept}]; design columns are "
                          + ", ".join(design.columns))
    check_distinct_labels(c.name for c in settings.contrasts)
    contrasts = [build_contrast(c.name, c.expr, design.columns, c.type) for c in settings.contrasts]
    for c in contrasts:
        log.info("contrast %s (%s): %s", c.name, c.stat_type,
                 "; ".join(" ".join(f"{w:+g}*{col}" for w, col in zip(row, design.columns) if w) for row in c.matrix))
    return contrasts


# -- the run -----------------------------------------------------------------------------------------------------
def run(settings: RunSettings, run_dir: Path, resolved_config: dict[str, Any] | None = None,
        overrides: list[str] | None = None) -> dict[str, Any]:
    """Run one analysis into ``run_dir`` and return a summary (also written as manifest.json, last)."""
    run_dir = Path(run_dir)
    resolved_config = resolved_config or asdict(settings)
    digest = config_hash(resolved_config)
    previous = read_manifest(run_dir)
    if (settings.resume and not settings.overwrite and previous and previous.get("status") == "complete"
            and previous.get("config_sha256") == digest):
        log.info("resume: %s already holds this analysis, complete; skipped", run_dir)
        return {"run_dir": str(run_dir), "status": "complete", "skipped": True, **(previous.get("summary") or {})}
    prepare_run_dir(run_dir, settings, digest)
    writer = OutputWriter(run_dir)
    timings = Timings()
    started = time.time()
    fields: dict[str, Any] = {"config_sha256": digest, "seed": settings.seed, "overrides": overrides or [],
                              "versions": package_versions(), "command": sys.argv, "cwd": str(Path.cwd())}
    writer.finalize("running", **fields)
    try:
        with interruptible():  # SIGTERM/SIGINT -> Interrupted: the manifest says so, temporaries go
            summary = _run_stages(settings, writer, timings, resolved_config, fields)
            fields.update(timings=dict(timings), elapsed_seconds=round(time.time() - started, 3), summary=summary)
            writer.finalize("complete", **fields)
    except BaseException as error:
        status = "failed" if isinstance(error, Exception) else "interrupted"
        fields.update(error=str(error).splitlines()[0] if str(error) else type(error).__name__,
                      timings=dict(timings), elapsed_seconds=round(time.time() - started, 3))
        try:
            remove_stale_temporaries(run_dir)
            writer.finalize(status, **fields)
        except Exception:  # never hide the original error behind a manifest problem
            pass
        raise
    log.info("complete: %d output(s) in %s (%.1f s)", len(writer.entries), run_dir, time.time() - started)
    return {"run_dir": str(run_dir), "status": "complete", **summary}


def prepare_run_dir(run_dir: Path, settings: RunSettings, digest: str) -> None:
    """Refuse to overwrite a complete run unless asked; clean what an interrupted run left behind."""
    previous = read_manifest(run_dir)
    if previous and previous.get("status") == "complete" and not settings.overwrite:
        same = previous.get("config_sha256") == digest
        raise RunnerError(f"{run_dir} already holds a complete run"
                          + (" of the same analysis; set resume=true to skip it or" if same
                             else " of a different analysis; set")
                          + " overwrite=true to replace it (or choose another hydra.run.dir)")
    removed = remove_stale_temporaries(run_dir) if run_dir.exists() else 0
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    if run_dir.exists() and remove_partial_outputs(run_dir, previous):
        log.info("removed the outputs of the previous run in %s", run_dir)


def _run_stages(settings: RunSettings, writer: OutputWriter, timings: Timings, resolved: dict[str, Any],
                fields: dict[str, Any]) -> dict[str, Any]:
    import yaml  # hydra depends on PyYAML

    from runner.outputs import results

    writer.text(yaml.safe_dump(resolved, sort_keys=False), name="config.yaml", kind="config")
    with timings.stage("inputs"):
        inputs = gather_inputs(settings)
        design, inputs = make_design(settings, inputs)
        contrasts = make_contrasts(settings, design)
        checked = validate_inputs(inputs, settings.data)  # every header, before any voxel is decoded
    with timings.stage("load"):
        data, fields["data_cache"] = load_with_progress(inputs, settings, checked, writer.run_dir)
    fields["inputs"] = [{"path": str(ref), "sha256": data.input_sha256.get(str(ref.path))} for ref in data.inputs]
    fields["n_maps"], fields["n_voxels"] = data.n_maps, data.n_voxels
    fields["notes"] = list(inputs.notes) + list(design.notes) + list(data.notes)
    with timings.stage("design_outputs"):
        results.write_design(writer, design, contrasts, report=settings.report)
    with timings.stage("fit"):
        fitted = model.fit_contrasts(data.Y, design.matrix.to_numpy(dtype=float), contrasts,
                                     memory_budget_bytes=memory_budget_bytes(settings.memory_budget_gb),
                                     n_jobs=settings.n_jobs)
    fields["dof"] = {c.name: fitted[c.name].dof for c in contrasts}
    log.info("fitted OLS at %d voxel(s), %d degrees of freedom", data.n_voxels, next(iter(fitted.values())).dof)
    with timings.stage("maps"):
        fields["notes"].extend(results.write_contrast_maps(writer, data, contrasts, fitted))
        if settings.report:
            for contrast in contrasts:
                results.write_covariate_figure(writer, data, design, contrast, fitted[contrast.name])
    summary: dict[str, Any] = {"contrasts": {}}
    with timings.stage("parametric"):
        for method in (m for m in settings.correction if m in PARAMETRIC):
            for contrast in contrasts:
                row = results.parametric_inference(writer, data, contrast, fitted[contrast.name], method,
                                                   settings.correction[method], report=settings.report)
                summary["contrasts"].setdefault(contrast.name, {})[method] = row
    permutation_methods = [m for m in settings.correction if m in PERMUTATION]
    if permutation_methods:
        with timings.stage("permutation"):
            from runner.outputs import permutation_results

            for contrast in contrasts:
                rows, notes = permutation_results.run_permutations(
                    writer, data, design, contrast, fitted[contrast.name],
                    {m: settings.correction[m] for m in permutation_methods}, settings)
                summary["contrasts"].setdefault(contrast.name, {}).update(rows)
                fields["notes"].extend(notes)
    if "ari" in settings.correction:
        with timings.stage("ari"):
            for contrast in contrasts:
                row = results.ari_inference(writer, data, contrast, fitted[contrast.name], settings.correction["ari"],
                                            report=settings.report)
                summary["contrasts"].setdefault(contrast.name, {})["ari"] = row
    if settings.report:
        with timings.stage("report"):
            from runner.outputs import report

            report.write_report(writer, settings, data, design, contrasts, fields, summary)
    return summary


def load_with_progress(inputs: InputSet, settings: RunSettings, checked: CheckedInputs | None = None,
                       scratch_dir: Path | None = None) -> tuple[GroupData, str]:
    """Load the maps (from the data cache when another run already loaded the same inputs the same way).

    Studies larger than half the memory budget are memory-mapped from a file in ``scratch_dir``.

    Returns the data and the cache outcome: ``"hit"``, ``"miss"`` or ``"off"``.
    """
    from runner.outputs.progress import progress_bar

    def load() -> GroupData:
        with progress_bar(total=len(inputs.images), desc="loading maps", unit="map",
                          enabled=settings.progress) as bar:
            return load_group_data(inputs, settings.data, n_jobs=max(1, settings.n_jobs), progress=bar.update,
                                   memory_budget_bytes=memory_budget_bytes(settings.memory_budget_gb),
                                   scratch_dir=scratch_dir, checked=checked)

    if not settings.cache:
        return load(), "off"
    from runner.data.cache import cached_load

    cache_dir = Path(settings.cache_dir) if settings.cache_dir else Path(settings.output_root) / ".cache"
    return cached_load(inputs, settings.data, cache_dir / "data", load)
