"""Multirun sweeps: summaries that match each run, failures reported without stopping others, the data cache, and
Hydra's launchers (joblib, submitit_local)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import run_cli


def _jobs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.rglob("manifest.json"))


@pytest.mark.slow
def test_two_by_two_sweep_summary_matches_each_run(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "correction=fdr,bonferroni", "data.smoothing_fwhm=0,6", "report=false",
                      f"hydra.sweep.dir={sweep}", f"output_root={tmp_path}"], cwd=tmp_path)  # cache: under output_root
    assert result.returncode == 0, result.stderr
    jobs = _jobs(sweep)
    assert len(jobs) == 4
    summary = pd.read_csv(sweep / "multirun_summary.tsv", sep="\t")
    assert len(summary) == 4 and set(summary.status) == {"complete"}
    for _, row in summary.iterrows():
        job = sweep / row["job"]
        manifest = json.loads((job / "manifest.json").read_text())
        method = row["override:correction"]
        entry = next(e for e in manifest["outputs"] if e["kind"] == "map" and e.get("correction") == method)
        thresholded = nib.load(job / entry["path"]).get_fdata()
        assert row[f"mean/{method}/n_voxels"] == np.count_nonzero(thresholded)
        assert row[f"mean/{method}/threshold"] == pytest.approx(entry["threshold"], rel=1e-12)
        clusters = pd.read_csv(job / f"contrast-mean_desc-{method}_clusters.tsv", sep="\t")
        assert row[f"mean/{method}/n_clusters"] == clusters["size_voxels"].notna().sum()
        z = nib.load(job / "contrast-mean_stat-z_statmap.nii.gz").get_fdata()
        assert row[f"mean/{method}/peak"] == pytest.approx(z.flat[np.argmax(np.abs(z))], rel=1e-6)
    # jobs with the same smoothing share their loaded data: the second one is a cache hit
    outcomes = {json.loads((j / "manifest.json").read_text())["data_cache"] for j in jobs}
    assert outcomes == {"hit", "miss"}
    hit = next(j for j in jobs if json.loads((j / "manifest.json").read_text())["data_cache"] == "hit")
    assert "data cache hit" in (hit / "run.log").read_text()


@pytest.mark.slow
def test_failing_job_is_reported_and_others_complete(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", f"data.mask=null,{tmp_path / 'missing_mask.nii.gz'}", "report=false", "correction=[fpr]",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr  # a sweep with a failed job does not report success
    summary = pd.read_csv(sweep / "multirun_summary.tsv", sep="\t")
    assert sorted(summary.status) == ["complete", "failed"]
    failed = summary[summary.status == "failed"].iloc[0]
    assert "missing_mask.nii.gz does not exist" in failed["error"]
    assert "\n" not in failed["error"]


# A job that crashes (an internal error, not a RunnerError): the stage runner is replaced, in the sweep's own
# process (the basic launcher runs jobs in-process), by one that raises for one value of the swept key.
CRASHING_SWEEP = """
import sys
import runner.app
from runner.cli import main

real_run_stages = runner.app.run_stages

def crash_on_fpr(settings, *args, **kwargs):
    if "fpr" in settings.correction:
        raise ZeroDivisionError("planted bug")
    return real_run_stages(settings, *args, **kwargs)

runner.app.run_stages = crash_on_fpr
sys.argv = ["runner", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_crashing_job_is_summarised_and_the_sweep_exits_non_zero(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO

    sweep = tmp_path / "sweep"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", CRASHING_SWEEP, "-m", "correction=fpr,fdr", "report=false",
                             f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stderr  # 1: a bug, as for a single run that crashes
    summary = pd.read_csv(sweep / "multirun_summary.tsv", sep="\t").set_index("override:correction")
    assert summary.loc["fdr", "status"] == "complete"
    assert summary.loc["fpr", "status"] == "crashed"
    error = summary.loc["fpr", "error"]
    assert "ZeroDivisionError" in error and "planted bug" in error and "\n" not in error
    crashed_job = sweep / summary.loc["fpr", "job"]
    assert json.loads((crashed_job / "manifest.json").read_text())["status"] == "failed"
    assert "Traceback" in (crashed_job / "run.log").read_text()  # the bug's traceback is kept for the report


@pytest.mark.slow
def test_two_sweeps_into_one_folder_do_not_mix_rows(tmp_path):
    sweep = tmp_path / "sweep"
    common = ["report=false", f"hydra.sweep.dir={sweep}"]
    first = run_cli(["-m", "correction=fpr,fdr", *common], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert len(pd.read_csv(sweep / "multirun_summary.tsv", sep="\t")) == 2
    second = run_cli(["-m", "correction=bonferroni", *common], cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    summary = pd.read_csv(sweep / "multirun_summary.tsv", sep="\t")
    assert list(summary["override:correction"]) == ["bonferroni"]  # the first sweep's jobs are not this sweep's
    assert len(_jobs(sweep)) == 3  # ... although their folders are still there


def test_sweep_exit_code_names_the_worst_outcome():
    from runner.sweeps import sweep_exit_code

    assert sweep_exit_code(None) == 0 and sweep_exit_code([]) == 0
    assert sweep_exit_code(["complete", "complete"]) == 0
    assert sweep_exit_code(["complete", "failed"]) == 2
    assert sweep_exit_code(["failed", "crashed", "complete"]) == 1
    assert sweep_exit_code(["complete", "interrupted"]) == 1


@pytest.mark.slow
def test_joblib_launcher_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "correction=fpr,fdr", "report=false",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = pd.read_csv(sweep / "multirun_summary.tsv", sep="\t")
    assert list(summary.status) == ["complete", "complete"]


@pytest.mark.slow
def test_submitit_local_launcher_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "correction=fpr,fdr",
                      "report=false", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = pd.read_csv(sweep / "multirun_summary.tsv", sep="\t")
    assert list(summary.status) == ["complete", "complete"]


def test_resume_skips_a_complete_identical_run(tmp_path):
    from conftest import run_analysis

    run_dir = tmp_path / "run"
    run_analysis(run_dir, ["report=false", "correction=[fpr]"])
    before = (run_dir / "manifest.json").read_text()
    summary = run_analysis(run_dir, ["report=false", "correction=[fpr]", "resume=true"])
    assert summary.get("skipped") is True
    assert (run_dir / "manifest.json").read_text() == before


def test_slurm_example_launcher_composes():
    from hydra import compose, initialize_config_dir

    from conftest import CONF
    from runner.hydra_setup import register

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm_example"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "normal" and launcher.cpus_per_task == 4 and launcher.mem_gb == 16
