"""Hydra entry point: build the settings, run, and turn user errors into one line and exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from runner.errors import EXIT_USER_ERROR, RunnerError
from runner.hydra_setup import register
from runner.signals import Interrupted


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
    from runner.outputs.writer import storage_errors

    from runner.selection import drop_unchosen_corrections

    run_dir, multirun = _run_dir_and_mode()
    overrides = list(HydraConfig.get().overrides.task)
    try:
        try:
            drop_unchosen_corrections(cfg, overrides)  # a preset's method the command line left out
            settings = build_settings(cfg)
        except RunnerError as error:
            app.record_failure(run_dir, str(error), overrides)  # only where the folder policy allows it
            raise
        resolved = recorded_config(settings, OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        with storage_errors():  # a full disk, a file-size limit, a read-only folder: one line, not a traceback
            summary = app.run(settings, run_dir, resolved_config=resolved,  # type: ignore[arg-type]
                              overrides=overrides)
        print(f"results: {run_dir}")
        return summary
    except RunnerError as error:  # run.log (when the run was allowed to write one) has the line already
        print(f"error: {error}", file=sys.stderr)
        if multirun:
            return {"run_dir": str(run_dir), "status": "failed", "error": str(error)}
        sys.exit(EXIT_USER_ERROR)
    except Interrupted as stop:  # the attempt is settled (a complete run kept); stop the whole sweep too
        print(f"error: {stop}; the run into {run_dir} did not complete (re-run to redo it)", file=sys.stderr)
        sys.exit(stop.exit_code)
    except Exception as error:  # a bug: in a sweep, keep its traceback in run.log and let the other jobs run
        if not multirun:
            raise
        message = f"internal error (a bug; the traceback is in run.log): {type(error).__name__}: {error}"
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return {"run_dir": str(run_dir), "status": "crashed", "error": " ".join(message.split())}


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> Any:
    return task(cfg)


def main() -> None:
    """Console entry point (``python -m runner``): refuse a bad command line in one line, then hand over to Hydra."""
    from runner.prevalidate import prevalidate, show_job_config

    try:
        prevalidate(sys.argv[1:], CONFIG_PATH)
        shown = show_job_config(sys.argv[1:], CONFIG_PATH)
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    if shown is not None:  # --cfg job of a command line that chooses its methods: the config the run would use
        print(shown, end="")
        return
    from runner import sweeps

    sweeps.last_sweep_statuses = None  # set by this command's sweep summary, if it runs a sweep
    _hydra_main()
    code = sweeps.sweep_exit_code(sweeps.last_sweep_statuses)  # a sweep with a failed job must not exit 0
    sweeps.last_sweep_statuses = None
    if code:
        sys.exit(code)
