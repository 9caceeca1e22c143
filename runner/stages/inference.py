"""Run the correction methods the registry names on every fitted contrast and hand their results to the writers."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from runner.config import RunSettings
from runner.contrasts import Contrast
from runner.data.loader import GroupData
from runner.design import Design
from runner.glm import ContrastResult
from runner.inference import registry
from runner.outputs.method_outputs import write_batch
from runner.outputs.writer import OutputWriter


def run_corrections(writer: OutputWriter, settings: RunSettings, data: GroupData, design: Design,
                    contrasts: list[Contrast], fitted: dict[str, ContrastResult],
                    timings: Any = None, executor: Any = None,
                    variances: Any = None, modalities: Any = None) -> tuple[dict[str, Any], list[str]]:
    """Every configured method on every contrast, batch by batch (a family's shared pass is one batch).

    ``variances`` are the first-level variances (n_maps x n_voxels) with model=mfx, for the methods that refit it;
    ``modalities`` the further maps of the same subjects some methods combine (``{column: n_maps x n_voxels}``).

    Returns the summary ``{"contrasts": {contrast: {method: row}}}`` and the notes for the report.
    """
    summary: dict[str, Any] = {"contrasts": {}}
    notes: list[str] = []
    for batch_names in registry.batches(list(settings.correction)):
        family = registry.get(batch_names[0]).family
        stage = timings.stage(family) if timings is not None else nullcontext()
        with stage:
            method = registry.get(batch_names[0])
            params = {name: settings.correction[name] for name in batch_names}
            every = [registry.ContrastInputs(data=data, design=design, contrast=contrast, fit=fitted[contrast.name],
                                             settings=settings, executor=executor, variances=variances,
                                             modalities=modalities)
                     for contrast in contrasts]
            # one contrast at a time (generators: each is written before the next runs), or all at once
            outcomes = (method.run_contrasts(every, params) if method.run_contrasts is not None
                        else ((inputs.contrast.name, method.run(inputs, params)) for inputs in every))
            for label, batch in outcomes:
                write_batch(writer, data, label, batch, settings.report)
                rows = summary["contrasts"].setdefault(label, {})
                for name in batch_names:
                    result = batch.results[name]
                    rows[name] = dict(result.summary, family=family)
                    notes.extend(result.notes)
                notes.extend(batch.notes)
    return summary, notes
