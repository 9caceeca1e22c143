"""Up-front checks of the input table, before any design is built or voxel read.

Ids must be unique (or the rows sharing one must differ in a column the design uses, e.g. a condition), no image may
be listed twice, columns used as numbers must hold numbers (a "12,5" decimal comma is named), and categorical levels
held by a single map are warned about.
"""

from __future__ import annotations

import ast
import logging
import os
import re

import numpy as np
import pandas as pd

from runner.data.sources import InputSet
from runner.errors import RunnerError, did_you_mean
from runner.formula import factor_codes, formula_columns, parse_terms

log = logging.getLogger(__name__)

DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+")
NUMERIC_MAJORITY = 0.5  # a text column counts as "meant to be numbers" when at least this share parses as numbers


def validate_table(inputs: InputSet, formula: str | None, id_column: str | None) -> InputSet:
    """Check the table against the formula; return the inputs with warnings added to their notes."""
    table = inputs.table
    if id_column is not None and id_column not in table.columns:
        raise RunnerError(f"data.id_column {id_column!r} is not a column of the table; "
                          f"{did_you_mean(id_column, table.columns)}")
    _refuse_duplicate_images(inputs)
    used, categorical = ([], []) if formula is None else column_roles(formula, list(table.columns))
    if formula is not None and id_column is not None:
        _refuse_duplicate_ids(table, id_column, used)
    for column in used:
        if column not in categorical:
            _refuse_text_in_numbers(table, column)
    notes = [note for column in used if _is_categorical(table[column], column in categorical)
             for note in _single_member_levels(table, column, used, id_column)]
    for note in notes:
        log.warning(note)
    return InputSet(table, inputs.images, tuple(inputs.notes) + tuple(notes))


def column_roles(formula: str, columns: list[str]) -> tuple[list[str], list[str]]:
    """Columns the formula uses (table order), and those it uses as categories (inside ``C(...)``)."""
    used = formula_columns(formula, columns)
    categorical: set[str] = set()
    for code in factor_codes(parse_terms(formula)):
        for node in ast.walk(ast.parse(code.strip(), mode="eval")):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "C" and node.args:
                categorical |= {n.id for n in ast.walk(node.args[0]) if isinstance(n, ast.Name)}
                categorical |= {str(n.value) for n in ast.walk(node.args[0]) if isinstance(n, ast.Constant)}
    return used, [c for c in used if c in categorical]


def _refuse_duplicate_images(inputs: InputSet) -> None:
    """No file may be listed twice, however its path is spelled (``a/../x.nii.gz``, a symlink, a hard link)."""
    seen: dict[tuple, int] = {}
    for row, ref in enumerate(inputs.images):
        key = (_file_identity(ref.path), ref.volume)
        if key in seen:
            first = inputs.images[seen[key]]
            spelled = "" if str(first) == str(ref) else f" (also written {first})"
            raise RunnerError(f"rows {seen[key] + 1} and {row + 1} of the input table name the same image "
                              f"{ref}{spelled}; remove the duplicate row")
        seen[key] = row


def _file_identity(path) -> tuple:
    """(device, inode) of an existing file, else its absolute path with '..' and symlinks resolved."""
    try:
        status = os.stat(path)
        return ("inode", status.st_dev, status.st_ino)
    except OSError:  # a missing file is reported by the header checks, with its own message
        return ("path", os.path.realpath(path))


def _refuse_duplicate_ids(table: pd.DataFrame, id_column: str, used: list[str]) -> None:
    """Rows sharing an id are repeated measures only if a column of the design tells them apart."""
    key = table[[id_column] + [c for c in used if c != id_column]].astype(str)
    repeated = key.duplicated(keep=False)
    if not repeated.any():
        return
    rows = [i for i in range(len(table)) if repeated.iloc[i]]
    first = key.iloc[rows[0]]
    twins = [i + 1 for i in rows if key.iloc[i].equals(first)]
    label = table[id_column].iloc[rows[0]]
    hint = (" and the same values of " + ", ".join(repr(c) for c in used if c != id_column)) if len(used) > 0 else ""
    raise RunnerError(f"{id_column} {label!r} appears in rows {' and '.join(map(str, twins[:2]))}{hint}: each map "
                      "needs its own id, or a column of the formula (e.g. a condition) that tells repeated maps apart")


def _refuse_text_in_numbers(table: pd.DataFrame, column: str) -> None:
    """A column the formula uses as a number must hold numbers only (patsy would silently make it categorical)."""
    series = table[column]
    if pd.api.types.is_bool_dtype(series):
        return
    if pd.api.types.is_numeric_dtype(series):
        infinite = np.isinf(series.to_numpy(dtype=float))
        if infinite.any():
            raise RunnerError(f"column {column!r} holds {series.iloc[int(np.argmax(infinite))]} (row "
                              f"{int(np.argmax(infinite)) + 1}), not a finite number")
        return
    text = series.dropna().astype(str).str.strip()
    if text.empty:
        return
    numbers = pd.to_numeric(text, errors="coerce")
    with_commas = pd.to_numeric(text.str.replace(",", ".", regex=False), errors="coerce")
    if with_commas.notna().mean() < NUMERIC_MAJORITY:
        return  # text meant as categories
    bad = text.index[numbers.isna()][0]
    value = text.loc[bad]
    row = table.index.get_loc(bad) + 1
    if DECIMAL_COMMA.fullmatch(value):
        raise RunnerError(f"column {column!r} holds {value!r} (row {row}), not a number: a decimal comma? write "
                          f"{value.replace(',', '.')}")
    raise RunnerError(f"column {column!r} holds {value!r} (row {row}), not a number; fix it, leave it empty (n/a) "
                      f"for a missing value, or write C({column}) in the formula if it names categories")


def _is_categorical(series: pd.Series, inside_c: bool) -> bool:
    return inside_c or not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def _single_member_levels(table: pd.DataFrame, column: str, used: list[str], id_column: str | None) -> list[str]:
    complete = table[used].notna().all(axis=1)
    values = table.loc[complete, column]
    counts = values.value_counts()
    singles = [level for level, count in counts.items() if count == 1]
    if not singles or len(counts) < 2:
        return []
    notes = []
    for level in singles[:5]:
        row = values.index[values == level][0]
        who = str(table.loc[row, id_column]) if id_column else f"row {table.index.get_loc(row) + 1}"
        notes.append(f"level {level!r} of {column!r} has a single map ({who}); its effect rests on that one map")
    if len(singles) > 5:
        notes.append(f"{len(singles) - 5} more level(s) of {column!r} have a single map")
    return notes
