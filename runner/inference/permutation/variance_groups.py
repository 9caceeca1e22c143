"""Variance groups: the Aspin–Welch v and the G statistic of Winkler et al. (2014) for groups of unequal variance.

The pooled-variance t and F assume one error variance; when groups of observations differ in variance they are
neither valid parametrically nor exchangeable under permutation. Winkler, Ridgway, Webster, Smith & Nichols (2014),
"Permutation inference for the general linear model", NeuroImage 92:381-397 (section "Variance groups", eqs. 6-7 and
appendix) replace them with a statistic that weights each variance group by its own residual variance:

    G = psi' C (C' (M' W M)^-1 C)^-1 C' psi / (Lambda s),      s = rank(C)

with ``psi`` the ordinary least-squares estimate for the design ``M``, ``W`` diagonal with ``w_g = r_g / e_g' e_g``
for the rows of group ``g`` (``e_g`` the group's OLS residuals, ``r_g = sum_{n in g} R_nn`` its share of the
residual degrees of freedom, ``R = I - M M^+``), and

    Lambda = 1 + 2 (s - 1) / (s (s + 2)) * b,    b = sum_g (1 / r_g) (1 - n_g w_g / sum_h n_h w_h)^2,
    nu = s (s + 2) / (3 b)                        (Welch 1951's approximate F(s, nu) degrees of freedom).

For s = 1, Lambda = 1 and ``v = sign(C' psi) sqrt(G)`` is the Aspin–Welch v; ``nu = 1 / b`` is then the
Welch–Satterthwaite degrees of freedom (for two groups and no nuisance, Welch's t test exactly). With a single
variance group, ``W = I / sigma^2``, ``b = 0`` and G is the ordinary F (v the ordinary t, nu = n - rank(M)).

Computation. The statistic is invariant to the parametrisation of the design, so it is computed in the orthonormal
basis ``U = [U_effect, U_nuisance]`` of :class:`~.model.PermutationModel` (the hypothesis is ``a_effect = 0`` for
``a = U' Y``). For a block of B shuffled datasets ``Y*`` two GEMMs give everything: the group-wise projections
``y_g = U' D_g Y*`` (``D_g`` selects the rows of group g; ``a = sum_g y_g``) and the group-wise sums of squares
``q_g = ||D_g Y*||^2``; then ``e_g' e_g = q_g - 2 a' y_g + a' (U' D_g U) a``, ``U' W U = sum_g w_g U' D_g U`` and
``(C' (M'WM)^-1 C)^-1`` is the Schur complement of the nuisance block of ``U' W U`` (Gaussian elimination over the
few basis indices, vectorised over permutations and voxels; no loop over voxels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from runner.errors import RunnerError
from runner.inference.permutation.model import PermutationModel, residualise
from runner.inference.permutation.pvalues import blockwise_null
from runner.inference.permutation.scores import EXACT_FIT, shuffled_basis
from runner.inference.permutation_sets import PermutationSet

VOXEL_CHUNK = 1024  # voxels per GEMM in the max-T loop (the kernel holds about K r + 2 r^2 arrays of B x chunk)
MIN_GROUP_DOF = 1e-6  # a group whose residual degrees of freedom r_g fall below this has no variance estimate


@dataclass(frozen=True)
class VarianceGroupKernel:
    """What the v / G statistic needs besides the data: the model basis split by variance group.

    Attributes
    ----------
    basis : ndarray (n, r)
        Orthonormal basis of the design, effect columns first (:class:`~.model.PermutationModel`).
    n_effects : int
        s = rank of the contrast.
    group_of_row : ndarray of int (n,)
        Variance group (0..K-1) of each row.
    sizes : ndarray (K,)
        Rows per group, n_g.
    residual_dof : ndarray (K,)
        r_g = sum over the group's rows of the diagonal of the residual-forming matrix.
    group_bases : ndarray (n, K r)
        Columns ``D_g U`` for g = 0..K-1 (the rows of other groups zeroed).
    indicators : ndarray (n, K)
        Group indicator columns.
    cross_products : ndarray (K, r, r)
        ``U' D_g U`` (they sum to the identity).
    """

    basis: np.ndarray
    n_effects: int
    group_of_row: np.ndarray
    sizes: np.ndarray
    residual_dof: np.ndarray
    group_bases: np.ndarray
    indicators: np.ndarray
    cross_products: np.ndarray

    @property
    def n_groups(self) -> int:
        return int(self.sizes.size)

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    @property
    def statistic(self) -> str:
        """"v" for a rank-1 contrast, "G" otherwise."""
        return "v" if self.n_effects == 1 else "G"

    @property
    def working_rows(self) -> int:
        """Arrays of (elements x voxels) the kernel holds at once, for memory budgets."""
        return self.n_groups * (self.rank + 2) + 2 * self.rank**2 + 4


def group_codes(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Integer code 0..K-1 of each row's group (in order of first appearance) and the group names."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise RunnerError(f"variance groups must be one label per row, got shape {labels.shape}")
    _, first, inverse = np.unique(labels.astype(str), return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    names = [str(labels[first[i]]) for i in order]
    return rank[inverse.ravel()].astype(np.int64), names


def make_kernel(model: PermutationModel, labels: np.ndarray) -> VarianceGroupKernel:
    """Split the model basis by variance group and check that every group has residual degrees of freedom.

    Parameters
    ----------
    model : PermutationModel
        The partitioned design (its whole basis is used: with weights no nuisance direction is invariant).
    labels : ndarray (n,)
        Variance group of each row (any labels).

    Returns
    -------
    VarianceGroupKernel
    """
    basis = np.ascontiguousarray(model.basis, dtype=np.float64)
    n_rows, rank = basis.shape
    codes, names = group_codes(labels)
    if codes.size != n_rows:
        raise RunnerError(f"variance groups have {codes.size} labels but the design has {n_rows} rows")
    n_groups = len(names)
    sizes = np.bincount(codes, minlength=n_groups)
    small = [f"{names[g]!r} ({sizes[g]} row)" for g in range(n_groups) if sizes[g] < 2]
    if small:
        raise RunnerError(f"variance groups need at least 2 rows each; {', '.join(small)} has fewer: merge groups")
    indicators = np.zeros((n_rows, n_groups))
    indicators[np.arange(n_rows), codes] = 1.0
    leverage = np.einsum("ij,ij->i", basis, basis)  # diagonal of U U' (hat matrix)
    residual_dof = np.bincount(codes, weights=1.0 - leverage, minlength=n_groups)
    empty = [names[g] for g in range(n_groups) if residual_dof[g] < MIN_GROUP_DOF]
    if empty:
        raise RunnerError(f"variance group(s) {', '.join(map(repr, empty))} have no residual degrees of freedom "
                          "under this design (the design fits their rows exactly); merge groups or simplify the design")
    group_bases = np.concatenate([basis * indicators[:, [g]] for g in range(n_groups)], axis=1)
    cross_products = np.stack([basis.T @ (basis * indicators[:, [g]]) for g in range(n_groups)])
    return VarianceGroupKernel(basis=basis, n_effects=model.n_effects, group_of_row=codes, sizes=sizes,
                               residual_dof=residual_dof, group_bases=np.ascontiguousarray(group_bases),
                               indicators=indicators, cross_products=cross_products)


def shuffled_statistics(
    kernel: VarianceGroupKernel, data: np.ndarray, squares: np.ndarray, orders: np.ndarray, signs: np.ndarray,
    with_dof: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """v (signed) or G and their degrees of freedom for a block of shuffled datasets.

    Parameters
    ----------
    kernel : VarianceGroupKernel
    data : ndarray (n, V)
        The data to shuffle (residualised for the regression method), float64.
    squares : ndarray (n, V)
        ``data ** 2`` (sign-flips leave squares alone; computed once by the caller).
    orders, signs : ndarray (B, n)
        Elements of a permutation set: row i of the shuffled data is ``signs[i] * data[orders[i]]``.

    Returns
    -------
    statistic, dof : ndarray (B, V)
        NaN where a group's residuals vanish (the model fits the group exactly); dof is None unless ``with_dof``.
    """
    count = signs.shape[0]
    n_groups, rank = kernel.n_groups, kernel.rank
    linear = (shuffled_basis(kernel.group_bases, orders, signs) @ data).reshape(count, n_groups, rank, -1)
    group_squares = (shuffled_basis(kernel.indicators, orders, np.ones_like(signs)) @ squares)
    return statistics_from_products(kernel, linear, group_squares.reshape(count, n_groups, -1), with_dof)


def statistics_from_products(
    kernel: VarianceGroupKernel, linear: np.ndarray, group_squares: np.ndarray, with_dof: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """v or G, and nu, from the group-wise projections ``y_g = U' D_g Y*`` (B, K, r, V) and ``||D_g Y*||^2``
    (B, K, V). See the module docstring for the formulas (Winkler et al. 2014, eqs. 6-7). Without ``with_dof``
    nu is not computed (None): the permutation null of v needs only v."""
    # elements where a group is fitted exactly get infinite weights and NaN on the way; they are masked at the end
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _statistics(kernel, linear, group_squares, with_dof)


def _statistics(
    kernel: VarianceGroupKernel, linear: np.ndarray, group_squares: np.ndarray, with_dof: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """The body of :func:`statistics_from_products` (floating-point warnings silenced by the caller)."""
    s = kernel.n_effects
    n_groups, rank = kernel.n_groups, kernel.rank
    cross = kernel.cross_products
    # loops run over the few groups and basis indices only; every operation is on (B, V) arrays
    coefficients = linear.sum(axis=1)  # a = U' Y*, OLS coefficients in the orthonormal basis (B, r, V)
    # e_g'e_g = q_g + sum_i a_i ((B_g a)_i - 2 y_gi), with B_g = U' D_g U (one small product per element)
    rss = group_squares.copy()
    for g in range(n_groups):
        moved = np.matmul(cross[g], coefficients)
        moved -= 2.0 * linear[:, g]
        moved *= coefficients
        rss[:, g] += moved.sum(axis=1)
    total = group_squares.sum(axis=1)
    degenerate = np.any(~(rss > EXACT_FIT * total[:, None, :]), axis=1)  # a group fitted exactly: no variance
    weights = kernel.residual_dof[None, :, None] / rss  # w_g = r_g / e_g'e_g  (B, K, V)
    information = np.zeros((rank, rank) + weights[:, 0].shape)  # U' W U = sum_g w_g B_g  (r, r, B, V)
    for k in range(rank):
        for m in range(k, rank):
            for g in range(n_groups):
                information[k, m] += cross[g, k, m] * weights[:, g]
            information[m, k] = information[k, m]
    schur = _effect_schur_complement(information, s)  # (C'(M'WM)^-1 C)^-1 in the orthonormal basis (s, s, B, V)
    effect = coefficients[:, :s, :]  # C' psi up to an invertible map (B, s, V)
    wald = np.zeros_like(total)
    for i in range(s):
        for j in range(s):
            wald += effect[:, i] * schur[i, j] * effect[:, j]
    if s == 1:
        statistic = np.copysign(np.sqrt(np.maximum(wald, 0.0)), effect[:, 0])
        if not with_dof:
            statistic[degenerate] = np.nan
            return statistic, None
    group_weight = weights * kernel.sizes[None, :, None]  # sum_{n in g} w_nn = n_g w_g
    share = group_weight / group_weight.sum(axis=1, keepdims=True)
    spread = np.zeros_like(total)  # b
    for g in range(n_groups):
        spread += (1.0 - share[:, g]) ** 2 / kernel.residual_dof[g]
    if s > 1:
        lam = 1.0 + 2.0 * (s - 1) / (s * (s + 2)) * spread
        statistic = wald / (lam * s)
    statistic[degenerate] = np.nan
    if not with_dof:
        return statistic, None
    plain_dof = kernel.basis.shape[0] - kernel.rank
    dof = np.where(spread > 0, s * (s + 2) / (3.0 * spread), float(plain_dof))
    dof[degenerate] = np.nan
    return statistic, dof


def _effect_schur_complement(information: np.ndarray, n_effects: int) -> np.ndarray:
    """Schur complement of the nuisance block, ``H_EE - H_EN H_NN^-1 H_NE``, of matrices stored as (r, r, ...).

    Equals ``([H^-1]_EE)^-1`` (block inversion). Eliminates the nuisance indices one at a time (Gaussian
    elimination; each step is the Schur complement of one pivot, and successive steps compose), so the work is a
    few vectorised passes over (permutations x voxels) arrays.
    """
    matrix = information.copy()
    for k in range(matrix.shape[0] - 1, n_effects - 1, -1):
        column = matrix[:k, k] / matrix[k, k]
        matrix[:k, :k] -= column[:, None] * matrix[None, k, :k]
    return matrix[:n_effects, :n_effects]


def observed_statistics(
    kernel: VarianceGroupKernel, data: np.ndarray, model: PermutationModel, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """v or G of the unshuffled data (V,) and their degrees of freedom nu (V,)."""
    _, observed_data = residualise(data, model, method)
    n_rows = observed_data.shape[0]
    identity = np.arange(n_rows)[None, :]
    statistic, dof = shuffled_statistics(kernel, observed_data, observed_data**2, identity, np.ones((1, n_rows)))
    return statistic[0], dof[0]


def chunk_null_maxima(
    kernel: VarianceGroupKernel,
    data: np.ndarray,
    model: PermutationModel,
    permutations: PermutationSet,
    observed: np.ndarray,
    method: str,
    two_sided: bool,
    start: int,
    stop: int,
    block: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-element maximum of |v|, v or G over one voxel chunk, and per-voxel exceedance counts (see
    :func:`runner.inference.permutation.scores.chunk_null_maxima`, the same contract for t and F)."""
    shuffled, _ = residualise(data, model, method)
    excluded = np.isnan(observed)
    if excluded.any():
        shuffled = shuffled.copy()
        shuffled[:, excluded] = 0.0  # zero data: every group degenerate, NaN statistic, never a maximum
    squares = shuffled * shuffled
    two_sided_scores = two_sided and kernel.n_effects == 1

    def tested(first: int, last: int) -> np.ndarray:
        orders, signs = permutations.rows(first, last)
        statistic, _ = shuffled_statistics(kernel, shuffled, squares, orders, signs, with_dof=False)
        return np.abs(statistic) if two_sided_scores else statistic

    return blockwise_null(tested, observed, start, stop, block)


def statistic_to_z(statistic: np.ndarray, n_effects: int, dof: np.ndarray) -> np.ndarray:
    """z with the same one-sided upper-tail probability: v against Student's t(nu), G against F(s, nu).

    Negative v give negative z (symmetry of t). NaN stays NaN.
    """
    statistic = np.asarray(statistic, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if n_effects == 1:
            magnitude = -special.ndtri_exp(stats.t.logsf(np.abs(statistic), dof))
            return np.copysign(magnitude, statistic)
        return -special.ndtri_exp(stats.f.logsf(statistic, n_effects, dof))


def statistic_to_p(statistic: np.ndarray, n_effects: int, dof: np.ndarray) -> np.ndarray:
    """One-sided upper-tail p of v against t(nu) (as the t maps) or of G against F(s, nu)."""
    statistic = np.asarray(statistic, dtype=float)
    if n_effects == 1:
        return stats.t.sf(statistic, dof)
    return stats.f.sf(statistic, n_effects, dof)


SIGN_FLIP_REASON = ("variance groups: rows of groups with different variances are not exchangeable, so the "
                    "residuals are sign-flipped instead (independent and symmetric errors, ISE: Winkler et al. "
                    "2014), which stays valid whatever each group's variance")


def variance_group_scheme(
    requested: str, groups: np.ndarray, blocks: np.ndarray | None
) -> tuple[str, str]:
    """The permutation scheme to run with variance groups, and why.

    Permuting rows across groups of different variance is invalid even with v (measured: max-T FWE 0.45 at
    alpha 0.05, 10 vs 30 maps, sd ratio 3); permuting only within groups cannot move a between-group effect. So
    ``auto`` (and ``sign_flip``) sign-flip the residuals, as PALM's ``-ise``: each row keeps its own variance.
    ``permutation`` is kept only when every exchangeability block lies inside one variance group (rows are
    exchangeable within a group), as Winkler et al. (2014) require of variance groups and blocks.
    """
    if requested in ("auto", "sign_flip"):
        return "sign_flip", SIGN_FLIP_REASON
    codes, _ = group_codes(groups)
    if blocks is None:
        raise RunnerError("scheme 'permutation' with variance groups permutes rows of different variance; "
                          "leave the scheme to 'auto' (sign-flips) or give exchangeability blocks inside the groups")
    for block in np.unique(blocks):
        if np.unique(codes[blocks == block]).size > 1:
            raise RunnerError(f"exchangeability block {block} spans several variance groups; with variance groups "
                              "rows may be permuted only within a group: nest the blocks in the groups or leave "
                              "the scheme to 'auto' (sign-flips)")
    return "permutation", ("variance groups with exchangeability blocks nested in them: rows are permuted only "
                           "within blocks, where they share one variance")
