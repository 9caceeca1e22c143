"""Contrast expressions over patsy column names; design checks for missing rows and collinearity."""

import numpy as np
import pandas as pd
import pytest

from runner.contrasts import build_contrast
from runner.design import build_design
from runner.errors import RunnerError

COLUMNS = ["Intercept", "C(sex)[T.M]", "age", "age:C(sex)[T.M]"]


def test_expressions_with_brackets_and_colons():
    np.testing.assert_array_equal(build_contrast("x", "age:C(sex)[T.M] - 2*age", COLUMNS).vector, [0, 0, -2, 1])
    np.testing.assert_array_equal(build_contrast("x", "-age", COLUMNS).vector, [0, 0, -1, 0])


def test_list_of_rows_is_an_f_contrast():
    contrast = build_contrast("f", ["age", "C(sex)[T.M]"], COLUMNS)
    assert contrast.stat_type == "F" and contrast.matrix.shape == (2, 4)


def test_numeric_vector_and_length_check():
    assert build_contrast("v", [0, 0, 1, 0], COLUMNS).stat_type == "t"
    with pytest.raises(RunnerError, match="4 column"):
        build_contrast("v", [1, 0], COLUMNS)


def test_unknown_column_suggests_closest():
    with pytest.raises(RunnerError, match=r"'agee'.*did you mean 'age'"):
        build_contrast("x", "agee", COLUMNS)


def test_missing_values_refused_then_dropped():
    table = pd.DataFrame({"subject": ["s1", "s2", "s3", "s4", "s5"], "age": [1.0, np.nan, 3, 4, 5]})
    with pytest.raises(RunnerError, match=r"s2 \(age\)"):
        build_design(table, "age", id_column="subject")
    design = build_design(table, "age", drop_missing=True, id_column="subject")
    assert len(design.matrix) == 4 and list(design.dropped.subject) == ["s2"]


def test_rank_deficiency_names_the_columns():
    table = pd.DataFrame({"a": [1.0, 2, 3, 4, 5], "b": [2.0, 4, 6, 8, 10]})
    with pytest.raises(RunnerError, match=r"'b' is a linear combination of 'a'"):
        build_design(table, "a + b")


def test_too_few_maps():
    table = pd.DataFrame({"a": [1.0, 2.0]})
    with pytest.raises(RunnerError, match="too few"):
        build_design(table, "a")


def test_design_matrix_presets_mean_contrast_is_the_average_of_the_group_means(tmp_path):
    """The preset's "mean" is the average of the two sexes' mean maps at the mean age and fluency: checked with a
    cell-means design (one indicator per sex, centred covariates) fitted by hand on an unbalanced planted study."""
    import nibabel as nib

    from conftest import run_analysis
    from planted import POSITIVE_CENTRE, planted_study

    study = tmp_path / "study"
    overrides = planted_study(study, n_maps=12)
    rng = np.random.default_rng(1)
    table = pd.read_csv(study / "table.tsv", sep="\t")
    table["sex"] = ["F"] * 9 + ["M"] * 3  # unbalanced: the mean of all maps is not the average of the groups
    table["age"] = np.round(rng.uniform(20, 40, len(table)), 1)
    table["fluency"] = np.round(rng.normal(40, 10, len(table)), 1)
    table.to_csv(study / "table.tsv", sep="\t", index=False)
    run_dir = tmp_path / "run"
    run_analysis(run_dir, ["+experiment=design_matrix", *overrides, "report=false"])

    Y = np.stack([nib.load(study / p).get_fdata().ravel() for p in table["path"]])
    X = np.column_stack([table["sex"] == "F", table["sex"] == "M", table["age"] - table["age"].mean(),
                         table["fluency"] - table["fluency"].mean()]).astype(float)
    beta = np.linalg.lstsq(X, Y, rcond=None)[0]
    expected = (beta[0] + beta[1]) / 2
    effect = nib.load(run_dir / "contrast-mean_stat-effect_statmap.nii.gz").get_fdata().ravel()
    inside = nib.load(study / "mask.nii.gz").get_fdata().ravel() > 0
    np.testing.assert_allclose(effect[inside], expected[inside], rtol=1e-5, atol=1e-6)
    # ... and it is neither the reference group's mean nor the mean of all maps
    peak = np.ravel_multi_index(POSITIVE_CENTRE, nib.load(study / "mask.nii.gz").shape)
    assert abs(effect[peak] - beta[0, peak]) > 1e-3 and abs(effect[peak] - Y[:, peak].mean()) > 1e-3
    fluency = nib.load(run_dir / "contrast-fluency_stat-effect_statmap.nii.gz").get_fdata().ravel()
    np.testing.assert_allclose(fluency[inside], beta[3][inside], rtol=1e-5, atol=1e-6)
