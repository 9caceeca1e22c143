"""Benchmark: FWE across contrasts and NPC on null data, tail acceleration against long references, TFCE time.

Run on demand (not a test)::

    .venv/bin/python benchmarks/bench_palm.py calibration                    # 500 smooth null datasets
    .venv/bin/python benchmarks/bench_palm.py npc-voxel --datasets 20000     # NPC at one voxel: method vs code
    .venv/bin/python benchmarks/bench_palm.py tail                           # 500 + tail vs 100,000 permutations
    .venv/bin/python benchmarks/bench_palm.py tail --method tfce --reference 20000
    .venv/bin/python benchmarks/bench_palm.py tail-studies --datasets 10     # PALM's fit against ours
    .venv/bin/python benchmarks/bench_palm.py tfce-time                      # 100 subjects at 2 mm, TFCE

``calibration``: each dataset is smooth Gaussian noise (sigma ``--smoothing`` voxels) on a ``--shape``^3 box for
``--subjects`` maps and a design of an intercept and three random covariates; the three covariate contrasts are
tested with max-T corrected across contrasts (one permutation set, the maximum over contrasts), with max-T per
contrast (three separate corrections, for comparison), and combined by NPC (Fisher, Tippett), also over two
modalities: a second map per subject correlated ``--modality-correlation`` with the first (from its own generator,
so the other methods' datasets do not change), the three contrasts on each. It prints, per
method, the share of datasets with any FWE p <= alpha over the family (the three contrasts), its 95%
Clopper-Pearson interval and the verdict against the central 95% binomial interval of alpha.

``npc-voxel``: the same design (an intercept, three random covariates, their three contrasts on two modalities
correlated ``--modality-correlation``) at one voxel, where the FWE p is the permutation p itself, by Freedman-Lane
and by permutation of the raw data (Manly, exact under this global null): the rejection rate of Fisher and Tippett
by an independent implementation written here (numpy only) and by the runner's ``npc_inference``, on the same
datasets. It tells the approximation of the method (Freedman-Lane) from an error of the implementation.

``tail``: a one-sample study with effects of graded size (smooth noise plus blobs); FWE p of ``--method`` (max-T or
TFCE) from ``--short``
permutations plus the generalised Pareto tail, against ``--reference`` permutations. It prints how many voxels with
reference p >= 1e-4 agree within Monte Carlo error (3 sd of a ``--short``-permutation estimate plus that of the
reference), and how many with reference p below 1/``--short`` the tail resolves below it.

``tail-studies``: ``--datasets`` one-sample studies of 300 independent voxels, 80 with effects; the median ratio of
tail p to a ``--reference``-permutation p for the fit as PALM does it (the unpermuted maximum kept in the fitted
null, the GPD shape free), with the unpermuted maximum left out, and ours (also the shape capped at 0).

``tfce-time``: time to answer for TFCE on ``--subjects`` maps of a brain-sized ellipsoid mask at 2 mm (about 228,000
voxels): ``--short`` permutations plus the tail, and plain permutations (``--plain`` of them; the time of 10,000 is
projected linearly from that when ``--plain`` is smaller). The light versions run in the test suite
(``tests/test_permutation_palm.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.inference.permutation import PermutationOptions, fwe_p_values, permutation_inference  # noqa: E402
from runner.inference.permutation.acceleration import accelerated_p_values, fit_null, fit_tail  # noqa: E402
from runner.inference.permutation.npc import npc_inference  # noqa: E402


def clopper_pearson(count: int, n: int) -> tuple[float, float]:
    """Exact 95% interval of a binomial proportion."""
    low = stats.beta.ppf(0.025, count, n - count + 1) if count else 0.0
    high = stats.beta.ppf(0.975, count + 1, n - count) if count < n else 1.0
    return float(low), float(high)


def smooth_noise(rng: np.random.Generator, n: int, mask: np.ndarray, sigma: float) -> np.ndarray:
    """n maps of Gaussian noise smoothed by ``sigma`` voxels, unit variance inside the mask."""
    rows = []
    for _ in range(n):
        volume = ndimage.gaussian_filter(rng.standard_normal(mask.shape), sigma)
        rows.append(volume[mask] / volume[mask].std())
    return np.asarray(rows)


def calibration(args: argparse.Namespace) -> None:
    mask = np.ones((args.shape,) * 3, dtype=bool)
    options = PermutationOptions(n_permutations=args.permutations, n_jobs=args.jobs)
    counts = {"maxt across 3 contrasts": 0, "maxt per contrast (3 separate)": 0, "npc fisher": 0,
              "npc tippett": 0, "npc fisher, 2 modalities": 0, "npc tippett, 2 modalities": 0}
    rho = args.modality_correlation
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for index in range(args.datasets):
        X = np.column_stack([np.ones(args.subjects), rng.standard_normal((args.subjects, 3))])
        Y = smooth_noise(rng, args.subjects, mask, args.smoothing)
        contrasts = [np.eye(4)[[k]] for k in (1, 2, 3)]
        seeded = replace(options, seed=index, scheme="permutation")
        outcomes = [permutation_inference(Y, X, c, mask, ("maxt",), seeded) for c in contrasts]
        combined = np.max([o.null_max["maxt"] for o in outcomes], axis=0)
        across = min(fwe_p_values(o.observed_measure["maxt"], combined).min() for o in outcomes)
        counts["maxt across 3 contrasts"] += across <= args.alpha
        counts["maxt per contrast (3 separate)"] += min(o.corrected_p["maxt"].min() for o in outcomes) <= args.alpha
        other = rho * Y + np.sqrt(1 - rho**2) * smooth_noise(np.random.default_rng([args.seed, index]),
                                                             args.subjects, mask, args.smoothing)
        for how in ("fisher", "tippett"):
            counts[f"npc {how}"] += npc_inference(Y, X, contrasts, how, seeded).corrected_p.min() <= args.alpha
            both = npc_inference(Y, X, contrasts, how, seeded, modalities=[other])
            counts[f"npc {how}, 2 modalities"] += both.corrected_p.min() <= args.alpha
        if (index + 1) % 50 == 0:
            print(f"  {index + 1} datasets, {time.perf_counter() - start:.0f} s", flush=True)
    print_rates(counts, args.datasets, args.alpha,
                f"{args.datasets} null datasets, {args.subjects} maps, {args.shape}^3 box, sigma {args.smoothing} "
                f"voxels, {args.permutations} permutations, alpha {args.alpha}", label="FWE ", digits=3)


def print_rates(counts: dict, n: int, alpha: float, header: str, label: str = "", digits: int = 4) -> None:
    """Each method's share of the ``n`` null datasets it rejected, its 95% Clopper-Pearson interval and the
    verdict against the central 95% binomial interval of ``alpha``."""
    low, high = stats.binom.ppf(0.025, n, alpha) / n, stats.binom.isf(0.025, n, alpha) / n
    print(f"{header}; 95% binomial interval of alpha: {low:.{digits}f}-{high:.{digits}f}")
    for name, count in counts.items():
        rate = count / n
        ci = clopper_pearson(count, n)
        verdict = "inside" if low <= rate <= high else ("above" if rate > high else "below")
        name = " ".join(f"{part:13s}" for part in name) if isinstance(name, tuple) else f"{name:32s}"
        print(f"  {name} {label}{rate:.{digits}f}  (95% CI {ci[0]:.{digits}f}-{ci[1]:.{digits}f})  {verdict}")


def npc_voxel_reference(Y: np.ndarray, X: np.ndarray, orders: np.ndarray, method: str) -> dict[str, float]:
    """Permutation p of Fisher's and Tippett's combination of the covariate contrasts (columns 1..) of ``X`` on
    every column of ``Y`` (one voxel, one column per modality), written from the definitions: each contrast's
    nuisance is the other columns, Freedman-Lane permutes its residuals, Manly the data; two-sided parametric p of
    each partial t; ``orders[0]`` is the identity."""
    n, p = X.shape
    dof = n - p
    pinv = np.linalg.pinv(X)
    unscaled = np.linalg.inv(X.T @ X)
    logs = []
    for j in range(1, p):
        nuisance = np.delete(X, j, axis=1)
        hat = nuisance @ np.linalg.pinv(nuisance)
        shuffled = (hat @ Y)[None] + (Y - hat @ Y)[orders] if method == "freedman_lane" else Y[orders]
        beta = np.einsum("kn,pnm->pkm", pinv, shuffled)
        residuals = shuffled - np.einsum("nk,pkm->pnm", X, beta)
        t = beta[:, j, :] / np.sqrt((residuals**2).sum(axis=1) / dof * unscaled[j, j])
        logs.append(stats.t.logsf(np.abs(t), dof) + np.log(2.0))
    logs = np.concatenate(logs, axis=1)
    combined = {"fisher": -2.0 * logs.sum(axis=1), "tippett": -logs.min(axis=1)}
    return {how: float(np.mean(value >= value[0] * (1 - 1e-12))) for how, value in combined.items()}


def npc_voxel(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    rho, n = args.modality_correlation, args.subjects
    mask = np.ones((1, 1, 1), dtype=bool)
    contrasts = [np.eye(4)[[k]] for k in (1, 2, 3)]
    counts = {(who, method, how): 0 for who in ("reference", "runner") for method in ("freedman_lane", "manly")
              for how in ("fisher", "tippett")}
    start = time.perf_counter()
    for index in range(args.datasets):
        X = np.column_stack([np.ones(n), rng.standard_normal((n, 3))])
        first = rng.standard_normal(n)
        Y = np.column_stack([first, rho * first + np.sqrt(1 - rho**2) * rng.standard_normal(n)])
        orders = np.array([np.arange(n)] + [rng.permutation(n) for _ in range(args.permutations - 1)])
        for method in ("freedman_lane", "manly"):
            for how, p in npc_voxel_reference(Y, X, orders, method).items():
                counts[("reference", method, how)] += p <= args.alpha
            options = PermutationOptions(n_permutations=args.permutations, seed=index, scheme="permutation",
                                         method=method)
            for how in ("fisher", "tippett"):
                result = npc_inference(Y[:, :1], X, contrasts, how, options, modalities=[Y[:, 1:]])
                counts[("runner", method, how)] += result.corrected_p.min() <= args.alpha
        if (index + 1) % 1000 == 0:
            print(f"  {index + 1} datasets, {time.perf_counter() - start:.0f} s", flush=True)
    print_rates(counts, args.datasets, args.alpha,
                f"{args.datasets} null datasets at one voxel, {n} maps, 3 covariate contrasts on 2 modalities "
                f"(correlation {rho}), {args.permutations} permutations, alpha {args.alpha}")


def tail(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    mask = np.ones((args.shape,) * 3, dtype=bool)
    grid = np.indices(mask.shape).reshape(3, -1).T
    effect = np.zeros(mask.sum())
    for amplitude, centre in zip(np.linspace(0.4, 1.6, 8), rng.integers(2, args.shape - 2, (8, 3))):
        effect += amplitude * np.exp(-(((grid - centre) ** 2).sum(axis=1)) / 4.0)
    Y = smooth_noise(rng, args.subjects, mask, args.smoothing) + effect
    X = np.ones((args.subjects, 1))
    contrast = np.array([1.0])
    t0 = time.perf_counter()
    method = args.method
    short = permutation_inference(Y, X, contrast, mask, (method,),
                                  PermutationOptions(n_permutations=args.short, seed=1, n_jobs=args.jobs))
    fit = fit_null(short.null_max[method], "tail")
    accelerated = accelerated_p_values(short.observed_measure[method], short.null_max[method], fit)
    t_short = time.perf_counter() - t0
    t0 = time.perf_counter()
    long = permutation_inference(Y, X, contrast, mask, (method,),
                                 PermutationOptions(n_permutations=args.reference, seed=2, n_jobs=args.jobs))
    t_long = time.perf_counter() - t0
    reference = long.corrected_p[method]
    print(f"{method}, one-sample, {args.subjects} maps, {mask.sum()} voxels; {fit.describe()}")
    print(f"  {args.short} permutations + tail: {t_short:.1f} s; {args.reference} permutations: {t_long:.1f} s")
    checked = reference >= 1e-4
    error = (3 * np.sqrt(reference * (1 - reference) / args.short)
             + 3 * np.sqrt(reference * (1 - reference) / args.reference))
    agree = np.abs(accelerated - reference) <= error
    print(f"  voxels with reference p >= 1e-4: {checked.sum()}, within Monte Carlo error: {agree[checked].sum()}")
    for low, high in ((1e-4, 1e-3), (1e-3, 1e-2), (1e-2, 0.05), (0.05, 1.0)):
        band = (reference >= low) & (reference < high)
        if band.any():
            ratio = np.median(accelerated[band] / reference[band])
            print(f"    reference p in [{low:g}, {high:g}): {band.sum():5d} voxels, median tail/reference "
                  f"{ratio:.2f}, plain/reference {np.median(short.corrected_p[method][band] / reference[band]):.2f}")
    below = reference < 1 / args.short
    print(f"  voxels with reference p < 1/{args.short}: {below.sum()}, tail p < 1/{args.short}: "
          f"{(accelerated[below] < 1 / args.short).sum()} (plain p is at least {1 / args.short:g})")


def tail_studies(args: argparse.Namespace) -> None:
    """The tail fit as PALM does it (the unpermuted maximum in the fitted null, the GPD shape free) against ours."""
    variants = {"PALM (identity kept, shape free)": (False, False), "identity left out, shape free": (True, False),
                "ours (identity left out, shape <= 0)": (True, True)}
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    print(f"{args.datasets} one-sample studies, {args.subjects} maps, 300 independent voxels (80 with effects 0-1.6 "
          f"sd); median log10(tail p / reference p) over voxels with reference p in [1e-4, 0.05)")
    for study in range(args.datasets):
        rng = np.random.default_rng(args.seed + study)
        Y = rng.standard_normal((args.subjects, 300)) + np.r_[np.linspace(0.0, 1.6, 80), np.zeros(220)]
        X, contrast = np.ones((args.subjects, 1)), np.array([1.0])
        short = permutation_inference(Y, X, contrast, None, ("maxt",),
                                      PermutationOptions(n_permutations=args.short, seed=study))
        long = permutation_inference(Y, X, contrast, None, ("maxt",),
                                     PermutationOptions(n_permutations=args.reference, seed=study + 10**6))
        reference, null = long.corrected_p["maxt"], short.null_max["maxt"]
        band = (reference >= 1e-4) & (reference < 0.05)
        row = []
        for name, (drop_identity, cap) in variants.items():
            fit = fit_tail(null[1:] if drop_identity else null, cap_shape=cap)
            p = accelerated_p_values(short.observed_measure["maxt"], null, fit)
            ratios[name].append(float(np.median(np.log10(p[band] / reference[band]))))
            row.append(f"{ratios[name][-1]:+.2f} (k {fit.shape:+.2f})")
        print(f"  study {study + 1:2d}: " + "; ".join(row))
    for name, values in ratios.items():
        values = np.asarray(values)
        print(f"  {name:38s} mean {values.mean():+.2f}, range {values.min():+.2f} to {values.max():+.2f} "
              f"(x{10 ** values.min():.2g} to x{10 ** values.max():.2g})")


def brain_mask(shape: tuple[int, int, int] = (91, 109, 91)) -> np.ndarray:
    """An ellipsoid about the size of a brain on the 2 mm MNI grid (about 228,000 voxels)."""
    grid = np.indices(shape, dtype=float)
    centre = (np.asarray(shape) - 1) / 2
    radii = np.array([34.0, 44.0, 36.0])
    return (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(axis=0) <= 1.0


def tfce_time(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    mask = brain_mask()
    n_voxels = int(mask.sum())
    # smooth maps drawn on the grid once, then cheaply shifted per subject (the timing, not the field, matters)
    base = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 2.0)
    base /= base[mask].std()
    Y = np.empty((args.subjects, n_voxels), dtype=np.float32)
    for i in range(args.subjects):
        Y[i] = np.roll(base, tuple(rng.integers(0, 20, 3)), axis=(0, 1, 2))[mask] + 0.3 * rng.standard_normal(n_voxels)
    X = np.ones((args.subjects, 1))
    contrast = np.array([1.0])
    print(f"TFCE, {args.subjects} maps, {n_voxels} voxels at 2 mm, {args.jobs} worker(s)")
    t0 = time.perf_counter()
    short = permutation_inference(Y, X, contrast, mask, ("tfce",),
                                  PermutationOptions(n_permutations=args.short, n_jobs=args.jobs))
    fit = fit_null(short.null_max["tfce"], "tail")
    accelerated_p_values(short.observed_measure["tfce"], short.null_max["tfce"], fit)
    t_short = time.perf_counter() - t0
    print(f"  {args.short} permutations + tail: {t_short:.1f} s ({fit.describe()})", flush=True)
    t0 = time.perf_counter()
    permutation_inference(Y, X, contrast, mask, ("tfce",), PermutationOptions(n_permutations=args.plain,
                                                                              n_jobs=args.jobs))
    t_plain = time.perf_counter() - t0
    projected = t_plain * (10000 - 1) / (args.plain - 1)
    note = "" if args.plain == 10000 else f" (measured {args.plain}: {t_plain:.1f} s, projected linearly)"
    print(f"  10000 plain permutations: {projected:.0f} s{note}; speed-up {projected / t_short:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("calibration", "npc-voxel", "tail", "tail-studies", "tfce-time"))
    parser.add_argument("--datasets", type=int, default=500)
    parser.add_argument("--subjects", type=int, default=None, help="default: 20 (calibration, tail), 100 (tfce)")
    parser.add_argument("--shape", type=int, default=12)
    parser.add_argument("--smoothing", type=float, default=1.5)
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--short", type=int, default=500)
    parser.add_argument("--reference", type=int, default=100000)
    parser.add_argument("--plain", type=int, default=10000)
    parser.add_argument("--method", default="maxt", choices=("maxt", "tfce"), help="tail: the FWE method")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--modality-correlation", type=float, default=0.5,
                        help="calibration: correlation of the second modality with the first")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2016)
    args = parser.parse_args()
    if args.subjects is None:
        args.subjects = 100 if args.what == "tfce-time" else 20
    {"calibration": calibration, "npc-voxel": npc_voxel, "tail": tail, "tail-studies": tail_studies,
     "tfce-time": tfce_time}[args.what](args)


if __name__ == "__main__":
    main()
