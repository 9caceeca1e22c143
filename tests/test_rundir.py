"""The run folder: the runner writes only where it may, one run at a time, and its records never lie.

Each test builds the situation of one reproduction of issue 9 (a foreign folder, a user's ``.tmp-*`` files, a folder
holding the inputs, two runs at once, a killed run, an overwrite that fails, a resume after a change) and checks the
folder's files byte for byte against a snapshot taken before, or the manifest against the files it lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_analysis, run_cli
from runner.errors import RunnerError
from test_bad_inputs import manifest_status, run_cli_inprocess, save_map, study  # noqa: F401  (fixture)
from test_kill import live_log, wait_for_fit

STAGING = ".runner-staging"
RUNNER_FILES = {"run.log", ".runner.lock", ".runner-journal"}

# A real `python -m runner` whose OLS fit waits until the test lets it go (a file appears), so a second process can
# meet it mid-run, or a signal can land mid-fit.
HELD_FIT = """
import os, sys, time
import runner.glm as glm
original = glm.ols_fit
release = sys.argv[1]
def held_ols_fit(*args, **kwargs):
    deadline = time.monotonic() + 120
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    return original(*args, **kwargs)
glm.ols_fit = held_ols_fit
from runner.cli import main
sys.argv = ["runner", *sys.argv[2:]]
main()
"""


def start_held_run(args: list[str], cwd: Path, release: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", HELD_FIT, str(release), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def analysis(study, *extra: str) -> dict:
    """Run in-process into the study's run folder."""
    return run_analysis(study.run_dir, [o for o in study.overrides(*extra) if not o.startswith("hydra.")])


def assert_record_matches_files(run_dir: Path) -> dict:
    """The manifest is complete, every listed output has its recorded sha256, and nothing else is there."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    listed = {entry["path"]: entry["sha256"] for entry in manifest["outputs"]}
    for path, digest in listed.items():
        assert hashlib.sha256((run_dir / path).read_bytes()).hexdigest() == digest, path
    present = {p.name for p in run_dir.iterdir()}
    assert present - set(listed) - RUNNER_FILES == {"manifest.json"}
    return manifest


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- 1-3: the folder policy ---------------------------------------------------------------------------------------
def test_a_folder_with_a_foreign_manifest_is_refused_and_untouched(study):
    folder = study.run_dir
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine\n")
    (folder / "sub" / ".tmp-draft.txt").write_text("draft\n")
    (folder / "manifest.json").write_text(json.dumps({"outputs": [{"path": "notes.txt"}]}))
    before = snapshot(folder)
    with pytest.raises(RunnerError, match="holds no manifest.json of this runner"):
        analysis(study)
    assert snapshot(folder) == before


@pytest.mark.parametrize("name", ["config.yaml", "design_matrix.tsv", "contrasts.tsv"])
def test_a_folder_holding_files_named_like_outputs_is_refused_and_untouched(name, study, capsys, monkeypatch):
    study.run_dir.mkdir()
    (study.run_dir / name).write_text("the user's own file\n")
    before = snapshot(study.run_dir)
    code, _, err = run_cli_inprocess(study.overrides(), capsys, monkeypatch)
    assert code == 2 and "is not empty" in one_error_line(err)
    assert snapshot(study.run_dir) == before


def test_user_tmp_files_in_an_own_run_folder_survive_reruns(study):
    """Clean-up is by journal only: a user's .tmp-* files (anywhere) and notes in a run folder are never removed."""
    analysis(study)
    folder = study.run_dir
    mine = {folder / ".tmp-upload.part": "upload", folder / "code" / "deep" / ".tmp-scratch.py": "x = 1",
            folder / "notes.txt": "notes"}
    for path, text in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    analysis(study, "overwrite=true", "correction=[fdr]")
    with pytest.raises(RunnerError, match="not a design column"):
        analysis(study, "overwrite=true", "contrasts=[{name:x,expr:Interceptt}]")
    for path, text in mine.items():
        assert path.read_text() == text
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete" and any(e.get("correction") == "fdr" for e in manifest["outputs"])


def test_a_users_file_named_like_a_new_output_in_an_own_run_folder_is_never_replaced(study):
    analysis(study)  # report=false: no report.html in the record
    (study.run_dir / "report.html").write_text("<p>my own notes</p>")
    before = snapshot(study.run_dir)
    with pytest.raises(RunnerError, match="holds report.html, which this runner did not write"):
        analysis(study, "overwrite=true", "report=true")
    assert snapshot(study.run_dir) == before


@pytest.mark.parametrize("run_dir", [".", "''"])
def test_the_working_directory_is_refused(run_dir, study, tmp_path, capsys, monkeypatch):
    """hydra.run.dir=. (or '') in a project root: refused, and nothing there changes (`.` in a subprocess, as
    typed; `''` in-process, the study's folder being the working directory)."""
    (tmp_path / "code" / "deep").mkdir(parents=True)
    (tmp_path / "code" / "deep" / ".tmp-scratch.py").write_text("x = 1\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".tmp-upload.part").write_bytes(b"\x00" * 10)
    before = snapshot(tmp_path)
    overrides = [o for o in study.overrides() if not o.startswith("hydra.run.dir")]
    if run_dir == ".":
        result = run_cli([*overrides, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        code, err = result.returncode, result.stderr
    else:
        code, _, err = run_cli_inprocess([*overrides, f"hydra.run.dir={run_dir}"], capsys, monkeypatch)
    assert code == 2 and "is the working directory" in one_error_line(err)
    assert snapshot(tmp_path) == before


def test_the_home_folder_is_refused(study, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export X=1\n")
    monkeypatch.setenv("HOME", str(home))
    before = snapshot(home)
    with pytest.raises(RunnerError, match="is the home folder"):
        run_analysis(home, [o for o in study.overrides() if not o.startswith("hydra.")])
    assert snapshot(home) == before


def test_the_root_and_folders_holding_the_working_directory_are_refused(tmp_path, monkeypatch):
    from runner.rundir import check_location

    monkeypatch.chdir(tmp_path)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    for folder, message in [(Path("/"), "file-system root"), (tmp_path, "working directory"),
                            (Path(".."), "working directory")]:
        with pytest.raises(RunnerError, match=message):
            check_location(folder)
    check_location(tmp_path / "project" / "results")  # below the working directory: fine


def test_a_folder_holding_the_mask_is_refused(study, capsys, monkeypatch):
    from test_bad_inputs import brain_mask

    masks = study.root / "masks"
    save_map(masks / "mask.nii.gz", brain_mask().astype(float))
    before = snapshot(masks)
    overrides = [o for o in study.overrides(f"data.mask={masks / 'mask.nii.gz'}") if not o.startswith("hydra.run")]
    code, _, err = run_cli_inprocess([*overrides, f"hydra.run.dir={masks}"], capsys, monkeypatch)
    assert code == 2 and "holds the input" in one_error_line(err)
    assert snapshot(masks) == before


def test_an_own_run_folder_holding_an_input_image_is_refused_before_its_record_is_replaced(study):
    analysis(study)
    image = study.run_dir / "sub-01-copy.nii.gz"
    image.write_bytes(study.image(0).read_bytes())
    frame = study.frame.copy()
    frame.loc[0, "path"] = str(image)
    table = study.save_table(frame, name="table_copy.tsv")
    before = snapshot(study.run_dir)
    with pytest.raises(RunnerError, match="holds the input"):
        analysis(study, "overwrite=true", f"data.table={table}")
    assert snapshot(study.run_dir) == before


# -- 5: one writer at a time ----------------------------------------------------------------------------------------
@pytest.mark.slow  # a second Python process
def test_two_runs_into_one_folder_one_runs_the_other_is_refused_naming_it(study, tmp_path):
    release = tmp_path / "release"
    first = start_held_run(study.overrides("cache=false"), study.root, release)
    try:
        wait_for_fit(first, live_log(study.run_dir), timeout=120)
        second = run_cli(study.overrides("cache=false", "correction=[fdr]", "overwrite=true"), cwd=study.root)
    finally:
        release.touch()
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert second.returncode == 2
    line = one_error_line(second.stderr)
    assert "is in use by" in line and f"pid {first.pid}" in line
    manifest = assert_record_matches_files(study.run_dir)
    assert {e.get("correction") for e in manifest["outputs"]} >= {"fpr"}
    assert not any(e.get("correction") == "fdr" for e in manifest["outputs"])


@pytest.mark.slow  # a second Python process
def test_a_lock_left_by_a_killed_run_is_taken_over(study, tmp_path, caplog):
    process = start_held_run(study.overrides("cache=false"), study.root, tmp_path / "never")
    wait_for_fit(process, live_log(study.run_dir), timeout=120)
    process.kill()
    process.communicate(timeout=60)
    holder = json.loads((study.run_dir / ".runner.lock").read_text())
    assert holder["pid"] == process.pid
    caplog.set_level("INFO", logger="runner")
    analysis(study, "cache=false")
    assert f"stale lock on the run directory {study.run_dir} left by pid {process.pid}" in caplog.text
    assert_record_matches_files(study.run_dir)
    assert (study.run_dir / ".runner.lock").read_text() == ""  # released


def test_exclusive_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    from runner.rundir import exclusive_lock

    lock = tmp_path / "entry.lock"
    with exclusive_lock(lock, "cache entry E"):
        started = time.monotonic()
        with pytest.raises(RunnerError, match=f"cache entry E is in use by pid {os.getpid()} on .*; wait"):
            with exclusive_lock(lock, "cache entry E", wait_seconds=0.3):
                pass
        assert time.monotonic() - started >= 0.3
    with exclusive_lock(lock, "cache entry E"):  # released: free again
        pass


# -- 6: transactions and resume -------------------------------------------------------------------------------------
def test_overwrite_with_a_typo_in_a_contrast_leaves_the_complete_run_byte_identical(study, capsys, monkeypatch):
    code, _, err = run_cli_inprocess(study.overrides(), capsys, monkeypatch)
    assert code == 0, err
    before = snapshot(study.run_dir)
    code, _, err = run_cli_inprocess(study.overrides("overwrite=true", "contrasts=[{name:x,expr:Interceptt}]"),
                                     capsys, monkeypatch)
    assert code == 2 and "did you mean 'Intercept'" in one_error_line(err)
    assert snapshot(study.run_dir) == before


@pytest.mark.slow  # a second Python process
def test_sigterm_during_an_overwrite_leaves_the_complete_run_intact(study, tmp_path):
    analysis(study, "cache=false")
    before = snapshot(study.run_dir)
    process = start_held_run(study.overrides("cache=false", "overwrite=true", "correction=[fdr]"), study.root,
                             tmp_path / "never")
    wait_for_fit(process, live_log(study.run_dir), timeout=120)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert one_error_line(stderr).startswith("error: interrupted by SIGTERM")
    assert snapshot(study.run_dir) == before


def test_a_fresh_run_that_fails_leaves_a_failed_record_that_matches_its_files(study):
    with pytest.raises(RunnerError, match="not a design column"):
        analysis(study, "contrasts=[{name:x,expr:Interceptt}]")
    manifest = json.loads((study.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "Interceptt" in manifest["error"]
    assert manifest["format"] == "second-level-runner.manifest"
    assert "Interceptt" in (study.run_dir / "run.log").read_text()
    assert not (study.run_dir / STAGING).exists()


def test_a_commit_cut_short_is_finished_by_the_next_run(study, monkeypatch):
    """A crash while the staged record replaces the old one: no manifest claims anything, the next run cleans up."""
    import runner.rundir as rundir

    analysis(study)
    (study.run_dir / "notes.txt").write_text("mine")
    calls = []
    original = os.replace

    def crash_after_three(src, dst):  # os.replace is shared: count only the moves out of the staging folder
        if Path(src).parent.name == STAGING and Path(dst).parent == study.run_dir:
            calls.append(dst)
            if len(calls) > 3:
                raise OSError("disk gone")
        return original(src, dst)

    monkeypatch.setattr(rundir.os, "replace", crash_after_three)
    with pytest.raises(OSError, match="disk gone"):
        analysis(study, "overwrite=true", "correction=[fdr]")
    monkeypatch.setattr(rundir.os, "replace", original)
    assert manifest_status(study.run_dir) is None  # the old record went first; the new one never arrived
    analysis(study, "correction=[bonferroni]")
    manifest = json.loads((study.run_dir / "manifest.json").read_text())
    assert {e.get("correction") for e in manifest["outputs"]} == {None, "bonferroni"}
    assert (study.run_dir / "notes.txt").read_text() == "mine"
    present = {p.name for p in study.run_dir.iterdir()}
    assert present - {e["path"] for e in manifest["outputs"]} == RUNNER_FILES | {"manifest.json", "notes.txt"}


def _change_image(study):
    save_map(study.image(2), study.values[2] + 0.5)


def _change_covariates(study):
    frame = study.frame.copy()
    frame["age"] = frame["age"][::-1].to_numpy()
    study.save_table(frame)


def _delete_output(study):
    (study.run_dir / "contrast-mean_stat-z_statmap.nii.gz").unlink()


@pytest.mark.parametrize("change, reason", [(_change_image, "the input image"), (_change_covariates, "the table"),
                                            (_delete_output, "the output contrast-mean_stat-z_statmap.nii.gz")],
                         ids=["image", "covariates", "deleted-output"])
def test_resume_reruns_when_inputs_or_outputs_changed(change, reason, study, caplog):
    analysis(study, "design.formula=age", "contrasts=[{name:mean,expr:Intercept}]")
    assert analysis(study, "design.formula=age", "contrasts=[{name:mean,expr:Intercept}]",
                    "resume=true").get("skipped") is True
    change(study)
    caplog.set_level("INFO", logger="runner")
    summary = analysis(study, "design.formula=age", "contrasts=[{name:mean,expr:Intercept}]", "resume=true")
    assert not summary.get("skipped")
    assert f"resume: re-running, because {reason}" in caplog.text
    assert f"resume: re-running, because {reason}" in (study.run_dir / "run.log").read_text()
    manifest = assert_record_matches_files(study.run_dir)
    assert set(manifest["input_files"]) == {"table"}


# -- Hydra's side effects -----------------------------------------------------------------------------------------
def test_a_refused_run_leaves_the_complete_runs_log_and_records_byte_identical(study, capsys, monkeypatch):
    code, _, err = run_cli_inprocess(study.overrides(), capsys, monkeypatch)
    assert code == 0, err
    assert "fitting OLS" in (study.run_dir / "run.log").read_text()
    before = snapshot(study.run_dir)
    code, _, err = run_cli_inprocess(study.overrides("correction=[fdr]"), capsys, monkeypatch)  # no overwrite
    assert code == 2 and "already holds a complete run of a different analysis" in one_error_line(err)
    assert snapshot(study.run_dir) == before
    assert not (study.run_dir / ".hydra").exists()


def test_the_memory_mapped_scratch_lives_in_the_staging_folder(study, monkeypatch):
    import runner.data.loader as loader

    folders = []
    original = loader.RowWriter.__init__

    def recording_init(self, shape, dtype, folder):
        folders.append(folder)
        original(self, shape, dtype, folder)

    monkeypatch.setattr(loader.RowWriter, "__init__", recording_init)
    analysis(study, "cache=false", "memory_budget_gb=0.0000001")
    assert folders and all(Path(f) == study.run_dir / STAGING for f in folders if f is not None)
    assert any(f is not None for f in folders)
    assert "memory-mapped" in (study.run_dir / "run.log").read_text()
    assert_record_matches_files(study.run_dir)


def test_the_report_names_the_run_folder_not_the_staging_folder(study):
    analysis(study, "report=true")
    page = (study.run_dir / "report.html").read_text()
    assert f"<code>{study.run_dir}</code>" in page and STAGING not in page
    assert_record_matches_files(study.run_dir)
