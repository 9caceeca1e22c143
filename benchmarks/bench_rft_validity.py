"""Benchmark: family-wise error of RFT (voxel and cluster level, cluster-forming p 0.01 vs 0.001) on null data.

Run on demand (not a test)::

    .venv/bin/python benchmarks/bench_rft_validity.py                          # 1000 datasets, FWHM 3 and 6
    .venv/bin/python benchmarks/bench_rft_validity.py --datasets 200 --fwhm 2 3 4 6 --shape 40 --subjects 20
    .venv/bin/python benchmarks/bench_rft_validity.py --maxt 200          # also permutation max-T (200 sign-flips)

For each nominal FWHM it simulates ``--datasets`` one-sample null studies (white noise smoothed to that FWHM on a
``--shape``^3 box, ``--subjects`` maps), re-estimates the smoothness from the residuals and reports, per method, the
number of datasets with any false positive, the FWE with its 95% Clopper-Pearson interval and the verdict. This is the
Eklund, Nichols & Knutsson (2016) comparison on Gaussian-shaped noise: cluster inference at a liberal cluster-forming
threshold (p = 0.01) against a stricter one (p = 0.001). ``--maxt N`` adds permutation max-T with N sign-flips per
dataset (what ``correction=[validity]`` checks too), the reference voxel-level RFT should agree with when smooth.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.inference.methods.validity import maxt_rejects  # noqa: E402
from runner.inference.rft.validity import simulate_null_validity  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=1000)
    parser.add_argument("--fwhm", type=float, nargs="+", default=[3.0, 6.0])
    parser.add_argument("--shape", type=int, default=32)
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=2016)
    parser.add_argument("--maxt", type=int, default=0, help="sign-flips per dataset for permutation max-T (0: off)")
    args = parser.parse_args()
    extra = {"maxt": partial(maxt_rejects, args.maxt)} if args.maxt else None

    mask = np.ones((args.shape,) * 3, bool)
    design = np.ones((args.subjects, 1))
    rows = []
    for fwhm in args.fwhm:
        start = time.perf_counter()
        result = simulate_null_validity(mask, design, [1.0], fwhm, n_datasets=args.datasets, alpha=args.alpha,
                                        seed=args.seed, extra_methods=extra)
        elapsed = time.perf_counter() - start
        table = result.table()
        table.insert(0, "fwhm_nominal", fwhm)
        table.insert(1, "fwhm_estimated", float(result.fwhm_estimated.mean()))
        rows.append(table)
        print(f"FWHM {fwhm:g} voxels: {args.datasets} datasets in {elapsed:.0f} s "
              f"(estimated FWHM {result.fwhm_estimated.mean():.2f} voxels)", flush=True)
    summary = pd.concat(rows, ignore_index=True)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(f"\n{args.shape}^3 box, {args.subjects} subjects, one-sample t, alpha {args.alpha}, seed {args.seed}")
        print(summary.to_string(index=False))


if __name__ == "__main__":
    main()
