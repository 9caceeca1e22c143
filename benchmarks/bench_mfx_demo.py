"""Benchmark: what model=mfx finds on the 'mixed' demo compared with OLS, for every method a user would pick.

Run on demand (not a test)::

    .venv/bin/python benchmarks/bench_mfx_demo.py                       # fdr, bonferroni, maxt (1000 flips), rft
    .venv/bin/python benchmarks/bench_mfx_demo.py --methods fdr maxt tfce --permutations 500

Runs ``+experiment=mfx`` with ``model=mfx`` and ``model=ols`` into a temporary folder and counts, per method, the
voxels it keeps inside the planted mean (``truth_mean.nii.gz`` > 0: true positives, and the share of those found:
power) and outside it (false positives).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.demo.datasets import ensure_demo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["fdr", "bonferroni", "maxt", "rft"])
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args()
    truth = np.asarray(nib.load(ensure_demo("mixed").parent / "truth_mean.nii.gz").dataobj) > 0
    permutation = [m for m in args.methods if m in ("maxt", "clustersize", "clustermass", "tfce")]
    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for model in ("mfx", "ols"):
            run_dir = Path(folder) / model
            command = [sys.executable, "-m", "runner", "+experiment=mfx", f"model={model}",
                       f"correction=[{','.join(args.methods)}]", "report=false", f"n_jobs={args.n_jobs}",
                       f"hydra.run.dir={run_dir}"]
            command += [f"correction.{m}.n_permutations={args.permutations}" for m in permutation]
            start = time.perf_counter()
            subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
            seconds = time.perf_counter() - start
            for method in args.methods:
                # the permutation methods keep the statistic they permute: t for OLS, z for mixed effects
                stat = "t" if method in permutation and model == "ols" else "z"
                name = f"contrast-mean_stat-{stat}_desc-{method}_statmap.nii.gz"
                survivors = np.asarray(nib.load(run_dir / name).dataobj) != 0
                rows.append((model, method, int((survivors & truth).sum()), int((survivors & ~truth).sum()),
                             seconds))
        print(f"'mixed' demo: {int(truth.sum())} voxels in the planted mean; {args.permutations} permutations")
        print(f"{'model':6s} {'method':12s} {'true pos':>9s} {'power':>7s} {'false pos':>9s} {'run s':>7s}")
        for model, method, tp, fp, seconds in rows:
            print(f"{model:6s} {method:12s} {tp:9d} {tp / truth.sum():7.3f} {fp:9d} {seconds:7.0f}")


if __name__ == "__main__":
    main()
