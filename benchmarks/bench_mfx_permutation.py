"""Benchmark: family-wise error of sign-flip permutation inference on the mixed-effects statistic (model=mfx).

Run on demand (not a test)::

    .venv/bin/python benchmarks/bench_mfx_permutation.py                      # 500 datasets, both weight schemes
    .venv/bin/python benchmarks/bench_mfx_permutation.py --datasets 200 --weights fixed --design covariate

Each null dataset has ``--subjects`` maps whose first-level variances are drawn log-uniformly over a 100-fold range
(per subject, times 0.8-1.2 per voxel), between-subject variance ``--tau2``, and a mean (``--design one_sample``)
or a covariate slope (``--design covariate``, the mean as nuisance) of zero. The voxels lie on a small grid
(``--grid``), independent (``--fwhm 0``) or smoothed, so that max-T and, with ``--spatial``, cluster size and TFCE
can be measured. For every dataset the runner's engine (``permutation_inference`` with ``MixedEffectsOptions``)
draws ``--flips`` sign-flips and reports whether any voxel survives at alpha; the FWE is the share of datasets with
a survivor, with its 95% Clopper-Pearson interval, for each weight scheme:

- ``fixed``: the weights of the unpermuted fit held at every flip (the runner's scheme);
- ``refit``: tau2 and the weights re-estimated at every flip (exact for a one-sample test under symmetric errors).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.inference.permutation import MixedEffectsOptions, PermutationOptions, permutation_inference  # noqa: E402


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    low = stats.beta.ppf(0.025, k, n - k + 1) if k else 0.0
    high = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return float(low), float(high)


def null_dataset(rng: np.random.Generator, n: int, shape: tuple[int, ...], tau2: float, fwhm: float):
    """Null effects (n, V) on the grid and their first-level variances (n, V), 100-fold spread between subjects."""
    V = int(np.prod(shape))
    S = np.exp(rng.uniform(np.log(0.05), np.log(5.0), (n, 1))) * rng.uniform(0.8, 1.2, (n, V))
    noise = rng.standard_normal((n,) + shape)
    if fwhm > 0:
        sigma = fwhm / np.sqrt(8 * np.log(2))
        noise = np.stack([ndimage.gaussian_filter(m, sigma) for m in noise])
        noise /= noise.reshape(n, -1).std(axis=1).reshape((n,) + (1,) * len(shape))
    return noise.reshape(n, V) * np.sqrt(S + tau2), S


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=500)
    parser.add_argument("--subjects", type=int, default=16)
    parser.add_argument("--grid", type=int, nargs=3, default=[6, 6, 4])
    parser.add_argument("--fwhm", type=float, default=0.0, help="smoothing of the noise in voxels (0: independent)")
    parser.add_argument("--tau2", type=float, default=0.16)
    parser.add_argument("--flips", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--design", choices=("one_sample", "covariate"), default="one_sample")
    parser.add_argument("--weights", nargs="+", default=["fixed", "refit"])
    parser.add_argument("--spatial", action="store_true", help="also cluster size (p < 0.01) and TFCE")
    parser.add_argument("--seed", type=int, default=141)
    args = parser.parse_args()
    shape = tuple(args.grid)
    mask = np.ones(shape, dtype=bool)
    methods = ["maxt"] + (["clustersize", "tfce"] if args.spatial else [])
    print(f"{args.datasets} null datasets, {args.subjects} maps, grid {shape}, fwhm {args.fwhm} voxels, tau2 "
          f"{args.tau2}, {args.design}, {args.flips} sign-flips, alpha {args.alpha}")
    for weights in args.weights:
        rng = np.random.default_rng(args.seed)  # the same datasets for every scheme
        hits = {m: 0 for m in methods}
        start = time.perf_counter()
        for d in range(args.datasets):
            Y, S = null_dataset(rng, args.subjects, shape, args.tau2, args.fwhm)
            if args.design == "one_sample":
                X, c = np.ones((args.subjects, 1)), np.array([[1.0]])
            else:
                X, c = np.column_stack([np.ones(args.subjects), rng.normal(size=args.subjects)]), np.array([[0, 1.0]])
            options = PermutationOptions(n_permutations=args.flips, seed=d, cluster_forming_p=0.01, connectivity=6,
                                         mixed_effects=MixedEffectsOptions(S, weights=weights))
            result = permutation_inference(Y, X, c, mask, methods, options)
            for m in methods:
                hits[m] += bool(np.any(result.corrected_p[m] < args.alpha))
        seconds = time.perf_counter() - start
        for m in methods:
            low, high = clopper_pearson(hits[m], args.datasets)
            print(f"  {weights:6s} {m:12s} FWE {hits[m] / args.datasets:.3f}  95% CI [{low:.3f}, {high:.3f}]"
                  f"  ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
