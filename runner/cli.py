"""Hydra entry point: build the settings, run, and turn user errors into one line and exit code 2."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from runner.errors import EXIT_USER_ERROR, RunnerError
from runner.hydra_setup import register
from runner.signals import Interrupted

log = logging.getLogger("runner")

_SOURCE_CONF = Path(__file__).resolve().parent.parent / "conf"
# A source checkout reads conf/ at the top of the repository; an installed package carries it as runner.conf.
CONFIG_PATH = str(_SOURCE_CONF) if (_SOURCE_CONF / "config.yaml").is_file() else "pkg://runner.conf"

register()


def _run_dir_and_mode() -> tuple[Path, bool]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    config = HydraConfig.get()
    return Path(config.runtime.output_dir), config.mode == RunMode.MULTIRUN


def task(cfg: DictConfig) -> dict[str, Any]:
    """One Hydra job: validate, run, report. Returns the run summary (Hydra keeps it for callbacks)."""
    from hydra.core.hydra_config import HydraConfig

    from runner import app
    from runner.config import build_settings, recorded_config

    run_dir, multirun = _run_dir_and_mode()
    overrides = list(HydraConfig.get().overrides.task)
    try:
        settings = build_settings(cfg)
        resolved = recorded_config(settings, OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        summary = app.run(settings, run_dir, resolved_config=resolved, overrides=overrides)  # type: ignore[arg-type]
        print(f"results: {run_dir}")
        return summary
    except RunnerError as error:
        message = f"error: {error}"
        log.error(message)
        print(message, file=sys.stderr)
        _record_failure(run_dir, str(error), overrides)
        if multirun:
            return {"run_dir": str(run_dir), "status": "failed", "error": str(error)}
        sys.exit(EXIT_USER_ERROR)
    except Interrupted as stop:  # the manifest already says "interrupted"; stop the whole sweep too
        message = f"error: {stop}; the run in {run_dir} is incomplete (re-run to redo it)"
        log.error(message)
        print(message, file=sys.stderr)
        sys.exit(stop.exit_code)


def _record_failure(run_dir: Path, error: str, overrides: list[str]) -> None:
    """Leave a failed manifest for errors raised before the run started (never over a complete run)."""
    from runner.outputs.manifest import read_manifest
    from runner.outputs.writer import OutputWriter

    previous = read_manifest(run_dir)
    if previous is None or previous.get("status") not in ("complete", "failed"):
        OutputWriter(run_dir).finalize("failed", error=error, overrides=overrides)


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> Any:
    return task(cfg)


def main() -> None:
    """Console entry point (``python -m runner``): refuse a bad command line in one line, then hand over to Hydra."""
    from runner.prevalidate import prevalidate

    try:
        prevalidate(sys.argv[1:], CONFIG_PATH)
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    _hydra_main()
