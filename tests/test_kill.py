"""A run killed mid-fit never looks complete, and a re-run into the same folder cleans what it left.

A run works in the run folder's staging folder (``runner.rundir``), so its live log is ``.runner-staging/run.log``.

The run is a real ``python -m runner`` subprocess whose OLS fit is slowed down (the test wraps ``runner.glm.ols_fit``
before handing over to the CLI), so the signal reliably lands in the middle of the fit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from runner.rundir import LOG_NAME, OWN_NAMES, STAGING_NAME
from test_bad_inputs import manifest_status, run_cli_inprocess, study  # noqa: F401  (study is a fixture)

SLOW_FIT = """
import sys, time
import runner.glm as glm
original = glm.ols_fit
seconds = float(sys.argv[1])
def slow_ols_fit(*args, **kwargs):
    time.sleep(seconds)
    return original(*args, **kwargs)
glm.ols_fit = slow_ols_fit
from runner.cli import main
sys.argv = ["runner", *sys.argv[2:]]
main()
"""
RUNNER_FILES = {LOG_NAME, *OWN_NAMES}  # the run's log (not listed in the manifest), its lock and its journal


def start_slow_run(args: list[str], cwd: Path, seconds_per_chunk: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", SLOW_FIT, str(seconds_per_chunk), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_fit(process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and "fitting OLS" in log.read_text():
            time.sleep(0.2)  # well inside the (slowed) fit
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before fitting: {process.communicate()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the run never started fitting")


def outputs_not_in_manifest(run_dir: Path) -> set[str]:
    listed = {entry["path"] for entry in json.loads((run_dir / "manifest.json").read_text())["outputs"]}
    present = {p.name for p in run_dir.iterdir() if p.is_file()}
    return present - listed - RUNNER_FILES - {"manifest.json"}


def live_log(run_dir: Path) -> Path:
    return run_dir / STAGING_NAME / LOG_NAME


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_sigterm_mid_fit_leaves_an_interrupted_manifest_and_a_rerun_cleans_up(n_jobs, study, capsys, monkeypatch):
    # n_jobs=1: the signal interrupts the sleeping fit at once; n_jobs=2: the main thread stops waiting at once, and the
    # worker finishes its chunk (1.5 s here) before the run cleans up.
    process = start_slow_run(study.overrides(f"n_jobs={n_jobs}", "cache=false"), study.root,
                             30.0 if n_jobs == 1 else 1.5)
    wait_for_fit(process, live_log(study.run_dir))
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: interrupted by SIGTERM"), stderr
    manifest = json.loads((study.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["error"] == "interrupted by SIGTERM"
    assert not list(study.run_dir.rglob(".tmp-*"))
    assert {"config.yaml", "design_matrix.tsv"} <= {entry["path"] for entry in manifest["outputs"]}
    assert not any("statmap" in entry["path"] for entry in manifest["outputs"])

    code, _, err = run_cli_inprocess(study.overrides(f"n_jobs={n_jobs}", "cache=false"), capsys, monkeypatch)
    assert code == 0, err
    assert manifest_status(study.run_dir) == "complete"
    assert not list(study.run_dir.rglob(".tmp-*")) and outputs_not_in_manifest(study.run_dir) == set()


def test_sigkill_mid_fit_leaves_no_complete_manifest_and_a_rerun_removes_unlisted_outputs(study, capsys,
                                                                                         monkeypatch):
    """SIGKILL cannot be caught: the run folder has no manifest (the attempt's "running" one is in the staging
    folder), and the journal names the staging folder, so the re-run removes it with everything the killed run
    wrote (here the design figure, which the re-run does not make)."""
    process = start_slow_run(study.overrides("n_jobs=1", "cache=false", "report=true"), study.root, 30.0)
    wait_for_fit(process, live_log(study.run_dir))
    process.kill()
    process.communicate(timeout=30)
    assert manifest_status(study.run_dir) is None
    assert manifest_status(study.run_dir / STAGING_NAME) == "running"
    assert (study.run_dir / STAGING_NAME / "design_matrix.png").is_file()

    code, _, err = run_cli_inprocess(study.overrides("n_jobs=1", "cache=false"), capsys, monkeypatch)
    assert code == 0, err
    assert manifest_status(study.run_dir) == "complete"
    assert not (study.run_dir / "design_matrix.png").exists() and not (study.run_dir / STAGING_NAME).exists()
    assert not list(study.run_dir.rglob(".tmp-*")) and outputs_not_in_manifest(study.run_dir) == set()


def test_sigint_in_process_raises_keyboard_interrupt_after_marking_the_run(study, monkeypatch):
    """Ctrl-C in an interactive session: the manifest says interrupted and KeyboardInterrupt reaches the caller."""
    import runner.glm as glm
    from conftest import run_analysis

    from runner.signals import Interrupted

    def interrupted_fit(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        raise AssertionError("the signal did not interrupt the fit")

    monkeypatch.setattr(glm, "ols_fit", interrupted_fit)
    overrides = [o for o in study.overrides("cache=false") if not o.startswith("hydra.")]
    with pytest.raises(KeyboardInterrupt) as caught:
        run_analysis(study.run_dir, overrides)
    assert isinstance(caught.value, Interrupted) and caught.value.exit_code == 130
    assert manifest_status(study.run_dir) == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
