"""z-scores from t and F must be exact far in the tails (checked against mpmath at 50 digits)."""

import mpmath
import numpy as np
import pytest
from scipy import stats as sps

from runner import stats

mpmath.mp.dps = 50


def _z_from_tail(p: mpmath.mpf) -> float:
    # Solve P(Z >= z) = p at high precision (bisection on log-tails): an independent reference for the log-space code.
    target = mpmath.log(p)
    low, high = mpmath.mpf(-10), mpmath.mpf(200)
    for _ in range(200):
        mid = (low + high) / 2
        if mpmath.log(mpmath.ncdf(-mid)) > target:
            low = mid
        else:
            high = mid
    return float((low + high) / 2)


@pytest.mark.parametrize("t, dof", [(2.0, 10), (8.0, 28), (40.0, 10), (100.0, 1000), (300.0, 1000), (1e6, 10)])
def test_t_to_z_matches_high_precision(t, dof):
    tail = mpmath.betainc(dof / 2, 0.5, 0, dof / (dof + mpmath.mpf(t) ** 2), regularized=True) / 2
    z = stats.t_to_z(np.array([t]), dof)[0]
    assert np.isfinite(z)
    assert z == pytest.approx(_z_from_tail(tail), rel=1e-12)


@pytest.mark.parametrize("f, dfn, dfd", [(5.0, 2, 20), (1e4, 2, 20), (1e6, 3, 100), (1e5, 1, 1000)])
def test_f_to_z_matches_high_precision(f, dfn, dfd):
    tail = mpmath.betainc(dfd / 2, dfn / 2, 0, dfd / (dfd + dfn * mpmath.mpf(f)), regularized=True)
    z = stats.f_to_z(np.array([f]), dfn, dfd)[0]
    assert np.isfinite(z)
    assert z == pytest.approx(_z_from_tail(tail), rel=1e-12)


def test_t_to_z_is_odd_and_agrees_with_scipy_in_the_bulk():
    t = np.linspace(-6, 6, 101)
    z = stats.t_to_z(t, 15)
    np.testing.assert_allclose(z, -stats.t_to_z(-t, 15), atol=1e-14)
    np.testing.assert_allclose(z, sps.norm.isf(sps.t.sf(t, 15)), rtol=1e-9, atol=1e-12)


def test_extreme_t_with_ten_dof_gives_finite_z():
    z = stats.t_to_z(np.array([40.0, -40.0, 1e12]), 10)
    assert np.all(np.isfinite(z))
    assert z[0] > 6.9 and z[1] == -z[0]


def test_nan_stays_nan():
    assert np.isnan(stats.t_to_z(np.array([np.nan]), 10)[0])
