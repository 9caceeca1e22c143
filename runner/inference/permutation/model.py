"""The design partitioned for a contrast, and the data each regression method shuffles (PALM's first step).

The design ``X`` (n x p) is split by the contrast ``C`` (q x p) into an effect space (the whitened estimator
weights ``X^+' C'``, q columns) and a nuisance space (the part of ``col(X)`` orthogonal to it, i.e. the model under
``C beta = 0``); this is the partition of Ridgway (2009) and Beckmann et al. (2001) used by PALM and randomise
(Winkler et al. 2014, appendix A). Regression methods (what is shuffled, Winkler et al. 2014 table 2):
``freedman_lane`` the nuisance-model residuals, ``ter_braak`` the full-model residuals, ``manly`` the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runner.errors import RunnerError
from runner.inference.permutation.options import StatType


@dataclass(frozen=True)
class PermutationModel:
    """Orthonormal bases of a partitioned design: ``basis[:, :n_effects]`` spans the effect, the rest the nuisance.

    Only the first ``n_shuffled`` columns move under the permutations; the others (nuisance directions that
    every permutation leaves in place, such as the intercept when rows are permuted) project the shuffled data
    to the same value as the unshuffled data, so they are computed once instead of once per permutation.
    """

    basis: np.ndarray
    n_effects: int
    dof: int
    stat_type: StatType
    n_shuffled: int | None = None

    def __post_init__(self) -> None:
        if self.n_shuffled is None:
            object.__setattr__(self, "n_shuffled", self.basis.shape[1])

    @property
    def nuisance(self) -> np.ndarray:
        return self.basis[:, self.n_effects :]

    @property
    def moving(self) -> np.ndarray:
        """Basis columns whose projections change from one permutation to the next."""
        return self.basis[:, : self.n_shuffled]

    @property
    def fixed(self) -> np.ndarray:
        """Nuisance columns invariant under the permutations."""
        return self.basis[:, self.n_shuffled :]


def separate_invariant_nuisance(model: PermutationModel, invariant: np.ndarray) -> PermutationModel:
    """Move nuisance directions lying in ``invariant`` (vectors every permutation keeps) to the end of the basis.

    For a permutation P with P' u = u, ``u' (P R) = u' R``: such a direction adds the same sum of squares to the
    fit of every permutation. Found as the principal directions between the nuisance space and ``invariant``
    with cosine 1.
    """
    nuisance = model.nuisance
    if nuisance.shape[1] == 0 or invariant.shape[1] == 0:
        return model
    rotation, cosines, _ = np.linalg.svd(nuisance.T @ invariant, full_matrices=True)
    n_fixed = int(np.sum(cosines > 1 - 1e-10))
    if n_fixed == 0:
        return model
    rotated = nuisance @ rotation  # first n_fixed columns lie in the invariant space
    basis = np.hstack([model.basis[:, : model.n_effects], rotated[:, n_fixed:], rotated[:, :n_fixed]])
    return PermutationModel(np.ascontiguousarray(basis), model.n_effects, model.dof, model.stat_type,
                            n_shuffled=model.basis.shape[1] - n_fixed)


def partition_model(design: np.ndarray, contrast: np.ndarray) -> PermutationModel:
    """Split the design into effect and nuisance spaces for a contrast (Ridgway 2009; Winkler et al. 2014).

    Parameters
    ----------
    design : ndarray, shape (n, p)
    contrast : ndarray, shape (q, p) or (p,)

    Returns
    -------
    PermutationModel
    """
    design = np.asarray(design, dtype=np.float64)
    contrast = np.atleast_2d(np.asarray(contrast, dtype=np.float64))
    if design.ndim != 2:
        raise RunnerError(f"the design matrix must be 2D (maps x regressors), got shape {design.shape}")
    n_rows, n_columns = design.shape
    if contrast.ndim != 2 or contrast.shape[1] != n_columns:
        raise RunnerError(
            f"the contrast has {contrast.shape[-1]} columns but the design has {n_columns} regressors"
        )
    if not (np.all(np.isfinite(design)) and np.all(np.isfinite(contrast))):
        raise RunnerError("the design matrix and the contrast must be finite")
    left, singular, right_t = np.linalg.svd(design, full_matrices=False)
    tolerance = max(design.shape) * np.finfo(np.float64).eps * (singular[0] if singular.size else 0.0)
    rank = int(np.sum(singular > tolerance))
    if rank == 0:
        raise RunnerError("the design matrix is zero")
    left, singular, right = left[:, :rank], singular[:rank], right_t[:rank].T
    estimable = contrast @ right @ right.T
    if np.linalg.norm(contrast - estimable) > 1e-8 * max(1.0, np.linalg.norm(contrast)):
        raise RunnerError("the contrast is not estimable with this design (it weights a rank-deficient part)")
    weights = left @ np.diag(1.0 / singular) @ right.T @ contrast.T  # (n, q): effect = weights' Y
    gram = weights.T @ weights
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    if eigenvalues[0] <= 1e-10 * eigenvalues[-1] or eigenvalues[-1] <= 0:
        raise RunnerError("the rows of the F contrast are linearly dependent; remove the redundant rows")
    effect = weights @ eigenvectors @ np.diag(eigenvalues**-0.5) @ eigenvectors.T
    remainder = left - effect @ (effect.T @ left)
    nuisance_left = np.linalg.svd(remainder, full_matrices=False)[0]
    n_nuisance = rank - contrast.shape[0]
    nuisance = nuisance_left[:, :n_nuisance]
    dof = n_rows - rank
    if dof < 1:
        raise RunnerError(f"no residual degrees of freedom: {n_rows} maps for a design of rank {rank}")
    return PermutationModel(
        basis=np.ascontiguousarray(np.hstack([effect, nuisance])),
        n_effects=contrast.shape[0],
        dof=dof,
        stat_type="t" if contrast.shape[0] == 1 else "F",
    )


def residualise(data: np.ndarray, model: PermutationModel, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Data to shuffle and data giving the observed statistic, in float64.

    Freedman–Lane shuffles the nuisance-model residuals (which also give the observed statistic), ter Braak the
    full-model residuals and Manly the data.
    """
    data = np.asarray(data, dtype=np.float64)
    if method == "freedman_lane":
        nuisance = model.nuisance
        if nuisance.shape[1] == 0:
            return data, data
        residuals = data - nuisance @ (nuisance.T @ data)
        return residuals, residuals
    if method == "ter_braak":
        return data - model.basis @ (model.basis.T @ data), data
    return data, data
