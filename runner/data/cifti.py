"""CIFTI-2 dense scalar files (``.dscalar.nii``) for surface analyses: their cortical brain models on the mesh.

A row's file holds one map over brain models: ``CORTEX_LEFT`` / ``CORTEX_RIGHT`` surface models list the vertices
they cover (fsLR files leave out the medial wall this way) and must match the mesh's vertex counts; volume models
(subcortical voxels) are left out of a surface analysis and counted in a note. Every file of a study carries the
same brain models; outputs are written over those same models (:func:`dscalar_bytes`), the left-out voxels NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.data.sources import ImageRef
from runner.errors import RunnerError

SUFFIX = ".dscalar.nii"
STRUCTURES = {"L": "CIFTI_STRUCTURE_CORTEX_LEFT", "R": "CIFTI_STRUCTURE_CORTEX_RIGHT"}


def is_cifti(path: Path | str) -> bool:
    return str(path).lower().endswith(SUFFIX)


@dataclass(frozen=True)
class CiftiRef(ImageRef):
    """One map on the surface, from a CIFTI-2 dense scalar file."""


@dataclass(frozen=True, eq=False)
class CiftiLayout:
    """The brain models of a study's CIFTI files and where each of their columns lives on the mesh.

    ``index_map`` is the files' brain-model mapping as read (nibabel's ``Cifti2MatrixIndicesMap``: surface and
    volume models in file order, written back unchanged); ``mesh_index`` gives each column's vertex on the whole
    mesh (left then right), -1 for a volume voxel (left out); ``signature`` compares two files' brain models.
    """

    index_map: Any
    mesh_index: np.ndarray  # (n_columns,) int64
    signature: tuple
    structures: tuple[str, ...]

    @property
    def covered(self) -> np.ndarray:
        """Columns on the mesh (bool, per column)."""
        return self.mesh_index >= 0

    @property
    def n_volume_voxels(self) -> int:
        return int(np.sum(self.mesh_index < 0))

    def columns(self, mesh_values: np.ndarray) -> np.ndarray:
        """Values on the whole mesh (N_L + N_R,) -> one value per column, NaN on volume voxels."""
        out = np.full(self.mesh_index.size, np.nan, dtype=np.float64)
        on_mesh = self.covered
        out[on_mesh] = np.asarray(mesh_values, dtype=np.float64)[self.mesh_index[on_mesh]]
        return out


@dataclass(frozen=True)
class CiftiMap:
    """One file's map on the whole mesh (NaN where no brain model covers a vertex) and what it covers."""

    values: np.ndarray  # (N_L + N_R,)
    covered: np.ndarray  # (N_L + N_R,) bool
    layout: CiftiLayout

    @property
    def n_volume_voxels(self) -> int:
        """Voxels of volume brain models, left out."""
        return self.layout.n_volume_voxels


def read_cifti_map(path: Path, sizes: dict[str, int], content: bytes) -> CiftiMap:
    """The cortical values of a one-map ``.dscalar.nii`` placed on the mesh's vertices (left then right).

    Brain models are read from the header's index map directly (nibabel's ``BrainModelAxis`` names every column
    in Python: about as long again as reading the file, for an fsLR 91k file).

    Parameters
    ----------
    path : the file (for messages).
    sizes : vertices per hemisphere of the mesh, ``{"L": N_L, "R": N_R}``.
    content : the file's bytes.
    """
    import nibabel as nib

    try:
        image = nib.Cifti2Image.from_bytes(content)
        maps = {dim: image.header.get_index_map(dim) for dim in (0, 1)}
    except Exception as error:  # nibabel raises many types on a bad file
        raise RunnerError(f"input {path} cannot be read as a CIFTI-2 dense scalar file: "
                          f"{str(error).splitlines()[0]}") from None
    if maps[1].indices_map_to_data_type != "CIFTI_INDEX_TYPE_BRAIN_MODELS":
        raise RunnerError(f"input {path} has no brain models along its columns (a .dscalar.nii is expected)")
    if image.shape[0] != 1:
        raise RunnerError(f"input {path} holds {image.shape[0]} maps; give one map per file (one row per map)")
    data = np.asarray(image.dataobj, dtype=np.float64)[0]
    offsets = {"L": 0, "R": sizes["L"]}
    values = np.full(sizes["L"] + sizes["R"], np.nan)
    covered = np.zeros(values.size, dtype=bool)
    mesh_index = np.full(data.size, -1, dtype=np.int64)
    signature, structures = [], []
    for model in maps[1].brain_models:
        structure, columns = str(model.brain_structure), slice(model.index_offset,
                                                                model.index_offset + model.index_count)
        structures.append(structure)
        if model.model_type != "CIFTI_MODEL_TYPE_SURFACE":
            signature.append((structure, columns.start, columns.stop, np.asarray(model.voxel_indices_ijk).tobytes()))
            continue
        hemi = next((h for h, name in STRUCTURES.items() if name == structure), None)
        if hemi is None:
            raise RunnerError(f"input {path}: surface brain model {structure} is not a cortex (left or right); "
                              "only CORTEX_LEFT and CORTEX_RIGHT are analysed")
        expected = model.surface_number_of_vertices
        if expected != sizes[hemi]:
            raise RunnerError(f"input {path}: {structure} is on a mesh of {expected} vertices but data.mesh has "
                              f"{sizes[hemi]} (data from another mesh? give that mesh with data.mesh_left / "
                              "data.mesh_right)")
        local = np.asarray(model.vertex_indices, dtype=np.int64)
        if local.size != model.index_count or local.size and (local.min() < 0 or local.max() >= expected):
            raise RunnerError(f"input {path}: {structure} lists vertices outside its mesh of {expected}")
        vertices = offsets[hemi] + local
        values[vertices] = data[columns]
        covered[vertices] = True
        mesh_index[columns] = vertices
        signature.append((structure, columns.start, columns.stop, expected, local.tobytes()))
    if not covered.any():
        raise RunnerError(f"input {path} has no cortical surface brain model (CORTEX_LEFT / CORTEX_RIGHT)")
    volume = maps[1].volume
    if volume is not None:
        signature.append((tuple(volume.volume_dimensions),
                          np.asarray(volume.transformation_matrix_voxel_indices_ijk_to_xyz.matrix).tobytes()))
    return CiftiMap(values, covered, CiftiLayout(maps[1], mesh_index, tuple(signature), tuple(structures)))


def layout_from_mask(covered: np.ndarray, sizes: dict[str, int]) -> CiftiLayout:
    """Cortex brain models over the ``covered`` vertices of a mesh (N_L + N_R,), left then right."""
    import nibabel as nib

    models = None
    for hemi, name in (("L", "CortexLeft"), ("R", "CortexRight")):
        start = 0 if hemi == "L" else sizes["L"]
        part = np.asarray(covered[start:start + sizes[hemi]], dtype=bool)
        if part.any():
            axis = nib.cifti2.BrainModelAxis.from_mask(part, name=name)
            models = axis if models is None else models + axis
    if models is None:
        raise ValueError("no covered vertex to write")
    image = nib.Cifti2Image(np.zeros((1, len(models)), np.float32),
                            header=(nib.cifti2.ScalarAxis(["empty"]), models))
    return read_cifti_map(Path("layout"), sizes, image.to_bytes()).layout


def dscalar_bytes(mesh_values: np.ndarray, layout: CiftiLayout, map_name: str) -> bytes:
    """One map on the whole mesh (N_L + N_R,) as CIFTI-2 dense scalar bytes (float32) over ``layout``'s brain
    models: the inverse of :func:`read_cifti_map`, volume voxels NaN (a surface analysis leaves them out)."""
    import nibabel as nib

    matrix = nib.cifti2.Cifti2Matrix()
    matrix.append(nib.cifti2.ScalarAxis([map_name]).to_mapping(0))
    matrix.append(layout.index_map)
    data = layout.columns(mesh_values).astype(np.float32)[None]
    return nib.Cifti2Image(data, header=nib.cifti2.Cifti2Header(matrix)).to_bytes()
