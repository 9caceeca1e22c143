"""Permutation inference for one contrast: max-T, cluster size, cluster mass and TFCE with FWE control.

The data are fixed and only the design is shuffled, so many permutations are computed at once as one GEMM. The
package follows PALM's steps, one module each:

- :mod:`.model` -- partition the design into effect and nuisance for the contrast (Ridgway 2009; Winkler et al.
  2014, appendix A) and residualise for the regression method: ``freedman_lane`` (default; nuisance-model
  residuals), ``ter_braak`` (full-model residuals), ``manly`` (the data);
- :mod:`.scores` -- the GEMM kernels: scores of shuffled designs, voxel chunk by voxel chunk for max-T;
- :mod:`.spatial` -- cluster size, cluster mass and TFCE maxima of whole maps, and the observed clusters;
- :mod:`.pvalues` -- ``p = #{null >= observed} / P`` with the identity counted and ties within 1e-10, and the
  critical value of an FWE threshold;
- :mod:`.blocks` -- what one task computes for a block of permutations, and how elements are cut into blocks;
- :mod:`.driver` -- :func:`permutation_inference`: validation, blocks on an executor, gathering;
- :mod:`.options` -- :class:`PermutationOptions` and :class:`PermutationResult`.

The permutation sets themselves are drawn by :mod:`runner.inference.permutation_sets`.

Two-sided tests (the default, for t only): max-T uses |t|; clusters and TFCE are formed in each tail separately.
F tests are one-tailed. Seeded results are identical, bit for bit, for any number of workers, executor and block
size (see :mod:`.blocks`).
"""

from runner.inference.permutation.driver import permutation_inference
from runner.inference.permutation.model import (
    PermutationModel,
    partition_model,
    residualise,
    separate_invariant_nuisance,
)
from runner.inference.permutation.options import (
    METHODS,
    REGRESSION_METHODS,
    SPATIAL_METHODS,
    MixedEffectsOptions,
    PermutationOptions,
    PermutationResult,
)
from runner.inference.permutation.pvalues import critical_value, fwe_p_values
from runner.inference.permutation.scores import (
    chunk_null_maxima,
    observed_scores,
    scores_to_statistics,
    shuffled_basis,
)
from runner.inference.permutation.spatial import cluster_forming_threshold

__all__ = [
    "METHODS",
    "REGRESSION_METHODS",
    "SPATIAL_METHODS",
    "MixedEffectsOptions",
    "PermutationModel",
    "PermutationOptions",
    "PermutationResult",
    "chunk_null_maxima",
    "cluster_forming_threshold",
    "critical_value",
    "fwe_p_values",
    "observed_scores",
    "partition_model",
    "permutation_inference",
    "residualise",
    "scores_to_statistics",
    "separate_invariant_nuisance",
    "shuffled_basis",
]
