"""Inputs -> one (maps x in-mask voxels) array, the mask and the reference grid, within a memory budget.

1. :func:`validate_inputs` reads and checks every header (exists, NIfTI-1/2, sane, complete, on the reference grid
   or resampled) before any voxel is decoded.
2. The scan decodes each map and keeps only what the mask needs (per-voxel validity, whether the map has any data,
   its count of non-finite voxels); data problems are refused here, before the big array is allocated.
3. The extraction decodes each map again and copies its in-mask voxels into a preallocated (maps x voxels) array:
   in memory, or a memory-mapped .npy file when it would take more than half of the budget.

When the decoded maps fit easily in the budget, the scan keeps them and nothing is decoded twice. Two passes rather
than one pass to a full-grid memory map: the mask (automatic, or explicit minus non-finite voxels) is only known once
every map has been seen, and a one-pass design writes n x the full grid (4 to 5 x the brain on MNI grids) to disk and
reads it all back to compact it; a second decode costs CPU spread over threads and no disk. Memory never holds more
than a few volumes at a time (one per thread), whatever the number of maps.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from contextlib import closing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from runner import chunks
from runner.chunks import ordered_map, release_pages
from runner.config import DataConfig
from runner.data.images import Grid, Header, file_digest, iter_volumes, read_header, read_volume, resample
from runner.data.masking import MaskRule, binarise_mask, check_mask
from runner.data.smoothing import check_smoothing, smooth_volume
from runner.data.sources import ImageRef, InputSet
from runner.errors import RunnerError

log = logging.getLogger(__name__)

R = TypeVar("R")
IN_MEMORY_SHARE = 0.5  # the (maps x voxels) array stays in memory while it takes at most this share of the budget
# Largest magnitude accepted in an input map. Sums of squares over maps must stay far from float64's 1.8e308: a
# value of 1e300 would overflow the residual variance to inf and leave maps of NaN that look like constant voxels.
MAX_ABS_VALUE = 1e100
TMP_PREFIX = ".tmp-"  # in a run, scratch_dir is the staging folder: a killed run's file goes with that folder


@dataclass(frozen=True)
class GroupData:
    """The group's data: row i of ``Y`` is the map of ``table.iloc[i]``; columns are in-mask voxels (C order)."""

    Y: np.ndarray  # (n_maps, n_voxels); an np.memmap for studies larger than the memory budget
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


# -- 1. headers --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckedInputs:
    """The outcome of the header pass: the reference grid, every header, and which rows need resampling."""

    grid: Grid
    reference: str  # what defines the grid, for messages
    headers: dict[Path, Header]
    off_grid: tuple[int, ...] = ()
    mask_header: Header | None = None


def validate_inputs(inputs: InputSet, settings: DataConfig) -> CheckedInputs:
    """Check every input header (and the mask's) before any voxel is decoded; one-line RunnerError otherwise."""
    mask_header = read_header(Path(settings.mask), what="data.mask") if settings.mask else None
    if mask_header is not None and mask_header.n_volumes > 1:
        raise RunnerError(f"data.mask {mask_header.path} is 4D ({mask_header.n_volumes} volumes); a mask is one 3D "
                          "image: save the volume you mean as its own file")
    grid, off_grid, headers = check_headers(inputs.images, mask_header.grid if mask_header else None,
                                            settings.resample,
                                            f"data.mask {mask_header.path}" if mask_header else None)
    reference = f"data.mask {mask_header.path}" if mask_header else str(inputs.images[0].path)
    check_smoothing(settings.smoothing_fwhm, grid)
    if mask_header is not None:
        for index in off_grid:
            header = headers[inputs.images[index].path]
            if not _overlaps(header.grid, grid):
                raise RunnerError(f"data.mask {mask_header.path} does not overlap the data: its field of view and "
                                  f"that of input {header.path} do not intersect (a mask from another space?)")
    return CheckedInputs(grid, reference, headers, tuple(off_grid), mask_header)


def check_headers(images: tuple[ImageRef, ...], reference: Grid | None, allow_resample: bool,
                  reference_name: str | None = None) -> tuple[Grid, list[int], dict[Path, Header]]:
    """Check every input's header; return the reference grid, which rows need resampling, and the headers."""
    headers: dict[Path, Header] = {}
    for ref in images:
        if ref.path not in headers:
            headers[ref.path] = read_header(ref.path, what="input image" if ref.volume is None else "data.image_4d")
        header = headers[ref.path]
        if ref.volume is not None and ref.volume >= header.n_volumes:
            raise RunnerError(f"input {ref.path} has {header.n_volumes} volume(s); volume {ref.volume} requested")
        if ref.volume is None and header.n_volumes > 1:
            raise RunnerError(f"input {ref.path} is 4D ({header.n_volumes} volumes); give a 3D map per row, or use "
                              "data.image_4d")
    grid = reference or headers[images[0].path].grid
    reference_name = reference_name or str(images[0].path)
    off_grid = [i for i, ref in enumerate(images) if not headers[ref.path].grid.same_as(grid)]
    if off_grid and not allow_resample:
        first = headers[images[off_grid[0]].path]
        raise RunnerError(f"input {first.path} is not on the reference grid of {reference_name}: "
                          f"{first.grid.difference(grid)}; set data.resample=true to resample it")
    return grid, off_grid, headers


def _world_box(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, grid.shape[0] - 0.5) for j in (-0.5, grid.shape[1] - 0.5)
                        for k in (-0.5, grid.shape[2] - 0.5)])
    world = (grid.affine @ corners.T)[:3]
    return world.min(axis=1), world.max(axis=1)


def _overlaps(a: Grid, b: Grid) -> bool:
    low_a, high_a = _world_box(a)
    low_b, high_b = _world_box(b)
    return bool(np.all(low_a < high_b) and np.all(low_b < high_a))


# -- 2 and 3. voxels ---------------------------------------------------------------------------------------------
def load_group_data(inputs: InputSet, settings: DataConfig, *, n_jobs: int = 1,
                    progress: Callable[[float], Any] | None = None, memory_budget_bytes: float | None = None,
                    scratch_dir: Path | None = None, checked: CheckedInputs | None = None) -> GroupData:
    """Read, resample, smooth and mask every input map into one (maps x in-mask voxels) array.

    Parameters
    ----------
    inputs : the table and its images.
    settings : the ``data`` config group (mask, smoothing, resampling, NaN policy, dtype).
    n_jobs : decoding threads.
    progress : called with the fraction of a map done (1, or 0.5 per pass when maps are decoded twice).
    memory_budget_bytes : memory the run may use (default: half of the available memory). The array goes to a
        memory-mapped file in ``scratch_dir`` when it would take more than half of it.
    scratch_dir : folder for that file (default: the system's temporary folder); it is unlinked once mapped.
    checked : the result of :func:`validate_inputs` when the caller already ran it.
    """
    checked = checked or validate_inputs(inputs, settings)
    budget = float(memory_budget_bytes) if memory_budget_bytes else float(chunks.memory_budget_bytes(None))
    grid, images, notes = checked.grid, inputs.images, []
    if checked.off_grid:
        message = (f"resampled {len(checked.off_grid)} of {len(images)} input(s) to the reference grid "
                   f"({grid.describe()}), e.g. {images[checked.off_grid[0]]}")
        log.warning(message)
        notes.append(message)
    explicit = None
    if checked.mask_header is not None:
        mask_values, _ = read_volume(checked.mask_header.path, what="data.mask", header=checked.mask_header)
        explicit = binarise_mask(mask_values, str(checked.mask_header.path))
    dtype = np.dtype(settings.dtype)
    # Maps are kept from the scan (no second decode) when they fit easily: only the voxels that can still be in the
    # mask (the explicit mask, or those the first map does not exclude), never whole volumes.
    n_region = int(explicit.sum()) if explicit is not None else int(np.prod(grid.shape))
    keep_decoded = 2 * len(images) * n_region * dtype.itemsize <= IN_MEMORY_SHARE * budget
    region = explicit
    step = 1.0 if keep_decoded else 0.5
    off_grid = set(checked.off_grid)

    def prepare(index: int, volume: np.ndarray) -> np.ndarray:
        if index in off_grid:
            return resample(volume, checked.headers[images[index].path].grid, grid)
        return volume

    def scan_one(index: int, volume: np.ndarray, digest: str) -> _Scan:
        volume = prepare(index, volume)
        check_magnitude(volume if explicit is None else volume[explicit], images[index])
        decoded = smooth_volume(volume, grid.affine, settings.smoothing_fwhm) if keep_decoded else None
        return _Scan(np.isfinite(volume), MaskRule(settings.mask_strategy, settings.mask_threshold).passes(volume),
                     volume != 0, digest, decoded)

    scan = _MaskScan(grid.shape, explicit)
    retained = None
    for index, result in enumerate(_decode(inputs, checked, n_jobs, scan_one)):
        scan.add(index, result)
        if result.decoded is not None:
            if retained is None:
                region = region if region is not None else result.passes | ~result.finite
                retained = np.empty((len(images), int(region.sum())), dtype=dtype)
            retained[index] = result.decoded[region]
            result.decoded = None
        if progress:
            progress(step)
    mask, scan_notes = scan.finish(images, settings, lambda work: _decode(inputs, checked, n_jobs, work), prepare)
    notes.extend(scan_notes)
    n_voxels = int(mask.sum())
    if retained is not None:
        Y = retained.compress(mask[region], axis=1)  # C order, as the rows are read (Y[:, m] would be F order)
        del retained
    else:
        Y = _extract(inputs, checked, settings, mask, prepare, scan.digests, dtype, n_jobs, progress, step, budget,
                     scratch_dir)
    log.info("loaded %d map(s): %d voxel(s) in the mask, grid %s%s", len(images), n_voxels, grid.describe(),
             "; the data are memory-mapped (larger than half the memory budget)" if isinstance(Y, np.memmap)
             else "")
    digests = {str(images[i].path): digest for i, digest in enumerate(scan.digests)}
    return GroupData(Y=Y, mask=mask, affine=grid.affine, table=inputs.table, inputs=images, input_sha256=digests,
                     notes=tuple(notes))


@dataclass
class _Scan:
    """What the scan keeps of one decoded map."""

    finite: np.ndarray
    passes: np.ndarray  # the automatic mask rule (ignored with an explicit mask)
    nonzero: np.ndarray
    digest: str
    decoded: np.ndarray | None  # the smoothed map, when the maps are kept from the scan


class _MaskScan:
    """Accumulates, map by map, what decides the mask; refuses data problems once every map has been seen."""

    def __init__(self, shape: tuple[int, ...], explicit: np.ndarray | None) -> None:
        self.explicit = explicit
        self.candidate = np.ones(shape, dtype=bool)  # passes the rule wherever the map is finite
        self.nonfinite_any = np.zeros(shape, dtype=bool)
        self.finite_any = np.zeros(shape, dtype=bool)
        self.data_any = np.zeros(shape, dtype=bool)  # finite and non-zero in at least one map
        self.nonfinite_in_mask: list[int] = []
        self.empty: list[int] = []  # maps without a finite non-zero voxel (in the explicit mask)
        self.digests: list[str] = []

    def add(self, index: int, scan: _Scan) -> None:
        nonfinite = ~scan.finite
        has_data = scan.finite & scan.nonzero
        self.nonfinite_any |= nonfinite
        self.finite_any |= scan.finite
        self.data_any |= has_data
        self.candidate &= scan.passes | nonfinite
        inside = self.explicit if self.explicit is not None else slice(None)
        self.nonfinite_in_mask.append(int(nonfinite[inside].sum()) if self.explicit is not None else 0)
        if not has_data[inside].any():
            self.empty.append(index)
        self.digests.append(scan.digest)

    def finish(self, images: tuple[ImageRef, ...], settings: DataConfig,
               decode: Callable[[Callable[[int, np.ndarray, str], Any]], Iterator[Any]],
               prepare: Callable[[int, np.ndarray], np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """The mask, and notes on what was excluded."""
        notes: list[str] = []
        if self.explicit is not None:
            mask = self.explicit.copy()
            if not (self.data_any & mask).any():
                raise RunnerError(f"data.mask {settings.mask} does not overlap the data: every input is zero or NaN "
                                  "at every voxel of the mask (a mask from another space?)")
            self._refuse_empty(images, " inside the mask")
            bad = mask & self.nonfinite_any
            if bad.any():
                if settings.nan_policy == "error":
                    first = next(i for i, count in enumerate(self.nonfinite_in_mask) if count)
                    raise RunnerError(_nan_message(images[first], self.nonfinite_in_mask[first]))
                notes.append(f"excluded {int(bad.sum())} in-mask voxel(s) that are NaN or infinite in at least one "
                             "input")
                mask &= ~bad
            check_mask(mask, f"data.mask {settings.mask} after excluding non-finite voxels")
        else:
            self._refuse_empty(images, "")
            # Voxels non-finite in every map (NaN background, as SPM writes it) are simply outside the data.
            excluded = self.candidate & self.nonfinite_any & self.finite_any
            mask = self.candidate & ~self.nonfinite_any
            if excluded.any():
                if settings.nan_policy == "error":
                    index, count = _first_nonfinite(decode, prepare, excluded)
                    raise RunnerError(_nan_message(images[index], count))
                notes.append(f"excluded {int(excluded.sum())} voxel(s) that are NaN or infinite in some inputs (but "
                             "not all) from the automatic mask")
            if not mask.any():
                raise RunnerError("the automatic mask is empty: no voxel is "
                                  + {"nonzero": "finite and non-zero",
                                     "absolute": f"above {settings.mask_threshold:g}",
                                     "relative": f"above {settings.mask_threshold:g} x the image mean"}[
                                      settings.mask_strategy]
                                  + " in every input (maps that do not overlap? check data.mask_strategy)")
        for note in notes:
            log.warning(note)
        return mask, notes

    def _refuse_empty(self, images: tuple[ImageRef, ...], where: str) -> None:
        if self.empty:
            more = f" ({len(self.empty) - 1} more like it)" if len(self.empty) > 1 else ""
            raise RunnerError(f"input {images[self.empty[0]]} is all zeros (or NaN){where}: an empty or failed "
                              f"first-level map? remove its row{more}")


def check_magnitude(values: np.ndarray, ref: ImageRef) -> None:
    """Refuse a map holding values so large that the model's sums of squares would overflow."""
    finite = values[np.isfinite(values)]
    largest = float(np.max(np.abs(finite))) if finite.size else 0.0
    if largest > MAX_ABS_VALUE:
        raise RunnerError(f"input {ref} holds values as large as {largest:.3g}; sums of squares of such values "
                          f"overflow, so maps beyond +-{MAX_ABS_VALUE:g} are refused: rescale the map (a wrong "
                          "scl_slope in its header?)")


def _nan_message(ref: ImageRef, count: int) -> str:
    return (f"input {ref} has {count} NaN or infinite voxel(s) inside the mask (data.nan_policy=error); fix the "
            "input or set data.nan_policy=exclude to leave such voxels out")


def _first_nonfinite(decode, prepare, where: np.ndarray) -> tuple[int, int]:
    """The first map with non-finite values at ``where`` (an error path: decodes until it is found)."""
    def count(index: int, volume: np.ndarray, digest: str) -> int:
        return int((~np.isfinite(prepare(index, volume)) & where).sum())

    with closing(decode(count)) as counts:
        for index, found in enumerate(counts):
            if found:
                return index, found
    raise AssertionError("a non-finite voxel was seen by the scan but not found again")


def _decode(inputs: InputSet, checked: CheckedInputs, n_jobs: int,
            work: Callable[[int, np.ndarray, str], R]) -> Iterator[R]:
    """Decode every input volume once, in order, and yield ``work(index, volume, sha256)`` computed in threads.

    3D files are read and decoded in the worker threads; the volumes of a 4D file are decompressed once,
    sequentially, and only the work is spread over threads.
    """
    images = inputs.images
    volumes = [ref.volume for ref in images]
    if all(v is None for v in volumes) or any(ref.path != images[0].path for ref in images) \
            or any(b <= a for a, b in zip(volumes, volumes[1:])):
        def task(index: int) -> R:
            ref = images[index]
            volume, digest = read_volume(ref.path, ref.volume, header=checked.headers[ref.path],
                                         what="input image" if ref.volume is None else "data.image_4d")
            return work(index, volume, digest)

        yield from ordered_map(task, range(len(images)), n_jobs=n_jobs)
        return
    path = images[0].path
    digest = file_digest(path)
    stream = enumerate(iter_volumes(path, checked.headers[path], volumes))  # type: ignore[arg-type]
    yield from ordered_map(lambda item: work(item[0], item[1][1], digest), stream, n_jobs=n_jobs)


def _extract(inputs: InputSet, checked: CheckedInputs, settings: DataConfig, mask: np.ndarray,
             prepare: Callable[[int, np.ndarray], np.ndarray], digests: list[str], dtype: np.dtype, n_jobs: int,
             progress: Callable[[float], Any] | None, step: float, budget: float,
             scratch_dir: Path | None) -> np.ndarray:
    """Second pass: every map's in-mask voxels into a preallocated array (memory-mapped beyond half the budget)."""
    images = inputs.images
    shape = (len(images), int(mask.sum()))
    on_disk = shape[0] * shape[1] * dtype.itemsize > IN_MEMORY_SHARE * budget
    rows = RowWriter(shape, dtype, Path(scratch_dir or tempfile.gettempdir()) if on_disk else None)

    def extract_one(index: int, volume: np.ndarray, digest: str) -> np.ndarray:
        if digest != digests[index]:
            raise RunnerError(f"input {images[index]} changed while it was being read; run again once it is "
                              "no longer being written")
        smoothed = smooth_volume(prepare(index, volume), checked.grid.affine, settings.smoothing_fwhm)
        return smoothed[mask].astype(dtype)

    try:
        for index, row in enumerate(_decode(inputs, checked, n_jobs, extract_one)):
            rows.write(index, row)
            if progress:
                progress(step)
        return rows.finish()
    except BaseException:
        rows.discard()
        raise


class RowWriter:
    """A (maps x voxels) array filled row by row: preallocated in memory, or written sequentially to a .npy file
    (regular writes: the pages stay in the OS cache, outside the process) and memory-mapped once complete."""

    def __init__(self, shape: tuple[int, int], dtype: np.dtype, folder: Path | None) -> None:
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.array: np.ndarray | None = None
        self.path: Path | None = None
        self.next_row = 0
        if folder is None:
            self.array = np.empty(shape, dtype=self.dtype)
            return
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=TMP_PREFIX + "data-", suffix=".npy", dir=folder)
        self.path = Path(name)
        self.file = os.fdopen(handle, "wb")
        np.lib.format.write_array_header_1_0(self.file, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                         "fortran_order": False, "shape": shape})

    def write(self, index: int, row: np.ndarray) -> None:
        if index != self.next_row:
            raise ValueError(f"rows must be written in order: got {index}, expected {self.next_row}")
        if self.array is not None:
            self.array[index] = row
        else:
            self.file.write(np.ascontiguousarray(row, dtype=self.dtype).tobytes())
        self.next_row += 1

    def finish(self) -> np.ndarray:
        if self.array is not None:
            return self.array
        self.file.close()
        Y = np.load(self.path, mmap_mode="r")
        try:
            self.path.unlink()  # the mapping keeps the data; nothing is left behind, even if the process is killed
        except OSError:
            pass
        return Y

    def discard(self) -> None:
        if self.path is not None:
            self.file.close()
            self.path.unlink(missing_ok=True)


def save_rows(path: Path, Y: np.ndarray, block_bytes: int = 64 * 1024**2) -> str:
    """Write ``Y`` as a .npy file a block of rows at a time (a memory-mapped ``Y`` is never held whole).

    Returns the sha256 of the file's bytes, hashed while writing (the file is not read back).
    """
    digest = hashlib.sha256()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(Y.dtype),
                                                  "fortran_order": False, "shape": tuple(Y.shape)})
    with open(path, "wb") as handle:
        handle.write(header.getvalue())
        digest.update(header.getvalue())
        rows = max(1, block_bytes // max(1, Y.shape[1] * Y.dtype.itemsize))
        for start in range(0, Y.shape[0], rows):
            block = np.ascontiguousarray(Y[start:start + rows]).tobytes()
            handle.write(block)
            digest.update(block)
            release_pages(Y)
    return digest.hexdigest()
