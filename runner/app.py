"""One analysis run: owns the run directory's lifecycle and the manifest; the stages themselves are in
``runner.stages``.

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

from runner import rundir
from runner.config import RunSettings
from runner.errors import RunnerError
from runner.outputs.writer import OutputWriter
from runner.signals import deferred, interruptible
from runner.stages.pipeline import run_stages

log = logging.getLogger("runner")

PACKAGES = ("second-level-runner", "numpy", "scipy", "nibabel", "pandas", "patsy", "numba", "llvmlite", "threadpoolctl",
            "hydra-core", "omegaconf", "PyYAML", "matplotlib", "jinja2", "markupsafe")


class Timings(dict):
    """Wall-clock seconds per stage, recorded in the manifest."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 4)


EXECUTION_KEYS = ("overwrite", "resume", "progress", "n_jobs", "cache", "cache_dir", "cache_max_gb", "executor",
                  "hydra")


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


# -- the run -----------------------------------------------------------------------------------------------------
def declared_inputs(settings: RunSettings, resolve_demo: bool = False) -> dict[str, Path | None]:
    """The input files the config names, by role (the images a table lists are recorded by the loader).

    ``resolve_demo``: include the demo dataset's table (generated first if it is not cached yet).
    """
    data = settings.data
    table = data.table
    if table is None and data.demo and resolve_demo and not (data.glob or data.image_4d):
        from runner.demo.datasets import ensure_demo

        table = str(ensure_demo(data.demo))
    participants = data.participants
    if data.root and not data.image_4d:  # a BIDS derivatives folder: its participants.tsv unless one is named
        from runner.data.bids import participants_file

        table, participants = None, participants_file(data.root, data.participants)
    named = {"table": table, "participants": participants, "image_4d": data.image_4d, "mask": data.mask,
             "design_matrix": settings.design.matrix, "bids_model": settings.design.bids_model,
             "mesh_left": data.mesh_left, "mesh_right": data.mesh_right,
             "annotation_left": data.annotation_left, "annotation_right": data.annotation_right}
    return {role: Path(path) for role, path in named.items() if path}


def run(settings: RunSettings, run_dir: Path, resolved_config: dict[str, Any] | None = None,
        overrides: list[str] | None = None) -> dict[str, Any]:
    """Run one analysis into ``run_dir`` and return a summary (also written as manifest.json, last).

    The folder must pass ``runner.rundir``'s policy and is held under its lock for the whole run. A complete run in
    it is kept (refused, or skipped by ``resume``) unless ``overwrite``; the new run is staged and replaces the
    previous record only once it is complete, so a run that fails or is interrupted leaves a complete record intact.
    """
    run_dir = Path(run_dir).absolute()
    resolved_config = resolved_config or asdict(settings)
    digest = config_hash(resolved_config)
    with rundir.open_run_dir(run_dir, declared_inputs(settings).values()) as folder:
        input_files = rundir.hash_input_files(declared_inputs(settings, resolve_demo=True))
        reason = None
        if folder.holds_complete_run:
            previous = folder.record or {}
            same = previous.get("config_sha256") == digest
            if settings.resume and same and not settings.overwrite:
                reason = rundir.resume_mismatch(run_dir, previous, input_files)
                if reason is None:
                    log.info("resume: %s already holds this analysis, complete, with the same inputs and outputs; "
                             "skipped", run_dir)
                    return {"run_dir": str(run_dir), "status": "complete", "skipped": True,
                            **(previous.get("summary") or {})}
            elif not settings.overwrite:
                raise rundir.RunDirRefused(
                    f"{run_dir} already holds a complete run"
                    + (" of the same analysis; set resume=true to skip it or" if same
                       else " of a different analysis; set")
                    + " overwrite=true to replace it (or choose another hydra.run.dir)")
        return _transaction(folder, settings, resolved_config, overrides, digest, input_files, reason)


def _transaction(folder: rundir.RunFolder, settings: RunSettings, resolved_config: dict[str, Any],
                 overrides: list[str] | None, digest: str, input_files: dict[str, Any],
                 rerun_reason: str | None) -> dict[str, Any]:
    """Run the stages into the staging folder; commit the record when complete, else settle the failure."""
    staging = folder.stage()
    timings = Timings()
    started = time.time()
    fields: dict[str, Any] = {"config_sha256": digest, "seed": settings.seed, "overrides": overrides or [],
                              "versions": package_versions(), "command": sys.argv, "cwd": str(Path.cwd()),
                              "input_files": input_files}
    try:
        with rundir.run_log(staging / rundir.LOG_NAME):
            if rerun_reason:
                log.info("resume: re-running, because %s since the complete run", rerun_reason)
            writer = OutputWriter(staging, folder.run_dir)  # the loader's scratch goes here too (writer.run_dir)
            writer.finalize("running", **fields)
            try:
                with interruptible():  # SIGTERM/SIGINT -> Interrupted: the attempt is settled below
                    summary = run_stages(settings, writer, timings, resolved_config, fields)
                    rundir.check_location(folder.run_dir, rundir.image_paths(fields.get("inputs") or []))
            except BaseException as error:
                line = str(error).splitlines()[0] if str(error) else type(error).__name__
                fields.update(error=line, timings=dict(timings), elapsed_seconds=round(time.time() - started, 3))
                if isinstance(error, Exception) and not isinstance(error, RunnerError):
                    log.exception("internal error (a bug): %s: %s", type(error).__name__, line)  # keep the traceback
                else:
                    log.error("error: %s", line)
                try:
                    writer.finalize("failed" if isinstance(error, Exception) else "interrupted", **fields)
                except Exception:  # never hide the original error behind a manifest problem
                    pass
                raise
            fields.update(timings=dict(timings), elapsed_seconds=round(time.time() - started, 3), summary=summary)
            log.info("complete: %d output(s) in %s (%.1f s)", len(writer.entries), folder.run_dir,
                     time.time() - started)
            writer.finalize("complete", **fields)
    except BaseException as error:
        with deferred():
            try:
                if isinstance(error, rundir.RunDirRefused):  # the folder holds an input: write nothing there
                    folder.discard()
                else:
                    folder.settle_failure()
            except Exception:  # the journal names what is left; the next run into the folder removes it
                log.warning("could not settle the failed run in %s", folder.run_dir, exc_info=True)
        raise
    with deferred():
        try:
            folder.commit()
        except rundir.RunDirRefused:  # a file of the user's has the name of an output: keep everything as it was
            folder.discard()
            raise
    return {"run_dir": str(folder.run_dir), "status": "complete", **summary}


def record_failure(run_dir: Path, error: str, overrides: list[str] | None = None) -> None:
    """A failed manifest (and run.log) for a config refused before the run started, when the folder may be used
    and holds no complete run; otherwise nothing is written (the error line on stderr is the whole record)."""
    try:
        with rundir.open_run_dir(run_dir) as folder:
            if folder.holds_complete_run:
                return
            staging = folder.stage()
            with rundir.run_log(staging / rundir.LOG_NAME):
                log.error("error: %s", error)
            OutputWriter(staging).finalize("failed", error=error, overrides=overrides or [])
            with deferred():
                folder.commit()
    except (RunnerError, OSError):  # the folder is refused, or the storage that refused the run refuses this too
        pass
