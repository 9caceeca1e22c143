"""Maps that go with each input map, named row by row in a table column: read on the input maps' grid and mask.

Two uses: the first-level variance maps of the mixed-effects model (:mod:`runner.data.variances`) and the other
modalities of a non-parametric combination (``correction.npc.modalities``: e.g. FA and MD maps of the same
subjects). Relative paths resolve against the table's folder, as the input maps' do; a map on another grid is
resampled only when ``data.resample`` allows it; values that are not finite inside the mask are refused with the file
named, since every statistic downstream would silently turn into NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from runner.chunks import ordered_map
from runner.data.images import Grid, read_header, read_volume, resample
from runner.data.smoothing import smooth_volume
from runner.data.sources import ImageRef
from runner.errors import RunnerError, did_you_mean

log = logging.getLogger(__name__)

# check(values, path) raises a RunnerError for values the caller's model cannot use; the default refuses NaN / inf
Check = Callable[[np.ndarray, Path], None]


def companion_images(table: pd.DataFrame, column: str, base_folder: Path | None, source: str, what: str,
                     setting: str) -> tuple[ImageRef, ...]:
    """The map named in ``column`` for every row of ``table``.

    ``source`` names the table, ``what`` the maps (e.g. "variance map") and ``setting`` the key that chose the
    column, all for messages; a missing column or an empty cell is refused before any map is read.
    """
    if column not in table.columns:
        raise RunnerError(f"{setting} names column {column!r}, which {source} does not have; "
                          f"{did_you_mean(column, table.columns)}")
    refs = []
    for row, value in enumerate(table[column]):
        if pd.isna(value) or not str(value).strip():
            raise RunnerError(f"{source} row {row + 1} has no {what} in column {column!r} ({setting} needs one "
                              "per map)")
        path = Path(str(value).strip()).expanduser()
        if not path.is_absolute() and base_folder is not None:
            path = base_folder / path
        refs.append(ImageRef(path))
    return tuple(refs)


def refuse_non_finite(values: np.ndarray, path: Path) -> None:
    """The default check: every in-mask value is finite."""
    bad = ~np.isfinite(values)
    if bad.any():
        raise RunnerError(f"{path} has {int(bad.sum())} missing (NaN) or infinite voxel(s) inside the mask of the "
                          "input maps; fix the map or restrict data.mask")


def load_companions(images: tuple[ImageRef, ...], mask: np.ndarray, affine: np.ndarray, *, what: str,
                    allow_resample: bool, smoothing_fwhm: float | None = None, check: Check = refuse_non_finite,
                    dtype: np.dtype | type = np.float64, n_jobs: int = 1) -> tuple[np.ndarray, dict[str, str]]:
    """Read every map on the grid of ``mask`` / ``affine`` and keep its in-mask voxels.

    Parameters
    ----------
    images : one map per row of the data (same order as its rows).
    mask : 3D bool mask of the loaded input maps; columns follow ``np.flatnonzero(mask)``.
    affine : 4x4 affine of the reference grid.
    what : what the maps are, for messages ("variance map", "modality FA map").
    allow_resample : resample maps on another grid (``data.resample``), else refuse them.
    smoothing_fwhm : smooth each map as the input maps were (mm; None or 0: not at all).
    check : called with each map's in-mask values and its path; raises for values the model cannot use.
    dtype : of the returned values (the input maps' ``data.dtype`` for another modality).
    n_jobs : decoding threads.

    Returns
    -------
    (n_maps, n_voxels) values, and the sha256 of every file read.
    """
    grid = Grid(tuple(mask.shape), np.asarray(affine, dtype=float))  # type: ignore[arg-type]

    def read(ref: ImageRef) -> tuple[np.ndarray, str]:
        header = read_header(ref.path, what=what)
        if header.n_volumes > 1:
            raise RunnerError(f"{what} {ref.path} is 4D ({header.n_volumes} volumes); give one 3D map per row")
        volume, digest = read_volume(ref.path, header=header, what=what)
        if not header.grid.same_as(grid):
            if not allow_resample:
                raise RunnerError(f"{what} {ref.path} is not on the grid of the input maps: "
                                  f"{header.grid.difference(grid)}; set data.resample=true to resample it")
            volume = resample(volume, header.grid, grid)
        values = volume[mask]
        check(values, ref.path)
        if smoothing_fwhm:
            values = smooth_volume(volume, grid.affine, smoothing_fwhm)[mask]
        return np.asarray(values, dtype=dtype), digest

    rows = list(ordered_map(read, images, n_jobs=max(1, n_jobs)))
    values = np.vstack([v for v, _ in rows]) if rows else np.empty((0, int(mask.sum())), dtype=dtype)
    log.info("loaded %d %s(s) at %d voxel(s)", len(rows), what, values.shape[1])
    return values, {str(ref.path): digest for ref, (_, digest) in zip(images, rows)}
