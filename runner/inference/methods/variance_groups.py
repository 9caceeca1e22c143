"""``correction.<method>.variance_groups``: which rows share a variance, and the v / G maps written for them.

Not a method of its own: the permutation methods (maxt, clustersize, clustermass, tfce) read it. A table column
names the groups directly. ``auto`` takes the categorical columns of the design formula that the contrast tests:
a column is categorical when the formula wraps it in ``C(...)`` or its values are not numbers, and the contrast
tests it when the contrast's effect (its estimator weights over the rows) is not orthogonal to the column's level
indicators (a two-sample contrast tests its group column; a covariate contrast adjusted for the group does not).
The groups are the combinations of the levels of the tested columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from runner.errors import RunnerError, did_you_mean
from runner.formula import check_factor, factor_codes, parse_terms
from runner.results import MapOutput

AUTO = "auto"


def resolve_variance_groups(setting: str, inputs: Any) -> tuple[str, ...]:
    """One variance-group label per design row, from a table column or ``auto`` (see the module docstring)."""
    table = inputs.design.table
    if str(setting).lower() == AUTO:
        columns = tested_categorical_columns(inputs)
    else:
        if setting not in table.columns:
            raise RunnerError(f"variance_groups names column {setting!r}, which is not in the table; "
                              f"{did_you_mean(str(setting), table.columns)}")
        columns = [setting]
    values = table[columns]
    if values.isna().any().any():
        rows = np.flatnonzero(values.isna().any(axis=1).to_numpy())
        raise RunnerError(f"variance_groups column(s) {', '.join(columns)} have missing values in row(s) "
                          f"{', '.join(str(r + 1) for r in rows[:5])}; fill them or drop those rows")
    labels = values.astype(str).agg("/".join, axis=1) if len(columns) > 1 else values.iloc[:, 0].astype(str)
    counts = labels.value_counts()
    if counts.size < 2:
        raise RunnerError(f"variance_groups column(s) {', '.join(columns)} hold a single group; variance groups "
                          "need at least two (leave variance_groups unset for one common variance)")
    small = counts[counts < 2]
    if small.size:
        raise RunnerError(f"variance_groups: group(s) {', '.join(map(repr, small.index))} of "
                          f"{', '.join(columns)} have a single row; each group needs at least 2 rows")
    return tuple(labels.tolist())


def tested_categorical_columns(inputs: Any) -> list[str]:
    """The categorical columns of the design formula whose levels the contrast's effect weights load on."""
    from runner.inference.permutation.model import partition_model

    formula = inputs.settings.design.formula
    if inputs.settings.design.matrix is not None or not formula:
        raise RunnerError("variance_groups=auto needs a design formula (the groups come from its categorical "
                          "columns); name the table column instead")
    table = inputs.design.table
    candidates: list[str] = []
    for code in factor_codes(parse_terms(formula)):
        used = check_factor(code, table.columns)
        wrapped = code.strip().startswith("C(")
        for column in used:
            categorical = wrapped or not pd.api.types.is_numeric_dtype(table[column])
            if categorical and column not in candidates:
                candidates.append(column)
    model = partition_model(inputs.design.matrix.to_numpy(dtype=float), inputs.contrast.matrix)
    effect = model.basis[:, : model.n_effects]
    tested = []
    for column in candidates:
        indicators = pd.get_dummies(table[column].astype(str)).to_numpy(dtype=float)
        loading = np.linalg.norm(indicators.T @ effect)
        if loading > 1e-8 * max(1.0, np.linalg.norm(effect)):
            tested.append(column)
    if not tested:
        listed = ", ".join(candidates) if candidates else "none"
        raise RunnerError(f"variance_groups=auto: contrast {inputs.contrast.name!r} tests no categorical column of "
                          f"the formula (categorical columns: {listed}); name the variance-group column instead")
    return tested


def statistic_maps(outcome: Any, n_effects: int, label: str | None, meta: dict[str, Any]) -> list[MapOutput]:
    """The v (or G) map, its z and its parametric p against t(nu) (F(s, nu)), nu per voxel, like the t/F maps.

    Named ``stat-v`` / ``stat-G`` and ``stat-z`` / ``stat-p`` with ``desc-v`` (``desc-G``), plus the pass label when
    the contrast runs several permutation passes.
    """
    from runner.inference.permutation.variance_groups import statistic_to_p, statistic_to_z

    name = outcome.statistic
    z = statistic_to_z(outcome.stat, n_effects, outcome.dof_map)
    p = statistic_to_p(outcome.stat, n_effects, outcome.dof_map)
    desc = name + (label or "")
    info = dict(meta, statistic=name)
    return [
        MapOutput(np.where(np.isfinite(outcome.stat), outcome.stat, 0.0), stat=name, correction=None,
                  desc=label, meta=info),
        MapOutput(np.where(np.isfinite(outcome.dof_map), outcome.dof_map, 0.0), stat="dof", correction=None,
                  desc=desc, meta=info),
        MapOutput(np.where(np.isfinite(z), z, 0.0), stat="z", correction=None, desc=desc, meta=info),
        MapOutput(np.where(np.isfinite(p), p, 1.0), stat="p", correction=None, fill=1.0, desc=desc, meta=info),
    ]

