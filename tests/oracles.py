"""Independent references shared by the tests: small smooth maps with planted blobs, and brute-force versions of what
the package computes (least-squares statistics, cluster labelling, TFCE, closed testing), written the textbook way
with numpy and scipy.ndimage so that they share no code with runner/."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence

import numpy as np
from scipy import ndimage, stats

# Face (6), edge (18) or vertex (26) neighbours -> the rank of scipy.ndimage.generate_binary_structure.
STRUCTURE_RANK = {6: 1, 18: 2, 26: 3}

Blob = tuple[tuple[int, int, int], float]


def binomial_interval(n: int, level: float = 0.05, chance: float = 0.001) -> tuple[float, float]:
    """Rejection counts in ``n`` null datasets that a method exactly at ``level`` gives but once in ``1/chance``
    runs, either way (two-sided binomial interval)."""
    return stats.binom.ppf(chance / 2, n, level), stats.binom.isf(chance / 2, n, level)


def seed_for(name: str) -> int:
    """A seed from a test case's name that is the same in every process (``hash()`` of a str is salted per run)."""
    return zlib.crc32(name.encode("utf-8"))


# ------------------------------------------------------------------------------------------ map builders
def smooth_z_map(seed: int, blobs: Sequence[Blob], shape: tuple[int, int, int] = (20, 24, 18),
                 sigma: float = 1.2, blob_sd: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth unit-variance noise plus Gaussian blobs ``(centre, amplitude)`` of either sign, and a box mask one voxel
    inside the grid."""
    rng = np.random.default_rng(seed)
    z = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    z /= z.std()
    grid = np.indices(shape)
    for centre, amplitude in blobs:
        distance2 = sum((grid[axis] - centre[axis]) ** 2 for axis in range(3))
        z += amplitude * np.exp(-distance2 / (2 * blob_sd**2))
    mask = np.zeros(shape, dtype=bool)
    mask[1:-1, 1:-1, 1:-1] = True
    return z, mask


def smooth_volume(rng: np.random.Generator, shape=(9, 8, 7), sigma=1.0) -> np.ndarray:
    """Smooth noise scaled to a standard deviation of roughly 1 (for TFCE and labelling tests)."""
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma) / 0.2


def smooth_data(rng, n, mask, sigma=1.0, effect=None) -> np.ndarray:
    """``n`` maps of smooth noise (unit variance in the mask), plus ``effect[i]`` on map i; (n, in-mask voxels)."""
    rows = []
    for i in range(n):
        volume = ndimage.gaussian_filter(rng.standard_normal(mask.shape), sigma)
        volume /= volume[mask].std()
        if effect is not None:
            volume = volume + effect[i]
        rows.append(volume[mask])
    return np.asarray(rows)


def blob(mask, centre, amplitude, radius=1.5) -> np.ndarray:
    """A Gaussian bump ``amplitude * exp(-(d / radius)^2)`` on the grid of ``mask``."""
    grid = np.indices(mask.shape)
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
    return amplitude * np.exp(-((distance / radius) ** 2))


# ------------------------------------------------------------------------------------------ model
def reference_statistic(data: np.ndarray, design: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """t or F of every voxel from a least-squares fit (numpy lstsq), the textbook formulas."""
    beta = np.linalg.lstsq(design, data, rcond=None)[0]
    residuals = data - design @ beta
    dof = design.shape[0] - np.linalg.matrix_rank(design)
    sigma2 = (residuals**2).sum(axis=0) / dof
    unscaled = contrast @ np.linalg.pinv(design.T @ design) @ contrast.T
    effect = contrast @ beta
    if contrast.shape[0] == 1:
        return effect[0] / np.sqrt(sigma2 * unscaled[0, 0])
    quadratic = np.einsum("iv,ij,jv->v", effect, np.linalg.inv(unscaled), effect)
    return quadratic / contrast.shape[0] / sigma2


def one_sample_t(data: np.ndarray) -> np.ndarray:
    """mean / (sd / sqrt(n)) per column."""
    return data.mean(axis=0) / (data.std(axis=0, ddof=1) / np.sqrt(data.shape[0]))


# ------------------------------------------------------------------------------------------ clusters
def reference_clusters(volume: np.ndarray, threshold: float, connectivity: int, two_sided: bool):
    """Largest cluster size and mass (sum of |stat| - threshold), each tail labelled on its own."""
    structure = ndimage.generate_binary_structure(3, STRUCTURE_RANK[connectivity])
    largest_size, largest_mass = 0.0, 0.0
    for sign in (1, -1) if two_sided else (1,):
        labels, n = ndimage.label(sign * volume > threshold, structure)
        for label in range(1, n + 1):
            inside = labels == label
            largest_size = max(largest_size, float(inside.sum()))
            largest_mass = max(largest_mass, float((sign * volume[inside] - threshold).sum()))
    return largest_size, largest_mass


# ------------------------------------------------------------------------------------------ TFCE
def reference_tfce(volume: np.ndarray, connectivity: int, dh: float | None, two_sided: bool,
                   E: float = 0.5, H: float = 2.0, steps: int = 100) -> np.ndarray:
    """Sum over thresholds h = k dh of extent^E h^H dh, labelling the whole volume at every threshold
    (Smith & Nichols 2009, eq. 1 discretised)."""
    structure = ndimage.generate_binary_structure(3, STRUCTURE_RANK[connectivity])
    enhanced = np.zeros(volume.shape)
    for sign in (1, -1) if two_sided else (1,):
        tail = sign * volume
        top = tail.max()
        if top <= 0:
            continue
        if dh is None:  # the automatic step: thresholds as numpy.linspace, the last one the maximum
            step, heights = top / steps, np.linspace(0, top, steps + 1)[1:]
        else:
            step, heights = dh, dh * np.arange(1, int(top / dh) + 2)
            heights = heights[heights <= top]
        for height in heights:
            labels, _ = ndimage.label(tail >= height, structure)
            extent = np.bincount(labels.ravel()).astype(float)
            value = extent**E * height**H * step
            value[0] = 0.0
            enhanced += sign * value[labels]
    return enhanced


def reference_exact_tfce(volume: np.ndarray, connectivity: int, two_sided: bool,
                         E: float = 0.5, H: float = 2.0) -> np.ndarray:
    """The integral over h of extent^E h^H, exactly: the extent only changes at the voxels' values, so label the
    volume at every distinct value and integrate h^H in closed form from the previous value up to it."""
    structure = ndimage.generate_binary_structure(3, STRUCTURE_RANK[connectivity])
    enhanced = np.zeros(volume.shape)
    for sign in (1, -1) if two_sided else (1,):
        tail = sign * volume
        lower = 0.0
        for height in np.unique(tail[tail > 0]):  # for h in (lower, height], {tail >= h} = {tail >= height}
            labels, _ = ndimage.label(tail >= height, structure)
            extent = np.bincount(labels.ravel()).astype(float)
            value = extent**E * (height ** (H + 1) - lower ** (H + 1)) / (H + 1)
            value[0] = 0.0
            enhanced += sign * value[labels]
            lower = height
    return enhanced


def midpoint_tfce(volume: np.ndarray, connectivity: int, n_steps: int, E: float = 0.5, H: float = 2.0) -> np.ndarray:
    """Numerical integration of extent^E h^H over (0, s] by the midpoint rule with ``n_steps`` steps up to the max."""
    structure = ndimage.generate_binary_structure(3, STRUCTURE_RANK[connectivity])
    step = volume.max() / n_steps
    enhanced = np.zeros(volume.shape)
    for height in step * (np.arange(n_steps) + 0.5):
        labels, _ = ndimage.label(volume >= height, structure)
        value = np.bincount(labels.ravel()).astype(float) ** E * height**H * step
        value[0] = 0.0
        enhanced += value[labels]
    return enhanced


# ------------------------------------------------------------------------------------------ closed testing (ARI)
def simes_rejects(p_values, alpha):
    """Simes' test of the intersection hypothesis: reject when some p_(k) <= k alpha / n."""
    p_sorted = np.sort(p_values)
    n = len(p_sorted)
    return bool(np.any(p_sorted <= alpha * np.arange(1, n + 1) / n))


def hommel_by_definition(p_values, alpha):
    """Largest i such that the i largest p-values are not rejected by Simes' test."""
    p_sorted = np.sort(p_values)
    n = len(p_sorted)
    return max([0] + [i for i in range(1, n + 1) if not simes_rejects(p_sorted[n - i:], alpha)])


def closed_testing_discoveries(p_values, alpha):
    """Lower bound on true discoveries of every subset, by closed testing over all intersection hypotheses
    (Goeman & Solari 2011)."""
    n = len(p_values)
    subsets = [frozenset(s) for size in range(1, n + 1) for s in itertools.combinations(range(n), size)]
    simes = {s: simes_rejects(p_values[list(s)], alpha) for s in subsets}
    closed = {s: all(simes[t] for t in subsets if s <= t) for s in subsets}
    bound = {}
    for s in subsets:
        not_rejected = [len(t) for t in subsets if t <= s and not closed[t]]
        bound[s] = len(s) - max([0] + not_rejected)
    return bound
