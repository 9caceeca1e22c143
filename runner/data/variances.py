"""First-level variance maps for the mixed-effects model: one per input map, on the effect maps' grid and mask.

The table names each map's variance map in a column (``data.variance_column``, default ``variance_path``); relative
paths resolve against the table's folder, as the effect maps' do. Each map is read, resampled to the reference grid
when allowed, and reduced to the in-mask voxels of the already loaded effects (:mod:`runner.data.companions`). A
variance that is zero, negative, NaN or infinite inside the mask is refused with the file named: the model divides by
it. Variance maps are never smoothed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from runner.data.companions import companion_images, load_companions
from runner.data.sources import ImageRef
from runner.errors import RunnerError, did_you_mean


def variance_images(table: pd.DataFrame, column: str, base_folder: Path | None, source: str) -> tuple[ImageRef, ...]:
    """The variance map of every row of ``table`` (column ``column``); ``source`` names the table in messages."""
    if column not in table.columns:
        raise RunnerError(f"model=mfx needs each map's first-level variance: {source} has no column {column!r}; "
                          f"{did_you_mean(column, table.columns)} (or set data.variance_column)")
    return companion_images(table, column, base_folder, source, "variance map", "model=mfx")


def _refuse_non_positive(values: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise RunnerError(f"variance map {path} has {int(bad.sum())} zero, negative or missing (NaN) "
                          f"voxel(s) inside the mask (e.g. {values[first]!r}); the mixed-effects model needs a "
                          "positive first-level variance at every voxel: fix the map or restrict data.mask")


def load_variances(images: tuple[ImageRef, ...], mask: np.ndarray, affine: np.ndarray, *, allow_resample: bool,
                   n_jobs: int = 1) -> tuple[np.ndarray, dict[str, str]]:
    """Read every variance map, on the grid of ``mask`` / ``affine``, at the in-mask voxels.

    Parameters
    ----------
    images : one variance map per row of the data (same order as its rows).
    mask : 3D bool mask of the loaded effect maps; columns follow ``np.flatnonzero(mask)``.
    affine : 4x4 affine of the reference grid.
    allow_resample : resample maps on another grid (``data.resample``), else refuse them.
    n_jobs : decoding threads.

    Returns
    -------
    (n_maps, n_voxels) float64 variances, and the sha256 of every file read.
    """
    return load_companions(images, mask, affine, what="variance map", allow_resample=allow_resample,
                           check=_refuse_non_positive, n_jobs=n_jobs)
