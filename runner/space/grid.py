"""A voxel grid: a 3D mask, its affine and a connectivity (6, 18 or 26 neighbours).

In-mask voxel ``i`` is ``np.flatnonzero(mask)[i]`` (C order), the order of the model's ``(V,)`` vectors. Peaks
follow nilearn's ``get_clusters_table`` exactly (see :meth:`GridSpace.local_maxima`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
from nibabel.affines import apply_affine
from scipy import ndimage
from scipy.sparse import csr_matrix

from runner.errors import RunnerError
from runner.space.defaults import CONNECTIVITY_RANK, PARAMETRIC_CONNECTIVITY
from runner.space.graph import NeighbourTable, adjacency_from_table


@dataclass(frozen=True)
class VoxelGraph:
    """In-mask voxels and their neighbours; voxel ``i`` is ``np.flatnonzero(mask)[i]`` (C order).

    ``neighbours[i, j]`` is the in-mask index of the neighbour of voxel ``i`` at ``offsets[j]`` (face neighbours
    first, then edges, then corners); ``n_voxels`` stands for "outside the mask" so the table is rectangular.
    """

    shape: tuple[int, int, int]
    n_voxels: int
    connectivity: int
    neighbours: np.ndarray
    coordinates: np.ndarray
    offsets: np.ndarray


def check_connectivity(connectivity: int) -> int:
    """The connectivity itself when it is 6, 18 or 26, else a RunnerError."""
    if connectivity not in CONNECTIVITY_RANK:
        raise RunnerError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    return int(connectivity)


def connectivity_structure(connectivity: int) -> np.ndarray:
    """3x3x3 boolean structuring element for 6 (faces), 18 (faces and edges) or 26 (all) neighbours."""
    return ndimage.generate_binary_structure(3, CONNECTIVITY_RANK[check_connectivity(connectivity)])


def neighbour_offsets(connectivity: int) -> np.ndarray:
    """(K, 3) offsets of the neighbours of a voxel: faces first, then edges, then corners."""
    offsets = np.argwhere(connectivity_structure(connectivity)) - 1
    offsets = offsets[np.any(offsets != 0, axis=1)]
    return offsets[np.argsort(np.abs(offsets).sum(axis=1), kind="stable")].astype(np.int32)


def voxel_volume(affine: np.ndarray) -> float:
    """Volume of one voxel in mm3: the product of the voxel sizes (norms of the affine's columns)."""
    affine = check_affine(affine)
    return float(np.prod(np.sqrt(np.sum(affine[:3, :3] ** 2, axis=0))))


def check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise RunnerError(f"affine must be a 4x4 matrix, got shape {affine.shape}")
    return affine


@dataclass(frozen=True, eq=False)
class GridSpace:
    """The in-mask voxels of a 3D grid.

    Parameters
    ----------
    mask : np.ndarray
        3D array; nonzero voxels are the elements.
    affine : np.ndarray
        4x4 voxel-to-mm affine.
    connectivity : {6, 18, 26}
        Voxels sharing a face / and an edge / and a corner are neighbours.
    """

    mask: np.ndarray
    affine: np.ndarray
    connectivity: int = PARAMETRIC_CONNECTIVITY

    kind: ClassVar[str] = "grid"
    size_columns: ClassVar[tuple[str, str]] = ("size_voxels", "size_mm3")
    index_columns: ClassVar[tuple[str, ...]] = ("i", "j", "k")

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask)
        if mask.ndim != 3:
            raise RunnerError(f"the mask must be a 3D array, got {mask.ndim} dimension(s)")
        object.__setattr__(self, "mask", mask != 0)
        object.__setattr__(self, "affine", check_affine(self.affine))
        object.__setattr__(self, "connectivity", check_connectivity(self.connectivity))

    @classmethod
    def whole_grid(cls, shape: tuple[int, ...], affine: np.ndarray | None = None,
                   connectivity: int = PARAMETRIC_CONNECTIVITY) -> GridSpace:
        """Every voxel of a grid (maps already 0 outside their mask); identity affine when none is given."""
        return cls(np.ones(shape, dtype=bool), np.eye(4) if affine is None else affine, connectivity)

    # -- elements ----------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.mask.shape)  # type: ignore[return-value]

    @cached_property
    def n_elements(self) -> int:
        return int(self.mask.sum())

    @cached_property
    def ijk(self) -> np.ndarray:
        """(V, 3) grid indices of the in-mask voxels, C order."""
        return np.argwhere(self.mask)

    @cached_property
    def element_index(self) -> np.ndarray:
        """3D int64 array: in-mask index of each voxel, -1 outside the mask."""
        index = np.full(self.shape, -1, dtype=np.int64)
        index[self.mask] = np.arange(self.n_elements)
        return index

    @cached_property
    def voxel_volume(self) -> float:
        return voxel_volume(self.affine)

    @property
    def element_measure(self) -> np.ndarray:
        return np.full(self.n_elements, self.voxel_volume)

    def to_volume(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """(V,) -> 3D or (k, V) -> 4D (maps last), ``fill`` outside the mask."""
        values = np.asarray(values)
        if values.shape[-1] != self.n_elements:
            raise RunnerError(f"expected {self.n_elements} in-mask values, got shape {values.shape}")
        if values.ndim == 1:
            volume = np.full(self.shape, fill, dtype=values.dtype if fill == 0 else np.result_type(values, fill))
            volume[self.mask] = values
            return volume
        volume = np.full(self.shape + (values.shape[0],), fill, dtype=np.result_type(values, fill))
        volume[self.mask] = values.T
        return volume

    def from_volume(self, volume: np.ndarray) -> np.ndarray:
        """3D -> (V,) in-mask values (4D -> (k, V))."""
        volume = np.asarray(volume)
        if volume.shape[:3] != self.shape:
            raise RunnerError(f"map shape {volume.shape[:3]} does not match the mask shape {self.shape}")
        values = volume[self.mask]
        return values if volume.ndim == 3 else values.T

    def coordinates(self, indices: np.ndarray) -> np.ndarray:
        return apply_affine(self.affine, self.ijk[np.asarray(indices, dtype=np.int64)])

    def index_values(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        ijk = self.ijk[np.asarray(indices, dtype=np.int64)]
        return {"i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2]}

    # -- graph -------------------------------------------------------------------------------------------------
    @cached_property
    def offsets(self) -> np.ndarray:
        return neighbour_offsets(self.connectivity)

    def voxel_graph(self) -> VoxelGraph:
        """Neighbour table of the in-mask voxels (the form the permutation engine and TFCE kernel use)."""
        return self._voxel_graph

    @cached_property
    def _voxel_graph(self) -> VoxelGraph:
        n_voxels = self.n_elements
        padded = np.pad(self.mask, 1)
        index = np.full(padded.shape, n_voxels, dtype=np.int32)
        index[padded] = np.arange(n_voxels, dtype=np.int32)
        coordinates = np.argwhere(padded)
        neighbours = np.empty((n_voxels, len(self.offsets)), dtype=np.int32)
        for column, offset in enumerate(self.offsets):
            shifted = coordinates + offset
            neighbours[:, column] = index[shifted[:, 0], shifted[:, 1], shifted[:, 2]]
        return VoxelGraph(shape=self.shape, n_voxels=n_voxels, connectivity=self.connectivity,
                          neighbours=neighbours, coordinates=(coordinates - 1).astype(np.int32),
                          offsets=self.offsets)

    def neighbour_table(self) -> NeighbourTable:
        return grid_neighbour_table(self.voxel_graph())

    def neighbour_graph(self) -> csr_matrix:
        return adjacency_from_table(self.neighbour_table())

    # -- clusters ----------------------------------------------------------------------------------------------
    def label(self, active: np.ndarray) -> tuple[np.ndarray, int]:
        """Connected components by ``scipy.ndimage.label`` on the grid (numbered in C order of first voxel)."""
        volume = self.to_volume(np.asarray(active, dtype=bool))
        labels, n = ndimage.label(volume, structure=connectivity_structure(self.connectivity))
        return labels[self.mask], int(n)

    def extent(self, labels: np.ndarray, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        labels = np.asarray(labels)
        n = int(labels.max(initial=0)) if n is None else n
        counts = np.bincount(labels[labels > 0], minlength=n + 1)[1:]
        return counts, counts * self.voxel_volume

    def local_maxima(self, values: np.ndarray, labels: np.ndarray,
                     n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Local maxima of each cluster, one per plateau, as nilearn's ``get_clusters_table`` finds them.

        A voxel is a maximum when none of its 26 neighbours (voxels outside the cluster count as 0) is larger;
        unless the whole cluster is (nearly) constant, voxels inside a flat neighbourhood are not maxima.
        Face-connected maxima form a plateau, reported at its value-weighted centre of mass rounded to the nearest
        voxel (half to even), or at the plateau voxel nearest to that centre when the centre falls outside it.
        """
        labels3d = self.to_volume(np.asarray(labels))
        values3d = self.to_volume(np.asarray(values, dtype=np.float64))
        boxes = ndimage.find_objects(labels3d, max_label=n)
        found = []
        for cluster in range(1, n + 1):
            box = _expanded_box(boxes[cluster - 1], self.shape)
            cluster_values = np.where(labels3d[box] == cluster, values3d[box], 0.0)
            origin = np.array([s.start for s in box])
            ijk, peak_values = box_maxima(cluster_values, origin)
            found.append((self.element_index[ijk[:, 0], ijk[:, 1], ijk[:, 2]], peak_values))
        return found


def grid_neighbour_table(graph: VoxelGraph) -> NeighbourTable:
    """A VoxelGraph as a NeighbourTable, with the slots known to be adjacent for every voxel.

    ``adjacent[j]``: slots whose offsets are neighbours of offset ``j`` under the graph's connectivity; ``lines``:
    one slot per (dx, dy) pair (neighbours that differ only in z share a cache line of the union-find).
    """
    offsets = graph.offsets.astype(np.int64)
    difference = np.abs(offsets[:, None, :] - offsets[None, :, :])
    adjacent = (difference.max(axis=2) == 1) & (difference.sum(axis=2) <= CONNECTIVITY_RANK[graph.connectivity])
    masks = (adjacent * (1 << np.arange(len(offsets), dtype=np.int64))[None, :]).sum(axis=1)
    _, lines = np.unique(offsets[:, :2], axis=0, return_index=True)
    return NeighbourTable(n_elements=graph.n_voxels, neighbours=graph.neighbours, adjacent=masks.astype(np.int64),
                          lines=np.sort(lines).astype(np.int64))


def _expanded_box(box: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """A bounding box grown by one voxel on each side, clipped to the grid."""
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, shape, strict=True))


def _plateau_centres(values: np.ndarray, plateaus: np.ndarray, n_plateaus: int, origin: np.ndarray) -> np.ndarray:
    """Value-weighted centre of mass of each labelled plateau, in grid indices (``origin`` = box corner)."""
    flat_labels = plateaus.ravel()
    total = np.bincount(flat_labels, weights=values.ravel(), minlength=n_plateaus + 1)[1:]
    centres = np.empty((n_plateaus, 3))
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = values.shape[axis]
        index = (np.arange(values.shape[axis]) + origin[axis]).astype(np.float64).reshape(shape)
        moment = np.bincount(flat_labels, weights=(values * index).ravel(), minlength=n_plateaus + 1)[1:]
        centres[:, axis] = moment / total
    return centres


def box_maxima(values: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plateau representatives of one cluster's values in its box (0 outside the cluster); grid indices."""
    inside = values != 0
    neighbourhood_max = ndimage.maximum_filter(values, size=3)
    is_maximum = (values == neighbourhood_max) & inside
    cluster_values = values[inside]
    if not np.isclose(cluster_values.max(), cluster_values.min()):
        is_maximum &= neighbourhood_max > ndimage.minimum_filter(values, size=3)
    plateaus, n_plateaus = ndimage.label(is_maximum)  # face connectivity, as nilearn
    centres = np.round(_plateau_centres(values, plateaus, n_plateaus, origin)).astype(int)
    local = centres - origin
    plateau_index = np.arange(1, n_plateaus + 1)
    outside = plateaus[local[:, 0], local[:, 1], local[:, 2]] != plateau_index
    if np.any(outside):
        plateau_voxels = np.argwhere(plateaus > 0)
        plateau_of_voxel = plateaus[plateaus > 0]
        for row in np.flatnonzero(outside):
            candidates = plateau_voxels[plateau_of_voxel == plateau_index[row]]
            distance = np.linalg.norm(candidates - local[row], axis=1)
            local[row] = candidates[np.argmin(distance)]
    peak_values = values[local[:, 0], local[:, 1], local[:, 2]]
    return local + origin, peak_values
