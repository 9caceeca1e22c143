"""Sandboxed evaluation of design formulas: a formula may name table columns and a short list of functions, nothing else.

patsy evaluates each term of a formula as Python code. Before any evaluation every term is parsed with ``ast`` and
checked against a whitelist: names must be table columns or allowed functions, calls must be to allowed functions by
bare name, and there is no attribute access, subscripting, lambda, comprehension or dunder name. Only then is the
formula handed to patsy, with a namespace that holds the allowed functions alone.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

import numpy as np
import pandas as pd
import patsy
from patsy import builtins as patsy_builtins

from runner.errors import RunnerError, did_you_mean

ALLOWED_FUNCTIONS = {
    "C": patsy_builtins.C,
    "Treatment": patsy_builtins.Treatment,
    "Sum": patsy_builtins.Sum,
    "center": patsy_builtins.center,
    "standardize": patsy_builtins.standardize,
    "scale": patsy_builtins.scale,
    "I": patsy_builtins.I,
    "Q": None,  # patsy's own quoting helper for column names that are not identifiers (bound by patsy)
    "log": np.log,
    "exp": np.exp,
    "sqrt": np.sqrt,
}

MAX_EXPONENT = 10
MAX_FORMULA_CHARS = 2000  # far beyond any design a group study can estimate; patsy's parser recurses per term
MAX_TERMS = 200

_ALLOWED_NODES = (
    ast.Expression, ast.Name, ast.Load, ast.Call, ast.keyword, ast.Constant, ast.BinOp, ast.UnaryOp,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd, ast.Mod, ast.FloorDiv,
    ast.Compare, ast.Gt, ast.GtE, ast.Lt, ast.LtE, ast.Eq, ast.NotEq, ast.List, ast.Tuple,
)


def parse_terms(formula: str) -> patsy.ModelDesc:
    """Parse a right-hand-side formula into patsy terms without evaluating anything."""
    if not isinstance(formula, str) or not formula.strip():
        raise RunnerError("design.formula is empty; write e.g. design.formula='1' for a one-sample test")
    if len(formula) > MAX_FORMULA_CHARS:
        raise RunnerError(f"design.formula is {len(formula)} characters long; at most {MAX_FORMULA_CHARS} are "
                          "allowed (use design.matrix for a ready design matrix)")
    try:
        description = patsy.ModelDesc.from_formula(formula)
    except patsy.PatsyError as error:
        raise RunnerError(f"design.formula {formula!r} cannot be parsed: {_first_line(error)}") from None
    except RecursionError:
        raise RunnerError("design.formula is nested too deeply to be parsed; simplify it") from None
    if len(description.rhs_termlist) > MAX_TERMS:
        raise RunnerError(f"design.formula has {len(description.rhs_termlist)} terms; at most {MAX_TERMS} are "
                          "allowed (use design.matrix for a ready design matrix)")
    if description.lhs_termlist:
        raise RunnerError(f"design.formula {formula!r} must have no left-hand side (drop the part before '~')")
    return description


def factor_codes(description: patsy.ModelDesc) -> list[str]:
    """The Python code of every factor in the formula, in order, without repeats."""
    codes: list[str] = []
    for term in description.rhs_termlist:
        for factor in term.factors:
            code = getattr(factor, "code", None)
            if code is None:
                raise RunnerError(f"design.formula uses an unsupported factor {factor!r}")
            if code not in codes:
                codes.append(code)
    return codes


def check_factor(code: str, columns: Iterable[str]) -> set[str]:
    """Refuse anything but columns, constants and allowed calls in one factor; return the columns it uses."""
    columns = set(columns)
    try:
        tree = ast.parse(code.strip(), mode="eval")
    except SyntaxError:
        raise RunnerError(f"design.formula term {code!r} is not a valid expression") from None
    used: set[str] = set()
    _refuse_sequence_arithmetic(tree, code)
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            what = type(node).__name__
            if isinstance(node, ast.Attribute):
                what = f"attribute access '.{node.attr}'"
            raise RunnerError(
                f"design.formula term {code!r} is not allowed: {what} (formulas may use table columns and "
                f"{', '.join(sorted(ALLOWED_FUNCTIONS))} only)")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in ALLOWED_FUNCTIONS:
                name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                raise RunnerError(
                    f"design.formula calls {name!r}, which is not allowed; allowed functions: "
                    f"{', '.join(sorted(ALLOWED_FUNCTIONS))}")
            if node.func.id == "Q":
                if len(node.args) != 1 or not isinstance(node.args[0], ast.Constant):
                    raise RunnerError(f"design.formula term {code!r}: Q() takes one quoted column name")
                quoted = str(node.args[0].value)
                if quoted not in columns:
                    raise RunnerError(f"design.formula names column {quoted!r}, which is not in the table; "
                                      f"{did_you_mean(quoted, columns)}")
                used.add(quoted)
        elif isinstance(node, ast.Name):
            if node.id.startswith("__"):
                raise RunnerError(f"design.formula term {code!r} is not allowed: name {node.id!r}")
            if node.id in ALLOWED_FUNCTIONS:
                continue
            if node.id not in columns:
                raise RunnerError(f"design.formula names column {node.id!r}, which is not in the table; "
                                  f"{did_you_mean(node.id, columns)}")
            used.add(node.id)
        elif isinstance(node, ast.BinOp):
            _check_arithmetic(node, code)
        elif isinstance(node, ast.Constant) and not isinstance(node.value, (str, int, float, bool)):
            raise RunnerError(f"design.formula term {code!r} holds an unsupported constant")
    return used


def _refuse_sequence_arithmetic(tree: ast.AST, code: str) -> None:
    """Lists and tuples may only be arguments of a call (``C(g, levels=['a', 'b'])``): ``[0] * 10**10`` would
    allocate before anything could stop it."""
    for parent in ast.walk(tree):
        if isinstance(parent, (ast.Call, ast.keyword)):
            continue
        for child in ast.iter_child_nodes(parent):
            if isinstance(child, (ast.List, ast.Tuple)):
                raise RunnerError(f"design.formula term {code!r} is not allowed: a list or tuple in an "
                                  "expression (lists may only be a function's argument, e.g. levels=[...])")
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            for element in node.elts:
                if not isinstance(element, (ast.Constant, ast.UnaryOp)):
                    raise RunnerError(f"design.formula term {code!r}: lists may hold constants only")


def _check_arithmetic(node: ast.BinOp, code: str) -> None:
    """Arithmetic on constants must stay small: no string repetition, no huge powers (they could hang a run)."""
    for side in (node.left, node.right):
        if isinstance(side, ast.Constant) and isinstance(side.value, str):
            raise RunnerError(f"design.formula term {code!r} does arithmetic on text")
    if isinstance(node.op, ast.Pow):
        exponent = node.right
        if not (isinstance(exponent, ast.Constant) and isinstance(exponent.value, (int, float))
                and abs(exponent.value) <= MAX_EXPONENT):
            raise RunnerError(f"design.formula term {code!r}: powers need a constant exponent of at most "
                              f"{MAX_EXPONENT}")


def formula_columns(formula: str, columns: Iterable[str]) -> list[str]:
    """Validate a formula against the table's columns and return the columns it uses (in table order)."""
    columns = list(columns)
    used: set[str] = set()
    for code in factor_codes(parse_terms(formula)):
        used |= check_factor(code, columns)
    return [c for c in columns if c in used]


def evaluate_formula(formula: str, table: pd.DataFrame) -> pd.DataFrame:
    """Build the design matrix of a validated formula with patsy, in the restricted namespace.

    Column names are patsy's (``Intercept``, ``C(sex)[T.M]``, ``age:C(sex)[T.M]``).
    """
    formula_columns(formula, table.columns)
    namespace = {k: v for k, v in ALLOWED_FUNCTIONS.items() if v is not None}
    environment = patsy.EvalEnvironment([namespace])
    data = pd.DataFrame({c: _patsy_ready(table[c]) for c in table.columns}, index=table.index)
    try:
        with np.errstate(all="ignore"):  # log(0) and friends: design.check_design names the non-finite column
            matrix = patsy.dmatrix(formula, data, eval_env=environment, return_type="dataframe", NA_action="raise")
    except patsy.PatsyError as error:
        raise RunnerError(f"design.formula {formula!r} cannot be evaluated: {_first_line(error)}") from None
    except (ValueError, TypeError, KeyError, ArithmeticError, MemoryError, RecursionError) as error:
        raise RunnerError(f"design.formula {formula!r} cannot be evaluated: {_first_line(error)}") from None
    matrix.index = table.index
    return matrix


def _patsy_ready(column: pd.Series) -> pd.Series:
    """Hand patsy plain object columns for text (patsy predates pandas' string dtype)."""
    if pd.api.types.is_string_dtype(column) and not isinstance(column.dtype, pd.CategoricalDtype):
        return column.astype(object)
    return column


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
