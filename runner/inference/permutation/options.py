"""What a permutation test is asked to do (:class:`PermutationOptions`) and what it returns
(:class:`PermutationResult`); the names of the methods. See :mod:`runner.inference.permutation` for conventions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from runner.inference.permutation_sets import PermutationSet

METHODS = ("maxt", "clustersize", "clustermass", "tfce")
SPATIAL_METHODS = ("clustersize", "clustermass", "tfce")
REGRESSION_METHODS = ("freedman_lane", "ter_braak", "manly")
DEFAULT_MEMORY_BUDGET = 512 * 2**20

StatType = Literal["t", "F"]


@dataclass(frozen=True)
class PermutationOptions:
    """Settings of a permutation test (see :mod:`runner.inference.permutation` for the conventions).

    ``n_permutations`` counts the identity. ``scheme`` is "auto" (sign-flips when permuting rows cannot move
    the effect, e.g. a one-sample test; permutations otherwise), "permutation" or "sign_flip".
    ``exchangeability_blocks`` gives one integer block label per row. ``tfce_dh`` None means max/100 per map,
    "exact" the continuous TFCE integral (see :mod:`runner.inference.tfce`).
    ``progress`` is False, True (a tqdm bar) or a callable ``(done, total)``. ``memory_budget_bytes`` bounds the
    working arrays of each worker (default 512 MiB), on top of the data and, for cluster and TFCE methods, their
    float64 residuals. ``n_jobs`` is the number of local workers when no executor is given. ``block_size`` is the
    number of permutations per task (rounded up to whole GEMM units; None: chosen from the number of workers);
    neither changes the results. ``variance_groups`` gives one label per row: the statistic becomes the
    Aspin–Welch v (t contrasts) or G (F contrasts) of Winkler et al. 2014 and the "auto" scheme sign-flips
    (see :mod:`.variance_groups`). ``mixed_effects`` (model=mfx) makes the statistic the z of the
    mixed-effects t / F and the scheme sign-flips (see :mod:`.mixed_effects`).
    """

    n_permutations: int = 10000
    seed: int | None = 0
    two_sided: bool = True
    method: str = "freedman_lane"
    exchangeability_blocks: np.ndarray | Sequence[int] | None = None
    whole_block: bool = False
    scheme: str = "auto"
    cluster_forming_p: float = 0.001
    connectivity: int = 26
    tfce_E: float = 0.5
    tfce_H: float = 2.0
    tfce_dh: float | str | None = None
    n_jobs: int = 1
    progress: bool | Callable[[int, int], None] = False
    memory_budget_bytes: int | None = None
    block_size: int | None = None
    variance_groups: np.ndarray | Sequence | None = None
    mixed_effects: "MixedEffectsOptions | None" = None


@dataclass(frozen=True)
class MixedEffectsOptions:
    """model=mfx: the first-level variances (n, V) and how the mixed-effects statistic is fitted at every flip
    (see :mod:`runner.inference.permutation.mixed_effects`)."""

    variances: np.ndarray
    estimator: str = "reml"
    knapp_hartung: bool = True
    dof: str = "effective"
    weights: str = "fixed"


@dataclass(frozen=True)
class PermutationResult:
    """Observed statistic, permutation p-values and null distributions for one contrast.

    Maps are in-mask vectors (V,) in the order of ``np.flatnonzero(mask)``. ``corrected_p[method]`` is the
    FWE-corrected p of each voxel (for cluster methods the p of the voxel's cluster, 1 outside clusters);
    ``logp`` is ``-log10`` of it. ``null_max[method]`` has one value per element, identity first.
    ``statistic`` names what ``stat`` holds: "t" or "F", or "v" or "G" with variance groups, whose per-voxel
    degrees of freedom are ``dof_map`` (``dof`` is then that of the ordinary t/F). ``scheme_reason`` says why
    the scheme was chosen. ``observed_measure[method]`` is each voxel's observed value on the scale of
    ``null_max[method]`` (max-T: the statistic, |t| when two-sided; TFCE: |TFCE|; clusters: the size or mass of the
    voxel's cluster, -inf outside clusters; NaN for excluded voxels): the FWE p of a voxel is computed from it, so a
    different null (across contrasts) or a fitted tail can be applied after the pass.
    """

    stat: np.ndarray
    stat_type: StatType
    dof: int
    n_permutations_done: int
    exhaustive: bool
    scheme: str
    method: str
    two_sided: bool
    uncorrected_p: np.ndarray
    corrected_p: dict[str, np.ndarray]
    logp: dict[str, np.ndarray]
    null_max: dict[str, np.ndarray]
    clusters: dict[str, pd.DataFrame]
    tfce: np.ndarray | None
    cluster_forming_threshold: float | None
    permutations: PermutationSet
    messages: list[str] = field(default_factory=list)
    statistic: str = ""
    dof_map: np.ndarray | None = None
    scheme_reason: str = ""
    observed_measure: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.statistic:
            object.__setattr__(self, "statistic", self.stat_type)
