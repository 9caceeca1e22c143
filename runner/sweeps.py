"""Multirun summaries: at the end of a Hydra sweep, one row per job in ``multirun_summary.tsv`` (and an HTML page).

Rows come from each job's manifest.json, so jobs run by any launcher (local, joblib, submitit) are summarised the
same way; a job that failed shows its one-line error, a job that left no manifest is reported as such.

Only the jobs of *this* sweep are listed: when the sweep starts, a sweep id is written in the sweep directory, and
each job copies it (with its outcome) into its own ``.hydra/`` folder, so folders left in the same sweep directory
by an earlier sweep are not mixed in. The process exits non-zero when a job did not complete
(:func:`sweep_exit_code`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runner.errors import EXIT_USER_ERROR
from runner.outputs.atomic import write_atomic, write_text_atomic
from runner.outputs.manifest import read_manifest

log = logging.getLogger(__name__)

SUMMARY_NAME = "multirun_summary.tsv"
SWEEP_ID_NAME = ".runner_sweep_id"               # in the sweep directory: the id of the sweep that wrote it last
JOB_RECORD = Path(".hydra") / "runner_sweep.json"  # in each job directory: {"sweep_id": ..., "outcome": ...}
EXIT_INTERNAL_ERROR = 1

# Outcome of the last sweep summarised in this process, read by runner.cli.main() to set the exit code.
last_sweep_statuses: list[str] | None = None


def parse_override(text: str) -> tuple[str, str]:
    """``key=value`` (with Hydra's +/~ prefixes dropped) -> (key, value)."""
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def job_row(job_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    """One summary row for a job directory."""
    manifest = read_manifest(job_dir)
    crashed = read_job_record(job_dir).get("outcome") == "crashed"
    row: dict[str, Any] = {"job": str(job_dir.relative_to(sweep_dir))}
    if manifest is None:
        row.update(status="failed", error="no manifest.json (the job stopped before the analysis started; "
                                          "see its run.log)")
        overrides = _hydra_overrides(job_dir)
    else:
        row.update(status=manifest.get("status"), error=manifest.get("error"),
                   runtime_seconds=manifest.get("elapsed_seconds"))
        overrides = manifest.get("overrides") or _hydra_overrides(job_dir)
    if crashed and row.get("status") != "complete":
        row["status"] = "crashed"  # an internal error (a bug), not a problem with the job's inputs
        row["error"] = read_job_record(job_dir).get("error") or row.get("error")
    row["overrides"] = " ".join(overrides)
    for text in overrides:
        key, value = parse_override(text)
        if not key.startswith("hydra"):
            row[f"override:{key}"] = value
    if manifest and manifest.get("status") == "complete":
        for contrast, methods in (manifest.get("summary") or {}).get("contrasts", {}).items():
            for method, values in methods.items():
                for field in ("threshold", "n_voxels", "n_clusters", "peak"):
                    if field in values:
                        row[f"{contrast}/{method}/{field}"] = values[field]
    return row


def summarise_sweep(sweep_dir: Path) -> pd.DataFrame:
    """Rows for every job of a sweep, sorted by job.

    Jobs are the folders holding a manifest or Hydra's ``.hydra`` record; when the sweep directory carries a sweep
    id, only the folders whose job record holds that id (the jobs of the last sweep run into it).
    """
    sweep_dir = Path(sweep_dir)
    jobs = sorted({p.parent for p in sweep_dir.rglob("manifest.json")} |
                  {p.parent for p in sweep_dir.rglob(".hydra") if p.is_dir() and p.parent != sweep_dir})
    sweep_id = read_sweep_id(sweep_dir)
    if sweep_id is not None:
        jobs = [job for job in jobs if read_job_record(job).get("sweep_id") == sweep_id]
    frame = pd.DataFrame([job_row(job, sweep_dir) for job in jobs])
    for column in frame.columns:
        if column.endswith(("/n_voxels", "/n_clusters")):
            frame[column] = frame[column].astype("Int64")
    return frame


def write_summary(sweep_dir: Path) -> Path:
    """Write multirun_summary.tsv (and multirun_summary.html) in the sweep directory."""
    sweep_dir = Path(sweep_dir)
    frame = summarise_sweep(sweep_dir)
    target = sweep_dir / SUMMARY_NAME
    write_atomic(target, lambda tmp: frame.to_csv(tmp, sep="\t", index=False, na_rep="n/a"))
    try:
        from runner.outputs.sweep_report import write_sweep_report

        write_sweep_report(sweep_dir, frame)
    except ImportError:
        pass
    global last_sweep_statuses
    last_sweep_statuses = [str(status) for status in frame["status"]] if len(frame) else []
    failed = sum(status != "complete" for status in last_sweep_statuses)
    log.info("multirun summary: %d job(s), %d not complete: %s", len(frame), failed, target)
    return target


def _hydra_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    import yaml

    return [str(o) for o in (yaml.safe_load(path.read_text()) or [])]


def sweep_exit_code(statuses: list[str] | None) -> int:
    """0 when every job completed; 2 when the others failed with user errors; 1 when one crashed (a bug) or
    stopped otherwise."""
    not_complete = [status for status in statuses or [] if status != "complete"]
    if not not_complete:
        return 0
    return EXIT_USER_ERROR if all(status == "failed" for status in not_complete) else EXIT_INTERNAL_ERROR


def read_sweep_id(sweep_dir: Path) -> str | None:
    """The id of the sweep that last ran into ``sweep_dir`` (None for a folder no sweep of ours started)."""
    try:
        return (Path(sweep_dir) / SWEEP_ID_NAME).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def read_job_record(job_dir: Path) -> dict[str, Any]:
    """The job record a sweep job leaves in its ``.hydra/`` folder (empty when there is none)."""
    try:
        record = json.loads((Path(job_dir) / JOB_RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_job_record(config: DictConfig, outcome: str, error: str | None = None) -> None:
    from hydra.types import RunMode

    if config.hydra.mode != RunMode.MULTIRUN:
        return
    sweep_id = read_sweep_id(Path(str(config.hydra.sweep.dir)))
    if sweep_id is None:
        return
    target = Path(str(config.hydra.runtime.output_dir)) / JOB_RECORD
    target.parent.mkdir(parents=True, exist_ok=True)
    record = {"sweep_id": sweep_id, "outcome": outcome, **({"error": error} if error else {})}
    write_text_atomic(target, json.dumps(record) + "\n")


def _outcome(job_return: Any) -> tuple[str, str | None]:
    """(complete / failed (user error) / crashed (internal error), the one-line error) from what the task returned
    or raised."""
    from hydra.core.utils import JobStatus

    value = getattr(job_return, "_return_value", None)
    if getattr(job_return, "status", None) != JobStatus.COMPLETED:
        return "crashed", " ".join(f"internal error: {type(value).__name__}: {value}".split())
    if not isinstance(value, dict) or value.get("status") not in ("failed", "crashed"):
        return "complete", None
    return str(value["status"]), " ".join(str(value.get("error") or "").split()) or None


class MultirunSummary(Callback):
    """Hydra callback: mark the jobs of this sweep, and write the sweep summary when the multirun ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        sweep_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
        write_text_atomic(sweep_dir / SWEEP_ID_NAME, sweep_id + "\n")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        _write_job_record(config, "started")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        _write_job_record(config, *_outcome(job_return))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir():
            path = write_summary(sweep_dir)
            print(f"sweep summary: {path}")
