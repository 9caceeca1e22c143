"""Null simulations: family-wise error of RFT and Bonferroni, binomial intervals and verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from runner.errors import RunnerError
from runner.inference.rft.validity import NullDataset, clopper_pearson, simulate_null_validity, verdict


@pytest.mark.parametrize("successes, trials", [(0, 50), (3, 100), (37, 40), (20, 20)])
def test_clopper_pearson_matches_statsmodels(successes, trials):
    expected = proportion_confint(successes, trials, alpha=0.05, method="beta")
    np.testing.assert_allclose(clopper_pearson(successes, trials), expected, rtol=1e-10, atol=1e-15)


def test_verdicts():
    assert verdict(0.05, 0.01, 0.09) == "valid"
    assert verdict(0.05, 0.0, 0.03) == "conservative"
    assert verdict(0.05, 0.08, 0.2) == "liberal"


def test_extra_methods_see_each_dataset_and_runs_are_reproducible():
    mask = np.zeros((14, 14, 14), bool)
    mask[2:12, 2:12, 2:12] = True
    design = np.column_stack([np.ones(10), np.arange(10.0)])
    seen: list[NullDataset] = []

    def always(dataset: NullDataset) -> bool:
        seen.append(dataset)
        return True

    first = simulate_null_validity(mask, design, [0, 1], 2.5, n_datasets=4, seed=3,
                                   extra_methods={"always": always, "never": lambda d: False})
    again = simulate_null_validity(mask, design, [0, 1], 2.5, n_datasets=4, seed=3)
    table = first.table().set_index("method")
    assert table.loc["always", "fwe"] == 1.0 and table.loc["never", "fwe"] == 0.0
    assert [d.index for d in seen] == [0, 1, 2, 3] and seen[0].Y.shape == (10, mask.sum())
    assert len({d.seed for d in seen}) == 4
    np.testing.assert_array_equal(first.fwhm_estimated, again.fwhm_estimated)
    for name in ("rft_voxel", "rft_cluster_p0.01", "rft_cluster_p0.001", "bonferroni"):
        np.testing.assert_array_equal(first.rejections[name], again.rejections[name])


def test_f_contrasts_and_bad_inputs():
    mask = np.ones((12, 12, 12), bool)
    design = np.column_stack([np.ones(9), np.arange(9.0), np.arange(9.0) ** 2])
    result = simulate_null_validity(mask, design, np.eye(3)[1:], 2.0, n_datasets=2, seed=0)
    assert set(result.table()["method"]) == {"rft_voxel", "rft_cluster_p0.01", "rft_cluster_p0.001", "bonferroni"}
    with pytest.raises(RunnerError, match="two_sided"):
        simulate_null_validity(mask, design, np.eye(3)[1:], 2.0, n_datasets=1, two_sided=True)
    with pytest.raises(RunnerError, match="alpha"):
        simulate_null_validity(mask, design, [0, 1, 0], 2.0, n_datasets=1, alpha=1.5)


@pytest.mark.slow
def test_voxel_level_rft_controls_the_fwe_on_smooth_null_data():
    # 100 null one-sample datasets, 12 subjects, 32^3 box, FWHM 3 voxels: RFT (as SPM, with its Bonferroni minimum)
    # and Bonferroni must not be liberal: the Clopper-Pearson interval of their FWE reaches down to alpha or below.
    mask = np.ones((32, 32, 32), bool)
    result = simulate_null_validity(mask, np.ones((12, 1)), [1.0], 3.0, n_datasets=100, alpha=0.05, seed=2016)
    table = result.table().set_index("method")
    for method in ("rft_voxel", "bonferroni"):
        assert table.loc[method, "ci_low"] <= 0.05, table
        assert table.loc[method, "verdict"] in ("valid", "conservative")
    np.testing.assert_allclose(result.fwhm_estimated.mean(axis=0), 3.0, rtol=0.10)
