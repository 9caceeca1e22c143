"""Typed run settings, built once from the composed Hydra config and validated at the door.

Every group is a dataclass; :func:`build_settings` converts the composed config into these objects, refusing unknown
keys (with the closest valid key), wrong types and out-of-range values with one line naming the key. Code below the
door receives these objects, never raw DictConfig lookups.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from runner.checks import check, non_negative, one_of, positive, subject_pattern
from runner.errors import RunnerError, closest, did_you_mean

SUBJECT_PATTERN = r"sub-([A-Za-z0-9]+)"


# -- groups ------------------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Where the maps come from and how they are masked and smoothed."""

    demo: Optional[str] = None  # localizer | paired | vbm: generate/reuse a bundled demo dataset
    table: Optional[str] = None  # TSV/CSV, one row per map
    path_column: str = "path"
    glob: Optional[str] = None  # pattern of map files, joined to `participants` on the BIDS subject label
    participants: Optional[str] = None
    subject_pattern: str = field(default=SUBJECT_PATTERN, metadata=check(subject_pattern))
    subject_column: Optional[str] = None
    image_4d: Optional[str] = None  # one 4D NIfTI, one row of `table` per volume
    root: Optional[str] = None  # a BIDS derivatives folder of first-level maps (data=bids)
    entities: dict[str, Optional[str]] = field(default_factory=dict)  # BIDS entities choosing them: task, contrast...
    query: Optional[str] = None  # pandas query selecting rows
    id_column: Optional[str] = None  # column naming rows in messages (default: participant_id or subject)
    mask: Optional[str] = None  # explicit mask file; else an automatic mask
    mask_strategy: str = field(default="nonzero", metadata=check(one_of("nonzero", "absolute", "relative")))
    mask_threshold: float = field(default=0.0, metadata=check(non_negative))
    smoothing_fwhm: Optional[float] = field(default=None, metadata=check(non_negative))
    resample: bool = True
    nan_policy: str = field(default="exclude", metadata=check(one_of("exclude", "error")))
    dtype: str = field(default="float64", metadata=check(one_of("float64", "float32")))
    variance_column: str = "variance_path"  # table column naming each map's first-level variance map (model=mfx)
    # surfaces (runner/data/surface.py): a bundled mesh name, or the user's .surf.gii per hemisphere
    mesh: Optional[str] = field(default=None, metadata=check(one_of(None, "fsaverage5")))
    mesh_left: Optional[str] = None
    mesh_right: Optional[str] = None
    path_left_column: str = "path_left"
    path_right_column: str = "path_right"
    exclude_medial_wall: bool = True  # with a bundled mesh; the user's meshes have no medial-wall mask
    annotation_left: Optional[str] = None  # atlas per hemisphere (.annot / .label.gii): peaks' labels in cluster tables
    annotation_right: Optional[str] = None


@dataclass
class DesignConfig:
    """The design: a patsy formula over the table's columns, or a ready design-matrix TSV."""

    formula: Optional[str] = "1"
    matrix: Optional[str] = None
    drop_missing: bool = False
    bids_model: Optional[str] = None  # a BIDS Stats Models JSON: its dataset node replaces formula and contrasts


@dataclass
class ModelConfig:
    """The group model: ordinary least squares, or mixed effects using the first-level variances (runner/mfx.py)."""

    kind: str = field(default="ols", metadata=check(one_of("ols", "mfx")))
    tau2_estimator: str = field(default="reml", metadata=check(one_of("reml", "dl")))  # mfx: REML or DerSimonian-Laird
    knapp_hartung: bool = True  # mfx: scale the effect variance by e'We/(n-p) (Knapp & Hartung 2003)
    # mfx: t/F degrees of freedom: effective = Kish's effective number of maps minus p, per voxel; residual = n - p
    dof: str = field(default="effective", metadata=check(one_of("effective", "residual")))
    # ols: how the fit is computed. standard = from the residuals of all maps at once, voxel chunk by voxel chunk;
    # sufficient = from U'Y and Y'Y summed over batches of batch_maps maps (runner/sufficient.py), so that no task
    # reads more than batch_maps maps (studies no worker could hold); equal to the standard fit within ~1e-10
    fit: str = field(default="standard", metadata=check(one_of("standard", "sufficient")))
    batch_maps: int = field(default=1000, metadata=check(positive))  # fit=sufficient: maps per batch


@dataclass
class ContrastConfig:
    """One contrast: a name, an expression over design columns (or weights), and its type."""

    name: str = ""
    expr: Any = None
    type: Optional[str] = field(default=None, metadata=check(one_of(None, "t", "F")))


@dataclass
class ExecutorConfig:
    """Where the voxel loop and the permutations run: local threads, or Dask workers (issue 13).

    ``engine: dask`` connects to ``address`` when it is set, else starts a cluster for the run: ``cluster: local``
    (a ``LocalCluster`` on this machine) or ``slurm`` / ``pbs`` (dask-jobqueue, one job per ``n_workers``).
    """

    engine: str = field(default="local", metadata=check(one_of("local", "dask")))
    address: Optional[str] = None  # scheduler of a running Dask cluster, e.g. tcp://10.0.0.5:8786
    cluster: str = field(default="local", metadata=check(one_of("local", "slurm", "pbs")))
    n_workers: Optional[int] = field(default=None, metadata=check(positive))  # null: the run's n_jobs
    threads_per_worker: int = field(default=1, metadata=check(positive))
    processes: bool = True  # local cluster: worker processes (false: threads of this process)
    memory_limit: str = "auto"  # per worker, e.g. "4GB"; "auto": the machine's memory shared by the workers
    retries: int = field(default=3, metadata=check(non_negative))  # resubmissions of a task that raised
    connect_timeout: float = field(default=20.0, metadata=check(positive))  # seconds to reach the scheduler
    dashboard_address: str = ":0"  # where the dashboard listens (":0": any free port)
    share_files: bool = True  # memory-mapped data travel to workers as a file name (workers see the same files)
    # batch clusters (dask-jobqueue): one job per worker
    queue: Optional[str] = None  # SLURM partition / PBS queue
    account: Optional[str] = None
    walltime: str = "01:00:00"
    cores: int = field(default=1, metadata=check(positive))  # per job
    memory: str = "4GB"  # per job
    job_extra: list[str] = field(default_factory=list)  # extra #SBATCH / #PBS directives, e.g. ["--qos=long"]
    local_directory: Optional[str] = None  # workers' scratch (node-local disk)


@dataclass
class RunSettings:
    """Everything a run needs, typed and validated.

    Field order is the order of the composed config (groups first, then what names the analysis, then how it runs),
    so the recorded config.yaml reads the same whichever way it was built.
    """

    data: DataConfig = field(default_factory=DataConfig)
    design: DesignConfig = field(default_factory=DesignConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    correction: dict[str, Any] = field(default_factory=dict)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    name: str = "analysis"  # experiment folder under output_root
    contrasts: list[ContrastConfig] = field(default_factory=list)
    seed: int = 0
    n_jobs: int = 1
    progress: Optional[bool] = None  # None: a progress bar only when a terminal is watching (stderr is a tty)
    report: bool = True
    memory_budget_gb: Optional[float] = None  # None: keep the data in memory; a number: voxel chunks within it
    overwrite: bool = False
    resume: bool = False
    output_root: str = "experiments"
    cache: bool = True  # reuse loaded data across runs/jobs with the same inputs and data settings
    cache_dir: Optional[str] = None  # None: <output_root>/.cache when the run folder is under output_root
    cache_max_gb: float = 5.0  # size cap of the data cache (least recently used entries are evicted)


GROUPS = ("data", "design", "correction", "model", "executor")  # config groups: one option file each
TOP_LEVEL_KEYS = {f.name for f in dataclasses.fields(RunSettings)} | {"experiment", "hydra"}


def schema_defaults(cls: type) -> dict[str, Any]:
    """The defaults of a schema dataclass as plain values, in field order (what Hydra composes options onto)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def run_defaults() -> dict[str, Any]:
    """Defaults of the top-level settings that are not config groups (name, contrasts, seed, n_jobs, ...)."""
    return {k: v for k, v in schema_defaults(RunSettings).items() if k not in GROUPS}


def recorded_config(settings: RunSettings, resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved config with each group's values as its schema types them (6 given for a float becomes 6.0).

    Keys and their order stay those of ``resolved``; only values change, so one analysis always records one config
    (and one config hash) whether a number was typed as 6 or 6.0.
    """
    out = dict(resolved)
    for group in ("data", "design", "model", "executor"):
        if isinstance(out.get(group), dict):
            typed = dataclasses.asdict(getattr(settings, group))
            out[group] = {k: typed.get(k, v) for k, v in out[group].items()}
    if isinstance(out.get("correction"), dict):
        out["correction"] = {
            method: ({k: dataclasses.asdict(settings.correction[method]).get(k, v) for k, v in params.items()}
                     if isinstance(params, dict) and method in settings.correction else params)
            for method, params in out["correction"].items()}
    return out


def build_settings(config: Any) -> RunSettings:
    """Convert the composed config (DictConfig or dict) into validated settings; RunnerError on any problem."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from omegaconf.errors import OmegaConfBaseException

    if isinstance(config, (DictConfig, ListConfig)):
        try:
            config = OmegaConf.to_container(config, resolve=True)
        except OmegaConfBaseException as error:  # a broken ${...} interpolation
            key = getattr(error, "full_key", None)
            text = str(getattr(error, "msg", None) or error).splitlines()[0]
            raise RunnerError(f"{key}: {text}" if key else text) from None
    config = dict(config or {})
    config.pop("hydra", None)
    config.pop("experiment", None)
    _refuse_unknown(config, TOP_LEVEL_KEYS, "")
    data = convert(DataConfig, config.get("data") or {}, "data")
    design = convert(DesignConfig, config.get("design") or {}, "design")
    contrasts = _contrasts(config.get("contrasts"))
    correction = _corrections(config.get("correction"))
    model = convert(ModelConfig, config.get("model") or {}, "model")
    _check_mixed_effects(model, data, correction)
    _check_modalities(data, correction)
    executor = convert(ExecutorConfig, config.get("executor") or {}, "executor")
    top = {k: v for k, v in config.items()
           if k not in ("data", "design", "contrasts", "correction", "model", "executor")}
    settings = RunSettings(data=data, design=design, contrasts=contrasts, correction=correction, model=model,
                           executor=executor,
                           **{k: _coerce(f"{k}", v, _field_types(RunSettings)[k]) for k, v in top.items()})
    if settings.n_jobs < 1:
        raise RunnerError(f"n_jobs must be >= 1, got {settings.n_jobs}")
    non_negative("seed", settings.seed)  # numpy seeds are non-negative integers
    if settings.memory_budget_gb is not None:
        positive("memory_budget_gb", settings.memory_budget_gb)
    positive("cache_max_gb", settings.cache_max_gb)
    if executor.engine != "dask" and executor.address:
        raise RunnerError(f"executor.address={executor.address} is a Dask scheduler: add executor=dask")
    sources = [k for k in ("demo", "table", "glob", "root") if getattr(data, k)]
    if data.image_4d is None and not sources:
        raise RunnerError("no input data: set data.table, data.glob, data.image_4d, data.root (BIDS) or data.demo")
    if design.bids_model is not None:
        from runner.bids_model import apply_bids_model

        settings = apply_bids_model(settings)
    if (data.annotation_left or data.annotation_right) and not (data.mesh or data.mesh_left or data.mesh_right):
        raise RunnerError("data.annotation_left / data.annotation_right label peaks on a mesh: set data.mesh (or "
                          "data.mesh_left and data.mesh_right) for a surface analysis")
    if data.mesh or data.mesh_left or data.mesh_right:
        for key in ("glob", "image_4d", "mask"):
            if getattr(data, key):
                raise RunnerError(f"data.{key} is for volumes; surface analyses (data.mesh) read a table with "
                                  "path_left and path_right columns and mask the medial wall")
    if design.formula is None and design.matrix is None:
        raise RunnerError("set design.formula (e.g. '1') or design.matrix")
    if design.matrix is not None and design.formula not in (None, "1"):
        raise RunnerError(f"design.formula {design.formula!r} and design.matrix {design.matrix} are both set; "
                          "the matrix is used as it is, so drop the formula (design.formula=null) or the matrix")
    return settings


def _check_mixed_effects(model: ModelConfig, data: DataConfig, correction: dict[str, Any]) -> None:
    """What model=mfx cannot do: smoothing (the variance maps would have to be smoothed by the squared kernel),
    variance groups in permutation methods (the first-level variances already weigh every map), the validity
    family (its null simulations fit OLS) and npc (it combines OLS partial tests)."""
    if model.kind != "mfx":
        return
    if model.fit == "sufficient":
        raise RunnerError("model.fit=sufficient sums ordinary least squares statistics; model=mfx re-weights every "
                          "voxel's maps by iteration and needs them all: use model.fit=standard with model=mfx")
    if data.smoothing_fwhm:
        raise RunnerError("data.smoothing_fwhm smooths the effect maps but not their first-level variances, which "
                          "model=mfx uses; smooth at the first level and unset data.smoothing_fwhm")
    from runner.inference.registry import get

    simulated = [name for name in correction if get(name).family == "validity"]
    if simulated:
        raise RunnerError(f"correction {simulated[0]} simulates null data for the OLS model, not model=mfx; use "
                          "model=ols for it (benchmarks/bench_mfx_permutation.py measures the mixed-effects methods)")
    if "npc" in correction:
        raise RunnerError("correction npc combines OLS partial tests, not model=mfx's weighted statistics; use "
                          "across_contrasts=true on a permutation method for FWE over contrasts with model=mfx")
    grouped = [name for name, params in correction.items()
               if get(name).family == "permutation" and getattr(params, "variance_groups", None)]
    if grouped:
        raise RunnerError(f"correction.{grouped[0]}.variance_groups is for model=ols: with model=mfx each map is "
                          "weighted by its own first-level variance already; unset variance_groups")


def _check_modalities(data: DataConfig, correction: dict[str, Any]) -> None:
    """``correction.npc.modalities``: maps listed in a table (4D and BIDS inputs have no path columns), each column
    once and not the input maps' own column (the first modality)."""
    columns = list(getattr(correction.get("npc"), "modalities", None) or [])
    if not columns:
        return
    if data.image_4d or data.root:
        source = "data.image_4d (one 4D file)" if data.image_4d else "data=bids (maps found by their entities)"
        raise RunnerError(f"correction.npc.modalities reads further maps from columns of the input table; {source} "
                          "has no such columns: list the maps in a table (data.table, one column per modality)")
    repeated = sorted({c for c in columns if columns.count(c) > 1} | ({data.path_column} & set(columns)))
    if repeated:
        raise RunnerError(f"correction.npc.modalities names {', '.join(map(repr, repeated))} twice (the input maps' "
                          f"column {data.path_column!r} is always the first modality); name each further "
                          "modality's column once")


def convert(cls: type, mapping: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys, types and ranges (errors name ``prefix.key``)."""
    if not isinstance(mapping, dict):
        raise RunnerError(f"{prefix} must be a mapping of settings, got {mapping!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _refuse_unknown(mapping, fields, prefix)
    types_ = _field_types(cls)
    values = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else key
        value = _coerce(name, value, types_[key])
        range_check = fields[key].metadata.get("check")
        if range_check is not None and value is not None:
            range_check(name, value)
        values[key] = value
    return cls(**values)


def _refuse_unknown(mapping: dict, known: Any, prefix: str) -> None:
    """Refuse keys the schema does not have, naming the closest valid key."""
    def full(key: str) -> str:
        return f"{prefix}.{key}" if prefix else str(key)

    for key in mapping:
        if key not in known:
            near = closest(str(key), known)
            hint = ("did you mean " + " or ".join(full(k) for k in near) + "?" if near
                    else "allowed: " + ", ".join(sorted(full(k) for k in known)))
            raise RunnerError(f"unknown key {full(key)} — {hint}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a type annotation (Optional, bool, int, float, str, list[float], Any)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _coerce(name, value, inner[0])
    if value is None:
        raise RunnerError(f"{name} must be set (got null)")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise RunnerError(f"{name} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float)
                                                                              and not value.is_integer()):
            raise RunnerError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RunnerError(f"{name} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise RunnerError(f"{name} must be text, got {value!r}")
        if "\x00" in value:
            raise RunnerError(f"{name} contains a NUL character")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise RunnerError(f"{name} must be a mapping of key: value, got {value!r}")
        _, item = typing.get_args(annotation) or (Any, Any)
        return {str(k): _coerce(f"{name}.{k}", v, item) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (item,) = typing.get_args(annotation) or (Any,)
        return [_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    return value


def _contrasts(value: Any) -> list[ContrastConfig]:
    if value is None:
        return []
    if isinstance(value, dict):  # {name: expr} shorthand
        value = [{"name": k, "expr": v} for k, v in value.items()]
    if not isinstance(value, list):
        raise RunnerError(f"contrasts must be a list of {{name, expr, type}}, got {value!r}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"name": item, "expr": item}
        contrast = convert(ContrastConfig, item, f"contrasts[{i}]")
        if not contrast.name:
            raise RunnerError(f"contrasts[{i}] has no name")
        if contrast.expr is None:
            raise RunnerError(f"contrasts[{i}] ({contrast.name}) has no expr")
        out.append(contrast)
    names = [c.name for c in out]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise RunnerError(f"contrast name {duplicate!r} is used twice")
    return out


def correction_schemas() -> dict[str, type]:
    """Parameter schema of every correction method, from the registry of inference methods."""
    from runner.inference.registry import schemas

    return schemas()


def _corrections(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        value = {value: {}}
    if isinstance(value, list):
        value = {str(v): {} for v in value}
    known = correction_schemas()
    if not isinstance(value, dict):
        raise RunnerError(f"correction must name methods ({', '.join(known)}), got {value!r}")
    out = {}
    for method, params in value.items():
        if method not in known:
            raise RunnerError(f"unknown correction {method!r}; {did_you_mean(str(method), known)}")
        out[method] = convert(known[method], params or {}, f"correction.{method}")
    return out
