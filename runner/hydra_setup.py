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
    """Register each schema's defaults in Hydra's ConfigStore (idempotent): the dataclasses are their one source.

    Every option file extends its schema (``defaults: [/schema/<group>@_here_]``) and sets only what differs, and
    ``config.yaml`` extends ``schema/run`` for the top-level settings. The nodes are plain defaults, not typed
    structured configs: Hydra only composes, and :func:`runner.config.build_settings` is the one place that checks
    keys, types and ranges (for option files, command lines and every job of a sweep alike). Every method of the
    registry of inference methods is also an option of the ``correction`` group, so a method needs no YAML file.
    """
    from hydra.core.config_store import ConfigStore

    from runner.config import (DataConfig, DesignConfig, ExecutorConfig, ModelConfig, correction_schemas, run_defaults,
                               schema_defaults)

    store = ConfigStore.instance()
    store.store(group="schema", name="run", node=run_defaults())
    store.store(group="schema", name="data", node=schema_defaults(DataConfig))
    store.store(group="schema", name="design", node=schema_defaults(DesignConfig))
    store.store(group="schema", name="model", node=schema_defaults(ModelConfig))
    store.store(group="schema", name="executor", node=schema_defaults(ExecutorConfig))
    with_yaml = yaml_options("correction")
    for method, schema in correction_schemas().items():
        store.store(group="schema/correction", name=method, node={method: schema_defaults(schema)})
        if method not in with_yaml:  # the option itself, for a method without a YAML file in conf/correction
            store.store(group="correction", name=method, node={method: schema_defaults(schema)})


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
