"""Inputs, design and contrasts of an analysis, and loading the maps (through the data cache)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from runner.chunks import memory_budget_bytes
from runner.config import RunSettings
from runner.contrasts import Contrast, build_contrast
from runner.data.checks import validate_table
from runner.data.loader import CheckedInputs, GroupData, load_group_data
from runner.data.sources import InputSet, apply_query, from_4d, from_glob, from_table
from runner.data.surface import from_surface_table, is_surface, load_surface_data
from runner.design import Design, build_design
from runner.errors import RunnerError
from runner.outputs.naming import check_distinct_labels

log = logging.getLogger("runner")


def gather_inputs(settings: RunSettings) -> InputSet:
    """The input table and images named by the ``data`` group (demo, table, glob, 4D or BIDS)."""
    data = settings.data
    if data.root and not data.image_4d:
        from runner.data.bids import from_bids

        inputs = from_bids(Path(data.root), data.entities, Path(data.participants) if data.participants else None,
                           data.subject_column, settings.design.drop_missing)
    elif data.image_4d:
        from runner.data.images import read_header

        header = read_header(Path(data.image_4d), what="data.image_4d")
        inputs = from_4d(header.path, Path(data.table) if data.table else None, header.n_volumes)
    elif data.glob:
        inputs = from_glob(data.glob, Path(data.participants) if data.participants else None,
                           data.subject_pattern, data.subject_column)
    else:
        table = data.table
        if table is None and data.demo:
            from runner.demo.datasets import ensure_demo

            table = str(ensure_demo(data.demo))
            log.info("demo dataset %r: %s", data.demo, table)
        if is_surface(data):
            inputs = from_surface_table(Path(table), data.path_left_column,  # type: ignore[arg-type]
                                        data.path_right_column, data.path_column)
        else:
            inputs = from_table(Path(table), data.path_column)  # type: ignore[arg-type]
            refuse_surface_files(inputs)
    if data.query:
        inputs = apply_query(inputs, data.query)
    log.info("inputs: %d map(s), table columns: %s", len(inputs.images), ", ".join(map(str, inputs.table.columns)))
    return inputs


def refuse_surface_files(inputs: InputSet) -> None:
    """A volume analysis of CIFTI or GIFTI files: say which setting makes it a surface analysis."""
    from runner.data.cifti import is_cifti

    for ref in inputs.images:
        if is_cifti(ref.path) or str(ref.path).lower().endswith(".gii"):
            raise RunnerError(f"input {ref.path} is a surface file (CIFTI-2 or GIFTI): set data.mesh=fsaverage5, or "
                              "data.mesh_left and data.mesh_right (.surf.gii), for a surface analysis")


def table_source(settings: RunSettings) -> tuple[str, Path | None]:
    """The table that carries the covariates (and ``data.variance_column``), named for messages, and the folder its
    relative paths resolve against: data.table (or the demo's table), or data.participants for a glob."""
    data = settings.data
    if data.glob and not data.image_4d:
        path = data.participants
        return (f"data.participants {path}", Path(path).parent) if path else ("the data.glob file list", None)
    table = table_path(settings)
    return (f"data.table {table}", table.parent) if table else ("the data.image_4d table", None)


def table_path(settings: RunSettings) -> Path | None:
    """The table of a table analysis: data.table, or the demo's table.tsv (generated when needed)."""
    data = settings.data
    if data.table is not None:
        return Path(data.table)
    if data.demo and not data.image_4d and not data.glob:
        from runner.demo.datasets import ensure_demo

        return Path(ensure_demo(data.demo))
    return None


def id_column(settings: RunSettings, inputs: InputSet) -> str | None:
    """The column naming rows in messages: ``data.id_column``, else participant_id / subject / subject_id."""
    if settings.data.id_column:
        return settings.data.id_column
    return next((c for c in ("participant_id", "subject", "subject_id") if c in inputs.table.columns), None)


def make_design(settings: RunSettings, inputs: InputSet) -> tuple[Design, InputSet]:
    """Design matrix, dropping (or refusing) rows with missing values; the inputs restricted to the kept rows."""
    inputs = validate_table(inputs, None if settings.design.matrix else settings.design.formula,
                            id_column(settings, inputs))
    design = build_design(inputs.table, formula=None if settings.design.matrix else settings.design.formula,
                          matrix_path=Path(settings.design.matrix) if settings.design.matrix else None,
                          drop_missing=settings.design.drop_missing, id_column=id_column(settings, inputs))
    if len(design.dropped):
        keep = ~inputs.table.index.isin(design.dropped.index)
        inputs = inputs.select(pd.Series(keep))
    log.info("design: %d map(s) x %d column(s): %s", *design.matrix.shape, ", ".join(design.columns))
    return design, inputs


def make_contrasts(settings: RunSettings, design: Design) -> list[Contrast]:
    """Contrast matrices of the configured contrasts over the design's columns."""
    if not settings.contrasts:
        raise RunnerError("no contrasts: add e.g. contrasts=[{name:mean,expr:Intercept}]; design columns are "
                          + ", ".join(design.columns))
    check_distinct_labels(c.name for c in settings.contrasts)
    contrasts = [build_contrast(c.name, c.expr, design.columns, c.type) for c in settings.contrasts]
    for c in contrasts:
        log.info("contrast %s (%s): %s", c.name, c.stat_type,
                 "; ".join(" ".join(f"{w:+g}*{col}" for w, col in zip(row, design.columns) if w) for row in c.matrix))
    return contrasts


def load_with_progress(inputs: InputSet, settings: RunSettings, checked: CheckedInputs | None = None,
                       scratch_dir: Path | None = None) -> tuple[GroupData, str]:
    """Load the maps (from the data cache when another run already loaded the same inputs the same way).

    Studies larger than half the memory budget are memory-mapped from a file in ``scratch_dir``; once stored in the
    cache (whose entries are the studies' on-disk stores), from the entry's file, which Dask workers map by name.

    Returns the data and the cache outcome: ``"hit"``, ``"miss"`` or ``"off"``.
    """
    from runner.outputs.progress import progress_bar

    def load() -> GroupData:
        with progress_bar(total=len(inputs.images), desc="loading maps", unit="map",
                          enabled=settings.progress) as bar:
            return load_group_data(inputs, settings.data, n_jobs=max(1, settings.n_jobs), progress=bar.update,
                                   memory_budget_bytes=memory_budget_bytes(settings.memory_budget_gb),
                                   scratch_dir=scratch_dir, checked=checked)

    if is_surface(settings.data):  # GIFTI maps are read whole and small: no cache
        with progress_bar(total=len(inputs.images), desc="loading maps", unit="map",
                          enabled=settings.progress) as bar:
            return load_surface_data(inputs, settings.data, progress=bar.update), "off"
    if not settings.cache:
        return load(), "off"
    from runner.data.cache import cache_directory, cached_load

    cache_dir = cache_directory(settings.cache_dir, settings.output_root, scratch_dir)
    if cache_dir is None:
        return load(), "off"
    # the sufficient-statistics fit and Dask workers read the store by blocks: go on from the stored entry's file
    map_stored = settings.model.fit == "sufficient" or (settings.executor.engine == "dask"
                                                         and settings.executor.share_files)
    return cached_load(inputs, settings.data, cache_dir, load, max_bytes=int(settings.cache_max_gb * 1024**3),
                       map_stored=map_stored)
