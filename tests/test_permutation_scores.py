"""GEMM score kernels: scores are monotone transforms of t and F from a textbook fit, and per-chunk maxima and
exceedance counts combine exactly into the whole-image ones."""

from __future__ import annotations

import numpy as np

from runner.inference.permutation import (
    PermutationOptions,
    chunk_null_maxima,
    observed_scores,
    partition_model,
    permutation_inference,
    scores_to_statistics,
)
from runner.inference.permutation_sets import make_permutation_set


def _design(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal(n)
    return np.column_stack([np.ones(n), x, 0.6 * x + rng.standard_normal(n)])


def _textbook_t(Y: np.ndarray, X: np.ndarray, c: np.ndarray) -> np.ndarray:
    """t = c'b / sqrt(s^2 c'(X'X)^-1 c) from numpy's least squares."""
    beta = np.linalg.lstsq(X, Y, rcond=None)[0]
    dof = X.shape[0] - np.linalg.matrix_rank(X)
    sigma2 = ((Y - X @ beta) ** 2).sum(axis=0) / dof
    return (c @ beta) / np.sqrt(sigma2 * (c @ np.linalg.inv(X.T @ X) @ c))


def test_observed_scores_are_t_squared_over_dof_and_convert_back_to_t():
    rng = np.random.default_rng(2)
    X = _design(rng, 16)
    Y = rng.standard_normal((16, 200))
    c = np.array([0, 1.0, 0])
    model = partition_model(X, c)
    t = _textbook_t(Y, X, c)
    signed = observed_scores(Y, model, "signed")
    np.testing.assert_allclose(signed, t * np.abs(t) / model.dof, rtol=1e-9)
    np.testing.assert_allclose(observed_scores(Y, model, "abs"), t**2 / model.dof, rtol=1e-9)
    np.testing.assert_allclose(scores_to_statistics(signed, model, "signed"), t, rtol=1e-9)


def test_voxel_chunks_combine_to_the_whole():
    """Per-chunk maxima combined with np.maximum and counts added equal the whole-image computation."""
    rng = np.random.default_rng(6)
    X = _design(rng, 15)
    Y = rng.standard_normal((15, 500)).astype(np.float32)
    C = np.array([[0, 1.0, 0]])
    model = partition_model(X, C)
    permutations = make_permutation_set(X, 100, 0, "permutation")
    data64 = Y.astype(np.float64)
    residuals = data64 - model.nuisance @ (model.nuisance.T @ data64)
    observed = np.abs(observed_scores(residuals, model, "abs"))
    whole_max, whole_counts = chunk_null_maxima(Y, model, permutations, observed)
    maxima = np.full(99, -np.inf)
    counts = np.zeros(500, dtype=np.int64)
    for chunk in np.array_split(np.arange(500), 3):
        chunk_max, chunk_counts = chunk_null_maxima(Y[:, chunk], model, permutations, observed[chunk])
        maxima = np.maximum(maxima, chunk_max)
        counts[chunk] += chunk_counts
    np.testing.assert_allclose(maxima, whole_max, rtol=1e-12)
    np.testing.assert_array_equal(counts, whole_counts)
    result = permutation_inference(Y, X, C, None, ["maxt"], PermutationOptions(n_permutations=100, seed=0))
    np.testing.assert_allclose(result.null_max["maxt"][1:] ** 2 / model.dof, whole_max, rtol=1e-10)
