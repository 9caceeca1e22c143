"""The ``Space`` protocol: where the in-mask values of a map live (a voxel grid or a triangulated mesh).

Every spatial step (clusters, extents, peaks, TFCE, ARI) takes a Space and ``(V,)`` vectors over its in-mask
elements, the vectors the model produces, so one implementation serves volumes and surfaces.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from scipy.sparse import csr_matrix

from runner.space.defaults import MAX_SUBPEAKS, MIN_DISTANCE_MM
from runner.space.graph import NeighbourTable


@runtime_checkable
class Space(Protocol):
    """In-mask elements (voxels or vertices), their neighbours, sizes and positions in mm."""

    kind: str  # "grid" or "mesh"
    size_columns: tuple[str, str]  # cluster-table columns: element count, measure (mm3 or mm2)
    index_columns: tuple[str, ...]  # cluster-table columns locating a peak: ("i", "j", "k") or ("hemi", "vertex")

    @property
    def n_elements(self) -> int:
        """Number of in-mask elements V."""

    @property
    def element_measure(self) -> np.ndarray:
        """(V,) volume (mm3) or area (mm2) of each element."""

    def neighbour_graph(self) -> csr_matrix:
        """(V, V) symmetric adjacency without self loops."""

    def neighbour_table(self) -> NeighbourTable:
        """The same graph as padded neighbour lists (for compiled kernels)."""

    def label(self, active: np.ndarray) -> tuple[np.ndarray, int]:
        """Connected components of ``active`` (V,): labels ``1..n`` numbered by first element, 0 elsewhere."""

    def extent(self, labels: np.ndarray, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per label ``1..n``: number of elements and summed measure (mm3 or mm2)."""

    def coordinates(self, indices: np.ndarray) -> np.ndarray:
        """(k, 3) positions in mm of elements ``indices``."""

    def index_values(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Values of ``index_columns`` for elements ``indices``."""

    def local_maxima(self, values: np.ndarray, labels: np.ndarray,
                     n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per cluster ``1..n`` of positive ``values``: element indices and values of its local maxima."""


def select_peaks(
    xyz: np.ndarray,
    peak_values: np.ndarray,
    min_distance: float = MIN_DISTANCE_MM,
    max_peaks: int = MAX_SUBPEAKS + 1,
    strict_min_distance: bool = False,
) -> np.ndarray:
    """Keep the highest local maxima that are more than ``min_distance`` mm apart (Euclidean).

    Maxima are visited by decreasing value (ties in the given order). With nilearn's rule (default) a candidate
    is compared with the last peak kept only, so a kept peak can lie within ``min_distance`` of an earlier,
    higher one; with ``strict_min_distance`` it must be farther than ``min_distance`` from every kept peak.

    Parameters
    ----------
    xyz : np.ndarray
        (n, 3) positions in mm of the candidates.
    peak_values : np.ndarray
        (n,) their values.
    min_distance, max_peaks, strict_min_distance
        See above; at most ``max_peaks`` are kept.

    Returns
    -------
    np.ndarray
        Positions (into the candidates) of the kept peaks, highest first.
    """
    order = np.argsort(-np.asarray(peak_values), kind="stable")
    xyz = np.asarray(xyz, dtype=np.float64)[order]
    kept = [0]
    for candidate in range(1, len(order)):
        if len(kept) >= max_peaks:
            break
        others = xyz[kept] if strict_min_distance else xyz[kept[-1:]]
        if np.all(np.linalg.norm(others - xyz[candidate], axis=1) > min_distance):
            kept.append(candidate)
    return order[kept]
