"""Benchmark: our permutation engine against nilearn's ``non_parametric_inference`` (max-T and TFCE).

Run on demand (not a test)::

    .venv/bin/python benchmarks/bench_permutation.py                      # full size: slow for nilearn
    .venv/bin/python benchmarks/bench_permutation.py --subjects 40 --perm 2000 --perm-tfce 200 \\
        --nilearn-perm 100 --nilearn-perm-tfce 4

Our TFCE is timed at connectivity 26 (our default) and 6 (nilearn's only choice), with the default 100 steps and
with the exact integral (``tfce_dh="exact"``). Its kernels are compiled by numba on first use and cached on disk:
the compile time (empty cache) and the load time (warm cache) are measured in fresh subprocesses and reported
apart; every timed run comes after a warm-up call, so no permutation pays for compilation.

Timings on a shared machine move with the load: ours is timed ``--repeat`` times (the fastest counts), and
``--blas-threads 1`` takes BLAS threading out of the comparison.

Simulates ``--subjects`` smooth one-sample maps on the 2 mm MNI brain mask bundled in ``runner.resources``
(an ellipsoid of about 220k voxels if that is missing) and times, in one process, nilearn's
``non_parametric_inference`` (sign-flips, as nilearn chooses for an intercept) and ``permutation_inference``.
nilearn is run with fewer permutations than ours and its time is scaled linearly to ours (its cost is a loop of
identical iterations), which the output states. Peak memory is the tracemalloc peak of each of our runs (numpy
reports its buffers to tracemalloc) plus the process's maximum resident size at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.inference.permutation import PermutationOptions, permutation_inference  # noqa: E402
from runner.inference.tfce import tfce_maxima, voxel_graph  # noqa: E402


def brain_mask() -> tuple[np.ndarray, np.ndarray, str]:
    """The 2 mm MNI mask and its affine, or a 220k-voxel ellipsoid on the same grid."""
    try:
        from runner.resources import mni_mask

        image = mni_mask(2)
        return np.asarray(image.dataobj) > 0, image.affine, "MNI152 2 mm brain mask (runner.resources)"
    except Exception:  # noqa: BLE001 - the resource is optional for the benchmark
        shape = (91, 109, 91)
        grid = np.indices(shape).astype(float)
        centre = np.array([45, 54, 40.0])[:, None, None, None]
        radii = np.array([36, 46, 34.0])[:, None, None, None]
        mask = (((grid - centre) / radii) ** 2).sum(axis=0) <= 1
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        affine[:3, 3] = [-90, -126, -72]
        return mask, affine, "ellipsoid on the 2 mm MNI grid"


def simulate(mask: np.ndarray, n_subjects: int, seed: int) -> np.ndarray:
    """Smooth Gaussian noise (sigma 1.5 voxels) plus a small blob, one row per subject, float64."""
    rng = np.random.default_rng(seed)
    blob = np.zeros(mask.shape)
    blob[40:50, 50:60, 40:50] = 0.4
    rows = []
    for _ in range(n_subjects):
        field = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 1.5)
        field /= field[mask].std()
        rows.append((field + blob)[mask])
    return np.asarray(rows)


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info

        return "; ".join(
            f"{i['internal_api']} {i.get('version', '?')} ({i['num_threads']} threads, {i.get('architecture', '?')})"
            for i in threadpool_info()
        )
    except ImportError:
        return "threadpoolctl not installed"


JIT_PROBE = """
import time
import numpy as np
from runner.inference.tfce import tfce_maxima, voxel_graph
graph = voxel_graph(np.ones((3, 3, 3), dtype=bool), 26)
start = time.perf_counter()
tfce_maxima(np.ones((1, 27)), graph)
print(time.perf_counter() - start)
"""


def jit_times() -> tuple[float, float]:
    """First TFCE call in a fresh process with an empty numba cache (compilation), then with the cache (loading)."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
        times = [float(subprocess.run([sys.executable, "-c", JIT_PROBE], env=env, check=True, capture_output=True,
                                      text=True).stdout) for _ in range(2)]
    return times[0], times[1]


def tfce_kernel_ms(Y, mask, connectivity: int, dh, n_maps: int = 8) -> float:
    """Milliseconds per map of ``tfce_maxima`` alone, on sign-flipped one-sample t maps (both tails)."""
    rng = np.random.default_rng(1)
    n = Y.shape[0]
    signs = rng.choice([-1.0, 1.0], size=(n_maps, n))
    flipped = signs @ Y / n
    second = np.einsum("ij,ij->j", Y, Y) / n  # the same for every sign-flip
    maps = flipped / np.sqrt((second - flipped**2) / (n - 1))
    graph = voxel_graph(mask, connectivity)
    start = time.perf_counter()
    tfce_maxima(maps, graph, dh=dh)
    return (time.perf_counter() - start) / n_maps * 1e3


def run_ours(Y, mask, methods, n_perm, n_jobs, memory: bool, connectivity: int = 6,
             tfce_dh=None) -> tuple[float, float]:
    options = PermutationOptions(n_permutations=n_perm, seed=0, two_sided=True, n_jobs=n_jobs,
                                 connectivity=connectivity, tfce_dh=tfce_dh)
    if memory:
        tracemalloc.start()
    start = time.perf_counter()
    permutation_inference(Y, np.ones((Y.shape[0], 1)), np.array([[1.0]]), mask, methods, options)
    elapsed = time.perf_counter() - start
    peak = 0.0
    if memory:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return elapsed, peak


def run_nilearn(Y, mask, affine, n_perm, n_jobs, tfce: bool) -> float:
    import nibabel as nib
    import pandas as pd
    from nilearn.glm.second_level import non_parametric_inference

    data = np.zeros(mask.shape + (Y.shape[0],), dtype=np.float32)
    data[mask] = Y.T
    images = [nib.Nifti1Image(np.ascontiguousarray(data[..., i]), affine) for i in range(Y.shape[0])]
    mask_image = nib.Nifti1Image(mask.astype(np.uint8), affine)
    design = pd.DataFrame({"intercept": np.ones(Y.shape[0])})
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        non_parametric_inference(
            images,
            design_matrix=design,
            second_level_contrast="intercept",
            mask=mask_image,
            n_perm=n_perm,
            two_sided_test=True,
            random_state=0,
            n_jobs=n_jobs,
            tfce=tfce,
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--perm", type=int, default=10000, help="our max-T permutations (identity included)")
    parser.add_argument("--perm-tfce", type=int, default=1000, help="our TFCE permutations")
    parser.add_argument("--nilearn-perm", type=int, default=201, help="nilearn max-T permutations (then scaled)")
    parser.add_argument("--nilearn-perm-tfce", type=int, default=11, help="nilearn TFCE permutations (scaled)")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="runs of ours per measurement; the fastest counts")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="limit BLAS threads for every run (threadpoolctl); default: leave BLAS as it is")
    parser.add_argument("--skip-nilearn", action="store_true")
    args = parser.parse_args()
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.blas_threads, user_api="blas")

    compile_time, load_time = jit_times()
    mask, affine, mask_name = brain_mask()
    Y = simulate(mask, args.subjects, seed=0)
    print(f"mask: {mask_name}, {int(mask.sum())} voxels; {args.subjects} subjects; n_jobs={args.n_jobs}")
    print(f"BLAS: {blas_info()}")
    print(f"TFCE kernels (numba): first call {compile_time:.2f} s with an empty cache (compilation), "
          f"{load_time:.2f} s from the on-disk cache; not included below (warm-up call first)")
    print("p-values counted with the identity; nilearn's TFCE has connectivity 6 only")
    tfce_maxima(np.ones((1, 27)), voxel_graph(np.ones((3, 3, 3), dtype=bool), 26))  # warm-up

    def fastest(methods, n_perm, connectivity=26, tfce_dh=None):
        return min(run_ours(Y, mask, methods, n_perm, args.n_jobs, False, connectivity, tfce_dh)[0]
                   for _ in range(args.repeat))

    ours_maxt = fastest(["maxt"], args.perm)
    _, peak_maxt = run_ours(Y, mask, ["maxt"], min(args.perm, 1001), args.n_jobs, memory=True)
    print(f"ours   max-T: {ours_maxt:8.2f} s for {args.perm} sign-flips ({ours_maxt / (args.perm - 1) * 1e3:.3f} ms "
          f"each); tracemalloc peak {peak_maxt:.0f} MiB")
    ours_tfce: dict[tuple[int, str], float] = {}
    for connectivity in (26, 6):
        for dh, label in ((None, "max/100"), ("exact", "exact")):
            kernel = min(tfce_kernel_ms(Y, mask, connectivity, dh) for _ in range(args.repeat))
            total = fastest(["tfce"], args.perm_tfce, connectivity, dh)
            ours_tfce[connectivity, label] = total
            print(f"ours   TFCE connectivity {connectivity:2d}, {label:7s}: {total:8.2f} s for {args.perm_tfce} "
                  f"sign-flips ({total / (args.perm_tfce - 1) * 1e3:.1f} ms each; TFCE of one map alone "
                  f"{kernel:.1f} ms)")
    _, peak_tfce = run_ours(Y, mask, ["tfce"], min(args.perm_tfce, 101), args.n_jobs, memory=True, connectivity=26)
    print(f"ours   TFCE tracemalloc peak {peak_tfce:.0f} MiB")
    if not args.skip_nilearn:
        # nilearn's cost is a fixed part (masking, the observed maps) plus identical iterations: measure one run
        # with a single permutation and one with more, and extrapolate linearly to our number of permutations
        for label, tfce, n_perm, ours_perm in (
            ("max-T", False, args.nilearn_perm, args.perm),
            ("TFCE ", True, args.nilearn_perm_tfce, args.perm_tfce),
        ):
            single = run_nilearn(Y, mask, affine, 1, args.n_jobs, tfce=tfce)
            several = run_nilearn(Y, mask, affine, n_perm, args.n_jobs, tfce=tfce)
            per = (several - single) / max(1, n_perm - 1)
            fixed = max(0.0, single - per)
            scaled = fixed + per * (ours_perm - 1)
            print(f"nilearn {label}: {several:8.2f} s for {n_perm} permutations, {single:.2f} s for 1 "
                  f"({per * 1e3:.1f} ms each + {fixed:.1f} s fixed); extrapolated to {ours_perm}: {scaled:.0f} s")
            if not tfce:
                print(f"    ours max-T is {scaled / ours_maxt:.1f}x faster")
                continue
            for (connectivity, step), total in ours_tfce.items():
                print(f"    ours TFCE connectivity {connectivity:2d}, {step:7s} is {scaled / total:6.1f}x faster "
                      f"({per / (total / (args.perm_tfce - 1)):.0f}x per permutation)")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak resident memory (everything above): {peak_rss:.0f} MiB")


if __name__ == "__main__":
    main()
