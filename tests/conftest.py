"""Shared fixtures: the real Hydra config composed with overrides, demo data cached once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"


@pytest.fixture(scope="session", autouse=True)
def demo_cache(tmp_path_factory, worker_id) -> Path:
    """Demo datasets are generated once per test session into a private cache (never the user's).

    The pytest-xdist workers of one session share it (the parent of their base temporary folders); ``ensure_demo``
    generates under a lock, so each dataset is made once, not once per worker.
    """
    if os.environ.get("RUNNER_TEST_DEMO_DIR"):
        root = Path(os.environ["RUNNER_TEST_DEMO_DIR"])
    elif worker_id == "master":
        root = tmp_path_factory.mktemp("demo-cache")
    else:
        root = tmp_path_factory.getbasetemp().parent / "shared-demo-cache"
        root.mkdir(exist_ok=True)
    os.environ["RUNNER_DEMO_DIR"] = str(root)
    os.environ["RUNNER_TEST_DATA_CACHE"] = str(tmp_path_factory.mktemp("data-cache"))
    return root


def compose(overrides: list[str] | None = None):
    """The composed config (as Hydra would build it for the command line) with ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from runner.hydra_setup import register

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def run_analysis(run_dir: Path, overrides: list[str] | None = None) -> dict:
    """Run one analysis in-process into ``run_dir`` and return its summary."""
    from omegaconf import OmegaConf

    from runner import app
    from runner.config import build_settings
    from runner.selection import drop_unchosen_corrections

    overrides = list(overrides or [])
    if not any(o.startswith("cache_dir=") for o in overrides) and os.environ.get("RUNNER_TEST_DATA_CACHE"):
        overrides.append(f"cache_dir={os.environ['RUNNER_TEST_DATA_CACHE']}")  # never the repository's experiments/
    cfg = compose(overrides)
    drop_unchosen_corrections(cfg, overrides)  # as runner.cli does before building the settings
    settings = build_settings(cfg)
    return app.run(settings, run_dir, resolved_config=OmegaConf.to_container(cfg, resolve=True),
                   overrides=list(overrides or []))


def run_cli(args: list[str], cwd: Path, timeout: float = 300, preexec_fn=None) -> subprocess.CompletedProcess:
    """``python -m runner <args>`` in a subprocess (as a user types it); ``preexec_fn`` runs in the child first
    (e.g. to set a resource limit)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec_fn)


# Test files that take longest (measured with --durations), longest first. `make test` hands whole files to two
# workers in collection order (--dist loadfile --no-loadscope-reorder); starting the long ones first lets both
# workers finish together instead of one core idling while the other runs a long file last.
LONGEST_FIRST = (
    "test_readme.py", "test_error_catalogue.py", "test_sweeps.py", "test_config_validation.py", "test_app.py",
    "test_verify.py", "test_surface.py", "test_kill.py", "test_rundir.py", "test_dask_executor.py", "test_demo.py",
    "test_report.py", "test_bids.py", "test_fuzz.py", "test_rft_method.py", "test_tfce.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    """Order the collected tests so that the longest files come first (a stable sort keeps the rest as collected)."""
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
