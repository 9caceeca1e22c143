"""Where the input maps come from: a table of paths, a glob joined to a participants table, or one 4D NIfTI."""

from __future__ import annotations

import ast
import glob as globbing
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from runner.data.patterns import MATCH_SECONDS, check_pattern, time_limit
from runner.errors import RunnerError, did_you_mean

log = logging.getLogger(__name__)

SUBJECT_PATTERN = r"sub-([A-Za-z0-9]+)"


@dataclass(frozen=True)
class ImageRef:
    """One input map: a file, and the volume index when the file is 4D."""

    path: Path
    volume: int | None = None

    def __str__(self) -> str:
        return f"{self.path}[{self.volume}]" if self.volume is not None else str(self.path)


@dataclass(frozen=True)
class InputSet:
    """The input table (one row per map, covariates as columns) and the image of each row."""

    table: pd.DataFrame
    images: tuple[ImageRef, ...]
    notes: tuple[str, ...] = field(default=())

    def select(self, keep: pd.Series) -> "InputSet":
        """Rows where ``keep`` is true, re-indexed."""
        rows = [i for i, k in enumerate(keep.to_numpy()) if k]
        return InputSet(self.table.iloc[rows].reset_index(drop=True), tuple(self.images[i] for i in rows),
                        self.notes)


def read_table(path: Path, key: str = "data.table") -> pd.DataFrame:
    """Read a TSV (or CSV by extension) with text kept as text; BIDS ``n/a`` means missing.

    Refuses (naming ``key`` and the file) a missing, unreadable, empty or blank file, and a header that names a
    column twice (pandas would silently rename the second one ``age.1``).
    """
    path = Path(path)
    if path.is_dir():
        raise RunnerError(f"{key} {path} is a folder; give the table file inside it")
    if not path.is_file():
        if path.exists():
            raise RunnerError(f"{key} {path} is not a regular file; give the table file itself")
        raise RunnerError(f"{key} file {path} does not exist")
    kind = "CSV" if path.suffix.lower() == ".csv" else "TSV"
    separator = "," if kind == "CSV" else "\t"
    try:
        frame = pd.read_csv(path, sep=separator, na_values=["n/a", "N/A", "NA", ""], keep_default_na=False)
        header = header_names(path, separator)
    except pd.errors.EmptyDataError:
        raise RunnerError(f"{key} {path} is empty (no header line); write one row of column names, then one row "
                          "per map") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise RunnerError(f"{key} {path} cannot be read as {kind}: {str(error).splitlines()[0]}") from None
    except PermissionError:
        raise RunnerError(f"{key} {path} cannot be read (permission denied); fix the file's permissions") from None
    except OSError as error:
        raise RunnerError(f"{key} {path} cannot be read ({error.strerror or error})") from None
    names = [name.strip() for name in header]
    repeated = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if repeated is not None:
        raise RunnerError(f"{key} {path} has two columns named {repeated!r}; rename or remove one")
    if frame.empty:
        raise RunnerError(f"{key} {path} has no rows")
    frame.columns = names
    return frame


def header_names(path: Path, separator: str) -> list[str]:
    """The column names of the header line as written (pandas renames repeated names, so read them ourselves)."""
    import csv

    with open(path, newline="", encoding="utf-8-sig") as handle:
        for row in csv.reader(handle, delimiter=separator):
            if any(cell.strip() for cell in row):
                return row
    return []


def from_table(table_path: Path, path_column: str = "path") -> InputSet:
    """One row per map; ``path_column`` names the image, relative paths resolve against the table's folder."""
    table_path = Path(table_path)
    frame = read_table(table_path)
    if path_column not in frame.columns:
        raise RunnerError(f"data.table {table_path} has no column {path_column!r} naming the images; "
                          f"{did_you_mean(path_column, frame.columns)} (or set data.path_column)")
    images = []
    for row, value in enumerate(frame[path_column]):
        if pd.isna(value) or not str(value).strip():
            raise RunnerError(f"data.table {table_path} row {row + 1} has an empty {path_column!r}")
        path = Path(str(value).strip()).expanduser()
        if not path.is_absolute():
            path = table_path.parent / path
        images.append(ImageRef(path))
    return InputSet(frame, tuple(images))


def from_glob(pattern: str, participants_path: Path | None = None, subject_pattern: str = SUBJECT_PATTERN,
              subject_column: str | None = None) -> InputSet:
    """Files matching ``pattern``, joined on the BIDS subject label to a participants table."""
    paths = sorted(Path(p) for p in globbing.glob(str(Path(pattern).expanduser()), recursive=True))
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise RunnerError(f"data.glob {pattern!r} matches no files")
    regex = check_pattern(subject_pattern)
    labels = []
    with time_limit(MATCH_SECONDS, f"data.subject_pattern {subject_pattern!r}"):
        matches = [regex.search(path.name) or regex.search(str(path)) for path in paths]
    for path, match in zip(paths, matches):
        if not match:
            raise RunnerError(f"cannot find a subject label ({subject_pattern}) in file name {path}")
        labels.append(match.group(1) if match.groups() else match.group(0))
    frame = pd.DataFrame({"participant_id": [f"sub-{label}" for label in labels],
                          "path": [str(p) for p in paths]})
    if participants_path is not None:
        participants = read_table(Path(participants_path), key="data.participants")
        column = subject_column or next((c for c in ("participant_id", "subject", "subject_id")
                                         if c in participants.columns), None)
        if column is None or column not in participants.columns:
            raise RunnerError(f"data.participants {participants_path} has no participant_id column; "
                              "set data.subject_column")
        key = participants[column].astype(str).str.replace(r"^sub-", "", regex=True)
        if key.duplicated().any():
            raise RunnerError(f"data.participants {participants_path}: participant "
                              f"{participants[column][key.duplicated()].iloc[0]!r} appears twice")
        missing = sorted(set(labels) - set(key))
        if missing:
            raise RunnerError(f"{len(missing)} file(s) have no row in {participants_path}: "
                              + ", ".join(f"sub-{m}" for m in missing[:10]))
        covariates = participants.drop(columns=[c for c in (column, "path") if c in participants.columns])
        frame = (frame.assign(_label=labels)
                 .merge(covariates.assign(_label=key.to_numpy()), on="_label", how="left", validate="many_to_one")
                 .drop(columns="_label"))
    return InputSet(frame, tuple(ImageRef(p) for p in paths))


def from_4d(image_path: Path, table_path: Path | None, n_volumes: int) -> InputSet:
    """One row per volume of a 4D NIfTI; the table (if any) has one row per volume, in order."""
    image_path = Path(image_path)
    if table_path is not None:
        frame = read_table(Path(table_path))
        if len(frame) != n_volumes:
            raise RunnerError(f"data.image_4d {image_path} has {n_volumes} volumes but data.table "
                              f"{table_path} has {len(frame)} rows; they must match one to one")
    else:
        frame = pd.DataFrame({"volume": range(n_volumes)})
    return InputSet(frame.reset_index(drop=True), tuple(ImageRef(image_path, v) for v in range(n_volumes)))


# -- row selection -----------------------------------------------------------------------------------------------
_QUERY_NODES = (ast.Expression, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.Name, ast.Load, ast.Constant,
                ast.And, ast.Or, ast.Not, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
                ast.List, ast.Tuple, ast.USub, ast.UAdd, ast.BinOp, ast.BitAnd, ast.BitOr, ast.Invert,
                ast.Add, ast.Sub, ast.Mult, ast.Div)


def apply_query(inputs: InputSet, query: str) -> InputSet:
    """Keep the rows matching a pandas query, after checking it only compares columns with constants."""
    columns = list(inputs.table.columns)
    placeholders = {f"__col{i}": name for i, name in enumerate(columns)}
    text = query
    for token, name in placeholders.items():
        text = text.replace(f"`{name}`", token)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise RunnerError(f"data.query {query!r} is not a valid selection (e.g. \"group == 'patient' and "
                          "age > 30\")") from None
    for node in ast.walk(tree):
        if not isinstance(node, _QUERY_NODES):
            raise RunnerError(f"data.query {query!r} is not allowed: only comparisons of columns with constants, "
                              "and/or/not, and 'in' lists")
        if isinstance(node, ast.Name) and node.id not in columns and node.id not in placeholders:
            raise RunnerError(f"data.query names {node.id!r}, which is not a column; "
                              f"{did_you_mean(node.id, columns)}")
    try:
        keep = inputs.table.eval(query, engine="python")
    except Exception as error:  # pandas raises many types for bad comparisons
        raise RunnerError(f"data.query {query!r} failed: {str(error).splitlines()[0]}") from None
    if not isinstance(keep, pd.Series) or keep.dtype != bool:
        raise RunnerError(f"data.query {query!r} must give true/false per row")
    if not keep.any():
        raise RunnerError(f"data.query {query!r} selects no rows")
    log.info("data.query %r keeps %d of %d rows", query, int(keep.sum()), len(keep))
    return inputs.select(keep)
