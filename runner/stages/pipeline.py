"""The analysis from config to files: prepare -> fit -> contrast maps -> corrections -> report."""

from __future__ import annotations

from typing import Any

import yaml

from runner.config import RunSettings
from runner.data.loader import validate_inputs
from runner.outputs import results
from runner.preflight import check_analysis
from runner.outputs.writer import OutputWriter
from runner.stages import model as model_stage
from runner.stages.execution import run_executor
from runner.stages.inference import run_corrections
from runner.stages.prepare import gather_inputs, load_with_progress, make_contrasts, make_design


def run_stages(settings: RunSettings, writer: OutputWriter, timings: Any, resolved: dict[str, Any],
               fields: dict[str, Any]) -> dict[str, Any]:
    """Run every stage into ``writer``; fill the manifest ``fields`` as facts become known; return the summary."""
    with run_executor(settings) as executor:  # before any data are read; closed however the run ends
        return _stages(settings, writer, timings, resolved, fields, executor)


def _stages(settings: RunSettings, writer: OutputWriter, timings: Any, resolved: dict[str, Any],
            fields: dict[str, Any], executor: Any) -> dict[str, Any]:
    writer.text(yaml.safe_dump(resolved, sort_keys=False), name="config.yaml", kind="config")
    with timings.stage("inputs"):
        inputs = gather_inputs(settings)
        design, inputs = make_design(settings, inputs)
        contrasts = make_contrasts(settings, design)
        checked = validate_inputs(inputs, settings.data)  # every header, before any voxel is decoded
        check_analysis(settings, design, checked.grid.shape)  # blocks, permutation memory, figure grid
    with timings.stage("load"):
        data, fields["data_cache"] = load_with_progress(inputs, settings, checked, writer.run_dir)
    fields["inputs"] = [{"path": str(ref), "sha256": data.input_sha256.get(str(ref.path))} for ref in data.inputs]
    fields["n_maps"], fields["n_voxels"] = data.n_maps, data.n_voxels
    fields["notes"] = list(inputs.notes) + list(design.notes) + list(data.notes)
    with timings.stage("design_outputs"):
        results.write_design(writer, design, contrasts, report=settings.report)
    with timings.stage("fit"):
        fitted = model_stage.fit(settings, data, design, contrasts, executor)
    fields["dof"] = {c.name: fitted[c.name].dof for c in contrasts}
    with timings.stage("maps"):
        fields["notes"].extend(results.write_contrast_maps(writer, data, contrasts, fitted))
        if settings.report:
            for contrast in contrasts:
                results.write_covariate_figure(writer, data, design, contrast, fitted[contrast.name])
    summary, notes = run_corrections(writer, settings, data, design, contrasts, fitted, timings, executor)
    fields["notes"].extend(notes)
    if settings.report:
        with timings.stage("report"):
            from runner.outputs import report

            report.write_report(writer, settings, data, design, contrasts, fields, summary)
    return summary
