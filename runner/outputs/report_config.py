"""The report's configuration section as plain data: the key settings, every parameter of every configured correction
beside its schema default, and the resolved configuration's text.

Defaults are read from the settings' own dataclass fields (``dataclasses.fields(type(params))``), the one place they
are written, so the page states what a run used without restating any default here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from runner.outputs.report_tables import Parts, code, fmt, parts
from runner.outputs.writer import OutputEntry

NO_DEFAULT = object()  # a schema field without a default (required)
SOURCES = (("image_4d", "4D image"), ("glob", "files"), ("table", "table"), ("demo", "demo dataset"))


def key_settings(settings: Any) -> list[tuple[str, Parts]]:
    """(label, segments) for the settings a reader looks for first: data, mask, smoothing, design, seed, n_jobs."""
    data = getattr(settings, "data", None)
    design = getattr(settings, "design", None)
    out: list[tuple[str, Parts]] = []
    if data is not None:
        source = next(((label, getattr(data, key)) for key, label in SOURCES if getattr(data, key, None)), None)
        if source:
            out.append(("data", parts(f"{source[0]} ", code(source[1]))))
        if getattr(data, "query", None):
            out.append(("data.query", parts(code(data.query))))
        mesh = getattr(data, "mesh", None) or (
            f"{data.mesh_left} + {data.mesh_right}" if getattr(data, "mesh_left", None) else None)
        if mesh:  # a surface analysis: the mesh and its mask, smoothing on the mesh
            wall = getattr(data, "exclude_medial_wall", True) and getattr(data, "mesh", None)
            out.append(("mesh", parts(code(mesh))))
            user_mesh = not getattr(data, "mesh", None)
            out.append(("mask", parts("cortex (medial wall left out)" if wall else
                                      "vertices with data (those 0 in every map or outside the CIFTI brain models "
                                      "left out)" if user_mesh else "every vertex")))
            fwhm = getattr(data, "smoothing_fwhm", None)
            out.append(("smoothing", parts(f"{fmt(fwhm)} mm FWHM on the mesh" if fwhm else "none")))
            atlas = [getattr(data, k, None) for k in ("annotation_left", "annotation_right")]
            if any(atlas):  # peaks' labels in the cluster tables
                out.append(("atlas", parts(code(" + ".join(str(a) for a in atlas if a)))))
        elif getattr(data, "mask", None):
            out.append(("mask", parts(code(data.mask))))
        else:
            strategy = getattr(data, "mask_strategy", "nonzero")
            threshold = (f", threshold {fmt(data.mask_threshold)}" if strategy in ("absolute", "relative") else "")
            out.append(("mask", parts(f"automatic ({strategy}{threshold})")))
        if not mesh:
            fwhm = getattr(data, "smoothing_fwhm", None)
            out.append(("smoothing", parts(f"{fmt(fwhm)} mm FWHM" if fwhm else "none")))
    if design is not None:
        if getattr(design, "matrix", None):
            out.append(("design", parts("matrix ", code(design.matrix))))
        else:
            out.append(("design.formula", parts(code(design.formula))))
        out.append(("missing values", parts("rows dropped" if getattr(design, "drop_missing", False) else "refused")))
    for key in ("seed", "n_jobs"):
        if hasattr(settings, key):
            out.append((key, parts(getattr(settings, key))))
    return out


def schema_default(spec: dataclasses.Field) -> Any:
    """A dataclass field's default (calling its factory), or ``NO_DEFAULT`` when the field is required."""
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return NO_DEFAULT


def correction_parameters(settings: Any) -> list[dict[str, Any]]:
    """Per configured correction, every parameter: its value, its schema default and whether it was left there.

    Returns
    -------
    list of dict
        ``{"method", "schema", "parameters": [{"key", "value", "default", "at_default"}]}`` in configuration order;
        ``schema`` is the settings class name (None for plain mappings, which have no defaults to compare with).
    """
    out = []
    for method, params in (getattr(settings, "correction", None) or {}).items():
        rows = []
        if dataclasses.is_dataclass(params) and not isinstance(params, type):
            for spec in dataclasses.fields(type(params)):
                value, default = getattr(params, spec.name), schema_default(spec)
                known = default is not NO_DEFAULT
                rows.append({"key": f"correction.{method}.{spec.name}", "value": config_value(value),
                             "default": config_value(default) if known else "required",
                             "at_default": known and same_value(value, default)})
            schema = type(params).__name__
        else:
            rows = [{"key": f"correction.{method}.{key}", "value": config_value(value), "default": None,
                     "at_default": False} for key, value in dict(params or {}).items()]
            schema = None
        out.append({"method": str(method), "schema": schema, "parameters": rows})
    return out


def same_value(value: Any, default: Any) -> bool:
    """Equal as configuration values (``1 == 1.0``; a type mismatch such as True vs 1 counts as different)."""
    if isinstance(value, bool) != isinstance(default, bool):
        return False
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return len(value) == len(default) and all(same_value(a, b) for a, b in zip(value, default))
    try:
        return bool(value == default)
    except (TypeError, ValueError):
        return False


def config_value(value: Any) -> str:
    """A configuration value as a user writes it on the command line: null, true/false, shortest exact number."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return fmt(value) if value.is_integer() else repr(float(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(config_value(v) for v in value) + "]"
    return str(value)


def config_text(run_dir: Path, entries: list[OutputEntry], settings: Any) -> tuple[str, str]:
    """The registered config.yaml's text when there is one, else the settings as YAML; and where it came from."""
    entry = next((e for e in entries if e.kind == "config"), None)
    if entry is not None and (Path(run_dir) / entry.path).is_file():
        return (Path(run_dir) / entry.path).read_text(encoding="utf-8", errors="replace"), entry.path
    import yaml

    values = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else {}
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=False), "settings"
