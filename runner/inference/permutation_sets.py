"""The set of sign-flips or row permutations a permutation test runs through (identity first).

One element ``j`` of a set shuffles the (residualised) data as ``Y*[i] = signs[j, i] * Y[orders[j, i]]``: row
``i`` of the shuffled data is row ``orders[j, i]`` of the original, multiplied by ``signs[j, i]``. Element 0 is
always the identity, so p-values count the observed statistic as one of the ``P`` elements.

Schemes (Winkler et al. 2014, PALM's ``-ee`` / ``-ise``):
- ``"permutation"``: rows are exchangeable (exchangeable errors). Without blocks all rows are permuted; with
  exchangeability blocks rows are permuted only within their block, or, with ``whole_block``, blocks of equal
  size are permuted as units keeping their internal order.
- ``"sign_flip"``: errors are symmetric (one-sample and paired-difference designs). Each row is flipped
  independently (blocks change nothing); with ``whole_block`` all rows of a block share one sign.

Distinct elements. Two permutations that pair every data row with an identical design row give the same
statistic, so permutations are counted and enumerated up to rows of the design that are identical: a
two-sample design with groups of n1 and n2 has n!/(n1! n2!) distinct permutations, a design with a continuous
covariate n!. Sign-flips of n rows are 2^n. When that number is at most the requested ``n_permutations`` every
element is enumerated once (an exact test); otherwise ``n_permutations - 1`` elements are drawn at random after the
identity, from ``numpy.random.default_rng(seed)``: distinct sign-flip patterns (never the identity again), and
permutations with replacement (as randomise does; repeats are valid, merely wasted).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from runner.errors import RunnerError

Scheme = Literal["permutation", "sign_flip"]
SCHEMES = ("auto", "permutation", "sign_flip")


@dataclass(frozen=True)
class PermutationSet:
    """Row orders and signs of every element of a permutation test, identity first.

    Attributes
    ----------
    orders : ndarray of int32, shape (P, n), or None when rows are never reordered (sign-flips)
    signs : ndarray of int8, shape (P, n), or None when no row is flipped (permutations)
    scheme : "permutation" or "sign_flip"
    exhaustive : bool
        True when every distinct element is in the set once (exact test).
    n_possible : int
        Number of distinct elements of the scheme for this design and these blocks.
    n_rows : int
    """

    orders: np.ndarray | None
    signs: np.ndarray | None
    scheme: Scheme
    exhaustive: bool
    n_possible: int
    n_rows: int

    @property
    def size(self) -> int:
        """Number of elements P, identity included."""
        arrays = [a for a in (self.orders, self.signs) if a is not None]
        return int(arrays[0].shape[0]) if arrays else 1

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Row orders (int64) and signs (float64) of elements ``start:stop``, materialised for computation."""
        count = stop - start
        if self.orders is None:
            orders = np.broadcast_to(np.arange(self.n_rows), (count, self.n_rows))
        else:
            orders = self.orders[start:stop].astype(np.int64)
        if self.signs is None:
            signs = np.ones((count, self.n_rows))
        else:
            signs = self.signs[start:stop].astype(np.float64)
        return np.asarray(orders), signs

    def describe(self) -> str:
        """One line for run.log and the report."""
        noun = "sign-flips" if self.scheme == "sign_flip" else "permutations"
        if self.exhaustive:
            return f"enumerated all {self.size} distinct {noun} (exact test)"
        return (f"drew {self.size} {noun} at random, identity included, out of {count_text(self.n_possible)} "
                "distinct")


MAX_COUNT_DIGITS = 1000  # counts of up to this many digits are written out (every run so far)


def count_text(count: int) -> str:
    """A count for a sentence: its digits, or "about m x 10^k" beyond 1,000 of them (10,000 rows have 10,000!
    orders, whose 35,660 digits Python refuses to print by default)."""
    count = int(count)
    if count < 10**MAX_COUNT_DIGITS:
        return str(count)
    shift = max(0, count.bit_length() - 64)  # the top 64 bits give the leading digits
    log10 = math.log10(count >> shift) + shift * math.log10(2)
    whole = math.floor(log10)
    return f"about {10 ** (log10 - whole):.2f} x 10^{whole}"


def check_blocks(blocks: np.ndarray | None, n_rows: int, whole_block: bool) -> np.ndarray | None:
    """Validate exchangeability block labels (one integer per row) and return them as int64, or None."""
    if blocks is None:
        if whole_block:
            raise RunnerError("whole_block=True needs exchangeability_blocks (one block label per row)")
        return None
    labels = np.asarray(blocks)
    if labels.ndim != 1 or labels.shape[0] != n_rows:
        raise RunnerError(
            f"exchangeability_blocks must have one label per row ({n_rows}), got shape {labels.shape}"
        )
    if labels.dtype.kind not in "iub":
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise RunnerError("exchangeability_blocks must be integer labels, one per row")
    labels = labels.astype(np.int64)
    if whole_block:
        _, counts = np.unique(labels, return_counts=True)
        if np.unique(counts).size > 1:
            raise RunnerError(
                "whole_block=True needs exchangeability blocks of equal size, got sizes "
                + ", ".join(str(c) for c in sorted(set(counts.tolist())))
            )
    return labels


def _block_rows(blocks: np.ndarray | None, n_rows: int) -> list[np.ndarray]:
    """Row indices of each block (in order of first appearance), or one block holding every row."""
    if blocks is None:
        return [np.arange(n_rows)]
    _, first, inverse = np.unique(blocks, return_index=True, return_inverse=True)
    return [np.flatnonzero(inverse == b) for b in np.argsort(first)]


def invariant_subspace(blocks: np.ndarray | None, n_rows: int, whole_block: bool) -> np.ndarray:
    """Orthonormal vectors left unchanged by every permutation of the scheme (n x k).

    Within-block permutations keep each block's indicator; whole-block permutations keep the indicator of each
    position within the blocks. An effect with a component in this space cannot be tested by permuting rows.
    """
    groups = _block_rows(blocks, n_rows)
    if whole_block:
        size = groups[0].size
        columns = []
        for position in range(size):
            column = np.zeros(n_rows)
            column[[g[position] for g in groups]] = 1.0
            columns.append(column)
    else:
        columns = []
        for rows in groups:
            column = np.zeros(n_rows)
            column[rows] = 1.0
            columns.append(column)
    basis = np.column_stack(columns)
    return basis / np.linalg.norm(basis, axis=0)


def choose_scheme(effect_basis: np.ndarray, blocks: np.ndarray | None, whole_block: bool) -> Scheme:
    """Sign-flip when permuting rows cannot move the effect of interest, else permute.

    The effect is untouched by permutations when its estimator weights (``effect_basis``, n x q) have a
    component along vectors every permutation leaves in place: the intercept in a one-sample test, the block
    means in a within-block design. nilearn makes the same choice for an intercept-only tested variable.
    """
    n_rows = effect_basis.shape[0]
    invariant = invariant_subspace(blocks, n_rows, whole_block)
    overlap = np.linalg.norm(invariant.T @ effect_basis)
    return "sign_flip" if overlap > 1e-8 * max(1.0, np.linalg.norm(effect_basis)) else "permutation"


def _row_types(design: np.ndarray) -> np.ndarray:
    """Integer type of each design row: identical rows share a type."""
    _, types = np.unique(np.asarray(design, dtype=np.float64), axis=0, return_inverse=True)
    return types.ravel()


def _block_types(design: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """Integer type of each block (whole-block permutation): blocks with identical design rows share a type."""
    stacked = np.stack([np.asarray(design, dtype=np.float64)[rows].ravel() for rows in groups])
    _, types = np.unique(stacked, axis=0, return_inverse=True)
    return types.ravel()


def _multinomial(types: np.ndarray) -> int:
    """Number of distinct arrangements of a multiset: n! / prod(count!)."""
    _, counts = np.unique(types, return_counts=True)
    total = math.factorial(int(types.size))
    for count in counts:
        total //= math.factorial(int(count))
    return total


def count_distinct(
    design: np.ndarray, scheme: Scheme, blocks: np.ndarray | None, whole_block: bool
) -> int:
    """Number of distinct sign-flips or permutations (exact integer, possibly huge)."""
    n_rows = np.asarray(design).shape[0]
    groups = _block_rows(blocks, n_rows)
    if scheme == "sign_flip":
        return 2 ** (len(groups) if whole_block else n_rows)
    if whole_block:
        return _multinomial(_block_types(design, groups))
    types = _row_types(design)
    return math.prod(_multinomial(types[rows]) for rows in groups)


def _multiset_permutations(sequence: list[int]) -> Iterator[tuple[int, ...]]:
    """Every distinct ordering of a multiset, in lexicographic order (next-permutation algorithm)."""
    current = sorted(sequence)
    n = len(current)
    while True:
        yield tuple(current)
        i = n - 2
        while i >= 0 and current[i] >= current[i + 1]:
            i -= 1
        if i < 0:
            return
        j = n - 1
        while current[j] <= current[i]:
            j -= 1
        current[i], current[j] = current[j], current[i]
        current[i + 1 :] = reversed(current[i + 1 :])


def _pairing_to_order(partner: np.ndarray) -> np.ndarray:
    """Turn "data row m goes with design row partner[m]" into "design row i receives data row order[i]"."""
    order = np.empty_like(partner)
    order[partner] = np.arange(partner.size)
    return order


def _assign(types: np.ndarray, arrangement: tuple[int, ...], slots: np.ndarray) -> np.ndarray:
    """Partner of each data slot: the design slots of the requested type, taken in ascending order."""
    pools = {t: list(slots[types == t]) for t in np.unique(types)}
    return np.array([pools[t].pop(0) for t in arrangement])


def _enumerate_permutations(design: np.ndarray, blocks: np.ndarray | None, whole_block: bool) -> np.ndarray:
    n_rows = np.asarray(design).shape[0]
    groups = _block_rows(blocks, n_rows)
    if whole_block:
        block_types = _block_types(design, groups)
        slots = np.arange(len(groups))
        orders = []
        for arrangement in _multiset_permutations(block_types.tolist()):
            partner_block = _assign(block_types, arrangement, slots)
            partner = np.empty(n_rows, dtype=np.int64)
            for data_block, design_block in enumerate(partner_block):
                partner[groups[data_block]] = groups[design_block]
            orders.append(_pairing_to_order(partner))
        return np.array(orders)
    types = _row_types(design)
    per_block = []
    for rows in groups:
        options = []
        for arrangement in _multiset_permutations(types[rows].tolist()):
            options.append(_assign(types[rows], arrangement, rows))
        per_block.append(options)
    orders = []
    for combination in itertools.product(*per_block):
        partner = np.empty(n_rows, dtype=np.int64)
        for rows, chosen in zip(groups, combination, strict=True):
            partner[rows] = chosen
        orders.append(_pairing_to_order(partner))
    return np.array(orders)


def _identity_first(orders: np.ndarray) -> np.ndarray:
    identity = np.arange(orders.shape[1])
    where = np.flatnonzero(np.all(orders == identity, axis=1))
    if where.size == 0:  # cannot happen: the identity pairing is one of the enumerated ones
        raise AssertionError("the identity permutation is missing from the enumeration")
    orders[[0, where[0]]] = orders[[where[0], 0]]
    return orders


def _random_orders(
    rng: np.random.Generator, n_draws: int, groups: list[np.ndarray], n_rows: int, whole_block: bool
) -> np.ndarray:
    orders = np.empty((n_draws, n_rows), dtype=np.int64)
    if whole_block:
        block_order = rng.permuted(np.tile(np.arange(len(groups)), (n_draws, 1)), axis=1)
        stacked = np.stack(groups)  # (n_blocks, block_size)
        orders[:, stacked.ravel()] = stacked[block_order].reshape(n_draws, -1)
        return orders
    for rows in groups:
        orders[:, rows] = rng.permuted(np.tile(rows, (n_draws, 1)), axis=1)
    return orders


def make_permutation_set(
    design: np.ndarray,
    n_permutations: int,
    seed: int | None,
    scheme: Scheme,
    blocks: np.ndarray | None = None,
    whole_block: bool = False,
) -> PermutationSet:
    """Enumerate or draw the elements of a permutation test (identity first).

    Parameters
    ----------
    design : ndarray, shape (n, p)
        The design matrix; identical rows make permutations equivalent (see the module docstring).
    n_permutations : int
        Requested number of elements, identity included.
    seed : int or None
        Seed of ``numpy.random.default_rng``; the same seed gives the same set.
    scheme : "permutation" or "sign_flip"
    blocks : ndarray of int, shape (n,), optional
        Exchangeability block of each row.
    whole_block : bool
        Shuffle blocks as units (equal sizes) instead of rows within blocks.

    Returns
    -------
    PermutationSet
    """
    design = np.asarray(design, dtype=np.float64)
    if design.ndim != 2:
        raise RunnerError(f"the design matrix must be 2D, got shape {design.shape}")
    n_rows = design.shape[0]
    if scheme not in ("permutation", "sign_flip"):
        raise RunnerError(f"permutation scheme must be 'permutation' or 'sign_flip', got {scheme!r}")
    if int(n_permutations) < 2:
        raise RunnerError(f"n_permutations must be at least 2 (the identity and one more), got {n_permutations}")
    n_permutations = int(n_permutations)
    blocks = check_blocks(blocks, n_rows, whole_block)
    groups = _block_rows(blocks, n_rows)
    n_possible = count_distinct(design, scheme, blocks, whole_block)
    if n_possible < 2:
        raise RunnerError(
            f"no {scheme.replace('_', '-')} can change this design's statistic (one distinct arrangement); "
            "check the design, the exchangeability blocks and the contrast"
        )
    exhaustive = n_possible <= n_permutations
    rng = np.random.default_rng(seed)

    if scheme == "sign_flip":
        n_units = len(groups) if whole_block else n_rows
        if exhaustive:
            codes = np.arange(n_possible, dtype=np.int64)[:, None]
            bits = (codes >> np.arange(n_units, dtype=np.int64)) & 1  # code 0 (identity) first
            unit_signs = (1 - 2 * bits).astype(np.int8)
        elif n_units <= 62:  # draw distinct non-identity patterns: codes 1 .. 2^n - 1 without replacement
            codes = 1 + rng.choice(n_possible - 1, size=n_permutations - 1, replace=False).astype(np.int64)
            bits = (codes[:, None] >> np.arange(n_units, dtype=np.int64)) & 1
            unit_signs = np.vstack([np.ones((1, n_units), dtype=np.int8), (1 - 2 * bits).astype(np.int8)])
        else:  # 2^63 patterns and more: repeats are negligible
            drawn = rng.integers(0, 2, size=(n_permutations - 1, n_units), dtype=np.int8)
            unit_signs = np.vstack([np.ones((1, n_units), dtype=np.int8), (1 - 2 * drawn).astype(np.int8)])
        if whole_block:
            signs = np.empty((unit_signs.shape[0], n_rows), dtype=np.int8)
            for b, rows in enumerate(groups):
                signs[:, rows] = unit_signs[:, [b]]
        else:
            signs = unit_signs
        return PermutationSet(None, signs, "sign_flip", exhaustive, n_possible, n_rows)

    if exhaustive:
        orders = _identity_first(_enumerate_permutations(design, blocks, whole_block))
    else:
        drawn = _random_orders(rng, n_permutations - 1, groups, n_rows, whole_block)
        orders = np.vstack([np.arange(n_rows)[None, :], drawn])
    return PermutationSet(orders.astype(np.int32), None, "permutation", exhaustive, n_possible, n_rows)
