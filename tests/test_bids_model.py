"""design.bids_model: a BIDS Stats Models file gives the same design, contrasts and rows as the equivalent config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import compose
from runner.bids_model import read_bids_model
from runner.config import build_settings
from runner.errors import RunnerError
from runner.stages.prepare import gather_inputs, make_contrasts, make_design

DATASET_NODE = {
    "Level": "Dataset", "Name": "group", "GroupBy": ["contrast"],
    "Model": {"X": [1, "age", "fluency"], "Type": "glm"},
    "DummyContrasts": {"Contrasts": [1, "age"], "Test": "t"},
    "Contrasts": [
        {"Name": "age", "ConditionList": ["age"], "Weights": [-1], "Test": "t"},  # replaces the dummy "age"
        {"Name": "age_vs_fluency", "ConditionList": ["age", "fluency"], "Weights": [1, -0.5], "Test": "t"},
        {"Name": "covariates", "ConditionList": ["age", "fluency"], "Weights": [[1, 0], [0, 1]], "Test": "F"},
    ],
}
MODEL = {
    "Name": "language", "BIDSModelVersion": "1.0.0", "Input": {"task": ["localizer"]},
    "Nodes": [{"Level": "Run", "Name": "run", "Model": {"X": ["language"], "Type": "glm"}}, DATASET_NODE],
    "Edges": [{"Source": "run", "Destination": "group", "Filter": {"group": ["control"]}}],
}


def _write(tmp_path: Path, model: dict, name: str = "model.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(model))
    return path


def _prepared(overrides: list[str]):
    settings = build_settings(compose(["report=false", *overrides]))
    design, inputs = make_design(settings, gather_inputs(settings))
    return settings, design, inputs, make_contrasts(settings, design)


def test_model_gives_the_design_contrasts_and_rows_of_the_equivalent_config(tmp_path):
    path = _write(tmp_path, MODEL)
    _, design, inputs, contrasts = _prepared([f"design.bids_model={path}"])
    # the same analysis written by hand as a config
    _, expected_design, expected_inputs, expected = _prepared([
        "design.formula=1 + age + fluency", "data.query=\"group == 'control'\"",
        "contrasts=[{name:intercept,expr:Intercept},{name:age,expr:[0,-1,0]},"
        "{name:age_vs_fluency,expr:'age - 0.5*fluency'},{name:covariates,expr:[age,fluency],type:F}]"])
    pd.testing.assert_frame_equal(design.matrix, expected_design.matrix)
    assert list(inputs.table["subject"]) == list(expected_inputs.table["subject"])
    assert set(inputs.table["group"]) == {"control"} and len(inputs.table) < 30
    assert [(c.name, c.stat_type) for c in contrasts] == [(c.name, c.stat_type) for c in expected]
    for got, want in zip(contrasts, expected):
        np.testing.assert_array_equal(got.matrix, want.matrix)


def test_model_input_pins_bids_entities(tmp_path):
    settings = build_settings(compose([f"design.bids_model={_write(tmp_path, MODEL)}"]))
    assert settings.data.entities["task"] == "localizer"
    with pytest.raises(RunnerError, match=r"data\.entities\.task=other contradicts design\.bids_model"):
        build_settings(compose(["data=bids", "data.root=x", "data.entities.task=other",
                                f"design.bids_model={_write(tmp_path, MODEL)}"]))


def test_x_without_1_has_no_intercept_and_formula_wins(tmp_path):
    node = dict(DATASET_NODE, Model={"X": ["age"], "Type": "glm"}, DummyContrasts={"Test": "t"}, Contrasts=[])
    model = read_bids_model(_write(tmp_path, dict(MODEL, Nodes=[node], Edges=[])))
    assert model.formula == "0 + age" and [c["name"] for c in model.contrasts] == ["age"]
    node["Model"] = {"X": [1, "age"], "Formula": "y ~ 1 + age + fluency"}
    assert read_bids_model(_write(tmp_path, dict(MODEL, Nodes=[node]))).formula == "1 + age + fluency"


def test_subject_input_selects_participants_by_participant_id(tmp_path):
    model = dict(MODEL, Input={"task": "localizer", "subject": ["01", "sub-04"]}, Edges=[])
    settings = build_settings(compose([f"design.bids_model={_write(tmp_path, model)}"]))
    assert settings.data.query == "participant_id in ['sub-01', 'sub-04']"
    with pytest.raises(RunnerError, match=r"data\.query names 'participant_id', which is not a column"):
        gather_inputs(settings)  # the demo table names its subjects in "subject"


@pytest.mark.parametrize("change, message", [
    ({"Nodes": [dict(DATASET_NODE, Transformations={"Instructions": []})]},
     r"node 'group': Transformations is not supported by this runner"),
    ({"Nodes": [dict(DATASET_NODE, Model={"X": [1], "Type": "meta"})]}, r"Model\.Type 'meta' is not supported"),
    ({"Nodes": [dict(DATASET_NODE, Model={"X": [1], "Options": {}})]}, r"Model: Options is not supported"),
    ({"Nodes": [dict(DATASET_NODE, GroupBy=["contrast", "group"])]}, r"GroupBy .* is not supported"),
    ({"Nodes": [dict(DATASET_NODE, Contrasts=[{"Name": "a", "ConditionList": ["age"], "Weights": [1],
                                               "Test": "FEMA"}])]}, r"Contrasts\[0\]: Test 'FEMA' is not supported"),
    ({"Nodes": [dict(DATASET_NODE, Contrasts=[{"Name": "a", "ConditionList": ["age", "fluency"],
                                               "Weights": [1]}])]}, r"one number per condition \(2\)"),
    ({"Nodes": [DATASET_NODE, DATASET_NODE]}, r"has 2 nodes with Level Dataset"),
    ({"HRF": {}}, r"HRF is not supported"),
    ({"Input": {"task": ["a", "b"]}}, r"Input task lists 2 values"),
])
def test_unsupported_model_fields_are_refused_by_name_in_one_line(tmp_path, change, message):
    path = _write(tmp_path, dict(MODEL, **change))
    with pytest.raises(RunnerError, match=message) as error:
        read_bids_model(path)
    assert "\n" not in str(error.value)


def test_unreadable_model_file_is_one_line(tmp_path):
    with pytest.raises(RunnerError, match=r"design\.bids_model file .* does not exist"):
        read_bids_model(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RunnerError, match=r"is not valid JSON"):
        read_bids_model(tmp_path / "bad.json")
