"""``python -m runner.verify <run dir>``: re-run a recorded analysis and compare every output with the record.

What is checked, for each run directory:

1. The record against itself: every output the manifest lists must be a file of the run directory whose bytes match
   the sha256 the manifest records (maps, tables, figures, the report and config.yaml alike), and the manifest's
   ``config_sha256`` must be that of config.yaml.
2. The inputs: the images, the table, the participants file, the mask and the design-matrix file are hashed again by
   the re-run; one whose bytes changed is reported as a changed input, not as a changed result.
3. The re-run against the record: maps voxel by voxel (exact by default, ``--tolerance`` for a relative/absolute
   bound), tables cell by cell, and the manifest's claims (``summary``: counts, thresholds and peaks per contrast and
   method; ``dof``, ``n_maps``, ``n_voxels``, ``seed``) value by value. Figures are compared by sha256: PNG bytes
   depend on the plotting library and fonts, so a figure that differs from the re-run is a difference when the
   library versions recorded in the manifest are those installed, and only a note (exit status unaffected) when they
   are not. The report and config.yaml are checked against the record's sha256 only: the report names its run
   directory and the time it was written, and the re-run's config names its inputs by absolute path.

The re-run writes only into a fresh temporary folder (or the empty folder given by ``--keep``, resolved against the
caller's working directory), never into the run directory or the recorded working directory, and without the data
cache: relative input paths of the recorded config are resolved against the recorded working directory.

Exit codes: 0 everything reproduces (notes may be printed); 1 something differs (each difference named on its own
line); 2 the run directory cannot be verified (not complete, no config, an input missing, a refused ``--keep``).
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from runner.errors import EXIT_USER_ERROR, RunnerError
from runner.outputs.atomic import sha256_file
from runner.outputs.manifest import read_manifest

log = logging.getLogger("runner.verify")

RECORD_ONLY = ("report", "config")  # checked against the record's sha256, not against the re-run
RENDERED = ("figure",)  # compared with the re-run by sha256 (pixels depend on library and font versions)
CLAIMS = ("n_maps", "n_voxels", "dof", "seed", "summary")  # manifest fields the re-run must reproduce
# Config keys naming files or patterns that a relative path resolves against the working directory.
PATH_KEYS = (("data", "table"), ("data", "glob"), ("data", "participants"), ("data", "image_4d"), ("data", "mask"),
             ("data", "root"), ("design", "matrix"), ("design", "bids_model"))


@dataclass
class Verdict:
    """What differs between a recorded run and its re-run.

    ``notes`` (figures that differ from the re-run under other library versions) do not make the run differ.
    """

    changed_inputs: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    compared: int = 0

    @property
    def ok(self) -> bool:
        return not self.changed_inputs and not self.differences


def compare_maps(recorded: Path, rerun: Path, tolerance: float) -> str | None:
    """None when two maps agree (where their values live, and the values), else a one-line description.

    NIfTI maps are compared by grid (shape and affine), GIFTI maps by their data arrays' shapes and anatomical
    structure, CIFTI-2 maps by their axes (brain models: structures, vertices, mesh sizes, voxels; map names).
    """
    a, where_a = _read_map(recorded)
    b, where_b = _read_map(rerun)
    if a.shape != b.shape:
        return f"shape {a.shape} != {b.shape}"
    if where_a != where_b:
        return where_a.differs(where_b)
    x, y = a, b
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
    element = where_a.element
    return (f"{len(bad)} {element}(s) differ (first at {element} {first}: {float(x[first])!r} vs "
            f"{float(y[first])!r}; largest difference {worst:.3g})")


@dataclass(frozen=True)
class _Where:
    """Where a map's values live, as far as two maps must agree on it."""

    kind: str  # what is compared, for the message
    key: Any
    element: str = "voxel"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Where) or other.kind != self.kind:
            return False
        if self.kind == "affine":
            return bool(np.allclose(self.key, other.key, rtol=0, atol=1e-6))
        return bool(self.key == other.key)

    def differs(self, other: "_Where") -> str:
        if other.kind != self.kind:
            return f"file type differs ({self.kind} vs {other.kind})"
        return f"{self.kind} differs"


def _read_map(path: Path) -> tuple[np.ndarray, _Where]:
    """A map file's values (float64) and where they live (NIfTI, GIFTI or CIFTI-2)."""
    import nibabel as nib

    image = nib.load(str(path))
    if isinstance(image, nib.GiftiImage):
        values = np.stack([np.asarray(array.data, dtype=np.float64) for array in image.darrays])
        structure = dict(image.meta).get("AnatomicalStructurePrimary")
        return values, _Where("anatomical structure", structure, "vertex")
    if isinstance(image, nib.Cifti2Image):
        axes = tuple(image.header.get_axis(i) for i in range(image.ndim))
        return np.asarray(image.dataobj, dtype=np.float64), _Where("CIFTI axes (brain models or map names)", axes,
                                                                    "column")
    return np.asarray(image.dataobj, dtype=np.float64), _Where("affine", np.asarray(image.affine))


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
    """Inputs whose bytes differ between the recorded run and the re-run.

    Images are matched by position; the other files the analysis reads (table, participants, mask, design matrix) by
    their role. A record without ``input_files`` (written before they were recorded) has only its images checked.
    """
    before, after = _records(recorded.get("inputs")), _records(rerun.get("inputs"))
    lines = []
    if len(before) != len(after):
        lines.append(f"the analysis now reads {len(after)} input image(s), the record {len(before)}")
    for old, new in zip(before, after):
        if old.get("sha256") != new.get("sha256"):
            lines.append(f"input {new.get('path')} changed (sha256 {_short(old.get('sha256'))} recorded, "
                         f"{_short(new.get('sha256'))} now)")
    if "input_files" not in recorded:
        return lines
    files_before, files_after = _by_role(recorded.get("input_files")), _by_role(rerun.get("input_files"))
    for role in dict.fromkeys([*files_before, *files_after]):
        name = str(role).replace("_", " ")
        old, new = files_before.get(role), files_after.get(role)
        if old is None:
            lines.append(f"input {name} {new.get('path')} is read now but not recorded")
        elif new is None:
            lines.append(f"input {name} {old.get('path')} is recorded but no longer read")
        elif old.get("sha256") != new.get("sha256"):
            lines.append(f"input {name} {new.get('path')} changed (sha256 {_short(old.get('sha256'))} recorded, "
                         f"{_short(new.get('sha256'))} now)")
    return lines


def check_record(run_dir: Path, recorded: dict[str, Any]) -> tuple[list[str], int]:
    """The manifest's own claims about the run directory: each listed output is a file there whose sha256 is the one
    recorded, and ``config_sha256`` is the hash of config.yaml. Returns the problems and the number of files checked.
    """
    problems: list[str] = []
    checked = 0
    listed = recorded.get("outputs")
    if not isinstance(listed, list) or len(_records(listed)) != len(listed):
        problems.append("manifest.json: outputs is not a list of entries")
    for entry in _records(listed):
        path = str(entry.get("path", ""))
        if not _plain_name(path):
            problems.append(f"{path!r}: the manifest lists a path that is not a file name of the run directory")
            continue
        checked += 1
        target = run_dir / path
        if not target.is_file():
            problems.append(f"{path}: missing from the run directory")
        elif sha256_file(target) != entry.get("sha256"):
            problems.append(f"{path}: its bytes do not match the sha256 the manifest records "
                            f"({_short(entry.get('sha256'))})")
    config = run_dir / "config.yaml"
    if config.is_file():
        from runner.app import config_hash

        if config_hash(_read_config(config)) != recorded.get("config_sha256"):
            problems.append("manifest.json: config_sha256 is not the hash of config.yaml")
    return problems, checked


def check_claims(recorded: dict[str, Any], rerun: dict[str, Any], tolerance: float) -> list[str]:
    """The manifest's summary, dof, counts and seed against the re-run's, value by value."""
    problems: list[str] = []
    for key in CLAIMS:
        if key not in recorded:
            problems.append(f"manifest.json: {key} is not recorded")
        else:
            _diff_values(recorded[key], rerun.get(key), key, tolerance, problems)
    return problems


def _diff_values(old: Any, new: Any, where: str, tolerance: float, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in dict.fromkeys([*old, *new]):
            if key not in new:
                out.append(f"manifest.json: {where}.{key} = {old[key]!r} recorded, absent from the re-run")
            elif key not in old:
                out.append(f"manifest.json: {where}.{key} is not recorded ({new[key]!r} in the re-run)")
            else:
                _diff_values(old[key], new[key], f"{where}.{key}", tolerance, out)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            _diff_values(a, b, f"{where}[{i}]", tolerance, out)
    elif not _same_value(old, new, tolerance):
        out.append(f"manifest.json: {where} = {old!r} recorded, {new!r} in the re-run")


def _same_value(old: Any, new: Any, tolerance: float) -> bool:
    numbers = (int, float)
    if isinstance(old, numbers) and isinstance(new, numbers) and not isinstance(old, bool) \
            and not isinstance(new, bool):
        if tolerance > 0:
            return math.isclose(old, new, rel_tol=tolerance, abs_tol=tolerance)
        return old == new
    return type(old) is type(new) and old == new


def keep_folder(keep: Path, run_dir: Path) -> Path:
    """The folder for the re-run's outputs: ``keep`` resolved against the caller's working directory, refused when it
    is the run being verified (or inside it) or an existing non-empty folder."""
    folder = Path(keep).expanduser().resolve()
    if folder == run_dir or folder.is_relative_to(run_dir):
        raise RunnerError(f"--keep {keep} is the run being verified or inside it; give a new folder outside {run_dir}")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise RunnerError(f"--keep {keep}: {folder} exists and is not an empty folder; give a new or empty folder")
    return folder


def absolute_input_paths(config: dict[str, Any], cwd: Path | None) -> dict[str, Any]:
    """A copy of ``config`` whose relative input paths are absolute, resolved against the recorded working directory
    (so the re-run reads what the run read without changing the process's working directory)."""
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    for group, key in PATH_KEYS:
        section = config.get(group)
        value = section.get(key) if isinstance(section, dict) else None
        if not isinstance(value, str) or not value.strip():
            continue
        path = Path(value).expanduser()
        if path.is_absolute():
            continue
        if cwd is None or not cwd.is_dir():
            raise RunnerError(f"{group}.{key} {value!r} is relative and the recorded working directory {cwd} no "
                              "longer exists; the inputs cannot be found")
        section[key] = str(cwd / path)
    return config


def rerun(run_dir: Path, into: Path, recorded: dict[str, Any]) -> dict[str, Any]:
    """Re-run the analysis recorded in ``run_dir`` into the new or empty folder ``into``; return the new manifest."""
    from runner import app
    from runner.config import build_settings

    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RunnerError(f"{run_dir} has no config.yaml to re-run")
    cwd = Path(recorded["cwd"]) if isinstance(recorded.get("cwd"), str) and recorded["cwd"] else None
    config = absolute_input_paths(_read_config(config_path), cwd)
    config.update(cache=False, overwrite=False, resume=False, progress=False)
    # on local threads: a recorded Dask scheduler or batch cluster belonged to that run, and the executor does not
    # change the results; config.yaml is still written as recorded
    settings = build_settings({**config, "executor": {}})
    overrides = recorded.get("overrides")
    app.run(settings, into, resolved_config=config,
            overrides=[str(o) for o in overrides] if isinstance(overrides, list) else None)
    manifest = read_manifest(into)
    if manifest is None or manifest.get("status") != "complete":
        raise RunnerError(f"the re-run into {into} did not complete")
    return manifest


def compare_outputs(run_dir: Path, scratch: Path, recorded: dict[str, Any], fresh: dict[str, Any],
                    tolerance: float, verdict: Verdict) -> None:
    """Each listed output against the re-run's: maps and tables by value, figures by sha256."""
    fresh_entries = {str(e.get("path")): e for e in _records(fresh.get("outputs"))}
    versions = recorded.get("versions") if isinstance(recorded.get("versions"), dict) else {}
    installed = fresh.get("versions") or {}
    version_changes = ", ".join(f"{name} {versions.get(name)} recorded, {now} installed"
                                for name, now in installed.items() if versions.get(name) != now)
    listed = set()
    for entry in _records(recorded.get("outputs")):
        path, kind = str(entry.get("path", "")), entry.get("kind")
        listed.add(path)
        original = run_dir / path
        if kind in RECORD_ONLY or not _plain_name(path) or not original.is_file():
            continue  # checked (or reported) against the record
        target = scratch / path
        if path not in fresh_entries or not target.is_file():
            verdict.differences.append(f"{path}: not produced by the re-run")
        elif kind in RENDERED or path.endswith(".png"):
            actual = sha256_file(original)
            if actual != entry.get("sha256"):
                continue  # reported against the record; the re-run cannot say more about a figure
            if actual != fresh_entries[path].get("sha256"):
                if versions == installed:
                    verdict.differences.append(f"{path}: figure differs from the re-run (may be library/font "
                                               "versions; the recorded library versions are installed)")
                else:
                    verdict.notes.append(f"{path}: figure differs from the re-run (may be library/font versions: "
                                         f"{version_changes})")
        elif path.endswith((".nii", ".nii.gz", ".gii")):
            _add(verdict, path, compare_maps(original, target, tolerance))
        elif path.endswith((".tsv", ".csv")):
            _add(verdict, path, compare_tables(original, target, tolerance))
        else:
            _add(verdict, path, None if original.read_bytes() == target.read_bytes() else "content differs")
    for path, entry in fresh_entries.items():
        if path not in listed and entry.get("kind") not in RECORD_ONLY:
            verdict.differences.append(f"{path}: produced by the re-run but not in the record")


def verify(run_dir: Path, tolerance: float = 0.0, keep: Path | None = None) -> Verdict:
    """Check the record, re-run and compare (see the module docstring).

    Parameters
    ----------
    run_dir : a complete run directory.
    tolerance : relative and absolute tolerance for maps, numeric table cells and the manifest's numbers (0: exact).
    keep : a new or empty folder for the re-run's outputs, relative to the working directory of the caller (default:
        a temporary folder, removed).
    """
    run_dir = Path(run_dir).expanduser().resolve()
    recorded = read_manifest(run_dir)
    if not isinstance(recorded, dict):
        raise RunnerError(f"{run_dir} has no readable manifest.json")
    if recorded.get("status") != "complete":
        raise RunnerError(f"{run_dir} is not a complete run (status {recorded.get('status')!r})")
    folder = keep_folder(keep, run_dir) if keep is not None else None
    verdict = Verdict()
    verdict.differences, verdict.compared = check_record(run_dir, recorded)
    scratch = folder or Path(tempfile.mkdtemp(prefix="runner-verify-"))
    try:
        fresh = rerun(run_dir, scratch, recorded)
        verdict.changed_inputs = changed_inputs(recorded, fresh)
        if "input_files" not in recorded:
            verdict.notes.append("the record predates hashes of the table, mask and design matrix: only the images "
                                 "are checked as inputs")
        verdict.differences += check_claims(recorded, fresh, tolerance)
        compare_outputs(run_dir, scratch, recorded, fresh, tolerance, verdict)
        return verdict
    finally:
        if folder is None:
            shutil.rmtree(scratch, ignore_errors=True)


def _add(verdict: Verdict, path: str, problem: str | None) -> None:
    if problem:
        verdict.differences.append(f"{path}: {problem}")


def _by_role(value: Any) -> dict[str, dict[str, Any]]:
    """A manifest's ``input_files`` (role -> {path, sha256}) with anything malformed left out."""
    if not isinstance(value, dict):
        return {}
    return {str(role): entry for role, entry in value.items() if isinstance(entry, dict)}


def _records(value: Any) -> list[dict[str, Any]]:
    """The mappings of a manifest list (an edited manifest may hold anything)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _plain_name(path: str) -> bool:
    """True for a file name of the run directory (what the writer produces): no folders, no leading dot."""
    return bool(path) and "/" not in path and "\\" not in path and "\x00" not in path and not path.startswith(".")


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise RunnerError(f"{path} cannot be read as YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise RunnerError(f"{path} does not hold a mapping of settings")
    return config


def _short(digest: Any) -> str:
    return f"{str(digest)[:12]}…" if digest else "none"


def main(argv: list[str] | None = None) -> int:
    """Command line: verify one or more run directories; exit 0 (reproduced), 1 (differs) or 2 (cannot verify)."""
    parser = argparse.ArgumentParser(prog="python -m runner.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories holding manifest.json")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="relative and absolute tolerance for maps, numeric table cells and the manifest's "
                             "numbers (default: exact)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the re-run's outputs in this new or empty folder (one run directory only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.keep is not None and len(args.run_dirs) > 1:
        print("error: --keep takes one run directory at a time (each re-run needs its own empty folder)",
              file=sys.stderr)
        return EXIT_USER_ERROR
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
        else:
            status = max(status, 1)
            print(f"DIFFERS: {run_dir}")
            for line in verdict.changed_inputs + verdict.differences:
                print(f"  {line}")
            if verdict.changed_inputs:
                print("  (inputs changed since the run: differences in results may follow from them)")
        for line in verdict.notes:
            print(f"  note: {line}")
    return status


if __name__ == "__main__":
    sys.exit(main())
