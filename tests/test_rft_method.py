"""correction=[rft] and correction=[validity] end to end: files, manifest, thresholds recomputed from the record."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from conftest import run_analysis
from planted import POSITIVE_CENTRE, ball, planted_study
from runner.inference.methods.validity import maxt_rejects
from runner.inference.rft import fwe
from runner.inference.rft.ec_densities import threshold_from_p
from runner.inference.rft.resels import resel_counts
from runner.inference.rft.smoothness import estimate_smoothness
from runner.inference.rft.validity import NullDataset, simulate_null_validity

ALPHA = 0.05


def _load(run_dir, name):
    return nib.load(run_dir / name).get_fdata()


def _study(tmp_path):
    overrides = planted_study(tmp_path / "study")
    mask = _load(tmp_path / "study", "mask.nii.gz") > 0
    table = pd.read_csv(tmp_path / "study" / "table.tsv", sep="\t")
    Y = np.stack([_load(tmp_path / "study", path)[mask] for path in table["path"]])
    return overrides, mask, Y


@pytest.fixture(scope="module")
def rft_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("rft")
    overrides, mask, Y = _study(tmp_path)
    run_dir = tmp_path / "run"
    run_analysis(run_dir, overrides + ["correction=[rft]"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return run_dir, manifest, mask, Y


def test_rft_outputs_are_written_and_registered(rft_run):
    run_dir, manifest, _, _ = rft_run
    registered = {e["path"]: e for e in manifest["outputs"]}
    for name in ("contrast-mean_stat-logp_desc-rft_statmap.nii.gz", "contrast-mean_stat-z_desc-rft_statmap.nii.gz",
                 "contrast-mean_stat-rpv_desc-rft_statmap.nii.gz", "contrast-mean_desc-rft_clusters.tsv",
                 "contrast-mean_stat-z_desc-rft_slices.png"):
        assert (run_dir / name).is_file() and name in registered
    row = manifest["summary"]["contrasts"]["mean"]["rft"]
    assert len(row["fwhm_mm"]) == 3 and len(row["fwhm_voxels"]) == 3 and len(row["resel_counts"]) == 4
    assert row["dof"] == 11  # 12 maps, one-sample
    assert row["search_volume_mm3"] == pytest.approx(480 * 8.0)  # 10 x 8 x 6 voxels of 2 mm
    labels = [label for label, _ in row["footer"]]
    for label in ("Height threshold", "Extent threshold", "Expected voxels per cluster, <k>",
                  "Expected number of clusters, <c>", "FWHM", "Volume", "Voxel size", "RESEL size"):
        assert label in labels
    page = (run_dir / "report.html").read_text()
    assert "RESEL size" in page and "Cluster p (FWE)" in page and "contrast-mean_desc-rft_clusters.tsv" in page


def test_smoothness_recorded_is_that_of_the_one_sample_residuals(rft_run):
    _, manifest, mask, Y = rft_run
    row = manifest["summary"]["contrasts"]["mean"]["rft"]
    residuals = Y - Y.mean(axis=0)  # one-sample design: the fitted value is the mean map
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    expected = estimate_smoothness(residuals, mask, affine, dof=Y.shape[0] - 1)
    np.testing.assert_allclose(row["fwhm_voxels"], expected.fwhm_voxels, rtol=1e-6)
    np.testing.assert_allclose(row["fwhm_mm"], 2.0 * np.asarray(row["fwhm_voxels"]), rtol=1e-12)
    np.testing.assert_allclose(row["resel_counts"], resel_counts(mask, row["fwhm_voxels"]), rtol=1e-12)


def test_z_map_is_thresholded_at_the_fwe_height_threshold_and_logp_is_the_peak_p(rft_run):
    run_dir, manifest, mask, _ = rft_run
    row = manifest["summary"]["contrasts"]["mean"]["rft"]
    dof, n_voxels = row["dof"], int(mask.sum())
    counts = resel_counts(mask, row["fwhm_voxels"])
    height = fwe.fwe_height_threshold(ALPHA, "t", dof, counts, n_voxels)
    assert row["height_threshold"] == pytest.approx(height, rel=1e-9)
    t = _load(run_dir, "contrast-mean_stat-t_statmap.nii.gz")
    z = _load(run_dir, "contrast-mean_stat-z_statmap.nii.gz")
    thresholded = _load(run_dir, "contrast-mean_stat-z_desc-rft_statmap.nii.gz")
    surviving = mask & (t > height)
    assert surviving.sum() == row["n_voxels"] > 0
    np.testing.assert_array_equal(thresholded != 0, surviving)
    np.testing.assert_allclose(thresholded[surviving], z[surviving], rtol=1e-6)
    assert surviving[ball(POSITIVE_CENTRE)].any()  # the planted effect is found
    logp = _load(run_dir, "contrast-mean_stat-logp_desc-rft_statmap.nii.gz")
    expected = -np.log10(fwe.peak_fwe_p(t[mask], "t", dof, counts, n_voxels))
    np.testing.assert_allclose(logp[mask], expected, rtol=1e-5, atol=1e-6)
    assert np.all((logp[mask] > -np.log10(ALPHA)) == (t[mask] > height))


def test_cluster_table_p_values_follow_from_its_resel_extents(rft_run):
    run_dir, manifest, mask, _ = rft_run
    row = manifest["summary"]["contrasts"]["mean"]["rft"]
    dof = row["dof"]
    counts = resel_counts(mask, row["fwhm_voxels"])
    table = pd.read_csv(run_dir / "contrast-mean_desc-rft_clusters.tsv", sep="\t", na_values="n/a")
    clusters = table[table["size_voxels"].notna()]
    assert len(clusters) >= 1
    np.testing.assert_allclose(clusters["size_resels"], clusters["size_voxels"] / np.prod(row["fwhm_voxels"]),
                               rtol=1e-9)
    np.testing.assert_allclose(clusters["size_mm3"], clusters["size_voxels"] * 8.0)
    forming = threshold_from_p("t", 0.001, dof)
    expectations = fwe.cluster_expectations(forming, "t", dof, counts)
    log_p, log_p_unc = fwe.cluster_log_p(clusters["size_resels"].to_numpy(), expectations)
    np.testing.assert_allclose(clusters["cluster_p_fwe"], np.exp(log_p), rtol=1e-6)
    np.testing.assert_allclose(clusters["cluster_p_uncorrected"], np.exp(log_p_unc), rtol=1e-6)
    np.testing.assert_allclose(table["peak_p_fwe"],
                               fwe.peak_fwe_p(table["peak_stat"].to_numpy(), "t", dof, counts, int(mask.sum())),
                               rtol=1e-6)
    assert row["n_clusters"] == int((clusters["cluster_p_fwe"] < ALPHA).sum())


def test_two_sided_rft_logp_is_signed_and_doubles_the_tail(tmp_path):
    overrides, mask, _ = _study(tmp_path)
    run_dir = tmp_path / "run"
    run_analysis(run_dir, overrides + ["correction=[rft]", "correction.rft.two_sided=true", "report=false"])
    row = json.loads((run_dir / "manifest.json").read_text())["summary"]["contrasts"]["mean"]["rft"]
    counts = resel_counts(mask, row["fwhm_voxels"])
    t = _load(run_dir, "contrast-mean_stat-t_statmap.nii.gz")[mask]
    logp = _load(run_dir, "contrast-mean_stat-logp_desc-rft_statmap.nii.gz")[mask]
    unsigned = -np.log10(fwe.peak_fwe_p(np.abs(t), "t", 11, counts, int(mask.sum()), two_sided=True))
    np.testing.assert_allclose(logp, np.sign(t) * unsigned, rtol=1e-5, atol=1e-6)
    assert row["height_threshold"] == pytest.approx(
        fwe.fwe_height_threshold(ALPHA, "t", 11, counts, int(mask.sum()), two_sided=True), rel=1e-9)


def test_validity_table_figure_and_report(tmp_path):
    overrides, _, _ = _study(tmp_path)
    run_dir = tmp_path / "run"
    run_analysis(run_dir, overrides + ["correction=[validity]", "correction.validity.n_datasets=12",
                                       "correction.validity.n_permutations=20", "correction.validity.fwhm_mm=5"])
    table = pd.read_csv(run_dir / "contrast-mean_desc-validity_validity.tsv", sep="\t")
    assert list(table["method"]) == ["rft_voxel", "rft_cluster_p0.01", "rft_cluster_p0.001", "bonferroni", "maxt"]
    assert {"method", "n_datasets", "n_false_positive", "fwe", "ci_low", "ci_high", "verdict"} <= set(table.columns)
    assert (table["n_datasets"] == 12).all()
    np.testing.assert_allclose(table["fwe"], table["n_false_positive"] / 12)
    for _, record in table.iterrows():
        low, high = proportion_confint(record["n_false_positive"], 12, alpha=0.05, method="beta")
        assert record["ci_low"] == pytest.approx(low, abs=1e-12) and record["ci_high"] == pytest.approx(high)
        assert record["verdict"] == ("conservative" if high < ALPHA else "liberal" if low > ALPHA else "valid")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    row = manifest["summary"]["contrasts"]["mean"]["validity"]
    np.testing.assert_allclose(row["fwhm_mm_simulated"], [5.0, 5.0, 5.0])
    assert row["n_datasets"] == 12 and set(row["verdicts"]) == set(table["method"])
    assert (run_dir / "contrast-mean_desc-validity_intervals.png").is_file()
    page = (run_dir / "report.html").read_text()
    assert "contrast-mean_desc-validity_validity.tsv" in page and "rft_cluster_p0.001" in page


def test_validity_checks_only_the_methods_asked(tmp_path):
    overrides, _, _ = _study(tmp_path)
    run_dir = tmp_path / "run"
    run_analysis(run_dir, overrides + ["correction=[validity]", "correction.validity.n_datasets=3",
                                       "correction.validity.methods=[bonferroni,rft_cluster]",
                                       "correction.validity.cluster_forming_ps=[0.005]", "report=false"])
    table = pd.read_csv(run_dir / "contrast-mean_desc-validity_validity.tsv", sep="\t")
    assert list(table["method"]) == ["rft_cluster_p0.005", "bonferroni"]


def test_maxt_check_rejects_a_planted_effect_and_never_below_its_smallest_p():
    rng = np.random.default_rng(4)
    mask = np.ones((8, 8, 4), bool)
    Y = rng.standard_normal((12, mask.sum()))
    Y[:, :5] += 4.0
    X = np.ones((12, 1))
    make = lambda alpha: NullDataset(0, Y, X, np.ones((1, 1)), mask, np.eye(4), alpha, False, 7)  # noqa: E731
    assert maxt_rejects(200, make(ALPHA))
    assert not maxt_rejects(200, make(0.001))  # the smallest attainable p is 1/200 > 0.001


@pytest.mark.slow
def test_voxel_rft_fwe_agrees_with_permutation_max_t_on_smooth_null_data():
    # FWHM 3 voxels: voxel-level RFT (min with Bonferroni) within the binomial interval of permutation max-T's FWE.
    mask = np.zeros((18, 18, 18), bool)
    mask[1:-1, 1:-1, 1:-1] = True
    design = np.ones((10, 1))
    result = simulate_null_validity(mask, design, [1.0], 3.0, n_datasets=120, seed=11,
                                    extra_methods={"maxt": lambda d: maxt_rejects(50, d)})
    table = result.table().set_index("method")
    rft, maxt = table.loc["rft_voxel"], table.loc["maxt"]
    assert maxt["ci_low"] <= rft["fwe"] <= maxt["ci_high"]
    assert rft["ci_low"] <= ALPHA  # not liberal


def test_f_contrast_is_thresholded_on_the_f_scale(tmp_path):
    overrides, mask, _ = _study(tmp_path)
    run_dir = tmp_path / "run"
    run_analysis(run_dir, overrides + ["correction=[rft]", "contrasts=[{name:mean,expr:Intercept,type:F}]",
                                       "report=false"])
    row = json.loads((run_dir / "manifest.json").read_text())["summary"]["contrasts"]["mean"]["rft"]
    counts = resel_counts(mask, row["fwhm_voxels"])
    height = fwe.fwe_height_threshold(ALPHA, "F", (1, 11), counts, int(mask.sum()))
    assert row["height_threshold"] == pytest.approx(height, rel=1e-9)
    f = _load(run_dir, "contrast-mean_stat-F_statmap.nii.gz")
    thresholded = _load(run_dir, "contrast-mean_stat-z_desc-rft_statmap.nii.gz")
    np.testing.assert_array_equal(thresholded != 0, mask & (f > height))


def test_cluster_level_map_keeps_the_significant_clusters_above_the_forming_threshold(rft_run):
    run_dir, manifest, mask, _ = rft_run
    row = manifest["summary"]["contrasts"]["mean"]["rft"]
    t = _load(run_dir, "contrast-mean_stat-t_statmap.nii.gz")
    z = _load(run_dir, "contrast-mean_stat-z_statmap.nii.gz")
    level = _load(run_dir, "contrast-mean_stat-z_desc-rftClusterlevel_statmap.nii.gz")
    table = pd.read_csv(run_dir / "contrast-mean_desc-rft_clusters.tsv", sep="\t", na_values="n/a")
    significant = table[table["size_voxels"].notna() & (table["cluster_p_fwe"] < ALPHA)]
    assert len(significant) == row["n_clusters"] >= 1
    # components of t > u_c with 18-connectivity (faces and edges), labelled here by scipy
    from scipy import ndimage

    labels, _ = ndimage.label(mask & (t > threshold_from_p("t", 0.001, row["dof"])),
                              structure=ndimage.generate_binary_structure(3, 2))
    chosen = labels[significant["i"].astype(int), significant["j"].astype(int), significant["k"].astype(int)]
    expected = np.isin(labels, chosen)
    np.testing.assert_array_equal(level != 0, expected)
    np.testing.assert_allclose(level[expected], z[expected], rtol=1e-6)
    assert sorted(np.bincount(labels[expected])[chosen]) == sorted(significant["size_voxels"].astype(int))
    assert row["n_voxels_in_significant_clusters"] == int(expected.sum())
