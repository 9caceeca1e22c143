"""``python -m runner.verify <run dir>``: re-run a recorded analysis and compare every output with the record.

Exit codes: 0 all outputs reproduce; 1 something differs (each difference named on its own line: a changed input is
reported as a changed input, not as a changed result); 2 the run directory cannot be verified (not complete, no
config). Maps are compared voxel by voxel (exact by default, ``--tolerance`` for a relative/absolute bound), tables
cell by cell, the design matrix as a table; figures and the report are not compared (they depend on fonts and
library versions).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from runner.errors import EXIT_USER_ERROR, RunnerError
from runner.outputs.manifest import read_manifest

log = logging.getLogger("runner.verify")

NOT_COMPARED = ("figure", "report", "config")


@dataclass
class Verdict:
    """What differs between a recorded run and its re-run."""

    changed_inputs: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    compared: int = 0

    @property
    def ok(self) -> bool:
        return not self.changed_inputs and not self.differences


def compare_maps(recorded: Path, rerun: Path, tolerance: float) -> str | None:
    """None when two NIfTI maps agree (grid and values), else a one-line description of the difference."""
    import nibabel as nib

    a, b = nib.load(str(recorded)), nib.load(str(rerun))
    if a.shape != b.shape:
        return f"shape {a.shape} != {b.shape}"
    if not np.allclose(a.affine, b.affine, rtol=0, atol=1e-6):
        return "affine differs"
    x, y = np.asarray(a.dataobj, dtype=np.float64), np.asarray(b.dataobj, dtype=np.float64)
    same_nan = np.isnan(x) == np.isnan(y)
    if tolerance > 0:
        close = np.isclose(x, y, rtol=tolerance, atol=tolerance, equal_nan=True)
    else:
        close = (x == y) | (np.isnan(x) & np.isnan(y))
    close &= same_nan
    if close.all():
        return None
    bad = np.argwhere(~close)
    first = tuple(int(i) for i in bad[0])
    with np.errstate(invalid="ignore"):
        worst = float(np.nanmax(np.abs(x - y)[~close])) if np.any(~close) else float("nan")
    return (f"{len(bad)} voxel(s) differ (first at voxel {first}: {float(x[first])!r} vs {float(y[first])!r}; "
            f"largest difference {worst:.3g})")


def compare_tables(recorded: Path, rerun: Path, tolerance: float) -> str | None:
    """None when two TSV tables agree (columns, rows, values), else a description."""
    a = pd.read_csv(recorded, sep="\t", keep_default_na=False, na_values=["n/a"], dtype=str)
    b = pd.read_csv(rerun, sep="\t", keep_default_na=False, na_values=["n/a"], dtype=str)
    if list(a.columns) != list(b.columns):
        return f"columns differ: {list(a.columns)} vs {list(b.columns)}"
    if len(a) != len(b):
        return f"{len(a)} row(s) recorded, {len(b)} now"
    for column in a.columns:
        left, right = a[column], b[column]
        if left.equals(right):
            continue
        x, y = pd.to_numeric(left, errors="coerce"), pd.to_numeric(right, errors="coerce")
        numeric = x.notna() | left.isna()
        if numeric.all() and (y.notna() | right.isna()).all():
            both_nan = x.isna() & y.isna()
            close = np.isclose(x.fillna(0), y.fillna(0), rtol=tolerance, atol=tolerance) if tolerance > 0 \
                else (x == y)
            close = np.asarray(close) | np.asarray(both_nan)
            if close.all():
                continue
            row = int(np.flatnonzero(~close)[0])
        else:
            row = int(np.flatnonzero((left.fillna("") != right.fillna("")).to_numpy())[0])
        return f"column {column!r} differs, first at row {row + 1}: {left.iloc[row]!r} vs {right.iloc[row]!r}"
    return None


def changed_inputs(recorded: dict[str, Any], rerun: dict[str, Any]) -> list[str]:
    """Inputs whose bytes differ between the recorded run and the re-run (matched by position)."""
    before, after = recorded.get("inputs") or [], rerun.get("inputs") or []
    lines = []
    if len(before) != len(after):
        lines.append(f"the analysis now reads {len(after)} input(s), the record {len(before)}")
    for old, new in zip(before, after):
        if old.get("sha256") != new.get("sha256"):
            lines.append(f"input {new.get('path')} changed (sha256 {str(old.get('sha256'))[:12]}… recorded, "
                         f"{str(new.get('sha256'))[:12]}… now)")
    return lines


@contextlib.contextmanager
def working_directory(path: Path | None) -> Iterator[None]:
    """Run with the recorded working directory so relative paths in the config mean what they meant."""
    previous = Path.cwd()
    if path is not None and Path(path).is_dir():
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def rerun(run_dir: Path, into: Path) -> dict[str, Any]:
    """Re-run the analysis recorded in ``run_dir`` into ``into`` and return the new manifest."""
    import yaml

    from runner import app
    from runner.config import build_settings

    recorded = read_manifest(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RunnerError(f"{run_dir} has no config.yaml to re-run")
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    config.update(cache=False, overwrite=True, resume=False, progress=False)
    settings = build_settings(config)
    with working_directory(Path(recorded["cwd"]) if recorded and recorded.get("cwd") else None):
        app.run(settings, into, resolved_config=config, overrides=(recorded or {}).get("overrides"))
    manifest = read_manifest(into)
    assert manifest is not None
    return manifest


def verify(run_dir: Path, tolerance: float = 0.0, keep: Path | None = None) -> Verdict:
    """Re-run and compare. ``keep``: folder for the re-run's outputs (default: a temporary folder, removed)."""
    run_dir = Path(run_dir).resolve()
    recorded = read_manifest(run_dir)
    if recorded is None:
        raise RunnerError(f"{run_dir} has no readable manifest.json")
    if recorded.get("status") != "complete":
        raise RunnerError(f"{run_dir} is not a complete run (status {recorded.get('status')!r})")
    scratch = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="runner-verify-"))
    try:
        fresh = rerun(run_dir, scratch)
        verdict = Verdict(changed_inputs=changed_inputs(recorded, fresh))
        new_paths = {e["path"] for e in fresh.get("outputs", [])}
        for entry in recorded.get("outputs", []):
            path, kind = entry["path"], entry.get("kind")
            if kind in NOT_COMPARED:
                continue
            target = scratch / path
            if path not in new_paths or not target.is_file():
                verdict.differences.append(f"{path}: not produced by the re-run")
                continue
            original = run_dir / path
            if not original.is_file():
                verdict.differences.append(f"{path}: missing from the run directory")
                continue
            verdict.compared += 1
            if path.endswith((".nii", ".nii.gz")):
                problem = compare_maps(original, target, tolerance)
            elif path.endswith((".tsv", ".csv")):
                problem = compare_tables(original, target, tolerance)
            else:
                problem = None if original.read_bytes() == target.read_bytes() else "content differs"
            if problem:
                verdict.differences.append(f"{path}: {problem}")
        recorded_paths = {e["path"] for e in recorded.get("outputs", [])}
        for entry in fresh.get("outputs", []):
            if entry["path"] not in recorded_paths and entry.get("kind") not in NOT_COMPARED:
                verdict.differences.append(f"{entry['path']}: produced by the re-run but not in the record")
        return verdict
    finally:
        if keep is None:
            shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: verify one or more run directories; exit 0 (reproduced), 1 (differs) or 2 (cannot verify)."""
    parser = argparse.ArgumentParser(prog="python -m runner.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories holding manifest.json")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="relative and absolute tolerance for maps and numeric table cells (default: exact)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the re-run's outputs in this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    status = 0
    for run_dir in args.run_dirs:
        try:
            verdict = verify(run_dir, args.tolerance, args.keep)
        except RunnerError as error:
            print(f"error: {run_dir}: {error}", file=sys.stderr)
            status = max(status, EXIT_USER_ERROR)
            continue
        if verdict.ok:
            print(f"verified: {run_dir} ({verdict.compared} output(s) reproduce"
                  + (" exactly)" if args.tolerance == 0 else f" within {args.tolerance:g})"))
            continue
        status = max(status, 1)
        print(f"DIFFERS: {run_dir}")
        for line in verdict.changed_inputs + verdict.differences:
            print(f"  {line}")
        if verdict.changed_inputs:
            print("  (inputs changed since the run: differences in results may follow from them)")
    return status


if __name__ == "__main__":
    sys.exit(main())
