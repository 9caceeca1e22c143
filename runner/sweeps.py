"""Multirun summaries: at the end of a Hydra sweep, one row per job in ``multirun_summary.tsv`` (and an HTML page).

Rows come from each job's manifest.json, so jobs run by any launcher (local, joblib, submitit) are summarised the
same way; a job that failed shows its one-line error, a job that left no manifest is reported as such.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runner.outputs.atomic import write_atomic
from runner.outputs.manifest import read_manifest

log = logging.getLogger(__name__)

SUMMARY_NAME = "multirun_summary.tsv"


def parse_override(text: str) -> tuple[str, str]:
    """``key=value`` (with Hydra's +/~ prefixes dropped) -> (key, value)."""
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def job_row(job_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    """One summary row for a job directory."""
    manifest = read_manifest(job_dir)
    row: dict[str, Any] = {"job": str(job_dir.relative_to(sweep_dir))}
    if manifest is None:
        row.update(status="failed", error="no manifest.json (the job stopped before the analysis started; "
                                          "see its run.log)")
        overrides = _hydra_overrides(job_dir)
    else:
        row.update(status=manifest.get("status"), error=manifest.get("error"),
                   runtime_seconds=manifest.get("elapsed_seconds"))
        overrides = manifest.get("overrides") or _hydra_overrides(job_dir)
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
    """Rows for every job of a sweep (folders holding a manifest or Hydra's .hydra record), sorted by job."""
    sweep_dir = Path(sweep_dir)
    jobs = sorted({p.parent for p in sweep_dir.rglob("manifest.json")} |
                  {p.parent for p in sweep_dir.rglob(".hydra") if p.is_dir() and p.parent != sweep_dir})
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
    failed = int((frame.get("status") != "complete").sum()) if len(frame) else 0
    log.info("multirun summary: %d job(s), %d not complete: %s", len(frame), failed, target)
    return target


def _hydra_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    import yaml

    return [str(o) for o in (yaml.safe_load(path.read_text()) or [])]


class MultirunSummary(Callback):
    """Hydra callback: write the sweep summary when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir():
            path = write_summary(sweep_dir)
            print(f"sweep summary: {path}")
