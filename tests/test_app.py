"""End to end: configs compose, every preset runs on the demo data, outputs are registered and named as promised."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO, compose, run_analysis, run_cli

PRESETS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
TEST_PERMUTATIONS = 100  # the presets' own counts (500-1000) are for the demo; the run and its re-run are the test
# presets whose full run takes minutes, shrunk here (the preset itself is what a user runs)
SHRUNK = {"validity": ["correction.validity.n_datasets=3", "correction.validity.n_permutations=10"],
          # NPC computes a parametric p per partial test, voxel and permutation: 50 permutations test the same code
          "palm_contrasts": ["correction.maxt.n_permutations=50", "correction.npc.n_permutations=50"],
          "npc_modalities": ["correction.npc.n_permutations=50"]}


def fewer_permutations(preset: str) -> list[str]:
    """Overrides that cut every permutation method of ``preset`` to TEST_PERMUTATIONS (SHRUNK ones aside)."""
    correction = compose([f"+experiment={preset}"]).correction or {}
    shrunk = " ".join(SHRUNK.get(preset, []))
    return [f"correction.{method}.n_permutations={TEST_PERMUTATIONS}" for method, params in correction.items()
            if "n_permutations" in params and f"correction.{method}." not in shrunk] + SHRUNK.get(preset, [])


def test_default_run_writes_a_complete_manifest(tmp_path):
    run_dir = tmp_path / "run"
    summary = run_analysis(run_dir, ["report=false"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and summary["status"] == "complete"
    paths = {entry["path"] for entry in manifest["outputs"]}
    for stat in ("effect", "variance", "t", "z", "p"):
        assert f"contrast-mean_stat-{stat}_statmap.nii.gz" in paths
    assert "contrast-mean_stat-z_desc-fdr_statmap.nii.gz" in paths
    assert "contrast-mean_desc-fdr_clusters.tsv" in paths
    assert "design_matrix.tsv" in paths
    for entry in manifest["outputs"]:
        assert (run_dir / entry["path"]).is_file()
        assert entry["kind"] in {"map", "sidecar", "description", "clusters", "table", "figure", "design", "config",
                                 "report"}
    fdr = next(e for e in manifest["outputs"] if e["path"] == "contrast-mean_stat-z_desc-fdr_statmap.nii.gz")
    assert fdr["correction"] == "fdr" and fdr["alpha"] == 0.05 and fdr["stat"] == "z" and fdr["threshold"] > 2
    assert len(manifest["inputs"]) == 30 and all(len(i["sha256"]) == 64 for i in manifest["inputs"])
    assert not list(run_dir.rglob(".tmp-*"))


def test_thresholded_map_keeps_exactly_the_voxels_above_threshold(tmp_path):
    run_dir = tmp_path / "run"
    run_analysis(run_dir, ["report=false", "correction=[bonferroni]"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    entry = next(e for e in manifest["outputs"] if e.get("correction") == "bonferroni" and e["kind"] == "map")
    z = nib.load(run_dir / "contrast-mean_stat-z_statmap.nii.gz").get_fdata()
    thresholded = nib.load(run_dir / entry["path"]).get_fdata()
    expected = np.abs(z) >= entry["threshold"]
    np.testing.assert_array_equal(thresholded != 0, expected)


def test_rerun_into_a_complete_run_is_refused_unless_overwrite(tmp_path):
    run_dir = tmp_path / "run"
    run_analysis(run_dir, ["report=false", "correction=[fpr]"])
    from runner.errors import RunnerError

    with pytest.raises(RunnerError, match="overwrite=true"):
        run_analysis(run_dir, ["report=false", "correction=[fpr]"])
    run_analysis(run_dir, ["report=false", "correction=[fpr]", "overwrite=true"])


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_and_verifies(preset, tmp_path):
    from runner.verify import verify

    run_dir = tmp_path / preset
    run_analysis(run_dir, [f"+experiment={preset}", "report=false", *fewer_permutations(preset)])
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"
    verdict = verify(run_dir)
    assert verdict.ok, verdict.changed_inputs + verdict.differences


def test_cli_error_is_one_line_and_exit_code_2(tmp_path):
    result = run_cli(["design.formula=agee", "hydra.run.dir=" + str(tmp_path / "bad")], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did you mean 'age'" in errors[0]
    assert "Traceback" not in result.stderr
    manifest = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert "did you mean" in (tmp_path / "bad" / "run.log").read_text()


def test_cli_help_lists_config_groups(tmp_path):
    result = run_cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0
    for group in ("correction:", "data:", "design:", "experiment:"):
        assert group in result.stdout


def test_permutation_outputs_are_consistent_with_their_null(tmp_path):
    """The written logp map is -log10 of the share of the written null maxima at or above each voxel's |t|, signed
    by t (two-sided)."""
    run_dir = tmp_path / "perm"
    run_analysis(run_dir, ["+experiment=one_sample_permutation", "report=false", "correction.maxt.n_permutations=200",
                           "correction=[maxt,clustersize]", "correction.clustersize.n_permutations=200"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    by_path = {e["path"]: e for e in manifest["outputs"]}
    logp_entry = by_path["contrast-mean_stat-logp_desc-maxt_statmap.nii.gz"]
    assert logp_entry["correction"] == "maxt" and logp_entry["stat"] == "logp" and logp_entry["n_permutations"] == 200
    import pandas as pd

    null = pd.read_csv(run_dir / "contrast-mean_desc-maxt_nulldist.tsv", sep="\t")["max_statistic"].to_numpy()
    t = nib.load(run_dir / "contrast-mean_stat-t_statmap.nii.gz").get_fdata()
    logp = nib.load(run_dir / "contrast-mean_stat-logp_desc-maxt_statmap.nii.gz").get_fdata()
    mask = t != 0
    expected = np.sign(t[mask]) * -np.log10((null[None, :] >= np.abs(t[mask])[:, None] - 1e-6).mean(axis=1))
    np.testing.assert_allclose(logp[mask], expected, atol=1e-5)
    assert null.size == 200 and null[0] == pytest.approx(np.abs(t).max(), rel=1e-5)
    # the recorded critical value separates surviving from non-surviving voxels
    survivors = nib.load(run_dir / "contrast-mean_stat-t_desc-maxt_statmap.nii.gz").get_fdata() != 0
    critical = by_path["contrast-mean_stat-t_desc-maxt_statmap.nii.gz"]["threshold"]
    assert np.all(np.abs(t[survivors]) > critical - 1e-6)
    assert np.all(np.abs(t[mask & ~survivors]) <= critical + 1e-6)
    assert survivors.any()
    clusters = pd.read_csv(run_dir / "contrast-mean_desc-clustersize_clusters.tsv", sep="\t")
    assert {"x", "y", "z", "size_voxels", "p_fwe"} <= set(clusters.columns)
    assert ((clusters.p_fwe > 0) & (clusters.p_fwe <= 1)).all()
    assert "contrast-mean_stat-p_desc-permutation_statmap.nii.gz" in by_path
