"""First-level variance maps for the mixed-effects model: one per input map, on the effect maps' grid and mask.

The table names each map's variance map in a column (``data.variance_column``, default ``variance_path``); relative
paths resolve against the table's folder, as the effect maps' do. Each map is read, resampled to the reference grid
when allowed, and reduced to the in-mask voxels of the already loaded effects. A variance that is zero, negative,
NaN or infinite inside the mask is refused with the file named: the model divides by it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from runner.chunks import ordered_map
from runner.data.images import Grid, read_header, read_volume, resample
from runner.data.sources import ImageRef
from runner.errors import RunnerError, did_you_mean

log = logging.getLogger(__name__)


def variance_images(table: pd.DataFrame, column: str, base_folder: Path | None, source: str) -> tuple[ImageRef, ...]:
    """The variance map of every row of ``table`` (column ``column``); ``source`` names the table in messages."""
    if column not in table.columns:
        raise RunnerError(f"model=mfx needs each map's first-level variance: {source} has no column {column!r}; "
                          f"{did_you_mean(column, table.columns)} (or set data.variance_column)")
    refs = []
    for row, value in enumerate(table[column]):
        if pd.isna(value) or not str(value).strip():
            raise RunnerError(f"{source} row {row + 1} has no variance map in column {column!r} (model=mfx needs "
                              "one per map)")
        path = Path(str(value).strip()).expanduser()
        if not path.is_absolute() and base_folder is not None:
            path = base_folder / path
        refs.append(ImageRef(path))
    return tuple(refs)


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
    grid = Grid(tuple(mask.shape), np.asarray(affine, dtype=float))  # type: ignore[arg-type]

    def read(ref: ImageRef) -> tuple[np.ndarray, str]:
        header = read_header(ref.path, what="variance map")
        if header.n_volumes > 1:
            raise RunnerError(f"variance map {ref.path} is 4D ({header.n_volumes} volumes); give one 3D map per row")
        volume, digest = read_volume(ref.path, header=header, what="variance map")
        if not header.grid.same_as(grid):
            if not allow_resample:
                raise RunnerError(f"variance map {ref.path} is not on the grid of the effect maps: "
                                  f"{header.grid.difference(grid)}; set data.resample=true to resample it")
            volume = resample(volume, header.grid, grid)
        values = volume[mask]
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise RunnerError(f"variance map {ref.path} has {int(bad.sum())} zero, negative or missing (NaN) "
                              f"voxel(s) inside the mask (e.g. {values[first]!r}); the mixed-effects model needs a "
                              "positive first-level variance at every voxel: fix the map or restrict data.mask")
        return values, digest

    rows = list(ordered_map(read, images, n_jobs=max(1, n_jobs)))
    S = np.vstack([values for values, _ in rows]) if rows else np.empty((0, int(mask.sum())))
    log.info("loaded %d first-level variance map(s) at %d voxel(s)", len(rows), S.shape[1])
    return S, {str(ref.path): digest for ref, (_, digest) in zip(images, rows)}
