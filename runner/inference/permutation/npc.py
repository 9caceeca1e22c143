"""Non-parametric combination (NPC) of several contrasts and modalities under permutation, with FWE over space.

Winkler et al. 2016 ("Non-parametric combination and related permutation tests for neuroimaging", HBM 37): each
contrast ("partial test") is computed on the same shuffled data, its statistic turned into a parametric p (t: two-
sided unless asked, F: one-sided), the p-values combined voxel by voxel, and the *combined* statistic assessed by
permutation, so the parametric p only needs to be monotone in the statistic, not exact. Combining functions:

- Fisher: ``T = -2 sum_k log p_k``
- Stouffer: ``T = sum_k z_k / sqrt(K)`` with ``z_k = Phi^-1(1 - p_k)``
- Tippett: ``T = max_k (-log p_k)`` (the smallest p)

The FWE p of a voxel is ``#{j : max_v T_j(v) >= T(v)} / P`` with the identity counted, as for max-T. Every contrast
is shuffled by the same element of the permutation set (one scheme for all; see :func:`common_scheme`). Several
modalities (data sources of the same subjects, e.g. FA and MD maps, on the same voxels) multiply the partial tests:
every contrast on every modality, all shuffled by the same element, so their dependence is kept in the null. Blocks of
permutations run on an executor on the GEMM grid of :mod:`.blocks`, so results do not depend on the workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import special

from runner.errors import RunnerError, did_you_mean
from runner.execution import Executor, LocalExecutor, ProgressReporter, Task, resolve_workers
from runner.inference.permutation.blocks import block_bounds, default_block_size
from runner.inference.permutation.driver import planned_scheme
from runner.inference.permutation.model import (
    PermutationModel,
    partition_model,
    residualise,
    separate_invariant_nuisance,
)
from runner.inference.permutation.options import PermutationOptions
from runner.inference.permutation.pvalues import fwe_p_values, tie_reference, uncorrected_p_values
from runner.inference.permutation.scores import (
    PERMUTATION_BLOCK,
    moving_sum_squares,
    scores_from_projections,
    scores_to_statistics,
    shuffled_basis,
)
from runner.inference.permutation_sets import PermutationSet, check_blocks, invariant_subspace, make_permutation_set
from runner.stats import f_logsf, t_logsf, z_from_logsf

COMBINING = ("fisher", "stouffer", "tippett")
VOXEL_CHUNK = 2048  # voxels per chunk of a block


def partial_log_p(stat: np.ndarray, stat_type: str, rank: int, dof: float, two_sided: bool) -> np.ndarray:
    """Natural log of the parametric p of each statistic (two-sided t: ``2 P(T > |t|)``, capped at log 1).

    The CDFs of scipy.special serve the bulk; p below 1e-300 is recomputed in log space (:mod:`runner.stats`).
    """
    stat = np.asarray(stat, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if stat_type == "F":
            p = special.fdtrc(rank, dof, np.maximum(stat, 0.0))
        elif two_sided:
            p = np.minimum(2.0 * special.stdtr(dof, -np.abs(stat)), 1.0)
        else:
            p = special.stdtr(dof, -stat)
        log_p = np.log(p)
    deep = np.isfinite(stat) & ~(p > 1e-300)
    if deep.any():
        if stat_type == "F":
            log_p[deep] = f_logsf(stat[deep], rank, dof)
        elif two_sided:
            log_p[deep] = np.log(2.0) + t_logsf(np.abs(stat[deep]), dof)
        else:
            log_p[deep] = t_logsf(stat[deep], dof)
    return log_p


def combine_log_p(log_p: np.ndarray, how: str) -> np.ndarray:
    """The combined statistic of partial log p-values stacked on the first axis (K, ...): larger is stronger."""
    if how == "fisher":
        return -2.0 * np.sum(log_p, axis=0)
    if how == "stouffer":
        return np.sum(z_from_logsf(log_p), axis=0) / np.sqrt(log_p.shape[0])
    if how == "tippett":
        return -np.min(log_p, axis=0)
    raise RunnerError(f"unknown combining function {how!r}: {did_you_mean(how, COMBINING)}")


@dataclass(frozen=True)
class Partial:
    """One partial test: its model, the data its permutations shuffle (residualised for the regression method) and
    their moving sum of squares, and the data of its observed statistic when they differ (ter Braak)."""

    model: PermutationModel
    data: np.ndarray
    sum_squares: np.ndarray
    observed_data: np.ndarray | None = None
    observed_sum_squares: np.ndarray | None = None


@dataclass(frozen=True)
class NpcWork:
    """What every block reads (shared once with the workers)."""

    partials: tuple[Partial, ...]
    permutations: PermutationSet
    combine: str
    two_sided: bool
    observed: np.ndarray | None = None


@dataclass(frozen=True)
class NpcResult:
    """The combined statistic, its voxel-wise uncorrected and FWE p, and the null of its maximum (identity first)."""

    statistic: np.ndarray
    combine: str
    uncorrected_p: np.ndarray
    corrected_p: np.ndarray
    null_max: np.ndarray
    permutations: PermutationSet
    scheme: str
    scheme_reason: str
    two_sided: bool
    messages: list[str] = field(default_factory=list)


def combined_maps(work: NpcWork, first: int, last: int, v0: int, v1: int, observed: bool = False) -> np.ndarray:
    """Combined statistic of elements ``first..last-1`` over voxels ``v0..v1-1`` (B, Vc); NaN where a partial test
    has no statistic. ``observed``: the statistic of the unshuffled data (element 0 only)."""
    orders, signs = work.permutations.rows(first, last)
    log_p = []
    for part in work.partials:
        model = part.model
        mode = "F" if model.stat_type == "F" else "signed"
        data, sum_squares = part.data, part.sum_squares
        if observed and part.observed_data is not None:
            data, sum_squares = part.observed_data, part.observed_sum_squares
        rows = shuffled_basis(model.moving, orders, signs)
        projections = (rows @ data[:, v0:v1]).reshape(last - first, model.n_shuffled, -1)
        scores = scores_from_projections(projections, sum_squares[v0:v1], model.n_effects, mode)
        stat = scores_to_statistics(scores, model, mode)
        log_p.append(partial_log_p(stat, model.stat_type, model.n_effects, model.dof, work.two_sided))
    return combine_log_p(np.asarray(log_p), work.combine)


def npc_block(work: NpcWork, first: int, last: int) -> dict[str, np.ndarray]:
    """Null maxima of the combined statistic for elements ``first..last-1`` and voxel-wise exceedance counts."""
    n_voxels = work.partials[0].data.shape[1]
    maxima = np.full(last - first, -np.inf)
    exceedances = np.zeros(n_voxels, dtype=np.int64)
    reference = tie_reference(work.observed)
    for start in range(first, last, PERMUTATION_BLOCK):
        stop = min(last, start + PERMUTATION_BLOCK)
        for v0 in range(0, n_voxels, VOXEL_CHUNK):
            v1 = min(n_voxels, v0 + VOXEL_CHUNK)
            combined = combined_maps(work, start, stop, v0, v1)
            np.fmax(maxima[start - first : stop - first], np.fmax.reduce(combined, axis=1, initial=-np.inf),
                    out=maxima[start - first : stop - first])
            exceedances[v0:v1] += np.count_nonzero(combined >= reference[v0:v1], axis=0)
    return {"null": maxima, "exceedances": exceedances}


def common_scheme(X: np.ndarray, contrasts: Sequence[np.ndarray], options: PermutationOptions) -> tuple[str, str]:
    """One scheme for several contrasts: the automatic one when they agree, sign-flips when they differ."""
    planned = [planned_scheme(X, c, options) for c in contrasts]
    schemes = {scheme for scheme, _ in planned}
    if len(schemes) == 1:
        return planned[0]
    return "sign_flip", ("the contrasts' automatic schemes differ, so all are tested with sign-flips, which assumes "
                         "independent and symmetric errors (PALM's -ise)")


def npc_inference(Y: np.ndarray, X: np.ndarray, contrasts: Sequence[np.ndarray], combine: str = "fisher",
                  options: PermutationOptions | None = None, executor: Executor | None = None,
                  modalities: Sequence[np.ndarray] = ()) -> NpcResult:
    """Non-parametric combination of ``contrasts`` (t or F each), on ``Y`` and each of ``modalities``, with
    voxel-wise FWE over space.

    Parameters
    ----------
    Y : ndarray, shape (n, V)
    X : ndarray, shape (n, p)
    contrasts : sequence of ndarray, each (q, p) or (p,)
        The partial tests of each modality; with the modalities, at least two partial tests in all.
    combine : {"fisher", "stouffer", "tippett"}
    options : PermutationOptions
        ``n_permutations``, ``seed``, ``two_sided`` (of the partial t tests), ``method``, blocks, ``n_jobs``,
        ``progress``; variance groups and spatial settings do not apply.
    executor : Executor, optional
    modalities : sequence of ndarray, each (n, V)
        Further data of the same maps' subjects (rows) at the same voxels (columns) as ``Y``; partial tests are
        ordered modality by modality (``Y`` first), contrast by contrast within each.
    """
    options = options or PermutationOptions()
    if combine not in COMBINING:
        raise RunnerError(f"unknown combining function {combine!r}: {did_you_mean(str(combine), COMBINING)}")
    sources = [np.asarray(Y)] + [np.asarray(m) for m in modalities]
    if len(contrasts) * len(sources) < 2:
        raise RunnerError(f"non-parametric combination needs at least two partial tests (contrasts x modalities), "
                          f"got {len(contrasts)} contrast(s) on {len(sources)} modality(ies)")
    Y = sources[0]
    design = np.asarray(X, dtype=np.float64)
    design = design[:, None] if design.ndim == 1 else design
    if Y.ndim != 2 or Y.shape[0] != design.shape[0]:
        raise RunnerError(f"the data ({Y.shape}) and the design ({design.shape}) do not match in rows")
    for index, source in enumerate(sources):
        if source.shape != Y.shape:
            raise RunnerError(f"modality {index + 1} has shape {source.shape}; every modality needs the maps x "
                              f"voxels shape of the first, {Y.shape}")
        if not np.isfinite(source).all():
            raise RunnerError(f"modality {index + 1} contains NaN or infinite values inside the mask")
    blocks = check_blocks(
        None if options.exchangeability_blocks is None else np.asarray(options.exchangeability_blocks),
        design.shape[0], options.whole_block,
    )
    scheme, reason = common_scheme(design, contrasts, replace(options, variance_groups=None))
    permutations = make_permutation_set(design, options.n_permutations, options.seed, scheme, blocks,
                                        options.whole_block)
    partials = []
    for source, contrast in ((source, contrast) for source in sources for contrast in contrasts):
        model = partition_model(design, contrast)
        if scheme == "permutation":
            model = separate_invariant_nuisance(model, invariant_subspace(blocks, design.shape[0],
                                                                          options.whole_block))
        shuffled, unshuffled = residualise(source, model, options.method)
        differ = unshuffled is not shuffled
        shuffled = np.array(shuffled, dtype=np.float64, copy=True)
        unshuffled = np.array(unshuffled, dtype=np.float64, copy=True) if differ else None
        partials.append(Partial(model, shuffled, moving_sum_squares(shuffled, model), unshuffled,
                                None if unshuffled is None else moving_sum_squares(unshuffled, model)))
    work = NpcWork(tuple(partials), permutations, combine, bool(options.two_sided))
    observed = np.concatenate([combined_maps(work, 0, 1, v0, min(Y.shape[1], v0 + VOXEL_CHUNK), observed=True)[0]
                               for v0 in range(0, Y.shape[1], VOXEL_CHUNK)])
    excluded = ~np.isfinite(observed)
    if excluded.all():
        raise RunnerError("no voxel has a statistic in every partial test; nothing to combine")
    work = replace(work, observed=np.where(excluded, np.nan, observed))

    executor = executor or LocalExecutor(resolve_workers(options.n_jobs))
    n_elements = permutations.size
    block_size = options.block_size or default_block_size(n_elements, PERMUTATION_BLOCK, executor.n_workers)
    shared = executor.share(work)
    tasks = [Task(npc_block, (shared, first, last), weight=last - first)
             for first, last in block_bounds(n_elements, PERMUTATION_BLOCK, block_size)]
    with ProgressReporter(options.progress, n_elements, "permutations", "perm") as reporter:
        reporter.advance(1)
        results = list(executor.map(tasks, reporter.advance))
    observed = work.observed
    null = np.concatenate([[np.nanmax(observed)]] + [r["null"] for r in results])
    exceedances = sum((r["exceedances"] for r in results), np.zeros(observed.size, dtype=np.int64))
    sided = "two-sided" if options.two_sided else "one-sided"
    on_modalities = f"{len(contrasts)} contrast(s) on each of {len(sources)} modalities; " if modalities else ""
    messages = [permutations.describe(), f"scheme: {scheme.replace('_', '-')} ({reason})",
                f"{combine.capitalize()} combination of {len(partials)} partial tests ({on_modalities}parametric p of "
                f"each, t {sided}, F one-sided), {options.method.replace('_', '-')} regression"]
    if excluded.any():
        messages.append(f"{int(excluded.sum())} voxel(s) without a statistic in some partial test get no combined "
                        "statistic (NaN, p = 1)")
    return NpcResult(statistic=observed, combine=combine,
                     uncorrected_p=uncorrected_p_values(exceedances, n_elements, excluded),
                     corrected_p=fwe_p_values(observed, null), null_max=null, permutations=permutations,
                     scheme=scheme, scheme_reason=reason, two_sided=bool(options.two_sided), messages=messages)
