"""Checks of the analysis against the study, once the design and the headers are known and before any voxel is read.

Each refuses, with one line, a request that would otherwise fail (or mislead) late in the run: an exchangeability
block column that is missing or has empty cells, a number of permutations whose permutation set and null
distributions cannot fit in the memory budget, and brain figures of a grid too thin to draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from runner.chunks import memory_budget_bytes
from runner.config import RunSettings
from runner.design import Design
from runner.errors import RunnerError, did_you_mean

# Permutation inference keeps every element of the permutation set in memory while it is drawn (row orders as
# int64 then int32, or sign bits as int64 then int8: at most 24 bytes per row) and, per method, a null distribution
# of one float64 per element with its copies (32 bytes).
SET_BYTES_PER_ROW = 24
NULL_BYTES_PER_METHOD = 32
PERMUTATION_SHARE = 0.5  # of the memory budget; the rest is for the data and the model
MIN_FIGURE_VOXELS = 2  # slices and projections need at least two voxels along every axis


def check_analysis(settings: RunSettings, design: Design, grid_shape: Sequence[int]) -> None:
    """Refuse what cannot run before the maps are loaded (see the module docstring)."""
    from runner.inference import registry

    methods = {m: p for m, p in settings.correction.items() if registry.get(m).family == "permutation"}
    for method, params in methods.items():
        check_block_column(design.table, params.exchangeability_blocks, f"correction.{method}.exchangeability_blocks")
    if methods:
        budget = memory_budget_bytes(settings.memory_budget_gb)
        for method, params in methods.items():
            check_permutation_memory(params.n_permutations, n_distinct_upper_bound(design, params),
                                     design.matrix.shape[0], len(methods), budget, f"correction.{method}")
    if settings.report:
        check_figure_grid(grid_shape)


def check_block_column(table: pd.DataFrame, column: str | None, key: str) -> None:
    """The exchangeability-block column must exist and name a block for every map analysed."""
    if not column:
        return
    if column not in table.columns:
        raise RunnerError(f"{key} names column {column!r}, which is not in the table; "
                          f"{did_you_mean(column, table.columns)}")
    empty = table[column].isna() | (table[column].astype(str).str.strip() == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise RunnerError(f"{key}: column {column!r} is empty (n/a) in {int(empty.sum())} row(s), first row "
                          f"{row + 1}; every map needs a block: fill it, or drop those rows (data.query)")


def n_distinct_upper_bound(design: Design, params) -> int:
    """Most elements a permutation test of this design can have: the larger of its sign-flips and permutations."""
    from runner.inference.permutation_sets import check_blocks, count_distinct

    X = design.matrix.to_numpy(dtype=float)
    blocks = None
    if params.exchangeability_blocks:
        labels = pd.factorize(design.table[params.exchangeability_blocks].astype(str))[0] + 1
        blocks = check_blocks(labels, X.shape[0], params.whole_block)
    else:
        check_blocks(None, X.shape[0], params.whole_block)
    return max(count_distinct(X, scheme, blocks, params.whole_block) for scheme in ("sign_flip", "permutation"))


def permutation_bytes(n_elements: int, n_rows: int, n_methods: int) -> int:
    """Memory of a permutation set of ``n_elements`` over ``n_rows`` maps and of ``n_methods`` null distributions."""
    return int(n_elements) * (SET_BYTES_PER_ROW * n_rows + NULL_BYTES_PER_METHOD * max(1, n_methods))


def check_permutation_memory(n_permutations: int, n_possible: int, n_rows: int, n_methods: int,
                             budget_bytes: float, key: str) -> None:
    """Refuse a number of permutations whose set and nulls need more than PERMUTATION_SHARE of the budget."""
    n_elements = min(int(n_permutations), int(n_possible))
    needed = permutation_bytes(n_elements, n_rows, n_methods)
    allowed = PERMUTATION_SHARE * float(budget_bytes)
    if needed > allowed:
        largest = max(2, int(allowed // permutation_bytes(1, n_rows, n_methods)))
        raise RunnerError(f"{key}.n_permutations={n_permutations} would need about {_size(needed)} for the "
                          f"permutation set and null distributions of {n_rows} maps, more than "
                          f"{PERMUTATION_SHARE:g} x the memory budget ({_size(budget_bytes)}); use at most "
                          f"{largest} (10000 is usual) or raise memory_budget_gb")


def check_figure_grid(shape: Sequence[int]) -> None:
    """Brain figures (slices, montage, glass brain) need at least two voxels along every axis."""
    if any(int(n) < MIN_FIGURE_VOXELS for n in shape[:3]):
        raise RunnerError(f"the data grid {tuple(int(n) for n in shape[:3])} is a single slice or line: brain figures "
                          "need at least 2 voxels along every axis; set report=false to run without figures")


def _size(n_bytes: float) -> str:
    units = ["bytes", "kB", "MB", "GB", "TB", "PB"]
    power = min(len(units) - 1, int(math.log(max(n_bytes, 1), 1024)))
    return f"{n_bytes / 1024 ** power:.3g} {units[power]}"
