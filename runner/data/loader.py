"""Inputs -> one (maps x in-mask voxels) array, the mask and the reference grid.

Headers are all checked before any voxel is decoded; each file is read and decoded once (in parallel threads: gzip
and numpy release the GIL), resampled to the reference grid when needed, smoothed, and reduced to its in-mask voxels.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from runner.config import DataConfig
from runner.data.images import Grid, Header, read_header, read_volume, resample
from runner.data.masking import MaskRule, binarise_mask, check_mask
from runner.data.smoothing import smooth_volume
from runner.data.sources import ImageRef, InputSet
from runner.errors import RunnerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupData:
    """The group's data: row i of ``Y`` is the map of ``table.iloc[i]``; columns are in-mask voxels (C order)."""

    Y: np.ndarray  # (n_maps, n_voxels)
    mask: np.ndarray  # 3D bool
    affine: np.ndarray  # 4x4 of the reference grid
    table: pd.DataFrame
    inputs: tuple[ImageRef, ...]
    input_sha256: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def n_maps(self) -> int:
        return int(self.Y.shape[0])

    @property
    def n_voxels(self) -> int:
        return int(self.Y.shape[1])

    @property
    def grid(self) -> Grid:
        return Grid(tuple(self.mask.shape), self.affine)  # type: ignore[arg-type]

    def unmask(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Put in-mask values (V,) back on the 3D grid."""
        return unmask(values, self.mask, fill)


def unmask(values: np.ndarray, mask: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Put in-mask values (V,) or (k, V) back on the grid: (X, Y, Z) or (X, Y, Z, k)."""
    values = np.asarray(values)
    if values.ndim == 1:
        out = np.full(mask.shape, fill, dtype=np.result_type(values.dtype, np.float32))
        out[mask] = values
        return out
    out = np.full(mask.shape + (values.shape[0],), fill, dtype=np.result_type(values.dtype, np.float32))
    out[mask] = values.T
    return out


def check_headers(images: tuple[ImageRef, ...], reference: Grid | None, allow_resample: bool) -> tuple[Grid, list[int]]:
    """Check every input's header; return the reference grid and which rows need resampling."""
    headers: dict[Path, Header] = {}
    for ref in images:
        if ref.path not in headers:
            headers[ref.path] = read_header(ref.path)
        header = headers[ref.path]
        if ref.volume is not None and ref.volume >= header.n_volumes:
            raise RunnerError(f"input {ref.path} has {header.n_volumes} volume(s); volume {ref.volume} requested")
        if ref.volume is None and header.n_volumes > 1:
            raise RunnerError(f"input {ref.path} is 4D ({header.n_volumes} volumes); give a 3D map per row, or use "
                              "data.image_4d")
    grid = reference or headers[images[0].path].grid
    off_grid = [i for i, ref in enumerate(images) if not headers[ref.path].grid.same_as(grid)]
    if off_grid and not allow_resample:
        first = headers[images[off_grid[0]].path]
        raise RunnerError(f"input {first.path} is on another grid ({first.grid.describe()}) than the reference "
                          f"({grid.describe()}); set data.resample=true to resample it")
    return grid, off_grid


def load_group_data(inputs: InputSet, settings: DataConfig, *, n_jobs: int = 1,
                    progress: Callable[[int], None] | None = None) -> GroupData:
    """Read, resample, smooth and mask every input map into one array.

    Parameters
    ----------
    inputs : the table and its images.
    settings : the ``data`` config group (mask, smoothing, resampling, NaN policy, dtype).
    n_jobs : decoding threads.
    progress : called with 1 after each map is loaded.
    """
    notes: list[str] = []
    explicit_mask = None
    reference = None
    if settings.mask:
        mask_header = read_header(Path(settings.mask), what="data.mask")
        mask_values, _ = read_volume(mask_header.path, what="data.mask")
        explicit_mask = binarise_mask(mask_values, str(mask_header.path))
        reference = mask_header.grid
    grid, off_grid = check_headers(inputs.images, reference, settings.resample)
    if off_grid:
        message = (f"resampled {len(off_grid)} of {len(inputs.images)} input(s) to the reference grid "
                   f"({grid.describe()}), e.g. {inputs.images[off_grid[0]]}")
        log.warning(message)
        notes.append(message)
    off_grid_set = set(off_grid)
    rule = MaskRule(settings.mask_strategy, settings.mask_threshold)
    dtype = np.dtype(settings.dtype)
    n = len(inputs.images)

    def load_one(index: int) -> tuple[np.ndarray, np.ndarray, str]:
        ref = inputs.images[index]
        volume, digest = read_volume(ref.path, ref.volume)
        if index in off_grid_set:
            volume = resample(volume, read_header(ref.path).grid, grid)
        valid = rule.passes(volume) if explicit_mask is None else np.isfinite(volume)
        smoothed = smooth_volume(volume, grid.affine, settings.smoothing_fwhm)
        if explicit_mask is not None:
            return smoothed[explicit_mask].astype(dtype), valid[explicit_mask], digest
        return smoothed.astype(np.float32 if dtype == np.float32 else np.float64), valid, digest

    rows: list[np.ndarray | None] = [None] * n
    valid_all: np.ndarray | None = None
    digests: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, n_jobs)) as pool:
        for index, (values, valid, digest) in enumerate(pool.map(load_one, range(n))):
            rows[index] = values
            valid_all = valid if valid_all is None else valid_all & valid
            digests[str(inputs.images[index].path)] = digest
            if progress:
                progress(1)
    assert valid_all is not None
    if explicit_mask is not None:
        mask = explicit_mask.copy()
        bad = ~valid_all
        Y = np.vstack(rows)
        if bad.any():
            count = int(bad.sum())
            if settings.nan_policy == "error":
                raise RunnerError(f"{count} in-mask voxel(s) are NaN or infinite in at least one input "
                                  "(data.nan_policy=error); fix the inputs or use data.nan_policy=exclude")
            message = f"excluded {count} in-mask voxel(s) that are NaN or infinite in at least one input"
            log.warning(message)
            notes.append(message)
            mask[mask] = valid_all
            Y = Y[:, valid_all]
        check_mask(mask, f"data.mask {settings.mask} after excluding non-finite voxels")
    else:
        mask = valid_all
        if not mask.any():
            raise RunnerError("the automatic mask is empty: no voxel is "
                              + {"nonzero": "finite and non-zero",
                                 "absolute": f"above {settings.mask_threshold:g}",
                                 "relative": f"above {settings.mask_threshold:g} x the image mean"}[rule.strategy]
                              + " in every input (an all-zero image?)")
        Y = np.vstack([row[mask] for row in rows]).astype(dtype, copy=False)  # type: ignore[index]
    del rows
    log.info("loaded %d map(s): %d voxel(s) in the mask, grid %s", n, int(mask.sum()), grid.describe())
    return GroupData(Y=Y, mask=mask, affine=grid.affine, table=inputs.table, inputs=inputs.images,
                     input_sha256=digests, notes=tuple(notes))
