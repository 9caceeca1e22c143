"""A run folder is a BIDS derivative dataset: checked against the BIDS schema shipped by bidsschematools.

What the schema (BIDS 1.11) can check is checked with it: ``dataset_description.json`` against the dataset rules
(required fields, and ``GeneratedBy`` for derivatives) and the metadata definitions (types, enums, required items);
the validator of bidsschematools recognises the description file. The validator itself reads only the raw-data
rules, and the released schema has no rule for group-level statistical maps: the ``contrast`` and ``stat`` entities
and the ``statmap`` suffix are those of the statistical-derivatives proposal (BEP041). So the map names are checked
by bidsschematools' own rule compiler (``rules.regexify_filename_rules``) on the released schema extended by exactly
that: the two BEP041 entities (label format, after ``task``) and one derivative rule for ``statmap`` files with the
schema's own ``hemi``, ``space`` and ``desc`` entities. Anything else in a name (an entity of our own, a wrong order)
fails. The correction method is not an entity in BIDS or BEP041, so it is the ``desc`` label (``desc-fdr``,
``desc-rftClusterlevel``). The sidecars are checked against the manifest and the design.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from conftest import run_analysis

bidsschematools = pytest.importorskip("bidsschematools")
from bidsschematools import schema as bids_schema  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("derivative") / "run"
    run_analysis(folder, ["correction=[fpr,fdr]", "report=false", "design.formula=1 + age",
                          "contrasts=[{name:mean,expr:Intercept},{name:age,expr:age}]"])
    return folder


@pytest.fixture(scope="module")
def schema():
    return bids_schema.load_schema()


def extended_schema(schema):
    """The released schema plus BEP041's ``contrast`` and ``stat`` entities and a group-level ``statmap`` rule."""
    from bidsschematools.types import Namespace

    tree = schema.to_dict()
    for name, display in (("contrast", "Contrast"), ("stat", "Statistic")):
        tree["objects"]["entities"][name] = {"name": name, "display_name": display, "type": "string",
                                             "format": "label", "description": "BEP041 (statistical derivatives)"}
    order = tree["rules"]["entities"]
    after_task = order.index("task") + 1
    tree["rules"]["entities"] = order[:after_task] + ["contrast", "stat"] + order[after_task:]
    tree["rules"]["files"]["deriv"]["statistics"] = {"group_statmap": {
        # contrast optional: model-level maps (model=mfx's stat-tau2, stat-dof) belong to no contrast
        "entities": {"task": "optional", "contrast": "optional", "stat": "required", "hemisphere": "optional",
                     "space": "optional", "description": "optional"},
        "suffixes": ["statmap"], "extensions": [".nii.gz", ".nii", ".func.gii", ".json"], "datatypes": [""]}}
    return Namespace.build(tree)


def schema_file_rules(schema) -> list[re.Pattern]:
    """Every file-name rule of the (extended) schema that applies to a derivative dataset, compiled by
    bidsschematools: the common rules (dataset_description.json ...) and every derivative rule group."""
    from bidsschematools import rules

    # the common rules are a group of groups (core, tables: level 2); each derivative group holds rules (level 1)
    groups = [(schema.rules.files.common, 2)] + [(group, 1) for _, group in schema.rules.files.deriv.items()]
    return [re.compile(rule["regex"]) for group, level in groups
            for rule in rules.regexify_filename_rules(group, schema, level)]


RECORD_KINDS = {"config", "table", "clusters", "figure", "design", "report"}  # the runner's own records, not BIDS


def test_every_map_and_sidecar_passes_the_schema_file_rules(run_dir, schema):
    compiled = schema_file_rules(extended_schema(schema))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    bids_files = [e["path"] for e in manifest["outputs"] if e["kind"] not in RECORD_KINDS]
    assert "dataset_description.json" in bids_files and len(bids_files) >= 2 * 14 + 1
    failing = [path for path in bids_files if not any(rule.match(path) for rule in compiled)]
    assert not failing, failing
    # the check can fail: the old correction entity, an unknown entity, or hemi after desc
    for wrong in ("contrast-mean_stat-z_corr-fdr_statmap.nii.gz", "contrast-mean_stat-z_run-x_statmap.nii.gz",
                  "contrast-mean_stat-z_desc-fdr_hemi-L_statmap.func.gii", "stat-z_contrast-mean_statmap.nii.gz"):
        assert not any(rule.match(wrong) for rule in compiled), wrong
    # and the released schema alone has no rule for them (BEP041 is not in BIDS 1.11)
    released = schema_file_rules(schema)
    assert not any(rule.match("contrast-mean_stat-z_statmap.nii.gz") for rule in released)
    assert any(rule.match("dataset_description.json") for rule in released)


def test_surface_and_model_level_map_names_pass_the_schema_file_rules(schema):
    from runner.outputs.naming import sidecar_name, surface_map_name

    compiled = schema_file_rules(extended_schema(schema))
    for name in ("stat-tau2_statmap.nii.gz", "stat-tau2_statmap.json", "stat-dof_statmap.nii.gz"):  # model=mfx
        assert any(rule.match(name) for rule in compiled), name
    for correction, desc in ((None, None), ("fdr", None), ("rft", "clusterlevel"), (None, "permutation")):
        name = surface_map_name("mean", "z", "L", correction, desc=desc)
        assert any(rule.match(name) for rule in compiled), name
        assert any(rule.match(sidecar_name(name)) for rule in compiled), sidecar_name(name)


def _check_value(value, definition: dict, where: str) -> None:
    """The subset of JSON schema the BIDS metadata definitions use: type, enum, minItems, items, required."""
    kinds = {"string": str, "array": list, "object": dict, "number": (int, float), "integer": int}
    if "type" in definition:
        assert isinstance(value, kinds[definition["type"]]), f"{where}: {value!r} is not a {definition['type']}"
    if "enum" in definition:
        assert value in definition["enum"], f"{where}: {value!r} not in {definition['enum']}"
    if isinstance(value, list):
        assert len(value) >= definition.get("minItems", 0), f"{where}: too few items"
        for i, item in enumerate(value):
            _check_value(item, definition.get("items", {}), f"{where}[{i}]")
    if isinstance(value, dict):
        for key in definition.get("required", []):
            assert key in value, f"{where}: required {key} missing"
        for key, item in value.items():
            if key in definition.get("properties", {}):
                _check_value(item, definition["properties"][key], f"{where}.{key}")


def test_dataset_description_passes_the_schema_rules(run_dir, schema):
    description = json.loads((run_dir / "dataset_description.json").read_text())
    rules = schema.rules.json.dataset.to_dict()
    applicable = [rules["dataset_description"]]
    if description.get("DatasetType") == "derivative":  # the rule's selector: json.DatasetType == "derivative"
        applicable.append(rules["derivative_description"])
    assert len(applicable) == 2
    for rule in applicable:
        for field, level in rule["fields"].items():
            level = level["level"] if isinstance(level, dict) else level
            if level == "required":
                assert field in description, f"dataset_description.json lacks required {field}"
    metadata = schema.objects.metadata.to_dict()
    definitions = {m["name"]: m for m in metadata.values()}
    for field, value in description.items():
        _check_value(value, definitions[field], field)
    assert description["GeneratedBy"][0]["Name"] == "second-level-runner"
    assert re.fullmatch(r"\d+\.\d+\.\d+", description["BIDSVersion"])
    from importlib import metadata as installed

    assert description["GeneratedBy"][0]["Version"] == installed.version("second-level-runner")


def test_schema_validator_recognises_the_description(run_dir, caplog):
    from bidsschematools import validator

    with caplog.at_level(logging.ERROR):
        result = validator.validate_bids(str(run_dir), suppress_errors=True)
    matched = {Path(m["path"]).name for m in result["match_listing"]}
    assert "dataset_description.json" in matched


def test_every_map_has_a_sidecar_with_its_statistic_correction_threshold_and_dof(run_dir, schema):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    entries = {e["path"]: e for e in manifest["outputs"]}
    label = schema.objects.formats.label.pattern
    name_rule = re.compile(rf"contrast-({label})_stat-({label})(?:_desc-({label}))?_statmap")
    maps = [e for e in manifest["outputs"] if e["kind"] == "map"]
    assert len(maps) == 2 * 7
    n_maps, n_columns = 30, 2  # the demo localizer, design 1 + age
    for entry in maps:
        stem = entry["path"].removesuffix(".nii.gz")
        match = name_rule.fullmatch(stem)
        assert match, entry["path"]
        sidecar_entry = entries[stem + ".json"]
        assert sidecar_entry["kind"] == "sidecar"
        sidecar = json.loads((run_dir / (stem + ".json")).read_text())
        assert sidecar["Statistic"] == match.group(2) == entry["stat"]
        assert sidecar["Contrast"] == entry["contrast"] and match.group(1) == entry["contrast"]
        assert sidecar["Correction"] == entry["correction"] and match.group(3) == entry["correction"]
        assert sidecar["Alpha"] == entry["alpha"] and sidecar["Threshold"] == entry["threshold"]
        assert sidecar["DegreesOfFreedom"] == n_maps - n_columns
    from scipy.stats import norm

    fpr = json.loads((run_dir / "contrast-mean_stat-z_desc-fpr_statmap.json").read_text())
    tails = 2 if fpr["TwoSided"] else 1
    assert fpr["Alpha"] == 0.001 and fpr["Threshold"] == pytest.approx(norm.isf(0.001 / tails), rel=1e-9)


def test_verify_reproduces_the_sidecars_and_description(run_dir):
    from runner.verify import verify

    verdict = verify(run_dir)
    assert verdict.ok, verdict.differences + verdict.changed_inputs
    assert verdict.compared >= 2 * 14 + 1
