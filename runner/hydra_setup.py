"""What Hydra needs before it composes anything: our OmegaConf resolver and the structured-config schemas."""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,@-]+")
MAX_DIRNAME = 120


def safe_dirname(overrides: str) -> str:
    """A run-directory name from Hydra's override string: readable, one path component, nothing a shell or a
    path could misread (no '/', '..', NUL, quotes, spaces or leading dots); long names end with a short hash."""
    text = str(overrides or "")
    cleaned = _UNSAFE.sub("-", text).replace("..", "-")
    cleaned = re.sub(r"-{2,}", "-", cleaned).strip("-.") or "default"
    if len(cleaned) > MAX_DIRNAME or cleaned != text:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        cleaned = f"{cleaned[:MAX_DIRNAME]}-{digest}" if cleaned != "default" else cleaned
    return cleaned


def register_schemas() -> None:
    """Register one schema per config-group option in Hydra's ConfigStore (idempotent).

    The YAML options extend these (``defaults: [/schema/<group>@_here_]``), so Hydra types every value and refuses keys the
    schema does not have; the ranges are checked afterwards by :func:`runner.config.build_settings`. Every method of
    the registry of inference methods is also an option of the ``correction`` group, so a method needs no YAML file.
    """
    from hydra.core.config_store import ConfigStore

    from runner.config import DataConfig, DesignConfig, ExecutorConfig, correction_schemas

    store = ConfigStore.instance()
    store.store(group="schema", name="data", node=DataConfig)
    store.store(group="schema", name="design", node=DesignConfig)
    store.store(group="schema", name="executor", node=ExecutorConfig)
    with_yaml = yaml_options("correction")
    for method, schema in correction_schemas().items():
        store.store(group="schema/correction", name=method, node={method: schema})
        if method not in with_yaml:  # the option itself, for a method without a YAML file in conf/correction
            store.store(group="correction", name=method, node={method: schema})


def yaml_options(group: str) -> set[str]:
    """Names of the YAML options of a config group shipped with the runner (source checkout or installed)."""
    from importlib import resources
    from pathlib import Path

    source = Path(__file__).resolve().parent.parent / "conf" / group
    if source.is_dir():
        return {p.stem for p in source.glob("*.yaml")}
    try:
        folder = resources.files("runner.conf").joinpath(group)
        return {Path(item.name).stem for item in folder.iterdir() if item.name.endswith(".yaml")}
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        return set()


def register() -> None:
    """Register ``${safe_dirname:...}`` and the schemas, once."""
    if not OmegaConf.has_resolver("safe_dirname"):
        OmegaConf.register_new_resolver("safe_dirname", safe_dirname)
    register_schemas()
