"""OLS and contrasts against statsmodels on sampled voxels and the closed-form one-sample t."""

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from runner import glm, model
from runner.contrasts import Contrast


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    n, V = 25, 40
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, size=n).astype(float)])
    Y = X @ rng.normal(size=(3, V)) + rng.normal(size=(n, V))
    return Y, X


def test_t_contrast_matches_statsmodels(data):
    Y, X = data
    c = np.array([0.0, 1.0, -0.5])
    result = glm.t_contrast(glm.ols_fit(Y, X), c)
    for v in range(0, Y.shape[1], 7):
        reference = sm.OLS(Y[:, v], X).fit().t_test(c)
        assert result.stat[v] == pytest.approx(float(np.squeeze(reference.tvalue)), rel=1e-10)
        assert result.effect[v] == pytest.approx(float(np.squeeze(reference.effect)), rel=1e-10)
        assert result.variance[v] == pytest.approx(float(np.squeeze(reference.sd)) ** 2, rel=1e-10)
        # statsmodels reports two-sided p; ours is the upper tail, as nilearn's
        assert result.p[v] == pytest.approx(sps.t.sf(float(np.squeeze(reference.tvalue)), reference.df_denom), rel=1e-9)
    assert result.dof == Y.shape[0] - 3


def test_f_contrast_matches_statsmodels(data):
    Y, X = data
    C = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    result = glm.f_contrast(glm.ols_fit(Y, X), C)
    for v in range(0, Y.shape[1], 9):
        reference = sm.OLS(Y[:, v], X).fit().f_test(C)
        assert result.stat[v] == pytest.approx(float(np.squeeze(reference.fvalue)), rel=1e-10)
        assert result.p[v] == pytest.approx(float(reference.pvalue), rel=1e-8)
    assert result.df_num == 2


def test_one_sample_t_closed_form():
    rng = np.random.default_rng(1)
    Y = rng.normal(0.3, 1.0, size=(12, 30))
    result = glm.t_contrast(glm.ols_fit(Y, np.ones((12, 1))), [1.0])
    expected = Y.mean(0) / (Y.std(0, ddof=1) / np.sqrt(12))
    np.testing.assert_allclose(result.stat, expected, rtol=1e-12)
    np.testing.assert_allclose(result.z, sps.norm.isf(sps.t.sf(expected, 11)), rtol=1e-9)


def test_constant_voxel_gives_nan_not_inf():
    Y = np.random.default_rng(2).normal(size=(10, 3))
    Y[:, 1] = 4.2
    result = glm.t_contrast(glm.ols_fit(Y, np.ones((10, 1))), [1.0])
    assert np.isnan(result.stat[1]) and np.isnan(result.z[1])
    assert np.all(np.isfinite(result.stat[[0, 2]]))


def test_chunked_fit_equals_single_pass(data):
    Y, X = data
    contrasts = [Contrast("a", np.array([[0.0, 1.0, 0.0]]), "t"), Contrast("f", np.eye(3)[1:], "F")]
    whole = model.fit_contrasts(Y, X, contrasts)
    chunked = model.fit_contrasts(Y.astype(np.float32), X, contrasts, memory_budget_bytes=25 * 8 * 4 * 7, n_jobs=2)
    for name in ("a", "f"):
        np.testing.assert_allclose(chunked[name].stat, whole[name].stat, rtol=1e-5)


def test_sign_flip_of_contrast_flips_t(data):
    Y, X = data
    fit = glm.ols_fit(Y, X)
    c = np.array([0.0, 1.0, 0.0])
    np.testing.assert_allclose(glm.t_contrast(fit, -c).stat, -glm.t_contrast(fit, c).stat)


def test_row_permutation_of_data_and_design_changes_nothing(data):
    Y, X = data
    order = np.random.default_rng(3).permutation(Y.shape[0])
    a = glm.t_contrast(glm.ols_fit(Y, X), [0, 1, 0])
    b = glm.t_contrast(glm.ols_fit(Y[order], X[order]), [0, 1, 0])
    np.testing.assert_allclose(a.stat, b.stat, rtol=1e-10)
