"""verify re-runs a recorded analysis: it passes on an untouched run and names what changed otherwise, whether the
outputs, the manifest's own claims or the inputs changed; ``--keep`` writes only into a new or empty folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run_analysis
from runner.demo.datasets import ensure_demo
from runner.verify import main, verify

ANALYSIS = ["data.demo=null", "correction=[fpr,fdr]", "design.formula=1 + age",
            "contrasts=[{name:mean,expr:Intercept},{name:age,expr:age}]"]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder holding a copy of the demo localizer and a run recorded from inside it (relative paths)."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(ensure_demo("localizer").parent, root / "study")
    previous = os.getcwd()
    os.chdir(root)
    try:
        run_analysis(root / "results" / "run", ANALYSIS + ["data.table=study/table.tsv", "report=false"])
    finally:
        os.chdir(previous)
    return root


@pytest.fixture
def recorded(project, tmp_path) -> Path:
    """A copy of the recorded run that the test may tamper with."""
    target = tmp_path / "run"
    shutil.copytree(project / "results" / "run", target)
    return target


def _edit_manifest(run_dir: Path, edit) -> None:
    path = run_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def test_untouched_run_verifies_and_nothing_recorded_is_written(project, recorded, tmp_path, monkeypatch):
    before_project, before_run = _snapshot(project), _snapshot(recorded)
    monkeypatch.chdir(tmp_path)
    verdict = verify(recorded)
    assert verdict.ok and not verdict.notes, verdict
    manifest = json.loads((recorded / "manifest.json").read_text())
    assert verdict.compared == len(manifest["outputs"]) >= 15
    assert set(manifest["input_files"]) == {"table"}
    assert _snapshot(project) == before_project  # the recorded working directory
    assert _snapshot(recorded) == before_run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nor the caller's


def test_one_changed_voxel_is_named(recorded):
    target = recorded / "contrast-age_stat-t_statmap.nii.gz"
    image = nib.load(target)
    data = image.get_fdata().astype(np.float32)
    index = tuple(np.argwhere(data != 0)[0])
    data[index] += 0.5
    nib.save(nib.Nifti1Image(data, image.affine), target)
    verdict = verify(recorded)
    assert not verdict.ok and not verdict.changed_inputs
    assert len(verdict.differences) == 2
    assert verdict.differences[0].startswith(f"{target.name}: its bytes do not match the sha256 the manifest records")
    assert verdict.differences[1].startswith(f"{target.name}: 1 voxel(s) differ")


def test_every_sha256_zeroed_differs(recorded):
    def zero(manifest):
        for entry in manifest["outputs"]:
            entry["sha256"] = "0" * 64

    _edit_manifest(recorded, zero)
    verdict = verify(recorded)
    assert not verdict.ok
    listed = [e["path"] for e in json.loads((recorded / "manifest.json").read_text())["outputs"]]
    for path in listed:
        assert any(d.startswith(f"{path}: its bytes do not match the sha256") for d in verdict.differences), path


def test_manifest_edited_into_nonsense_is_reported_not_a_traceback(recorded):
    def edit(manifest):
        manifest["outputs"].append({"path": "../../outside.txt", "kind": "table", "sha256": "0" * 64})
        manifest["outputs"].append("not an entry")
        manifest["inputs"] = 5
        manifest["versions"] = "?"

    _edit_manifest(recorded, edit)
    verdict = verify(recorded)
    assert "manifest.json: outputs is not a list of entries" in verdict.differences
    assert ("'../../outside.txt': the manifest lists a path that is not a file name of the run directory"
            in verdict.differences)
    assert verdict.changed_inputs[0].startswith("the analysis now reads 30 input image(s), the record 0")


@pytest.mark.parametrize("claim", ["summary", "dof"])
def test_changed_claim_of_the_manifest_differs(recorded, claim):
    def edit(manifest):
        if claim == "summary":
            manifest["summary"]["contrasts"]["mean"]["fdr"]["n_voxels"] += 1
        else:
            manifest["dof"]["age"] -= 1

    true = json.loads((recorded / "manifest.json").read_text())
    _edit_manifest(recorded, edit)
    verdict = verify(recorded)
    assert not verdict.ok and not verdict.changed_inputs
    if claim == "summary":
        n = true["summary"]["contrasts"]["mean"]["fdr"]["n_voxels"]
        expected = f"manifest.json: summary.contrasts.mean.fdr.n_voxels = {n + 1} recorded, {n} in the re-run"
    else:
        expected = f"manifest.json: dof.age = {true['dof']['age'] - 1} recorded, {true['dof']['age']} in the re-run"
    assert verdict.differences == [expected]


@pytest.mark.slow
def test_figures_are_checked_against_the_record_and_the_rerun(project, tmp_path):
    """A corrupted figure differs from its recorded sha256. A figure swapped for another, its sha256 updated in the
    manifest, differs from the re-run; under other library versions (as recorded) that is a note, not a failure."""
    run = tmp_path / "run"
    previous = os.getcwd()
    os.chdir(project)
    try:
        run_analysis(run, ANALYSIS + ["data.table=study/table.tsv", "correction=[fdr]"])
    finally:
        os.chdir(previous)
    corrupted = "contrast-mean_stat-z_desc-fdr_slices.png"
    payload = bytearray((run / corrupted).read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    (run / corrupted).write_bytes(bytes(payload))
    swapped, other = "contrast-age_stat-z_desc-fdr_slices.png", "contrast-age_stat-z_desc-fdr_montage.png"
    shutil.copyfile(run / other, run / swapped)

    def rehash(manifest):
        for entry in manifest["outputs"]:
            if entry["path"] == swapped:
                entry["sha256"] = hashlib.sha256((run / swapped).read_bytes()).hexdigest()

    _edit_manifest(run, rehash)
    verdict = verify(run)
    assert len(verdict.differences) == 2, verdict.differences
    assert verdict.differences[0].startswith(f"{corrupted}: its bytes do not match the sha256 the manifest records")
    assert verdict.differences[1] == (f"{swapped}: figure differs from the re-run (may be library/font versions; "
                                      "the recorded library versions are installed)")

    def older_matplotlib(manifest):
        manifest["versions"]["matplotlib"] = "0.1"

    _edit_manifest(run, older_matplotlib)
    verdict = verify(run)
    assert len(verdict.differences) == 1 and verdict.differences[0].startswith(f"{corrupted}: its bytes do not")
    assert verdict.notes == [f"{swapped}: figure differs from the re-run (may be library/font versions: matplotlib 0.1 "
                             f"recorded, {metadata.version('matplotlib')} installed)"]


def _mask(study: Path) -> Path:
    first = nib.load(sorted(study.rglob("*stat-effect_statmap.nii.gz"))[0])
    mask = np.ones(first.shape, dtype=np.uint8)
    mask[:, :, :2] = 0
    nib.save(nib.Nifti1Image(mask, first.affine), study / "mask.nii.gz")
    return study / "mask.nii.gz"


def _design_matrix(study: Path) -> Path:
    table = pd.read_csv(study / "table.tsv", sep="\t")
    pd.DataFrame({"Intercept": 1.0, "age": table["age"]}).to_csv(study / "design.tsv", sep="\t", index=False)
    return study / "design.tsv"


def test_changed_inputs_are_reported_as_inputs(tmp_path):
    """An image, the table, the mask and the design matrix each changed since the run: each is named as an input
    (the table's change is in a column the design does not use, so only the record can tell)."""
    study = tmp_path / "study"
    shutil.copytree(ensure_demo("localizer").parent, study)
    run_analysis(tmp_path / "run", ["report=false", "correction=[fpr]", f"data.table={study / 'table.tsv'}",
                                    "data.demo=null", f"data.mask={_mask(study)}", "design.formula=null",
                                    f"design.matrix={_design_matrix(study)}", "contrasts=[{name:age,expr:age}]"])
    image = sorted(study.rglob("*stat-effect_statmap.nii.gz"))[0]
    loaded = nib.load(image)
    nib.save(nib.Nifti1Image(loaded.get_fdata().astype(np.float32) * 1.01, loaded.affine), image)
    table = pd.read_csv(study / "table.tsv", sep="\t", dtype=str, keep_default_na=False)
    table.loc[0, "fluency"] = "99"
    table.to_csv(study / "table.tsv", sep="\t", index=False)
    mask_image = nib.load(study / "mask.nii.gz")
    mask = np.asarray(mask_image.dataobj).copy()
    mask[:, :, 2] = 0
    nib.save(nib.Nifti1Image(mask, mask_image.affine), study / "mask.nii.gz")
    matrix = pd.read_csv(study / "design.tsv", sep="\t")
    matrix["age"] = matrix["age"] ** 2
    matrix.to_csv(study / "design.tsv", sep="\t", index=False)
    verdict = verify(tmp_path / "run")
    assert not verdict.ok
    expected = [f"input {image} changed", f"input table {study / 'table.tsv'} changed",
                f"input mask {study / 'mask.nii.gz'} changed", f"input design matrix {study / 'design.tsv'} changed"]
    assert len(verdict.changed_inputs) == len(expected), verdict.changed_inputs
    for line, start in zip(verdict.changed_inputs, expected):
        assert line.startswith(start), (line, start)


def test_keep_into_a_foreign_folder_is_refused(recorded, tmp_path, capsys):
    foreign = tmp_path / "other_project"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("theirs\n")
    (foreign / "manifest.json").write_text('{"status": "complete", "outputs": []}\n')
    before = _snapshot(foreign)
    assert main(["--keep", str(foreign), str(recorded)]) == 2
    assert "--keep" in capsys.readouterr().err
    assert _snapshot(foreign) == before


def test_keep_into_the_run_itself_is_refused(recorded, capsys):
    before = _snapshot(recorded)
    assert main(["--keep", str(recorded), str(recorded)]) == 2
    assert main(["--keep", str(recorded / "sub"), str(recorded)]) == 2
    assert "is the run being verified" in capsys.readouterr().err
    assert _snapshot(recorded) == before


def test_keep_is_relative_to_the_callers_directory(project, recorded, tmp_path, monkeypatch, capsys):
    caller = tmp_path / "caller"
    caller.mkdir()
    monkeypatch.chdir(caller)
    assert main(["--keep", "kept", str(recorded)]) == 0
    assert capsys.readouterr().out.startswith(f"verified: {recorded} (")
    kept = json.loads((caller / "kept" / "manifest.json").read_text())
    assert kept["status"] == "complete"
    assert not (project / "kept").exists()


def test_command_line_exit_codes(recorded, tmp_path):
    command = [sys.executable, "-m", "runner.verify"]
    (recorded / "contrast-mean_desc-fdr_clusters.tsv").write_text("cluster_id\n1\n")
    bad = subprocess.run(command + [str(recorded)], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 1 and "contrast-mean_desc-fdr_clusters.tsv" in bad.stdout
    missing = subprocess.run(command + [str(tmp_path / "nowhere")], capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 2 and missing.stderr.startswith("error:")
