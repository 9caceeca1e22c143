"""data=bids: a BIDS derivatives tree (built here from the demo localizer maps) read through pybids.

The tree is written by hand with names as fitlins and nilearn's ``save_glm_to_bids`` write them, plus distractors
(another contrast, a t map, another space for one subject) that the entities must leave out. The equivalent table is
written independently from the demo's own table, so the comparison checks the reader, not itself.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_analysis, run_cli
from runner.data.bids import from_bids
from runner.errors import RunnerError

SPACE = "MNI152NLin2009aSym"
ENTITIES = {"task": "localizer", "contrast": "language"}
N_SUBJECTS = 12  # fewer than the demo's 30 keeps the runs short


def _demo_table() -> tuple[Path, pd.DataFrame]:
    from runner.demo.datasets import ensure_demo

    table_path = ensure_demo("localizer")
    return table_path.parent, pd.read_csv(table_path, sep="\t").head(N_SUBJECTS)


def _stem(subject: str, contrast: str = "language", space: str = SPACE) -> str:
    return f"{subject}/{subject}_task-localizer_space-{space}_contrast-{contrast}"


@pytest.fixture(scope="module")
def bids_tree(tmp_path_factory) -> tuple[Path, Path]:
    """(derivatives root, the equivalent table) for the first subjects of the demo localizer."""
    source, demo = _demo_table()
    root = tmp_path_factory.mktemp("derivatives") / "first_level"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "first level", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "tests"}]}))
    rows = []
    for _, row in demo.iterrows():
        subject = row["subject"]
        (root / subject).mkdir()
        effect = root / f"{_stem(subject)}_stat-effect_statmap.nii.gz"
        variance = root / f"{_stem(subject)}_stat-variance_statmap.nii.gz"
        shutil.copyfile(source / row["path"], effect)
        shutil.copyfile(source / row["variance_path"], variance)
        # distractors: another contrast and a t map of this one
        shutil.copyfile(source / row["path"], root / f"{_stem(subject, contrast='other')}_stat-effect_statmap.nii.gz")
        shutil.copyfile(source / row["path"], root / f"{_stem(subject)}_stat-t_statmap.nii.gz")
        rows.append({"participant_id": subject, "path": str(effect), "variance_path": str(variance),
                     **{c: row[c] for c in ("age", "sex", "group", "fluency")}})
    table = pd.DataFrame(rows)
    table.drop(columns=["path", "variance_path"]).to_csv(root / "participants.tsv", sep="\t", index=False)
    table_path = root.parent / "table.tsv"
    table.to_csv(table_path, sep="\t", index=False)
    return root, table_path


def _copy_tree(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "first_level"
    shutil.copytree(root, copy)
    return copy


def test_entities_choose_the_effect_maps_and_their_variances(bids_tree):
    root, table_path = bids_tree
    inputs = from_bids(root, {**ENTITIES, "space": None})
    expected = pd.read_csv(table_path, sep="\t")
    assert list(inputs.table.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(inputs.table, expected, check_dtype=False)
    assert [str(ref.path) for ref in inputs.images] == list(expected["path"])
    assert all("_stat-effect_" in str(ref.path) and "contrast-language" in str(ref.path) for ref in inputs.images)


def test_bids_tree_gives_the_same_outputs_as_the_table(bids_tree, tmp_path):
    root, table_path = bids_tree
    common = ["design.formula=1 + age", "contrasts=[{name:mean,expr:Intercept},{name:age,expr:age}]",
              "correction=[fpr,fdr]", "report=false", "cache=false"]
    run_analysis(tmp_path / "bids", ["data=bids", f"data.root={root}", "data.entities.task=localizer",
                                     "data.entities.contrast=language", *common])
    run_analysis(tmp_path / "table", ["data=table", f"data.table={table_path}", *common])
    outputs = {}
    for name in ("bids", "table"):
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        outputs[name] = {e["path"]: e["sha256"] for e in manifest["outputs"] if e["kind"] != "config"}
    # per contrast: effect, variance, t, z, p and the fpr and fdr maps, each with its sidecar
    assert sum(path.endswith(".nii.gz") for path in outputs["table"]) == 2 * 7
    assert sum(path.endswith("_statmap.json") for path in outputs["table"]) == 2 * 7
    assert outputs["bids"] == outputs["table"]
    from runner.verify import verify

    verdict = verify(tmp_path / "bids")  # the re-run finds the same maps through data.root and data.entities
    assert verdict.ok, verdict.differences + verdict.changed_inputs
    recorded = json.loads((tmp_path / "bids" / "manifest.json").read_text())["input_files"]
    assert list(recorded) == ["participants"]


def test_several_maps_per_subject_name_the_entity_to_set(bids_tree, tmp_path):
    root = _copy_tree(bids_tree[0], tmp_path)
    shutil.copyfile(root / f"{_stem('sub-01')}_stat-effect_statmap.nii.gz",
                    root / f"{_stem('sub-01', space='fsaverage')}_stat-effect_statmap.nii.gz")
    with pytest.raises(RunnerError, match=r"sub-01 has 2 effect maps .* set data\.entities\.space"):
        from_bids(root, ENTITIES)
    assert len(from_bids(root, {**ENTITIES, "space": SPACE}).images) == N_SUBJECTS


def test_subject_without_a_map_is_listed_then_refused_or_dropped(bids_tree, tmp_path):
    root = _copy_tree(bids_tree[0], tmp_path)
    for path in (root / "sub-03").glob("*contrast-language_stat-effect*"):
        path.unlink()
    with pytest.raises(RunnerError, match=r"1 subject\(s\) have a row in .*participants.tsv but no effect map "
                                          r"matching data.entities: sub-03; .*design.drop_missing=true") as error:
        from_bids(root, ENTITIES)
    assert "\n" not in str(error.value)
    inputs = from_bids(root, ENTITIES, drop_missing=True)
    assert "sub-03" not in set(inputs.table["participant_id"]) and len(inputs.images) == N_SUBJECTS - 1
    assert any("sub-03" in note for note in inputs.notes)


def test_map_without_a_participants_row_is_listed_then_refused_or_dropped(bids_tree, tmp_path):
    root = _copy_tree(bids_tree[0], tmp_path)
    participants = pd.read_csv(root / "participants.tsv", sep="\t")
    participants[participants["participant_id"] != "sub-05"].to_csv(root / "participants.tsv", sep="\t",
                                                                     index=False)
    with pytest.raises(RunnerError, match=r"1 subject\(s\) have an effect map but no row in .*: sub-05"):
        from_bids(root, ENTITIES)
    assert "sub-05" not in set(from_bids(root, ENTITIES, drop_missing=True).table["participant_id"])


def test_missing_covariate_is_refused_or_dropped_as_for_tables(bids_tree, tmp_path):
    from runner.config import build_settings
    from runner.stages.prepare import gather_inputs, make_design

    from conftest import compose

    root = _copy_tree(bids_tree[0], tmp_path)
    participants = pd.read_csv(root / "participants.tsv", sep="\t")
    participants.loc[participants["participant_id"] == "sub-02", "age"] = None
    participants.to_csv(root / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    overrides = ["data=bids", f"data.root={root}", "data.entities.contrast=language", "design.formula=1 + age"]
    settings = build_settings(compose(overrides))
    with pytest.raises(RunnerError, match=r"missing values in columns used by the formula: sub-02 \(age\)"):
        make_design(settings, gather_inputs(settings))
    settings = build_settings(compose([*overrides, "design.drop_missing=true"]))
    design, inputs = make_design(settings, gather_inputs(settings))
    assert len(design.matrix) == N_SUBJECTS - 1 and "sub-02" not in set(inputs.table["participant_id"])


def test_variance_maps_missing_for_some_subjects_are_noted(bids_tree, tmp_path):
    root = _copy_tree(bids_tree[0], tmp_path)
    next((root / "sub-04").glob("*stat-variance*")).unlink()
    inputs = from_bids(root, ENTITIES)
    assert inputs.table["variance_path"].isna().tolist() == [s == "sub-04" for s in inputs.table["participant_id"]]
    assert any("sub-04" in note and "stat-variance" in note for note in inputs.notes)
    for path in root.glob("sub-*/*stat-variance*"):
        path.unlink()
    assert "variance_path" not in from_bids(root, ENTITIES).table.columns


@pytest.mark.parametrize("entities, message", [
    ({"tsk": "localizer"}, r"data\.entities\.tsk is not an entity .* did you mean 'task'"),
    ({"task": "../etc"}, r"data\.entities\.task must be a BIDS label"),
    ({"subject": "01"}, r"subjects are chosen with data\.query"),
    ({"contrast": "nothing"}, r"no \*_stat-effect_statmap\.nii\[\.gz\] maps matching contrast-nothing"),
])
def test_bad_entities_are_refused_in_one_line(bids_tree, entities, message):
    with pytest.raises(RunnerError, match=message):
        from_bids(bids_tree[0], entities)


def test_not_a_bids_folder_and_missing_pybids_are_one_line(tmp_path, monkeypatch, bids_tree):
    with pytest.raises(RunnerError, match=r"has no dataset_description\.json"):
        from_bids(tmp_path, ENTITIES)
    monkeypatch.setitem(sys.modules, "bids", None)  # import bids -> ImportError
    with pytest.raises(RunnerError, match=r"needs pybids: pip install 'second-level-runner\[bids\]'"):
        from_bids(bids_tree[0], ENTITIES)


def test_cli_refusal_is_one_line_exit_2(bids_tree, tmp_path):
    root = _copy_tree(bids_tree[0], tmp_path)
    (root / "sub-07" / f"sub-07_task-localizer_space-{SPACE}_contrast-language_stat-effect_statmap.nii.gz").unlink()
    result = run_cli(["data=bids", f"data.root={root}", "data.entities.contrast=language",
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "sub-07" in lines[0], result.stderr


@pytest.mark.parametrize("override, message", [
    ("data.entities.contrst=language", "data.entities.contrst is not in the composed config — did you mean "
                                       "data.entities.contrast"),
    ("data.entities.run=r1", "data.entities.run is not in the composed config \\(a new key is added with a plus: "
                            "\\+data\\.entities\\.run"),
])
def test_entity_keys_on_the_command_line_are_checked_before_composing(override, message):
    from conftest import CONF
    from runner.prevalidate import prevalidate

    with pytest.raises(RunnerError, match=message):
        prevalidate(["data=bids", "data.root=x", override], str(CONF))
