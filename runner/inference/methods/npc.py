"""``correction=[npc]``: non-parametric combination of the run's contrasts (Fisher, Stouffer or Tippett) under
permutation, with voxel-wise FWE over space (:mod:`runner.inference.permutation.npc`), optionally over several
modalities: ``correction.npc.modalities`` names table columns of further maps of the same subjects (the pipeline
loads them on the input maps' mask into ``ContrastInputs.modalities``).

NPC is a run-level method: it reads every contrast at once (the registry's ``run_contrasts``) and writes its
outputs under a contrast label of its own, ``npc<Combine>`` (e.g. ``contrast-npcFisher_stat-logp_desc-npc_...``),
unless ``correction.npc.name`` gives one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, List, Optional

import numpy as np

from runner.checks import check, in_open_unit, non_negative, one_of, positive
from runner.contrasts import Contrast
from runner.errors import RunnerError, did_you_mean
from runner.inference.registry import ContrastInputs, InferenceMethod, register
from runner.results import BatchResult, MapOutput

log = logging.getLogger("runner.inference")


@dataclass
class NpcCorrection:
    """Non-parametric combination of contrasts with permutation FWE over space (Winkler et al. 2016)."""

    alpha: float = field(default=0.05, metadata=check(in_open_unit))
    combine: str = field(default="fisher", metadata=check(one_of("fisher", "stouffer", "tippett")))
    contrasts: Optional[List[str]] = None  # the contrasts to combine (default: every contrast of the run)
    # table columns naming further maps of the same subjects (e.g. [fa_path, md_path]): every contrast is tested on
    # the input maps and on each of these, and all of those partial tests are combined
    modalities: Optional[List[str]] = None
    name: Optional[str] = None  # contrast label of the outputs (default: npc<Combine>)
    n_permutations: int = field(default=10000, metadata=check(positive))
    seed: Optional[int] = field(default=None, metadata=check(non_negative))  # default: the run's seed
    two_sided: bool = True  # of the partial t tests (F tests are one-sided)
    method: str = field(default="freedman_lane", metadata=check(one_of("freedman_lane", "ter_braak", "manly")))
    exchangeability_blocks: Optional[str] = None  # table column
    whole_block: bool = False
    n_jobs: Optional[int] = None  # default: the run's n_jobs
    accel: str = field(default="none", metadata=check(one_of("none", "tail", "gamma")))


def npc_label(params: NpcCorrection) -> str:
    """The contrast label of the combination's outputs."""
    return params.name or f"npc{params.combine.capitalize()}"


def run_npc_contrasts(every: list[ContrastInputs], params_by_method: dict[str, Any]):
    """Combine the chosen contrasts and yield ``(label, BatchResult)`` once."""
    from runner.inference.methods.permutation import _engine_settings, _method_result
    from runner.inference.methods.null_maximum import reassess
    from runner.inference.permutation import PermutationOptions, PermutationResult
    from runner.inference.permutation.npc import npc_inference

    params = params_by_method["npc"]
    by_name = {inputs.contrast.name: inputs for inputs in every}
    chosen = list(params.contrasts) if params.contrasts else list(by_name)
    for name in chosen:
        if name not in by_name:
            raise RunnerError(f"correction.npc.contrasts names {name!r}, which is not a contrast of the run; "
                              f"{did_you_mean(str(name), by_name)}")
    extra = dict(every[0].modalities or {})
    if len(chosen) * (1 + len(extra)) < 2:
        raise RunnerError(f"correction.npc combines at least two partial tests; the run has {len(chosen)} contrast "
                          "on one modality (add contrasts, list them in correction.npc.contrasts, or name further "
                          "modalities in correction.npc.modalities)")
    label = npc_label(params)
    if label in by_name:
        raise RunnerError(f"correction.npc.name {label!r} is also a contrast's name; give the combination another")
    first = by_name[chosen[0]]
    shared, _ = _engine_settings(params, first)
    options = PermutationOptions(**shared)
    data = first.data
    X = first.design.matrix.to_numpy(dtype=float)
    matrices = [by_name[name].contrast.matrix for name in chosen]
    sources = [data_label(first)] + list(extra)
    combined_what = ", ".join(chosen) + (f" on {', '.join(sources)}" if extra else "")
    log.info("npc: %s combination of %s, %d permutations requested", params.combine, combined_what,
             options.n_permutations)
    result = npc_inference(data.Y, X, matrices, params.combine, options, executor=first.executor,
                           modalities=list(extra.values()))
    for message in result.messages:
        log.info("npc: %s", message)
    n = result.permutations.size
    outcome = PermutationResult(
        stat=result.statistic, stat_type=params.combine, dof=0, n_permutations_done=n,
        exhaustive=result.permutations.exhaustive, scheme=result.scheme, method=params.method, two_sided=False,
        uncorrected_p=result.uncorrected_p, corrected_p={"npc": result.corrected_p},
        logp={"npc": -np.log10(result.corrected_p)}, null_max={"npc": result.null_max}, clusters={}, tfce=None,
        cluster_forming_threshold=None, permutations=result.permutations, messages=result.messages,
        statistic=params.combine, scheme_reason=result.scheme_reason,
        observed_measure={"npc": result.statistic},
    )
    combined = Contrast(name=label, matrix=np.vstack([np.atleast_2d(m) for m in matrices]), stat_type="F")
    inputs = replace(first, contrast=combined)
    outcome, facts = reassess(outcome, "npc", params, None)
    meta = dict(n_permutations=n, exhaustive=result.permutations.exhaustive, scheme=result.scheme,
                regression=params.method, combine=params.combine, contrasts=chosen,
                partial_two_sided=bool(params.two_sided))
    if extra:
        meta["modalities"] = sources
    batch = BatchResult(results={})
    statistic = np.where(np.isfinite(result.statistic), result.statistic, 0.0)
    batch.shared.append(MapOutput(statistic, stat=params.combine, correction=None, meta=meta))
    batch.shared.append(MapOutput(result.uncorrected_p, stat="p", correction=None, fill=1.0, meta=meta))
    method_result = _method_result(inputs, outcome, "npc", params, facts)
    method_result.summary.update(combined=f"{params.combine.capitalize()} combination of {combined_what}",
                                 scheme=result.scheme, scheme_reason=result.scheme_reason)
    batch.results["npc"] = method_result
    batch.notes.extend(f"{label}, npc: {note}" for note in facts.get("notes", []))
    yield label, batch


def data_label(inputs: ContrastInputs) -> str:
    """How the input maps are named among the modalities: their table column (``data.path_column``)."""
    return str(inputs.settings.data.path_column)


def _no_single_contrast(inputs: ContrastInputs, params_by_method: dict[str, Any]) -> BatchResult:
    raise RunnerError("correction npc combines contrasts and runs once per run, not per contrast")


register(InferenceMethod(name="npc", family="npc", schema=NpcCorrection, run=_no_single_contrast,
                         description="non-parametric combination of contrasts (Fisher, Stouffer, Tippett) with "
                                     "permutation FWE over space", run_contrasts=run_npc_contrasts))
