"""Benchmark: one large analysis on Dask workers -- time with 1 and 2 workers, peak memory per process, and a
projection of wall time on N nodes from the measured cost of every task (on demand, not a test).

    .venv/bin/python benchmarks/bench_scale.py                                  # 10,000 maps, 1,000 permutations
    .venv/bin/python benchmarks/bench_scale.py --maps 1000 --workers 1 2 --store /tmp/scale-store

1. Simulates ``--maps`` maps on the bundled 2 mm MNI brain mask (236,337 voxels) straight into the chunked on-disk
   store the loader uses for studies over the memory budget: one float32 ``.npy`` file, memory-mapped, written
   ``--batch`` maps at a time (no NIfTI files; no process ever holds all maps). White noise plus planted group and
   age effects in two blobs: max-T costs the same on smooth or white noise, and this keeps the generation cheap.
   The design is ``Intercept + group + age + sex``; contrasts: group (t), age (t), group and age (F).
2. For each ``--workers`` count, in a fresh subprocess (so each peak is its own): a Dask ``LocalCluster`` of that
   many single-threaded worker processes, each limited to ``--budget-gb`` (Dask's nanny restarts a worker over
   95 % of it); the OLS fit of the three contrasts twice, over voxel chunks (``model.fit=standard``) and from
   sufficient statistics over batches of ``--batch-maps`` maps (``model.fit=sufficient``), each task planned on
   half of a worker's budget whatever the number of workers (so the chunks, and the bits, are the same); then
   ``--permutations`` max-T permutations of the group contrast (Freedman-Lane), all on the Dask executor. Workers
   map the store by file name and read their blocks with positioned reads (``runner.chunks.read_block``).
   Peak memory: ``ru_maxrss`` of the client process (which also hosts the scheduler) and of each worker.
   The cost of every task (compute start to stop, from Dask's task stream) is recorded, and each part's wall time
   is printed on stderr as it ends.
3. Prints wall times, the scaling ratio (time with 1 worker / time with k workers), the peaks against the budget,
   the largest difference between the two fits, the CPU seconds of the client and of the workers, and a projection
   of wall time on N nodes of ``--cores-per-node`` workers each, for the measured and for
   ``--project-permutations`` permutations: ``serial`` (the wall time with one worker minus its task costs:
   observed statistics, drawing the set, gathering, scheduling) + the sufficient-statistics fit's tasks handed out
   to the first free worker + rounds of max-T GEMM units of 256 permutations (the engine's smallest block: 1,000
   permutations are at most 4 parallel tasks, 10,000 are 40) at the measured cost per unit. A second column scales the task costs by CPU seconds / wall seconds: the time on
   cores not shared with other work. Reading the store over a network file system is not modelled.

With more than 2 cores the measured ratio approaches the worker count; on a machine whose cores are shared by other
jobs it does not, and the projection (from per-task costs) is the more useful number.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
GIB = 1024**3
UNIT = 256  # permutations per GEMM in max-T (runner.inference.permutation.scores.PERMUTATION_BLOCK)


# -- the store -----------------------------------------------------------------------------------------------------
def simulate_store(folder: Path, n_maps: int, batch: int, seed: int = 0) -> tuple[Path, Path]:
    """``Y-<n>.npy`` (maps x in-mask voxels, float32, written batch by batch) and its design; reused when present."""
    from runner.resources import mni_mask

    store, design_path = folder / f"Y-{n_maps}.npy", folder / f"X-{n_maps}.npy"
    if store.is_file() and design_path.is_file():
        return store, design_path
    folder.mkdir(parents=True, exist_ok=True)
    mask = np.asarray(mni_mask(2).dataobj) > 0
    grid = np.indices(mask.shape)[:, mask].astype(np.float32)
    def blob(centre: tuple[int, int, int]) -> np.ndarray:  # Gaussian, sigma 6 voxels
        return np.exp(-((grid - np.array(centre, dtype=np.float32)[:, None]) ** 2).sum(0) / 72.0)

    group_effect, age_effect = 0.3 * blob((30, 60, 45)), 0.02 * blob((60, 50, 40))
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n_maps).astype(float)
    age = rng.uniform(45, 80, n_maps)
    sex = rng.integers(0, 2, n_maps).astype(float)
    design = np.column_stack([np.ones(n_maps), group, age - age.mean(), sex])
    Y = np.lib.format.open_memmap(store.with_suffix(".partial.npy"), mode="w+", dtype=np.float32,
                                  shape=(n_maps, int(mask.sum())))
    for first in range(0, n_maps, batch):
        last = min(n_maps, first + batch)
        noise = rng.standard_normal((last - first, Y.shape[1]), dtype=np.float32)
        Y[first:last] = (noise + group[first:last, None] * group_effect
                         + (age[first:last, None] - age.mean()) * age_effect)
    Y.flush()
    del Y
    os.replace(store.with_suffix(".partial.npy"), store)
    np.save(design_path, design)
    return store, design_path


# -- one configuration, in its own process ---------------------------------------------------------------------------
def measure(store: Path, design_path: Path, n_workers: int, n_permutations: int, budget_gb: float,
            batch_maps: int = 1000) -> dict:
    """Both fits (standard, sufficient statistics over ``batch_maps`` maps) + 3 contrasts + max-T permutations on a
    LocalCluster of ``n_workers``; times, task costs, peaks, and the largest difference between the two fits."""
    from distributed import Client, LocalCluster, get_task_stream

    from runner.contrasts import Contrast
    from runner.execution.dask import DaskExecutor
    from runner.inference.permutation import PermutationOptions, permutation_inference
    from runner.model import fit_contrasts
    from runner.sufficient import fit_contrasts_by_batches

    Y = np.load(store, mmap_mode="r")
    X = np.load(design_path)
    contrasts = [Contrast("group", np.array([[0.0, 1, 0, 0]]), "t"), Contrast("age", np.array([[0.0, 0, 1, 0]]), "t"),
                 Contrast("groupAndAge", np.array([[0.0, 1, 0, 0], [0.0, 0, 1, 0]]), "F")]
    budget = int(budget_gb * GIB)
    # the fits share their budget among the workers: half of each worker's, whatever their number, so the chunks
    # (and so the bits) are the same for every worker count, with room for the worker itself under its limit
    fit_budget = budget // 2 * n_workers
    out: dict = {"workers": n_workers, "maps": int(Y.shape[0]), "voxels": int(Y.shape[1]),
                 "permutations": n_permutations}
    started = time.perf_counter()
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40, memory_limit=f"{budget_gb}GiB") as cluster, Client(cluster) as client:
        out["cluster_start_s"] = time.perf_counter() - started
        client.run(_warm_up)  # import the runner on every worker before timing
        executor = DaskExecutor(client)
        cpu = _cpu(client)
        with get_task_stream(client) as fit_stream:
            start = time.perf_counter()
            fitted = fit_contrasts(Y, X, contrasts, memory_budget_bytes=fit_budget, executor=executor)
            out["fit_s"] = time.perf_counter() - start
            _progress(f"{n_workers} worker(s): fit_s {out['fit_s']:.1f}")
        cpu_standard = _cpu(client)
        with get_task_stream(client) as sufficient_stream:
            start = time.perf_counter()
            batched = fit_contrasts_by_batches(Y, X, contrasts, batch_maps=batch_maps, memory_budget_bytes=fit_budget,
                                               executor=executor)
            out["sufficient_fit_s"] = time.perf_counter() - start
            _progress(f"{n_workers} worker(s): sufficient_fit_s {out['sufficient_fit_s']:.1f}")
        cpu_fit = _cpu(client)
        out["fit_cpu_s"] = {k: cpu_standard[k] - cpu[k] for k in cpu}
        out["sufficient_fit_cpu_s"] = {k: cpu_fit[k] - cpu_standard[k] for k in cpu}
        out["sufficient_fit_tasks_s"] = _costs(sufficient_stream.data)
        out["sufficient_vs_standard"] = _largest_differences(fitted, batched)
        del batched
        with get_task_stream(client) as permutation_stream:
            start = time.perf_counter()
            options = PermutationOptions(n_permutations=n_permutations, seed=0, memory_budget_bytes=budget // 4)
            result = permutation_inference(Y, X, contrasts[0].matrix, None, ("maxt",), options, executor=executor)
            out["permutation_s"] = time.perf_counter() - start
            _progress(f"{n_workers} worker(s): permutation_s {out['permutation_s']:.1f}")
        cpu_end = _cpu(client)
        out["permutation_cpu_s"] = {k: cpu_end[k] - cpu_fit[k] for k in cpu}
        out["fit_tasks_s"] = _costs(fit_stream.data)
        out["permutation_tasks_s"] = _costs(permutation_stream.data)
        out["worker_peak_gb"] = sorted(v / GIB * 1024 for v in client.run(_peak_kib).values())
        out["fit_check"] = float(np.nanmax(fitted["group"].z))
        out["maxt_critical_value"] = float(np.quantile(result.null_max["maxt"], 0.95))
        out["voxels_fwe_05"] = int((result.corrected_p["maxt"] < 0.05).sum())
    out["client_peak_gb"] = _peak_kib() / GIB * 1024
    return out


def _largest_differences(standard: dict, batched: dict) -> dict[str, float]:
    """Largest difference between the fits per quantity: relative (``stat``, ``p``, ``z``) and in units of
    max(|value|, 1) (``stat_unit``, ``z_unit``: near zero any two float64 computations differ relatively)."""
    out = {}
    for field in ("stat", "p", "z"):
        a = np.concatenate([getattr(standard[name], field).ravel() for name in standard])
        b = np.concatenate([getattr(batched[name], field).ravel() for name in standard])
        with np.errstate(divide="ignore", invalid="ignore"):
            out[field] = float(np.nanmax(np.where(a == b, 0.0, np.abs(a - b) / np.abs(a))))
            if field != "p":
                out[f"{field}_unit"] = float(np.nanmax(np.abs(a - b) / np.maximum(np.abs(a), 1.0)))
    return out


def _progress(line: str) -> None:
    """A line on stderr as each part ends (the parent shows it; a long run can be followed)."""
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def _warm_up() -> None:
    import runner.inference.permutation.blocks  # noqa: F401
    import runner.model  # noqa: F401


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu(client) -> dict[str, float]:
    """CPU seconds used so far by the client process and by all workers together."""
    return {"client": _cpu_seconds(), "workers": sum(client.run(_cpu_seconds).values())}


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _costs(stream: list[dict]) -> list[float]:
    """Compute time of every task in a Dask task stream."""
    costs = []
    for task in stream:
        costs.extend(s["stop"] - s["start"] for s in task.get("startstops", ()) if s.get("action") == "compute")
    return costs


# -- report ----------------------------------------------------------------------------------------------------------
def projection(single: dict, nodes: list[int], cores_per_node: int, permutations: int,
               cpu_bound: bool = False, fit: str = "sufficient") -> list[tuple[int, float]]:
    """Wall time on N nodes from the one-worker run, for ``permutations`` max-T permutations.

    The serial (client) part as measured; the fit's chunks handed out in order to the first free worker; the
    permutations as GEMM units of 256 (the smallest block the engine cuts), each costing the measured cost per
    unit, in rounds over the workers. ``fit``: which fit's tasks (standard or sufficient). ``cpu_bound``: task
    costs scaled by the workers' CPU seconds over the tasks' wall seconds, i.e. what the tasks would take on cores
    not shared with other work.
    """
    prefix = "" if fit == "standard" else "sufficient_"
    fit_s, fit_cpu = single[f"{prefix}fit_s"], single[f"{prefix}fit_cpu_s"]
    fit_costs, permutation_costs = single[f"{prefix}fit_tasks_s"], single["permutation_tasks_s"]
    serial = max(0.0, fit_s + single["permutation_s"] - sum(fit_costs) - sum(permutation_costs))
    scale = 1.0
    if cpu_bound:  # the client's CPU seconds are its serial part on a core of its own
        busy = sum(fit_costs) + sum(permutation_costs)
        scale = (fit_cpu["workers"] + single["permutation_cpu_s"]["workers"]) / busy if busy else 1.0
        serial = fit_cpu["client"] + single["permutation_cpu_s"]["client"]
    unit_cost = scale * sum(permutation_costs) / max(1, math.ceil((single["permutations"] - 1) / UNIT))
    units = math.ceil((permutations - 1) / UNIT)
    return [(n, serial + _schedule([scale * c for c in fit_costs], n * cores_per_node)
             + math.ceil(units / (n * cores_per_node)) * unit_cost) for n in nodes]


def _schedule(costs: list[float], workers: int) -> float:
    """Makespan of ``costs`` handed out in order to the first of ``workers`` to be free."""
    free = [0.0] * max(1, min(workers, len(costs) or 1))
    heapq.heapify(free)
    for cost in costs:
        heapq.heappush(free, heapq.heappop(free) + cost)
    return max(free)


def report(runs: list[dict], budget_gb: float, nodes: list[int], cores_per_node: int,
           project_permutations: int) -> None:
    first = runs[0]
    size = first["maps"] * first["voxels"] * 4 / GIB
    print(f"\n{first['maps']} maps x {first['voxels']} voxels (float32 store, {size:.2f} GiB), fit + 3 contrasts + "
          f"{first['permutations']} max-T permutations; memory budget {budget_gb} GiB per process")
    print(f"{'workers':>8} {'fit s':>8} {'suff. s':>8} {'perm s':>8} {'total s':>8} {'ratio':>6} "
          f"{'client GiB':>10} {'worker GiB (each)':>18} {'CPU s client/workers':>21}")
    base = first["fit_s"] + first["sufficient_fit_s"] + first["permutation_s"]
    for run in runs:
        total = run["fit_s"] + run["sufficient_fit_s"] + run["permutation_s"]
        workers = ", ".join(f"{p:.2f}" for p in run["worker_peak_gb"])
        cpu = {k: run["fit_cpu_s"][k] + run["sufficient_fit_cpu_s"][k] + run["permutation_cpu_s"][k]
               for k in ("client", "workers")}
        print(f"{run['workers']:>8} {run['fit_s']:>8.1f} {run['sufficient_fit_s']:>8.1f} {run['permutation_s']:>8.1f} "
              f"{total:>8.1f} {base / total:>6.2f} {run['client_peak_gb']:>10.2f} {workers:>18} "
              f"{cpu['client']:>10.1f}/{cpu['workers']:<10.1f}")
    print("(fit: standard voxel-chunk fit; suff.: model.fit=sufficient; ratio: total with the first worker count / "
          "total; CPU seconds far below wall seconds mean the cores were shared with other work)")
    peak = max([r["client_peak_gb"] for r in runs] + [w for r in runs for w in r["worker_peak_gb"]])
    print(f"largest peak of any process {peak:.2f} GiB: {'within' if peak <= budget_gb else 'OVER'} the "
          f"{budget_gb} GiB budget")
    differences = first["sufficient_vs_standard"]
    print(f"sufficient vs standard fit, largest difference: p {differences['p']:.2e} relative; t/F "
          f"{differences.get('stat_unit', float('nan')):.2e} and z {differences.get('z_unit', differences['z']):.2e} "
          f"of max(|value|, 1) ({differences['stat']:.2e} relative, at values near 0)")
    if len({(r['fit_check'], r['maxt_critical_value'], r['voxels_fwe_05']) for r in runs}) != 1:
        print("WARNING: the results differ between worker counts")
    else:
        print(f"same results with every worker count: max z(group) {first['fit_check']:.3f}, max-T 95th percentile "
              f"{first['maxt_critical_value']:.3f}, {first['voxels_fwe_05']} voxels at FWE p < 0.05")
    single = next((r for r in runs if r["workers"] == 1), first)
    for fit in ("standard", "sufficient"):
        prefix = "" if fit == "standard" else "sufficient_"
        costs = single[f"{prefix}fit_tasks_s"]
        print(f"one worker, {fit} fit: {len(costs)} tasks, {sum(costs):.1f} s of task time in "
              f"{single[prefix + 'fit_s']:.1f} s")
    print(f"one worker, max-T: {len(single['permutation_tasks_s'])} blocks, {sum(single['permutation_tasks_s']):.1f} s "
          f"of task time in {single['permutation_s']:.1f} s (the rest: observed statistics over the store on the "
          "client, drawing the set, scheduling)")
    for permutations in sorted({single["permutations"], project_permutations}):
        print(f"projected wall time on N nodes x {cores_per_node} workers, sufficient-statistics fit + {permutations} "
              f"max-T permutations ({math.ceil((permutations - 1) / UNIT)} units of {UNIT}):  as measured / on idle "
              "cores")
        for (n, seconds), (_, idle) in zip(projection(single, nodes, cores_per_node, permutations),
                                           projection(single, nodes, cores_per_node, permutations, cpu_bound=True)):
            print(f"  {n:>4} node(s): {seconds:8.1f} s / {idle:8.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--maps", type=int, default=10000)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--budget-gb", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=200, help="maps generated per write into the store")
    parser.add_argument("--batch-maps", type=int, default=1000, help="maps per task of the sufficient-statistics fit")
    parser.add_argument("--store", type=Path, default=None, help="keep the store here and reuse it")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--cores-per-node", type=int, default=16)
    parser.add_argument("--project-permutations", type=int, default=10000,
                        help="also project the wall time for this many permutations")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one configuration, print JSON
    args = parser.parse_args()
    folder = args.store or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    store, design = simulate_store(folder, args.maps, args.batch)
    if args.one is not None:
        print(json.dumps(measure(store, design, args.one, args.permutations, args.budget_gb, args.batch_maps)))
        return
    print(f"store: {store}")
    runs = []
    for n_workers in args.workers:
        command = [sys.executable, __file__, "--one", str(n_workers), "--maps", str(args.maps), "--store", str(folder),
                   "--permutations", str(args.permutations), "--budget-gb", str(args.budget_gb),
                   "--batch-maps", str(args.batch_maps)]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)  # stderr: progress, errors
        if done.returncode != 0:
            sys.exit(f"{n_workers} worker(s) failed")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        (folder / f"run-{args.maps}-{n_workers}.json").write_text(json.dumps(runs[-1]))
        print(f"{n_workers} worker(s): fit {runs[-1]['fit_s']:.1f} s, sufficient-statistics fit "
              f"{runs[-1]['sufficient_fit_s']:.1f} s, permutations {runs[-1]['permutation_s']:.1f} s", flush=True)
    report(runs, args.budget_gb, args.nodes, args.cores_per_node, args.project_permutations)


if __name__ == "__main__":
    main()
