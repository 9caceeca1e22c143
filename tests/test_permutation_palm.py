"""PALM's extras on the permutation engine: FWE across contrasts, non-parametric combination (NPC) and tail
acceleration, checked against brute-force permutation oracles, long reference runs and null calibration (light;
``benchmarks/bench_palm.py`` runs 500+ datasets)."""

from __future__ import annotations

from dataclasses import replace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import run_analysis
from oracles import binomial_interval, reference_statistic
from planted import planted_study
from runner.errors import RunnerError
from runner.inference.permutation import PermutationOptions, fwe_p_values, permutation_inference
from runner.inference.permutation.acceleration import accelerated_p_values, fit_null
from runner.inference.permutation.npc import combine_log_p, npc_inference
from runner.inference.permutation_sets import make_permutation_set



def test_observed_measure_reproduces_every_methods_corrected_p():
    rng = np.random.default_rng(0)
    mask = np.ones((6, 6, 5), dtype=bool)
    X = np.c_[np.ones(14), rng.standard_normal(14)]
    Y = rng.standard_normal((14, mask.sum()))
    Y[:, :20] += 1.5 * X[:, 1:2]
    methods = ("maxt", "clustersize", "clustermass", "tfce")
    out = permutation_inference(Y, X, np.array([0.0, 1.0]), mask, methods,
                                PermutationOptions(n_permutations=80, cluster_forming_p=0.05))
    for method in methods:
        np.testing.assert_array_equal(fwe_p_values(out.observed_measure[method], out.null_max[method]),
                                      out.corrected_p[method], err_msg=method)


def _study_with_covariates(root):
    overrides = planted_study(root, n_maps=12)
    table = pd.read_csv(root / "table.tsv", sep="\t")
    rng = np.random.default_rng(5)
    table["x1"] = np.round(rng.standard_normal(len(table)), 3)
    table["x2"] = np.round(rng.standard_normal(len(table)), 3)
    table.to_csv(root / "table.tsv", sep="\t", index=False)
    return overrides, table


def test_across_contrasts_is_the_brute_force_maximum_over_contrasts(tmp_path):
    """Three contrasts (a mean, sign-flipped, and two covariates, permuted by default: the run must flip signs for
    all), maxima over contrasts of |t| from a direct least-squares fit of every sign-flipped residual set."""
    overrides, table = _study_with_covariates(tmp_path / "study")
    run_dir = tmp_path / "run"
    summary = run_analysis(run_dir, overrides + [
        "design=custom", "design.formula=x1 + x2", "correction=[maxt]", "correction.maxt.n_permutations=150",
        "correction.maxt.across_contrasts=true", "report=false",
        "contrasts=[{name:mean,expr:Intercept},{name:x1,expr:x1},{name:x2,expr:x2}]"])
    X = np.c_[np.ones(len(table)), table["x1"], table["x2"]]
    mask = nib.load(tmp_path / "study" / "mask.nii.gz").get_fdata() > 0
    Y = np.stack([nib.load(tmp_path / "study" / p).get_fdata()[mask] for p in table["path"]])
    flips = make_permutation_set(X, 150, 0, "sign_flip", None, False)
    _, signs = flips.rows(0, flips.size)
    null = np.zeros(flips.size)
    contrasts = {"mean": 0, "x1": 1, "x2": 2}
    for column in contrasts.values():
        c = np.eye(3)[[column]]
        Z = np.delete(X, column, axis=1)
        residuals = Y - Z @ np.linalg.lstsq(Z, Y, rcond=None)[0]  # Freedman-Lane: the nuisance-model residuals
        for j in range(flips.size):
            null[j] = max(null[j], np.abs(reference_statistic(signs[j][:, None] * residuals, X, c)).max())
    for name, column in contrasts.items():
        written = np.loadtxt(run_dir / f"contrast-{name}_desc-maxt_nulldist.tsv", skiprows=1, usecols=1)
        np.testing.assert_allclose(written, null, rtol=1e-8)
        t = reference_statistic(Y, X, np.eye(3)[[column]])
        logp = nib.load(run_dir / f"contrast-{name}_stat-logp_desc-maxt_statmap.nii.gz").get_fdata()[mask]
        expected = -np.log10((null[None, :] >= np.abs(t)[:, None] * (1 - 1e-9)).mean(axis=1))
        np.testing.assert_allclose(np.abs(logp), expected, atol=1e-9)
        row = summary["contrasts"][name]["maxt"]
        assert "FWE over contrasts mean, x1, x2" in row["across_contrasts"]


def test_across_contrasts_refuses_incomparable_cluster_maxima(tmp_path):
    overrides, _ = _study_with_covariates(tmp_path / "study")
    with pytest.raises(RunnerError, match="not comparable"):
        run_analysis(tmp_path / "run", overrides + [
            "design=custom", "design.formula=x1 + x2", "correction=[clustersize]",
            "correction.clustersize.n_permutations=20", "correction.clustersize.across_contrasts=true",
            "report=false", "contrasts=[{name:x1,expr:x1},{name:both,expr:[x1,x2],type:F}]"])


def test_tail_p_from_500_permutations_agrees_with_a_long_reference():
    """One-sample t with a range of effects: 500 sign-flips plus the GPD tail against 20,000 (Monte Carlo error of
    both, 3 sd), and p below 1/500 where the reference resolves it."""
    rng = np.random.default_rng(11)
    n, V = 20, 300
    effects = np.r_[np.linspace(0.0, 1.6, 80), np.zeros(V - 80)]
    Y = rng.standard_normal((n, V)) + effects
    X = np.ones((n, 1))
    short = permutation_inference(Y, X, np.array([1.0]), None, ("maxt",), PermutationOptions(n_permutations=500))
    long = permutation_inference(Y, X, np.array([1.0]), None, ("maxt",),
                                 PermutationOptions(n_permutations=20000, seed=1))
    fit = fit_null(short.null_max["maxt"], "tail")
    assert fit.fitted
    tail = accelerated_p_values(short.observed_measure["maxt"], short.null_max["maxt"], fit)
    reference = long.corrected_p["maxt"]
    checked = reference >= 5 / 20000
    error = 3 * np.sqrt(reference * (1 - reference) / 500) + 3 * np.sqrt(reference * (1 - reference) / 20000)
    assert np.all(np.abs(tail - reference)[checked] <= error[checked])
    below = reference <= 1 / 2500  # well below what 500 permutations resolve
    assert below.sum() >= 3 and np.all(tail[below] < 1 / 500)
    assert short.corrected_p["maxt"][below].min() == 1 / 500  # what the plain p can say at best


def _null_dataset(rng, n=20, V=120):
    X = np.c_[np.ones(n), rng.standard_normal((n, 3))]
    return rng.standard_normal((n, V)), X, [np.eye(4)[[k]] for k in (1, 2, 3)]


@pytest.mark.slow
def test_null_calibration_across_three_contrasts_and_npc():
    """Null data (3 covariate contrasts): the family-wise error over the three contrasts of maxt across contrasts,
    and of NPC (Fisher, Tippett), inside the binomial interval of 0.05 (light: 60 datasets, 100 permutations)."""
    n_datasets = 60
    rejected = {"across": 0, "fisher": 0, "tippett": 0, "separate": 0}
    options = PermutationOptions(n_permutations=100, scheme="permutation")
    for index in range(n_datasets):
        rng = np.random.default_rng(1000 + index)
        Y, X, contrasts = _null_dataset(rng)
        outcomes = [permutation_inference(Y, X, c, None, ("maxt",), replace(options, seed=index)) for c in contrasts]
        combined = np.max([o.null_max["maxt"] for o in outcomes], axis=0)
        smallest = min(fwe_p_values(o.observed_measure["maxt"], combined).min() for o in outcomes)
        rejected["across"] += smallest <= 0.05
        rejected["separate"] += min(o.corrected_p["maxt"].min() for o in outcomes) <= 0.05
        for how in ("fisher", "tippett"):
            result = npc_inference(Y, X, contrasts, how, replace(options, seed=index))
            rejected[how] += result.corrected_p.min() <= 0.05
    low, high = binomial_interval(n_datasets)
    for key in ("across", "fisher", "tippett"):
        assert low <= rejected[key] <= high, (key, rejected)
    assert rejected["separate"] >= rejected["across"]  # three separate corrections can only reject more


def test_npc_combining_functions_and_partial_tests_by_hand():
    rng = np.random.default_rng(3)
    n = 16
    X = np.c_[np.ones(n), rng.standard_normal((n, 2))]
    Y = rng.standard_normal((n, 40)) + np.outer(X[:, 1], np.linspace(0, 1, 40))
    contrasts = [np.eye(3)[[1]], np.eye(3)[[1, 2]]]
    dof = n - 3
    t = reference_statistic(Y, X, contrasts[0])
    F = reference_statistic(Y, X, contrasts[1])
    log_p = np.log([2 * stats.t.sf(np.abs(t), dof), stats.f.sf(F, 2, dof)])
    expected = {"fisher": -2 * log_p.sum(axis=0),
                "stouffer": stats.norm.isf(np.exp(log_p)).sum(axis=0) / np.sqrt(2),
                "tippett": -log_p.min(axis=0)}
    for how, value in expected.items():
        np.testing.assert_allclose(combine_log_p(log_p, how), value, rtol=1e-10)
        result = npc_inference(Y, X, contrasts, how, PermutationOptions(n_permutations=60))
        np.testing.assert_allclose(result.statistic, value, rtol=1e-8)
        np.testing.assert_array_equal(result.corrected_p, fwe_p_values(result.statistic, result.null_max))
        assert result.null_max[0] == pytest.approx(np.max(value))
    with pytest.raises(RunnerError, match="at least two partial tests"):
        npc_inference(Y, X, contrasts[:1])
    with pytest.raises(RunnerError, match="combining function"):
        npc_inference(Y, X, contrasts, "fischer")


def test_npc_null_is_the_brute_force_combination():
    """Every element's combined maximum from a direct least-squares fit of each shuffled (Freedman-Lane) data set."""
    rng = np.random.default_rng(4)
    n = 12
    X = np.c_[np.ones(n), rng.standard_normal((n, 2))]
    Y = rng.standard_normal((n, 30))
    contrasts = [np.eye(3)[[1]], np.eye(3)[[2]]]
    result = npc_inference(Y, X, contrasts, "fisher", PermutationOptions(n_permutations=40))
    orders, signs = result.permutations.rows(0, result.permutations.size)
    for j in range(result.permutations.size):
        log_p = []
        for c in contrasts:
            Z = X[:, np.flatnonzero(c[0] == 0)]
            residuals = Y - Z @ np.linalg.lstsq(Z, Y, rcond=None)[0]
            t = reference_statistic(signs[j][:, None] * residuals[orders[j]], X, c)
            log_p.append(np.log(2 * stats.t.sf(np.abs(t), n - 3)))
        assert result.null_max[j] == pytest.approx(np.max(-2 * np.sum(log_p, axis=0)), rel=1e-8)


@pytest.mark.slow
def test_npc_with_tail_in_a_run(tmp_path):
    overrides, _ = _study_with_covariates(tmp_path / "study")
    run_dir = tmp_path / "run"
    summary = run_analysis(run_dir, overrides + [
        "design=custom", "design.formula=x1 + x2", "correction=[npc]", "correction.npc.n_permutations=200",
        "correction.npc.accel=tail", "correction.npc.combine=tippett", "correction.npc.contrasts=[mean,x1]",
        "contrasts=[{name:mean,expr:Intercept},{name:x1,expr:x1},{name:x2,expr:x2}]"])
    row = summary["contrasts"]["npcTippett"]["npc"]
    assert row["combined"] == "Tippett combination of mean, x1"
    assert "sign-flips" in row["scheme_reason"]  # the mean is sign-flipped, x1 permuted by default: one scheme
    assert row["accel"] == "tail" and row["null_fit"].startswith("generalised Pareto tail above")
    assert (run_dir / "contrast-npcTippett_stat-tippett_desc-npc_statmap.nii.gz").exists()  # thresholded
    assert (run_dir / "contrast-npcTippett_stat-tippett_statmap.nii.gz").exists()  # the combined statistic
    report = (run_dir / "report.html").read_text()
    assert "Tippett combination of mean, x1" in report and "Anderson-Darling A2 =" in report
    # the strong planted effect gets a p below 1/200 from the tail, beyond what 200 permutations resolve
    logp = nib.load(run_dir / "contrast-npcTippett_stat-logp_desc-npc_statmap.nii.gz").get_fdata()
    assert logp.max() > np.log10(200)
    with pytest.raises(RunnerError, match="not a contrast of the run"):
        run_analysis(tmp_path / "run2", overrides + ["correction=[npc]", "correction.npc.contrasts=[mean,x3]",
                                                     "report=false"])


def test_z_scale_for_maxima_of_different_statistics_matches_scipy():
    from runner.inference.methods.null_maximum import AcrossContrasts, to_z

    t = np.array([0.5, 2.0, 7.5, np.nan, -np.inf])
    np.testing.assert_allclose(to_z(t[:3], "t", 1, 12, True), stats.norm.isf(2 * stats.t.sf(t[:3], 12)), rtol=1e-10)
    np.testing.assert_allclose(to_z(t[:3], "t", 1, 12, False), stats.norm.isf(stats.t.sf(t[:3], 12)), rtol=1e-10)
    F = np.array([0.3, 4.0, 40.0])
    np.testing.assert_allclose(to_z(F, "F", 2, 12, False), stats.norm.isf(stats.f.sf(F, 2, 12)), rtol=1e-10)
    z = to_z(t, "t", 1, 12, True)
    assert np.isnan(z[3]) and z[4] == -np.inf
    for stat_type, rank, two_sided, value in (("t", 1, True, 3.1), ("t", 1, False, 3.1), ("F", 2, False, 9.0)):
        view = AcrossContrasts(np.zeros(1), np.zeros(1), ("a",), "z", two_sided, stat_type, rank, 12.0)
        back = view.to_statistic(float(to_z(np.array([value]), stat_type, rank, 12, two_sided)[0]))
        assert back == pytest.approx(value, rel=1e-8)


def test_tail_on_cluster_and_tfce_nulls_updates_voxels_and_cluster_tables():
    from types import SimpleNamespace

    from runner.inference.methods.null_maximum import reassess

    rng = np.random.default_rng(8)
    mask = np.ones((8, 8, 6), dtype=bool)
    n = 16
    Y = rng.standard_normal((n, mask.sum()))
    grid = np.indices(mask.shape).reshape(3, -1).T
    Y += 1.2 * (((grid - [3, 3, 3]) ** 2).sum(axis=1) <= 3)  # a blob
    out = permutation_inference(Y, np.ones((n, 1)), np.array([1.0]), mask, ("clustersize", "tfce"),
                                PermutationOptions(n_permutations=300, cluster_forming_p=0.01))
    for method in ("clustersize", "tfce"):
        changed, facts = reassess(out, method, SimpleNamespace(accel="tail"), None)
        fit = fit_null(out.null_max[method], "tail")
        expected = accelerated_p_values(out.observed_measure[method], out.null_max[method], fit)
        np.testing.assert_array_equal(changed.corrected_p[method], expected)
        assert facts["summary"]["accel"] == "tail" and facts["summary"]["null_fit"] == fit.describe()
        # TFCE's null fits; cluster sizes of this small rough grid (few distinct values) do not: permutation p stays
        assert fit.fitted == (method == "tfce")
        if fit.fitted:
            assert changed.corrected_p[method].min() < 1 / 300  # the blob, beyond every permuted maximum
        else:
            np.testing.assert_array_equal(changed.corrected_p[method], out.corrected_p[method])
            assert facts["notes"] == [fit.describe()]
        if method == "clustersize":
            table = changed.clusters[method]
            np.testing.assert_array_equal(
                table["p_fwe"], accelerated_p_values(table["size_voxels"].to_numpy(float), out.null_max[method], fit))
        assert changed.corrected_p is not out.corrected_p and out.corrected_p[method].min() >= 1 / 300


def test_npc_is_refused_with_mixed_effects():
    from conftest import compose
    from runner.config import build_settings

    with pytest.raises(RunnerError, match="npc combines OLS partial tests"):
        build_settings(compose(["+experiment=mfx", "correction=[npc]"]))


@pytest.mark.slow
@pytest.mark.parametrize("accel", ["tail", "gamma"])
def test_null_calibration_of_accelerated_max_t(accel):
    """Null one-sample data: max-T FWE from 200 sign-flips with the fitted tail (or gamma) rejects at about alpha,
    inside the binomial interval of 0.05 (light: 150 datasets; an anti-conservative fit shows here first)."""
    n_datasets, rejected, fitted = 150, 0, 0
    for index in range(n_datasets):
        rng = np.random.default_rng(5000 + index)
        Y = rng.standard_normal((16, 150))
        outcome = permutation_inference(Y, np.ones((16, 1)), np.array([1.0]), None, ("maxt",),
                                        PermutationOptions(n_permutations=200, seed=index))
        fit = fit_null(outcome.null_max["maxt"], accel)
        fitted += fit.fitted
        p = accelerated_p_values(outcome.observed_measure["maxt"], outcome.null_max["maxt"], fit)
        rejected += p.min() <= 0.05
    low, high = binomial_interval(n_datasets)
    assert fitted >= 0.8 * n_datasets
    assert low <= rejected <= high, rejected
