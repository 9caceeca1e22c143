"""Design matrix from a formula over the input table (or a ready TSV): missing values and rank are checked here."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from runner.errors import RunnerError
from runner.formula import evaluate_formula, formula_columns
from runner.glm import RANK_TOLERANCE, design_rank

log = logging.getLogger(__name__)

MAX_ABS_DESIGN_VALUE = 1e100  # X'X and the fitted values must stay far from float64 overflow (1.8e308)


@dataclass(frozen=True)
class Design:
    """The design matrix and the table rows it was built from (rows dropped for missing values are gone)."""

    matrix: pd.DataFrame  # (n_maps, p), patsy column names
    table: pd.DataFrame  # the input table restricted to the rows kept, re-indexed 0..n-1
    dropped: pd.DataFrame = field(default_factory=pd.DataFrame)  # rows removed for missing values
    notes: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.matrix.columns]


def build_design(table: pd.DataFrame, formula: str | None = None, matrix_path: Path | None = None,
                 drop_missing: bool = False, id_column: str | None = None) -> Design:
    """Build and check the design matrix.

    Parameters
    ----------
    table : one row per input map with its covariates.
    formula : patsy right-hand-side formula over the table's columns (``'1'``, ``'age + C(sex)'``).
    matrix_path : a ready design-matrix TSV (one row per map, numeric columns) instead of a formula.
    drop_missing : drop rows with missing values in the columns the formula uses (else refuse them).
    id_column : column naming rows in messages (e.g. ``subject``); row numbers otherwise.
    """
    notes: list[str] = []
    dropped = table.iloc[0:0]
    if matrix_path is not None:
        matrix = read_design_matrix(Path(matrix_path), len(table))
    else:
        used = formula_columns(formula if formula is not None else "1", table.columns)
        missing = table[used].isna().any(axis=1) if used else pd.Series(False, index=table.index)
        if missing.any():
            where = _describe_rows(table[missing], used, id_column)
            if not drop_missing:
                raise RunnerError(f"{int(missing.sum())} row(s) have missing values in columns used by the "
                                  f"formula: {where}; fill them or set design.drop_missing=true")
            dropped = table[missing]
            message = f"dropped {int(missing.sum())} row(s) with missing values: {where}"
            log.warning(message)
            notes.append(message)
            table = table[~missing]
        table = table.reset_index(drop=True)
        matrix = evaluate_formula(formula if formula is not None else "1", table)
        for message in single_level_factors(formula if formula is not None else "1", table):
            log.warning(message)
            notes.append(message)
    matrix = matrix.reset_index(drop=True).astype(float)
    check_design(matrix)
    return Design(matrix=matrix, table=table.reset_index(drop=True), dropped=dropped, notes=tuple(notes))


def read_design_matrix(path: Path, n_rows: int) -> pd.DataFrame:
    """Read a ready design matrix (TSV with a header of column names, one row per map)."""
    from runner.data.sources import header_names

    if path.is_dir():
        raise RunnerError(f"design.matrix {path} is a folder; give the TSV file inside it")
    if not path.is_file():
        raise RunnerError(f"design.matrix file {path} does not exist")
    separator = "\t" if path.suffix != ".csv" else ","
    try:
        frame = pd.read_csv(path, sep=separator)
        header = [name.strip() for name in header_names(path, separator)]
    except pd.errors.EmptyDataError:
        raise RunnerError(f"design.matrix {path} is empty; write a header of column names and one row per "
                          "map") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as error:
        raise RunnerError(f"design.matrix {path} cannot be read: {str(error).splitlines()[0]}") from None
    repeated = next((name for i, name in enumerate(header) if name in header[:i]), None)
    if repeated is not None:
        raise RunnerError(f"design.matrix {path} has two columns named {repeated!r}; rename or remove one")
    if len(frame) != n_rows:
        raise RunnerError(f"design.matrix {path} has {len(frame)} rows but there are {n_rows} input maps")
    bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise RunnerError(f"design.matrix {path}: column {bad[0]!r} is not numeric")
    if frame.isna().any().any():
        raise RunnerError(f"design.matrix {path} has missing values")
    return frame


def single_level_factors(formula: str, table: pd.DataFrame) -> list[str]:
    """Notes for categorical columns of the formula that hold one level only in the rows analysed.

    patsy codes such a factor with no column next to an intercept, so it silently leaves the design; after a
    ``data.query`` or dropped rows this is easy to miss.
    """
    from runner.data.checks import column_roles

    used, categorical = column_roles(formula, list(table.columns))
    notes = []
    for column in used:
        series = table[column]
        is_factor = (column in categorical or pd.api.types.is_bool_dtype(series)
                     or not pd.api.types.is_numeric_dtype(series))
        levels = series.dropna().unique()
        if is_factor and len(levels) == 1:
            notes.append(f"factor {column!r} has a single level ({levels[0]!r}) in the {len(table)} map(s) "
                         "analysed: it cannot explain any difference between them and adds no effect to the "
                         "design; remove it from design.formula or check data.query")
    return notes


def check_design(matrix: pd.DataFrame) -> None:
    """Refuse empty, non-finite, rank-deficient designs and designs leaving no degrees of freedom."""
    n, p = matrix.shape
    if p == 0:
        raise RunnerError("the design matrix has no columns; use design.formula='1' for a one-sample test")
    values = matrix.to_numpy(dtype=float)
    if not np.all(np.isfinite(values)):
        column = matrix.columns[np.flatnonzero(~np.isfinite(values).all(axis=0))[0]]
        raise RunnerError(f"design column {column!r} has non-finite values (log of zero or a negative number?)")
    if np.max(np.abs(values)) > MAX_ABS_DESIGN_VALUE:
        column = matrix.columns[int(np.argmax(np.max(np.abs(values), axis=0)))]
        raise RunnerError(f"design column {column!r} holds values beyond +-{MAX_ABS_DESIGN_VALUE:g}; products of "
                          "such values overflow: rescale the column (e.g. center() or standardize())")
    if n <= p:  # before the rank: with fewer maps than columns the design is rank deficient too, for this reason
        raise RunnerError(f"{n} input maps are too few for a design with {p} column(s): at least {p + 1} are "
                          "needed to estimate the residual variance")
    rank = design_rank(values)
    if rank < p:
        raise RunnerError("the design matrix is rank deficient: " + describe_collinearity(matrix))


def describe_collinearity(matrix: pd.DataFrame) -> str:
    """Name the first column that is a linear combination of earlier ones, and which ones."""
    values = matrix.to_numpy(dtype=float)
    kept: list[int] = []
    for j in range(values.shape[1]):
        candidate = kept + [j]
        if design_rank(values[:, candidate]) < len(candidate):
            name = str(matrix.columns[j])
            if not kept or not np.any(values[:, j]):
                return f"column {name!r} is constant zero" if not np.any(values[:, j]) else \
                    f"column {name!r} is degenerate"
            coefficients, *_ = np.linalg.lstsq(values[:, kept], values[:, j], rcond=None)
            scale = max(np.max(np.abs(coefficients)), 1e-300)
            partners = [str(matrix.columns[k]) for k, c in zip(kept, coefficients)
                        if abs(c) > np.sqrt(RANK_TOLERANCE) * scale]
            return (f"column {name!r} is a linear combination of " + ", ".join(repr(p) for p in partners)
                    + " (collinear columns; remove one or recode the factor)")
        kept.append(j)
    return "columns are collinear"


def _describe_rows(rows: pd.DataFrame, used: list[str], id_column: str | None) -> str:
    labels = []
    for index, row in rows.head(10).iterrows():
        name = str(row[id_column]) if id_column and id_column in rows.columns else f"row {index + 1}"
        empty = [c for c in used if pd.isna(row[c])]
        labels.append(f"{name} ({', '.join(empty)})")
    more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
    return "; ".join(labels) + more
