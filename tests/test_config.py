"""Config defaults have one source, the dataclass schemas in runner/config.py: the YAML files under conf/ set only what
differs from them, and what Hydra composes equals the schema defaults overlaid by the option files, read here as
plain YAML (an independent merge, not Hydra's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import CONF, compose
from runner.config import (GROUPS, DataConfig, DesignConfig, ExecutorConfig, ModelConfig, build_settings,
                           correction_schemas, run_defaults, schema_defaults)

GROUP_SCHEMAS = {"data": DataConfig, "design": DesignConfig, "model": ModelConfig, "executor": ExecutorConfig}


def _load(path: Path) -> dict[str, Any]:
    content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    content.pop("defaults", None)
    return content


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same kind (True is not 1, 6 is 6.0)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def restated_defaults(values: dict[str, Any], baseline: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys of ``values`` whose value equals what ``baseline`` already gives (nested mappings compared key by key)."""
    found = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in baseline:
            continue
        if isinstance(value, dict) and isinstance(baseline[key], dict):
            found += restated_defaults(value, baseline[key], name + ".")
        elif _same(value, baseline[key]):
            found.append(name)
    return found


def _group_baseline(group: str, option: str | None = None) -> dict[str, Any]:
    """Schema defaults of a group, overlaid by one of its option files when given."""
    if group == "correction":
        return {m: schema_defaults(s) for m, s in correction_schemas().items()}
    base = schema_defaults(GROUP_SCHEMAS[group])
    if option:
        base.update(_load(CONF / group / f"{option}.yaml"))
    return base


def _option_files() -> list[tuple[str, Path]]:
    return [(group, path) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


def _presets() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _chosen_options(path: Path) -> dict[str, Any]:
    """group -> option(s) from the ``defaults:`` list of the primary config or of an experiment preset."""
    chosen = {}
    for entry in yaml.safe_load(path.read_text(encoding="utf-8")).get("defaults", []):
        if isinstance(entry, dict):
            ((key, value),) = entry.items()
            group = key.replace("override", "").strip().strip("/")
            if group in GROUPS:
                chosen[group] = value
    return chosen


# -- the checker itself can fail ----------------------------------------------------------------------------------
def test_restated_defaults_flags_a_value_equal_to_the_schema_and_nothing_else():
    baseline = _group_baseline("correction")
    planted = {"fdr": {"alpha": 0.05, "two_sided": False, "cluster_threshold": 0},
               "tfce": {"E": 0.5, "H": 3.0, "dh": None}, "ari": {"thresholds": [3.0]}}
    assert sorted(restated_defaults(planted, baseline)) == ["ari.thresholds", "fdr.alpha", "fdr.cluster_threshold",
                                                            "tfce.E", "tfce.dh"]
    assert restated_defaults({"resample": 1}, schema_defaults(DataConfig)) == []  # 1 is not true


# -- no YAML restates a default -----------------------------------------------------------------------------------
@pytest.mark.parametrize("group, path", _option_files(), ids=lambda v: getattr(v, "stem", v))
def test_option_files_set_only_what_differs_from_the_schema(group, path):
    assert restated_defaults(_load(path), _group_baseline(group)) == []


def test_primary_config_sets_only_what_differs_from_the_schema():
    values = {k: v for k, v in _load(CONF / "config.yaml").items() if k != "hydra"}
    assert set(values) <= set(run_defaults()), "config.yaml sets a key the schema does not have"
    assert restated_defaults(values, run_defaults()) == []


@pytest.mark.parametrize("preset", _presets())
def test_presets_set_only_what_differs_from_the_options_they_choose(preset):
    path = CONF / "experiment" / f"{preset}.yaml"
    chosen = _chosen_options(path)
    baseline: dict[str, Any] = dict(run_defaults())  # not config.yaml's own analysis: a preset names its contrasts
    for group in GROUPS:
        option = chosen.get(group)
        baseline[group] = _group_baseline(group, option if isinstance(option, str) else None)
    assert restated_defaults(_load(path), baseline) == []


# -- what Hydra composes is the schema defaults overlaid by the YAML ----------------------------------------------
def test_default_config_composes_onto_the_run_schema():
    config = compose()
    expected = dict(run_defaults())
    expected.update({k: v for k, v in _load(CONF / "config.yaml").items() if k != "hydra"})
    composed = {k: v for k, v in yaml.safe_load(_yaml(config)).items() if k not in GROUPS}
    assert composed == expected
    assert list(composed) == list(expected)  # the recorded config.yaml keeps the schema's order


@pytest.mark.parametrize("group, path", _option_files(), ids=lambda v: getattr(v, "stem", v))
def test_every_option_composes_onto_its_schema_defaults(group, path):
    if group == "correction":
        if path.stem == "none":
            assert yaml.safe_load(_yaml(compose(["correction=none"])))["correction"] in (None, {})
            return
        composed = yaml.safe_load(_yaml(compose([f"correction=[{path.stem}]"])))["correction"]
        expected = {path.stem: {**schema_defaults(correction_schemas()[path.stem]),
                                **_load(path).get(path.stem, {})}}
    else:
        composed = yaml.safe_load(_yaml(compose([f"{group}={path.stem}"])))[group]
        expected = _group_baseline(group, path.stem)
    assert composed == expected
    assert list(composed) == list(expected)


@pytest.mark.parametrize("preset", _presets())
def test_every_preset_composes_to_valid_settings_equal_to_the_yaml_merge(preset):
    path = CONF / "experiment" / f"{preset}.yaml"
    settings = build_settings(compose([f"+experiment={preset}"]))
    own = _load(path)
    chosen = _chosen_options(path)
    for group in ("data", "design"):
        expected = {**_group_baseline(group, chosen[group]), **own.get(group, {})}
        actual = vars(getattr(settings, group))
        assert all(actual[k] == v for k, v in expected.items()), (group, actual, expected)
    methods = chosen["correction"] if isinstance(chosen["correction"], list) else [chosen["correction"]]
    assert list(settings.correction) == methods
    for method in methods:
        expected = {**schema_defaults(correction_schemas()[method]), **own.get("correction", {}).get(method, {})}
        actual = vars(settings.correction[method])
        assert all(actual[k] == v for k, v in expected.items()), (method, actual, expected)
    assert settings.name == own["name"]
    assert [c.name for c in settings.contrasts] == [c["name"] for c in own["contrasts"]]


def _yaml(config: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(config, resolve=True)
