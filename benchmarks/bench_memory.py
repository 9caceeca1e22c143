"""Benchmark: a study larger than its memory budget runs within it (on demand, not a test).

    .venv/bin/python benchmarks/bench_memory.py [--subjects 1000] [--budget-gb 2] [--small 100] [--n-jobs 2]
                                                [--data-dir DIR] [--keep]

1. Simulates ``--subjects`` float32 maps (noise plus an age effect in a blob) on the bundled 2 mm MNI grid inside
   its brain mask (236,337 voxels) and writes them as .nii.gz with a table (age, sex); ``--data-dir`` keeps and
   reuses them.
2. Runs ``python -m runner`` on every map with ``memory_budget_gb=--budget-gb`` (formula ``age + C(sex)``, contrasts
   age and mean, fpr threshold, report and data cache off) in a subprocess. Its peak resident memory is
   ``ru_maxrss`` from ``os.wait4`` (anonymous and file-backed pages together); RssAnon and RssFile are also sampled
   from /proc every 0.1 s. In float64 the (maps x voxels) array alone is 1.9 GB for 1,000 subjects, so with a 2 GB
   budget it goes to a memory-mapped file and the fit reads it one voxel chunk at a time.
3. Runs the first ``--small`` subjects twice, in memory (``memory_budget_gb=null``) and with a budget that sends
   the array to a memory-mapped file (same chunk width), and compares the sha256 of every map and table: they
   must be identical. A third run with a budget so small that chunks get narrower reports the largest z difference
   (BLAS may round differently for another chunk width; thresholded maps must still agree).

Prints the peak RSS against the budget, wall time per run, and the chunk plan from run.log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 1024**3
CONTRASTS = "[{name:age,expr:age},{name:mean,expr:Intercept}]"


# -- data ----------------------------------------------------------------------------------------------------------
def simulate(folder: Path, n_subjects: int, seed: int = 0) -> Path:
    """Write ``n_subjects`` maps and table.tsv into ``folder`` (reused when already there); return the table."""
    import gzip

    import nibabel as nib
    import numpy as np
    import pandas as pd

    from runner.resources import mni_mask

    table_path = folder / f"table-{n_subjects}.tsv"
    if table_path.is_file():
        return table_path
    folder.mkdir(parents=True, exist_ok=True)
    mask_image = mni_mask(2)
    mask = np.asarray(mask_image.dataobj) > 0
    affine = mask_image.affine
    grid = np.indices(mask.shape).astype(np.float32)
    blob = np.exp(-(((grid[0] - 30) ** 2 + (grid[1] - 60) ** 2 + (grid[2] - 45) ** 2) / (2 * 6.0**2)))
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 80, n_subjects).round(1)
    sexes = rng.choice(["F", "M"], n_subjects)

    def write(i: int) -> None:
        path = folder / f"sub-{i:04d}.nii.gz"
        if path.is_file():
            return
        noise = np.random.default_rng([seed, i]).standard_normal(mask.shape, dtype=np.float32)
        values = np.where(mask, noise + 0.03 * (ages[i] - 50) * blob, 0).astype(np.float32)
        image = nib.Nifti1Image(values, affine)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(gzip.compress(image.to_bytes(), compresslevel=1, mtime=0))
        tmp.rename(path)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(write, range(n_subjects)))
    pd.DataFrame({"participant_id": [f"sub-{i:04d}" for i in range(n_subjects)],
                  "path": [f"sub-{i:04d}.nii.gz" for i in range(n_subjects)],
                  "age": ages, "sex": sexes}).to_csv(table_path, sep="\t", index=False)
    print(f"simulated {n_subjects} maps in {time.perf_counter() - started:.0f} s into {folder}")
    return table_path


# -- one run -------------------------------------------------------------------------------------------------------
class RssSampler(threading.Thread):
    """Largest RssAnon / RssFile of a process, sampled from /proc/<pid>/status."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self.done = threading.Event()

    def run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self.done.is_set():
            try:
                for line in status.read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in self.peak:
                        self.peak[key] = max(self.peak[key], int(value.split()[0]) * 1024)
            except (OSError, ValueError):
                return
            time.sleep(self.interval)


def run_runner(table: Path, run_dir: Path, budget_gb: float | None, n_jobs: int, limit: int | None = None) -> dict:
    """``python -m runner`` in a subprocess; wall time, peak RSS (ru_maxrss) and sampled RssAnon/RssFile."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    query = [f"data.query=\"participant_id < 'sub-{limit:04d}'\""] if limit else []
    args = [sys.executable, "-m", "runner", "data=table", f"data.table={table}", "design=custom",
            "design.formula='age + C(sex)'", f"contrasts={CONTRASTS}", "correction=[fpr]", "report=false",
            "cache=false", "progress=false", f"n_jobs={n_jobs}",
            f"memory_budget_gb={'null' if budget_gb is None else budget_gb}", f"hydra.run.dir={run_dir}",
            f"output_root={run_dir.parent}", *query]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=run_dir.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = RssSampler(process.pid)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    sampler.done.set()
    stderr = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the run into {run_dir} failed:\n{stderr}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    log = (run_dir / "run.log").read_text()
    plan = [line.split(" - ", 1)[-1] for line in log.splitlines() if "fitting OLS" in line or "loaded " in line]
    return {"seconds": elapsed, "peak_rss": usage.ru_maxrss * 1024, **sampler.peak, "manifest": manifest,
            "plan": plan, "timings": manifest.get("timings", {})}


def output_digests(manifest: dict) -> dict[str, str]:
    return {e["path"]: e["sha256"] for e in manifest["outputs"] if e["kind"] in ("map", "clusters", "table")}


def z_difference(a: Path, b: Path) -> float:
    import nibabel as nib
    import numpy as np

    za = nib.load(a / "contrast-age_stat-z_statmap.nii.gz").get_fdata()
    zb = nib.load(b / "contrast-age_stat-z_statmap.nii.gz").get_fdata()
    return float(np.max(np.abs(za - zb)))


def describe(label: str, result: dict, budget_gb: float | None) -> None:
    budget = f"budget {budget_gb:g} GB" if budget_gb else "budget: half of available RAM"
    print(f"{label}: {result['seconds']:.1f} s, peak RSS {result['peak_rss'] / GIB:.2f} GB "
          f"(sampled RssAnon {result['RssAnon'] / GIB:.2f} GB, RssFile {result['RssFile'] / GIB:.2f} GB), {budget}")
    print("    stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["timings"].items()))
    for line in result["plan"]:
        print("    " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--budget-gb", type=float, default=2.0)
    parser.add_argument("--small", type=int, default=100, help="subjects of the in-memory comparison")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=None, help="keep (and reuse) the simulated maps here")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    args = parser.parse_args()

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    work = Path(tempfile.mkdtemp(prefix="bench-memory-runs-"))
    try:
        table = simulate(data_dir, args.subjects)
        print(f"{args.subjects} maps on the 2 mm MNI grid; load average {os.getloadavg()[0]:.1f}, "
              f"{os.cpu_count()} CPU(s)")

        large = run_runner(table, work / "large", args.budget_gb, args.n_jobs)
        describe(f"{args.subjects} subjects", large, args.budget_gb)
        verdict = "under" if large["peak_rss"] <= args.budget_gb * GIB else "OVER"
        print(f"    peak RSS is {verdict} the budget ({large['peak_rss'] / GIB:.2f} GB of {args.budget_gb:g} GB; "
              "the interpreter, numpy, scipy, nibabel, pandas and Hydra alone take about 0.2 GB)")

        n_small = min(args.small, args.subjects)
        y_bytes = n_small * large["manifest"]["n_voxels"] * 8
        mapped_budget = round(1.6 * y_bytes / GIB, 3)  # the array takes more than half of it: memory-mapped
        in_memory = run_runner(table, work / "small-in-memory", None, args.n_jobs, limit=n_small)
        mapped = run_runner(table, work / "small-mapped", mapped_budget, args.n_jobs, limit=n_small)
        narrow = run_runner(table, work / "small-narrow", 0.02, args.n_jobs, limit=n_small)
        describe(f"{n_small} subjects in memory", in_memory, None)
        describe(f"{n_small} subjects memory-mapped", mapped, mapped_budget)
        describe(f"{n_small} subjects, narrow chunks", narrow, 0.02)
        same = output_digests(in_memory["manifest"]) == output_digests(mapped["manifest"])
        print(f"in memory vs memory-mapped ({n_small} subjects): "
              f"{'identical' if same else 'DIFFERENT'} ({len(output_digests(mapped['manifest']))} maps and tables, "
              "sha256)")
        thresholded = [p for p in output_digests(in_memory["manifest"]) if "desc-" in p]
        same_thresholded = all(output_digests(in_memory["manifest"])[p] == output_digests(narrow["manifest"])[p]
                               for p in thresholded)
        print(f"in memory vs narrow chunks: max |z difference| "
              f"{z_difference(work / 'small-in-memory', work / 'small-narrow'):.2e}; thresholded maps and cluster "
              f"tables {'identical' if same_thresholded else 'DIFFERENT'}")
        if not same or large["peak_rss"] > (args.budget_gb + 0.5) * GIB:
            raise SystemExit(1)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            if args.data_dir is None:
                shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"runs kept in {work}")


if __name__ == "__main__":
    main()
