"""What happens to the null of the maximum after a permutation pass: FWE across contrasts and a fitted tail.

- ``correction.<method>.across_contrasts=true`` (PALM's ``-corrcon``): every contrast of the run is tested on the
  same permutation set (one scheme for all; sign-flips when the contrasts' automatic schemes differ, which assumes
  symmetric errors as PALM's ``-ise``), and the null of the maximum becomes, permutation by permutation, the largest
  maximum over the contrasts. Maxima are compared on the statistic's own scale when every contrast has the same
  statistic, degrees of freedom and rank; max-T over contrasts of different types (t and F, or other dof) compares
  z-scores (each statistic's parametric p turned into z, a monotone map, so the per-contrast test is unchanged).
  Cluster and TFCE maxima of contrasts of different types are not comparable and are refused.
- ``correction.<method>.accel=tail|gamma`` (Winkler et al. 2016): a distribution fitted to that null gives p below
  1 / n_permutations (:mod:`runner.inference.permutation.acceleration`); with both, the tail is fitted to the null
  across contrasts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats as distributions

from runner.errors import RunnerError
from runner.inference.permutation.acceleration import (
    accelerated_critical_value,
    accelerated_p_values,
    fit_null,
    fitted_density,
)
from runner.stats import f_logsf, t_logsf, z_from_logsf

log = logging.getLogger("runner.inference")

CLUSTER_COLUMNS = {"clustersize": "size_voxels", "clustermass": "mass"}


@dataclass(frozen=True)
class AcrossContrasts:
    """One contrast's view of a null corrected across contrasts: the combined null and this contrast's observed
    values on the compared scale (``scale`` "statistic" or "z"), and how to map a critical z back."""

    null: np.ndarray
    measure: np.ndarray
    contrasts: tuple[str, ...]
    scale: str
    two_sided: bool
    stat_type: str
    rank: int
    dof: float

    def to_statistic(self, value: float) -> float:
        """A critical value on the compared scale, on this contrast's statistic scale."""
        if self.scale != "z" or not np.isfinite(value):
            return value
        p = float(distributions.norm.sf(value))
        if self.stat_type == "F":
            return float(distributions.f.isf(p, self.rank, self.dof))
        return float(distributions.t.isf(p / 2 if self.two_sided else p, self.dof))


def to_z(values: np.ndarray, stat_type: str, rank: int, dof: float, two_sided: bool) -> np.ndarray:
    """z with the same parametric p as the statistic: |t| two-sided (p = 2 P(T > |t|)), t one-sided, or F."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    out = np.where(np.isnan(values), np.nan, -np.inf)
    if stat_type == "F":
        log_p = f_logsf(values[finite], rank, dof)
    elif two_sided:
        log_p = np.minimum(np.log(2.0) + t_logsf(np.abs(values[finite]), dof), 0.0)
    else:
        log_p = t_logsf(values[finite], dof)
    out[finite] = z_from_logsf(log_p)
    return out


def reassess(outcome: Any, method: str, params: Any, across: AcrossContrasts | None) -> tuple[Any, dict[str, Any]]:
    """The outcome of one method with its FWE p recomputed from the null across contrasts and/or a fitted tail.

    Returns the outcome (unchanged when neither is asked) and facts for the method result: ``critical`` (alpha ->
    critical value on the statistic's scale), ``null_critical`` (the same on the null's scale, z when maxima of
    different statistics were compared), ``observed_max`` (this contrast's, across contrasts), ``summary`` entries
    and ``notes`` for the report.
    """
    accel = getattr(params, "accel", "none")
    if accel == "none" and across is None:
        return outcome, {}
    null = across.null if across is not None else outcome.null_max[method]
    measure = across.measure if across is not None else outcome.observed_measure[method]
    fit = fit_null(null, accel)
    p = accelerated_p_values(measure, null, fit)
    clusters = dict(outcome.clusters)
    if method in clusters and len(clusters[method]):
        table = clusters[method].copy()
        table["p_fwe"] = accelerated_p_values(table[CLUSTER_COLUMNS[method]].to_numpy(dtype=float), null, fit)
        clusters[method] = table
    changed = replace(outcome, corrected_p={**outcome.corrected_p, method: p},
                      logp={**outcome.logp, method: -np.log10(p)}, null_max={**outcome.null_max, method: null},
                      clusters=clusters)

    def critical(alpha: float) -> float:
        value = accelerated_critical_value(null, alpha, fit)
        return across.to_statistic(value) if across is not None else value

    facts: dict[str, Any] = {"critical": critical, "null_critical": lambda a: accelerated_critical_value(null, a, fit)}
    summary: dict[str, Any] = {}
    notes: list[str] = []
    if across is not None:
        finite = measure[np.isfinite(measure)]
        facts["observed_max"] = float(finite.max()) if finite.size else float("nan")
        if across.scale == "z":
            summary["null_scale"] = "z"
        summary["across_contrasts"] = (f"FWE over contrasts {', '.join(across.contrasts)} (maximum over contrasts"
                                       + (" of z-scores" if across.scale == "z" else "") + ", same permutations)")
    if fit is not None:
        summary["accel"] = accel
        summary["null_fit"] = fit.describe()
        if fit.fitted:
            finite = null[np.isfinite(null)]
            start = fit.threshold if fit.kind == "tail" else float(finite.min())
            x = np.linspace(start, max(float(finite.max()), facts.get("observed_max", -np.inf)), 200)
            facts["fitted_curve"] = (x, fitted_density(fit, x))
            facts["fitted_label"] = ("fitted generalised Pareto tail" if fit.kind == "tail"
                                     else "fitted gamma (Pearson III)")
        if fit.fitted and fit.kind == "tail":
            summary.update(tail_threshold=fit.threshold, tail_values=fit.n_tail, gpd_scale=fit.scale,
                           gpd_shape=fit.shape, anderson_darling=fit.ad_statistic, anderson_darling_p=fit.ad_p)
        elif fit.fitted:
            summary.update(null_mean=fit.mean, null_sd=fit.sd, null_skewness=fit.skewness)
        else:
            notes.append(fit.describe())
        log.info("%s: %s", method, fit.describe())
    facts.update(summary=summary, notes=notes)
    return changed, facts


def comparison_scale(method: str, outcomes: dict[str, Any], ranks: dict[str, int]) -> str:
    """"statistic" when the contrasts' maxima are comparable as they are, "z" for max-T over t and F (or other
    dof); a RunnerError otherwise."""
    kinds = {name: (o.statistic, o.dof, ranks[name], o.two_sided, o.cluster_forming_threshold)
             for name, o in outcomes.items()}
    if len(set(kinds.values())) == 1:
        return "statistic"
    described = ", ".join(f"{name} ({k[0]}, {k[1]} dof)" for name, k in kinds.items())
    if method == "maxt" and all(o.statistic in ("t", "F") for o in outcomes.values()):
        return "z"
    raise RunnerError(f"correction.{method}.across_contrasts: the contrasts' {method} maxima are not comparable "
                      f"({described}); use maxt across contrasts of different types, or separate runs")


def same_permutations(outcomes: dict[str, Any]) -> bool:
    """True when every outcome ran on the same elements (row orders and signs)."""
    sets = [o.permutations for o in outcomes.values()]
    first = sets[0]

    def equal(a: np.ndarray | None, b: np.ndarray | None) -> bool:
        return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))

    return all(s.size == first.size and equal(s.orders, first.orders) and equal(s.signs, first.signs)
               for s in sets[1:])


def run_across_contrasts(every: list[Any], params_by_method: dict[str, Any]):
    """Every contrast on one permutation set, the nulls of methods with ``across_contrasts`` combined; yields
    ``(contrast name, BatchResult)`` in contrast order."""
    from runner.inference.methods.permutation import passes, permutation_batch, permutation_outcomes
    from runner.inference.permutation.driver import planned_scheme

    across_methods = [m for m, p in params_by_method.items() if getattr(p, "across_contrasts", False)]
    names = [inputs.contrast.name for inputs in every]
    if len(every) < 2:
        raise RunnerError(f"correction.{across_methods[0]}.across_contrasts needs at least two contrasts; "
                          f"the run has {len(every)}")
    all_passes = {inputs.contrast.name: passes(params_by_method, inputs) for inputs in every}
    # one scheme for every contrast, so that the same permutations test them all
    schemes = {}
    for inputs in every:
        X = inputs.design.matrix.to_numpy(dtype=float)
        for options, methods in all_passes[inputs.contrast.name]:
            if set(methods) & set(across_methods):
                schemes[inputs.contrast.name] = planned_scheme(X, inputs.contrast.matrix, options)[0]
    forced = len(set(schemes.values())) > 1
    notes = []
    if forced:
        listed = ", ".join(f"{name}: {scheme.replace('_', '-')}" for name, scheme in schemes.items())
        notes.append(f"correction across contrasts: the contrasts' automatic schemes differ ({listed}); all are "
                     "tested with sign-flips, which assumes independent and symmetric errors (PALM's -ise)")
        for name in all_passes:
            all_passes[name] = [(replace(o, scheme="sign_flip") if set(m) & set(across_methods) else o, m)
                                for o, m in all_passes[name]]
    outcomes = {inputs.contrast.name: permutation_outcomes(inputs, all_passes[inputs.contrast.name])
                for inputs in every}
    ranks = {inputs.contrast.name: int(np.atleast_2d(inputs.contrast.matrix).shape[0]) for inputs in every}
    across: dict[str, dict[str, AcrossContrasts]] = {name: {} for name in names}
    for method in across_methods:
        found = {name: next(o for _, m, o in outcomes[name] if method in m) for name in names}
        if not same_permutations(found):
            raise RunnerError(f"correction.{method}.across_contrasts: the contrasts ran on different permutation "
                              "sets (different exchangeability blocks or variance groups?); correct them separately")
        scale = comparison_scale(method, found, ranks)
        measures, nulls = {}, {}
        for name, o in found.items():
            measures[name], nulls[name] = o.observed_measure[method], o.null_max[method]
            if scale == "z":
                measures[name] = to_z(measures[name], o.statistic, ranks[name], o.dof, o.two_sided)
                nulls[name] = to_z(nulls[name], o.statistic, ranks[name], o.dof, o.two_sided)
        combined = np.max(np.vstack(list(nulls.values())), axis=0)
        for name, o in found.items():
            across[name][method] = AcrossContrasts(combined, measures[name], tuple(names), scale, o.two_sided,
                                                   o.statistic, ranks[name], float(o.dof))
    for inputs in every:
        batch = permutation_batch(inputs, params_by_method, outcomes[inputs.contrast.name],
                                  across[inputs.contrast.name])
        if inputs is every[0]:
            batch.notes.extend(notes)
        yield inputs.contrast.name, batch
