"""Benchmark: family-wise error with variance groups (v, sign-flips) against the pooled t (permutations).

Run on demand (not a test)::

    .venv/bin/python benchmarks/bench_variance_groups.py                      # 500 datasets, 8 vs 24, sd ratio 3
    .venv/bin/python benchmarks/bench_variance_groups.py --datasets 1000 --sizes 10 30 --permutations 500

Each dataset is a two-sample null study: smooth Gaussian noise (sigma ``--smoothing`` voxels) on a ``--shape``^3 box,
group 1 (``--sizes[0]`` maps) scaled by ``--sd-ratio`` and group 2 by 1, the same mean. It runs max-T, cluster size
(cluster-forming p 0.01) and TFCE twice: the pooled t with row permutations (the default without variance groups)
and the Aspin-Welch v with ``variance_groups`` = the group (which selects sign-flips). It prints, per statistic and
method, the share of datasets with any FWE p <= alpha, its 95% Clopper-Pearson interval and the verdict against the
central 95% binomial interval of alpha. The light version is
``tests/test_permutation_variance_groups.py::test_null_calibration_heteroscedastic_two_sample``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.inference.permutation import PermutationOptions, permutation_inference  # noqa: E402

METHODS = ("maxt", "clustersize", "tfce")


def clopper_pearson(count: int, n: int) -> tuple[float, float]:
    """Exact 95% interval of a binomial proportion."""
    low = stats.beta.ppf(0.025, count, n - count + 1) if count else 0.0
    high = stats.beta.ppf(0.975, count + 1, n - count) if count < n else 1.0
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=500)
    parser.add_argument("--sizes", type=int, nargs=2, default=[8, 24])
    parser.add_argument("--sd-ratio", type=float, default=3.0)
    parser.add_argument("--shape", type=int, default=12)
    parser.add_argument("--smoothing", type=float, default=1.5)
    parser.add_argument("--permutations", type=int, default=250)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=2014)
    parser.add_argument("--skip-plain", action="store_true", help="run only the variance-group statistic")
    args = parser.parse_args()

    groups = np.repeat([0, 1], args.sizes)
    design = np.column_stack([np.ones(groups.size), groups])
    contrast = np.array([[0.0, 1.0]])
    mask = np.ones((args.shape,) * 3, dtype=bool)
    scale = np.where(groups == 0, args.sd_ratio, 1.0)[:, None]
    rng = np.random.default_rng(args.seed)
    runs = {"v (variance groups, sign-flips)": dict(variance_groups=groups)}
    if not args.skip_plain:
        runs["t (pooled, permutations)"] = {}
    rejections = {name: dict.fromkeys(METHODS, 0) for name in runs}
    started = time.perf_counter()
    for index in range(args.datasets):
        noise = np.stack([ndimage.gaussian_filter(rng.standard_normal(mask.shape), args.smoothing)[mask]
                          for _ in range(groups.size)])
        data = noise / noise.std() * scale
        for name, extra in runs.items():
            options = PermutationOptions(n_permutations=args.permutations, seed=index, cluster_forming_p=0.01,
                                         **extra)
            result = permutation_inference(data, design, contrast, mask, METHODS, options)
            for method in METHODS:
                rejections[name][method] += bool(np.any(result.corrected_p[method] <= args.alpha))
        if (index + 1) % 50 == 0:
            print(f"{index + 1} datasets, {time.perf_counter() - started:.0f} s", flush=True)
    low = stats.binom.ppf(0.025, args.datasets, args.alpha) / args.datasets
    high = stats.binom.ppf(0.975, args.datasets, args.alpha) / args.datasets
    print(f"\n{args.datasets} null datasets, groups of {args.sizes[0]} (sd {args.sd_ratio}) and {args.sizes[1]} "
          "(sd 1), "
          f"{args.shape}^3 box, smoothing sigma {args.smoothing}, {args.permutations} permutations, alpha "
          f"{args.alpha}; 95% binomial interval of alpha {low:.3f}-{high:.3f}; {time.perf_counter() - started:.0f} s")
    print("| statistic | method | FWE | 95% CI | verdict |\n| --- | --- | --- | --- | --- |")
    for name, counts in rejections.items():
        for method, count in counts.items():
            rate = count / args.datasets
            ci_low, ci_high = clopper_pearson(count, args.datasets)
            verdict = "liberal" if rate > high else "conservative" if rate < low else "valid"
            print(f"| {name} | {method} | {rate:.3f} | {ci_low:.3f}-{ci_high:.3f} | {verdict} |")


if __name__ == "__main__":
    main()
