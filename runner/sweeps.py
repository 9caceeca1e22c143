"""Multirun summaries: at the end of a Hydra sweep, one row per job in ``multirun_summary.tsv`` (and an HTML page).

Rows come from each job's manifest.json, so jobs run by any launcher (local, joblib, submitit) are summarised the
same way; a job that failed shows its one-line error, a job that left no manifest is reported as such.

Only the jobs of *this* sweep are listed: when the sweep starts, a sweep id is written in the sweep directory, and
each job leaves a record (its folder, overrides and outcome) under ``.runner-sweep/<sweep id>/`` in the sweep
directory -- never in the job's own folder, which belongs to the run -- so folders left in the same sweep directory
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
JOB_RECORDS = ".runner-sweep"                     # in the sweep directory: <sweep id>/job-<n>.json per job
EXIT_INTERNAL_ERROR = 1

# Outcome of the last sweep summarised in this process, read by runner.cli.main() to set the exit code.
last_sweep_statuses: list[str] | None = None


def parse_override(text: str) -> tuple[str, str]:
    """``key=value`` (with Hydra's +/~ prefixes dropped) -> (key, value)."""
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def job_row(job_dir: Path, sweep_dir: Path, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """One summary row for a job directory (``record``: what the job left in the sweep's records, if anything)."""
    record = record or {}
    manifest = read_manifest(job_dir)
    row: dict[str, Any] = {"job": _relative(job_dir, sweep_dir)}
    if manifest is None:
        row.update(status="failed", error=record.get("error") or "no manifest.json (the job stopped before the "
                                                                  "analysis started; see its run.log)")
        overrides = list(record.get("overrides") or [])
    else:
        row.update(status=manifest.get("status"), error=manifest.get("error"),
                   runtime_seconds=manifest.get("elapsed_seconds"))
        overrides = manifest.get("overrides") or list(record.get("overrides") or [])
    if record.get("outcome") == "crashed" and row.get("status") != "complete":
        row["status"] = "crashed"  # an internal error (a bug), not a problem with the job's inputs
        row["error"] = record.get("error") or row.get("error")
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

    When the sweep directory carries a sweep id, the jobs are those that left a record for it (the jobs of the last
    sweep run into it); otherwise every folder holding a manifest.
    """
    sweep_dir = Path(sweep_dir)
    sweep_id = read_sweep_id(sweep_dir)
    if sweep_id is not None:
        records = job_records(sweep_dir, sweep_id)
        jobs = sorted(records, key=lambda job: _relative(job, sweep_dir))
        rows = [job_row(job, sweep_dir, records[job]) for job in jobs]
    else:
        rows = [job_row(job, sweep_dir) for job in sorted({p.parent for p in sweep_dir.rglob("manifest.json")})]
    frame = pd.DataFrame(rows)
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


def job_records(sweep_dir: Path, sweep_id: str) -> dict[Path, dict[str, Any]]:
    """The records the jobs of sweep ``sweep_id`` left, by job folder (a job's last record wins)."""
    records: dict[Path, dict[str, Any]] = {}
    folder = Path(sweep_dir) / JOB_RECORDS / sweep_id
    for path in sorted(folder.glob("job-*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and record.get("job_dir"):
            records[Path(str(record["job_dir"]))] = record
    return records


def _write_job_record(config: DictConfig, outcome: str, error: str | None = None) -> None:
    from hydra.types import RunMode

    if config.hydra.mode != RunMode.MULTIRUN:
        return
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_id = read_sweep_id(sweep_dir)
    if sweep_id is None:
        return
    folder = sweep_dir / JOB_RECORDS / sweep_id
    folder.mkdir(parents=True, exist_ok=True)
    record = {"sweep_id": sweep_id, "job_dir": str(Path(str(config.hydra.runtime.output_dir)).resolve()),
              "overrides": [str(o) for o in config.hydra.overrides.task], "outcome": outcome,
              **({"error": error} if error else {})}
    write_text_atomic(folder / f"job-{int(config.hydra.job.num)}.json", json.dumps(record) + "\n")


def _relative(job_dir: Path, sweep_dir: Path) -> str:
    try:
        return str(Path(job_dir).resolve().relative_to(Path(sweep_dir).resolve()))
    except ValueError:
        return str(job_dir)


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
        global last_sweep_statuses
        last_sweep_statuses = None
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
