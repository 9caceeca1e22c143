"""Family-wise error of max-T, TFCE and cluster size on smooth null data on the cortical surface (fsaverage5).

Each dataset: ``--subjects`` maps of white noise on the bundled fsaverage5 mesh (medial wall left out), smoothed
on the mesh to ``--fwhm`` mm (runner.data.surface.smooth_on_mesh); a one-sample sign-flip test with
``--permutations`` sign-flips. A method commits a family-wise error when any vertex has FWE p < alpha. The
observed rate over ``--datasets`` datasets should be within its binomial interval around alpha.

Usage::

    .venv/bin/python benchmarks/bench_surface_fwe.py                       # 200 datasets, left hemisphere
    .venv/bin/python benchmarks/bench_surface_fwe.py --datasets 500 --hemispheres L R --fwhm 6 10
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

from runner.data.surface import bundled_mesh, smooth_on_mesh
from runner.inference.permutation import PermutationOptions, permutation_inference
from runner.space import MeshSpace

METHODS = ("maxt", "tfce", "clustersize")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--subjects", type=int, default=16)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--fwhm", type=float, nargs="+", default=[6.0])
    parser.add_argument("--hemispheres", nargs="+", default=["L"])
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    mesh = bundled_mesh("fsaverage5")
    space = MeshSpace.from_hemispheres({h: (mesh[h].vertices, mesh[h].faces) for h in args.hemispheres},
                                       {h: mesh[h].cortex for h in args.hemispheres})
    low, high = stats.binom.interval(0.95, args.datasets, args.alpha)
    print(f"fsaverage5 {'+'.join(args.hemispheres)}: {space.n_elements} vertices; {args.datasets} datasets x "
          f"{args.subjects} subjects, {args.permutations} sign-flips, alpha {args.alpha}; 95% binomial range of "
          f"the error count: {int(low)}..{int(high)} ({low / args.datasets:.3f}..{high / args.datasets:.3f})")
    design, contrast = np.ones((args.subjects, 1)), np.array([[1.0]])
    for fwhm in args.fwhm:
        rng = np.random.default_rng([args.seed, int(fwhm * 1000)])
        errors = dict.fromkeys(METHODS, 0)
        start = time.perf_counter()
        for dataset in range(args.datasets):
            Y = smooth_on_mesh(rng.standard_normal((args.subjects, space.n_elements)), space, fwhm)
            options = PermutationOptions(n_permutations=args.permutations, seed=dataset, two_sided=True,
                                         tfce_E=1.0, tfce_H=2.0, cluster_forming_p=0.001)
            outcome = permutation_inference(Y, design, contrast, space, list(METHODS), options)
            for method in METHODS:
                errors[method] += bool(outcome.corrected_p[method].min() < args.alpha)
        seconds = time.perf_counter() - start
        rates = ", ".join(f"{m} {errors[m]}/{args.datasets} = {errors[m] / args.datasets:.3f}" for m in METHODS)
        print(f"FWHM {fwhm:g} mm: {rates} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
