"""CIFTI-2 dense scalar inputs (``.dscalar.nii``) for surface analyses: their cortical brain models on the mesh.

A row's file holds one map over brain models: ``CORTEX_LEFT`` / ``CORTEX_RIGHT`` surface models list the vertices
they cover (fsLR files leave out the medial wall this way) and must match the mesh's vertex counts; volume models
(subcortical voxels) are left out of a surface analysis and counted in a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class CiftiMap:
    """One file's map on the whole mesh (NaN where no brain model covers a vertex) and what it covers."""

    values: np.ndarray  # (N_L + N_R,)
    covered: np.ndarray  # (N_L + N_R,) bool
    n_volume_voxels: int  # voxels of volume brain models, left out


def read_cifti_map(path: Path, sizes: dict[str, int], content: bytes) -> CiftiMap:
    """The cortical values of a one-map ``.dscalar.nii`` placed on the mesh's vertices (left then right).

    Parameters
    ----------
    path : the file (for messages).
    sizes : vertices per hemisphere of the mesh, ``{"L": N_L, "R": N_R}``.
    content : the file's bytes.
    """
    import nibabel as nib

    try:
        image = nib.Cifti2Image.from_bytes(content)
        scalars, models = image.header.get_axis(0), image.header.get_axis(1)
    except Exception as error:  # nibabel raises many types on a bad file
        raise RunnerError(f"input {path} cannot be read as a CIFTI-2 dense scalar file: "
                          f"{str(error).splitlines()[0]}") from None
    if not isinstance(models, nib.cifti2.BrainModelAxis):
        raise RunnerError(f"input {path} has no brain models along its columns (a .dscalar.nii is expected)")
    if len(scalars) != 1:
        raise RunnerError(f"input {path} holds {len(scalars)} maps; give one map per file (one row per map)")
    data = np.asarray(image.dataobj, dtype=np.float64)[0]
    offsets = {"L": 0, "R": sizes["L"]}
    values = np.full(sizes["L"] + sizes["R"], np.nan)
    covered = np.zeros(values.size, dtype=bool)
    n_volume = 0
    for structure, columns, model in models.iter_structures():
        hemi = next((h for h, name in STRUCTURES.items() if name == structure), None)
        if hemi is None:
            if model.volume_mask.any():
                n_volume += int(model.volume_mask.sum())
                continue
            raise RunnerError(f"input {path}: surface brain model {structure} is not a cortex (left or right); "
                              "only CORTEX_LEFT and CORTEX_RIGHT are analysed")
        expected = model.nvertices.get(structure)
        if expected != sizes[hemi]:
            raise RunnerError(f"input {path}: {structure} is on a mesh of {expected} vertices but data.mesh has "
                              f"{sizes[hemi]} (data from another mesh? give that mesh with data.mesh_left / "
                              "data.mesh_right)")
        vertices = offsets[hemi] + np.asarray(model.vertex, dtype=np.int64)
        values[vertices] = data[columns]
        covered[vertices] = True
    if not covered.any():
        raise RunnerError(f"input {path} has no cortical surface brain model (CORTEX_LEFT / CORTEX_RIGHT)")
    return CiftiMap(values, covered, n_volume)


def dscalar_bytes(values: np.ndarray, covered: np.ndarray, sizes: dict[str, int], map_name: str) -> bytes:
    """One map (N_L + N_R,) as CIFTI-2 dense scalar bytes over the cortex brain models of ``covered`` vertices.

    The inverse of :func:`read_cifti_map` for surface models (volume models are not analysed, so not written).
    Not yet wired into the run's outputs: ``runner.verify`` compares ``.nii`` maps through their affine, which a
    CIFTI image does not have.
    """
    import nibabel as nib

    offsets = {"L": 0, "R": sizes["L"]}
    models, columns = None, []
    for hemi, name in (("L", "CortexLeft"), ("R", "CortexRight")):
        part = np.asarray(covered[offsets[hemi]:offsets[hemi] + sizes[hemi]], dtype=bool)
        if not part.any():
            continue
        axis = nib.cifti2.BrainModelAxis.from_mask(part, name=name)
        models = axis if models is None else models + axis
        columns.append(offsets[hemi] + np.flatnonzero(part))
    if models is None:
        raise ValueError("no covered vertex to write")
    data = np.asarray(values, dtype=np.float32)[np.concatenate(columns)][None]
    return nib.Cifti2Image(data, header=(nib.cifti2.ScalarAxis([map_name]), models)).to_bytes()
