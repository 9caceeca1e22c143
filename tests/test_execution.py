"""The executor protocol and the local executor: task order, bounded look-ahead, errors, BLAS threads, and the voxel
loop run unchanged through another executor."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from executor_helpers import PicklingExecutor
from threadpoolctl import threadpool_info

from runner import model
from runner.contrasts import Contrast
from runner.errors import RunnerError
from runner.execution import Executor, LocalExecutor, Task, resolve_workers, run_all


def _sleep_then_return(value: int, delay: float) -> int:
    time.sleep(delay)
    return value


def _blas_threads(_: int) -> list[int]:
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


@pytest.mark.parametrize("n_workers", [1, 2, 3])
def test_results_and_progress_come_in_task_order_whatever_finishes_first(n_workers):
    # later tasks finish first: the results must still be in task order
    tasks = [Task(_sleep_then_return, (i, 0.02 * (5 - i)), weight=i + 1) for i in range(6)]
    weights: list[int] = []
    assert run_all(LocalExecutor(n_workers), tasks, weights.append) == list(range(6))
    assert weights == [1, 2, 3, 4, 5, 6]


def test_few_tasks_in_flight_and_an_error_stops_the_rest():
    started, lock = [], threading.Lock()

    def work(item: int) -> int:
        with lock:
            started.append(item)
        if item == 3:
            raise ValueError("boom")
        time.sleep(0.01)
        return item

    results = []
    with pytest.raises(ValueError, match="boom"):
        for value in LocalExecutor(2).map(Task(work, (i,)) for i in range(1000)):
            results.append(value)
    assert results == [0, 1, 2]
    assert max(started) <= 3 + 2 * 2  # look-ahead of 2 x workers, not the 1000 tasks


@pytest.mark.parametrize("n_workers", [1, 2])
def test_blas_runs_one_thread_per_worker_whatever_the_number_of_workers(n_workers):
    before = _blas_threads(0)
    if not before:
        pytest.skip("no BLAS library visible to threadpoolctl")
    inside = run_all(LocalExecutor(n_workers), [Task(_blas_threads, (i,)) for i in range(4)])
    assert all(threads == [1] * len(before) for threads in inside)
    assert _blas_threads(0) == before  # restored after the run
    untouched = run_all(LocalExecutor(n_workers, blas_threads=None), [Task(_blas_threads, (0,))])
    assert untouched == [before]


def test_local_and_test_executors_satisfy_the_protocol():
    assert isinstance(LocalExecutor(), Executor)
    assert isinstance(PicklingExecutor(), Executor)
    value = np.arange(3)
    assert LocalExecutor().share(value) is value  # threads share memory


def test_workers_count_back_from_all_cpus_and_zero_is_refused():
    assert resolve_workers(3) == 3
    assert resolve_workers(-1) >= 1
    with pytest.raises(RunnerError, match="n_jobs"):
        resolve_workers(0)
    with pytest.raises(RunnerError, match="worker"):
        LocalExecutor(0)


def test_voxel_loop_gives_the_same_fit_through_any_executor():
    """The OLS chunks are plain tasks: a pickling executor running them in reverse gives identical arrays, and
    the data travel once (shared), not with every chunk."""
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((400, 3000))
    X = np.column_stack([np.ones(400), rng.standard_normal(400)])
    contrasts = [Contrast("slope", np.array([[0, 1.0]]), "t"), Contrast("both", np.eye(2), "F")]
    budget = 12 * 2**20  # the smallest working memory (16 MiB) holds 1024 voxels of 400 maps: 3 chunks
    local = model.fit_contrasts(Y, X, contrasts, memory_budget_bytes=budget, n_jobs=1)
    remote = PicklingExecutor()
    elsewhere = model.fit_contrasts(Y, X, contrasts, memory_budget_bytes=budget, executor=remote)
    assert len(remote.task_sizes) == 3 and max(remote.task_sizes) < Y.nbytes / 100
    for name in ("slope", "both"):
        for field in ("effect", "variance", "stat", "p", "z"):
            np.testing.assert_array_equal(getattr(local[name], field), getattr(elsewhere[name], field))
