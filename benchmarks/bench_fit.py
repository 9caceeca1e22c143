"""Benchmark: nilearn's SecondLevelModel against the runner, end to end from .nii.gz files (on demand, not a test).

    .venv/bin/python benchmarks/bench_fit.py [--subjects 100] [--repeats 1] [--n-jobs 2] [--profile]

Simulates ``--subjects`` float32 maps (smooth noise + an age and a sex effect) on the bundled 2 mm MNI grid with its
brain mask (~220k in-mask voxels), writes them as .nii.gz to a temporary folder, then times, each run in a fresh
subprocess so that peak memory (ru_maxrss of that process) belongs to one run of one pipeline only, and the
``--repeats`` interleaved (nilearn, ours, app, nilearn, ...) so that a change in the machine's load hits all three:

  nilearn  SecondLevelModel(mask_img=mask).fit(paths, design_matrix=dm) + compute_contrast(output_type='all') for
           3 t contrasts and 1 F contrast of ``1 + age + C(sex)`` (nilearn re-reads and re-masks the files for every
           contrast: that is how compute_contrast works without a joblib memory);
  ours     runner.data.loader.load_group_data + runner.model.fit_contrasts (same contrasts);
  app      runner.app.run with report=false (loads, fits, writes every map, thresholds fpr + fdr, cluster tables,
           manifest), data cache off.

Times exclude interpreter start-up and imports (reported separately). Files are freshly written, so every
pipeline reads them from the page cache. The z maps of the nilearn and ours pipelines are compared at the end
(a benchmark of different numbers would be meaningless). ``--profile`` also prints the cProfile top functions of
the ours and app runs (main thread only) and, because cProfile cannot see the decoding threads, a serial replay of
the loading steps of every map.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONTRASTS = [  # name, expression over the design columns (t), or list of expressions (F)
    ("intercept", "Intercept"),
    ("age", "age"),
    ("male", "C(sex)[T.M]"),
    ("ageOrSex", ["age", "C(sex)[T.M]"]),
]
FORMULA = "age + C(sex)"


# -- data ----------------------------------------------------------------------------------------------------------
def simulate(folder: Path, n_subjects: int, seed: int = 0) -> None:
    """Write the mask, ``n_subjects`` float32 maps and table.tsv into ``folder`` (skipped when already there)."""
    import nibabel as nib
    import numpy as np
    import pandas as pd
    from scipy import ndimage

    from runner.resources import mni_mask

    table_path = folder / "table.tsv"
    if table_path.is_file() and len(pd.read_csv(table_path, sep="\t")) == n_subjects:
        return
    folder.mkdir(parents=True, exist_ok=True)
    mask_image = mni_mask(2)
    mask = np.asarray(mask_image.dataobj) > 0
    nib.Nifti1Image(mask.astype(np.uint8), mask_image.affine).to_filename(folder / "mask.nii.gz")
    support = ndimage.binary_dilation(mask, iterations=2)  # real maps are zero (or NaN) outside the brain
    ijk = np.indices(mask.shape)
    centre = np.array(mask.shape)[:, None, None, None] * np.array([0.4, 0.5, 0.6])[:, None, None, None]
    blob = np.exp(-np.sum((ijk - centre) ** 2, axis=0) / (2 * 6.0**2))
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        age = float(np.round(rng.uniform(20, 70), 2))
        sex = "MF"[s % 2]
        noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), 1.5)
        noise *= np.float32(1.0 / noise.std())
        volume = noise + (0.04 * (age - 45) + 0.5 * (sex == "M")) * blob
        volume[~support] = 0.0
        name = f"sub-{s:03d}.nii.gz"
        nib.Nifti1Image(volume.astype(np.float32), mask_image.affine).to_filename(folder / name)
        rows.append({"path": name, "participant_id": f"sub-{s:03d}", "age": age, "sex": sex})
    pd.DataFrame(rows).to_csv(table_path, sep="\t", index=False)


# -- measurements inside a worker process --------------------------------------------------------------------------
def proc_status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB; 0 where /proc is not available."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def blas_info() -> list[dict]:
    from threadpoolctl import threadpool_info

    return [{k: info.get(k) for k in ("user_api", "internal_api", "num_threads", "version", "threading_layer")}
            | {"library": Path(info.get("filepath", "")).name} for info in threadpool_info()]


def design_and_contrasts(folder: Path):
    """Our design matrix (patsy) and contrasts; nilearn is given the same matrix and weights."""
    from runner.contrasts import build_contrast
    from runner.data.sources import from_table
    from runner.design import build_design

    inputs = from_table(folder / "table.tsv")
    design = build_design(inputs.table, formula=FORMULA)
    contrasts = [build_contrast(name, expr, design.columns) for name, expr in CONTRASTS]
    return inputs, design, contrasts


def worker_nilearn(folder: Path, n_jobs: int) -> dict:
    import nibabel as nib
    import numpy as np
    from nilearn.glm.second_level import SecondLevelModel

    inputs, design, contrasts = design_and_contrasts(folder)
    paths = [str(ref.path) for ref in inputs.images]
    mask = str(folder / "mask.nii.gz")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    model = SecondLevelModel(mask_img=mask, n_jobs=n_jobs).fit(paths, design_matrix=design.matrix)
    timings["fit"] = time.perf_counter() - start
    outputs = {}
    for contrast in contrasts:
        tick = time.perf_counter()
        weights = contrast.matrix[0] if contrast.stat_type == "t" else contrast.matrix
        outputs[contrast.name] = model.compute_contrast(weights, second_level_stat_type=contrast.stat_type,
                                                        output_type="all")
        timings[f"contrast {contrast.name}"] = time.perf_counter() - tick
    timings = {"total": time.perf_counter() - start, **timings}
    in_mask = np.asarray(nib.load(mask).dataobj) > 0
    np.savez(folder / "z_nilearn.npz",
             **{name: np.asarray(out["z_score"].dataobj)[in_mask] for name, out in outputs.items()})
    return {"timings": timings, "n_jobs": n_jobs}


def worker_ours(folder: Path, n_jobs: int) -> dict:
    import numpy as np

    from runner import model
    from runner.config import DataConfig
    from runner.data.loader import load_group_data

    inputs, design, contrasts = design_and_contrasts(folder)
    settings = DataConfig(table=str(folder / "table.tsv"), mask=str(folder / "mask.nii.gz"))
    X = design.matrix.to_numpy(dtype=float)
    start = time.perf_counter()
    data = load_group_data(inputs, settings, n_jobs=n_jobs)
    loaded = time.perf_counter()
    results = model.fit_contrasts(data.Y, X, contrasts, n_jobs=n_jobs)
    done = time.perf_counter()
    np.savez(folder / "z_ours.npz", **{name: result.z for name, result in results.items()})
    return {"timings": {"total": done - start, "load_group_data": loaded - start, "fit_contrasts": done - loaded},
            "n_jobs": n_jobs, "Y_shape": list(data.Y.shape)}


def worker_app(folder: Path, n_jobs: int) -> dict:
    from runner import app
    from runner.config import RunSettings, build_settings

    config = {
        "data": {"table": str(folder / "table.tsv"), "mask": str(folder / "mask.nii.gz")},
        "design": {"formula": FORMULA},
        "contrasts": [{"name": name, "expr": expr} for name, expr in CONTRASTS],
        "correction": ["fpr", "fdr"],
        "report": False, "progress": False, "n_jobs": n_jobs, "overwrite": True,
    }
    if "cache" in {f.name for f in dataclasses.fields(RunSettings)}:
        config["cache"] = False  # time the real decoding, not a cache hit
    settings = build_settings(config)
    run_dir = folder / "app-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    app.run(settings, run_dir, resolved_config=config)
    total = time.perf_counter() - start
    manifest = json.loads((run_dir / "manifest.json").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"timings": {"total": total, **{f"stage {k}": v for k, v in manifest.get("timings", {}).items()}},
            "n_jobs": n_jobs}


WORKERS = {"nilearn": worker_nilearn, "ours": worker_ours, "app": worker_app}


def load_steps_breakdown(folder: Path) -> None:
    """Serial time of each step of loading one map, summed over the maps (cProfile cannot see the decoding
    threads of load_group_data, so the steps are replayed here one file at a time)."""
    import gzip
    import hashlib

    import nibabel as nib
    import numpy as np

    from runner.data.smoothing import smooth_volume

    mask = np.asarray(nib.load(folder / "mask.nii.gz").dataobj) > 0
    totals: dict[str, float] = {}

    def step(name, function):
        tick = time.perf_counter()
        value = function()
        totals[name] = totals.get(name, 0.0) + time.perf_counter() - tick
        return value

    paths = sorted(folder.glob("sub-*.nii.gz"))
    rows = []
    for path in paths:
        raw = step("read bytes", path.read_bytes)
        step("sha256 of the file", lambda: hashlib.sha256(raw).hexdigest())
        decoded = step("gzip decompress", lambda: gzip.decompress(raw))
        image = step("NIfTI header + array view", lambda: nib.Nifti1Image.from_bytes(decoded))
        volume = step("float64 copy of the full grid", lambda: np.asarray(image.dataobj, dtype=np.float64))
        step("isfinite over the full grid", lambda: np.isfinite(volume))
        smoothed = step("smooth_volume(fwhm=None) copies", lambda: smooth_volume(volume, image.affine, None))
        rows.append(step("mask + astype", lambda: smoothed[mask].astype(np.float64)))
    step("np.vstack of the rows", lambda: np.vstack(rows))
    print(f"\n===== serial load steps over {len(paths)} maps (sum of seconds) =====", file=sys.stderr)
    for name, seconds in totals.items():
        print(f"  {name:<34} {seconds:6.2f} s", file=sys.stderr)


def worker_main(args: argparse.Namespace) -> None:
    import_start = time.perf_counter()
    import numpy  # noqa: F401  (BLAS is loaded with numpy)
    import scipy.linalg  # noqa: F401
    if args.worker == "nilearn":
        import nilearn.glm.second_level  # noqa: F401
    else:
        import runner.app  # noqa: F401
        import runner.model  # noqa: F401
    imports = time.perf_counter() - import_start
    rss_after_imports = proc_status_kib("VmRSS")
    function = WORKERS[args.worker]
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        result = profiler.runcall(function, args.data_dir, args.n_jobs)
        stats = pstats.Stats(profiler, stream=sys.stderr)
        print(f"\n===== cProfile of the {args.worker} run (top by own time) =====", file=sys.stderr)
        stats.sort_stats("tottime").print_stats(18)
        print(f"===== cProfile of the {args.worker} run (top by cumulative time) =====", file=sys.stderr)
        stats.sort_stats("cumulative").print_stats(30)
    else:
        result = function(args.data_dir, args.n_jobs)
    if args.profile and args.worker == "ours":
        load_steps_breakdown(args.data_dir)
    result.update(imports_s=imports, rss_after_imports_kib=rss_after_imports, peak_rss_kib=proc_status_kib("VmHWM"),
                  ru_maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, blas=blas_info())
    args.result.write_text(json.dumps(result))


# -- the parent: run every worker in its own process ----------------------------------------------------------------
def run_worker(name: str, args: argparse.Namespace, folder: Path) -> dict:
    result_file = folder / f"result-{name}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--data-dir", str(folder),
               "--n-jobs", str(args.n_jobs), "--result", str(result_file)]
    if args.profile and name != "nilearn":
        command.append("--profile")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage: its peak RSS, nobody else's
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"worker {name} failed with exit code {process.returncode}")
    result = json.loads(result_file.read_text())
    result["child_ru_maxrss_kib"] = usage.ru_maxrss
    return result


def merge(runs: list[dict]) -> dict:
    """One pipeline's repeats (one process each): every run's timings, the largest peak memory."""
    return {"runs": [r["timings"] for r in runs],
            "peak_kib": max(max(r["child_ru_maxrss_kib"], r["peak_rss_kib"]) for r in runs),
            "rss_after_imports_kib": min(r["rss_after_imports_kib"] for r in runs),
            "imports_s": min(r["imports_s"] for r in runs), "blas": runs[0]["blas"], "n_jobs": runs[0]["n_jobs"]}


def summary_line(name: str, result: dict) -> str:
    totals = sorted(r["total"] for r in result["runs"])
    median = totals[len(totals) // 2]
    return (f"  {name:<8} best {totals[0]:7.2f} s   median {median:7.2f} s   peak RSS {result['peak_kib'] / 1024:7.0f} "
            f"MiB   (RSS after imports {result['rss_after_imports_kib'] / 1024:.0f} MiB, imports "
            f"{result['imports_s']:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1,
                        help="threads for decoding/fitting (ours) and nilearn's n_jobs (default: all cores)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the simulated maps here and reuse them (default: a temporary folder, removed)")
    parser.add_argument("--profile", action="store_true", help="print cProfile summaries of the ours/app runs")
    parser.add_argument("--skip", nargs="*", default=[], choices=sorted(WORKERS), help="pipelines not to run")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return

    folder = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-fit-"))
    try:
        start = time.perf_counter()
        simulate(folder, args.subjects)
        print(f"data: {args.subjects} maps on the 2 mm MNI grid in {folder} "
              f"({sum(p.stat().st_size for p in folder.glob('sub-*.nii.gz')) / 1e6:.0f} MB, "
              f"ready in {time.perf_counter() - start:.1f} s)")
        print(f"machine: {platform.platform()}, python {platform.python_version()}, {os.cpu_count()} cores, "
              f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}, n_jobs={args.n_jobs}")
        for stale in [*folder.glob("z_*.npz"), *folder.glob("result-*.json")]:
            stale.unlink()
        names = [name for name in ("nilearn", "ours", "app") if name not in args.skip]
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for repeat in range(args.repeats):  # interleaved, so a change in the machine's load hits every pipeline
            for name in names:
                print(f"repeat {repeat + 1}/{args.repeats}: {name} ...", flush=True)
                runs[name].append(run_worker(name, args, folder))
        report({name: merge(results) for name, results in runs.items()}, folder)
    finally:
        if args.data_dir is None:
            shutil.rmtree(folder, ignore_errors=True)


def report(results: dict, folder: Path) -> None:
    import numpy as np

    print(f"\nend to end from the .nii.gz files (imports excluded; load average now "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}):")
    for name, result in results.items():
        print(summary_line(name, result))
        for key in result["runs"][0]:
            if key != "total":
                print(f"      {key:<28} {min(r[key] for r in result['runs']):7.2f} s")
    if "nilearn" in results:
        best_nilearn = min(r["total"] for r in results["nilearn"]["runs"])
        peak_nilearn = results["nilearn"]["peak_kib"]
        for name in ("ours", "app"):
            if name in results:
                best = min(r["total"] for r in results[name]["runs"])
                peak = results[name]["peak_kib"]
                print(f"  ratio nilearn/{name}: time {best_nilearn / best:.2f}x   "
                      f"peak memory {name}/nilearn {peak / peak_nilearn:.2f}")
    print("\nBLAS / thread pools (threadpoolctl, in the workers):")
    for name, result in results.items():
        print(f"  {name} (n_jobs={result['n_jobs']}):")
        for pool in result["blas"]:
            print("    " + ", ".join(f"{k}={v}" for k, v in pool.items() if v is not None))
    print(f"  OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, "
          f"MKL_NUM_THREADS={os.environ.get('MKL_NUM_THREADS')}")
    if (folder / "z_nilearn.npz").is_file() and (folder / "z_ours.npz").is_file():
        theirs, ours = np.load(folder / "z_nilearn.npz"), np.load(folder / "z_ours.npz")
        worst = max(float(np.max(np.abs(ours[k] - theirs[k]))) for k in theirs.files)
        print(f"\nsanity: max |z_ours - z_nilearn| over {len(theirs.files)} contrasts = {worst:.2e}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
