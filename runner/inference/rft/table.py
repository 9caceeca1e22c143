"""SPM-style results: the cluster table with cluster- and peak-level RFT p values, and the footer values.

Semantics follow SPM12's ``spm_list`` with stationary resels (its default, ``stats.rft.nonstat = 0``): voxels strictly
above the height threshold form clusters with 18-connectivity; a cluster of N voxels has an extent of N / prod(FWHM)
resels; per cluster the FWE and uncorrected p of its extent (Friston et al. 1994), per peak the FWE p (min of RFT and
Bonferroni) and the uncorrected p of its height; up to three peaks per cluster more than 8 mm apart. The uncorrected
peak p is the exact tail probability of the statistic (SPM prints 1 - exp(-p), which differs only for large p).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from nibabel.affines import apply_affine
from scipy import ndimage

from runner import stats
from runner.inference import clusters
from runner.space.base import select_peaks
from runner.space.grid import box_maxima
from runner.inference.rft import fwe
from runner.inference.rft.ec_densities import StatType, check_df, check_stat_type, log_uncorrected_p
from runner.inference.rft.resels import search_dimension

SPM_CONNECTIVITY = 18  # spm_bwlabel / spm_max: voxels sharing a face or an edge
SPM_MIN_DISTANCE_MM = 8.0
SPM_MAX_PEAKS = 3

RFT_TABLE_COLUMNS = [
    "cluster_id", "cluster_p_fwe", "cluster_p_uncorrected", "size_voxels", "size_mm3", "size_resels",
    "peak_p_fwe", "peak_p_uncorrected", "peak_stat", "peak_z", "x", "y", "z", "i", "j", "k",
]


def label_clusters(binary3d: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components with SPM's 18-connectivity (the one place to swap in another labeller)."""
    return clusters.label(binary3d, SPM_CONNECTIVITY)


@dataclass(frozen=True)
class SearchVolume:
    """What RFT needs to know about the statistic map and its search volume."""

    stat_type: StatType
    df: tuple[float, float]  # (df_interest, df_error) as SPM; (1, inf) for Z
    resel_counts: np.ndarray  # (4,) R0..R3
    fwhm_voxels: np.ndarray  # (3,)
    voxel_size_mm: np.ndarray  # (3,)
    n_voxels: int  # voxels in the search volume (for Bonferroni and the footer)
    two_sided: bool = False

    @property
    def resels_per_voxel(self) -> float:
        """1 / prod(FWHM in voxels): SPM's V2R, the stationary conversion of cluster sizes to resels."""
        return float(1.0 / np.prod(self.fwhm_voxels))

    @classmethod
    def build(cls, stat_type: str, df, resel_counts, fwhm_voxels, voxel_size_mm, n_voxels: int,
              two_sided: bool = False) -> "SearchVolume":
        """Validated constructor (df as a number or a pair, per-axis or scalar FWHM)."""
        stat_type = check_stat_type(stat_type)
        return cls(stat_type, check_df(stat_type, df), np.asarray(resel_counts, float).ravel(),
                   np.broadcast_to(np.asarray(fwhm_voxels, float), (3,)).copy(),
                   np.broadcast_to(np.asarray(voxel_size_mm, float), (3,)).copy(), int(n_voxels), bool(two_sided))


def _peaks_of_cluster(values3d: np.ndarray, member: np.ndarray, affine: np.ndarray,
                      min_distance: float, max_peaks: int) -> tuple[np.ndarray, np.ndarray]:
    """Highest local maxima of one cluster (positive values), more than ``min_distance`` mm apart."""
    bounds = ndimage.find_objects(member.astype(np.int8))[0]
    box = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(bounds, member.shape, strict=True))
    local = np.where(member[box], values3d[box], 0.0)
    origin = np.array([s.start for s in box])
    ijk, peak_values = box_maxima(local, origin)
    xyz = (np.asarray(affine, dtype=float) @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    kept = select_peaks(xyz, peak_values, min_distance, max_peaks, strict_min_distance=True)
    return ijk[kept], peak_values[kept]


def cluster_table(
    stat3d: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    volume: SearchVolume,
    height_threshold: float,
    extent_threshold_voxels: int = 0,
    min_distance: float = SPM_MIN_DISTANCE_MM,
    max_peaks: int = SPM_MAX_PEAKS,
) -> pd.DataFrame:
    """SPM's results table: clusters above ``height_threshold`` with cluster- and peak-level p values.

    Parameters
    ----------
    stat3d : np.ndarray
        3D statistic map (t, F or Z as ``volume.stat_type``); voxels outside ``mask`` and NaN are ignored.
    mask : np.ndarray
        3D search-volume mask.
    affine : np.ndarray
        4x4 voxel-to-mm affine.
    volume : SearchVolume
        Statistic type, dof, resel counts, FWHM, voxel count and tail.
    height_threshold : float
        Cluster-forming threshold on the statistic scale (voxels strictly above it, |stat| when two-sided).
    extent_threshold_voxels : int
        Clusters smaller than this are left out of the table.
    min_distance, max_peaks : float, int
        Peaks listed per cluster: at most ``max_peaks``, more than ``min_distance`` mm from each other.

    Returns
    -------
    pandas.DataFrame
        One row per peak, columns ``RFT_TABLE_COLUMNS``; the cluster's first (highest) peak carries the cluster
        columns, further peaks (ids ``1a``, ``1b``) leave them empty. Clusters are ordered by decreasing peak
        (positive clusters first when two-sided).
    """
    values = np.where(np.asarray(mask) != 0, np.asarray(stat3d, dtype=float), np.nan)
    values[~np.isfinite(values)] = np.nan  # belongs to no cluster in either tail
    expectations = fwe.cluster_expectations(height_threshold, volume.stat_type, volume.df, volume.resel_counts,
                                            volume.two_sided)
    voxel_mm3 = float(np.prod(volume.voxel_size_mm))
    rows: list[dict] = []
    tails = [1.0, -1.0] if volume.two_sided else [1.0]
    number = 0
    for sign in tails:
        signed = sign * values
        labels, n = label_clusters(signed > height_threshold)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        maxima, _ = clusters.label_maxima(signed, labels, n)
        for index in np.argsort(-maxima, kind="stable"):
            if sizes[index] < max(extent_threshold_voxels, 1):
                continue
            number += 1
            member = labels == index + 1
            # Shifted so that every member is positive (local_maxima reads 0 as outside the cluster).
            ijk, _ = _peaks_of_cluster(np.where(member, signed - height_threshold, 0.0), member, affine,
                                       min_distance, max_peaks)
            extent_resels = sizes[index] * volume.resels_per_voxel
            log_p_cluster, log_p_cluster_unc = fwe.cluster_log_p(extent_resels, expectations)
            stat_values = values[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
            log_p_peak = fwe.peak_fwe_log_p(stat_values, volume.stat_type, volume.df, volume.resel_counts,
                                            volume.n_voxels, volume.two_sided)
            tail_stat = np.abs(stat_values) if volume.two_sided else stat_values
            log_p_unc = log_uncorrected_p(volume.stat_type, tail_stat, volume.df)
            z = stats.z_from_logsf(log_p_unc) * (np.sign(stat_values) if volume.two_sided else 1.0)
            if volume.two_sided:
                log_p_unc = log_p_unc + np.log(2.0)
            xyz = apply_affine(affine, ijk)
            for row, (voxel, position) in enumerate(zip(ijk, xyz, strict=True)):
                first = row == 0
                rows.append({
                    "cluster_id": str(number) if first else f"{number}{chr(ord('a') + row - 1)}",
                    "cluster_p_fwe": float(np.exp(log_p_cluster)) if first else np.nan,
                    "cluster_p_uncorrected": float(np.exp(log_p_cluster_unc)) if first else np.nan,
                    "size_voxels": int(sizes[index]) if first else pd.NA,
                    "size_mm3": sizes[index] * voxel_mm3 if first else np.nan,
                    "size_resels": extent_resels if first else np.nan,
                    "peak_p_fwe": float(np.exp(log_p_peak[row])),
                    "peak_p_uncorrected": float(np.exp(min(log_p_unc[row], 0.0))),
                    "peak_stat": float(stat_values[row]),
                    "peak_z": float(z[row]),
                    "x": position[0], "y": position[1], "z": position[2],
                    "i": int(voxel[0]), "j": int(voxel[1]), "k": int(voxel[2]),
                })
    table = pd.DataFrame(rows, columns=RFT_TABLE_COLUMNS)
    for column in ("size_voxels", "i", "j", "k"):
        table[column] = table[column].astype("Int64")
    table["cluster_id"] = table["cluster_id"].astype(str)
    return table


def spm_footer(
    volume: SearchVolume,
    height_threshold: float,
    extent_threshold_voxels: int = 0,
    alpha: float = 0.05,
) -> dict:
    """The values SPM prints under its results table (``spm_list``), as plain numbers.

    ``fwe_extent_threshold_voxels`` is the smallest extent whose cluster-level FWE p is at most ``alpha`` at this
    height threshold (analytic inverse); SPM's "FWEc" instead reports the smallest observed cluster with p < 0.05.
    """
    stat_type, df, counts = volume.stat_type, volume.df, volume.resel_counts
    log_p_height_unc = float(log_uncorrected_p(stat_type, height_threshold, df)) + (
        np.log(2.0) if volume.two_sided else 0.0)
    log_p_height_fwe = float(fwe.peak_fwe_log_p(height_threshold, stat_type, df, counts, volume.n_voxels,
                                                volume.two_sided))
    expectations = fwe.cluster_expectations(height_threshold, stat_type, df, counts, volume.two_sided)
    extent_resels = extent_threshold_voxels * volume.resels_per_voxel
    log_p_extent_fwe, log_p_extent_unc = fwe.cluster_log_p(extent_resels, expectations)
    fwe_extent = fwe.cluster_extent_threshold(alpha, expectations)
    dimension = search_dimension(counts)
    return {
        "height_threshold": float(height_threshold),
        "height_p_uncorrected": float(np.exp(min(log_p_height_unc, 0.0))),
        "height_p_fwe": float(np.exp(log_p_height_fwe)),
        "extent_threshold_voxels": int(extent_threshold_voxels),
        "extent_p_uncorrected": float(np.exp(log_p_extent_unc)),
        "extent_p_fwe": float(np.exp(log_p_extent_fwe)),
        "expected_voxels_per_cluster": expectations.expected_resels_per_cluster / volume.resels_per_voxel,
        "expected_number_of_clusters": float(np.exp(expectations.log_expected_clusters + log_p_extent_unc)),
        "fwe_height_threshold": fwe.fwe_height_threshold(alpha, stat_type, df, counts, volume.n_voxels,
                                                         volume.two_sided),
        "fwe_extent_threshold_voxels": float(np.ceil(fwe_extent / volume.resels_per_voxel)),
        "dof": [float(df[0]), float(df[1])],
        "fwhm_mm": (volume.fwhm_voxels * volume.voxel_size_mm).tolist(),
        "fwhm_voxels": volume.fwhm_voxels.tolist(),
        "search_volume_mm3": volume.n_voxels * float(np.prod(volume.voxel_size_mm)),
        "search_volume_voxels": volume.n_voxels,
        "search_volume_resels": float(counts[dimension]) if dimension else 0.0,
        "resel_counts": [float(c) for c in counts],
        "voxel_size_mm": volume.voxel_size_mm.tolist(),
        "resel_size_voxels": float(np.prod(volume.fwhm_voxels)),
    }
