"""One spatial model for voxel grids and triangulated meshes (see ``docs/architecture.md``, "Space")."""

from runner.space.base import Space, select_peaks
from runner.space.grid import GridSpace, VoxelGraph
from runner.space.mesh import MeshSpace
from runner.space.table import cluster_table

__all__ = ["GridSpace", "MeshSpace", "Space", "VoxelGraph", "cluster_table", "select_peaks"]
