"""The formula sandbox builds patsy designs and refuses anything that is not columns and allowed functions."""

import numpy as np
import pandas as pd
import pytest

from runner.errors import RunnerError
from runner.formula import evaluate_formula


@pytest.fixture
def table():
    return pd.DataFrame({"age": [20.0, 31, 42, 55, 61, 70], "sex": list("MFMFMF"),
                         "group": ["control", "patient"] * 3})


def test_interaction_columns_are_patsys(table):
    design = evaluate_formula("age * C(sex)", table)
    assert list(design.columns) == ["Intercept", "C(sex)[T.M]", "age", "age:C(sex)[T.M]"]
    np.testing.assert_array_equal(design["age:C(sex)[T.M]"], table.age * (table.sex == "M"))


def test_treatment_reference_and_centering(table):
    design = evaluate_formula("C(group, Treatment('control')) + center(age)", table)
    assert "C(group, Treatment('control'))[T.patient]" in design.columns
    assert design["center(age)"].mean() == pytest.approx(0.0, abs=1e-12)


def test_intercept_only(table):
    assert list(evaluate_formula("1", table).columns) == ["Intercept"]


@pytest.mark.parametrize("formula, message", [
    ("__import__('os').system('echo hacked')", "not allowed"),
    ("age.__class__", "attribute access"),
    ("np.log(age)", "not allowed"),
    ("open('/etc/passwd')", "not allowed"),
    ("eval('1')", "not allowed"),
    ("[x for x in age]", "not allowed"),
    ("I(age ** 10 ** 10)", "powers"),
    ("I('a' * 100)", "text"),
    ("agee", "did you mean 'age'"),
    ("y ~ age", "left-hand side"),
])
def test_sandbox_refuses(table, formula, message):
    with pytest.raises(RunnerError, match=message):
        evaluate_formula(formula, table)


def test_refusal_happens_before_any_evaluation(table, tmp_path):
    marker = tmp_path / "touched"
    with pytest.raises(RunnerError):
        evaluate_formula(f"I(open('{marker}', 'w'))", table)
    assert not marker.exists()
