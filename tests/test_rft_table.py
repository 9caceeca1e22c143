"""SPM-style cluster table and footer on planted clusters, with p values from hand-written closed forms."""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from runner.inference.rft.resels import resel_counts
from runner.inference.rft.table import SearchVolume, cluster_table, spm_footer

A = 4 * np.log(2)
SHAPE = (24, 24, 24)
FWHM = 3.0
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def gaussian_rho(u: float) -> np.ndarray:
    g = np.exp(-u * u / 2)
    return np.array([stats.norm.sf(u), np.sqrt(A) / (2 * np.pi) * g, A / (2 * np.pi) ** 1.5 * u * g,
                     A**1.5 / (2 * np.pi) ** 2 * (u * u - 1) * g])


def planted_map() -> np.ndarray:
    z = np.zeros(SHAPE)
    z[4:7, 4:7, 4:7] = 3.5  # 27 voxels
    z[5, 5, 5] = 6.0  # its peak
    z[15, 15, 15] = 4.0
    z[16, 16, 15] = 4.0  # shares an edge with (15, 15, 15): one 18-connected cluster
    z[20, 4, 4] = 5.0
    z[21, 5, 5] = 5.0  # shares only a corner with (20, 4, 4): two clusters
    z[12, 20, 4:8] = -5.0  # negative cluster of 4 voxels
    return z


def volume(two_sided: bool = False) -> SearchVolume:
    mask = np.ones(SHAPE, bool)
    return SearchVolume.build("Z", None, resel_counts(mask, FWHM), FWHM, 2.0, mask.sum(), two_sided)


def test_clusters_sizes_and_p_values_match_closed_forms():
    u = 3.0
    vol = volume()
    table = cluster_table(planted_map(), np.ones(SHAPE, bool), AFFINE, vol, u)
    heads = table[~table["cluster_id"].str.contains("[a-z]")]
    # Ordered by peak height: 6 (the block), the two corner-touching voxels at 5, the edge-sharing pair at 4.
    assert heads["size_voxels"].tolist() == [27, 1, 1, 2]
    np.testing.assert_allclose(heads["size_mm3"], np.array([27, 1, 1, 2]) * 8.0)
    np.testing.assert_allclose(heads["size_resels"], np.array([27, 1, 1, 2]) / FWHM**3)
    first = table.iloc[0]
    assert (first["i"], first["j"], first["k"]) == (5, 5, 5) and first["peak_stat"] == 6.0
    np.testing.assert_allclose([first["x"], first["y"], first["z"]], [10.0, 10.0, 10.0])
    # Peak level: min(1 - exp(-sum R rho(6)), V * p) with the Gaussian densities written out.
    counts = vol.resel_counts
    rft = -np.expm1(-counts @ gaussian_rho(6.0))
    np.testing.assert_allclose(first["peak_p_fwe"], min(rft, np.prod(SHAPE) * stats.norm.sf(6.0)), rtol=1e-9)
    np.testing.assert_allclose(first["peak_p_uncorrected"], stats.norm.sf(6.0), rtol=1e-9)
    np.testing.assert_allclose(first["peak_z"], 6.0, rtol=1e-12)
    # Cluster level (Friston et al. 1994): E_c = sum R rho(u), E_k = rho0/rho3, beta = (Gamma(5/2)/E_k)^(2/3).
    rho = gaussian_rho(u)
    beta = (special.gamma(2.5) * rho[3] / rho[0]) ** (2 / 3)
    k = 27 / FWHM**3
    np.testing.assert_allclose(first["cluster_p_uncorrected"], np.exp(-beta * k ** (2 / 3)), rtol=1e-9)
    np.testing.assert_allclose(first["cluster_p_fwe"], -np.expm1(-(counts @ rho) * np.exp(-beta * k ** (2 / 3))),
                               rtol=1e-9)
    assert (table["peak_stat"] > 0).all()  # one-sided: the negative cluster is not listed


def test_two_sided_lists_negative_clusters_after_positive_ones_and_extent_threshold_filters():
    table = cluster_table(planted_map(), np.ones(SHAPE, bool), AFFINE, volume(two_sided=True), 3.0,
                          extent_threshold_voxels=2)
    heads = table[~table["cluster_id"].str.contains("[a-z]")]
    assert heads["size_voxels"].tolist() == [27, 2, 4]
    assert heads["peak_stat"].tolist()[-1] == -5.0
    np.testing.assert_allclose(heads["peak_p_uncorrected"].iloc[-1], 2 * stats.norm.sf(5.0), rtol=1e-9)
    assert heads["peak_z"].iloc[-1] < 0


def test_sub_peaks_are_more_than_eight_mm_apart():
    z = np.zeros(SHAPE)
    z[2:22, 10:13, 10:13] = 3.5  # a long bar with three bumps 12 mm apart and one 4 mm from the first
    for i, value in [(4, 7.0), (6, 6.5), (10, 6.0), (16, 5.5)]:
        z[i, 11, 11] = value
    table = cluster_table(z, np.ones(SHAPE, bool), AFFINE, volume(), 3.0)
    assert table["cluster_id"].tolist() == ["1", "1a", "1b"]
    assert table["i"].tolist() == [4, 10, 16]
    assert table["size_voxels"].isna().tolist() == [False, True, True]


def test_footer_values():
    vol = volume()
    u = 3.09
    footer = spm_footer(vol, u, extent_threshold_voxels=10)
    rho = gaussian_rho(u)
    np.testing.assert_allclose(footer["expected_voxels_per_cluster"], rho[0] / rho[3] * FWHM**3, rtol=1e-9)
    beta = (special.gamma(2.5) * rho[3] / rho[0]) ** (2 / 3)
    p_extent = np.exp(-beta * (10 / FWHM**3) ** (2 / 3))
    np.testing.assert_allclose(footer["extent_p_uncorrected"], p_extent, rtol=1e-9)
    np.testing.assert_allclose(footer["expected_number_of_clusters"], vol.resel_counts @ rho * p_extent, rtol=1e-9)
    np.testing.assert_allclose(footer["height_p_uncorrected"], stats.norm.sf(u), rtol=1e-9)
    assert footer["search_volume_mm3"] == np.prod(SHAPE) * 8.0
    np.testing.assert_allclose(footer["search_volume_resels"], (23 / FWHM) ** 3)
    assert footer["fwhm_mm"] == [6.0, 6.0, 6.0] and footer["resel_size_voxels"] == 27.0
    # The FWE extent threshold is the smallest whole number of voxels whose cluster p is at most 0.05.
    k = footer["fwe_extent_threshold_voxels"]
    assert spm_footer(vol, u, int(k))["extent_p_fwe"] <= 0.05 < spm_footer(vol, u, int(k) - 1)["extent_p_fwe"]
