"""The registry of inference methods: one list of names that drives config, dispatch, the report and the summary.

Each method is an :class:`InferenceMethod`: its name (``correction=<name>``), its family, the dataclass schema of its
parameters (the one source of their defaults), how to run it on fitted contrasts, and how to state its threshold.
Methods of a family marked ``shared_pass`` (the permutation methods) run together in one pass over the same
permutations. Adding a method is one module that calls :func:`register`, its YAML option (optional: the schema alone
makes ``correction=<name>`` work) and its tests.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable

from runner.errors import RunnerError, did_you_mean

if TYPE_CHECKING:
    from runner.config import RunSettings
    from runner.contrasts import Contrast
    from runner.data.loader import GroupData
    from runner.design import Design
    from runner.glm import ContrastResult
    from runner.results import BatchResult

BUILTIN_MODULES = ("runner.inference.methods.height", "runner.inference.methods.permutation",
                   "runner.inference.methods.ari", "runner.inference.methods.rft",
                   "runner.inference.methods.validity", "runner.inference.methods.npc")


@dataclass(frozen=True)
class ContrastInputs:
    """Everything a method may read for one contrast: the data, the design, the contrast, its fit, the run settings,
    the run's executor for loops over independent work (None: the method's own local threads), with
    model=mfx the first-level variances (n_maps x n_voxels, the voxel order of ``data.Y``), and the further
    modalities a method asked for (``{table column: n_maps x n_voxels}``, e.g. ``correction.npc.modalities``)."""

    data: "GroupData"
    design: "Design"
    contrast: "Contrast"
    fit: "ContrastResult"
    settings: "RunSettings"
    executor: Any = None
    variances: Any = None
    modalities: Any = None


# run(inputs, {method name: validated parameters}) -> BatchResult with one MethodResult per method named.
Runner = Callable[[ContrastInputs, dict[str, Any]], "BatchResult"]
# run_contrasts([inputs of every contrast], params) -> (label, BatchResult) pairs in writing order: for methods that
# look at several contrasts at once (correction across contrasts, combination); labels may be new (a combination).
ContrastsRunner = Callable[[list[ContrastInputs], dict[str, Any]], Iterable[tuple[str, "BatchResult"]]]


@dataclass(frozen=True)
class InferenceMethod:
    """One correction method.

    Attributes
    ----------
    name : str
        The config name (``correction=[<name>]``) and the ``desc-<name>`` entity of its outputs.
    family : str
        ``parametric``, ``permutation``, ``ari`` ...: families run in ``FAMILY_ORDER``, then in registration order.
    schema : type
        Dataclass of the parameters, with their defaults and range checks (``field(metadata={"check": fn})``).
    run : callable
        ``run(inputs, params_by_method) -> BatchResult``.
    description : str
        One line for ``--help``, the docs and the report.
    shared_pass : bool
        True when the family's methods run together on one contrast (one call with all of them).
    run_contrasts : callable, optional
        ``run_contrasts(inputs of every contrast, params_by_method)``, yielding ``(label, BatchResult)``: when set,
        the stage hands the method every contrast at once instead of calling ``run`` per contrast.
    """

    name: str
    family: str
    schema: type
    run: Runner
    description: str = ""
    shared_pass: bool = False
    run_contrasts: ContrastsRunner | None = None


FAMILY_ORDER = ("parametric", "permutation", "ari")
_METHODS: dict[str, InferenceMethod] = {}
_loaded = False


def register(method: InferenceMethod, replace: bool = False) -> InferenceMethod:
    """Add a method to the registry (``replace`` to redefine one, e.g. in tests)."""
    if method.name in _METHODS and not replace and _METHODS[method.name] is not method:
        raise ValueError(f"inference method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests that register a toy method clean up with this)."""
    _METHODS.pop(name, None)


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def methods() -> dict[str, InferenceMethod]:
    """Every registered method by name, built-ins first."""
    _load_builtins()
    return dict(_METHODS)


def get(name: str) -> InferenceMethod:
    """The method called ``name``; a RunnerError naming the closest one otherwise."""
    known = methods()
    if name not in known:
        raise RunnerError(f"unknown correction {name!r}; {did_you_mean(str(name), known)}")
    return known[name]


def schemas() -> dict[str, type]:
    """Parameter schema of every method by name (config validation and Hydra registration read this)."""
    return {name: method.schema for name, method in methods().items()}


def batches(names: list[str]) -> list[list[str]]:
    """Group the configured methods into batches, in the order they run.

    Families run in ``FAMILY_ORDER`` (others after, in registration order); within a family, a ``shared_pass``
    family forms one batch and other methods one batch each, in configuration order.
    """
    known = methods()
    families = list(FAMILY_ORDER) + [m.family for m in known.values() if m.family not in FAMILY_ORDER]
    out: list[list[str]] = []
    for family in dict.fromkeys(families):
        members = [n for n in names if get(n).family == family]
        if not members:
            continue
        if known[members[0]].shared_pass:
            out.append(members)
        else:
            out.extend([n] for n in members)
    return out
