"""Fit the model at every voxel and write each contrast's maps (effect, variance, t/F, z, p)."""

from __future__ import annotations

import logging

import numpy as np

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
    """OLS fit of every contrast over voxel chunks within the memory budget (on ``executor``, else n_jobs threads):
    from the residuals of all maps (``model.fit=standard``) or from sufficient statistics summed over batches of
    ``model.batch_maps`` maps (``model.fit=sufficient``)."""
    X = design.matrix.to_numpy(dtype=float)
    budget = memory_budget_bytes(settings.memory_budget_gb)
    if settings.model.fit == "sufficient":
        from runner.execution import LocalExecutor
        from runner.sufficient import fit_contrasts_by_batches

        fitted = fit_contrasts_by_batches(data.Y, X, contrasts, batch_maps=settings.model.batch_maps,
                                          memory_budget_bytes=budget,
                                          executor=executor or LocalExecutor(settings.n_jobs))
    else:
        fitted = model.fit_contrasts(data.Y, X, contrasts, memory_budget_bytes=budget, n_jobs=settings.n_jobs,
                                     executor=executor)
    log.info("fitted OLS at %d voxel(s), %d degrees of freedom", data.n_voxels, next(iter(fitted.values())).dof)
    return fitted


def fit_mfx(settings: RunSettings, data: GroupData, variances: np.ndarray, design: Design,
            contrasts: list[Contrast]) -> tuple[dict[str, ContrastResult], np.ndarray, np.ndarray, list[str]]:
    """Mixed-effects fit of every contrast; returns the results, tau2 and the degrees of freedom at every voxel, and
    notes for the report."""
    options = settings.model
    fitted, tau2, voxel_dof, not_converged = model.fit_contrasts_mfx(
        data.Y, variances, design.matrix.to_numpy(dtype=float), contrasts, estimator=options.tau2_estimator,
        knapp_hartung=options.knapp_hartung, dof=options.dof,
        memory_budget_bytes=memory_budget_bytes(settings.memory_budget_gb), n_jobs=settings.n_jobs)
    dof = next(iter(fitted.values())).dof
    log.info("fitted mixed effects at %d voxel(s): tau2 by %s (zero at %d voxel(s), median %.4g), %s variance, "
             "%s degrees of freedom (median %.1f, at most %d)", data.n_voxels, options.tau2_estimator.upper(),
             int(np.sum(tau2 == 0)), float(np.median(tau2)) if tau2.size else float("nan"),
             "Knapp-Hartung" if options.knapp_hartung else "model-based", options.dof,
             float(np.median(voxel_dof)) if voxel_dof.size else float("nan"), dof)
    notes = [f"mixed effects (model=mfx): tau2 by {'REML' if options.tau2_estimator == 'reml' else 'DerSimonian-Laird'}"
             f" (zero at {int(np.sum(tau2 == 0))} of {tau2.size} voxel(s)), weighted least squares, "
             f"{'Knapp-Hartung' if options.knapp_hartung else 'model-based'} variance, t/F on "
             + (f"the effective degrees of freedom (median {float(np.median(voxel_dof)):.1f}, at most {dof}; "
                "stat-dof_statmap.nii.gz)" if options.dof == "effective" else f"{dof} degrees of freedom")]
    if not_converged:
        message = (f"REML did not converge within {model.mfx.MAX_ITERATIONS} iterations at {not_converged} voxel(s); "
                   "their tau2 is the last iterate (try model.tau2_estimator=dl)")
        log.warning(message)
        notes.append(message)
    return fitted, tau2, voxel_dof, notes
