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


from runner.config import RunSettings
from runner.errors import RunnerError
from runner.outputs.atomic import remove_stale_temporaries
from runner.outputs.manifest import read_manifest
from runner.outputs.writer import OutputWriter, remove_partial_outputs
from runner.signals import interruptible
from runner.stages.pipeline import run_stages

log = logging.getLogger("runner")

PACKAGES = ("second-level-runner", "numpy", "scipy", "nibabel", "pandas", "patsy", "statsmodels", "hydra-core",
            "omegaconf", "matplotlib")


class Timings(dict):
    """Wall-clock seconds per stage, recorded in the manifest."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 4)


EXECUTION_KEYS = ("overwrite", "resume", "progress", "n_jobs", "cache", "cache_dir", "cache_max_gb", "hydra")


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
            summary = run_stages(settings, writer, timings, resolved_config, fields)
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
