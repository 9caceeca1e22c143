"""Permutation engine against a literal one-permutation-at-a-time reference, exact tests and nilearn.

Blocks and determinism: test_permutation_blocks.py; kernels: test_permutation_scores.py; p-values:
test_permutation_pvalues.py."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import linalg, ndimage
from scipy import stats as distributions

from oracles import blob, reference_clusters, reference_statistic, reference_tfce, seed_for, smooth_data
from runner.errors import RunnerError
from runner.inference.permutation import PermutationOptions, permutation_inference
from runner.inference.permutation_sets import count_distinct, make_permutation_set

ALL_METHODS = ("maxt", "clustersize", "clustermass", "tfce")


# ------------------------------------------------------------------------------------------ reference


def reference_null(Y, X, C, mask, result, method, connectivity, cluster_p):
    """Freedman–Lane (or ter Braak, Manly) literally: shuffle, refit with lstsq, recompute each statistic."""
    two_sided = result.two_sided
    C = np.atleast_2d(C)
    reduced = X @ linalg.null_space(C)  # the model under C beta = 0
    if method == "freedman_lane":
        fitted = reduced @ np.linalg.lstsq(reduced, Y, rcond=None)[0] if reduced.shape[1] else 0.0 * Y
        residuals = Y - fitted
    elif method == "ter_braak":
        fitted = X @ np.linalg.lstsq(X, Y, rcond=None)[0]
        residuals = Y - fitted
    else:
        fitted, residuals = 0.0 * Y, Y
    dof = X.shape[0] - np.linalg.matrix_rank(X)
    if C.shape[0] > 1:
        threshold = distributions.f.isf(cluster_p, C.shape[0], dof)
    else:
        threshold = distributions.t.isf(cluster_p / 2 if two_sided else cluster_p, dof)
    nulls = {m: [] for m in ALL_METHODS}
    exceed = np.zeros(Y.shape[1])
    observed = reference_statistic(Y, X, C)
    test_observed = np.abs(observed) if two_sided else observed
    permutations = result.permutations
    for j in range(1, permutations.size):
        orders, signs = permutations.rows(j, j + 1)
        shuffled = signs[0][:, None] * residuals[orders[0]]
        if method == "freedman_lane":
            shuffled = shuffled + fitted  # literally the recipe; the nuisance fit does not change the test
        stat = reference_statistic(shuffled, X, C)
        test = np.abs(stat) if two_sided else stat
        exceed += test >= test_observed - 1e-10 * np.abs(test_observed)  # ties within rounding count
        nulls["maxt"].append(test.max())
        volume = np.zeros(mask.shape)
        volume[mask] = stat
        size, mass = reference_clusters(volume, threshold, connectivity, two_sided)
        nulls["clustersize"].append(size)
        nulls["clustermass"].append(mass)
        nulls["tfce"].append(np.abs(reference_tfce(volume, connectivity, None, two_sided)).max())
    return observed, {m: np.array(v) for m, v in nulls.items()}, (1 + exceed) / permutations.size


# ------------------------------------------------------------------------------------------ fixtures


def small_mask() -> np.ndarray:
    mask = np.zeros((7, 7, 6), dtype=bool)
    mask[1:6, 1:6, 1:5] = True
    mask[3, 1:4, :] = False
    return mask


CASES = {
    "one_sample": dict(n=10, design="intercept", contrast=[[1.0]], method="freedman_lane", two_sided=True),
    "regression_with_nuisance": dict(n=12, design="covariates", contrast=[[0, 1.0, 0]], method="freedman_lane",
                                     two_sided=False),
    "three_groups_F": dict(n=12, design="groups", contrast=[[1.0, -1, 0, 0], [0, 1.0, -1, 0]],
                           method="freedman_lane", two_sided=True),
    "ter_braak": dict(n=11, design="covariates", contrast=[[0, 1.0, 0]], method="ter_braak", two_sided=True),
    "manly": dict(n=11, design="covariates", contrast=[[0, 0, 1.0]], method="manly", two_sided=True),
}


def make_design(kind: str, n: int, rng) -> np.ndarray:
    if kind == "intercept":
        return np.ones((n, 1))
    if kind == "covariates":
        x = rng.standard_normal(n)
        z = 0.6 * x + rng.standard_normal(n)
        return np.column_stack([np.ones(n), x, z])
    groups = np.arange(n) % 3
    return np.column_stack([(groups == g).astype(float) for g in range(3)] + [rng.standard_normal(n)])


@pytest.mark.parametrize("case", sorted(CASES))
def test_null_distributions_equal_the_literal_reference(case):
    spec = CASES[case]
    rng = np.random.default_rng(seed_for(case))
    mask = small_mask()
    X = make_design(spec["design"], spec["n"], rng)
    Y = smooth_data(rng, spec["n"], mask) + 0.4 * rng.standard_normal((spec["n"], 1)) * X[:, -1:]
    C = np.asarray(spec["contrast"])
    options = PermutationOptions(n_permutations=30, seed=1, two_sided=spec["two_sided"], method=spec["method"],
                                 cluster_forming_p=0.05, connectivity=26)
    result = permutation_inference(Y, X, C, mask, ALL_METHODS, options)
    observed, nulls, uncorrected = reference_null(Y, X, C, mask, result, spec["method"], 26, 0.05)

    np.testing.assert_allclose(result.stat, observed, rtol=1e-9)
    np.testing.assert_allclose(result.uncorrected_p, uncorrected)
    for method in ALL_METHODS:
        np.testing.assert_allclose(result.null_max[method][1:], nulls[method], rtol=1e-8, atol=1e-10,
                                   err_msg=method)
    test = np.abs(result.stat) if result.two_sided else result.stat
    assert result.null_max["maxt"][0] == pytest.approx(test.max())
    assert result.null_max["tfce"][0] == pytest.approx(np.abs(result.tfce).max())
    # p = #{null >= observed} / P, identity included
    p_maxt = np.array([(result.null_max["maxt"] >= value * (1 - 1e-10)).mean() for value in test])
    np.testing.assert_allclose(result.corrected_p["maxt"], p_maxt)
    np.testing.assert_allclose(result.logp["maxt"], -np.log10(result.corrected_p["maxt"]))


def test_cluster_p_values_and_table():
    rng = np.random.default_rng(5)
    mask = small_mask()
    effect = [blob(mask, (2, 2, 2), 1.5) for _ in range(12)]
    Y = smooth_data(rng, 12, mask, effect=effect)
    options = PermutationOptions(n_permutations=200, seed=3, cluster_forming_p=0.01, connectivity=6)
    result = permutation_inference(Y, np.ones((12, 1)), np.array([[1.0]]), mask, ["clustersize", "clustermass"],
                                   options)
    table = result.clusters["clustersize"]
    assert list(table.columns) == ["cluster_id", "sign", "size_voxels", "mass", "p_fwe", "peak_stat",
                                   "peak_i", "peak_j", "peak_k"]
    assert table["size_voxels"].is_monotonic_decreasing
    threshold = result.cluster_forming_threshold
    assert threshold == pytest.approx(distributions.t.isf(0.005, 11))
    structure = ndimage.generate_binary_structure(3, 1)
    volume = np.zeros(mask.shape)
    volume[mask] = result.stat
    labels, n = ndimage.label(volume > threshold, structure)
    negative, m = ndimage.label(volume < -threshold, structure)
    assert len(table) == n + m
    biggest = table.iloc[0]
    peak = tuple(int(biggest[c]) for c in ("peak_i", "peak_j", "peak_k"))
    assert volume[peak] == pytest.approx(biggest.peak_stat)
    inside = labels == labels[peak]
    assert biggest.size_voxels == inside.sum()
    assert biggest.mass == pytest.approx((volume[inside] - threshold).sum())
    assert biggest.p_fwe == pytest.approx((result.null_max["clustersize"] >= biggest.size_voxels).mean())
    # every voxel of a cluster carries the cluster's p; outside clusters p = 1
    corrected = np.zeros(mask.shape)
    corrected[mask] = result.corrected_p["clustersize"]
    assert np.all(corrected[inside] == biggest.p_fwe)
    assert np.all(corrected[mask & (labels == 0) & (negative == 0)] == 1.0)
    assert abs(volume[peak]) == np.abs(volume[inside]).max()


# ------------------------------------------------------------------------------------------ exact tests


def test_exhaustive_sign_flips_of_six_subjects():
    rng = np.random.default_rng(0)
    mask = small_mask()
    Y = smooth_data(rng, 6, mask) + 3.0
    result = permutation_inference(Y, np.ones((6, 1)), np.array([1.0]), mask, ["maxt", "tfce"],
                                   PermutationOptions(n_permutations=10000))
    assert result.exhaustive and result.n_permutations_done == 64
    assert "enumerated all 64 distinct sign-flips (exact test)" in result.messages
    signs = result.permutations.signs
    assert np.all(signs[0] == 1) and len({tuple(row) for row in signs}) == 64
    for p in [result.uncorrected_p, *result.corrected_p.values()]:
        np.testing.assert_allclose(p * 64, np.round(p * 64), atol=1e-9)
        assert p.min() >= 1 / 64
    # flipping every sign gives -t: for a two-sided test the largest |t| is reached at least twice
    assert result.corrected_p["maxt"].min() == pytest.approx(2 / 64)
    assert np.sum(result.null_max["maxt"] >= result.null_max["maxt"][0] * (1 - 1e-10)) == 2


def test_exhaustive_two_sample_enumerates_group_assignments():
    n1, n2 = 4, 3
    design = np.column_stack([np.r_[np.ones(n1), np.zeros(n2)], np.r_[np.zeros(n1), np.ones(n2)]])
    expected = math.factorial(n1 + n2) // (math.factorial(n1) * math.factorial(n2))
    assert count_distinct(design, "permutation", None, False) == expected == 35
    rng = np.random.default_rng(1)
    Y = rng.standard_normal((7, 20))
    result = permutation_inference(Y, design, np.array([[1.0, -1.0]]), None, ["maxt"],
                                   PermutationOptions(n_permutations=1000))
    assert result.scheme == "permutation" and result.exhaustive and result.n_permutations_done == 35
    # each element is a distinct assignment of the data rows to the two groups
    orders = result.permutations.orders
    assignments = {tuple(sorted(order[:n1])) for order in orders}
    assert len(assignments) == 35 and tuple(orders[0]) == tuple(range(7))
    np.testing.assert_allclose(result.corrected_p["maxt"] * 35, np.round(result.corrected_p["maxt"] * 35))
    # with a continuous covariate every row is distinct: all 7! orderings
    with_covariate = np.column_stack([design, rng.standard_normal(7)])
    assert count_distinct(with_covariate, "permutation", None, False) == math.factorial(7)


def test_paired_design_within_block_permutation_equals_sign_flips_of_differences():
    """Swapping conditions within a subject (blocks) is the same test as sign-flipping the differences."""
    rng = np.random.default_rng(2)
    n_subjects, n_voxels = 7, 15
    condition_a = rng.standard_normal((n_subjects, n_voxels)) + 0.3
    condition_b = condition_a + rng.standard_normal((n_subjects, n_voxels)) * 0.5 + 0.4
    Y = np.vstack([condition_a, condition_b])
    subjects = np.r_[np.arange(n_subjects), np.arange(n_subjects)]
    design = np.column_stack([np.r_[-np.ones(n_subjects), np.ones(n_subjects)] / 2]
                             + [(subjects == s).astype(float) for s in range(n_subjects)])
    contrast = np.zeros((1, design.shape[1]))
    contrast[0, 0] = 1.0
    paired = permutation_inference(Y, design, contrast, None, ["maxt"],
                                   PermutationOptions(n_permutations=1000, exchangeability_blocks=subjects))
    differences = permutation_inference(condition_b - condition_a, np.ones((n_subjects, 1)), np.array([[1.0]]),
                                        None, ["maxt"], PermutationOptions(n_permutations=1000))
    assert paired.scheme == "permutation" and differences.scheme == "sign_flip"
    assert paired.exhaustive and paired.n_permutations_done == differences.n_permutations_done == 2**n_subjects
    np.testing.assert_allclose(paired.stat, differences.stat, rtol=1e-10)
    np.testing.assert_allclose(paired.corrected_p["maxt"], differences.corrected_p["maxt"])
    np.testing.assert_allclose(paired.uncorrected_p, differences.uncorrected_p)
    # rows never leave their block
    for order in paired.permutations.orders:
        assert np.array_equal(subjects[order], subjects)


def test_block_schemes():
    rng = np.random.default_rng(3)
    blocks = np.repeat([0, 1, 2, 3], 3)
    x = rng.standard_normal(12)
    design = np.column_stack([np.ones(12), x])
    within = make_permutation_set(design, 200, 0, "permutation", blocks, whole_block=False)
    for order in within.orders:
        assert np.array_equal(blocks[order], blocks)
    assert within.n_possible == 6**4
    whole = make_permutation_set(design, 10000, 0, "permutation", blocks, whole_block=True)
    assert whole.exhaustive and whole.n_possible == 24
    for order in whole.orders:
        moved = order.reshape(4, 3)
        assert np.all(np.diff(moved, axis=1) == 1) and np.all(moved[:, 0] % 3 == 0)  # blocks move intact
    flips = make_permutation_set(design, 10000, 0, "sign_flip", blocks, whole_block=True)
    assert flips.exhaustive and flips.size == 16
    assert np.all(flips.signs.reshape(16, 4, 3).std(axis=2) == 0)
    with pytest.raises(RunnerError, match="equal size"):
        make_permutation_set(design, 10, 0, "permutation", np.r_[np.zeros(5), np.ones(7)], whole_block=True)
    with pytest.raises(RunnerError, match="one label per row"):
        make_permutation_set(design, 10, 0, "permutation", np.zeros(5), whole_block=False)


def test_random_sign_flips_are_distinct_and_seeded():
    flips = make_permutation_set(np.ones((14, 1)), 10000, 3, "sign_flip")
    assert not flips.exhaustive and flips.n_possible == 2**14 and flips.size == 10000
    assert len({row.tobytes() for row in flips.signs}) == 10000  # no repeats, the identity only first
    assert np.all(flips.signs[0] == 1)
    np.testing.assert_array_equal(make_permutation_set(np.ones((14, 1)), 10000, 3, "sign_flip").signs, flips.signs)
    assert "drew 10000 sign-flips at random" in flips.describe()


def test_scheme_choice():
    n = 8
    intercept = np.ones((n, 1))
    group = np.r_[np.ones(4), np.zeros(4)]
    two_groups = np.column_stack([group, 1 - group])
    age = np.linspace(-1, 1, n) + 3
    assert permutation_inference(np.random.default_rng(0).standard_normal((n, 3)), intercept, [[1.0]], None,
                                 ["maxt"], PermutationOptions(n_permutations=50)).scheme == "sign_flip"
    for X, C, scheme in (
        (two_groups, [[1.0, -1.0]], "permutation"),
        (two_groups, [[1.0, 1.0]], "sign_flip"),  # the sum of the means involves the intercept
        (np.column_stack([np.ones(n), age]), [[1.0, 0.0]], "sign_flip"),  # intercept with a nuisance
        (np.column_stack([np.ones(n), age]), [[0.0, 1.0]], "permutation"),
    ):
        result = permutation_inference(np.random.default_rng(1).standard_normal((n, 3)), X, np.asarray(C), None,
                                       ["maxt"], PermutationOptions(n_permutations=50))
        assert result.scheme == scheme, (C, result.scheme)


# ------------------------------------------------------------------------------------------ errors


def test_input_errors_are_one_line_runner_errors():
    rng = np.random.default_rng(0)
    mask = small_mask()
    Y = rng.standard_normal((8, int(mask.sum())))
    X = np.ones((8, 1))
    with pytest.raises(RunnerError, match="did you mean 'tfce'"):
        permutation_inference(Y, X, [[1.0]], mask, ["tfc"])
    with pytest.raises(RunnerError, match="need the 3D mask"):
        permutation_inference(Y, X, [[1.0]], None, ["tfce"])
    with pytest.raises(RunnerError, match="mask has"):
        permutation_inference(Y[:, :10], X, [[1.0]], mask, ["tfce"])
    with pytest.raises(RunnerError, match="not estimable"):
        permutation_inference(Y, np.column_stack([X, X]), [[1.0, 0.0]], None, ["maxt"])
    with pytest.raises(RunnerError, match="linearly dependent"):
        permutation_inference(Y, np.column_stack([X, np.arange(8.0)]), [[0, 1.0], [0, 2.0]], None, ["maxt"])
    with pytest.raises(RunnerError, match="NaN"):
        bad = Y.copy()
        bad[0, 0] = np.nan
        permutation_inference(bad, X, [[1.0]], None, ["maxt"])
    with pytest.raises(RunnerError, match="freedman_lane"):
        permutation_inference(Y, X, [[1.0]], None, ["maxt"], PermutationOptions(method="freedman-lane"))
    with pytest.raises(RunnerError, match="rows"):
        permutation_inference(Y[:5], X, [[1.0]], None, ["maxt"])
    with pytest.raises(RunnerError) as error:
        permutation_inference(Y, X, [[1.0]], None, ["maxt"], PermutationOptions(n_permutations=1))
    assert "\n" not in str(error.value)


def test_constant_voxels_get_no_statistic():
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((10, 30))
    Y[:, 3] = 0.0
    Y[:, 7] = 2.5  # constant: fitted exactly by the intercept
    result = permutation_inference(Y, np.ones((10, 1)), [[1.0]], None, ["maxt"],
                                   PermutationOptions(n_permutations=100))
    assert np.isnan(result.stat[[3, 7]]).all() and np.isfinite(np.delete(result.stat, [3, 7])).all()
    assert np.all(result.corrected_p["maxt"][[3, 7]] == 1) and np.all(result.uncorrected_p[[3, 7]] == 1)
    assert np.isfinite(result.null_max["maxt"]).all()


# ------------------------------------------------------------------------------------------ nilearn


N_NILEARN_TFCE = 250


@pytest.fixture(scope="module")
def nilearn_comparison():
    nib = pytest.importorskip("nibabel")
    pd = pytest.importorskip("pandas")
    second_level = pytest.importorskip("nilearn.glm.second_level")
    rng = np.random.default_rng(12)
    mask = np.zeros((9, 9, 8), dtype=bool)
    mask[1:8, 1:8, 1:7] = True
    n = 14
    effect = [blob(mask, (3, 3, 3), 1.2) - blob(mask, (5, 6, 4), 1.0) for _ in range(n)]
    Y = smooth_data(rng, n, mask, effect=effect)
    affine = np.eye(4)
    images = []
    for row in Y:
        volume = np.zeros(mask.shape)
        volume[mask] = row
        images.append(nib.Nifti1Image(volume, affine))
    design = pd.DataFrame({"intercept": np.ones(n)})
    mask_image = nib.Nifti1Image(mask.astype(np.uint8), affine)

    def nilearn(n_perm, **options):
        with warnings.catch_warnings():  # nilearn warns about its own int64 cluster images
            warnings.simplefilter("ignore", UserWarning)
            return second_level.non_parametric_inference(
                images, design_matrix=design, second_level_contrast="intercept", mask=mask_image, n_perm=n_perm,
                random_state=0, **options)

    outputs = {}
    for two_sided in (True, False):
        if two_sided:  # max-T and clusters from 999 permutations; nilearn's TFCE (pure Python, 20 s for 999
            # permutations) from fewer: its p-values are only compared where both must be small
            theirs = nilearn(999, two_sided_test=True, threshold=0.01)
            tfce = nilearn(N_NILEARN_TFCE, two_sided_test=True, tfce=True)
            theirs.update(tfce=tfce["tfce"], logp_max_tfce=tfce["logp_max_tfce"])
        else:  # max-T only: nilearn returns the -log10 p image alone
            theirs = {"logp_max_t": nilearn(999, two_sided_test=False), "t": outputs[True][0]["t"]}
        ours = permutation_inference(
            Y, np.ones((n, 1)), [[1.0]], mask, ALL_METHODS if two_sided else ("maxt",),
            PermutationOptions(n_permutations=1000, seed=0, two_sided=two_sided, connectivity=6,
                               cluster_forming_p=0.01),
        )
        outputs[two_sided] = ({k: v if isinstance(v, np.ndarray) else v.get_fdata()[mask]
                               for k, v in theirs.items()}, ours)
    return mask, outputs


def monte_carlo_bound(p: np.ndarray, n_perm: int) -> np.ndarray:
    """Five standard deviations of the difference of two independent permutation p-values, plus 2/P."""
    return 5 * np.sqrt(2 * p * (1 - p) / n_perm) + 2 / n_perm


@pytest.mark.parametrize("two_sided", [True, False])
def test_max_t_agrees_with_nilearn(nilearn_comparison, two_sided):
    _, outputs = nilearn_comparison
    theirs, ours = outputs[two_sided]
    np.testing.assert_allclose(ours.stat, theirs["t"], rtol=1e-6)
    p_theirs = 10 ** -theirs["logp_max_t"]
    p_ours = ours.corrected_p["maxt"]
    assert np.all(np.abs(p_ours - p_theirs) <= monte_carlo_bound(p_theirs, 1000))
    negative = ours.stat < -3
    assert negative.any()
    if two_sided:
        assert p_ours[negative].min() < 0.05 and p_theirs[negative].min() < 0.05
    else:  # one-sided: only positive effects count, the negative blob is never significant
        assert p_ours[negative].min() > 0.5 and p_theirs[negative].min() > 0.5


def test_cluster_and_tfce_agree_with_nilearn(nilearn_comparison):
    """Cluster p-values agree within Monte-Carlo error; TFCE agrees where the two statistics coincide.

    nilearn's cluster p-values leave the identity out of the null (``null_to_p``), which moves them by at most
    1/P. Its TFCE sums without the step dh (one step, max|t|/100, for both tails of each map), so each map's
    TFCE is ours divided by that map's step: the observed values are ours / dh exactly, but the null maxima
    are rescaled map by map, a different (still valid) statistic. So TFCE p-values are compared where both
    must be small: at the peak of the planted effect, and on nilearn's discoveries.
    """
    mask, outputs = nilearn_comparison
    theirs, ours = outputs[True]
    for name, key in (("clustersize", "logp_max_size"), ("clustermass", "logp_max_mass")):
        p_theirs = 10 ** -theirs[key]
        inside = ours.corrected_p[name] < 1
        assert inside.any()
        assert np.all(np.abs(ours.corrected_p[name][inside] - p_theirs[inside])
                      <= monte_carlo_bound(p_theirs[inside], 1000) + 1 / 1000)
    # observed TFCE: the positive tail holds the largest |t| here, so nilearn's shared step is our positive step
    assert ours.stat.max() == np.abs(ours.stat).max()
    positive = ours.tfce > 0
    np.testing.assert_allclose(ours.tfce[positive], theirs["tfce"][positive] * ours.stat.max() / 100, rtol=1e-6)
    p_theirs = 10 ** -theirs["logp_max_tfce"]
    p_ours = ours.corrected_p["tfce"]
    peak = np.argmax(ours.tfce)
    assert p_ours[peak] < 0.01 and p_theirs[peak] < 0.01
    found_by_nilearn = p_theirs < 0.05
    assert found_by_nilearn.any()
    assert (p_ours[found_by_nilearn] < 0.05).mean() >= 0.8


def test_a_biobank_sized_permutation_set_describes_its_count():
    """Two groups of 5,000 have C(10,000, 5,000) distinct assignments (3,009 digits, and 10,000 rows with a
    continuous covariate 10,000!, more than Python prints by default): one short line."""
    X = np.column_stack([np.ones(10000), np.repeat([0.0, 1.0], 5000)])
    permutations = make_permutation_set(X, 20, seed=0, scheme="permutation")
    log10 = (math.lgamma(10001) - 2 * math.lgamma(5001)) / math.log(10)  # log10 C(10000, 5000)
    text = permutations.describe()
    assert text.endswith(f"out of about {10 ** (log10 - math.floor(log10)):.2f} x 10^{math.floor(log10)} distinct")
    assert len(text) < 120
    small = make_permutation_set(X[4990:5010], 20, seed=0, scheme="permutation")
    assert small.describe().endswith(f"out of {math.comb(20, 10)} distinct")  # written out, as before
