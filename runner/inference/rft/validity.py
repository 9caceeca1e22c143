"""Measured validity of family-wise error control on simulated null data with a study's mask, design and smoothness.

Each null dataset is white Gaussian noise smoothed to a nominal FWHM (``scipy.ndimage.gaussian_filter`` with
sigma = FWHM / sqrt(8 ln 2) voxels, on a grid padded by four sigmas so that the field is stationary inside the mask),
fitted by OLS; the smoothness is re-estimated from its residuals, as in a real analysis (RFT uses the estimate, not
the nominal FWHM). A method makes a family-wise error when it declares anything significant. The family-wise error
rate over datasets gets a 95% Clopper-Pearson interval and a verdict: ``valid`` when alpha lies in the interval,
``conservative`` when the interval lies below alpha, ``liberal`` when above (Eklund, Nichols & Knutsson 2016, PNAS
113:7900-7905, compare cluster inference at cluster-forming p 0.01 and 0.001 in this way).

Further methods (e.g. permutation) plug in through ``extra_methods``: a callable that receives the
:class:`NullDataset` and returns whether it rejects anything at ``alpha``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy import stats as scipy_stats

from runner import glm
from runner.errors import RunnerError
from runner.inference.rft import fwe
from runner.inference.rft.ec_densities import threshold_from_p
from runner.inference.rft.resels import lattice_counts, resel_counts_from_lattice
from runner.inference.rft.smoothness import estimate_smoothness
from runner.inference.rft.table import label_clusters

FWHM_TO_SIGMA = 1.0 / np.sqrt(8.0 * np.log(2.0))
DEFAULT_CLUSTER_FORMING_PS = (0.01, 0.001)
CONFIDENCE = 0.95


@dataclass(frozen=True)
class NullDataset:
    """One simulated null dataset, as handed to extra methods."""

    index: int
    Y: np.ndarray  # (n, V) maps in the mask
    design_matrix: np.ndarray  # (n, p)
    contrast: np.ndarray  # (q, p)
    mask: np.ndarray  # 3D bool
    affine: np.ndarray
    alpha: float
    two_sided: bool
    seed: int  # a seed derived for this dataset, for methods that draw (permutations)


@dataclass(frozen=True)
class MethodValidity:
    """Family-wise error of one method over the simulated datasets."""

    method: str
    n_false_positive: int
    n_datasets: int
    fwe: float
    ci_low: float
    ci_high: float
    verdict: str  # "valid" | "conservative" | "liberal"


@dataclass(frozen=True)
class ValidityResult:
    """Family-wise error per method, the smoothness seen, and the per-dataset decisions."""

    alpha: float
    fwhm_nominal: np.ndarray  # (3,) voxels
    fwhm_estimated: np.ndarray  # (n_datasets, 3) voxels
    methods: tuple[MethodValidity, ...]
    rejections: dict[str, np.ndarray] = field(repr=False)  # method -> (n_datasets,) bool

    def table(self) -> pd.DataFrame:
        """One row per method: method, n_false_positive, n_datasets, fwe, ci_low, ci_high, verdict."""
        return pd.DataFrame([vars(m) for m in self.methods])


def clopper_pearson(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper-Pearson 1934) binomial confidence interval for a proportion."""
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if successes == 0 else float(scipy_stats.beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(scipy_stats.beta.ppf(1 - tail, successes + 1, trials - successes))
    return low, high


def verdict(alpha: float, ci_low: float, ci_high: float) -> str:
    """valid if alpha is inside the interval, conservative if the interval is below it, liberal if above."""
    if ci_high < alpha:
        return "conservative"
    if ci_low > alpha:
        return "liberal"
    return "valid"


def summarise(method: str, rejections: np.ndarray, alpha: float) -> MethodValidity:
    """FWE, Clopper-Pearson interval and verdict of one method's per-dataset rejections."""
    count, total = int(np.sum(rejections)), int(np.size(rejections))
    low, high = clopper_pearson(count, total)
    return MethodValidity(method, count, total, count / total, low, high, verdict(alpha, low, high))


def smooth_null_maps(rng: np.random.Generator, n_maps: int, mask: np.ndarray,
                     fwhm_voxels: np.ndarray) -> np.ndarray:
    """(n_maps, V) in-mask values of white noise smoothed to ``fwhm_voxels``, stationary inside the mask."""
    sigma = np.asarray(fwhm_voxels, dtype=float) * FWHM_TO_SIGMA
    pad = np.ceil(4.0 * sigma).astype(int) + 1
    pad[np.array(mask.shape) == 1] = 0
    padded_shape = tuple(int(s + 2 * p) for s, p in zip(mask.shape, pad, strict=True))
    inner = tuple(slice(int(p), int(p + s)) for s, p in zip(mask.shape, pad, strict=True))
    maps = np.empty((n_maps, int(mask.sum())))
    for i in range(n_maps):
        field_ = ndimage.gaussian_filter(rng.standard_normal(padded_shape), sigma, mode="constant")
        maps[i] = field_[inner][mask]
    return maps


def _largest_cluster(stat3d: np.ndarray, threshold: float, two_sided: bool) -> int:
    largest = 0
    for sign in (1.0, -1.0) if two_sided else (1.0,):
        labels, n = label_clusters(sign * stat3d > threshold)
        if n:
            largest = max(largest, int(np.bincount(labels.ravel())[1:].max()))
    return largest


def simulate_null_validity(
    mask: np.ndarray,
    design_matrix: np.ndarray,
    contrast: np.ndarray,
    fwhm_voxels: float | np.ndarray,
    n_datasets: int = 100,
    alpha: float = 0.05,
    cluster_forming_ps: tuple[float, ...] = DEFAULT_CLUSTER_FORMING_PS,
    two_sided: bool = False,
    seed: int = 0,
    affine: np.ndarray | None = None,
    extra_methods: Mapping[str, Callable[[NullDataset], bool]] | None = None,
) -> ValidityResult:
    """Family-wise error of RFT (voxel and cluster level) and Bonferroni on simulated null data.

    Parameters
    ----------
    mask : np.ndarray
        3D search-volume mask.
    design_matrix : np.ndarray
        (n, p) design; the null data have no effect of any regressor.
    contrast : np.ndarray
        (p,) or (1, p) for a t contrast, (q, p) with q > 1 for an F contrast.
    fwhm_voxels : float or (3,) array
        Nominal smoothness of the simulated noise.
    n_datasets : int
        Number of null datasets.
    alpha : float
        Nominal family-wise error rate.
    cluster_forming_ps : tuple of float
        Cluster-forming thresholds (uncorrected p) for cluster-level RFT; methods ``rft_cluster_p0.01`` etc.
    two_sided : bool
        Test both tails of a t contrast.
    seed : int
        Seed of the simulation (datasets are reproducible one by one).
    affine : np.ndarray or None
        4x4 affine (identity by default; only the voxel sizes matter).
    extra_methods : mapping of name -> callable(NullDataset) -> bool
        Further methods to assess on the same datasets.

    Returns
    -------
    ValidityResult
        Methods ``rft_voxel`` (SPM's min of RFT and Bonferroni), ``rft_cluster_p<cdt>`` and ``bonferroni``.
    """
    mask = np.asarray(mask) != 0
    if mask.ndim != 3 or not mask.any():
        raise RunnerError(f"the validity mask must be a non-empty 3D array, got shape {mask.shape}")
    if not 0 < alpha < 1:
        raise RunnerError(f"alpha must be in (0, 1), got {alpha!r}")
    if n_datasets < 1:
        raise RunnerError(f"n_datasets must be at least 1, got {n_datasets}")
    X = np.asarray(design_matrix, dtype=float)
    C = np.atleast_2d(np.asarray(contrast, dtype=float))
    stat_type = "t" if C.shape[0] == 1 else "F"
    if stat_type == "F" and two_sided:
        raise RunnerError("two_sided does not apply to F contrasts")
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    fwhm_nominal = np.broadcast_to(np.asarray(fwhm_voxels, dtype=float), (3,)).copy()
    counts = lattice_counts(mask)
    n_voxels = int(mask.sum())
    extra_methods = dict(extra_methods or {})

    names = ["rft_voxel", *(f"rft_cluster_p{p:g}" for p in cluster_forming_ps), "bonferroni", *extra_methods]
    rejections = {name: np.zeros(n_datasets, dtype=bool) for name in names}
    fwhm_estimated = np.empty((n_datasets, 3))
    seeds = np.random.SeedSequence(seed).spawn(n_datasets)
    log_alpha = np.log(alpha)
    for index, child in enumerate(seeds):
        rng = np.random.default_rng(child)
        Y = smooth_null_maps(rng, X.shape[0], mask, fwhm_nominal)
        fit = glm.ols_fit(Y, X)
        result = glm.compute_contrast(fit, C if stat_type == "F" else C[0], stat_type)
        df = (float(result.df_num), float(fit.dof))
        smoothness = estimate_smoothness(Y - X @ fit.beta, mask, affine, fit.dof)
        fwhm_estimated[index] = smoothness.fwhm_voxels
        counts_r = resel_counts_from_lattice(counts, smoothness.fwhm_voxels)
        stat = np.nan_to_num(result.stat, nan=0.0)
        peak = float(np.max(np.abs(stat)) if two_sided else np.max(stat))
        rejections["rft_voxel"][index] = fwe.peak_fwe_log_p(peak, stat_type, df, counts_r, n_voxels,
                                                            two_sided) <= log_alpha
        rejections["bonferroni"][index] = fwe.bonferroni_log_p(peak, stat_type, df, n_voxels,
                                                               two_sided) <= log_alpha
        stat3d = np.zeros(mask.shape)
        stat3d[mask] = stat
        for p in cluster_forming_ps:
            u = threshold_from_p(stat_type, p / 2 if two_sided else p, df)
            largest = _largest_cluster(stat3d, u, two_sided)
            if largest == 0:
                continue
            expectations = fwe.cluster_expectations(u, stat_type, df, counts_r, two_sided)
            log_p, _ = fwe.cluster_log_p(largest / smoothness.resel_size_voxels, expectations)
            rejections[f"rft_cluster_p{p:g}"][index] = float(log_p) <= log_alpha
        if extra_methods:
            dataset = NullDataset(index, Y, X, C, mask, affine, alpha, two_sided,
                                  int(child.generate_state(1)[0]))
            for name, method in extra_methods.items():
                rejections[name][index] = bool(method(dataset))
    methods = tuple(summarise(name, rejections[name], alpha) for name in names)
    return ValidityResult(alpha, fwhm_nominal, fwhm_estimated, methods, rejections)
