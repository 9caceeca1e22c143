"""Clusters: labelling, extent thresholds and peak tables against nilearn and hand-built maps."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from oracles import smooth_z_map
from runner.errors import RunnerError
from runner.inference import clusters
from runner.inference.parametric import height_threshold

AFFINE = np.array([[3.0, 0, 0, -30], [0, 3.0, 0, -36], [0, 0, 3.0, -27], [0, 0, 0, 1]])
BLOBS = [((6, 8, 9), 6.0), ((13, 15, 8), -5.0), ((10, 18, 12), 3.5), ((15, 6, 5), 4.0)]


def nilearn_table(stat3d, threshold, cluster_threshold=0, two_sided=False, min_distance=8.0):
    reporting = pytest.importorskip("nilearn.reporting")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reporting.get_clusters_table(
            nib.Nifti1Image(stat3d, AFFINE), threshold, cluster_threshold, two_sided, min_distance
        )


def assert_same_table(ours, theirs):
    assert list(ours["cluster_id"]) == [str(name) for name in theirs["Cluster ID"]]
    np.testing.assert_allclose(ours[["x", "y", "z"]].to_numpy(float), theirs[["X", "Y", "Z"]].to_numpy(float),
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours["peak_stat"].to_numpy(float), theirs["Peak Stat"].to_numpy(float),
                               rtol=0, atol=1e-12)
    is_peak = ours["size_voxels"].notna().to_numpy()
    np.testing.assert_array_equal(is_peak, (theirs["Cluster Size (mm3)"] != "").to_numpy())
    np.testing.assert_array_equal(ours["size_mm3"].to_numpy()[is_peak].astype(int),
                                  theirs["Cluster Size (mm3)"].to_numpy()[is_peak].astype(int))


def test_connectivity_structures_count_their_neighbours():
    assert [clusters.connectivity_structure(c).sum() - 1 for c in (6, 18, 26)] == [6, 18, 26]
    with pytest.raises(RunnerError, match="6, 18 or 26"):
        clusters.connectivity_structure(8)


def test_label_joins_faces_edges_or_corners():
    edge = np.zeros((4, 4, 4), bool)
    edge[1, 1, 1] = edge[2, 2, 1] = True
    corner = np.zeros((4, 4, 4), bool)
    corner[1, 1, 1] = corner[2, 2, 2] = True
    assert [clusters.label(edge, c)[1] for c in (6, 18, 26)] == [2, 1, 1]
    assert [clusters.label(corner, c)[1] for c in (6, 18, 26)] == [2, 2, 1]


@pytest.mark.parametrize("method", ["fpr", "fdr", "bonferroni"])
@pytest.mark.parametrize("two_sided", [True, False])
@pytest.mark.parametrize("cluster_threshold", [0, 10])
def test_threshold_map_keeps_the_voxels_nilearn_keeps(method, two_sided, cluster_threshold):
    glm = pytest.importorskip("nilearn.glm")
    z, mask = smooth_z_map(0, BLOBS)
    alpha = 0.005 if method == "fpr" else 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_img, expected_threshold = glm.threshold_stats_img(
            nib.Nifti1Image(z, AFFINE), nib.Nifti1Image(mask.astype(np.uint8), AFFINE), alpha=alpha,
            height_control=method, cluster_threshold=cluster_threshold, two_sided=two_sided,
        )
    threshold = height_threshold(z[mask], method, alpha, two_sided)
    assert threshold == pytest.approx(expected_threshold, abs=1e-10)
    ours = clusters.threshold_map(z, mask, threshold, cluster_threshold, two_sided)
    expected = expected_img.get_fdata()
    assert np.count_nonzero(ours) > 0
    np.testing.assert_array_equal(ours != 0, expected != 0)
    np.testing.assert_array_equal(ours, expected)


def test_threshold_map_rules_at_the_boundaries():
    z = np.zeros((9, 5, 5))
    z[1, 2, 2] = 3.0  # exactly at the threshold: kept
    z[3:6, 2, 2] = [3.5, -3.5, -3.6]  # touching positive and negative voxels form separate clusters
    z[7, 2, 2] = np.nan
    kept = clusters.threshold_map(z, None, 3.0, cluster_threshold=2, two_sided=True)
    assert kept[1, 2, 2] == 0  # one-voxel cluster removed
    assert kept[3, 2, 2] == 0  # the positive voxel alone is a one-voxel cluster
    np.testing.assert_array_equal(kept[4:6, 2, 2], [-3.5, -3.6])  # exactly cluster_threshold voxels survive
    no_extent = clusters.threshold_map(z, None, 3.0, two_sided=False)
    assert no_extent[1, 2, 2] == 3.0 and no_extent[4, 2, 2] == 0 and no_extent[7, 2, 2] == 0
    outside = np.ones(z.shape, bool)
    outside[3, 2, 2] = False
    assert clusters.threshold_map(z, outside, 3.0)[3, 2, 2] == 0
    assert not clusters.threshold_map(z, None, np.inf).any()
    with pytest.raises(RunnerError, match=">= 0"):
        clusters.threshold_map(z, None, -1.0, two_sided=True)
    with pytest.raises(RunnerError, match="cluster_threshold"):
        clusters.threshold_map(z, None, 1.0, cluster_threshold=-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("two_sided", [True, False])
@pytest.mark.parametrize("cluster_threshold", [0, 5])
def test_cluster_table_matches_nilearn(seed, two_sided, cluster_threshold):
    z, mask = smooth_z_map(seed, BLOBS)
    z[~mask] = 0
    for threshold in (2.3, 3.1):
        ours = clusters.cluster_table(z, AFFINE, threshold, cluster_threshold, two_sided)
        theirs = nilearn_table(z, threshold, cluster_threshold, two_sided)
        assert len(ours) == len(theirs) > 0
        assert_same_table(ours, theirs)


def test_cluster_table_is_exercised_with_sub_peaks_and_both_tails():
    z, mask = smooth_z_map(0, BLOBS)
    z[~mask] = 0
    table = clusters.cluster_table(z, AFFINE, 2.0, two_sided=True, min_distance=6.0)
    assert table["cluster_id"].str.contains("[a-c]$").any()
    assert (table["peak_stat"] < 0).any() and (table["peak_stat"] > 0).any()
    peaks = table[table["size_voxels"].notna()]
    np.testing.assert_allclose(peaks["size_mm3"], peaks["size_voxels"].astype(float) * 27.0)
    ijk = table[["i", "j", "k"]].to_numpy(int)
    np.testing.assert_allclose(z[ijk[:, 0], ijk[:, 1], ijk[:, 2]], table["peak_stat"])
    np.testing.assert_allclose(ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3], table[["x", "y", "z"]].to_numpy(float))
    # cluster ids count rows, as nilearn: the first negative cluster follows the positive tail's rows
    first_negative = table.index[table["peak_stat"] < 0][0]
    assert table.loc[first_negative, "cluster_id"] == str(first_negative + 1)
    assert_same_table(table, nilearn_table(z, 2.0, two_sided=True, min_distance=6.0))


def peaks_on_a_line():
    """Peaks 10 (i=9), 9 (i=12) and 8 (i=7): the third is 6 mm from the first but 15 mm from the second."""
    z = np.zeros((20, 5, 5))
    z[6:16, 2, 2] = [2, 8, 7, 10, 6, 7, 9, 5, 3, 2]
    return z


def test_sub_peak_spacing_follows_nilearn_or_is_strict():
    z = peaks_on_a_line()
    table = clusters.cluster_table(z, AFFINE, 1.0)
    assert list(table["cluster_id"]) == ["1", "1a", "1b"]
    assert list(table["i"]) == [9, 12, 7]  # nilearn compares a candidate with the last kept peak only
    assert_same_table(table, nilearn_table(z, 1.0))
    strict = clusters.cluster_table(z, AFFINE, 1.0, strict_min_distance=True)
    assert list(strict["i"]) == [9, 12]


def test_plateaus_are_reported_at_their_centre_or_nearest_voxel():
    z = np.zeros((12, 12, 5))
    rows, columns = np.indices((12, 12))
    radius = np.hypot(rows - 5.5, columns - 5.5)
    z[(radius > 2.5) & (radius < 4.5), 2] = 4.0  # constant ring: its centre of mass is outside
    z[0:2, 0:2, 0:2] = 3.0  # constant cube in a corner: centre at a half voxel, rounded half to even
    z[8:12, 0:2, 3] = 2.5  # constant bar with an even number of voxels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn warns about the ring's centre
        theirs = nilearn_table(z, 1.0)
    ours = clusters.cluster_table(z, AFFINE, 1.0)
    assert len(ours) == 3
    assert_same_table(ours, theirs)
    ring = ours.iloc[0]
    assert z[ring["i"], ring["j"], ring["k"]] == 4.0


def test_plateau_maximum_inside_a_varying_cluster():
    z = np.zeros((10, 10, 10))
    z[2:8, 2:8, 2:8] = 2.0
    z[4:6, 4:6, 4:6] = 5.0
    z[4, 4, 7] = 6.0
    ours = clusters.cluster_table(z, AFFINE, 1.0, min_distance=2.0)
    assert_same_table(ours, nilearn_table(z, 1.0, min_distance=2.0))
    assert list(ours["peak_stat"][:2]) == [6.0, 5.0]


def test_empty_table_has_the_columns():
    table = clusters.cluster_table(np.zeros((5, 5, 5)), AFFINE, 3.0, two_sided=True)
    assert list(table.columns) == clusters.CLUSTER_TABLE_COLUMNS
    assert table.empty
    with pytest.raises(RunnerError, match="min_distance"):
        clusters.cluster_table(np.zeros((5, 5, 5)), AFFINE, 3.0, min_distance=0)
    with pytest.raises(RunnerError, match="stat_threshold"):
        clusters.cluster_table(np.zeros((5, 5, 5)), AFFINE, -3.0)


@pytest.mark.parametrize("two_sided", [True, False])
def test_cluster_extents_match_a_cluster_by_cluster_count(two_sided):
    z, _ = smooth_z_map(4, BLOBS)
    labels, sizes, masses = clusters.cluster_extents(z, 2.5, connectivity=6, two_sided=two_sided)
    positive, n_positive = ndimage.label(z > 2.5)
    negative, n_negative = ndimage.label(z < -2.5)
    expected = [(np.sum(positive == c), np.sum(z[positive == c] - 2.5)) for c in range(1, n_positive + 1)]
    if two_sided:
        expected += [(np.sum(negative == c), np.sum(-z[negative == c] - 2.5)) for c in range(1, n_negative + 1)]
    assert len(sizes) == len(expected) == labels.max()
    np.testing.assert_array_equal(sizes, [size for size, _ in expected])
    np.testing.assert_allclose(masses, [mass for _, mass in expected], rtol=1e-12)
    assert (labels[z > 2.5] <= n_positive).all()
