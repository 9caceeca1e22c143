"""Mixed-effects model (runner/mfx.py): against PyMARE, closed forms, statsmodels WLS and null simulations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from runner import glm, mfx

pymare = pytest.importorskip("pymare")
from pymare.estimators import DerSimonianLaird, VarianceBasedLikelihoodEstimator  # noqa: E402


def small_demo(seed: int = 0, n: int = 20, n_voxels: int = 400):
    """Effects with first-level variances spanning two orders of magnitude, tau2 from 0 to 2, a covariate effect
    planted in half of the voxels and a mean effect everywhere."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    S = np.exp(rng.uniform(np.log(0.05), np.log(5.0), size=(n, 1))) * rng.uniform(0.7, 1.3, size=(n, n_voxels))
    tau2 = np.where(np.arange(n_voxels) % 4 == 0, 0.0, rng.uniform(0.0, 2.0, n_voxels))
    beta = np.vstack([np.full(n_voxels, 0.5), np.where(np.arange(n_voxels) < n_voxels // 2, 0.8, 0.0)])
    Y = X @ beta + rng.standard_normal((n, n_voxels)) * np.sqrt(S + tau2)
    return Y, S, X


def pymare_fit(Y, S, X, estimator: str, knapp_hartung: bool):
    correction = "knapp-hartung" if knapp_hartung else "wald"
    if estimator == "reml":
        model = VarianceBasedLikelihoodEstimator(method="REML", small_sample_correction=correction, xtol=1e-12)
    else:
        model = DerSimonianLaird(small_sample_correction=correction)
    params = model.fit(Y, S, X).params_
    return np.ravel(params["tau2"]), params["fe_params"], params["inv_cov"]


def restricted_log_likelihood(y, s, X, tau2):
    """REML log-likelihood of one voxel, written out densely: -(log|V| + log|X'V^-1X| + y'Py) / 2."""
    V = np.diag(s + tau2)
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    P = Vi - Vi @ X @ np.linalg.inv(XtViX) @ X.T @ Vi
    return -0.5 * (np.linalg.slogdet(V)[1] + np.linalg.slogdet(XtViX)[1] + y @ P @ y)


@pytest.mark.parametrize("estimator", ["reml", "dl"])
@pytest.mark.parametrize(("knapp_hartung", "dof"), [(True, "effective"), (True, "residual"), (False, "residual")])
def test_tau2_beta_and_z_agree_with_pymare(estimator, knapp_hartung, dof):
    # Tolerance 1e-6 relative to each quantity's scale at every voxel: tau2 against tau2 + mean s_i (the total
    # variance: a tau2 far below the first-level variances is not identified more finely by the likelihood, in
    # double precision, for either implementation), beta against its standard error, the Wald statistic
    # (PyMARE's z = beta / se) against max(|z|, 1).
    Y, S, X = small_demo()
    fit = mfx.mfx_fit(Y, S, X, estimator=estimator, knapp_hartung=knapp_hartung, dof=dof)
    tau2, beta, covariance = pymare_fit(Y, S, X, estimator, knapp_hartung)
    n, p = X.shape
    if dof == "residual":
        expected_dof = np.full(Y.shape[1], n - p)
    else:  # Kish's effective number of maps under the weights 1 / (s_i + tau2), minus p, within [1, n - p]
        w = 1 / (S + tau2)
        expected_dof = np.clip(w.sum(0) ** 2 / (w**2).sum(0) - p, 1, n - p)
        assert expected_dof.min() < n - p - 3
    np.testing.assert_allclose(fit.voxel_dof, expected_dof, rtol=1e-6)
    assert fit.converged.all()
    assert np.all(np.abs(fit.tau2 - tau2) <= 1e-6 * (tau2 + S.mean(axis=0)))
    se = np.sqrt(np.einsum("iiv->iv", covariance))
    assert np.all(np.abs(fit.beta - beta) <= 1e-6 * se)
    for column in range(X.shape[1]):
        c = np.eye(X.shape[1])[column]
        result = mfx.t_contrast(fit, c)
        z_pymare = beta[column] / se[column]
        assert np.all(np.abs(result.stat - z_pymare) <= 1e-6 * np.maximum(np.abs(z_pymare), 1.0))
        # z of the t statistic on the voxel's degrees of freedom, computed here with scipy
        expected_z = sps.norm.isf(sps.t.sf(result.stat, expected_dof))
        np.testing.assert_allclose(result.z, expected_z, rtol=1e-5, atol=1e-8)
        assert result.dof == n - p


def restricted_score(y, s, X, tau2):
    """d/dtau2 of the REML log-likelihood of one voxel, dense: (y'PPy - tr(P)) / 2 (Harville 1977)."""
    Vi = np.diag(1 / (s + tau2))
    P = Vi - Vi @ X @ np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)
    Py = P @ y
    return 0.5 * (Py @ Py - np.trace(P))


def reml_root(y, s, X):
    """The REML tau2 of one voxel found independently: 0 where the score at 0 is not positive, else Brent's root of
    the dense score (to 1e-14 of the mean first-level variance)."""
    from scipy import optimize

    if restricted_score(y, s, X, 0.0) <= 0:
        return 0.0
    high = s.mean()
    while restricted_score(y, s, X, high) > 0:
        high *= 4
    return optimize.brentq(lambda t: restricted_score(y, s, X, t), 0.0, high, xtol=1e-14 * s.mean(), rtol=1e-15,
                           maxiter=500)


def test_reml_tau2_beta_and_z_are_the_score_root_within_1e6_relative_at_every_voxel():
    # The independent reference for REML: the root of the restricted score, written densely per voxel and solved
    # by Brent's method; beta and t from statsmodels WLS at that tau2 (its scale is e'We / (n - p): Knapp-Hartung).
    # Rule for the boundary: a voxel whose tau2 is at most 1e-10 of its mean first-level variance in both counts as
    # tau2 = 0 in both (the score at 0 is then not positive); every other voxel must agree within 1e-6 relative
    # (measured: 5e-13 at worst over 1800 voxels).
    import statsmodels.api as sm

    Y, S, X = small_demo(seed=6, n_voxels=150)
    fit = mfx.mfx_fit(Y, S, X)
    t = mfx.t_contrast(fit, [0.0, 1.0]).stat
    boundary = 0
    for v in range(Y.shape[1]):
        root = reml_root(Y[:, v], S[:, v], X)
        if max(root, fit.tau2[v]) <= 1e-10 * S[:, v].mean():
            boundary += 1
        else:
            assert abs(fit.tau2[v] - root) <= 1e-6 * root, (v, fit.tau2[v], root)
        wls = sm.WLS(Y[:, v], X, weights=1 / (S[:, v] + root)).fit()
        np.testing.assert_allclose(fit.beta[:, v], wls.params, rtol=1e-6)
        np.testing.assert_allclose(t[v], wls.tvalues[1], rtol=1e-6)
    assert 10 < boundary < 100


def test_pymare_agrees_within_the_resolution_of_its_likelihood_search():
    # PyMARE minimises the likelihood by its values (a scan and parabolic steps), which in double precision cannot
    # tell apart tau2 values whose restricted likelihoods differ by less than ~1e-15 of the likelihood: near the
    # optimum that is a band of about 1e-8 of the first-level variances wide. Where tau2 is below ~1e-2 of them
    # (about 0.2% of the voxels here) 1e-6 relative is then beyond what its answer resolves, even with xtol 1e-15
    # and ftol 0. So: 1e-6 relative at every voxel, except both below 1e-10 of the mean first-level variance
    # (tau2 = 0), or within that band with a restricted likelihood no higher than ours.
    Y, S, X = small_demo(seed=0, n_voxels=2000)
    fit = mfx.mfx_fit(Y, S, X)
    ours = fit.tau2
    params = VarianceBasedLikelihoodEstimator(method="REML", small_sample_correction="knapp-hartung", xtol=1e-15,
                                              ftol=0.0, maxiter=500).fit(Y, S, X).params_
    theirs = np.ravel(params["tau2"])
    scale = S.mean(axis=0)
    zero = np.maximum(ours, theirs) <= 1e-10 * scale
    relative = ~zero & (np.abs(ours - theirs) <= 1e-6 * theirs)
    band = ~zero & ~relative
    assert band.sum() <= 0.005 * ours.size
    for v in np.flatnonzero(band):
        assert abs(ours[v] - theirs[v]) <= 1e-8 * scale[v]
        ll_ours = restricted_log_likelihood(Y[:, v], S[:, v], X, ours[v])
        ll_theirs = restricted_log_likelihood(Y[:, v], S[:, v], X, theirs[v])
        assert ll_theirs <= ll_ours + 1e-13 * abs(ll_ours)
        assert abs(restricted_score(Y[:, v], S[:, v], X, ours[v])) <= abs(
            restricted_score(Y[:, v], S[:, v], X, theirs[v]))
    # beta and the Wald z inherit PyMARE's tau2 (up to 1e-6 relative): near beta = 0 that is 1e-6 of the
    # standard error, not of beta (plain relative holds against the score root, in the test above)
    se = np.sqrt(np.einsum("iiv->iv", params["inv_cov"]))
    fine = ~band
    np.testing.assert_array_less(np.abs(fit.beta - params["fe_params"])[:, fine],
                                 1e-6 * np.maximum(np.abs(params["fe_params"]), se)[:, fine])
    for column in range(X.shape[1]):
        z = mfx.t_contrast(fit, np.eye(X.shape[1])[column]).stat
        np.testing.assert_allclose(z[fine], (params["fe_params"][column] / se[column])[fine], rtol=1e-6,
                                   atol=1e-6)


def test_reml_reaches_the_likelihood_maximum_pymare_reaches():
    Y, S, X = small_demo(seed=1, n_voxels=120)
    ours, _, _ = mfx.tau2_reml(Y, S, X)
    theirs, _, _ = pymare_fit(Y, S, X, "reml", True)
    for v in range(Y.shape[1]):
        ll_ours = restricted_log_likelihood(Y[:, v], S[:, v], X, ours[v])
        ll_theirs = restricted_log_likelihood(Y[:, v], S[:, v], X, theirs[v])
        assert ll_ours >= ll_theirs - 1e-10 * abs(ll_theirs)
    assert np.all(ours >= 0) and np.any(ours == 0) and np.any(ours > 0.5)


def test_dersimonian_laird_closed_form_one_voxel():
    # Q = sum w (y - ybar_w)^2 with w = 1/s; tau2 = (Q - (n-1)) / (sum w - sum w^2 / sum w) (DerSimonian & Laird 1986)
    rng = np.random.default_rng(3)
    y, s = rng.normal(size=15) * 2, rng.uniform(0.1, 1.0, 15)
    w = 1 / s
    q = np.sum(w * (y - np.sum(w * y) / w.sum()) ** 2)
    expected = max(0.0, (q - 14) / (w.sum() - np.sum(w**2) / w.sum()))
    assert expected > 0
    np.testing.assert_allclose(mfx.tau2_dersimonian_laird(y[:, None], s[:, None], np.ones((15, 1))), [expected],
                               rtol=1e-12)


@pytest.mark.parametrize("estimator", ["reml", "dl"])
def test_equal_first_level_variances_reduce_to_ols(estimator):
    # With s_i = s at a voxel: beta is the OLS beta; both estimators give tau2 = max(0, sigma2_ols - s) (REML's
    # restricted likelihood in s + tau2 peaks at RSS / (n - p); DL's Q = RSS / s and tr(P) = (n - p) / s).
    # Knapp-Hartung t equals the OLS t at every voxel; the model-based t equals it where tau2 > 0 and is
    # t_ols * sigma_ols / sqrt(s) where tau2 = 0.
    rng = np.random.default_rng(4)
    n, n_voxels = 16, 300
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    Y = rng.normal(size=(n, n_voxels)) * rng.uniform(0.5, 2.0, n_voxels) + 0.3
    s = rng.uniform(0.1, 4.0, n_voxels)
    S = np.broadcast_to(s, (n, n_voxels)).copy()
    ols = glm.ols_fit(Y, X)
    c = np.array([0.0, 1.0, -0.5])
    t_ols = glm.t_contrast(ols, c).stat
    kh = mfx.mfx_fit(Y, S, X, estimator=estimator, knapp_hartung=True)
    np.testing.assert_allclose(kh.beta, ols.beta, rtol=1e-9, atol=1e-12)
    expected_tau2 = np.maximum(0.0, ols.residual_variance - s)
    assert (expected_tau2 == 0).sum() > 20 and (expected_tau2 > 0).sum() > 20
    np.testing.assert_allclose(kh.tau2, expected_tau2, rtol=1e-8, atol=1e-10 * s.max())
    np.testing.assert_allclose(mfx.t_contrast(kh, c).stat, t_ols, rtol=1e-9)
    model_based = mfx.t_contrast(mfx.mfx_fit(Y, S, X, estimator=estimator, knapp_hartung=False), c).stat
    positive = expected_tau2 > 0
    np.testing.assert_allclose(model_based[positive], t_ols[positive], rtol=1e-7)
    shrunk = t_ols * np.sqrt(ols.residual_variance / s)
    np.testing.assert_allclose(model_based[~positive], shrunk[~positive], rtol=1e-7)


def test_f_contrast_matches_statsmodels_wls_at_the_fitted_tau2():
    import statsmodels.api as sm

    Y, S, X = small_demo(seed=5, n_voxels=30)
    X = np.column_stack([X, np.random.default_rng(55).normal(size=X.shape[0])])
    fit = mfx.mfx_fit(Y, S, X, dof="residual")  # statsmodels refers F to (q, n - p)
    C = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    result = mfx.f_contrast(fit, C)
    assert result.stat_type == "F" and result.df_num == 2 and result.dof == X.shape[0] - 3
    for v in range(Y.shape[1]):
        # statsmodels' WLS scales (X'WX)^-1 by e'We / (n - p): the Knapp-Hartung variance.
        wls = sm.WLS(Y[:, v], X, weights=1 / (S[:, v] + fit.tau2[v])).fit()
        test = wls.f_test(C)
        np.testing.assert_allclose(result.stat[v], float(np.squeeze(test.fvalue)), rtol=1e-8)
        np.testing.assert_allclose(result.p[v], float(test.pvalue), rtol=1e-6, atol=1e-300)
    one_row = mfx.f_contrast(fit, C[:1])
    np.testing.assert_allclose(one_row.stat, mfx.t_contrast(fit, C[0]).stat ** 2, rtol=1e-9)


def null_p_values(n_datasets: int, n_voxels: int, n: int, tau2: float, dof: str, seed: int):
    """One-sided p of the mean, under the null, at n_datasets x n_voxels independent voxels; each dataset draws its
    subjects' first-level variances log-uniformly over 0.05-5 (100x)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_datasets):
        S = np.exp(rng.uniform(np.log(0.05), np.log(5.0), size=(n, 1))) * rng.uniform(0.8, 1.2, (n, n_voxels))
        Y = rng.standard_normal((n, n_voxels)) * np.sqrt(S + tau2)
        fit = mfx.mfx_fit(Y, S, np.ones((n, 1)), dof=dof)
        out.append(mfx.t_contrast(fit, [1.0]).p)
    return np.array(out)


@pytest.mark.parametrize("tau2", [0.0, 0.16, 0.5])
def test_null_error_rates_are_calibrated(tau2):
    # Light version of benchmarks/bench_mfx.py: 200 null datasets of 200 independent voxels, 24 subjects. Bonferroni
    # FWE (two-sided, alpha 0.05; on independent voxels FDR's error under the complete null is the same event) must
    # stay within the 99.9% binomial upper bound of 0.05; per-voxel rates within a loose band (Knapp-Hartung with
    # estimated weights is a little liberal at p = 0.05 and conservative at tau2 = 0).
    p = null_p_values(200, 200, 24, tau2, "effective", seed=int(tau2 * 100) + 7)
    two_sided = 2 * np.minimum(p, 1 - p)
    assert 0.025 <= np.mean(two_sided < 0.05) <= 0.065
    assert np.mean(two_sided < 0.001) <= 0.002
    fwe = np.mean((two_sided < 0.05 / p.shape[1]).any(axis=1))
    assert fwe <= sps.binom.ppf(0.999, p.shape[0], 0.05) / p.shape[0]


def test_residual_dof_is_liberal_in_the_tail_with_unequal_variances():
    # Why dof="effective" is the default: the same null data referred to t(n - p) reject far too often at p < 0.001.
    p = null_p_values(100, 200, 24, 0.16, "residual", seed=11)
    two_sided = 2 * np.minimum(p, 1 - p)
    assert np.mean(two_sided < 0.001) > 0.002


def test_bad_shapes_and_variances_are_internal_errors():
    Y, S, X = small_demo(n_voxels=5)
    with pytest.raises(ValueError, match="positive"):
        mfx.mfx_fit(Y, np.where(S > 1, 0.0, S), X)
    with pytest.raises(ValueError, match="shape"):
        mfx.mfx_fit(Y, S[:, :3], X)
    with pytest.raises(ValueError, match="estimator"):
        mfx.mfx_fit(Y, S, X, estimator="ml")
    with pytest.raises(ValueError, match="dof"):
        mfx.mfx_fit(Y, S, X, dof="satterthwaite")


def test_rank_deficient_design_gives_the_full_rank_estimable_contrast():
    # A duplicated column: the pseudo-inverse path must give the same tau2 and the same t of an estimable contrast
    # as the full-rank design (the WLS fit depends on the column space only).
    Y, S, X = small_demo(seed=8, n_voxels=40)
    doubled = np.column_stack([X, X[:, 1]])
    full, deficient = mfx.mfx_fit(Y, S, X), mfx.mfx_fit(Y, S, doubled)
    np.testing.assert_allclose(deficient.tau2, full.tau2, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(mfx.t_contrast(deficient, [0.0, 0.5, 0.5]).stat,
                               mfx.t_contrast(full, [0.0, 1.0]).stat, rtol=1e-7)
