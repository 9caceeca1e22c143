"""A bad key, a bad type or an out-of-range value is refused with one line and exit code 2, before any data is read."""

from __future__ import annotations

import pytest

from conftest import CONF, run_cli
from runner.errors import RunnerError
from runner.hydra_setup import safe_dirname


@pytest.mark.parametrize("override, message", [
    ("data.smothing_fwhm=3", "unknown key data.smothing_fwhm — did you mean data.smoothing_fwhm?"),
    ("correction.fdr.alpha=5", "correction.fdr.alpha must be in (0, 1), got 5"),
    ("correction.fdr.alpha=abc", "correction.fdr.alpha must be a number, got 'abc'"),
    ("data.resample=maybe", "data.resample must be true or false, got 'maybe'"),
    ("correction.fdr.cluster_threshold=1.5", "correction.fdr.cluster_threshold must be an integer, got 1.5"),
    ("data=locaizer", "Could not find 'data/locaizer' (available: "
                      f"{', '.join(sorted(p.stem for p in (CONF / 'data').glob('*.yaml')))})"),
    ("correction=[fdr,fdrr]", "correction/fdrr"),
    ("sed=3", "unknown key sed — did you mean seed?"),
    ("n_jobs=0", "n_jobs must be >= 1, got 0"),
])
def test_bad_command_line_is_one_line_exit_2(tmp_path, override, message):
    run_dir = tmp_path / "run"
    result = run_cli([override, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {lines[0][len('error: '):]}"], result.stderr  # exactly one line
    assert message in lines[0]
    assert not run_dir.exists()  # refused before a run directory was made


def test_interpolation_works(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["+experiment=one_sample", "report=false", "correction=[fpr]", "data.smoothing_fwhm=4",
                      "seed=${data.smoothing_fwhm}", "seed=4", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("hostile", ["../../etc/x", "a/b", "$(rm -rf ~)", "x;echo hi", "..", "a\x00b", "`id`",
                                     "  ", "name with spaces", "ü" * 300])
def test_run_directory_names_stay_single_safe_components(hostile):
    name = safe_dirname(hostile)
    assert name and "/" not in name and ".." not in name and "\x00" not in name
    assert not name.startswith(".") and len(name) <= 130
    assert all(c.isalnum() or c in "._+=,@-" for c in name)


def test_hostile_override_values_stay_inside_experiments(tmp_path):
    result = run_cli(["name=../../escape", "data.query='age > 0 or age <= 0'", "seed=1", "report=false",
                      "correction=[fpr]"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifests = list(tmp_path.rglob("manifest.json"))
    assert len(manifests) == 1
    assert (tmp_path / "experiments") in manifests[0].parents
    assert not (tmp_path.parent / "escape").exists()


def test_user_config_dir_with_own_experiment(tmp_path):
    own = tmp_path / "my_confs" / "experiment"
    own.mkdir(parents=True)
    (own / "my_analysis.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /correction: [bonferroni]\nname: mine\n"
        "contrasts:\n  - {name: mean, expr: Intercept}\n")
    result = run_cli(["--config-dir", str(tmp_path / "my_confs"), "+experiment=my_analysis", "report=false"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "experiments" / "mine").rglob("contrast-mean_stat-z_desc-bonferroni_statmap.nii.gz"))


@pytest.mark.parametrize("argv, message", [
    ("correction=[fpr] correction.fdr.alpha=0.1",
     "correction.fdr.alpha: fdr is not among the chosen corrections; choose it too: correction=[fpr,fdr]"),
    ("+seed=3", "seed is already set: write seed=3 to change it"),
    ("~sedd", "cannot delete sedd: the config has no such key"),
    ("seed=${nope}", "seed: Interpolation key 'nope' not found"),
    ("-m data.smoothing_fwhm=0,6,abc", "data.smoothing_fwhm must be a number, got 'abc'"),  # a later sweep value
    ("-m correction=fdr,bonf", "Could not find 'correction/bonf'"),
    ("-m seed=1,2 correction.fdr.alpha=0.1,7", "correction.fdr.alpha must be in (0, 1), got 7"),
])
def test_prevalidation_refuses_in_one_line(argv, message):
    """As the CLI does before Hydra runs (the printing and exit code are tested above)."""
    from runner.prevalidate import prevalidate

    with pytest.raises(RunnerError) as refused:
        prevalidate(argv.split(" "), str(CONF))
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_option_file_typo_is_named_with_the_closest_key(tmp_path):
    """A mistake in the user's own YAML goes through the same validation as the command line."""
    from runner.prevalidate import prevalidate

    own = tmp_path / "my_confs" / "experiment"
    own.mkdir(parents=True)
    (own / "typo.yaml").write_text("# @package _global_\ndata:\n  smothing_fwhm: 3\n")
    with pytest.raises(RunnerError) as refused:
        prevalidate(["--config-dir", str(tmp_path / "my_confs"), "+experiment=typo"], str(CONF))
    assert str(refused.value) == "unknown key data.smothing_fwhm — did you mean data.smoothing_fwhm?"


def test_flags_that_show_instead_of_running_are_left_to_hydra(tmp_path):
    from runner.prevalidate import prevalidate

    for argv in (["--help"], ["--cfg", "job", "sed=3"], ["--info"], ["-i", "defaults"], ["--hydra-help"]):
        assert prevalidate(argv, str(CONF)) is None, argv
    assert prevalidate(["--config-name", "config", "-m", "seed=1,2"], str(CONF)).seed == 1
    with pytest.raises(RunnerError, match="did you mean seed"):
        prevalidate(["-m", "sed=1,2"], str(CONF))


@pytest.mark.parametrize("value, expected", [("exact", "exact"), ("0.1", 0.1), ("null", None)])
def test_tfce_step_accepts_numbers_null_and_exact(value, expected):
    from conftest import compose
    from runner.config import build_settings

    settings = build_settings(compose(["correction=[tfce]", f"correction.tfce.dh={value}"]))
    assert settings.correction["tfce"].dh == expected


@pytest.mark.parametrize("value", ["-1", "exactly", "true"])
def test_tfce_step_refuses_other_values(tmp_path, value):
    result = run_cli(["correction=[tfce]", f"correction.tfce.dh={value}", f"hydra.run.dir={tmp_path / 'r'}"],
                     cwd=tmp_path)
    assert result.returncode == 2
    assert "correction.tfce.dh must be a positive number, null (max/100) or exact" in result.stderr


@pytest.mark.parametrize("words, message", [
    # bash splits an unquoted design.formula=age + C(sex) into three words
    (["design.formula=age", "+", "C(sex)"], "the shell split 'design.formula=age + C(sex)' into 3 words at its "
                                            "spaces; quote the whole override: \"design.formula='age + C(sex)'\""),
    # design.formula='age + C(sex)' in bash reaches us without its quotes: Hydra cannot parse the parentheses
    (["design.formula=age + C(sex)"], "quote the value for Hydra and the whole override for the shell: "
                                      "\"design.formula='age + C(sex)'\""),
    (["data.query=group", "==", "'patient'"], "quote the whole override: "
                                              "\"data.query=\\\"group == 'patient'\\\"\""),
])
def test_an_override_cut_by_the_shell_says_how_to_quote_it(tmp_path, words, message):
    run_dir = tmp_path / "run"
    result = run_cli([*words, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not run_dir.exists()


def test_the_suggested_quoting_composes_to_the_intended_formula():
    import shlex

    from conftest import CONF
    from runner.prevalidate import prevalidate

    typed = "\"design.formula='age + C(sex)'\" data=table data.table=t.tsv"  # as printed in the message
    settings = prevalidate(shlex.split(typed), str(CONF))  # shlex splits as bash does
    assert settings.design.formula == "age + C(sex)"
    typed = "\"data.query=\\\"group == 'patient'\\\"\" data=table data.table=t.tsv"
    assert prevalidate(shlex.split(typed), str(CONF)).data.query == "group == 'patient'"
