"""BIDS Stats Models (https://bids-standard.github.io/stats-models/): the dataset-level node of a model JSON as our
design formula, contrasts and row selection.

What is read: the node whose ``Level`` is ``Dataset`` — ``Model.X`` (``1`` is the intercept) or ``Model.Formula``,
``Model.Type: glm``, ``Contrasts`` (``ConditionList``, ``Weights``, ``Test: t|F``), ``DummyContrasts`` (``Test``,
``Contrasts``; named as the variable, the intercept as ``intercept``, replaced by an explicit contrast of the same
name, as pybids does), ``GroupBy: [contrast]``; the ``Filter`` of the edges into that node and the model's ``Input``
(entities select maps, other keys select participants). Run-, session- and subject-level nodes describe the first
level, already fitted, and are not read. Anything else is refused by name, in one line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

from runner.errors import RunnerError

log = logging.getLogger(__name__)

TOP_KEYS = {"Name", "BIDSModelVersion", "Description", "Input", "Nodes", "Edges"}
NODE_KEYS = {"Level", "Name", "GroupBy", "Model", "Contrasts", "DummyContrasts", "Description"}
MODEL_KEYS = {"X", "Type", "Formula", "Description"}
CONTRAST_KEYS = {"Name", "ConditionList", "Weights", "Test", "Description"}
DUMMY_KEYS = {"Test", "Contrasts"}
TESTS = ("t", "F")
INTERCEPT = "Intercept"  # the design column of the intercept (patsy's name); BIDS writes it 1
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class BidsModel:
    """What the dataset node says, in our terms."""

    formula: str  # patsy right-hand side over participants' columns
    contrasts: list[dict[str, Any]]  # {name, expr, type} as ContrastConfig takes them
    entities: dict[str, str]  # data.entities the model's Input and edge Filter pin
    selections: dict[str, list[Any]]  # participants' column -> allowed values (Input.subject, Filter)


def read_bids_model(path: Path) -> BidsModel:
    """Read a BIDS Stats Models JSON file; RunnerError naming the key for anything we do not support."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RunnerError(f"design.bids_model file {path} does not exist")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunnerError(f"design.bids_model {path} is not valid JSON: {str(error).splitlines()[0]}") from None
    where = f"design.bids_model {path.name}"
    _only(spec, TOP_KEYS, where)
    node = _dataset_node(spec, where)
    where = f"{where} node {node.get('Name', 'dataset')!r}"
    _only(node, NODE_KEYS, where)
    group_by = [str(g) for g in _as_list(node.get("GroupBy", ["contrast"]))]
    if set(group_by) - {"contrast"}:
        raise RunnerError(f"{where}: GroupBy {group_by} is not supported (only [\"contrast\"], one input contrast "
                          "per run; choose it with data.entities.contrast)")
    model = node.get("Model")
    if not isinstance(model, dict):
        raise RunnerError(f"{where} has no Model")
    _only(model, MODEL_KEYS, f"{where} Model")
    if str(model.get("Type", "glm")).lower() != "glm":
        raise RunnerError(f"{where}: Model.Type {model.get('Type')!r} is not supported (only glm)")
    variables = _variables(model, where)
    formula = _formula(model, variables, where)
    contrasts = _contrasts(node, variables, where)
    entities, selections = _selections(spec, node, where)
    return BidsModel(formula=formula, contrasts=contrasts, entities=entities, selections=selections)


def _only(mapping: Any, allowed: set[str], where: str) -> None:
    if not isinstance(mapping, dict):
        raise RunnerError(f"{where} must be a JSON object")
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise RunnerError(f"{where}: {unknown[0]} is not supported by this runner (supported: "
                          + ", ".join(sorted(allowed)) + ")")


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _dataset_node(spec: dict[str, Any], where: str) -> dict[str, Any]:
    nodes = spec.get("Nodes")
    if not isinstance(nodes, list) or not nodes:
        raise RunnerError(f"{where} has no Nodes")
    dataset = [n for n in nodes if isinstance(n, dict) and str(n.get("Level", "")).lower() == "dataset"]
    if len(dataset) != 1:
        raise RunnerError(f"{where} has {len(dataset)} nodes with Level Dataset; exactly one is needed")
    return dataset[0]


def _variables(model: dict[str, Any], where: str) -> list[Any]:
    """``Model.X``: ``1`` (the intercept) and participants' column names."""
    x = model.get("X")
    if not isinstance(x, list) or not x:
        raise RunnerError(f"{where}: Model.X must be a non-empty list of variables (1 for the intercept)")
    for item in x:
        if item == 1 and not isinstance(item, bool):
            continue
        if not isinstance(item, str) or not _IDENTIFIER.match(item) or item.lower() == "intercept":
            raise RunnerError(f"{where}: Model.X entry {item!r} must be 1 (the intercept) or a participants' "
                              "column name (letters, digits, _)")
    return x


def _formula(model: dict[str, Any], variables: list[Any], where: str) -> str:
    """``Model.Formula`` when given (its right-hand side), else the sum of ``Model.X`` (no ``1``: no intercept)."""
    formula = model.get("Formula")
    if formula is not None:
        if not isinstance(formula, str) or not formula.strip():
            raise RunnerError(f"{where}: Model.Formula must be a formula text, e.g. '1 + age'")
        return formula.split("~", 1)[1].strip() if "~" in formula else formula.strip()
    names = [str(v) for v in variables if v != 1]
    if 1 in variables:
        return " + ".join(["1", *names])
    return " + ".join(["0", *names])


def _column(item: Any) -> str:
    """The design column of a BIDS condition: 1 or 'intercept' is the intercept, a name is itself."""
    return INTERCEPT if item == 1 or str(item).lower() == "intercept" else str(item)


def _contrasts(node: dict[str, Any], variables: list[Any], where: str) -> list[dict[str, Any]]:
    """Dummy contrasts first, then the explicit ones; an explicit contrast replaces a dummy one of its name."""
    out: dict[str, dict[str, Any]] = {}
    dummy = node.get("DummyContrasts")
    if dummy not in (None, False):
        dummy = {} if dummy is True else dummy
        _only(dummy, DUMMY_KEYS, f"{where} DummyContrasts")
        test = _test(dummy.get("Test", "t"), f"{where} DummyContrasts")
        for item in _as_list(dummy.get("Contrasts", variables)):
            name = "intercept" if _column(item) == INTERCEPT else str(item)
            out[name] = {"name": name, "expr": _column(item), "type": test}
    for i, contrast in enumerate(node.get("Contrasts") or []):
        here = f"{where} Contrasts[{i}]"
        _only(contrast, CONTRAST_KEYS, here)
        name = contrast.get("Name")
        if not isinstance(name, str) or not name:
            raise RunnerError(f"{here} has no Name")
        conditions = contrast.get("ConditionList")
        weights = contrast.get("Weights")
        if not isinstance(conditions, list) or not conditions or not isinstance(weights, list) or not weights:
            raise RunnerError(f"{here} ({name}) needs a ConditionList and its Weights")
        test = _test(contrast.get("Test", "t"), here)
        rows = weights if all(isinstance(w, list) for w in weights) else [weights]
        if test == "t" and len(rows) != 1:
            raise RunnerError(f"{here} ({name}) has {len(rows)} rows of Weights; Test t takes one (use Test F)")
        expressions = []
        for row in rows:
            if len(row) != len(conditions) or not all(_is_number(w) for w in row):
                raise RunnerError(f"{here} ({name}): each row of Weights needs one number per condition "
                                  f"({len(conditions)})")
            expressions.append(" + ".join(f"{float(w)!r} * {_column(c)}" for c, w in zip(conditions, row)))
        out[name] = {"name": name, "expr": expressions[0] if test == "t" else expressions, "type": test}
    if not out:
        raise RunnerError(f"{where} defines no Contrasts and no DummyContrasts")
    return list(out.values())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _test(value: Any, where: str) -> str:
    if value not in TESTS:
        raise RunnerError(f"{where}: Test {value!r} is not supported (t or F)")
    return str(value)


def _selections(spec: dict[str, Any], node: dict[str, Any], where: str) -> tuple[dict[str, str], dict[str, list]]:
    """Entities (-> data.entities) and participants' selections from ``Input`` and the edges' ``Filter``."""
    from runner.data.bids import ENTITIES

    entities: dict[str, str] = {}
    selections: dict[str, list[Any]] = {}
    sources = [("Input", spec.get("Input") or {})]
    for edge in spec.get("Edges") or []:
        if isinstance(edge, dict) and edge.get("Destination") == node.get("Name") and edge.get("Filter"):
            sources.append((f"Edges Filter into {node.get('Name')!r}", edge["Filter"]))
    for label, filters in sources:
        if not isinstance(filters, dict):
            raise RunnerError(f"{where}: {label} must be a JSON object of key: value(s)")
        for key, value in filters.items():
            values = _as_list(value)
            if key == "subject":
                selections.setdefault("participant_id", []).extend(
                    "sub-" + str(v).removeprefix("sub-") for v in values)
            elif key in ENTITIES:
                if len(values) != 1:
                    raise RunnerError(f"{where}: {label} {key} lists {len(values)} values; one run takes one "
                                      f"{key} (data.entities.{key})")
                entities[key] = str(values[0])
            elif _IDENTIFIER.match(str(key)) and all(isinstance(v, (str, int, float)) for v in values):
                selections.setdefault(str(key), []).extend(values)
            else:
                raise RunnerError(f"{where}: {label} {key!r} is not supported (entities or participants' columns "
                                  "with text or number values)")
    return entities, selections


def selection_query(selections: dict[str, list[Any]]) -> str:
    """A ``data.query`` text keeping the rows whose columns take one of the selected values."""
    return " and ".join(f"{column} in {list(values)!r}" for column, values in selections.items())


def apply_bids_model(settings: Any) -> Any:
    """Settings whose design formula, contrasts, entities and row selection come from ``design.bids_model``."""
    from runner.config import ContrastConfig

    if settings.design.matrix is not None:
        raise RunnerError("design.bids_model and design.matrix both define the design; set only one")
    model = read_bids_model(Path(settings.design.bids_model))
    entities = dict(settings.data.entities)
    for key, value in model.entities.items():
        if entities.get(key) is not None and str(entities[key]) != value:
            raise RunnerError(f"data.entities.{key}={entities[key]} contradicts design.bids_model ({key} {value})")
        entities[key] = value
    query = settings.data.query
    if model.selections:
        selection = selection_query(model.selections)
        query = f"({query}) and ({selection})" if query else selection
    data = dataclasses.replace(settings.data, entities=entities, query=query)
    design = dataclasses.replace(settings.design, formula=model.formula)
    contrasts = [ContrastConfig(**c) for c in model.contrasts]
    log.info("design.bids_model %s: formula %r, contrasts %s", settings.design.bids_model, model.formula,
             ", ".join(c.name for c in contrasts))
    return dataclasses.replace(settings, data=data, design=design, contrasts=contrasts)
