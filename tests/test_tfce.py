"""TFCE and voxel-graph components against direct computations with scipy.ndimage.label and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from oracles import (
    STRUCTURE_RANK,
    midpoint_tfce,
    one_sample_t,
    reference_exact_tfce,
    reference_tfce,
    smooth_volume,
)
from runner.errors import RunnerError
from runner.inference.permutation import PermutationOptions, permutation_inference
from runner.inference.tfce import label_components, tfce, tfce_maxima, voxel_graph


@pytest.fixture
def holey_mask() -> np.ndarray:
    mask = np.zeros((9, 8, 7), dtype=bool)
    mask[1:8, 1:7, 1:6] = True
    mask[4, 3:5, :] = False  # a wall with a gap makes the connectivity matter
    return mask


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("two_sided", [True, False])
def test_tfce_matches_threshold_by_threshold_labelling(holey_mask, connectivity, two_sided):
    rng = np.random.default_rng(connectivity + two_sided)
    graph = voxel_graph(holey_mask, connectivity)
    volumes = [smooth_volume(rng) * holey_mask for _ in range(3)]
    volumes.append(np.round(volumes[0], 1))  # ties between voxels, and the maximum reached by several voxels
    maps = np.stack([v[holey_mask] for v in volumes])
    ours = tfce(maps, graph, two_sided=two_sided)
    for volume, enhanced in zip(volumes, ours, strict=True):
        expected = reference_tfce(volume, connectivity, None, two_sided)[holey_mask]
        np.testing.assert_allclose(enhanced, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tfce_maxima(maps, graph, two_sided=two_sided), np.abs(ours).max(axis=1), rtol=1e-12)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_fixed_step_with_values_on_the_thresholds(holey_mask, connectivity):
    """Values that are exact multiples of dh sit on a threshold: they count as reaching it (s >= h)."""
    rng = np.random.default_rng(40 + connectivity)
    graph = voxel_graph(holey_mask, connectivity)
    volume = np.round(smooth_volume(rng) * 4) / 4 * holey_mask  # multiples of 0.25, many ties
    ours = tfce(volume[holey_mask], graph, dh=0.25)
    expected = reference_tfce(volume, connectivity, 0.25, True)[holey_mask]
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)


def test_fixed_step_matches_fine_numerical_integration(holey_mask):
    rng = np.random.default_rng(3)
    volume = smooth_volume(rng) * holey_mask
    graph = voxel_graph(holey_mask, 26)
    ours = tfce(volume[holey_mask], graph, dh=0.01)
    expected = reference_tfce(volume, 26, 0.01, True)[holey_mask]
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)


def test_isolated_voxel_closed_form():
    mask = np.ones((5, 5, 5), dtype=bool)
    volume = np.zeros(mask.shape)
    volume[2, 2, 2] = 3.0
    graph = voxel_graph(mask, 26)
    # sum_{k=1}^{L} (k dh)^2 dh with L = s / dh: dh^3 L (L + 1) (2L + 1) / 6
    for dh, levels in ((0.5, 6), (0.25, 12)):
        enhanced = tfce(volume[mask], graph, dh=dh)
        expected = dh**3 * levels * (levels + 1) * (2 * levels + 1) / 6
        assert enhanced[np.ravel_multi_index((2, 2, 2), mask.shape)] == pytest.approx(expected)
    # fine steps approach the integral s^3 / 3; the default uses max / 100
    fine = tfce(volume[mask], graph, dh=1e-3).max()
    assert fine == pytest.approx(3.0**3 / 3, rel=2e-3)
    default = tfce(volume[mask], graph).max()
    assert default == pytest.approx(0.03**3 * 100 * 101 * 201 / 6)


def test_two_voxel_cluster_closed_form():
    mask = np.ones((1, 1, 2), dtype=bool)
    graph = voxel_graph(mask, 6)
    high, low, dh = 2.0, 1.0, 0.25
    enhanced = tfce(np.array([high, low]), graph, dh=dh)
    shared = sum(2**0.5 * (k * dh) ** 2 * dh for k in range(1, 5))  # both voxels up to h = 1
    alone = sum((k * dh) ** 2 * dh for k in range(5, 9))  # only the high voxel from 1.25 to 2
    assert enhanced == pytest.approx([shared + alone, shared])


def test_connectivity_decides_whether_diagonal_voxels_merge():
    mask = np.ones((2, 2, 1), dtype=bool)
    values = np.zeros(mask.shape)
    values[0, 0, 0] = values[1, 1, 0] = 1.0  # corner-to-corner on one slice: an edge neighbour
    for connectivity, extent in ((6, 1), (18, 2), (26, 2)):
        graph = voxel_graph(mask, connectivity)
        enhanced = tfce(values[mask], graph, dh=0.5)
        expected = extent**0.5 * (0.5**2 * 0.5 + 1.0**2 * 0.5)
        assert enhanced.max() == pytest.approx(expected)


def test_negative_tail_is_enhanced_separately_and_returned_negative():
    mask = np.ones((1, 1, 3), dtype=bool)
    graph = voxel_graph(mask, 6)
    values = np.array([2.0, -2.0, 2.0])  # the negative voxel separates the two positive ones
    both = tfce(values, graph, dh=0.5)
    single = sum((k * 0.5) ** 2 * 0.5 for k in range(1, 5))
    assert both == pytest.approx([single, -single, single])
    assert tfce(values, graph, dh=0.5, two_sided=False) == pytest.approx([single, 0.0, single])


def test_maps_are_independent_within_a_batch(holey_mask):
    rng = np.random.default_rng(7)
    graph = voxel_graph(holey_mask, 26)
    maps = np.stack([(smooth_volume(rng) * s)[holey_mask] for s in (1.0, 3.0, 0.2)])
    together = tfce(maps, graph)
    for b in range(3):
        np.testing.assert_array_equal(tfce(maps[b], graph), together[b])
    np.testing.assert_array_equal(tfce_maxima(maps[::-1], graph), tfce_maxima(maps, graph)[::-1])
    # the maxima are tracked per cluster, the maps summed along the merge tree: equal up to rounding
    np.testing.assert_allclose(tfce_maxima(maps, graph), np.abs(together).max(axis=1), rtol=1e-13)


def test_matches_nilearn_times_the_step(holey_mask):
    """nilearn sums without multiplying by dh, with dh = max|stat| / 100 for both tails (6-connectivity)."""
    utils = pytest.importorskip("nilearn.mass_univariate._utils")
    rng = np.random.default_rng(11)
    volume = smooth_volume(rng) * holey_mask
    dh = np.abs(volume).max() / 100
    theirs = utils.calculate_tfce(volume[..., None], ndimage.generate_binary_structure(3, 1),
                                  two_sided_test=True)[..., 0][holey_mask]
    ours = tfce(volume[holey_mask], voxel_graph(holey_mask, 6), dh=dh)
    # nilearn's thresholds come from linspace, ours are k * dh: a voxel sitting exactly on a threshold may differ
    close = np.isclose(ours, theirs * dh, rtol=1e-9, atol=1e-12)
    assert close.mean() > 0.99


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), power=st.sampled_from([-1, 1, 2]))
def test_scaling_by_a_power_of_two_scales_tfce_by_its_cube(seed, power):
    """With the automatic step, thresholds scale with the map: TFCE(c x) = c^(H+1) TFCE(x) (exact for c = 2^k)."""
    rng = np.random.default_rng(seed)
    mask = np.ones((4, 4, 3), dtype=bool)
    values = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 0.8)[mask]
    graph = voxel_graph(mask, 26)
    factor = 2.0**power
    np.testing.assert_allclose(tfce(factor * values, graph), factor**3 * tfce(values, graph), rtol=1e-12, atol=0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_tfce_is_at_least_that_of_the_voxel_alone(seed):
    rng = np.random.default_rng(seed)
    mask = np.ones((4, 3, 3), dtype=bool)
    values = rng.standard_normal(mask.sum()) * 2
    graph = voxel_graph(mask, 6)
    enhanced = tfce(values, graph, dh=0.1, two_sided=False)
    heights = 0.1 * np.arange(1, 200)
    alone = np.array([np.sum(heights[heights <= v] ** 2 * 0.1) for v in values])
    assert np.all(enhanced >= alone - 1e-12)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_label_components_partition_equals_ndimage(holey_mask, connectivity):
    rng = np.random.default_rng(connectivity)
    graph = voxel_graph(holey_mask, connectivity)
    structure = ndimage.generate_binary_structure(3, STRUCTURE_RANK[connectivity])
    active = np.stack([(smooth_volume(rng) > 0.5)[holey_mask] for _ in range(3)])
    labels, n = label_components(active, graph)
    seen = 0
    for b in range(3):
        volume = np.zeros(holey_mask.shape, dtype=bool)
        volume[holey_mask] = active[b]
        expected, count = ndimage.label(volume, structure)
        ours = labels[b]
        assert np.array_equal(ours >= 0, active[b])
        # same partition: a one-to-one map between our labels and ndimage's
        pairs = {(o, e) for o, e in zip(ours[active[b]], expected[holey_mask][active[b]], strict=True)}
        assert len(pairs) == count == len({o for o, _ in pairs})
        seen += count
    assert n == seen


def test_label_components_keeps_tails_apart():
    mask = np.ones((1, 1, 4), dtype=bool)
    graph = voxel_graph(mask, 6)
    stat = np.array([[3.0, -3.0, -3.0, 3.0]])
    labels, n = label_components(np.abs(stat) > 1, graph, tail=np.sign(stat).astype(np.int8))
    assert n == 3
    assert labels[0, 1] == labels[0, 2] != labels[0, 0]


def test_input_errors():
    mask = np.ones((3, 3, 3), dtype=bool)
    with pytest.raises(RunnerError, match="connectivity"):
        voxel_graph(mask, 8)
    with pytest.raises(RunnerError, match="3D"):
        voxel_graph(mask[0], 6)
    with pytest.raises(RunnerError, match="27 in-mask"):
        tfce(np.zeros(5), voxel_graph(mask, 6))
    values = np.linspace(-3, 3, 27)
    for dh in ("bogus", "EXACT", 0.0, -0.1, np.inf, True):
        with pytest.raises(RunnerError, match="positive number, null .* or 'exact'"):
            tfce(values, voxel_graph(mask, 6), dh=dh)
    with pytest.raises(RunnerError, match="thresholds"):
        tfce_maxima(values[None], voxel_graph(mask, 6), dh=1e-9)


# ------------------------------------------------------------------------------------------ exact TFCE


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("two_sided", [True, False])
def test_exact_tfce_matches_the_integral_between_voxel_values(holey_mask, connectivity, two_sided):
    rng = np.random.default_rng(20 + connectivity + two_sided)
    graph = voxel_graph(holey_mask, connectivity)
    volumes = [smooth_volume(rng) * holey_mask for _ in range(2)]
    volumes.append(np.round(volumes[0], 1))  # ties
    maps = np.stack([v[holey_mask] for v in volumes])
    ours = tfce(maps, graph, dh="exact", two_sided=two_sided)
    for volume, enhanced in zip(volumes, ours, strict=True):
        expected = reference_exact_tfce(volume, connectivity, two_sided)[holey_mask]
        np.testing.assert_allclose(enhanced, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(tfce_maxima(maps, graph, dh="exact", two_sided=two_sided), np.abs(ours).max(axis=1),
                               rtol=1e-12)


def test_exact_tfce_matches_fine_numerical_integration():
    """Midpoint rule with 20000 steps: its error is below (number of jumps of the extent) x dh x integrand."""
    mask = np.ones((6, 5, 4), dtype=bool)
    volume = np.abs(smooth_volume(np.random.default_rng(9), mask.shape))
    graph = voxel_graph(mask, 26)
    ours = tfce(volume[mask], graph, dh="exact", two_sided=False)
    expected = midpoint_tfce(volume, 26, 20000)[mask]
    np.testing.assert_allclose(ours, expected, rtol=2e-4, atol=1e-4 * ours.max())
    # other exponents go through the same integral
    ours = tfce(volume[mask], graph, E=1.0, H=1.5, dh="exact", two_sided=False)
    expected = reference_exact_tfce(volume, 26, False, E=1.0, H=1.5)[mask]
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("E", "H"), [(0.5, 2.0), (1.0, 1.0), (2.0 / 3.0, 3.0)])
def test_exact_tfce_closed_forms(E, H):
    mask = np.ones((5, 5, 5), dtype=bool)
    graph = voxel_graph(mask, 26)
    volume = np.zeros(mask.shape)
    volume[2, 2, 2] = 3.0  # an isolated voxel: integral_0^s h^H dh
    enhanced = tfce(volume[mask], graph, E=E, H=H, dh="exact")
    assert enhanced[np.ravel_multi_index((2, 2, 2), mask.shape)] == pytest.approx(3.0 ** (H + 1) / (H + 1), rel=1e-13)
    assert np.count_nonzero(enhanced) == 1
    # two neighbours a > b: together (extent 2) up to b, the higher one alone from b to a
    pair = voxel_graph(np.ones((1, 1, 2), dtype=bool), 6)
    high, low = 2.5, 1.5
    shared = 2**E * low ** (H + 1) / (H + 1)
    alone = (high ** (H + 1) - low ** (H + 1)) / (H + 1)
    np.testing.assert_allclose(tfce(np.array([high, low]), pair, E=E, H=H, dh="exact"), [shared + alone, shared],
                               rtol=1e-13)
    np.testing.assert_allclose(tfce(np.array([-low, -high]), pair, E=E, H=H, dh="exact"), [-shared, -shared - alone],
                               rtol=1e-13)


def test_fine_steps_converge_to_the_exact_integral(holey_mask):
    volume = smooth_volume(np.random.default_rng(13)) * holey_mask
    graph = voxel_graph(holey_mask, 18)
    exact = tfce(volume[holey_mask], graph, dh="exact")
    errors = [np.abs(tfce(volume[holey_mask], graph, dh=dh) - exact).max() for dh in (0.1, 0.01, 0.001)]
    assert errors[2] < 2e-3 * np.abs(exact).max()
    assert errors[0] > errors[1] > errors[2]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), factor=st.floats(0.01, 100.0))
def test_exact_tfce_scales_with_the_power_h_plus_one(seed, factor):
    """No step to rescale: TFCE(c x) = c^(H+1) TFCE(x) for any c > 0."""
    rng = np.random.default_rng(seed)
    mask = np.ones((4, 4, 3), dtype=bool)
    values = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 0.8)[mask]
    graph = voxel_graph(mask, 26)
    expected = factor**3 * tfce(values, graph, dh="exact")
    # heights enter as differences of cubes: rounding is relative to the largest values, not to each voxel's
    np.testing.assert_allclose(tfce(factor * values, graph, dh="exact"), expected, rtol=1e-11,
                               atol=1e-12 * np.abs(expected).max())


# ------------------------------------------------------------------------------ in the permutation engine


@pytest.mark.parametrize(("dh", "connectivity"), [(None, 6), (None, 18), ("exact", 6), ("exact", 26)])
def test_permutation_null_is_the_max_tfce_of_each_sign_flipped_map(holey_mask, dh, connectivity):
    """The engine's TFCE null against the reference TFCE of each sign-flipped t map, recomputed here."""
    rng = np.random.default_rng(connectivity)
    n = 8
    Y = np.stack([(smooth_volume(rng) + 0.5)[holey_mask] for _ in range(n)])
    options = PermutationOptions(n_permutations=20, seed=2, connectivity=connectivity, tfce_dh=dh)
    result = permutation_inference(Y, np.ones((n, 1)), np.array([[1.0]]), holey_mask, ["tfce"], options)
    reference = reference_tfce if dh is None else reference_exact_tfce
    expected = []
    for j in range(result.permutations.size):
        orders, signs = result.permutations.rows(j, j + 1)
        volume = np.zeros(holey_mask.shape)
        volume[holey_mask] = one_sample_t(signs[0][:, None] * Y[orders[0]])
        enhanced = reference(volume, connectivity, None, True) if dh is None else reference(volume, connectivity, True)
        expected.append(np.abs(enhanced).max())
        if j == 0:
            np.testing.assert_allclose(result.tfce, enhanced[holey_mask], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(result.null_max["tfce"], expected, rtol=1e-9)
    assert any(("exact integral" if dh == "exact" else "max/100") in message for message in result.messages)


def test_compiled_kernels_are_reused_from_the_disk_cache():
    """numba compiles the TFCE kernels once (about 10 s on 2 cores) and later processes -- every command-line test,
    every sweep job -- load them from its cache (next to the module, or NUMBA_CACHE_DIR): a second process compiles
    nothing."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    script = ("import numpy as np\nfrom runner.inference import tfce as t\n"
              "g = t.voxel_graph(np.ones((4, 4, 4), bool), 26)\n"
              "t.tfce(np.random.default_rng(0).standard_normal((1, 64)), g, two_sided=True)\n"
              "s = t._enhance.stats\nprint(sum(s.cache_hits.values()), sum(s.cache_misses.values()))\n")
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(2)]
    assert runs[1] == ["1", "0"], runs  # loaded from the cache, not compiled
