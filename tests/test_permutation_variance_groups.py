"""Variance groups: v and G against the formulas of Winkler et al. (2014) written out here, Welch's t, the ordinary
F, exhaustive sign-flip nulls, the scheme they select, and the config checks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import linalg, stats

from runner.errors import RunnerError
from runner.inference.methods.variance_groups import resolve_variance_groups
from runner.inference.permutation import PermutationOptions, partition_model, permutation_inference
from runner.inference.permutation.variance_groups import (
    make_kernel,
    observed_statistics,
    shuffled_statistics,
    statistic_to_p,
    statistic_to_z,
    variance_group_scheme,
)


def paper_statistic(M: np.ndarray, y: np.ndarray, C: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """G (or v for one contrast row) and its degrees of freedom for one voxel, straight from Winkler et al. 2014
    (eqs. 6-7): OLS psi, W from each group's residuals, Lambda and nu."""
    n = M.shape[0]
    pinv = np.linalg.pinv(M)
    psi = pinv @ y
    residuals = y - M @ psi
    R = np.eye(n) - M @ pinv
    w = np.zeros(n)
    group_dof = {}
    for g in np.unique(groups):
        rows = groups == g
        group_dof[g] = np.trace(R[np.ix_(rows, rows)])
        w[rows] = group_dof[g] / np.sum(residuals[rows] ** 2)
    W = np.diag(w)
    s = C.shape[0]
    estimate = C @ psi
    wald = float(estimate @ np.linalg.solve(C @ np.linalg.inv(M.T @ W @ M) @ C.T, estimate))
    b = sum((1 - w[groups == g].sum() / np.trace(W)) ** 2 / group_dof[g] for g in group_dof)
    if s == 1:
        return float(np.sign(estimate[0]) * np.sqrt(wald)), 1.0 / b
    lam = 1 + 2 * (s - 1) / (s * (s + 2)) * b
    return wald / (lam * s), s * (s + 2) / (3 * b)


def nuisance_residuals(M: np.ndarray, C: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Residuals of the null model {M beta : C beta = 0} (what Freedman-Lane shuffles)."""
    Z = M @ linalg.null_space(C)
    return Y - Z @ np.linalg.lstsq(Z, Y, rcond=None)[0]


def heteroscedastic_data(rng, groups, n_voxels, sds, shift=0.0):
    scale = np.asarray(sds)[groups]
    return rng.standard_normal((groups.size, n_voxels)) * scale[:, None] + shift


def test_v_is_welchs_t_for_two_groups():
    rng = np.random.default_rng(1)
    groups = np.repeat([0, 1], [7, 19])
    X = np.column_stack([np.ones(groups.size), groups])
    Y = heteroscedastic_data(rng, groups, 40, [3.0, 1.0], shift=0.3)
    model = partition_model(X, np.array([[0.0, -1.0]]))  # group 0 minus group 1
    v, dof = observed_statistics(make_kernel(model, groups), Y, model, "freedman_lane")
    welch = stats.ttest_ind(Y[groups == 0], Y[groups == 1], equal_var=False)
    np.testing.assert_allclose(v, welch.statistic, rtol=1e-10)
    np.testing.assert_allclose(dof, welch.df, rtol=1e-10)
    np.testing.assert_allclose(2 * statistic_to_p(np.abs(v), 1, dof), welch.pvalue, rtol=1e-8)
    # z has the same one-sided tail as v against t(nu)
    np.testing.assert_allclose(stats.norm.sf(statistic_to_z(v, 1, dof)), stats.t.sf(v, dof), rtol=1e-8)


@pytest.mark.parametrize("contrast", [[[1, -1, 0, 0]], [[1, -1, 0, 0], [0, 1, -1, 0]], [[0, 0, 0, 1]]])
def test_v_and_g_follow_the_papers_formulas_with_nuisance(contrast):
    rng = np.random.default_rng(2)
    groups = np.repeat([0, 1, 2], [5, 6, 8])
    n = groups.size
    age = rng.normal(size=n)
    M = np.column_stack([groups == 0, groups == 1, groups == 2, age]).astype(float)  # cell means and a covariate
    C = np.asarray(contrast, dtype=float)
    Y = heteroscedastic_data(rng, groups, 6, [1.0, 2.5, 0.7]) + np.outer(age, rng.normal(size=6))
    model = partition_model(M, C)
    statistic, dof = observed_statistics(make_kernel(model, groups), Y, model, "freedman_lane")
    reference = np.array([paper_statistic(M, Y[:, v], C, groups) for v in range(Y.shape[1])])
    np.testing.assert_allclose(statistic, reference[:, 0], rtol=1e-9)
    np.testing.assert_allclose(dof, reference[:, 1], rtol=1e-9)


def test_one_variance_group_gives_the_ordinary_t_and_f():
    rng = np.random.default_rng(3)
    n = 15
    M = np.column_stack([np.ones(n), rng.normal(size=n), rng.normal(size=n)])
    Y = rng.standard_normal((n, 5))
    single = np.zeros(n, dtype=int)
    for C in (np.array([[0.0, 1.0, 0.0]]), np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])):
        model = partition_model(M, C)
        statistic, dof = observed_statistics(make_kernel(model, single), Y, model, "freedman_lane")
        beta, rss = np.linalg.lstsq(M, Y, rcond=None)[:2]
        sigma2 = rss / (n - 3)
        middle = np.linalg.inv(C @ np.linalg.inv(M.T @ M) @ C.T)
        effect = C @ beta
        expected = np.einsum("iv,ij,jv->v", effect, middle, effect) / sigma2 / C.shape[0]
        if C.shape[0] == 1:
            expected = np.sign(effect[0]) * np.sqrt(expected)  # t
        np.testing.assert_allclose(statistic, expected, rtol=1e-10)
        np.testing.assert_allclose(dof, n - 3)


def test_g_is_f_over_lambda_when_the_groups_share_one_variance():
    """Groups whose residual variances are exactly equal: W = I / sigma^2, so G = F / Lambda with
    Lambda = 1 + 2 (s - 1) / (s (s + 2)) sum_g (1 - n_g / n)^2 / (n_g - 1) and nu = s (s + 2) / (3 sum ...)."""
    rng = np.random.default_rng(4)
    sizes = np.array([5, 8, 12])
    groups = np.repeat([0, 1, 2], sizes)
    n = groups.size
    M = (groups[:, None] == np.arange(3)).astype(float)
    C = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    Y = rng.standard_normal((n, 7))
    for g in range(3):  # each group's residuals scaled to variance exactly 1, then a mean added
        rows = groups == g
        centred = Y[rows] - Y[rows].mean(axis=0)
        Y[rows] = centred / np.sqrt((centred**2).sum(axis=0) / (rows.sum() - 1)) + rng.normal(size=7)
    model = partition_model(M, C)
    g_stat, dof = observed_statistics(make_kernel(model, groups), Y, model, "freedman_lane")
    means = np.stack([Y[groups == g].mean(axis=0) for g in range(3)])
    effect = C @ means
    middle = np.linalg.inv(C @ np.diag(1.0 / sizes) @ C.T)
    f = np.einsum("iv,ij,jv->v", effect, middle, effect) / 2  # sigma^2 = 1 in every group
    spread = np.sum((1 - sizes / n) ** 2 / (sizes - 1))
    np.testing.assert_allclose(g_stat, f / (1 + 2 * 1 / 8 * spread), rtol=1e-10)
    np.testing.assert_allclose(dof, 8 / (3 * spread), rtol=1e-10)


@pytest.mark.parametrize("two_groups", [True, False])
def test_exhaustive_sign_flip_null_matches_the_papers_statistic(two_groups):
    """Every one of the 2^n sign-flips of the Freedman-Lane residuals, statistic recomputed from the formulas."""
    rng = np.random.default_rng(5)
    if two_groups:
        groups = np.repeat([0, 1], [4, 5])
        n = groups.size
        M = np.column_stack([np.ones(n), groups, rng.normal(size=n)])
        C = np.array([[0.0, 1.0, 0.0]])
    else:
        groups = np.repeat([0, 1, 2], 3)
        n = groups.size
        M = np.column_stack([(groups[:, None] == np.arange(3)).astype(float), rng.normal(size=n)])
        C = np.array([[1.0, -1.0, 0.0, 0.0], [0.0, 1.0, -1.0, 0.0]])
    mask = np.zeros((3, 3, 2), dtype=bool)
    mask.flat[:5] = True
    Y = heteroscedastic_data(rng, groups, 5, [2.0, 0.5, 1.0][: groups.max() + 1]) + 0.4
    options = PermutationOptions(n_permutations=2**n + 10, variance_groups=groups)
    result = permutation_inference(Y, M, C, mask, ("maxt",), options)
    assert result.exhaustive and result.permutations.size == 2**n and result.scheme == "sign_flip"
    assert result.statistic == ("v" if two_groups else "G")
    residuals = nuisance_residuals(M, C, Y)
    null = []
    for flips in result.permutations.signs:
        values = [paper_statistic(M, flips * residuals[:, v], C, groups)[0] for v in range(Y.shape[1])]
        null.append(np.max(np.abs(values)))
    null = np.asarray(null)
    observed = np.array([paper_statistic(M, Y[:, v], C, groups)[0] for v in range(Y.shape[1])])
    np.testing.assert_allclose(result.stat, observed, rtol=1e-9)
    np.testing.assert_allclose(result.null_max["maxt"], null, rtol=1e-9)
    expected_p = [(null >= abs(o) * (1 - 1e-9)).mean() for o in observed]
    np.testing.assert_allclose(result.corrected_p["maxt"], expected_p)
    # every distinct sign pattern once
    assert np.unique(result.permutations.signs, axis=0).shape[0] == 2**n


def test_whole_maps_and_voxel_chunks_give_the_same_null():
    """The spatial path (whole maps) and the max-T path (voxel chunks) compute the same v, any workers."""
    rng = np.random.default_rng(6)
    groups = np.repeat([0, 1], [6, 14])
    X = np.column_stack([np.ones(20), groups])
    mask = np.ones((5, 5, 4), dtype=bool)
    Y = heteroscedastic_data(rng, groups, int(mask.sum()), [3.0, 1.0])
    options = PermutationOptions(n_permutations=300, variance_groups=groups, cluster_forming_p=0.05)
    spatial = permutation_inference(Y, X, np.array([[0.0, 1.0]]), mask, ("maxt", "clustersize"), options)
    options = PermutationOptions(n_permutations=300, variance_groups=groups, n_jobs=2, block_size=100)
    voxelwise = permutation_inference(Y, X, np.array([[0.0, 1.0]]), mask, ("maxt",), options)
    np.testing.assert_allclose(spatial.null_max["maxt"], voxelwise.null_max["maxt"], rtol=1e-12)
    serial = permutation_inference(Y, X, np.array([[0.0, 1.0]]), mask, ("maxt",),
                                   PermutationOptions(n_permutations=300, variance_groups=groups))
    np.testing.assert_array_equal(serial.null_max["maxt"], voxelwise.null_max["maxt"])  # bit for bit
    np.testing.assert_array_equal(spatial.uncorrected_p, voxelwise.uncorrected_p)
    assert spatial.null_max["clustersize"].shape == (300,)


def test_variance_groups_select_sign_flips_and_say_why():
    groups = np.repeat(["a", "b"], 4)
    scheme, reason = variance_group_scheme("auto", groups, None)
    assert scheme == "sign_flip" and "not exchangeable" in reason
    with pytest.raises(RunnerError, match="exchangeability blocks"):
        variance_group_scheme("permutation", groups, None)
    with pytest.raises(RunnerError, match="spans several variance groups"):
        variance_group_scheme("permutation", groups, np.array([1, 1, 2, 2, 2, 2, 3, 3]))
    assert variance_group_scheme("permutation", groups, np.array([1, 1, 2, 2, 3, 3, 4, 4]))[0] == "permutation"


def test_kernel_refuses_groups_without_residual_dof():
    groups = np.repeat([0, 1], [2, 6])
    M = np.column_stack([groups == 0, groups == 1, (groups == 0) * np.arange(8)]).astype(float)
    with pytest.raises(RunnerError, match="no residual degrees of freedom"):
        make_kernel(partition_model(M, np.array([[1.0, -1.0, 0.0]])), groups)
    with pytest.raises(RunnerError, match="at least 2 rows"):
        make_kernel(partition_model(M, np.array([[1.0, -1.0, 0.0]])), np.r_[0, 1, 1, 1, 1, 1, 1, 1])


def fake_inputs(table: pd.DataFrame, formula: str, matrix: pd.DataFrame, contrast: np.ndarray, matrix_path=None):
    return SimpleNamespace(
        design=SimpleNamespace(table=table, matrix=matrix),
        contrast=SimpleNamespace(name="c", matrix=contrast),
        settings=SimpleNamespace(design=SimpleNamespace(formula=formula, matrix=matrix_path)),
    )


def test_auto_takes_the_categorical_columns_the_contrast_tests():
    rng = np.random.default_rng(7)
    table = pd.DataFrame({"group": ["p"] * 5 + ["c"] * 7, "site": [1, 2] * 6, "age": rng.normal(size=12)})
    matrix = pd.DataFrame({"Intercept": 1.0, "group": (table.group == "p").astype(float),
                           "site": (table.site == 2).astype(float), "age": table.age})
    tests_group = fake_inputs(table, "group + C(site) + age", matrix, np.array([[0.0, 1.0, 0.0, 0.0]]))
    assert resolve_variance_groups("auto", tests_group) == tuple(table.group)
    tests_site = fake_inputs(table, "group + C(site) + age", matrix, np.array([[0.0, 0.0, 1.0, 0.0]]))
    assert resolve_variance_groups("auto", tests_site) == tuple(table.site.astype(str))
    both = fake_inputs(table, "group + C(site) + age", matrix, np.array([[0.0, 1.0, 0.0, 0.0], [0, 0, 1.0, 0]]))
    assert resolve_variance_groups("auto", both) == tuple(table.group + "/" + table.site.astype(str))
    tests_age = fake_inputs(table, "group + C(site) + age", matrix, np.array([[0.0, 0.0, 0.0, 1.0]]))
    with pytest.raises(RunnerError, match="tests no categorical column"):
        resolve_variance_groups("auto", tests_age)
    with pytest.raises(RunnerError, match="needs a design formula"):
        resolve_variance_groups("auto", fake_inputs(table, None, matrix, np.array([[0.0, 1, 0, 0]]), "x.tsv"))


def test_variance_group_column_errors_are_one_line():
    table = pd.DataFrame({"group": ["p", "p", "c", "c", "x"], "same": ["a"] * 5, "gap": ["a", None, "b", "b", "a"]})
    inputs = fake_inputs(table, "1", pd.DataFrame({"Intercept": np.ones(5)}), np.array([[1.0]]))
    for setting, message in (("grup", "not in the table; did you mean 'group'"), ("group", "single row"),
                             ("same", "single group"), ("gap", "missing values in row")):
        with pytest.raises(RunnerError, match=message) as error:
            resolve_variance_groups(setting, inputs)
        assert "\n" not in str(error.value)


def test_null_calibration_heteroscedastic_two_sample():
    """8 vs 24 smooth null maps, the small group 3 times as variable: relabelling with the pooled t is liberal,
    variance groups (v, sign-flips) keep max-T FWE within the 95% binomial interval of 0.05 (or below it).
    The heavy version (more datasets, cluster size and TFCE) is benchmarks/bench_variance_groups.py."""
    from scipy import ndimage

    n_datasets, alpha = 100, 0.05
    groups = np.repeat([0, 1], [8, 24])
    X = np.column_stack([np.ones(groups.size), groups])
    contrast = np.array([[0.0, 1.0]])
    mask = np.ones((6, 6, 6), dtype=bool)
    scale = np.where(groups == 0, 3.0, 1.0)[:, None]
    rng = np.random.default_rng(15)
    rejections = {"t": 0, "v": 0}
    for index in range(n_datasets):
        noise = np.stack([ndimage.gaussian_filter(rng.standard_normal(mask.shape), 1.0)[mask]
                          for _ in range(groups.size)])
        Y = noise / noise.std() * scale
        plain = permutation_inference(Y, X, contrast, mask, ("maxt",), PermutationOptions(n_permutations=100,
                                                                                          seed=index))
        welch = permutation_inference(Y, X, contrast, mask, ("maxt",),
                                      PermutationOptions(n_permutations=100, seed=index, variance_groups=groups))
        rejections["t"] += bool(np.any(plain.corrected_p["maxt"] <= alpha))
        rejections["v"] += bool(np.any(welch.corrected_p["maxt"] <= alpha))
    high = stats.binom.ppf(0.975, n_datasets, alpha) / n_datasets
    rates = {name: count / n_datasets for name, count in rejections.items()}
    print(f"max-T FWE over {n_datasets} heteroscedastic null datasets: {rates} (95% upper bound {high:.2f})")
    assert rates["v"] <= high
    assert rates["t"] > high


@pytest.mark.slow
def test_run_with_variance_groups_writes_v_maps_and_states_its_scheme(tmp_path):
    """End to end on the two-sample demo (group + age): auto finds the group column; the v map, its dof, z and p are
    written and agree with each other (z and p recomputed here from v and dof with scipy); the summary row names
    the statistic and the scheme."""
    import json

    import nibabel as nib

    from conftest import run_analysis

    run_dir = tmp_path / "vg"
    summary = run_analysis(run_dir, ["+experiment=two_sample_tfce", "report=false", "correction=[tfce]",
                                     "correction.tfce.n_permutations=50", "correction.tfce.variance_groups=auto"])
    row = summary["contrasts"]["patientMinusControl"]["tfce"]
    assert row["statistic"] == "v" and row["scheme"] == "sign_flip" and "not exchangeable" in row["scheme_reason"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    paths = {entry["path"] for entry in manifest["outputs"]}
    stem = "contrast-patientMinusControl"
    expected = {f"{stem}_stat-v_statmap.nii.gz", f"{stem}_stat-dof_desc-v_statmap.nii.gz",
                f"{stem}_stat-z_desc-v_statmap.nii.gz", f"{stem}_stat-p_desc-v_statmap.nii.gz",
                f"{stem}_stat-v_desc-tfce_statmap.nii.gz", f"{stem}_stat-t_statmap.nii.gz"}
    assert expected <= paths

    def load(name):
        return nib.load(run_dir / f"{stem}_{name}_statmap.nii.gz").get_fdata()

    v, dof, z, p = load("stat-v"), load("stat-dof_desc-v"), load("stat-z_desc-v"), load("stat-p_desc-v")
    inside = dof > 0
    assert inside.sum() > 1000
    # Welch-Satterthwaite dof lie between the smallest group share of the residual dof (about 13.5) and all 27
    assert np.all((dof[inside] >= 13) & (dof[inside] <= 27 + 1e-6))
    np.testing.assert_allclose(p[inside], stats.t.sf(v[inside], dof[inside]), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(stats.norm.sf(z[inside]), stats.t.sf(v[inside], dof[inside]), rtol=1e-3, atol=1e-7)


def test_shuffled_block_equals_the_statistic_of_the_shuffled_data():
    """Row orders and signs applied through the GEMM rows give v of the explicitly shuffled data (paper formulas)."""
    rng = np.random.default_rng(8)
    groups = np.repeat([0, 1, 2], [4, 5, 6])
    n = groups.size
    M = np.column_stack([np.ones(n), groups == 1, groups == 2, rng.normal(size=n)]).astype(float)
    C = np.array([[0.0, 1.0, 0.0, 0.0]])
    Y = heteroscedastic_data(rng, groups, 4, [1.0, 2.0, 0.5])
    kernel = make_kernel(partition_model(M, C), groups)
    orders = np.stack([rng.permutation(n) for _ in range(6)])
    signs = np.where(rng.random((6, n)) < 0.5, -1.0, 1.0)
    statistic, dof = shuffled_statistics(kernel, Y, Y**2, orders, signs)
    for j in range(6):
        shuffled = signs[j][:, None] * Y[orders[j]]
        reference = np.array([paper_statistic(M, shuffled[:, v], C, groups) for v in range(Y.shape[1])])
        np.testing.assert_allclose(statistic[j], reference[:, 0], rtol=1e-9)
        np.testing.assert_allclose(dof[j], reference[:, 1], rtol=1e-9)


def test_voxels_whose_group_has_no_residual_variance_get_no_statistic():
    """A voxel constant within one group (zero residual variance there) and an all-zero voxel: v is undefined (NaN,
    p = 1) and they never count in the null; the other voxels are unaffected."""
    rng = np.random.default_rng(9)
    groups = np.repeat([0, 1], [6, 10])
    X = np.column_stack([np.ones(16), groups])
    mask = np.ones((2, 2, 2), dtype=bool)
    Y = heteroscedastic_data(rng, groups, 8, [2.0, 1.0])
    Y[:, 0] = 0.0
    Y[groups == 0, 1] = 5.0
    options = PermutationOptions(n_permutations=100, variance_groups=groups)
    result = permutation_inference(Y, X, np.array([[0.0, 1.0]]), mask, ("maxt",), options)
    assert np.isnan(result.stat[:2]).all() and np.isnan(result.dof_map[:2]).all()
    assert np.all(result.corrected_p["maxt"][:2] == 1.0) and np.all(result.uncorrected_p[:2] == 1.0)
    assert np.isfinite(result.stat[2:]).all() and np.all(np.isfinite(result.null_max["maxt"]))
    welch = stats.ttest_ind(Y[groups == 1, 2:], Y[groups == 0, 2:], equal_var=False)
    np.testing.assert_allclose(result.stat[2:], welch.statistic, rtol=1e-10)
    np.testing.assert_allclose(result.dof_map[2:], welch.df, rtol=1e-10)
