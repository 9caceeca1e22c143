"""verify re-runs a recorded analysis: it passes on an untouched run and names what changed otherwise."""

from __future__ import annotations

import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO, run_analysis
from runner.demo.datasets import ensure_demo
from runner.verify import verify


@pytest.fixture
def study(tmp_path):
    """A copy of the demo localizer that the test may modify."""
    source = ensure_demo("localizer").parent
    target = tmp_path / "study"
    shutil.copytree(source, target)
    return target / "table.tsv"


@pytest.fixture
def recorded(tmp_path, study):
    run_dir = tmp_path / "run"
    run_analysis(run_dir, [f"data.table={study}", "data.demo=null", "report=false", "correction=[fpr,fdr]",
                           "design.formula=1 + age", "contrasts=[{name:mean,expr:Intercept},{name:age,expr:age}]"])
    return run_dir


def test_untouched_run_verifies(recorded):
    verdict = verify(recorded)
    assert verdict.ok and verdict.compared >= 10


def test_one_changed_voxel_is_named(recorded):
    target = recorded / "contrast-age_stat-t_statmap.nii.gz"
    image = nib.load(target)
    data = image.get_fdata().astype(np.float32)
    index = tuple(np.argwhere(data != 0)[0])
    data[index] += 0.5
    nib.save(nib.Nifti1Image(data, image.affine), target)
    verdict = verify(recorded)
    assert not verdict.ok and not verdict.changed_inputs
    assert len(verdict.differences) == 1
    assert verdict.differences[0].startswith("contrast-age_stat-t_statmap.nii.gz: 1 voxel(s) differ")


def test_changed_input_is_reported_as_input(recorded, study):
    first = sorted(study.parent.rglob("*stat-effect_statmap.nii.gz"))[0]
    image = nib.load(first)
    nib.save(nib.Nifti1Image(image.get_fdata().astype(np.float32) * 1.01, image.affine), first)
    verdict = verify(recorded)
    assert any(first.name in line and "changed" in line for line in verdict.changed_inputs)


def test_command_line_exit_codes(recorded, tmp_path):
    command = [sys.executable, "-m", "runner.verify"]
    ok = subprocess.run(command + [str(recorded)], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0 and ok.stdout.startswith("verified:")
    (recorded / "contrast-mean_corr-fdr_clusters.tsv").write_text("cluster_id\n1\n")
    bad = subprocess.run(command + [str(recorded)], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 1 and "contrast-mean_corr-fdr_clusters.tsv" in bad.stdout
    missing = subprocess.run(command + [str(tmp_path / "nowhere")], capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 2 and missing.stderr.startswith("error:")
