"""Distribution helpers computed in log space, so extreme statistics give finite, exact z-scores.

scipy's ``t.logsf`` underflows to -inf once the tail probability drops below ~1e-308 (e.g. t = 100 with 1000 degrees
of freedom). There we use the small-x series of the regularised incomplete beta function,
I_x(a, b) = x^a / (a B(a, b)) * 2F1(a, 1 - b; a + 1; x), whose logarithm stays finite.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

_LOG_TAIL_SWITCH = -600.0  # below this log-probability use the series (scipy is exact above it)


def _log_betainc_small_x(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log I_x(a, b) for small x via the hypergeometric series (accurate where x << 1)."""
    return (a * np.log(x) - np.log(a) - special.betaln(a, b)
            + np.log(special.hyp2f1(a, 1.0 - b, a + 1.0, x)))


def t_logsf(t: np.ndarray, dof: float | np.ndarray) -> np.ndarray:
    """Natural log of the upper-tail probability P(T >= t) of Student's t with ``dof`` degrees of freedom
    (a number, or an array of the shape of ``t``: one per voxel)."""
    t = np.asarray(t, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = stats.t.logsf(t, dof)
        deep = np.isfinite(t) & (t > 0) & ~(out > _LOG_TAIL_SWITCH)
        if np.any(deep):
            td = t[deep]
            dd = np.broadcast_to(np.asarray(dof, dtype=float), t.shape)[deep]
            x = dd / (dd + td * td)
            out[deep] = np.log(0.5) + _log_betainc_small_x(dd / 2.0, np.full_like(td, 0.5), x)
    return out


def f_logsf(f: np.ndarray, dfn: float, dfd: float | np.ndarray) -> np.ndarray:
    """Natural log of the upper-tail probability P(F >= f) of Fisher's F(dfn, dfd) (``dfd`` may be one per voxel)."""
    f = np.asarray(f, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = stats.f.logsf(f, dfn, dfd)
        deep = np.isfinite(f) & (f > 0) & ~(out > _LOG_TAIL_SWITCH)
        if np.any(deep):
            fd = f[deep]
            dd = np.broadcast_to(np.asarray(dfd, dtype=float), f.shape)[deep]
            x = dd / (dd + dfn * fd)
            out[deep] = _log_betainc_small_x(dd / 2.0, np.full_like(fd, dfn / 2.0), x)
    return out


def z_from_logsf(log_p: np.ndarray) -> np.ndarray:
    """z such that P(Z >= z) = exp(log_p), finite for any finite log_p."""
    return -special.ndtri_exp(np.asarray(log_p, dtype=float))


def t_to_z(t: np.ndarray, dof: float | np.ndarray, log_sf: np.ndarray | None = None) -> np.ndarray:
    """Convert t statistics to z-scores with the same one-sided tail probability (exact in the far tails).

    Uses the symmetry of both distributions, z(-t) = -z(t), so negative statistics are as exact as positive ones.
    ``log_sf`` (``t_logsf(t, dof)``, if already computed) saves the tail computation for the positive values.
    """
    t = np.asarray(t, dtype=float)
    if log_sf is not None:
        log_tail = np.where(t < 0, 0.0, log_sf)  # NaN statistics keep their NaN
        negative = t < 0
        if np.any(negative):
            log_tail = log_tail.copy()
            log_tail[negative] = t_logsf(-t[negative], dof if np.ndim(dof) == 0 else np.asarray(dof)[negative])
        magnitude = z_from_logsf(log_tail)
        return np.where(t < 0, -magnitude, magnitude)
    magnitude = z_from_logsf(t_logsf(np.abs(t), dof))
    return np.where(t < 0, -magnitude, magnitude)


def f_to_z(f: np.ndarray, dfn: float, dfd: float | np.ndarray) -> np.ndarray:
    """Convert F statistics to z-scores with the same upper-tail probability."""
    return z_from_logsf(f_logsf(f, dfn, dfd))


def t_sf(t: np.ndarray, dof: float) -> np.ndarray:
    """One-sided p-value P(T >= t) (may underflow to 0 where the z-score stays finite)."""
    return np.exp(t_logsf(t, dof))


def f_sf(f: np.ndarray, dfn: float, dfd: float) -> np.ndarray:
    """p-value P(F >= f)."""
    return np.exp(f_logsf(f, dfn, dfd))


def z_to_p(z: np.ndarray, two_sided: bool = False) -> np.ndarray:
    """Standard normal tail probability of z (two-sided doubles the tail of |z|)."""
    z = np.asarray(z, dtype=float)
    return 2.0 * stats.norm.sf(np.abs(z)) if two_sided else stats.norm.sf(z)


def p_to_z(p: np.ndarray) -> np.ndarray:
    """Upper-tail z-score for a probability p."""
    return stats.norm.isf(np.asarray(p, dtype=float))
