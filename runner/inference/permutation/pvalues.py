"""Permutation p-values with their tie rule, and the critical value an FWE threshold corresponds to.

Element 0 of the permutation set is the identity and counts as one of the ``P`` elements:
``p = #{j : null_j >= observed} / P``. For the FWE methods ``null_j`` is the maximum over the image of element
``j`` (max |t| or max t, largest cluster size or mass, max |TFCE|) and ``null_0`` is the observed maximum. With
``P = n_perm + 1`` this is nilearn's ``(1 + #{h0 >= observed}) / (1 + n_perm)``. A null value within a relative
1e-10 of the observed one counts as a tie (>=): rounding must not break the ties an exact test relies on, such as
flipping every sign (which gives -t) or swapping every pair of a paired design.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TIE_TOLERANCE = 1e-10  # null values within this relative distance of the observed one count as ties


def tie_reference(observed: np.ndarray) -> np.ndarray:
    """Observed values lowered by the tie tolerance (NaN -> +inf: never exceeded)."""
    lowered = observed - TIE_TOLERANCE * np.abs(observed)
    return np.where(np.isnan(observed), np.inf, lowered)


def blockwise_null(statistics: Callable[[int, int], np.ndarray], observed: np.ndarray, start: int, stop: int,
                   block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-element maximum and per-voxel exceedance counts of ``statistics(first, last)`` over elements
    ``start..stop`` computed ``block`` at a time.

    ``statistics`` returns the tested values (already |.| when two-sided), shape (last - first, V). This is the
    loop of the kernels that have no faster specialised form (variance groups, mixed effects).
    """
    reference = tie_reference(observed)
    maxima = np.full(stop - start, -np.inf)
    exceedances = np.zeros(observed.shape[0], dtype=np.int64)
    for first in range(start, stop, block):
        last = min(stop, first + block)
        test = statistics(first, last)
        maxima[first - start : last - start] = np.fmax.reduce(test, axis=1, initial=-np.inf)
        exceedances += np.count_nonzero(test >= reference, axis=0)
    return maxima, exceedances


def fwe_p_values(observed: np.ndarray, null_max: np.ndarray) -> np.ndarray:
    """``#{j : null_max_j >= observed} / P`` for each observed value, ties within 1e-10 (NaN observed -> 1)."""
    ordered = np.sort(null_max)
    counts = ordered.size - np.searchsorted(ordered, tie_reference(observed), side="left")
    p = counts / ordered.size
    return np.where(np.isnan(observed), 1.0, p)


def uncorrected_p_values(exceedances: np.ndarray, n_elements: int, excluded: np.ndarray) -> np.ndarray:
    """Voxel-wise ``(1 + #{j > 0 : score_j >= observed}) / P`` from counts over the non-identity elements
    (excluded voxels: 1)."""
    return np.where(excluded, 1.0, (1.0 + exceedances) / n_elements)


def critical_value(null: np.ndarray, alpha: float) -> float:
    """The value an observed maximum must exceed (strictly) for FWE p = #{null >= observed} / P to be < alpha.

    At most ceil(alpha P) - 1 null values may reach the observed one, so the bar is the ceil(alpha P)-th largest.
    """
    if not null.size:
        return float("nan")
    allowed = int(np.ceil(alpha * null.size)) - 1
    if allowed < 0:
        return float("inf")
    return float(np.sort(null)[::-1][allowed])
