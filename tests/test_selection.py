"""A preset's settings of a method the command line leaves out must not make that method run
(``+experiment=palm_contrasts correction=[maxt]`` is max-T alone), in the run, its record and the pre-run check."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import CONF, compose, run_cli
from runner.config import build_settings
from runner.prevalidate import prevalidate
from runner.selection import chosen_corrections, drop_unchosen_corrections


@pytest.mark.parametrize(("overrides", "chosen"), [
    (["correction=[maxt,fdr]"], ["maxt", "fdr"]),
    (["correction=maxt"], ["maxt"]),
    (["correction=[]"], []),
    (["correction=fdr,tfce"], None),  # a sweep: each job gets its own single choice
    (["correction.maxt.alpha=0.1"], None),
    (["+experiment=palm_contrasts"], None),
])
def test_the_command_line_choice_is_read_as_hydra_parses_it(overrides, chosen):
    assert chosen_corrections(overrides) == chosen


def test_a_preset_keeps_its_methods_unless_the_command_line_chooses_others():
    preset = ["+experiment=palm_contrasts"]
    assert list(build_settings(compose(preset)).correction) == ["maxt", "npc"]
    overrides = preset + ["correction=[maxt]"]
    config = compose(overrides)
    assert "npc" in config.correction  # what Hydra composes: the preset's body brings npc back
    assert drop_unchosen_corrections(config, overrides) == ["npc"]
    settings = build_settings(config)
    assert list(settings.correction) == ["maxt"]
    assert settings.correction["maxt"].n_permutations == 500  # the preset's settings of a chosen method stay
    assert list(prevalidate(overrides, str(CONF)).correction) == ["maxt"]  # the check before the run agrees
    swept = prevalidate(["-m", "+experiment=one_sample_permutation", "correction=fdr,maxt"], str(CONF))
    assert list(swept.correction) == ["fdr"]  # the first job of the sweep


@pytest.mark.slow
def test_a_run_records_and_runs_only_the_chosen_methods(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["+experiment=one_sample_permutation", "correction=[bonferroni]", "report=false",
                      f"hydra.run.dir={run_dir}", f"output_root={tmp_path / 'out'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "correction maxt: the preset's settings are not used" in result.stderr + result.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {entry.get("correction") for entry in manifest["outputs"]} <= {None, "bonferroni"}
    assert list(yaml.safe_load((run_dir / "config.yaml").read_text())["correction"]) == ["bonferroni"]
    assert not list(run_dir.glob("*desc-maxt*"))


def test_cfg_job_shows_the_config_the_run_will_use(tmp_path):
    """``--cfg job`` with a preset and ``correction=[maxt]``: Hydra's own printing of the job config (taken here with
    ``--package _global_``, which the runner leaves to Hydra), less the preset's npc entry; the same YAML text
    otherwise. Without a choice of methods Hydra prints it, unchanged."""
    chosen = ["+experiment=palm_contrasts", "correction=[maxt]", "correction.maxt.alpha=0.01"]
    ours = run_cli([*chosen, "--cfg", "job"], cwd=tmp_path)
    hydras = run_cli([*chosen, "--cfg", "job", "--package", "_global_"], cwd=tmp_path)
    assert ours.returncode == 0 and hydras.returncode == 0, ours.stderr + hydras.stderr
    expected = yaml.safe_load(hydras.stdout)
    assert "npc" in expected["correction"]  # Hydra merges the preset's body whatever the choice
    del expected["correction"]["npc"]
    shown = yaml.safe_load(ours.stdout)
    assert shown == expected and shown["correction"]["maxt"]["alpha"] == 0.01
    lines, skipping = [], False  # Hydra's text without the npc block: the same text otherwise
    for line in hydras.stdout.splitlines(keepends=True):
        skipping = line.startswith("  npc:") or (skipping and line.startswith("    "))
        if not skipping:
            lines.append(line)
    assert ours.stdout == "".join(lines)
    plain = run_cli(["+experiment=palm_contrasts", "--cfg", "job"], cwd=tmp_path)
    assert "npc" in yaml.safe_load(plain.stdout)["correction"]  # the preset's own choice keeps npc
