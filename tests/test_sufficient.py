"""OLS from sufficient statistics over batches of subjects: statsmodels' fit, whatever the batches and the executor."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from executor_helpers import PicklingExecutor

from runner import glm
from runner.contrasts import Contrast
from runner.execution import LocalExecutor
from runner.sufficient import DesignBasis, batch_statistics, fit_contrasts_by_batches, fit_from_statistics

CONTRASTS = [Contrast("age", np.array([[0.0, 1.0, 0.0]]), "t"),
             Contrast("both", np.array([[0, 1.0, 0], [0, 0, 1.0]]), "F")]


def _study(n=57, voxels=23, seed=0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(50, 10, n), rng.integers(0, 2, n)])
    beta = np.vstack([rng.normal(100, 5, voxels), rng.normal(0, 0.05, voxels), rng.normal(0, 1, voxels)])
    Y = X @ beta + rng.normal(0, 2, (n, voxels))  # a large mean, as raw images have: hard for YᵀY − ‖UᵀY‖²
    return Y, X


def test_fit_from_summed_batches_matches_statsmodels():
    Y, X = _study()
    basis = DesignBasis.of(X)
    U = basis.U
    stats = sum((batch_statistics(Y[rows], U[rows]) for rows in (slice(20, 41), slice(41, 57))),
                batch_statistics(Y[:20], U[:20]))
    fit = fit_from_statistics(stats, basis)
    t = glm.t_contrast(fit, CONTRASTS[0].matrix)
    F = glm.f_contrast(fit, CONTRASTS[1].matrix)
    for voxel in (0, 7, 22):
        reference = sm.OLS(Y[:, voxel], X).fit()
        np.testing.assert_allclose(fit.beta[:, voxel], reference.params, rtol=1e-9)
        np.testing.assert_allclose(fit.residual_variance[voxel], reference.scale, rtol=1e-8)
        t_reference = float(np.squeeze(reference.t_test(CONTRASTS[0].matrix).tvalue))
        F_reference = float(np.squeeze(reference.f_test(CONTRASTS[1].matrix).fvalue))
        np.testing.assert_allclose(t.stat[voxel], t_reference, rtol=1e-8)
        np.testing.assert_allclose(F.stat[voxel], F_reference, rtol=1e-8)
    assert fit.dof == 54


@pytest.mark.parametrize("batch_maps", [1, 8, 57])
def test_any_batches_and_executor_give_the_direct_fit(batch_maps):
    Y, X = _study(seed=1)
    direct = {c.name: glm.compute_contrast(glm.ols_fit(Y, X), c.matrix, c.stat_type) for c in CONTRASTS}
    local = fit_contrasts_by_batches(Y, X, CONTRASTS, batch_maps=batch_maps, chunk_voxels=5,
                                     executor=LocalExecutor(2))
    remote = fit_contrasts_by_batches(Y, X, CONTRASTS, batch_maps=batch_maps, chunk_voxels=5,
                                      executor=PicklingExecutor())
    for c in CONTRASTS:
        np.testing.assert_allclose(local[c.name].stat, direct[c.name].stat, rtol=1e-8)
        np.testing.assert_allclose(local[c.name].effect, direct[c.name].effect, rtol=1e-9, atol=1e-12)
        assert local[c.name].dof == direct[c.name].dof
        assert np.array_equal(local[c.name].stat, remote[c.name].stat)  # same sums in the same order: same bits


def test_constant_voxels_get_no_statistic_and_rank_deficiency_sets_dof():
    Y, X = _study(n=30, voxels=4, seed=2)
    Y[:, 1] = 1234.5  # constant: only rounding is left of YᵀY − βᵀXᵀY
    X = np.column_stack([X, X[:, 1] * 2.0])  # a duplicated column: rank 3 of 4
    result = fit_contrasts_by_batches(Y, X, [Contrast("age", np.array([[0.0, 1.0, 0.0, 2.0]]), "t")], batch_maps=7)
    assert np.isnan(result["age"].stat[1]) and np.isfinite(result["age"].stat[[0, 2, 3]]).all()
    assert result["age"].dof == 27
    direct = glm.t_contrast(glm.ols_fit(Y, X), np.array([0.0, 1.0, 0.0, 2.0]))
    np.testing.assert_allclose(result["age"].stat[[0, 2, 3]], direct.stat[[0, 2, 3]], rtol=1e-8)


def test_a_memory_mapped_store_is_read_block_by_block(tmp_path):
    Y, X = _study(seed=3)
    stored = np.lib.format.open_memmap(tmp_path / "Y.npy", mode="w+", dtype=np.float32, shape=Y.shape)
    stored[:] = Y
    stored.flush()
    mapped = np.load(tmp_path / "Y.npy", mmap_mode="r")
    result = fit_contrasts_by_batches(mapped, X, CONTRASTS, batch_maps=10, chunk_voxels=8)
    direct = glm.t_contrast(glm.ols_fit(np.asarray(mapped, dtype=np.float64), X), CONTRASTS[0].matrix)
    np.testing.assert_allclose(result["age"].stat, direct.stat, rtol=1e-8)


def test_budget_sized_batches_match_the_voxel_chunk_loop_within_1e_10():
    """The two fits of ``model.fit`` on data with a large mean (raw images): t/F and p agree to 1e-10 relative, z to
    1e-10 of max(|z|, 1)."""
    from runner.model import fit_contrasts

    Y, X = _study(n=120, voxels=300, seed=4)
    standard = fit_contrasts(Y, X, CONTRASTS, memory_budget_bytes=4e6, n_jobs=2)
    batched = fit_contrasts_by_batches(Y, X, CONTRASTS, batch_maps=25, memory_budget_bytes=4e6,
                                       executor=LocalExecutor(2))
    for c in CONTRASTS:
        for field in ("stat", "p", "variance"):
            np.testing.assert_allclose(getattr(batched[c.name], field), getattr(standard[c.name], field),
                                       rtol=1e-10, err_msg=f"{c.name} {field}")
        # z near 0 (p near 1/2) is relative to its unit scale: 1e-10 of max(|z|, 1)
        np.testing.assert_allclose(batched[c.name].z, standard[c.name].z, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(batched[c.name].effect, standard[c.name].effect, rtol=1e-10, atol=1e-12)
        assert batched[c.name].dof == standard[c.name].dof == 117


def test_model_fit_sufficient_is_refused_with_mixed_effects_and_batches_must_be_positive():
    from conftest import compose

    from runner.config import build_settings
    from runner.errors import RunnerError

    assert build_settings(compose(["model.fit=sufficient"])).model.batch_maps == 1000
    with pytest.raises(RunnerError, match="model.fit=sufficient .* model=mfx"):
        build_settings(compose(["+experiment=mfx", "model.fit=sufficient"]))
    with pytest.raises(RunnerError, match="model.batch_maps must be > 0"):
        build_settings(compose(["model.fit=sufficient", "model.batch_maps=0"]))
    with pytest.raises(RunnerError, match="model.fit must be one of standard, sufficient"):
        build_settings(compose(["model.fit=batches"]))


def test_a_run_with_model_fit_sufficient_writes_the_standard_maps(tmp_path):
    """The demo one-sample run both ways: the float32 t/z/p maps agree to float32 rounding, thresholds and counts
    of the corrections are the same, and the log says which fit ran."""
    import json

    import nibabel as nib
    from conftest import run_analysis

    summaries = {}
    for fit in ("standard", "sufficient"):
        summaries[fit] = run_analysis(tmp_path / fit, ["report=false", f"model.fit={fit}", "model.batch_maps=7",
                                                       "cache=false"])
    manifest = json.loads((tmp_path / "standard" / "manifest.json").read_text())
    maps = [e["path"] for e in manifest["outputs"] if e["kind"] == "map" and e.get("correction") in (None, "none")]
    assert any("stat-t" in path for path in maps) and any("stat-z" in path for path in maps)
    for path in maps:
        standard = nib.load(tmp_path / "standard" / path).get_fdata()
        batched = nib.load(tmp_path / "sufficient" / path).get_fdata()
        # one float32 step, or 1e-10 of the map's scale where the value is rounding around zero (effects of 1e-17)
        np.testing.assert_allclose(batched, standard, rtol=2 ** -22, atol=1e-10 * np.abs(standard).max(),
                                   err_msg=path)
    for method, row in summaries["standard"]["contrasts"]["mean"].items():
        other = summaries["sufficient"]["contrasts"]["mean"][method]
        assert (other["n_voxels"], other["n_clusters"]) == (row["n_voxels"], row["n_clusters"]), method
        assert other["threshold"] == pytest.approx(row["threshold"], rel=1e-10)
        assert other["peak"] == pytest.approx(row["peak"], rel=1e-10)
    log = (tmp_path / "sufficient" / "run.log").read_text()
    assert "fitting OLS from sufficient statistics" in log and "batch(es) of up to 7 map(s)" in log
