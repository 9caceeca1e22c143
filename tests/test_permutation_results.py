"""Permutation outputs as written: two-sided -log10 FWE p maps carry the sign of the effect."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from conftest import run_analysis
from planted import NEGATIVE_CENTRE, POSITIVE_CENTRE, ball, planted_study

ALPHA = 0.05


def _maps(run_dir):
    load = lambda name: nib.load(run_dir / name).get_fdata()  # noqa: E731
    t = load("contrast-mean_stat-t_statmap.nii.gz")
    logp = load("contrast-mean_stat-logp_desc-maxt_statmap.nii.gz")
    null = np.loadtxt(run_dir / "contrast-mean_desc-maxt_nulldist.tsv", skiprows=1, usecols=1)
    return t, logp, null


def test_two_sided_logp_is_signed_by_t(tmp_path):
    run_dir = tmp_path / "run"
    run_analysis(run_dir, planted_study(tmp_path / "study") + [
        "correction=[maxt]", "correction.maxt.n_permutations=200", "report=false"])
    t, logp, null = _maps(run_dir)
    inside = t != 0
    # unsigned FWE p from the written null of max |t| (two-sided), then the sign of t
    unsigned = -np.log10((null[None, :] >= np.abs(t[inside])[:, None] - 1e-6).mean(axis=1))
    np.testing.assert_allclose(logp[inside], np.sign(t[inside]) * unsigned, atol=1e-5)
    negative, positive = ball(NEGATIVE_CENTRE), ball(POSITIVE_CENTRE)
    assert np.all(t[negative] < 0) and np.all(t[positive] > 0)  # the planted effects are seen with their signs
    assert logp[negative].min() < -(-np.log10(ALPHA))  # a significant deactivation is a negative logp ...
    assert logp[positive].max() > -np.log10(ALPHA)  # ... and an activation a positive one
    entry = next(e for e in json.loads((run_dir / "manifest.json").read_text())["outputs"] if e["stat"] == "logp")
    assert entry["signed"] is True and entry["two_sided"] is True


def test_one_sided_logp_stays_unsigned(tmp_path):
    run_dir = tmp_path / "run"
    run_analysis(run_dir, planted_study(tmp_path / "study") + [
        "correction=[maxt]", "correction.maxt.n_permutations=200", "correction.maxt.two_sided=false",
        "report=false"])
    t, logp, null = _maps(run_dir)
    inside = t != 0
    expected = -np.log10((null[None, :] >= t[inside][:, None] - 1e-6).mean(axis=1))  # upper tail only
    np.testing.assert_allclose(logp[inside], expected, atol=1e-5)
    assert logp.min() >= 0 and np.all(logp[ball(NEGATIVE_CENTRE)] < -np.log10(ALPHA))
