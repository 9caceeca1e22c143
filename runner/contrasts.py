"""Contrasts: names and expressions over design column names -> contrast vectors (t) or matrices (F)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import patsy

from runner.errors import RunnerError, did_you_mean

MAX_EXPRESSION_CHARS = 2000  # patsy's constraint parser recurses per term
MAX_ROWS = 1000


@dataclass(frozen=True)
class Contrast:
    """A named contrast: ``matrix`` is (1, p) for a t contrast and (q, p) for an F contrast."""

    name: str
    matrix: np.ndarray
    stat_type: str  # "t" | "F"
    expression: Any = None

    @property
    def vector(self) -> np.ndarray:
        return self.matrix[0]


def build_contrast(name: str, expression: Any, columns: Sequence[str], stat_type: str | None = None) -> Contrast:
    """Turn one contrast specification into weights over the design columns.

    ``expression`` is a linear-constraint string over column names (``'age'``, ``'C(sex)[T.M] - age'``,
    ``'C(condition)[T.b] - C(condition)[T.a]'``), a numeric vector, or a list of either (rows of an F contrast).
    A list of several rows makes an F contrast; ``stat_type='F'`` forces F even for one row.
    """
    columns = [str(c) for c in columns]
    if stat_type not in (None, "t", "F"):
        raise RunnerError(f"contrast {name!r}: type must be 't' or 'F', got {stat_type!r}")
    rows = _rows(name, expression, columns)
    if len(rows) > MAX_ROWS:
        raise RunnerError(f"contrast {name!r} has {len(rows)} rows; at most {MAX_ROWS} are allowed")
    matrix = np.vstack(rows)
    if stat_type is None:
        stat_type = "F" if matrix.shape[0] > 1 else "t"
    if stat_type == "t" and matrix.shape[0] > 1:
        raise RunnerError(f"contrast {name!r} has {matrix.shape[0]} rows; a t contrast has one (use type: F)")
    if not np.any(matrix):
        raise RunnerError(f"contrast {name!r} has all weights zero")
    return Contrast(name=str(name), matrix=matrix, stat_type=stat_type, expression=expression)


def _rows(name: str, expression: Any, columns: list[str]) -> list[np.ndarray]:
    if isinstance(expression, str):
        return [_parse_expression(name, expression, columns)]
    if isinstance(expression, (int, float)) and not isinstance(expression, bool):
        return [_numeric_row(name, [expression], columns)]
    if isinstance(expression, (list, tuple)) and expression:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in expression):
            return [_numeric_row(name, expression, columns)]
        rows: list[np.ndarray] = []
        for item in expression:
            rows.extend(_rows(name, item, columns))
        return rows
    raise RunnerError(f"contrast {name!r}: expr must be an expression over the design columns, a numeric vector "
                      f"or a list of them, got {expression!r}")


def _numeric_row(name: str, values: Sequence[float], columns: list[str]) -> np.ndarray:
    row = np.asarray(values, dtype=float)
    if row.size != len(columns):
        raise RunnerError(f"contrast {name!r} has {row.size} weight(s) but the design has {len(columns)} "
                          f"column(s): {', '.join(columns)}")
    if not np.all(np.isfinite(row)):
        raise RunnerError(f"contrast {name!r} has non-finite weights")
    return row


def _parse_expression(name: str, expression: str, columns: list[str]) -> np.ndarray:
    if "=" in expression:
        raise RunnerError(f"contrast {name!r}: write the expression without '=' (it is tested against zero)")
    if not expression.strip():
        raise RunnerError(f"contrast {name!r} has an empty expression")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise RunnerError(f"contrast {name!r}: the expression is {len(expression)} characters long; at most "
                          f"{MAX_EXPRESSION_CHARS} are allowed (give a vector of weights instead)")
    try:
        with np.errstate(all="ignore"):  # '1/0' must give one error line, not numpy warnings
            constraint = patsy.DesignInfo(columns).linear_constraint(expression)
    except RecursionError:
        raise RunnerError(f"contrast {name!r}: the expression is nested too deeply to be parsed") from None
    except patsy.PatsyError:
        unknown = _unknown_token(expression, columns)
        if unknown:
            raise RunnerError(f"contrast {name!r} names {unknown!r}, which is not a design column; "
                              f"{did_you_mean(unknown, columns)}") from None
        raise RunnerError(f"contrast {name!r}: cannot parse {expression!r} as a linear combination of "
                          f"design columns ({', '.join(columns)})") from None
    if constraint.coefs.shape[0] != 1:
        raise RunnerError(f"contrast {name!r}: {expression!r} must be one linear combination")
    if not np.all(np.isfinite(constraint.coefs)):
        raise RunnerError(f"contrast {name!r}: {expression!r} gives non-finite weights (a division by zero?)")
    return constraint.coefs[0].astype(float)


def _unknown_token(expression: str, columns: list[str]) -> str:
    """The first term of the expression that is neither a number nor a design column."""
    terms, depth, current = [], 0, ""
    for char in expression:
        depth += char in "(["
        depth -= char in ")]"
        if depth == 0 and char in "+-*/":
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    for term in (t.strip() for t in terms):
        if not term or term in columns or re.fullmatch(r"\d+(\.\d*)?([eE][-+]?\d+)?|\.\d+", term):
            continue
        return term
    return ""
