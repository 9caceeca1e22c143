"""The validity report: how often each correction declares something on null data shaped like this study.

Null datasets get the study's mask, design and contrast and Gaussian noise smoothed to the study's estimated FWHM
(or ``fwhm_mm``), see :mod:`runner.inference.rft.validity`. Each requested correction is applied to every dataset;
the family-wise error rate (datasets with any false positive) gets a 95% Clopper-Pearson interval and a verdict:
valid (alpha inside the interval), conservative (below), liberal (above). The default set repeats the comparison of
Eklund, Nichols & Knutsson (2016, PNAS 113:7900-7905): cluster-level RFT at cluster-forming p 0.01 and 0.001 against
voxel-level RFT, Bonferroni and permutation max-T.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np

from runner.checks import check, in_open_unit, positive
from runner.errors import RunnerError
from runner.inference.methods.height import effective_two_sided
from runner.inference.registry import ContrastInputs, InferenceMethod, register
from runner.results import BatchResult, IntervalFigure, MethodResult, TableOutput, format_number

log = logging.getLogger("runner.inference")

CHECKABLE = ("rft_voxel", "rft_cluster", "bonferroni", "maxt")
DESCRIPTIONS = {
    "rft_voxel": "RFT voxel (min with Bonferroni)",
    "rft_cluster": "RFT cluster, forming p {p}",
    "bonferroni": "Bonferroni",
    "maxt": "permutation max-T ({n} perm.)",
}


def _known_methods(name: str, value: Any) -> None:
    unknown = [m for m in value if m not in CHECKABLE]
    if unknown or not value:
        raise RunnerError(f"{name} must list some of {', '.join(CHECKABLE)}, got {list(value)!r}")


def _probabilities(name: str, value: Any) -> None:
    if not value or not all(0.0 < float(p) < 1.0 for p in value):
        raise RunnerError(f"{name} must list probabilities in (0, 1), got {list(value)!r}")


def _positive_or_none(name: str, value: Any) -> None:
    if value is not None:
        positive(name, value)


@dataclass
class ValidityCheck:
    """Family-wise error of corrections measured on simulated null data with the study's mask and design."""

    n_datasets: int = field(default=50, metadata=check(positive))  # 1000 for a study of record
    methods: List[str] = field(default_factory=lambda: list(CHECKABLE), metadata=check(_known_methods))
    cluster_forming_ps: List[float] = field(default_factory=lambda: [0.01, 0.001], metadata=check(_probabilities))
    n_permutations: int = field(default=100, metadata=check(positive))  # max-T on each null dataset
    fwhm_mm: Optional[float] = field(default=None, metadata=check(_positive_or_none))  # null: the study's estimate
    alpha: float = field(default=0.05, metadata=check(in_open_unit))
    two_sided: bool = False  # as rft's default: the positive tail of a t contrast
    seed: Optional[int] = None  # null: the run's seed


def maxt_rejects(n_permutations: int, dataset: Any) -> bool:
    """Does permutation max-T (sign-flips or permutations, as the engine chooses) find any voxel at alpha?"""
    from runner.inference.permutation import PermutationOptions, permutation_inference

    options = PermutationOptions(n_permutations=n_permutations, seed=dataset.seed, two_sided=dataset.two_sided,
                                 n_jobs=1)
    outcome = permutation_inference(dataset.Y, dataset.design_matrix, dataset.contrast, dataset.mask, ["maxt"],
                                    options)
    return bool(np.min(outcome.corrected_p["maxt"]) < dataset.alpha)  # the maxt method's own rule


def method_label(name: str, params: ValidityCheck) -> str:
    """What a row of the validity table measured, in words."""
    if name.startswith("rft_cluster_p"):
        return DESCRIPTIONS["rft_cluster"].format(p=name[len("rft_cluster_p"):])
    return DESCRIPTIONS[name].format(n=params.n_permutations)


def run_validity(inputs: ContrastInputs, params_by_method: dict[str, Any]) -> BatchResult:
    """Simulate null datasets for one contrast; the FWE table, its figure and a summary row."""
    from functools import partial

    from runner.inference.methods.rft import study_smoothness
    from runner.inference.rft.smoothness import voxel_sizes
    from runner.inference.rft.validity import simulate_null_validity

    (method, params), = params_by_method.items()
    data, contrast, settings = inputs.data, inputs.contrast, inputs.settings
    two_sided = effective_two_sided(inputs.fit.stat_type, params.two_sided)
    sizes = voxel_sizes(data.affine)
    if params.fwhm_mm is None:
        fwhm_voxels = study_smoothness(inputs).fwhm_voxels
        source = "the study's estimated smoothness"
    else:
        fwhm_voxels = np.where(np.array(data.mask.shape) > 1, params.fwhm_mm / sizes, 1.0)
        source = "fwhm_mm"
    fwhm_mm = (fwhm_voxels * sizes).tolist()
    seed = settings.seed if params.seed is None else params.seed
    extra = {"maxt": partial(maxt_rejects, params.n_permutations)} if "maxt" in params.methods else None
    forming = tuple(float(p) for p in params.cluster_forming_ps) if "rft_cluster" in params.methods else ()
    log.info("contrast %s, validity: %d null datasets at FWHM %s mm (%s), methods %s", contrast.name,
             params.n_datasets, np.round(fwhm_mm, 2).tolist(), source, ", ".join(params.methods))
    outcome = simulate_null_validity(data.mask, inputs.design.matrix.to_numpy(dtype=float), contrast.matrix,
                                     fwhm_voxels, n_datasets=params.n_datasets, alpha=params.alpha,
                                     cluster_forming_ps=forming, two_sided=two_sided, seed=int(seed or 0),
                                     affine=data.affine, extra_methods=extra)
    wanted = [m for m in outcome.methods
              if m.method in params.methods or (m.method.startswith("rft_cluster_p") and forming)]
    table = outcome.table()
    table = table[table["method"].isin([m.method for m in wanted])].reset_index(drop=True)
    table.insert(1, "description", [method_label(m, params) for m in table["method"]])
    labels = tuple(table["description"])
    figure = IntervalFigure(
        labels=labels, estimates=table["fwe"].to_numpy(), lows=table["ci_low"].to_numpy(),
        highs=table["ci_high"].to_numpy(), reference=params.alpha, reference_label=f"α = {params.alpha:g}",
        xlabel=f"family-wise error rate over {params.n_datasets} null datasets", correction=method,
        title=f"{contrast.name}: measured family-wise error (FWHM {' × '.join(f'{v:.3g}' for v in fwhm_mm)} mm)",
        caption="Family-wise error per correction on simulated null data with its 95% Clopper-Pearson interval; "
                "the dashed line is α")
    meta = dict(alpha=params.alpha, n_datasets=params.n_datasets, fwhm_mm=fwhm_mm, two_sided=two_sided,
                seed=int(seed or 0), shown_in_report=True)
    outputs = [TableOutput(table, suffix="validity", kind="table", stat=None, correction=method, meta=meta),
               figure]
    estimated = outcome.fwhm_estimated.mean(axis=0) * sizes
    verdicts = {m.method: m.verdict for m in wanted}
    summary = {
        "threshold": None, "n_voxels": None, "n_clusters": None, "peak": None, "alpha": params.alpha,
        "threshold_text": f"{params.n_datasets} null datasets, FWHM {format_number(fwhm_mm, 3)} mm",
        "n_datasets": params.n_datasets,
        "fwhm_mm_simulated": fwhm_mm,
        "fwhm_mm_estimated_mean": estimated.tolist(),
        "fwe": {m.method: m.fwe for m in wanted},
        "verdicts": verdicts,
        "verdict_text": "; ".join(f"{name} {v}" for name, v in verdicts.items()),
    }
    liberal = [name for name, v in verdicts.items() if v == "liberal"]
    notes = [f"contrast {contrast.name}: {', '.join(liberal)} exceeded α on null data shaped like this study "
             f"(validity check, {params.n_datasets} datasets)"] if liberal else []
    return BatchResult({method: MethodResult(method, outputs, summary, notes)})


register(InferenceMethod(name="validity", family="validity", schema=ValidityCheck, run=run_validity,
                         description="family-wise error of rft, bonferroni and max-T measured on simulated null "
                                     "data with the study's mask, design and smoothness"))
