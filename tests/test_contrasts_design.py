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
