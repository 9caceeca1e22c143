"""Surface inputs: per-hemisphere GIFTI maps on a mesh -> the same (maps x vertices) array as volumes.

A table names each map's left and right hemisphere files (``path_left`` / ``path_right`` columns, ``.func.gii``
or ``.shape.gii``); ``data.mesh`` names a bundled mesh (``fsaverage5``) or ``data.mesh_left`` / ``data.mesh_right``
the user's ``.surf.gii``. Elements are the in-mask vertices, left hemisphere first, in vertex order; the mask
leaves out the medial wall (bundled meshes; on the user's meshes, vertices 0 in every GIFTI map; with CIFTI
inputs, vertices outside their brain models) and vertices that are NaN or infinite in any map. Smoothing runs on
the mesh (:func:`smooth_on_mesh`).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy import sparse

from runner.config import DataConfig
from runner.data.sources import ImageRef, InputSet, read_table
from runner.errors import RunnerError, did_you_mean
from runner.space.mesh import MeshSpace

log = logging.getLogger(__name__)

HEMISPHERES = ("L", "R")
BUNDLED_MESHES = ("fsaverage5",)
DATA_SUFFIXES = (".func.gii", ".shape.gii", ".gii")


def is_surface(settings: DataConfig) -> bool:
    """True when the ``data`` group names a mesh (surface analysis)."""
    return bool(settings.mesh or settings.mesh_left or settings.mesh_right)


@dataclass(frozen=True)
class SurfaceRef(ImageRef):
    """One map on the surface: its left hemisphere file (``path``) and its right hemisphere file."""

    right: Path | None = None

    def __str__(self) -> str:
        return f"{self.path} + {self.right}"


@dataclass(frozen=True)
class Hemisphere:
    """One hemisphere's mesh: analysis geometry (``vertices``, mm), and what figures draw on."""

    vertices: np.ndarray  # (N, 3) pial (or the user's) surface
    faces: np.ndarray  # (F, 3)
    cortex: np.ndarray  # (N,) bool, False on the medial wall
    inflated: np.ndarray | None = None  # (N, 3) for figures
    sulc: np.ndarray | None = None  # (N,) sulcal depth, figure background


@dataclass(frozen=True, eq=False)
class Surface:
    """The mesh of an analysis: both hemispheres and the space of their in-mask vertices.

    ``space`` elements are the in-mask vertices, left then right; ``mask`` is (N_L + N_R,) bool in that order.
    """

    name: str
    hemispheres: dict[str, Hemisphere]
    space: MeshSpace
    cifti: Any = None  # runner.data.cifti.CiftiLayout of CIFTI inputs: outputs are .dscalar.nii on its brain models
    labels: dict[str, np.ndarray] | None = None  # atlas label name per vertex ("" unlabelled), by hemisphere

    @property
    def mask(self) -> np.ndarray:
        return self.space.mask

    def full(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """In-mask values (V,) -> (N_L + N_R,) on every vertex of the mesh, ``fill`` outside the mask."""
        full = np.full(len(self.space.vertices), fill, dtype=np.result_type(np.asarray(values).dtype, np.float32))
        full[self.space.mask] = values
        return full

    def split(self, values: np.ndarray, fill: float = 0.0) -> dict[str, np.ndarray]:
        """In-mask values (V,) -> one full (N,) vector per hemisphere, ``fill`` outside the mask."""
        full = self.full(values, fill)
        return {name: full[self.space.parts[name]] for name in self.hemispheres}


def input_records(ref: ImageRef, digests: dict[str, str]) -> list[dict[str, str | None]]:
    """The manifest's input records of one row: one per file (both hemisphere files of a GIFTI pair)."""
    if isinstance(ref, SurfaceRef):
        return [{"path": str(path), "sha256": digests.get(str(path))} for path in (ref.path, ref.right)]
    return [{"path": str(ref), "sha256": digests.get(str(ref.path))}]


# -- meshes --------------------------------------------------------------------------------------------------------
def bundled_mesh(name: str) -> dict[str, Hemisphere]:
    """A mesh bundled in ``runner/resources`` (see its README for origin and licence)."""
    if name not in BUNDLED_MESHES:
        raise RunnerError(f"data.mesh {name!r} is not bundled; {did_you_mean(name, BUNDLED_MESHES)}, or give "
                          "data.mesh_left and data.mesh_right (.surf.gii)")
    from runner.resources import resource_path

    with np.load(resource_path(f"{name}.npz")) as arrays:
        return {hemi: Hemisphere(vertices=arrays[f"pial_{side}"].astype(np.float64),
                                 faces=arrays[f"faces_{side}"].astype(np.int64),
                                 cortex=arrays[f"cortex_{side}"].astype(bool),
                                 inflated=arrays[f"inflated_{side}"].astype(np.float64),
                                 sulc=arrays[f"sulc_{side}"].astype(np.float64))
                for hemi, side in zip(HEMISPHERES, ("left", "right"))}


def read_surf_gii(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N, 3) and faces (F, 3) of a ``.surf.gii``; one-line RunnerError otherwise."""
    import nibabel as nib

    if not path.is_file():
        raise RunnerError(f"{what} {path} does not exist")
    try:
        image = nib.load(path)
        points = image.agg_data("NIFTI_INTENT_POINTSET")
        faces = image.agg_data("NIFTI_INTENT_TRIANGLE")
    except Exception as error:  # nibabel raises many types on a bad file
        raise RunnerError(f"{what} {path} cannot be read as a GIFTI surface: {str(error).splitlines()[0]}") from None
    if points is None or faces is None or np.size(points) == 0 or np.size(faces) == 0:
        raise RunnerError(f"{what} {path} has no vertices or no triangles (a .surf.gii is expected)")
    return np.asarray(points, dtype=np.float64), np.asarray(faces, dtype=np.int64)


def load_mesh(settings: DataConfig) -> dict[str, Hemisphere]:
    """The hemispheres named by ``data.mesh`` or ``data.mesh_left`` / ``data.mesh_right``."""
    if settings.mesh_left or settings.mesh_right:
        if settings.mesh:
            raise RunnerError("set either data.mesh or data.mesh_left and data.mesh_right, not both")
        if not (settings.mesh_left and settings.mesh_right):
            raise RunnerError("data.mesh_left and data.mesh_right go together: give both .surf.gii files")
        out = {}
        for hemi, value in zip(HEMISPHERES, (settings.mesh_left, settings.mesh_right)):
            setting = f"data.mesh_{'left' if hemi == 'L' else 'right'}"
            vertices, faces = read_surf_gii(Path(str(value)).expanduser(), setting)
            out[hemi] = Hemisphere(vertices, faces, np.ones(len(vertices), bool))
        return out
    hemispheres = bundled_mesh(str(settings.mesh))
    if not settings.exclude_medial_wall:
        hemispheres = {h: Hemisphere(m.vertices, m.faces, np.ones(len(m.vertices), bool), m.inflated, m.sulc)
                       for h, m in hemispheres.items()}
    return hemispheres


# -- inputs --------------------------------------------------------------------------------------------------------
def from_surface_table(table_path: Path, left_column: str = "path_left", right_column: str = "path_right",
                       path_column: str = "path") -> InputSet:
    """One row per map; two columns name its hemisphere GIFTI files, or ``path_column`` its CIFTI-2 ``.dscalar.nii``
    (when the two columns are absent). Relative paths resolve against the table's folder."""
    table_path = Path(table_path)
    frame = read_table(table_path)
    if left_column not in frame.columns and right_column not in frame.columns and path_column in frame.columns:
        from runner.data.cifti import CiftiRef, is_cifti

        paths = [_resolve(table_path, value, row, path_column, cifti=True)
                 for row, value in enumerate(frame[path_column])]
        if all(is_cifti(p) for p in paths):
            return InputSet(frame, tuple(CiftiRef(p) for p in paths))
    columns = {}
    for column, key in ((left_column, "path_left_column"), (right_column, "path_right_column")):
        if column not in frame.columns:
            raise RunnerError(f"data.table {table_path} has no column {column!r} naming hemisphere files; "
                              f"{did_you_mean(column, frame.columns)} (or set data.{key})")
        columns[column] = [_resolve(table_path, value, row, column) for row, value in enumerate(frame[column])]
    images = tuple(SurfaceRef(left, right=right) for left, right in zip(columns[left_column], columns[right_column]))
    return InputSet(frame, images)


def _resolve(table_path: Path, value: Any, row: int, column: str, cifti: bool = False) -> Path:
    if pd.isna(value) or not str(value).strip():
        raise RunnerError(f"data.table {table_path} row {row + 1} has an empty {column!r}")
    path = Path(str(value).strip()).expanduser()
    path = path if path.is_absolute() else table_path.parent / path
    if cifti:
        return path
    if not path.name.lower().endswith(DATA_SUFFIXES):
        raise RunnerError(f"data.table {table_path} row {row + 1}: {path.name} is not a GIFTI data file "
                          "(.func.gii or .shape.gii expected in column " + repr(column) + ")")
    return path


def read_gifti_map(path: Path, n_vertices: int, what: str) -> tuple[np.ndarray, bytes]:
    """One map (N,) from a GIFTI data file with one data array, and the file's bytes (for its digest)."""
    import nibabel as nib

    if not path.is_file():
        raise RunnerError(f"{what} {path} does not exist")
    content = path.read_bytes()
    try:
        image = nib.GiftiImage.from_bytes(content)
    except Exception as error:
        raise RunnerError(f"{what} {path} cannot be read as GIFTI: {str(error).splitlines()[0]}") from None
    arrays = [np.asarray(a.data) for a in image.darrays]
    if len(arrays) != 1:
        raise RunnerError(f"{what} {path} holds {len(arrays)} data arrays; give one map per file")
    values = arrays[0].astype(np.float64).ravel()
    if values.size != n_vertices:
        raise RunnerError(f"{what} {path} has {values.size} values but its mesh hemisphere has {n_vertices} "
                          "vertices (data from another mesh? check data.mesh)")
    return values, content


# -- smoothing -----------------------------------------------------------------------------------------------------
def smoothing_operator(space: MeshSpace, fwhm: float) -> tuple[sparse.csr_matrix, int]:
    """The one-step averaging operator ``S`` and its number of steps ``k`` so that ``S^k`` smooths by ``fwhm`` mm.

    Each step replaces an in-mask vertex's value by ``(1 - w)`` times itself plus ``w`` times the mean of its
    in-mask neighbours. Under a locally flat mesh with isotropic edges this adds ``w * <d^2> / 2`` of variance per
    axis, ``<d^2>`` the mean squared edge length (a random-walk step; the calibration of iterative nearest-neighbour
    smoothing in Hagler, Saygin & Sereno 2006, NeuroImage 33:1093). A Gaussian of ``FWHM = sqrt(8 ln 2) sigma``
    needs ``k * w * <d^2> / 2 = sigma^2``: ``k`` is the fewest steps with ``w <= 1/2``, and ``w`` is set so the
    variance is reached exactly (in the mean-edge approximation).
    """
    graph = space.neighbour_graph()
    rows = np.repeat(np.arange(space.n_elements), np.diff(graph.indptr))
    coordinates = space.coordinates(np.arange(space.n_elements))
    squared = np.sum((coordinates[rows] - coordinates[graph.indices]) ** 2, axis=1)
    mean_squared_edge = float(squared.mean()) if squared.size else 1.0
    sigma2 = (fwhm / math.sqrt(8 * math.log(2))) ** 2
    steps = max(1, math.ceil(sigma2 / (0.5 * mean_squared_edge / 2)))
    weight = 2 * sigma2 / (steps * mean_squared_edge)
    degree = np.diff(graph.indptr).astype(np.float64)
    lonely = degree == 0  # isolated vertices keep their value
    neighbour_mean = sparse.diags(np.where(lonely, 0.0, 1.0 / np.maximum(degree, 1))) @ graph
    step = sparse.diags(np.where(lonely, 1.0, 1 - weight)) + weight * neighbour_mean
    return sparse.csr_matrix(step), steps


def smooth_on_mesh(maps: np.ndarray, space: MeshSpace, fwhm: float | None) -> np.ndarray:
    """Smooth (n, V) in-mask maps on the mesh by ``fwhm`` mm (see :func:`smoothing_operator`); None or 0: unchanged."""
    if not fwhm:
        return maps
    operator, steps = smoothing_operator(space, float(fwhm))
    out = np.asarray(maps, dtype=np.float64).T
    for _ in range(steps):
        out = operator @ out
    return np.ascontiguousarray(out.T)


def read_surface_maps(images: tuple[ImageRef, ...], sizes: dict[str, int],
                      progress: Callable[[float], Any] | None = None,
                      what: str = "input") -> tuple[np.ndarray, dict[str, str], Any]:
    """Every map on all vertices of both hemispheres (maps x vertices, left then right), the sha256 of each file,
    and the CIFTI brain models (None for GIFTI pairs); CIFTI files must all carry the same brain models."""
    from runner.data.cifti import CiftiRef, read_cifti_map

    rows, digests = [], {}
    layout = None  # CIFTI: the brain models of the first file (every file must carry the same)
    for ref in images:
        if isinstance(ref, CiftiRef):
            if not ref.path.is_file():
                raise RunnerError(f"{what} {ref.path} does not exist")
            content = ref.path.read_bytes()
            found = read_cifti_map(ref.path, sizes, content)
            if layout is not None and found.layout.signature != layout.signature:
                raise RunnerError(f"{what} {ref.path} has other brain models than {images[0].path} (other "
                                  "vertices or voxels); give every map on the same brain models")
            layout = layout or found.layout
            rows.append(found.values)
            digests[str(ref.path)] = hashlib.sha256(content).hexdigest()
            if progress:
                progress(1.0)
            continue
        if not isinstance(ref, SurfaceRef):
            raise RunnerError(f"{what} {ref} is not a pair of hemisphere files: surface analyses (data.mesh) read "
                              "a table with data.path_left_column and data.path_right_column")
        left, left_bytes = read_gifti_map(ref.path, sizes["L"], f"left hemisphere {what}")
        right, right_bytes = read_gifti_map(ref.right, sizes["R"], f"right hemisphere {what}")  # type: ignore[arg-type]
        rows.append(np.concatenate([left, right]))
        digests[str(ref.path)] = hashlib.sha256(left_bytes).hexdigest()
        digests[str(ref.right)] = hashlib.sha256(right_bytes).hexdigest()
        if progress:
            progress(1.0)
    return np.vstack(rows), digests, layout


# -- loading -------------------------------------------------------------------------------------------------------
def load_surface_data(inputs: InputSet, settings: DataConfig,
                      progress: Callable[[float], Any] | None = None) -> Any:
    """Read every row's hemisphere maps into a (maps x in-mask vertices) :class:`~runner.data.loader.GroupData`.

    The mask is the mesh's cortex (medial wall left out) minus vertices NaN or infinite in any map
    (``data.nan_policy=error`` refuses them instead).
    """
    from runner.data.loader import GroupData

    hemispheres = load_mesh(settings)
    sizes = {h: len(m.vertices) for h, m in hemispheres.items()}
    full, digests, layout = read_surface_maps(inputs.images, sizes, progress)
    cortex = np.concatenate([hemispheres[h].cortex for h in HEMISPHERES])
    notes: list[str] = []
    if layout is not None:  # vertices outside the CIFTI brain models are not data
        covered = np.zeros(full.shape[1], dtype=bool)
        covered[layout.mesh_index[layout.covered]] = True
        cortex = cortex & covered
        full[:, ~covered] = 0.0
        if layout.n_volume_voxels:
            notes.append(f"left out {layout.n_volume_voxels} subcortical voxel(s) of the CIFTI volume brain models: "
                         "a surface analysis covers the cortex only (they are NaN in the .dscalar.nii outputs)")
    if layout is None and settings.mesh_left:  # the user's mesh gives no medial wall: vertices 0 in every map
        silent = cortex & ~np.any(full != 0, axis=0)
        if silent.any():
            cortex = cortex & ~silent
            notes.append(f"left out {int(silent.sum())} vertex(es) that are 0 in every map (a medial wall: "
                         "data.mesh_left / data.mesh_right carry no medial-wall mask)")
    finite = np.isfinite(full).all(axis=0)
    bad = cortex & ~finite
    if bad.any():
        if settings.nan_policy == "error":
            first = int(np.flatnonzero(~np.isfinite(full[:, bad]).all(axis=1))[0])
            raise RunnerError(f"input {inputs.images[first]} has NaN or infinite values at in-mask vertices "
                              "(data.nan_policy=error); fix the input or set data.nan_policy=exclude")
        notes.append(f"excluded {int(bad.sum())} vertex(es) that are NaN or infinite in at least one input")
    mask = cortex & finite
    if not mask.any():
        raise RunnerError("no vertex is left in the surface mask: every vertex is on the medial wall or NaN")
    empty = [i for i in range(full.shape[0]) if not np.any(full[i, mask])]
    if empty:
        raise RunnerError(f"input {inputs.images[empty[0]]} is all zeros on the cortex: an empty or failed "
                          "first-level map? remove its row")
    space = MeshSpace.from_hemispheres({h: (hemispheres[h].vertices, hemispheres[h].faces) for h in HEMISPHERES},
                                       {h: mask[sl] for h, sl in zip(HEMISPHERES, _slices(sizes))})
    Y = smooth_on_mesh(full[:, mask], space, settings.smoothing_fwhm).astype(np.dtype(settings.dtype))
    Y = np.ascontiguousarray(Y)
    name = settings.mesh or "user mesh"
    for note in notes:
        log.warning(note)
    log.info("loaded %d surface map(s): %d vertices in the mask (%s, %d medial-wall or uncovered vertices left "
             "out)", full.shape[0], int(mask.sum()), name, int((~cortex).sum()))
    surface = Surface(str(name), hemispheres, space, cifti=layout, labels=load_annotations(settings, sizes))
    return GroupData(Y=Y, mask=mask, affine=np.eye(4), table=inputs.table, inputs=inputs.images,
                     input_sha256=digests, notes=tuple(notes), surface=surface)


# -- further maps of the same rows (another modality) ----------------------------------------------------------------
def companion_surface_images(table: pd.DataFrame, table_path: Path, column: str, cifti: bool,
                             setting: str) -> tuple[ImageRef, ...]:
    """Each row's map of another modality: ``column`` naming CIFTI files when the inputs are CIFTI, else the GIFTI
    pair in ``<column>_left`` / ``<column>_right`` (as ``path`` gives ``path_left`` / ``path_right``)."""
    from runner.data.cifti import CiftiRef

    table_path = Path(table_path)
    wanted = [column] if cifti else [f"{column}_left", f"{column}_right"]
    for name in wanted:
        if name not in table.columns:
            kind = "CIFTI files" if cifti else "hemisphere GIFTI files"
            raise RunnerError(f"{setting} names {column!r}: data.table {table_path} needs a column {name!r} of "
                              f"{kind}; {did_you_mean(name, table.columns)}")
    if cifti:
        return tuple(CiftiRef(_resolve(table_path, value, row, column, cifti=True))
                     for row, value in enumerate(table[column]))
    left, right = ([_resolve(table_path, value, row, name) for row, value in enumerate(table[name])]
                   for name in wanted)
    return tuple(SurfaceRef(a, right=b) for a, b in zip(left, right))


def load_surface_companions(images: tuple[ImageRef, ...], data: Any, settings: DataConfig,
                            what: str) -> tuple[np.ndarray, dict[str, str]]:
    """Another modality's maps at the in-mask vertices of ``data`` (GroupData of a surface analysis), smoothed on
    the mesh as the inputs were; other brain models, or NaN at an in-mask vertex, are refused with the file named."""
    surface = data.surface
    sizes = {h: len(surface.hemispheres[h].vertices) for h in HEMISPHERES}
    full, digests, layout = read_surface_maps(images, sizes, what=what)
    expected = surface.cifti
    if (layout is None) != (expected is None) or (layout is not None and layout.signature != expected.signature):
        raise RunnerError(f"{what} {images[0].path} is not on the brain models of the input maps; give every "
                          "modality on the same mesh and brain models")
    values = full[:, data.mask]
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise RunnerError(f"{what} {images[first]} has NaN or infinite values at vertices inside the mask of the "
                          "input maps; fix the map")
    values = smooth_on_mesh(values, surface.space, settings.smoothing_fwhm)
    log.info("loaded %d %s(s) at %d vertices", len(images), what, values.shape[1])
    return np.ascontiguousarray(values, dtype=data.Y.dtype), digests


def load_annotations(settings: DataConfig, sizes: dict[str, int]) -> dict[str, np.ndarray] | None:
    """Per-vertex atlas labels of the hemispheres given ``data.annotation_left`` / ``data.annotation_right``."""
    from runner.data.annotation import read_annotation

    out = {}
    for hemi, key in (("L", "annotation_left"), ("R", "annotation_right")):
        value = getattr(settings, key)
        if value:
            out[hemi] = read_annotation(Path(str(value)).expanduser(), sizes[hemi], f"data.{key}")
    return out or None


def _slices(sizes: dict[str, int]) -> list[slice]:
    start, out = 0, []
    for hemi in HEMISPHERES:
        out.append(slice(start, start + sizes[hemi]))
        start += sizes[hemi]
    return out
