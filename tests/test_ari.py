"""All-Resolutions Inference: brute-force closed testing, nilearn's maps, null calibration and strong signal."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import binom, norm

from oracles import closed_testing_discoveries, hommel_by_definition, smooth_z_map
from runner.errors import RunnerError
from runner.inference import ari

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
BLOBS = [((6, 8, 9), 5.5), ((13, 15, 8), -4.5), ((10, 18, 12), 4.0), ((15, 6, 5), 4.5)]


@pytest.mark.parametrize("seed", range(40))
def test_hommel_value_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    p_values = np.concatenate([rng.uniform(size=n), rng.uniform(0, 1e-3, size=int(rng.integers(0, 5)))])
    assert ari.hommel_value(p_values, 0.05) == hommel_by_definition(p_values, 0.05)


def test_hommel_value_edge_cases():
    assert ari.hommel_value(np.array([0.5, 0.9, 0.2]), 0.05) == 3  # nothing below alpha
    assert ari.hommel_value(np.array([0.01, 0.02, 0.04]), 0.05) == 0  # all below alpha
    assert ari.hommel_value(np.array([0.01]), 0.05) == 0
    assert ari.hommel_value(np.array([0.5]), 0.05) == 1
    assert ari.hommel_value(np.array([0.0, 0.5, 0.6]), 0.05) == hommel_by_definition([0.0, 0.5, 0.6], 0.05) == 2


@pytest.mark.parametrize("seed", range(6))
def test_true_discoveries_equal_brute_force_closed_testing(seed):
    rng = np.random.default_rng(100 + seed)
    p_values = np.concatenate([rng.uniform(0, 0.02, size=3), rng.uniform(size=3)])
    rng.shuffle(p_values)
    hommel = ari.hommel_value(p_values, 0.1)
    for subset, expected in closed_testing_discoveries(p_values, 0.1).items():
        assert ari.true_discoveries(p_values[list(subset)], hommel, 0.1) == expected, sorted(subset)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("thresholds", [[3.0], [2.5, 3.5, 3.0]])
def test_tdp_map_equals_nilearn(seed, thresholds):
    glm = pytest.importorskip("nilearn.glm")
    z, mask = smooth_z_map(seed, BLOBS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = glm.cluster_level_inference(
            nib.Nifti1Image(z, AFFINE), nib.Nifti1Image(mask.astype(np.uint8), AFFINE),
            threshold=list(thresholds), alpha=0.05,
        ).get_fdata()
    tdp_map, table = ari.cluster_tdp(z, mask, thresholds, alpha=0.05, affine=AFFINE)
    assert (expected > 0).sum() > 20 and len(np.unique(expected)) >= 3
    np.testing.assert_allclose(tdp_map, expected, rtol=0, atol=1e-12)
    assert sorted(table["threshold"].unique()) == sorted(thresholds)


def test_table_describes_each_cluster_at_each_threshold():
    z, mask = smooth_z_map(0, BLOBS)
    tdp_map, table = ari.cluster_tdp(z, mask, (3.5, 2.5), affine=AFFINE)
    assert list(table["threshold"]) == sorted(table["threshold"])
    for threshold, rows in table.groupby("threshold"):
        labels, n_clusters = ndimage.label((z > threshold) & mask)
        assert len(rows) == n_clusters
        assert rows["size_voxels"].sum() == np.count_nonzero(labels)
        assert list(rows["cluster_id"]) == list(range(1, n_clusters + 1))
        assert (np.diff(rows["peak_stat"].to_numpy()) <= 0).all()
        np.testing.assert_allclose(rows["tdp"], rows["true_discoveries"] / rows["size_voxels"])
    peak = table[table["threshold"] == 3.5].iloc[0]  # the map shows the highest threshold's bound at its peaks
    ijk = int(peak["i"]), int(peak["j"]), int(peak["k"])
    assert tdp_map[ijk] == peak["tdp"]
    assert z[ijk] == peak["peak_stat"] == z[mask].max()
    np.testing.assert_allclose(table["size_mm3"], table["size_voxels"] * 27.0)
    np.testing.assert_allclose(table["x"], table["i"] * 3.0)


def stationary_smooth_noise(rng, shape, sigma, margin=4):
    """Smooth N(0, 1) noise with the same variance everywhere: filter a larger field, keep its interior and
    divide by the kernel's norm (filtering a finite grid would leave the edge voxels with a larger variance)."""
    impulse = np.zeros((2 * margin + 1,) * 3)
    impulse[margin, margin, margin] = 1.0
    kernel_norm = np.sqrt(np.sum(ndimage.gaussian_filter(impulse, sigma) ** 2))
    field = ndimage.gaussian_filter(rng.standard_normal([n + 2 * margin for n in shape]), sigma)
    return field[margin:-margin, margin:-margin, margin:-margin] / kernel_norm


def test_pure_noise_clusters_rarely_get_a_positive_bound():
    """Any positive bound on null data is an error; closed testing keeps that below alpha (over all clusters)."""
    rng = np.random.default_rng(7)
    shape, n_simulations, alpha = (12, 12, 12), 100, 0.05
    mask = np.ones(shape, dtype=bool)
    n_with_error, n_with_clusters = 0, 0
    for _ in range(n_simulations):
        z = stationary_smooth_noise(rng, shape, 0.8)
        tdp_map, table = ari.cluster_tdp(z, mask, (2.5,), alpha)
        n_with_clusters += len(table) > 0
        n_with_error += bool((tdp_map > 0).any())
    assert n_with_clusters > 0.9 * n_simulations
    assert n_with_error <= binom.ppf(0.975, n_simulations, alpha)


@pytest.mark.parametrize("peak", [10.0, 40.0])
def test_a_cluster_of_huge_z_values_is_almost_all_true(peak):
    z = np.random.default_rng(3).standard_normal((12, 12, 12))
    z = np.clip(z, -2.9, 2.9)
    z[4:7, 4:7, 4:7] = peak  # 40 underflows norm.sf to 0: the bound must still not exceed 1
    tdp_map, table = ari.cluster_tdp(z, np.ones(z.shape), (3.0,))
    assert len(table) == 1
    assert table["tdp"].iloc[0] == 1.0
    assert tdp_map[5, 5, 5] == 1.0 and tdp_map.max() == 1.0


def test_user_errors():
    z, mask = smooth_z_map(0, BLOBS)
    with pytest.raises(RunnerError, match="alpha"):
        ari.cluster_tdp(z, mask, (3.0,), alpha=1.0)
    with pytest.raises(RunnerError, match=">= 0"):
        ari.cluster_tdp(z, mask, (-3.0,))
    with pytest.raises(RunnerError, match="empty"):
        ari.cluster_tdp(z, np.zeros(z.shape), (3.0,))
    with pytest.raises(RunnerError, match="same shape"):
        ari.cluster_tdp(z, mask[:-1], (3.0,))
    assert ari.tdp_lower_bound(norm.sf(np.array([5.0, 6.0])), 10, 0.05) == 1.0
