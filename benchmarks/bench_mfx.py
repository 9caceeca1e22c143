"""Benchmark: error rates on null data and power of the mixed-effects model (model=mfx) against OLS.

Run on demand (not a test)::

    .venv/bin/python benchmarks/bench_mfx.py                                  # 500 datasets, 24 subjects
    .venv/bin/python benchmarks/bench_mfx.py --datasets 200 --subjects 14 --spread 10 --tau2 0 0.5

Each dataset has ``--voxels`` independent voxels and ``--subjects`` maps whose first-level variances are drawn
log-uniformly over a ``--spread``-fold range (0.05 to 5 by default), per subject (times 0.8-1.2 per voxel). Under the
null (mean 0, between-subject variance ``tau2``) it reports per-voxel rejection rates at two-sided p < 0.05 and
p < 0.001, and the family-wise error (any rejection) of Bonferroni and of Benjamini-Hochberg FDR (under the complete
null FDR = FWE), with 95% Clopper-Pearson intervals, for:

- ``ols``: the one-sample t test that ignores the first-level variances;
- ``mfx``: REML tau2, weighted least squares, Knapp-Hartung variance, t on the effective dof (the runner's default);
- ``mfx-residual-dof``: the same on n - 1 dof; ``mfx-model-based``: the model-based variance on n - 1 dof (FLAME1-like).

With ``--effect d`` a mean effect of d is planted in a fifth of the voxels and the power (share of them detected) is
reported instead of the null rates.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner import glm, mfx  # noqa: E402
from runner.inference.parametric import height_threshold  # noqa: E402

RULES = ("ols", "mfx", "mfx-residual-dof", "mfx-model-based")


def z_maps(Y: np.ndarray, S: np.ndarray) -> dict[str, np.ndarray]:
    """z of the mean under every rule, one fit of the mixed-effects model shared by the mfx rules."""
    X = np.ones((Y.shape[0], 1))
    fit = mfx.mfx_fit(Y, S, X)
    residual = dataclasses.replace(fit, voxel_dof=np.full(Y.shape[1], float(fit.dof)))
    model_based = dataclasses.replace(residual, scale=np.ones(Y.shape[1]))
    return {"ols": glm.t_contrast(glm.ols_fit(Y, X), [1.0]).z, "mfx": mfx.t_contrast(fit, [1.0]).z,
            "mfx-residual-dof": mfx.t_contrast(residual, [1.0]).z,
            "mfx-model-based": mfx.t_contrast(model_based, [1.0]).z}


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    low = stats.beta.ppf(0.025, k, n - k + 1) if k else 0.0
    high = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=500)
    parser.add_argument("--voxels", type=int, default=2000)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--spread", type=float, default=100.0, help="ratio of largest to smallest variance")
    parser.add_argument("--tau2", type=float, nargs="+", default=[0.0, 0.16, 0.5])
    parser.add_argument("--effect", type=float, default=None, help="plant a mean effect in 1/5 of the voxels")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    low, high = 0.5 / np.sqrt(args.spread), 0.5 * np.sqrt(args.spread)
    rows = []
    for tau2 in args.tau2:
        start = time.perf_counter()
        counts = {rule: {"p05": 0, "p001": 0, "bonferroni": 0, "fdr": 0} for rule in RULES}
        planted = np.arange(args.voxels) < args.voxels // 5
        for _ in range(args.datasets):
            S = np.exp(rng.uniform(np.log(low), np.log(high), (args.subjects, 1))) \
                * rng.uniform(0.8, 1.2, (args.subjects, args.voxels))
            Y = rng.standard_normal(S.shape) * np.sqrt(S + tau2)
            if args.effect is not None:
                Y[:, planted] += args.effect
            for rule, z in z_maps(Y, S).items():
                p = 2 * stats.norm.sf(np.abs(z))
                found = {"p05": p < 0.05, "p001": p < 0.001,
                         "bonferroni": np.abs(z) >= height_threshold(z, "bonferroni", args.alpha, True),
                         "fdr": np.abs(z) >= height_threshold(z, "fdr", args.alpha, True)}
                for key, hits in found.items():
                    if args.effect is not None:
                        counts[rule][key] += int(hits[planted].sum())
                    elif key.startswith("p"):
                        counts[rule][key] += int(hits.sum())
                    else:
                        counts[rule][key] += int(hits.any())
        for rule in RULES:
            row = {"tau2": tau2, "rule": rule}
            if args.effect is not None:
                total = args.datasets * int(planted.sum())
                row.update({f"power_{k}": round(v / total, 4) for k, v in counts[rule].items()})
            else:
                voxels = args.datasets * args.voxels
                row["rate_p05"] = round(counts[rule]["p05"] / voxels, 4)
                row["rate_p001"] = round(counts[rule]["p001"] / voxels, 5)
                for key in ("bonferroni", "fdr"):
                    k = counts[rule][key]
                    ci = clopper_pearson(k, args.datasets)
                    row[f"fwe_{key}"] = round(k / args.datasets, 3)
                    row[f"ci_{key}"] = f"{ci[0]:.3f}-{ci[1]:.3f}"
            rows.append(row)
        print(f"tau2 {tau2}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(pd.DataFrame(rows).to_markdown(index=False) if _has_tabulate() else pd.DataFrame(rows).to_string())


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
