"""The Dask executor: the same numbers and the same files as the local executor, a lost worker changes nothing, an
unreachable scheduler is one line and exit code 2 before any map is read, and Dask stays optional."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
import time

import numpy as np
import pytest
from conftest import compose, run_analysis, run_cli
from executor_helpers import KillingExecutor
from scipy import ndimage

pytest.importorskip("distributed")

from runner.app import config_hash  # noqa: E402
from runner.config import ExecutorConfig, build_settings  # noqa: E402
from runner.errors import RunnerError  # noqa: E402
from runner.execution import Executor, LocalExecutor, Task  # noqa: E402
from runner.execution.dask import DaskExecutor, FileBacked, batch_cluster, import_distributed  # noqa: E402
from runner.inference.permutation import PermutationOptions, permutation_inference  # noqa: E402
from runner.model import fit_contrasts  # noqa: E402
from runner.contrasts import Contrast  # noqa: E402

METHODS = ("maxt", "clustersize", "tfce")


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes (each imports numpy and the runner once: about 2 s to start on 2 cores)."""
    from distributed import Client, LocalCluster

    local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                         silence_logs=40)
    client = Client(local)
    yield client
    client.close()
    local.close()


def _study(seed: int = 3):
    rng = np.random.default_rng(seed)
    mask = np.zeros((9, 9, 6), dtype=bool)
    mask[1:8, 1:8, 1:5] = True
    rows = []
    for _ in range(16):
        volume = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 1.0)
        rows.append(volume[mask] / volume[mask].std())
    Y = np.asarray(rows)
    Y[:, :40] += 0.8  # a planted effect, so that clusters and TFCE have something to find
    X = np.column_stack([np.ones(16), rng.standard_normal(16)])
    return Y, X, mask


def _permutations(Y, X, mask, executor):
    options = PermutationOptions(n_permutations=120, seed=5, cluster_forming_p=0.05, block_size=10)
    return permutation_inference(Y, X, np.array([[1.0, 0.0]]), mask, METHODS, options, executor=executor)


def _assert_same(reference, other):
    np.testing.assert_array_equal(reference.stat, other.stat)
    np.testing.assert_array_equal(reference.uncorrected_p, other.uncorrected_p)
    np.testing.assert_array_equal(reference.tfce, other.tfce)
    for method in METHODS:
        assert np.array_equal(reference.null_max[method], other.null_max[method]), method
        assert np.array_equal(reference.corrected_p[method], other.corrected_p[method]), method
    for method, table in reference.clusters.items():
        assert table.equals(other.clusters[method]), method


def test_dask_executor_satisfies_the_protocol_and_keeps_task_order(cluster):
    executor = DaskExecutor(cluster, lookahead=3)
    assert isinstance(executor, Executor)
    assert executor.n_workers == 2
    shared = executor.share({"offset": np.arange(5.0)})  # a dict travels whole, not item by item
    done = []
    tasks = [Task(_add_offset, (shared, i), weight=i + 1) for i in range(9)]
    results = list(executor.map(tasks, done.append))
    assert [r[0] for r in results] == list(range(9))
    assert done == [i + 1 for i in range(9)]


def _add_offset(shared, i):
    return shared["offset"] + i


def test_shared_data_lost_from_every_worker_are_scattered_again(cluster):
    """Scattered data cannot be recomputed, and Dask keeps one replica of data no task reads: if its worker dies,
    the executor sends the value again and resubmits the tasks that needed it."""
    executor = DaskExecutor(cluster, retries=1)
    shared = executor.share({"offset": np.arange(3.0)})
    cluster.cancel(shared)  # as if the only worker holding it had died
    results = list(executor.map([Task(_add_offset, (shared, i)) for i in range(4)]))
    assert [r[1] for r in results] == [1.0, 2.0, 3.0, 4.0]


def test_fit_and_permutations_on_dask_are_identical_to_local_threads(cluster):
    Y, X, mask = _study()
    contrasts = [Contrast("effect", np.array([[0.0, 1.0]]), "t"), Contrast("both", np.eye(2), "F")]
    budget = 4 * 16 * 8 * 50 * 10  # small: several voxel chunks
    local = fit_contrasts(Y, X, contrasts, memory_budget_bytes=budget, executor=LocalExecutor(2))
    remote = fit_contrasts(Y, X, contrasts, memory_budget_bytes=budget, executor=DaskExecutor(cluster))
    for name in local:
        for field in ("effect", "variance", "stat", "p", "z"):
            assert np.array_equal(getattr(local[name], field), getattr(remote[name], field)), (name, field)
    _assert_same(_permutations(Y, X, mask, LocalExecutor(1)), _permutations(Y, X, mask, DaskExecutor(cluster)))


def test_memory_mapped_data_travel_by_file_name_and_give_the_same_results(cluster, tmp_path):
    Y, X, mask = _study(5)
    stored = np.lib.format.open_memmap(tmp_path / "Y.npy", mode="w+", dtype=np.float32, shape=Y.shape)
    stored[:] = Y
    stored.flush()
    mapped = np.load(tmp_path / "Y.npy", mmap_mode="r")
    wrapped = FileBacked.wrap(mapped)
    assert len(pickle.dumps(wrapped)) < 1000 < mapped.nbytes  # the file's name, not the maps
    rebuilt = pickle.loads(pickle.dumps(wrapped)).value
    assert isinstance(rebuilt, np.memmap) and np.array_equal(rebuilt, mapped)
    contrasts = [Contrast("effect", np.array([[0.0, 1.0]]), "t")]
    local = fit_contrasts(mapped, X, contrasts, executor=LocalExecutor(1))["effect"]
    remote = fit_contrasts(mapped, X, contrasts, executor=DaskExecutor(cluster))["effect"]
    assert np.array_equal(local.stat, remote.stat) and np.array_equal(local.effect, remote.effect)
    options = PermutationOptions(n_permutations=300, seed=2)
    reference, other = (permutation_inference(mapped, X, np.array([[0.0, 1.0]]), None, ("maxt",), options,
                                              executor=executor)
                        for executor in (LocalExecutor(1), DaskExecutor(cluster)))
    assert np.array_equal(reference.corrected_p["maxt"], other.corrected_p["maxt"])
    assert np.array_equal(reference.null_max["maxt"], other.null_max["maxt"])


def test_a_worker_killed_mid_permutation_does_not_change_the_result(cluster, tmp_path):
    Y, X, mask = _study(4)
    reference = _permutations(Y, X, mask, LocalExecutor(1))
    flag = tmp_path / "killed"
    workers_before = set(cluster.nthreads())
    killed = _permutations(Y, X, mask, KillingExecutor(DaskExecutor(cluster, retries=0), str(flag)))
    assert flag.exists()  # a task did kill its worker: its block was computed again elsewhere
    _assert_same(reference, killed)
    deadline = time.monotonic() + 30  # the nanny restarts the dead worker; later tests get two again
    while len(cluster.nthreads()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert set(cluster.nthreads()) != workers_before


def test_sufficient_statistics_from_a_store_on_dask_match_local_threads(cluster, tmp_path):
    """model.fit=sufficient's tasks read blocks of a store mapped by name (as above; a lost worker's tasks are the
    executor's business, checked above with permutations): the same bits as local threads."""
    from runner.sufficient import fit_contrasts_by_batches

    Y, X, _ = _study(6)
    np.save(tmp_path / "Y.npy", Y.astype(np.float32))
    store = np.load(tmp_path / "Y.npy", mmap_mode="r")
    contrasts = [Contrast("effect", np.array([[0.0, 1.0]]), "t"), Contrast("both", np.eye(2), "F")]
    local = fit_contrasts_by_batches(store, X, contrasts, batch_maps=5, chunk_voxels=50, executor=LocalExecutor(2))
    remote = fit_contrasts_by_batches(store, X, contrasts, batch_maps=5, chunk_voxels=50,
                                      executor=DaskExecutor(cluster))
    for name in local:
        for field in ("effect", "variance", "stat", "p", "z"):
            assert np.array_equal(getattr(local[name], field), getattr(remote[name], field)), (name, field)


@pytest.mark.slow  # two runs of the demo and a cluster start: about 15 s on 2 cores
def test_a_run_on_a_dask_cluster_writes_the_same_files_as_local_threads(tmp_path):
    """maxt, cluster size, TFCE and ARI on the localizer demo, shrunk: every output but config.yaml, byte for byte."""
    overrides = ["+experiment=two_sample_tfce", "report=false", "correction=[maxt,clustersize,tfce,ari]",
                 "correction.maxt.n_permutations=30", "correction.clustersize.n_permutations=30",
                 "correction.tfce.n_permutations=30", "memory_budget_gb=0.05", "n_jobs=2"]
    digests = []
    for name, executor in (("local", []), ("dask", ["executor=dask"])):
        run_dir = tmp_path / name
        run_analysis(run_dir, [*overrides, *executor])
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["status"] == "complete"
        digests.append({entry["path"]: hashlib.sha256((run_dir / entry["path"]).read_bytes()).hexdigest()
                        for entry in manifest["outputs"] if entry["path"] not in ("config.yaml", "report.html")})
    assert digests[0] == digests[1]
    assert any("desc-ari" in path for path in digests[0]) and any("tfce" in path for path in digests[0])
    log = (tmp_path / "dask" / "run.log").read_text()
    assert "executor: Dask, a local cluster of 2 worker(s)" in log and "dashboard" in log
    assert "[distributed.nanny][INFO]" not in log  # Dask's own chatter stays out of the record


@pytest.mark.slow  # a run and its re-run: about 15 s
def test_a_run_recorded_on_an_unreachable_scheduler_verifies_on_local_threads(tmp_path, monkeypatch):
    """verify re-runs on local threads: the recorded scheduler is gone, and the executor does not change results."""
    from runner import verify
    from runner.execution import dask as dask_execution

    calls = []
    real = dask_execution.open_executor
    monkeypatch.setattr(dask_execution, "open_executor", lambda *a, **k: calls.append(a) or real(*a, **k))
    run_dir = tmp_path / "run"
    run_analysis(run_dir, ["+experiment=one_sample_permutation", "correction.maxt.n_permutations=50", "report=false",
                           "executor=dask", "executor.n_workers=1"])
    assert len(calls) == 1
    config = (run_dir / "config.yaml").read_text()
    assert "address: null" in config
    (run_dir / "config.yaml").write_text(config.replace("address: null", "address: tcp://127.0.0.1:1"))
    manifest = json.loads((run_dir / "manifest.json").read_text())  # keep the record consistent with the edit
    for entry in manifest["outputs"]:
        if entry["path"] == "config.yaml":
            entry["sha256"] = hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest()
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    verdict = verify.verify(run_dir)
    assert len(calls) == 1  # the re-run opened no Dask executor
    assert not verdict.differences, verdict.differences


def test_an_unreachable_scheduler_is_one_line_and_exit_2_before_any_map_is_read(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["executor=dask", "executor.address=tcp://127.0.0.1:1", "executor.connect_timeout=1",
                      f"hydra.run.dir={run_dir}", "cache=false"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: executor.address tcp://127.0.0.1:1: no Dask scheduler"), \
        result.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert "n_maps" not in manifest and "inputs" not in manifest  # failed before the loader ran
    assert "loaded" not in (run_dir / "run.log").read_text()


def test_without_dask_executor_dask_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(RunnerError, match=r"executor=dask needs Dask: pip install"):
        import_distributed()


def test_executor_settings_are_validated_and_do_not_change_the_analysis_hash():
    local = compose([])
    dask = compose(["executor=dask", "executor.n_workers=3"])
    settings = build_settings(dask)
    assert settings.executor.engine == "dask" and settings.executor.n_workers == 3
    assert build_settings(local).executor == ExecutorConfig()
    from omegaconf import OmegaConf

    assert config_hash(OmegaConf.to_container(local)) == config_hash(OmegaConf.to_container(dask))
    with pytest.raises(RunnerError, match="executor.address=tcp://x:1 is a Dask scheduler: add executor=dask"):
        build_settings(compose(["executor.address=tcp://x:1"]))
    with pytest.raises(RunnerError, match="executor.cluster"):
        build_settings(compose(["executor=dask", "executor.cluster=sge"]))


@pytest.mark.parametrize(("name", "expected"), [
    ("slurm_example", ["#SBATCH -p normal", "#SBATCH -A lab42", "#SBATCH --qos=long", "#SBATCH -t 02:00:00"]),
    ("pbs_example", ["#PBS -q workq", "#PBS -A lab42", "#PBS -l walltime=02:00:00", "#PBS -l select=1:ncpus=1"]),
])
def test_batch_cluster_examples_write_the_job_script_the_config_asks_for(name, expected):
    pytest.importorskip("dask_jobqueue")
    overrides = [f"executor={name}", "executor.account=lab42"]
    if name == "slurm_example":
        overrides.append("executor.job_extra=['--qos=long']")
    settings = build_settings(compose(overrides))
    cluster = batch_cluster(settings.executor)  # not scaled: nothing is submitted
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in expected:
        assert line in script, script


@pytest.mark.slow  # a real run interrupted mid-permutation: about 25 s on 2 shared cores
def test_sigterm_mid_permutation_on_dask_leaves_an_interrupted_manifest_and_no_worker(tmp_path):
    import os
    import signal
    import subprocess

    import psutil
    from conftest import REPO

    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "+experiment=one_sample_permutation", "executor=dask",
         "executor.n_workers=2", "correction.maxt.n_permutations=300000", "report=false", "cache=false",
         f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    log = run_dir / ".runner-staging" / "run.log"
    deadline = time.monotonic() + 120
    while not (log.is_file() and "permutations requested" in log.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    time.sleep(1.0)
    workers = psutil.Process(process.pid).children(recursive=True)
    assert workers  # the local cluster's processes
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)  # about 4 s: tasks cancelled, client and cluster closed
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "error: interrupted by SIGTERM" in stderr
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive  # the cluster started for the run was closed with it


def test_blas_stays_pinned_until_the_last_task_of_a_worker_ends():
    """Two tasks overlap on a worker's threads: the first to end must not give BLAS its threads back."""
    from threadpoolctl import threadpool_info

    from runner.execution.dask import pinned_blas

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    if not before or max(before) == 1:
        pytest.skip("BLAS runs one thread here already")
    first, second = pinned_blas(1), pinned_blas(1)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert set(blas_threads()) == {1}
    second.__exit__(None, None, None)
    assert blas_threads() == before
