"""The analysis from config to files: prepare -> fit -> contrast maps -> corrections -> report."""

from __future__ import annotations

from typing import Any

import yaml

from runner.config import RunSettings
from runner.data.loader import validate_inputs
from runner.data.surface import input_records, is_surface
from runner.outputs import bids_derivative, results
from runner.preflight import check_analysis
from runner.outputs.writer import OutputWriter
from runner.stages import model as model_stage
from runner.stages.execution import run_executor
from runner.stages.inference import run_corrections
from runner.stages.prepare import (
    gather_inputs,
    load_with_progress,
    make_contrasts,
    make_design,
    table_path,
    table_source,
)


def run_stages(settings: RunSettings, writer: OutputWriter, timings: Any, resolved: dict[str, Any],
               fields: dict[str, Any]) -> dict[str, Any]:
    """Run every stage into ``writer``; fill the manifest ``fields`` as facts become known; return the summary."""
    with run_executor(settings) as executor:  # before any data are read; closed however the run ends
        return _stages(settings, writer, timings, resolved, fields, executor)


def _stages(settings: RunSettings, writer: OutputWriter, timings: Any, resolved: dict[str, Any],
            fields: dict[str, Any], executor: Any) -> dict[str, Any]:
    writer.text(yaml.safe_dump(resolved, sort_keys=False), name="config.yaml", kind="config")
    writer.json(bids_derivative.dataset_description(settings.name), name=bids_derivative.DESCRIPTION_NAME,
                kind="description")  # the run folder is a BIDS derivative dataset
    with timings.stage("inputs"):
        inputs = gather_inputs(settings)
        design, inputs = make_design(settings, inputs)
        contrasts = make_contrasts(settings, design)
        # every header, before any voxel is decoded (GIFTI surface maps are checked as they are read)
        checked = None if is_surface(settings.data) else validate_inputs(inputs, settings.data)
        check_analysis(settings, design, None if checked is None else checked.grid.shape)  # blocks, memory, figures
        variance_refs = _variance_images(settings, inputs) if settings.model.kind == "mfx" else ()
        modality_refs = _modality_images(settings, inputs)
    with timings.stage("load"):
        data, fields["data_cache"] = load_with_progress(inputs, settings, checked, writer.run_dir)
    fields["inputs"] = [record for ref in data.inputs for record in input_records(ref, data.input_sha256)]
    fields["n_maps"], fields["n_voxels"] = data.n_maps, data.n_voxels
    fields["notes"] = list(inputs.notes) + list(design.notes) + list(data.notes)
    modalities = None
    if modality_refs:
        with timings.stage("load"):
            modalities = _load_modalities(settings, data, modality_refs, fields)
    with timings.stage("design_outputs"):
        results.write_design(writer, design, contrasts, report=settings.report)
    variances = None
    with timings.stage("fit"):
        if settings.model.kind == "mfx":
            fitted, variances = _fit_mixed_effects(settings, writer, data, variance_refs, design, contrasts, fields)
        else:
            fitted = model_stage.fit(settings, data, design, contrasts, executor)
    fields["dof"] = {c.name: fitted[c.name].dof for c in contrasts}
    with timings.stage("maps"):
        fields["notes"].extend(results.write_contrast_maps(writer, data, contrasts, fitted))
        if settings.report:
            for contrast in contrasts:
                results.write_covariate_figure(writer, data, design, contrast, fitted[contrast.name])
    summary, notes = run_corrections(writer, settings, data, design, contrasts, fitted, timings, executor,
                                     variances=variances, modalities=modalities)
    fields["notes"].extend(notes)
    if settings.report:
        with timings.stage("report"):
            from runner.outputs import report

            report.write_report(writer, settings, data, design, contrasts, fields, summary)
    return summary


def _variance_images(settings: RunSettings, inputs: Any) -> tuple[Any, ...]:
    """model=mfx: the variance map of every kept row (its column is checked before any map is read)."""
    from runner.data.variances import variance_images

    source, folder = table_source(settings)
    return variance_images(inputs.table, settings.data.variance_column, folder, source)


def _modality_images(settings: RunSettings, inputs: Any) -> dict[str, tuple[Any, ...]]:
    """``correction.npc.modalities``: each named column's maps for every kept row, checked before any map is read
    (each column once, tables only: checked with the settings). Surface tables name a GIFTI pair per modality
    (``<column>_left`` / ``<column>_right``) or, for CIFTI inputs, one ``.dscalar.nii`` column."""
    npc = settings.correction.get("npc")
    columns = list(getattr(npc, "modalities", None) or [])
    if not columns:
        return {}
    source, folder = table_source(settings)
    if is_surface(settings.data):
        from runner.data.cifti import CiftiRef
        from runner.data.surface import companion_surface_images

        table = table_path(settings)
        cifti = isinstance(inputs.images[0], CiftiRef)
        return {column: companion_surface_images(inputs.table, table, column, cifti, "correction.npc.modalities")
                for column in columns}
    from runner.data.companions import companion_images

    return {column: companion_images(inputs.table, column, folder, source, f"modality {column} map",
                                     "correction.npc.modalities") for column in columns}


def _load_modalities(settings: RunSettings, data: Any, refs: dict[str, tuple[Any, ...]],
                     fields: dict[str, Any]) -> dict[str, Any]:
    """Each further modality's maps on the input maps' grid (or mesh) and mask, smoothed as they were; recorded as
    inputs."""
    from runner.data.companions import load_companions
    from runner.data.surface import load_surface_companions

    loaded = {}
    for column, images in refs.items():
        what = f"modality {column} map"
        if data.surface is not None:
            loaded[column], digests = load_surface_companions(images, data, settings.data, what)
        else:
            loaded[column], digests = load_companions(
                images, data.mask, data.affine, what=what, allow_resample=settings.data.resample,
                smoothing_fwhm=settings.data.smoothing_fwhm, dtype=data.Y.dtype, n_jobs=settings.n_jobs)
        fields["inputs"].extend({**record, "role": f"modality {column}"} for ref in images
                                for record in input_records(ref, digests))
    return loaded


def _fit_mixed_effects(settings: RunSettings, writer: OutputWriter, data: Any, images: tuple[Any, ...],
                       design: Any, contrasts: Any, fields: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """model=mfx: load the first-level variance maps, fit, and write the between-subject variance map; the fitted
    contrasts and the variances (the permutation methods refit the model on sign-flipped data)."""
    from runner.data.variances import load_variances

    variances, digests = load_variances(images, data.mask, data.affine, allow_resample=settings.data.resample,
                                        n_jobs=settings.n_jobs)
    fields["inputs"].extend({"path": str(ref), "sha256": digests.get(str(ref.path)), "role": "variance"}
                            for ref in images)
    fitted, tau2, voxel_dof, notes = model_stage.fit_mfx(settings, data, variances, design, contrasts)
    fields["notes"].extend(notes)
    writer.map(data.unmask(tau2), data.affine, contrast=None, stat="tau2", name="stat-tau2_statmap.nii.gz")
    if settings.model.dof == "effective":  # the t/F reference of every contrast's p and z, voxel by voxel
        writer.map(data.unmask(voxel_dof), data.affine, contrast=None, stat="dof", name="stat-dof_statmap.nii.gz")
    return fitted, variances
