"""The error catalogue: every input of docs/errors.md's list, run as a user runs it (``python -m runner`` in a
subprocess), must end with exit code 2, exactly one line on stderr starting ``error:``, no traceback anywhere,
nothing written outside the run directory, and no manifest marked complete.

Each case builds its own tiny study (8 maps of 8x8x8 voxels) in its own folder. The subprocesses run a few at a
time (they mostly wait for imports on a loaded machine), so the whole catalogue takes seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import run_cli

SHAPE = (8, 8, 8)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
N_MAPS = 8
CONCURRENT = 4
FILE_SIZE_LIMIT = 16 * 1024  # bytes; run.log and the first small outputs fit, a 24^3 map does not


def save_map(path: Path, values: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(values, dtype=np.float32), affine), str(path))
    return path


def make_study(root: Path, shape: tuple[int, ...] = SHAPE, n_maps: int = N_MAPS) -> pd.DataFrame:
    """A valid study: maps N(1, 1), a table with an id, path, age, sex and site; the mask is the whole grid."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_maps):
        path = f"maps/sub-{i + 1:02d}.nii.gz"
        save_map(root / path, rng.normal(1.0, 1.0, shape))
        rows.append({"participant_id": f"sub-{i + 1:02d}", "path": path, "age": 20.5 + 3 * i, "sex": "MF"[i % 2],
                     "site": 1 + i // 4})
    frame = pd.DataFrame(rows)
    frame.to_csv(root / "table.tsv", sep="\t", index=False)
    return frame


@dataclass
class Setup:
    """What a case needs: extra overrides, the text the error line must hold, and how to run and clean up."""

    args: list[str]
    expected: str
    run_dir: Path | None = None  # default root/run
    preexec_fn: Callable[[], None] | None = None
    cleanup: Callable[[], None] | None = None
    log_must_hold_error: bool = False


@dataclass
class Outcome:
    result: subprocess.CompletedProcess | None
    run_dir: Path
    root: Path
    setup: Setup | None
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    skipped: str | None = None


def base_args(root: Path, run_dir: Path) -> list[str]:
    return ["data=table", f"data.table={root / 'table.tsv'}", "correction=[fpr]", "report=false", "cache=false",
            "progress=false", "n_jobs=1", f"output_root={root / 'out'}", f"hydra.run.dir={run_dir}"]


def hydra_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# -- making a folder read-only, also for root (who ignores permission bits) ---------------------------------------
def make_read_only(folder: Path) -> Callable[[], None]:
    """Make ``folder`` refuse new entries: chmod for ordinary users; the immutable attribute for root."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder read-only for root here (no chattr +i)")
    probe = folder / ".probe"
    try:
        probe.touch()
    except OSError:
        return lambda: subprocess.run([chattr, "-i", str(folder)], capture_output=True)
    probe.unlink()
    subprocess.run([chattr, "-i", str(folder)], capture_output=True)
    pytest.skip("the immutable attribute does not stop root here")


def file_size_limit() -> None:
    """In the child: writes beyond FILE_SIZE_LIMIT bytes fail with EFBIG (Python ignores SIGXFSZ), as a full disk."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, resource.RLIM_INFINITY))


# -- the cases: setup(root) -> Setup ------------------------------------------------------------------------------
def empty_table(root):
    (root / "table.tsv").write_text("")
    return Setup([], f"data.table {root / 'table.tsv'} is empty")


def blank_table(root):
    (root / "table.tsv").write_text("  \n\n \n")
    return Setup([], f"data.table {root / 'table.tsv'} is empty")


def unreadable_table(root):
    if os.geteuid() != 0:
        (root / "table.tsv").chmod(0)
        return Setup([], f"data.table {root / 'table.tsv'} cannot be read",
                     cleanup=lambda: (root / "table.tsv").chmod(0o644))
    if not Path("/proc/self/mem").exists():
        pytest.skip("root reads every file and there is no /proc/self/mem")
    return Setup(["data.table=/proc/self/mem"], "data.table /proc/self/mem cannot be read")


def cfg_with_multirun(root):
    return Setup(["--cfg", "job", "-m"], "--multirun and --cfg cannot be given together; give one of them")


def empty_design_matrix(root):
    return Setup(["design.formula='0'"], "the design matrix has no columns")


def read_only_parent(root):
    parent = root / "locked"
    parent.mkdir()
    cleanup = make_read_only(parent)
    return Setup([], "is not writable", run_dir=parent / "run", cleanup=cleanup)


def read_only_run_dir(root):
    run_dir = root / "run"
    run_dir.mkdir()
    cleanup = make_read_only(run_dir)
    return Setup([], f"hydra.run.dir {run_dir} is not writable", cleanup=cleanup)


def run_dir_is_a_file(root):
    (root / "run").write_text("my notes\n")
    return Setup([], f"hydra.run.dir {root / 'run'} is a file")


def output_name_is_a_folder(root):
    (root / "run" / "design_matrix.tsv").mkdir(parents=True)
    return Setup([], str(root / "run"))


def full_disk(root):
    for path in (root / "maps").iterdir():
        path.unlink()
    make_study(root, shape=(24, 24, 24))
    return Setup([], f"cannot write {root / 'run'}", preexec_fn=file_size_limit, log_must_hold_error=True)


def negative_seed(root):
    return Setup(["seed=-1"], "seed must be >= 0, got -1")


def invalid_subject_pattern(root):
    return Setup(["data.table=null", f"data.glob={root / 'maps' / '*.nii.gz'}", "data.subject_pattern='sub-(['"],
                 "data.subject_pattern 'sub-([' is not a valid regular expression")


def backtracking_subject_pattern(root):
    return Setup(["data.table=null", f"data.glob={root / 'maps' / '*.nii.gz'}",
                  "data.subject_pattern='(s+)+$'"], "can take forever to match")


def single_slice_with_figures(root):
    shutil.rmtree(root / "maps")
    make_study(root, shape=(8, 8, 1))
    return Setup(["report=true"], "the data grid (8, 8, 1) is a single slice or line")


def single_line_with_figures(root):
    shutil.rmtree(root / "maps")
    make_study(root, shape=(1, 8, 1))
    return Setup(["report=true"], "the data grid (1, 8, 1) is a single slice or line")


def too_many_permutations_for_the_budget(root):
    return Setup(["correction=[maxt]", "correction.maxt.n_permutations=10000000000", "memory_budget_gb=0.001",
                  "design.formula=age", "contrasts=[{name:age,expr:age}]"],
                 "correction.maxt.n_permutations=10000000000 would need about")


def formula_of_20000_terms(root):
    return Setup(["design.formula=" + hydra_quote(" + ".join(["age"] * 20000))], "design.formula is")


def experiment_outside_the_search_path(root):
    return Setup(["+experiment=../../etc/x"], "is not a preset name")


def experiment_in_another_config_group(root):
    return Setup(["+experiment=../correction/fdr"], "is not a preset name")  # this file exists: still refused


def smoothing_beyond_the_field_of_view(root):
    return Setup(["data.smoothing_fwhm=1e9"], "data.smoothing_fwhm=1e+09 mm is wider than the field of view")


def text_repetition_in_a_formula(root):
    return Setup(["design.formula=" + hydra_quote('I("M" * 10**10)')], "does arithmetic on text")


def list_repetition_in_a_formula(root):
    return Setup(["design.formula=" + hydra_quote("I([0] * 10**10)")], "a list or tuple in an expression")


def list_repetition_in_a_contrast(root):
    return Setup(["contrasts=[{name:x,expr:" + hydra_quote("[0] * 10**10") + "}]"], "contrast 'x'")


def same_image_by_two_spellings(root):
    frame = pd.read_csv(root / "table.tsv", sep="\t")
    frame.loc[5, "path"] = "maps/../maps/sub-02.nii.gz"
    frame.to_csv(root / "table.tsv", sep="\t", index=False)
    return Setup([], "rows 2 and 6 of the input table name the same image")


def same_image_through_a_symlink(root):
    (root / "maps" / "sub-06.nii.gz").unlink()
    (root / "maps" / "sub-06.nii.gz").symlink_to(root / "maps" / "sub-02.nii.gz")
    return Setup([], "rows 2 and 6 of the input table name the same image")


def duplicated_table_column(root):
    text = (root / "table.tsv").read_text().splitlines()
    lines = [text[0] + "\tage"] + [line + "\t1" for line in text[1:]]
    (root / "table.tsv").write_text("\n".join(lines) + "\n")
    return Setup(["design.formula=age"], "has two columns named 'age'")


def four_d_mask(root):
    mask = save_map(root / "mask.nii.gz", np.ones(SHAPE + (2,)))
    return Setup([f"data.mask={mask}"], f"data.mask {mask} is 4D (2 volumes)")


def formula_and_design_matrix(root):
    pd.DataFrame({"Intercept": np.ones(N_MAPS)}).to_csv(root / "design.tsv", sep="\t", index=False)
    return Setup([f"design.matrix={root / 'design.tsv'}", "design.formula=age"], "are both set")


def nan_in_an_exchangeability_block_column(root):
    frame = pd.read_csv(root / "table.tsv", sep="\t")
    frame["site"] = frame["site"].astype(object)
    frame.loc[3, "site"] = "n/a"
    frame.to_csv(root / "table.tsv", sep="\t", index=False)
    return Setup(["correction=[maxt]", "correction.maxt.n_permutations=100",
                  "correction.maxt.exchangeability_blocks=site"], "column 'site' is empty (n/a) in 1 row(s)")


def overflowing_values(root):
    image = nib.Nifti1Image(np.random.default_rng(3).normal(1e300, 1e299, SHAPE), AFFINE)
    image.set_data_dtype(np.float64)  # float32 cannot hold 1e300
    nib.save(image, str(root / "maps" / "sub-03.nii.gz"))
    return Setup([], f"input {root / 'maps' / 'sub-03.nii.gz'} holds values as large as")


# One case per item of the list in docs/errors.md; variants (a table that is a folder, a run directory under a
# file, ...) are tested in-process in tests/test_input_refusals.py, where they cost no interpreter start.
CASES = [
    empty_table, blank_table, unreadable_table, empty_design_matrix, read_only_parent, read_only_run_dir,
    run_dir_is_a_file, output_name_is_a_folder, full_disk, negative_seed, invalid_subject_pattern,
    backtracking_subject_pattern, single_slice_with_figures, single_line_with_figures,
    too_many_permutations_for_the_budget, formula_of_20000_terms, experiment_outside_the_search_path,
    experiment_in_another_config_group, smoothing_beyond_the_field_of_view, text_repetition_in_a_formula,
    list_repetition_in_a_formula, list_repetition_in_a_contrast, same_image_by_two_spellings,
    same_image_through_a_symlink, duplicated_table_column, four_d_mask, formula_and_design_matrix,
    nan_in_an_exchangeability_block_column, overflowing_values, cfg_with_multirun,
]


# -- running them ------------------------------------------------------------------------------------------------
def snapshot(root: Path, run_dir: Path) -> dict[str, tuple]:
    """Every path under ``root`` outside ``run_dir`` with its kind, size and modification time."""
    state = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if (here / d) != run_dir]
        for name in dirs + files:
            path = here / name
            if path == run_dir:
                continue
            info = path.lstat()
            state[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return state


def run_case(case, root: Path) -> Outcome:
    root.mkdir(parents=True)
    make_study(root)
    try:
        setup = case(root)
    except pytest.skip.Exception as skip:
        return Outcome(None, root / "run", root, None, skipped=str(skip))
    if isinstance(setup, tuple):
        setup = Setup(*setup)
    run_dir = setup.run_dir or root / "run"
    before = snapshot(root, run_dir)
    try:
        result = run_cli([*base_args(root, run_dir), *setup.args], cwd=root, timeout=240,
                         preexec_fn=setup.preexec_fn)
        after = snapshot(root, run_dir)
    finally:
        if setup.cleanup:
            setup.cleanup()
    return Outcome(result, run_dir, root, setup, before, after)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("catalogue")
    with ThreadPoolExecutor(CONCURRENT) as pool:
        futures = {case.__name__: pool.submit(run_case, case, base / case.__name__) for case in CASES}
        return {name: future.result() for name, future in futures.items()}


def complete_manifests(root: Path) -> list[Path]:
    found = []
    for path in root.rglob("manifest.json"):
        try:
            if json.loads(path.read_text()).get("status") == "complete":
                found.append(path)
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_refused_in_one_line(case, outcomes):
    outcome = outcomes[case.__name__]
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    result = outcome.result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    context = f"exit {result.returncode}\nstdout: {result.stdout[-1500:]}\nstderr: {result.stderr[-3000:]}"
    assert result.returncode == 2, context
    assert len(lines) == 1 and lines[0].startswith("error: "), context
    assert outcome.setup.expected in lines[0], context
    assert "Traceback" not in result.stdout + result.stderr, context
    assert outcome.after == outcome.before, "something was written outside the run directory"
    assert not complete_manifests(outcome.root), "a manifest says complete"
    if outcome.setup.log_must_hold_error:
        log = outcome.run_dir / "run.log"
        assert log.is_file() and lines[0] in log.read_text(), "the error line is not in run.log"
