"""A triangulated surface: vertices, faces, optional hemispheres and an optional vertex mask (e.g. medial wall).

Elements are the in-mask vertices in increasing vertex order. Two vertices are neighbours when a face has both
(the edges of the triangles). A vertex's area is one third of the area of each triangle it belongs to, so the
vertex areas sum to the surface area; cluster extents are the summed areas of their vertices, in mm2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np
from scipy.sparse import csr_matrix

from runner.errors import RunnerError
from runner.space.graph import NeighbourTable, adjacency_from_edges, label_graph, table_from_adjacency


def triangle_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,) area of each triangle: half the norm of the cross product of two of its edges."""
    corners = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    return 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)


def vertex_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(N,) area attributed to each vertex: one third of each adjacent triangle's area (barycentric cells)."""
    faces = np.asarray(faces, dtype=np.int64)
    thirds = np.repeat(triangle_areas(vertices, faces) / 3.0, 3)
    return np.bincount(faces.ravel(), weights=thirds, minlength=len(vertices))


@dataclass(frozen=True, eq=False)
class MeshSpace:
    """The in-mask vertices of a triangulated surface.

    Parameters
    ----------
    vertices : np.ndarray
        (N, 3) positions in mm.
    faces : np.ndarray
        (F, 3) vertex indices of the triangles.
    parts : mapping, optional
        Hemisphere name (e.g. ``"L"``, ``"R"``) -> slice or vertex indices of the whole mesh; disjoint.
    mask : np.ndarray, optional
        (N,) bool: vertices analysed (False e.g. on the medial wall). Vertex areas come from all faces, so a
        masked-out neighbour does not shrink a vertex's area.
    """

    vertices: np.ndarray
    faces: np.ndarray
    parts: Mapping[str, slice | np.ndarray] | None = None
    mask: np.ndarray | None = None
    _part_of_vertex: np.ndarray = field(init=False, repr=False)
    _local_vertex: np.ndarray = field(init=False, repr=False)

    kind: ClassVar[str] = "mesh"
    size_columns: ClassVar[tuple[str, str]] = ("size_vertices", "area_mm2")
    index_columns: ClassVar[tuple[str, ...]] = ("hemi", "vertex")

    def __post_init__(self) -> None:
        vertices = np.asarray(self.vertices, dtype=np.float64)
        faces = np.asarray(self.faces)
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise RunnerError(f"mesh vertices must be an (N, 3) array, got shape {vertices.shape}")
        if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
            raise RunnerError(f"mesh faces must be an (F, 3) integer array, got shape {faces.shape}")
        if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise RunnerError(f"mesh faces index vertices outside 0..{len(vertices) - 1}")
        mask = np.ones(len(vertices), bool) if self.mask is None else np.asarray(self.mask) != 0
        if mask.shape != (len(vertices),):
            raise RunnerError(f"the vertex mask must have one value per vertex ({len(vertices)}), "
                              f"got shape {mask.shape}")
        part_of_vertex = np.full(len(vertices), -1, dtype=np.int64)  # -1: no part
        local_vertex = np.arange(len(vertices))
        for number, (name, members) in enumerate((self.parts or {}).items()):
            chosen = np.arange(len(vertices))[members]
            if np.any(part_of_vertex[chosen] >= 0):
                raise RunnerError(f"mesh part {name!r} overlaps another part")
            part_of_vertex[chosen] = number
            local_vertex[chosen] = np.arange(chosen.size)
        object.__setattr__(self, "vertices", vertices)
        object.__setattr__(self, "faces", faces.astype(np.int64))
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "_part_of_vertex", part_of_vertex)
        object.__setattr__(self, "_local_vertex", local_vertex)

    @classmethod
    def from_hemispheres(cls, hemispheres: Mapping[str, tuple[np.ndarray, np.ndarray]],
                         masks: Mapping[str, np.ndarray] | None = None) -> MeshSpace:
        """One space from separate meshes (e.g. ``{"L": (vertices, faces), "R": ...}``), in the given order."""
        vertices, faces, parts, mask = [], [], {}, []
        start = 0
        for name, (hemi_vertices, hemi_faces) in hemispheres.items():
            count = len(hemi_vertices)
            vertices.append(np.asarray(hemi_vertices, dtype=np.float64))
            faces.append(np.asarray(hemi_faces, dtype=np.int64) + start)
            parts[name] = slice(start, start + count)
            mask.append(np.ones(count, bool) if masks is None or name not in masks else np.asarray(masks[name]))
            start += count
        return cls(np.concatenate(vertices), np.concatenate(faces), parts, np.concatenate(mask))

    # -- elements ----------------------------------------------------------------------------------------------
    @cached_property
    def vertex_of_element(self) -> np.ndarray:
        """(V,) mesh vertex of each element."""
        return np.flatnonzero(self.mask)

    @cached_property
    def n_elements(self) -> int:
        return int(self.mask.sum())

    @cached_property
    def vertex_areas(self) -> np.ndarray:
        """(N,) area of every mesh vertex in mm2 (masked-out vertices included)."""
        return vertex_areas(self.vertices, self.faces)

    @property
    def element_measure(self) -> np.ndarray:
        return self.vertex_areas[self.vertex_of_element]

    @property
    def part_names(self) -> list[str]:
        return list((self.parts or {}).keys())

    def coordinates(self, indices: np.ndarray) -> np.ndarray:
        return self.vertices[self.vertex_of_element[np.asarray(indices, dtype=np.int64)]]

    def index_values(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """``hemi`` (part name, "" without parts) and ``vertex`` (index within its part's own mesh)."""
        vertex = self.vertex_of_element[np.asarray(indices, dtype=np.int64)]
        names = np.array(self.part_names + [""], dtype=object)
        return {"hemi": names[self._part_of_vertex[vertex]], "vertex": self._local_vertex[vertex]}

    # -- graph -------------------------------------------------------------------------------------------------
    @cached_property
    def _adjacency(self) -> csr_matrix:
        element = np.full(len(self.vertices), -1, dtype=np.int64)
        element[self.vertex_of_element] = np.arange(self.n_elements)
        edges = np.concatenate([self.faces[:, [0, 1]], self.faces[:, [1, 2]], self.faces[:, [2, 0]]])
        edges = element[edges]
        edges = edges[np.all(edges >= 0, axis=1)]
        return adjacency_from_edges(edges, self.n_elements)

    def neighbour_graph(self) -> csr_matrix:
        return self._adjacency

    @cached_property
    def _table(self) -> NeighbourTable:
        return table_from_adjacency(self._adjacency)

    def neighbour_table(self) -> NeighbourTable:
        return self._table

    # -- clusters ----------------------------------------------------------------------------------------------
    def label(self, active: np.ndarray) -> tuple[np.ndarray, int]:
        active = np.asarray(active, dtype=bool)
        if active.shape != (self.n_elements,):
            raise RunnerError(f"expected {self.n_elements} in-mask values, got shape {active.shape}")
        return label_graph(self._adjacency, active)

    def extent(self, labels: np.ndarray, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        labels = np.asarray(labels)
        n = int(labels.max(initial=0)) if n is None else n
        inside = labels > 0
        counts = np.bincount(labels[inside], minlength=n + 1)[1:]
        areas = np.bincount(labels[inside], weights=self.element_measure[inside], minlength=n + 1)[1:]
        return counts, areas

    def local_maxima(self, values: np.ndarray, labels: np.ndarray,
                     n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Local maxima of each cluster on the mesh, one per plateau (the grid's rule with mesh edges).

        A vertex is a maximum when no neighbour in its cluster is larger (neighbours outside the cluster count
        as 0); unless the cluster is (nearly) constant, a vertex whose neighbourhood is flat is not one. Maxima
        joined by an edge form a plateau, reported at the plateau vertex nearest (in mm) to the plateau's
        value-weighted centre of mass.
        """
        values = np.asarray(values, dtype=np.float64)
        labels = np.asarray(labels)
        graph = self._adjacency
        rows = np.repeat(np.arange(self.n_elements), np.diff(graph.indptr))
        cols = graph.indices
        neighbour_value = np.where(labels[cols] == labels[rows], values[cols], 0.0)
        largest = values.copy()
        smallest = values.copy()
        np.maximum.at(largest, rows, neighbour_value)
        np.minimum.at(smallest, rows, neighbour_value)
        found = []
        for cluster in range(1, n + 1):
            members = np.flatnonzero(labels == cluster)
            member_values = values[members]
            is_maximum = member_values == largest[members]
            if not np.isclose(member_values.max(), member_values.min()):
                is_maximum &= largest[members] > smallest[members]
            candidates = members[is_maximum]
            plateau, n_plateaus = label_graph(graph[candidates][:, candidates], np.ones(candidates.size, bool))
            xyz = self.coordinates(candidates)
            chosen = np.empty(n_plateaus, dtype=np.int64)
            for number in range(1, n_plateaus + 1):
                inside = np.flatnonzero(plateau == number)
                weights = values[candidates[inside]]
                centre = (weights[:, None] * xyz[inside]).sum(axis=0) / weights.sum()
                chosen[number - 1] = candidates[inside[np.argmin(np.linalg.norm(xyz[inside] - centre, axis=1))]]
            found.append((chosen, values[chosen]))
        return found
