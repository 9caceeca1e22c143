"""Sign-flip inference on the mixed-effects statistic (runner/inference/permutation/mixed_effects.py): each flip's
z against statsmodels WLS and PyMARE, the observed z against the maps, refusals, and a light null calibration
(the heavier one is benchmarks/bench_mfx_permutation.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from runner import mfx
from runner.errors import RunnerError
from runner.inference.permutation import MixedEffectsOptions, PermutationOptions, permutation_inference
from runner.inference.permutation import mixed_effects


def study(seed: int = 0, n: int = 14, n_voxels: int = 30, effect: float = 0.0, tau2: float = 0.2):
    rng = np.random.default_rng(seed)
    S = np.exp(rng.uniform(np.log(0.05), np.log(5.0), (n, 1))) * rng.uniform(0.8, 1.2, (n, n_voxels))
    Y = effect + rng.standard_normal((n, n_voxels)) * np.sqrt(S + tau2)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    return Y, S, X, rng


def test_fixed_weights_flip_is_statsmodels_wls_at_the_unflipped_tau2():
    # A flip's statistic with fixed weights: WLS of the flipped data with weights 1 / (s_i + tau2), tau2 of the
    # unflipped data; statsmodels' WLS t uses e'We / (n - p), the Knapp-Hartung variance. z on Kish's dof.
    import statsmodels.api as sm

    Y, S, X, rng = study()
    c = np.array([[0.0, 1.0]])
    fit = mfx.mfx_fit(Y, S, X)
    kernel = mixed_effects.make_kernel(X, c, S, tau2=fit.tau2)
    signs = rng.choice([-1.0, 1.0], size=(5, X.shape[0]))
    z = mixed_effects.flipped_statistics(kernel, Y, slice(None), signs)
    n, p = X.shape
    for b in range(signs.shape[0]):
        for v in range(0, Y.shape[1], 7):
            w = 1 / (S[:, v] + fit.tau2[v])
            t = sm.WLS(signs[b] * Y[:, v], X, weights=w).fit().tvalues[1]
            dof = np.clip(w.sum() ** 2 / (w**2).sum() - p, 1, n - p)
            np.testing.assert_allclose(z[b, v], sps.norm.isf(sps.t.sf(t, dof)), rtol=1e-8, atol=1e-10)


def test_refit_flip_matches_pymare_on_the_flipped_data():
    pymare = pytest.importorskip("pymare")
    from pymare.estimators import VarianceBasedLikelihoodEstimator

    del pymare
    Y, S, X, rng = study(seed=1, n_voxels=12)
    kernel = mixed_effects.make_kernel(X, np.array([[0.0, 1.0]]), S, weights="refit")
    signs = rng.choice([-1.0, 1.0], size=(3, X.shape[0]))
    z = mixed_effects.flipped_statistics(kernel, Y, slice(None), signs)
    n, p = X.shape
    for b in range(signs.shape[0]):
        params = VarianceBasedLikelihoodEstimator(method="REML", small_sample_correction="knapp-hartung",
                                                  xtol=1e-12).fit(signs[b][:, None] * Y, S, X).params_
        tau2 = np.ravel(params["tau2"])
        w = 1 / (S + tau2)
        wald = params["fe_params"][1] / np.sqrt(params["inv_cov"][1, 1])
        dof = np.clip(w.sum(0) ** 2 / (w**2).sum(0) - p, 1, n - p)
        np.testing.assert_allclose(z[b], sps.norm.isf(sps.t.sf(wald, dof)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weights", ["fixed", "refit"])
def test_observed_statistic_is_the_map_z_and_the_scheme_flips_signs(weights):
    Y, S, X, _ = study(seed=2, n_voxels=24, effect=0.5)
    mask = np.ones((4, 3, 2), dtype=bool)
    for c, stat_type in ((np.array([[1.0, 0.0]]), "t"), (np.eye(2), "F")):
        options = PermutationOptions(n_permutations=50, seed=1,
                                     mixed_effects=MixedEffectsOptions(S, weights=weights))
        result = permutation_inference(Y, X, c, mask, ["maxt", "tfce"], options)
        expected = mfx.compute_contrast(mfx.mfx_fit(Y, S, X), c if stat_type == "F" else c[0], stat_type).z
        np.testing.assert_allclose(result.stat, expected, rtol=1e-9, atol=1e-12)
        assert result.statistic == "z" and result.scheme == "sign_flip"
        assert result.permutations.orders is None  # rows never move
        # the identity's maximum is the observed maximum
        assert np.isclose(result.null_max["maxt"][0], np.abs(expected).max() if stat_type == "t" else expected.max())


def test_row_permutation_and_bad_variances_are_refused():
    Y, S, X, _ = study(seed=3, n_voxels=6)
    with pytest.raises(RunnerError, match="maps are not exchangeable"):
        permutation_inference(Y, X, [0.0, 1.0], None, ["maxt"],
                              PermutationOptions(n_permutations=20, scheme="permutation",
                                                 mixed_effects=MixedEffectsOptions(S)))
    with pytest.raises(RunnerError, match="positive and finite"):
        permutation_inference(Y, X, [0.0, 1.0], None, ["maxt"],
                              PermutationOptions(n_permutations=20, mixed_effects=MixedEffectsOptions(-S)))


def test_null_family_wise_error_is_calibrated_with_heterogeneous_variances():
    # Light version of benchmarks/bench_mfx_permutation.py: 120 null one-sample datasets of 16 maps whose
    # first-level variances span 100x (tau2 0.16), 36 independent voxels, 100 sign-flips, fixed weights. The max-T
    # FWE at alpha 0.05 must lie within the two-sided 99.9% binomial interval of 0.05 (the benchmark measured 0.055,
    # 95% CI [0.035, 0.082], on 400 datasets).
    rng = np.random.default_rng(2024)
    n, n_datasets = 16, 120
    mask = np.ones((6, 6, 1), dtype=bool)
    hits = 0
    for d in range(n_datasets):
        S = np.exp(rng.uniform(np.log(0.05), np.log(5.0), (n, 1))) * rng.uniform(0.8, 1.2, (n, 36))
        Y = rng.standard_normal((n, 36)) * np.sqrt(S + 0.16)
        options = PermutationOptions(n_permutations=100, seed=d, mixed_effects=MixedEffectsOptions(S))
        hits += bool((permutation_inference(Y, np.ones((n, 1)), [1.0], mask, ["maxt"], options)
                      .corrected_p["maxt"] < 0.05).any())
    low, high = sps.binom.ppf([0.0005, 0.9995], n_datasets, 0.05) / n_datasets
    assert low <= hits / n_datasets <= high, hits


def test_fixed_weights_flip_f_is_statsmodels_wls_f_test():
    import statsmodels.api as sm

    Y, S, X, rng = study(seed=4, n_voxels=12)
    X = np.column_stack([X, rng.normal(size=X.shape[0])])
    C = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    fit = mfx.mfx_fit(Y, S, X)
    kernel = mixed_effects.make_kernel(X, C, S, tau2=fit.tau2)
    signs = rng.choice([-1.0, 1.0], size=(3, X.shape[0]))
    z = mixed_effects.flipped_statistics(kernel, Y, slice(None), signs)
    n, p = X.shape
    for b in range(signs.shape[0]):
        for v in range(Y.shape[1]):
            w = 1 / (S[:, v] + fit.tau2[v])
            f = float(np.squeeze(sm.WLS(signs[b] * Y[:, v], X, weights=w).fit().f_test(C).fvalue))
            dof = np.clip(w.sum() ** 2 / (w**2).sum() - p, 1, n - p)
            np.testing.assert_allclose(z[b, v], sps.norm.isf(sps.f.sf(f, 2, dof)), rtol=1e-7, atol=1e-9)
