"""In-process checks behind the error catalogue: variants of its cases, the notes that are not errors, honest test
counts, output file modes. (tests/test_error_catalogue.py runs one case per item through ``python -m runner``.)"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from conftest import compose, run_analysis
from runner.config import build_settings
from runner.contrasts import build_contrast
from runner.data.images import Grid
from runner.data.loader import MAX_ABS_VALUE, check_magnitude
from runner.data.patterns import check_pattern, time_limit
from runner.data.smoothing import check_smoothing
from runner.data.sources import ImageRef, from_table, read_table
from runner.design import build_design, read_design_matrix
from runner.errors import RunnerError
from runner.formula import MAX_TERMS, formula_columns
from runner.inference import ari
from runner.prevalidate import check_run_dir
from runner.preflight import check_permutation_memory, permutation_bytes
from test_error_catalogue import AFFINE, SHAPE, make_study, save_map


# -- tables and design matrices ----------------------------------------------------------------------------------
def test_table_problems_are_named(tmp_path):
    with pytest.raises(RunnerError, match="is a folder"):
        read_table(tmp_path)
    if Path("/dev/null").exists():
        with pytest.raises(RunnerError, match="is not a regular file"):
            read_table(Path("/dev/null"))
    (tmp_path / "t.tsv").write_text("path\tage\tage \nx.nii\t1\t2\n")  # equal once the names are stripped
    with pytest.raises(RunnerError, match="two columns named 'age'"):
        read_table(tmp_path / "t.tsv")
    (tmp_path / "h.tsv").write_text("path\tage\n")
    with pytest.raises(RunnerError, match="has no rows"):
        read_table(tmp_path / "h.tsv")


def test_design_matrix_file_problems_are_named(tmp_path):
    (tmp_path / "d.tsv").write_text("")
    with pytest.raises(RunnerError, match="is empty"):
        read_design_matrix(tmp_path / "d.tsv", 4)
    (tmp_path / "d.tsv").write_text("a\ta\n1\t2\n")
    with pytest.raises(RunnerError, match="two columns named 'a'"):
        read_design_matrix(tmp_path / "d.tsv", 1)
    with pytest.raises(RunnerError, match="is a folder"):
        read_design_matrix(tmp_path, 1)


def test_a_hard_link_to_a_listed_image_is_the_same_image(tmp_path):
    make_study(tmp_path)
    frame = pd.read_csv(tmp_path / "table.tsv", sep="\t")
    os.link(tmp_path / "maps" / "sub-01.nii.gz", tmp_path / "maps" / "copy.nii.gz")
    frame.loc[7, "path"] = "maps/copy.nii.gz"
    frame.to_csv(tmp_path / "table.tsv", sep="\t", index=False)
    from runner.data.checks import validate_table

    with pytest.raises(RunnerError, match=r"rows 1 and 8 .* same image .*copy.nii.gz \(also written"):
        validate_table(from_table(tmp_path / "table.tsv"), "1", None)


# -- configuration -----------------------------------------------------------------------------------------------
def test_settings_refuse_negative_seeds_and_a_formula_beside_a_matrix(tmp_path):
    with pytest.raises(RunnerError, match="correction.maxt.seed must be >= 0, got -5"):
        build_settings(compose(["correction=[maxt]", "correction.maxt.seed=-5"]))
    with pytest.raises(RunnerError, match="design.formula 'age' and design.matrix .* are both set"):
        build_settings(compose(["design.matrix=d.tsv", "design.formula=age"]))
    assert build_settings(compose(["design.matrix=d.tsv"])).design.matrix == "d.tsv"  # formula '1' is the default


def test_run_directory_checks(tmp_path):
    (tmp_path / "notes").write_text("x")
    with pytest.raises(RunnerError, match="cannot be made: .*notes is a file"):
        check_run_dir(tmp_path / "notes" / "run")
    (tmp_path / "run" / "run.log").mkdir(parents=True)
    with pytest.raises(RunnerError, match="holds a folder named run.log"):
        check_run_dir(tmp_path / "run")
    check_run_dir(tmp_path / "fresh" / "run")  # a folder that can be made is fine
    assert not (tmp_path / "fresh").exists()  # and the check made nothing


def test_a_full_disk_is_named_with_the_file_and_what_to_do(tmp_path, monkeypatch):
    import errno

    from runner.outputs import writer as writer_module

    def no_space(target, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer = writer_module.OutputWriter(tmp_path / "run")
    monkeypatch.setattr(writer_module, "write_atomic", no_space)
    with pytest.raises(RunnerError, match=r"cannot write .*run/contrast-a_stat-z_statmap.nii.gz: No space left on "
                                          r"device; free disk space") as error:
        writer.map(np.zeros(SHAPE), AFFINE, contrast="a", stat="z")
    assert "\n" not in str(error.value)


# -- bounded user expressions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", [r"sub-([A-Za-z0-9]+)", r"sub-(\d+)_ses-(\w+)", r"(?:sub|subj)-(\w+)",
                                     r"([a-z]{2})+-(\d+)"])
def test_ordinary_subject_patterns_are_accepted(pattern):
    assert check_pattern(pattern).pattern == pattern


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a|aa)*b", r"(a*)*", r"((ab)+c?)+", "x" * 201, "sub-(["])
def test_dangerous_or_invalid_subject_patterns_are_refused(pattern):
    with pytest.raises(RunnerError, match="data.subject_pattern"):
        check_pattern(pattern)


def test_a_slow_match_is_stopped_by_the_time_limit():
    slow = re.compile(r"(a+)+$")  # compiled directly: check_pattern would refuse it
    start = time.perf_counter()
    with pytest.raises(RunnerError, match="took more than 0.2 s"):
        with time_limit(0.2, "data.subject_pattern"):
            slow.search("a" * 40 + "b")
    assert time.perf_counter() - start < 5


def test_formulas_are_bounded_before_patsy_evaluates_anything():
    columns = ["age", "sex"]
    start = time.perf_counter()
    # MAX_TERMS + 1 columns make MAX_TERMS + 2 terms with the intercept
    for formula, message in [('I("M" * 10**10)', "arithmetic on text"), ("I([0] * 10**10)", "list or tuple"),
                             ("I((0,) * 10**10)", "list or tuple"),
                             (" + ".join(f"x{k}" for k in range(MAX_TERMS + 1)), f"{MAX_TERMS + 2} terms"),
                             (" + ".join(["age"] * 20000), "characters long")]:
        with pytest.raises(RunnerError, match=message):
            formula_columns(formula, columns)
    assert time.perf_counter() - start < 5
    assert formula_columns("C(sex, levels=['M', 'F']) + age", columns) == ["age", "sex"]


def test_contrast_expressions_are_bounded():
    with pytest.raises(RunnerError, match="characters long"):
        build_contrast("x", " + ".join(["age"] * 1000), ["Intercept", "age"])
    with pytest.raises(RunnerError, match="contrast 'x'"):
        build_contrast("x", "[0] * 10**10", ["Intercept", "age"])


def test_smoothing_is_bounded_by_the_field_of_view():
    grid = Grid((8, 8, 8), AFFINE)  # 24 mm along each axis
    check_smoothing(23.9, grid)
    with pytest.raises(RunnerError, match="wider than the field of view of the data \\(24 x 24 x 24 mm\\)"):
        check_smoothing(24.1, grid)


def test_permutation_memory_is_bounded_up_front():
    # closed form: 24 bytes per row of each element and 32 per method's null value; 10 maps, 2 methods
    assert permutation_bytes(1000, 10, 2) == 1000 * (24 * 10 + 32 * 2)
    check_permutation_memory(1000, 2**10, 10, 2, budget_bytes=2 * 1000 * 304, key="correction.maxt")
    with pytest.raises(RunnerError, match="use at most 999 "):
        check_permutation_memory(1000, 2**10, 10, 2, budget_bytes=2 * 1000 * 304 - 2, key="correction.maxt")
    # an exhaustive test never has more elements than the design allows: 10**12 requested, 2**10 possible
    check_permutation_memory(10**12, 2**10, 10, 2, budget_bytes=2 * 2**10 * 304, key="correction.maxt")


# -- honest numbers ----------------------------------------------------------------------------------------------
def test_values_that_would_overflow_are_refused():
    check_magnitude(np.array([1.0, -MAX_ABS_VALUE, np.nan]), ImageRef(Path("a.nii")))
    with pytest.raises(RunnerError, match="input a.nii holds values as large as 1e\\+300"):
        check_magnitude(np.array([1.0, -1e300, np.inf]), ImageRef(Path("a.nii")))
    table = pd.DataFrame({"x": [1.0, 2.0, 1e200, 4.0, 5.0]})
    with pytest.raises(RunnerError, match="design column 'x' holds values beyond"):
        build_design(table, formula="x")


def test_a_single_level_factor_left_by_the_query_is_noted(tmp_path):
    make_study(tmp_path)
    run_dir = tmp_path / "run"
    run_analysis(run_dir, ["data=table", f"data.table={tmp_path / 'table.tsv'}", "data.query=\"sex == 'M'\"",
                           "design.formula='age + C(sex)'", "contrasts=[{name:age,expr:age}]", "correction=[fpr]",
                           "report=false", "cache=false"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert any("factor 'sex' has a single level ('M') in the 4 map(s) analysed" in note for note in manifest["notes"])
    columns = pd.read_csv(run_dir / "design_matrix.tsv", sep="\t").columns.tolist()
    assert columns == ["Intercept", "age"]  # what the note warns about: the factor left the design


def test_bonferroni_counts_only_voxels_with_a_statistic(tmp_path):
    """Constant voxels have no statistic; the threshold is computed by hand with the count of the others."""
    make_study(tmp_path)
    constant = np.zeros(SHAPE, dtype=bool)
    constant[:4] = True  # half of the grid is 5.0 in every map: zero residual variance
    for path in sorted((tmp_path / "maps").iterdir()):
        values = np.asarray(nib.load(str(path)).dataobj, dtype=float)
        save_map(path, np.where(constant, 5.0, values))
    run_dir = tmp_path / "run"
    run_analysis(run_dir, ["data=table", f"data.table={tmp_path / 'table.tsv'}", "correction=[bonferroni]",
                           "report=false", "cache=false"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    n_tests = int((~constant).sum())
    assert manifest["n_voxels"] == constant.size  # every voxel is in the mask, but only half are tests
    threshold = manifest["summary"]["contrasts"]["mean"]["bonferroni"]["threshold"]
    assert threshold == pytest.approx(norm.isf(0.05 / 2 / n_tests), abs=1e-12)


def test_ari_leaves_voxels_without_a_statistic_out_of_its_hypotheses():
    """Removing NaN voxels from the mask changes nothing: they are not hypotheses."""
    rng = np.random.default_rng(4)
    z = rng.standard_normal(SHAPE)
    z[2:5, 2:5, 2:5] += 4.0
    mask = np.ones(SHAPE, dtype=bool)
    with_nan = z.copy()
    with_nan[6:] = np.nan
    tdp_nan, table_nan = ari.cluster_tdp(with_nan, mask, [3.0], 0.05)
    smaller = mask.copy()
    smaller[6:] = False
    tdp_small, table_small = ari.cluster_tdp(np.where(smaller, z, 0.0), smaller, [3.0], 0.05)
    np.testing.assert_array_equal(tdp_nan, tdp_small)
    pd.testing.assert_frame_equal(table_nan, table_small)
    assert table_nan["true_discoveries"].max() > 0


# -- outputs readable by others ----------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_follow_the_umask(tmp_path, umask, mode):
    make_study(tmp_path)
    previous = os.umask(umask)
    try:
        run_analysis(tmp_path / "run", ["data=table", f"data.table={tmp_path / 'table.tsv'}", "correction=[fpr]",
                                        "report=false", "cache=false"])
    finally:
        os.umask(previous)
    files = [p for p in (tmp_path / "run").iterdir() if p.is_file()]
    assert len(files) > 5
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(mode)}
