"""The commands of README.md's and docs/errors.md's bash blocks, run through ``bash -c`` exactly as printed.

They run one after another (later ones use what earlier ones made, as for a reader going down the page) in a copy of
the repository, with only the python executable substituted: a ``python`` first on PATH that runs this test
session's interpreter. Commands that cannot run here are listed below with the reason and checked another way;
deliberately failing examples must fail with the message printed in their comment.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

DOCUMENTS = ("README.md", "docs/errors.md")

# Commands not run, with the reason and the check made instead (keys: a fragment that picks out one command).
NOT_RUN = {
    "make run": "creates .venv and installs the package; checked as a dry run (make -n)",
    "make test": "runs this very suite; checked as a dry run (make -n)",
    "source .venv/bin/activate": "the test provides the environment; checked: the Makefile's venv is .venv",
}
COMPOSE_ONLY = {
    "hydra/launcher=slurm_example": "needs a SLURM cluster; its overrides are composed (each sweep at its first "
                                    "value, as the runner checks a command line) and the launcher must be SLURM's",
}
COMPOSE_EXECUTOR = {  # need a Dask scheduler or a batch system: composed, the settings must select Dask
    "executor.address=tcp://10.0.0.5:8786": "needs a running Dask scheduler",
    "executor=slurm_example": "needs a SLURM cluster",
}
FAILING = {  # deliberately failing examples: exit code 2 and the one-line message their comment shows
    "data.smothing_fwhm=3": "a typo in a key",
    "design.formula=age + fluency": "an override the shell splits at its spaces",
}


def documented_commands(document: str) -> list[str]:
    """Every command of the document's bash blocks, exactly as printed (continuation lines kept as they are)."""
    text = (REPO / document).read_text(encoding="utf-8")
    commands: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        pending: list[str] = []
        for line in block.splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue  # a comment line (e.g. what a command prints), not a command
            pending.append(line)
            if not line.rstrip().endswith("\\"):
                commands.append("\n".join(pending))
                pending = []
    return commands


def _listed(command: str, table: dict[str, str]) -> str | None:
    keys = [key for key in table if key in command.split("#")[0]]
    return keys[0] if keys else None


def test_every_listed_exception_names_exactly_one_documented_command():
    commands = [c for d in DOCUMENTS for c in documented_commands(d)]
    assert len(commands) >= 15
    for table in (NOT_RUN, COMPOSE_ONLY, COMPOSE_EXECUTOR, FAILING):
        for key in table:
            assert sum(key in c.split("#")[0] for c in commands) == 1, key
    assert all(c.startswith(("python ", "make ", "source ", "mkdir ")) for c in commands), commands


@pytest.fixture
def repository_copy(tmp_path) -> tuple[Path, dict[str, str]]:
    """A copy of the repository (without outputs) and the environment: ``python`` first on PATH."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", ".venv", "experiments", "__pycache__", "out",
                                                              "study", "my_confs", "*.egg-info", ".pytest_cache"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "python"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH="{copy}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {key: value for key, value in os.environ.items() if not key.startswith("HYDRA_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return copy, env


def _bash(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_documented_commands_work_when_pasted_into_bash(repository_copy):
    copy, env = repository_copy
    failures = []
    for document in DOCUMENTS:
        for command in documented_commands(document):
            started = time.monotonic()
            problem = _check(command, copy, env)
            print(f"{time.monotonic() - started:6.1f} s  {command.splitlines()[0][:90]}")  # shown with pytest -s
            if problem:
                failures.append(f"{document}: {command!r}: {problem}")
    assert not failures, "\n".join(failures)


def _check(command: str, copy: Path, env: dict[str, str]) -> str | None:
    """Run (or check) one command; a description of what went wrong, or None."""
    if (key := _listed(command, NOT_RUN)) is not None:
        if key.startswith("make "):
            result = _bash(f"make -n {key.split()[1]}", copy, env)
            return None if result.returncode == 0 and "python" in result.stdout else f"make -n: {result.stderr}"
        makefile = (copy / "Makefile").read_text()
        return None if re.search(r"^VENV\s*\?=\s*\.venv\s*$", makefile, flags=re.M) else "the venv is not .venv"
    if _listed(command, COMPOSE_ONLY) is not None:
        return _compose_sweep(command)
    if _listed(command, COMPOSE_EXECUTOR) is not None:
        return _compose_executor(command)
    result = _bash(command, copy, env)
    if _listed(command, FAILING) is not None:
        expected = command.split("# ", 1)[1].strip()
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        if result.returncode != 2 or lines != [expected]:
            return f"expected exit 2 and {expected!r}, got {result.returncode}: {result.stderr[-2000:]}"
        return None
    if result.returncode != 0 or "Traceback" in result.stderr:
        return f"exit {result.returncode}: {result.stderr[-3000:]}"
    return None


def _compose_executor(command: str) -> str | None:
    """Build a single run's settings from its command line; its executor must be Dask."""
    import shlex

    from conftest import CONF
    from runner.prevalidate import prevalidate

    words = shlex.split(command, comments=True)
    assert words[:3] == ["python", "-m", "runner"], words
    settings = prevalidate(words[3:], str(CONF))
    return None if settings is not None and settings.executor.engine == "dask" else "the executor is not Dask"


def _compose_sweep(command: str) -> str | None:
    """Compose a sweep's command line as its first job would see it; the launcher must be the SLURM one."""
    import shlex

    from hydra import compose, initialize_config_dir

    from conftest import CONF
    from runner.hydra_setup import register
    from runner.prevalidate import sweep_variants

    words = shlex.split(command, comments=True)
    assert words[:4] == ["python", "-m", "runner", "-m"], words
    overrides = sweep_variants(words[4:])[0]  # the first job's command line
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    target = str(cfg.hydra.launcher._target_)
    return None if target.endswith("SlurmLauncher") else f"the launcher is {target}"
