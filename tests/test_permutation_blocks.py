"""Blocks of permutations: they cover every element once, and seeded results are identical, bit for bit, whatever
the number of workers, the block size or the executor -- in the engine and in the files of a whole run."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import run_analysis
from executor_helpers import PicklingExecutor
from scipy import ndimage

from runner.errors import RunnerError
from runner.inference.permutation import PermutationOptions, permutation_inference
from runner.inference.permutation.blocks import (
    block_bounds,
    default_block_size,
    maxt_tasks,
    maxt_voxel_chunk,
    spatial_unit,
)
from runner.inference.permutation.scores import PERMUTATION_BLOCK

ALL_METHODS = ("maxt", "clustersize", "clustermass", "tfce")


def _mask() -> np.ndarray:
    mask = np.zeros((8, 8, 6), dtype=bool)
    mask[1:7, 1:7, 1:5] = True
    mask[4, 1:5, :] = False
    return mask


def _smooth_data(rng: np.random.Generator, n: int, mask: np.ndarray) -> np.ndarray:
    rows = []
    for _ in range(n):
        volume = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 1.0)
        rows.append(volume[mask] / volume[mask].std())
    return np.asarray(rows)


@pytest.mark.parametrize(("n_elements", "unit", "block_size"),
                         [(2, 1, 1), (300, 7, 1), (300, 7, 20), (701, 256, 256), (701, 256, 300), (701, 256, 5000)])
def test_blocks_cover_every_element_once_in_whole_units(n_elements, unit, block_size):
    bounds = block_bounds(n_elements, unit, block_size)
    covered = np.concatenate([np.arange(first, last) for first, last in bounds])
    np.testing.assert_array_equal(covered, np.arange(1, n_elements))  # the identity (0) is the observed statistic
    assert all((first - 1) % unit == 0 for first, _ in bounds)  # every GEMM unit starts on the same grid
    assert all((last - first) % unit == 0 for first, last in bounds[:-1])
    assert default_block_size(n_elements, unit, 2) >= unit


def _run(Y, X, C, mask, methods, executor=None, **settings):
    options = PermutationOptions(**{"seed": 7, "cluster_forming_p": 0.05, **settings})
    return permutation_inference(Y, X, C, mask, methods, options, executor=executor)


def _assert_identical(first, other, methods):
    np.testing.assert_array_equal(first.stat, other.stat)
    np.testing.assert_array_equal(first.uncorrected_p, other.uncorrected_p)
    for method in methods:
        assert np.array_equal(first.null_max[method], other.null_max[method]), method
        assert np.array_equal(first.corrected_p[method], other.corrected_p[method]), method
    if first.tfce is not None:
        assert np.array_equal(first.tfce, other.tfce)
    for method, table in first.clusters.items():
        assert table.equals(other.clusters[method]), method


def test_maxt_is_identical_for_any_workers_block_size_and_executor():
    # 30 maps and a narrow image: shapes for which OpenBLAS rounds a row differently in a GEMM of another height
    # (e.g. 1 or 100 rows instead of 256), so the test fails when blocks are not cut on the unit grid
    rng = np.random.default_rng(4)
    X = np.column_stack([np.ones(30), rng.standard_normal(30)])
    Y = rng.standard_normal((30, 180))
    C = np.array([[0, 1.0]])
    settings = dict(n_permutations=1100)  # four GEMM units of 256 and a short one
    reference = _run(Y, X, C, None, ("maxt",), n_jobs=1, **settings)
    runs = [_run(Y, X, C, None, ("maxt",), n_jobs=2, **settings),
            _run(Y, X, C, None, ("maxt",), n_jobs=2, block_size=PERMUTATION_BLOCK, **settings),
            _run(Y, X, C, None, ("maxt",), n_jobs=1, block_size=2 * PERMUTATION_BLOCK, **settings),
            _run(Y, X, C, None, ("maxt",), n_jobs=3, block_size=1, **settings),
            _run(Y, X, C, None, ("maxt",), n_jobs=1, block_size=5000, **settings),
            _run(Y, X, C, None, ("maxt",), PicklingExecutor(), block_size=PERMUTATION_BLOCK, **settings)]
    for other in runs:
        _assert_identical(reference, other, ("maxt",))
    different = _run(Y, X, C, None, ("maxt",), n_jobs=1, n_permutations=1100, seed=8)
    assert not np.array_equal(different.null_max["maxt"], reference.null_max["maxt"])


@pytest.mark.parametrize(("design", "unit"), [("one_sample", 1), ("covariates", 3)])
def test_cluster_and_tfce_are_identical_for_any_workers_block_size_and_executor(design, unit):
    rng = np.random.default_rng(5)
    mask = _mask()
    n_voxels = int(mask.sum())
    # sign-flips of one regressor: a unit of one element is a matrix-vector product, which rounds differently from
    # a GEMM, so the test fails when whole maps are computed per block instead of per unit
    if design == "one_sample":
        X, C = np.ones((14, 1)), np.array([[1.0]])
    else:
        X, C = np.column_stack([np.ones(14), rng.standard_normal(14), rng.standard_normal(14)]), np.array([[0, 1.0, 0]])
    Y = _smooth_data(rng, 14, mask) + (0.5 if design == "one_sample" else 0.0)
    rank = X.shape[1]
    budget = unit * (8 * n_voxels * (rank + 4) + 40 * n_voxels)  # whole maps of ``unit`` elements per GEMM
    assert spatial_unit(60, n_voxels, rank, budget) == unit
    settings = dict(n_permutations=60, memory_budget_bytes=budget)
    reference = _run(Y, X, C, mask, ALL_METHODS, n_jobs=1, **settings)
    runs = [_run(Y, X, C, mask, ALL_METHODS, n_jobs=2, **settings),
            _run(Y, X, C, mask, ALL_METHODS, n_jobs=2, block_size=unit, **settings),
            _run(Y, X, C, mask, ALL_METHODS, n_jobs=1, block_size=7, **settings),
            _run(Y, X, C, mask, ALL_METHODS, n_jobs=2, block_size=1000, **settings),
            _run(Y, X, C, mask, ALL_METHODS, PicklingExecutor(), block_size=6, **settings)]
    for other in runs:
        _assert_identical(reference, other, ALL_METHODS)
    assert len(reference.clusters["clustersize"]) > 0 and np.any(reference.null_max["clustersize"] > 0)


def test_blocks_travel_without_the_data():
    rng = np.random.default_rng(6)
    Y = rng.standard_normal((12, 3000))
    executor = PicklingExecutor()
    _run(Y, np.ones((12, 1)), [[1.0]], None, ("maxt",), executor, n_permutations=600, block_size=1)
    assert len(executor.task_sizes) == 3 and max(executor.task_sizes) < Y.nbytes / 100


def test_progress_callback_counts_every_element():
    calls = []
    Y = np.random.default_rng(0).standard_normal((9, 40))
    options = PermutationOptions(n_permutations=300, progress=lambda done, total: calls.append((done, total)))
    permutation_inference(Y, np.ones((9, 1)), [[1.0]], None, ["maxt"], options)
    assert calls[0] == (1, 300) and calls[-1] == (300, 300)
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:], strict=False))


def test_block_size_must_be_positive():
    Y = np.random.default_rng(0).standard_normal((9, 40))
    with pytest.raises(RunnerError, match="block_size"):
        permutation_inference(Y, np.ones((9, 1)), [[1.0]], None, ["maxt"], PermutationOptions(block_size=0))


def _output_digests(run_dir) -> dict[str, str]:
    """sha256 of every output in the manifest (checked against the file), but config.yaml, which records n_jobs."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    digests = {}
    for entry in manifest["outputs"]:
        if entry["path"] == "config.yaml":
            continue
        digest = hashlib.sha256((run_dir / entry["path"]).read_bytes()).hexdigest()
        assert digest == entry["sha256"], entry["path"]
        digests[entry["path"]] = digest
    return digests


def test_a_run_with_one_or_two_workers_writes_identical_files(tmp_path):
    """two_sample_tfce, shrunk: with a small budget whole maps go three elements per GEMM, and 1 or 2 workers cut
    the 40 elements into blocks differently; every output file is the same, byte for byte."""
    overrides = ["+experiment=two_sample_tfce", "report=false", "correction.tfce.n_permutations=40",
                 "memory_budget_gb=0.05"]
    digests = []
    for n_jobs in (1, 2):
        run_dir = tmp_path / f"jobs{n_jobs}"
        run_analysis(run_dir, [*overrides, f"n_jobs={n_jobs}"])
        digests.append(_output_digests(run_dir))
    assert digests[0] == digests[1]
    assert any("tfce_nulldist" in path for path in digests[0])


@pytest.mark.parametrize(("n_elements", "block_size", "n_voxels", "wanted"),
                         [(1000, 1024, 20000, 32), (1000, 256, 20000, 8), (300, 256, 5000, 64), (5000, 1024, 900, 8)])
def test_maxt_tasks_cover_every_element_and_voxel_once_on_the_chunk_grid(n_elements, block_size, n_voxels, wanted):
    chunk = maxt_voxel_chunk(n_voxels)
    tasks = maxt_tasks(n_elements, block_size, n_voxels, chunk, wanted)
    covered = np.zeros((n_elements, n_voxels), dtype=int)
    for first, last, v0, v1, _ in tasks:
        covered[first:last, v0:v1] += 1
        assert v0 % chunk == 0  # ranges start on the chunk grid: the same arithmetic however they are cut
    assert (covered[1:] == 1).all() and not covered[0].any()
    assert sum(weight for *_, weight in tasks) == n_elements - 1  # progress counts every element once
    blocks = len(block_bounds(n_elements, PERMUTATION_BLOCK, block_size))
    assert len(tasks) == blocks * min(max(1, -(-wanted // blocks)), -(-n_voxels // chunk))


@pytest.mark.parametrize("groups", [False, True])
def test_maxt_cut_into_voxel_ranges_is_identical_to_whole_blocks(monkeypatch, groups):
    """1,000 permutations make 4 blocks; 8 workers want 32 tasks, so each block is cut into voxel ranges. The
    result must be the one of whole blocks (no cut), bit for bit, for the t kernel and the variance-group kernel."""
    from runner.inference.permutation import driver

    rng = np.random.default_rng(9)
    n = 16
    X = np.column_stack([np.ones(n), np.repeat([0.0, 1.0], n // 2)])
    Y = rng.standard_normal((n, 13000)) * np.where(X[:, 1:] > 0, 3.0, 1.0)
    settings = dict(n_permutations=1000, variance_groups=X[:, 1].astype(int) if groups else None)
    cut = _run(Y, X, [[0, 1.0]], None, ("maxt",), n_jobs=8, **settings)
    monkeypatch.setattr(driver, "TASKS_PER_WORKER", 0)  # one task per permutation block, all voxels
    whole = _run(Y, X, [[0, 1.0]], None, ("maxt",), n_jobs=1, **settings)
    _assert_identical(whole, cut, ("maxt",))
