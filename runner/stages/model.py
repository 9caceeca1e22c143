"""Fit the model at every voxel and write each contrast's maps (effect, variance, t/F, z, p)."""

from __future__ import annotations

import logging

from runner import model
from runner.chunks import memory_budget_bytes
from runner.config import RunSettings
from runner.contrasts import Contrast
from runner.data.loader import GroupData
from runner.design import Design
from runner.execution import Executor
from runner.glm import ContrastResult

log = logging.getLogger("runner")


def fit(settings: RunSettings, data: GroupData, design: Design,
        contrasts: list[Contrast], executor: Executor | None = None) -> dict[str, ContrastResult]:
    """OLS fit of every contrast over voxel chunks within the memory budget (on ``executor``, else n_jobs threads)."""
    fitted = model.fit_contrasts(data.Y, design.matrix.to_numpy(dtype=float), contrasts,
                                 memory_budget_bytes=memory_budget_bytes(settings.memory_budget_gb),
                                 n_jobs=settings.n_jobs, executor=executor)
    log.info("fitted OLS at %d voxel(s), %d degrees of freedom", data.n_voxels, next(iter(fitted.values())).dof)
    return fitted
