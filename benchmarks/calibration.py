"""Full null calibration of the permutation methods: the checks of tests/test_permutation_calibration.py on many more
datasets and permutations than the test suite can afford.

    .venv/bin/python benchmarks/calibration.py                      # 500 datasets, 1000 permutations, 12^3 grid
    .venv/bin/python benchmarks/calibration.py --datasets 200 --permutations 250

With N datasets the binomial bounds tighten as 1/sqrt(N): 500 datasets tell an FWE of 0.05 from one of about 0.08.
Prints each method's family-wise error rate at every level next to the largest rate a valid method allows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=500)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--grid", type=int, default=12, help="edge of the cubic grid, in voxels")
    args = parser.parse_args(argv)
    os.environ.update(RUNNER_CALIBRATION_DATASETS=str(args.datasets),
                      RUNNER_CALIBRATION_PERMUTATIONS=str(args.permutations), RUNNER_CALIBRATION_GRID=str(args.grid))
    start = time.perf_counter()
    code = pytest.main([str(REPO / "tests" / "test_permutation_calibration.py"), "-q", "-s", "-p", "no:cacheprovider",
                        "--rootdir", str(REPO)])
    print(f"calibration: {args.datasets} datasets x {args.permutations} permutations on a {args.grid}^3 grid in "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
