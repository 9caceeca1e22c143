"""model=mfx through the runner: variance maps from a table column, the maps written, refusals by file and key."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import CONF, run_analysis

from runner.errors import RunnerError

pymare = pytest.importorskip("pymare")

SHAPE = (6, 5, 4)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])


def write_study(folder: Path, n: int = 12, seed: int = 0, equal_variances: bool = False,
                bad: tuple[int, float] | None = None) -> Path:
    """n effect maps and their variance maps (float32) on a small grid, and table.tsv naming both."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    per_subject = np.full(n, 0.5) if equal_variances else np.exp(rng.uniform(np.log(0.05), np.log(5.0), n))
    rows = []
    for i in range(n):
        variance = per_subject[i] * (1.0 if equal_variances else rng.uniform(0.8, 1.2, SHAPE))
        variance = np.broadcast_to(variance, SHAPE).astype(np.float32).copy()
        effect = (0.4 + rng.standard_normal(SHAPE) * np.sqrt(variance + 0.3)).astype(np.float32)
        if bad is not None and i == bad[0]:
            variance[2, 2, 2] = bad[1]
        nib.save(nib.Nifti1Image(effect, AFFINE), folder / f"sub-{i:02d}_effect.nii.gz")
        nib.save(nib.Nifti1Image(variance, AFFINE), folder / f"sub-{i:02d}_variance.nii.gz")
        rows.append({"participant_id": f"sub-{i:02d}", "path": f"sub-{i:02d}_effect.nii.gz",
                     "variance_path": f"sub-{i:02d}_variance.nii.gz", "age": float(rng.uniform(20, 60))})
    pd.DataFrame(rows).to_csv(folder / "table.tsv", sep="\t", index=False)
    return folder / "table.tsv"


def load(run_dir: Path, name: str) -> np.ndarray:
    return np.asarray(nib.load(run_dir / name).dataobj, dtype=float)


def test_table_run_matches_pymare_at_every_voxel(tmp_path):
    from pymare.estimators import VarianceBasedLikelihoodEstimator

    table = write_study(tmp_path / "study")
    run_dir = tmp_path / "run"
    run_analysis(run_dir, ["model=mfx", f"data.table={table}", "design.formula=age",
                           "contrasts=[{name:age,expr:age}]", "correction=[fdr]", "report=false"])
    frame = pd.read_csv(table, sep="\t")
    Y = np.stack([np.asarray(nib.load(table.parent / p).dataobj, float).ravel() for p in frame["path"]])
    S = np.stack([np.asarray(nib.load(table.parent / p).dataobj, float).ravel() for p in frame["variance_path"]])
    X = np.column_stack([np.ones(len(frame)), frame["age"]])
    fitted = VarianceBasedLikelihoodEstimator(method="REML", small_sample_correction="knapp-hartung",
                                              xtol=1e-12).fit(Y, S, X).params_
    tau2 = np.ravel(fitted["tau2"])
    wald = fitted["fe_params"][1] / np.sqrt(fitted["inv_cov"][1, 1])
    # maps are float32: compare at float32 precision
    np.testing.assert_allclose(load(run_dir, "stat-tau2_statmap.nii.gz").ravel(), tau2, rtol=2e-6,
                               atol=1e-6 * S.mean())
    np.testing.assert_allclose(load(run_dir, "contrast-age_stat-t_statmap.nii.gz").ravel(), wald, rtol=2e-6,
                               atol=1e-7)
    np.testing.assert_allclose(load(run_dir, "contrast-age_stat-effect_statmap.nii.gz").ravel(),
                               fitted["fe_params"][1], rtol=2e-6, atol=1e-7)
    dof = load(run_dir, "stat-dof_statmap.nii.gz").ravel()
    assert np.all((dof >= 1) & (dof <= len(frame) - 2)) and dof.min() < len(frame) - 4


def test_equal_variances_give_the_ols_maps(tmp_path):
    table = write_study(tmp_path / "study", equal_variances=True)
    common = [f"data.table={table}", "contrasts=[{name:mean,expr:Intercept}]", "correction=[fdr]", "report=false"]
    run_analysis(tmp_path / "ols", common)
    run_analysis(tmp_path / "mfx", ["model=mfx", *common])
    for stat in ("effect", "t", "z"):
        name = f"contrast-mean_stat-{stat}_statmap.nii.gz"
        np.testing.assert_allclose(load(tmp_path / "mfx", name), load(tmp_path / "ols", name), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize(("value", "what"), [(0.0, "zero"), (-1.0, "negative"), (np.nan, "missing")])
def test_bad_variance_is_refused_with_the_file_named(tmp_path, value, what):
    table = write_study(tmp_path / "study", bad=(3, value))
    with pytest.raises(RunnerError, match=r"variance map .*sub-03_variance\.nii\.gz has 1 zero, negative or missing"):
        run_analysis(tmp_path / "run", ["model=mfx", f"data.table={table}", "report=false"])


def test_missing_variance_column_or_cell_is_refused(tmp_path):
    table = write_study(tmp_path / "study")
    with pytest.raises(RunnerError, match="no column 'variances'.*data.variance_column"):
        run_analysis(tmp_path / "a", ["model=mfx", f"data.table={table}", "data.variance_column=variances"])
    frame = pd.read_csv(table, sep="\t")
    frame.loc[4, "variance_path"] = None
    frame.to_csv(table, sep="\t", index=False)
    with pytest.raises(RunnerError, match="row 5 has no variance map"):
        run_analysis(tmp_path / "b", ["model=mfx", f"data.table={table}"])


def test_permutation_methods_test_the_mixed_effects_statistic(tmp_path):
    # maxt, clustersize and TFCE with model=mfx: the engine's observed statistic is the z map of the mixed-effects
    # fit (written by the contrast stage), the scheme is sign-flipping, and the max-T survivors are the voxels whose
    # |z| reaches the critical value of the null distribution the run wrote.
    table = write_study(tmp_path / "study", n=10)
    run_dir = tmp_path / "run"
    run_analysis(run_dir, ["model=mfx", f"data.table={table}", "contrasts=[{name:mean,expr:Intercept}]",
                           "correction=[maxt,clustersize,tfce]", "correction.maxt.n_permutations=200",
                           "correction.clustersize.n_permutations=200", "correction.tfce.n_permutations=200",
                           "correction.clustersize.cluster_forming_p=0.01", "report=false"])
    z = load(run_dir, "contrast-mean_stat-z_statmap.nii.gz")
    survivors = load(run_dir, "contrast-mean_stat-z_desc-maxt_statmap.nii.gz")
    null = pd.read_csv(run_dir / "contrast-mean_desc-maxt_nulldist.tsv", sep="\t")["max_statistic"]
    assert null.size == 200 and np.isclose(null.iloc[0], np.abs(z).max(), rtol=1e-6)
    critical = np.sort(null.to_numpy())[int(np.ceil(0.95 * null.size)) - 1]
    np.testing.assert_array_equal(survivors != 0, np.abs(z) >= critical * (1 - 1e-6))
    np.testing.assert_allclose(survivors[survivors != 0], z[survivors != 0], rtol=1e-6)
    for method in ("clustersize", "tfce"):
        assert (run_dir / f"contrast-mean_stat-z_desc-{method}_statmap.nii.gz").exists()


def test_rft_thresholds_the_mixed_effects_z_as_a_gaussian_field(tmp_path):
    # Each voxel's t has its own effective dof, so RFT runs on the z map ("Z" field): its voxel-level survivors
    # are the voxels whose |z| exceeds the recorded height threshold, itself the Z-field FWE threshold.
    import json

    table = write_study(tmp_path / "study", n=10)
    run_dir = tmp_path / "run"
    run_analysis(run_dir, ["model=mfx", f"data.table={table}", "contrasts=[{name:mean,expr:Intercept}]",
                           "correction=[rft]", "report=false"])
    z = load(run_dir, "contrast-mean_stat-z_statmap.nii.gz")
    sidecar = json.loads((run_dir / "contrast-mean_stat-z_desc-rft_statmap.json").read_text())
    assert sidecar["HeightStat"] == "Z"
    height = sidecar["HeightThreshold"]
    assert np.isfinite(height) and height > 2
    assert height == pytest.approx(sidecar["Threshold"], rel=1e-9)  # on a Z field the z threshold is the height
    survivors = load(run_dir, "contrast-mean_stat-z_desc-rft_statmap.nii.gz")
    np.testing.assert_array_equal(survivors != 0, (np.abs(z) > height) & (z != 0))


def test_mfx_refuses_variance_groups_validity_and_smoothing():
    from runner.prevalidate import prevalidate

    with pytest.raises(RunnerError, match="validity simulates null data for the OLS model"):
        prevalidate(["model=mfx", "correction=[validity]"], str(CONF))

    with pytest.raises(RunnerError, match="correction.maxt.variance_groups is for model=ols"):
        prevalidate(["model=mfx", "correction=[maxt]", "correction.maxt.variance_groups=auto"], str(CONF))
    with pytest.raises(RunnerError, match="data.smoothing_fwhm.*model=mfx"):
        prevalidate(["model=mfx", "data.smoothing_fwhm=6"], str(CONF))
    with pytest.raises(RunnerError, match="model.tau2_estimator must be one of reml, dl"):
        prevalidate(["model=mfx", "model.tau2_estimator=ml"], str(CONF))
    settings = prevalidate(["+experiment=mfx"], str(CONF))
    assert settings.model.kind == "mfx" and settings.model.tau2_estimator == "reml"
    assert prevalidate([], str(CONF)).model.kind == "ols"


def test_demo_mfx_finds_more_of_the_planted_mean_than_ols(tmp_path):
    # The 'mixed' demo: subjects' first-level variances span 100x. Weighting by 1 / (s_i + tau2) should detect more
    # voxels of the planted mean (truth > 0) than OLS, at the same FDR and Bonferroni levels, without more false
    # positives outside the blobs than the FDR level allows.
    from runner.demo.datasets import ensure_demo

    truth = np.asarray(nib.load(ensure_demo("mixed").parent / "truth_mean.nii.gz").dataobj) > 0
    found = {}
    for model in ("mfx", "ols"):
        run_dir = tmp_path / model
        run_analysis(run_dir, ["+experiment=mfx", f"model={model}", "report=false"])
        for method in ("fdr", "bonferroni"):
            survivors = load(run_dir, f"contrast-mean_stat-z_desc-{method}_statmap.nii.gz") != 0
            found[model, method] = (int((survivors & truth).sum()), int((survivors & ~truth).sum()))
    for method in ("fdr", "bonferroni"):
        assert found["mfx", method][0] > 1.25 * found["ols", method][0], found
    true_mfx, false_mfx = found["mfx", "fdr"]
    assert false_mfx <= 0.1 * (true_mfx + false_mfx), found


def test_chunks_and_workers_do_not_change_the_mixed_effects_fit():
    from runner import model
    from runner.contrasts import Contrast

    rng = np.random.default_rng(9)
    n, n_voxels = 15, 3000
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    S = np.exp(rng.uniform(-3, 1.5, (n, 1))) * rng.uniform(0.8, 1.2, (n, n_voxels))
    Y = rng.standard_normal((n, n_voxels)) * np.sqrt(S + 0.3) + 0.2
    contrasts = [Contrast("slope", np.array([[0.0, 1.0]]), "t"), Contrast("both", np.eye(2), "F")]
    whole = model.fit_contrasts_mfx(Y, S, X, contrasts)
    chunked = model.fit_contrasts_mfx(Y, S, X, contrasts, memory_budget_bytes=1, n_jobs=2)
    for a, b in zip(whole[1:3], chunked[1:3]):
        np.testing.assert_array_equal(a, b)
    for name in ("slope", "both"):
        for field in ("effect", "variance", "stat", "p", "z"):
            np.testing.assert_array_equal(getattr(whole[0][name], field), getattr(chunked[0][name], field))
    assert whole[0]["both"].stat_type == "F" and whole[0]["both"].df_num == 2


def test_f_contrast_maps_are_written(tmp_path):
    table = write_study(tmp_path / "study", n=10)
    run_dir = tmp_path / "run"
    run_analysis(run_dir, ["model=mfx", "model.tau2_estimator=dl", f"data.table={table}", "design.formula=age",
                           "contrasts=[{name:both,expr:[[1,0],[0,1]],type:F}]", "correction=[fdr]",
                           "report=false"])
    f_map = load(run_dir, "contrast-both_stat-F_statmap.nii.gz")
    assert np.all(np.isfinite(f_map)) and np.all(f_map >= 0) and f_map.max() > 0
    assert (run_dir / "contrast-both_stat-z_statmap.nii.gz").is_file()
