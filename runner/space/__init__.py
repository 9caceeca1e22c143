"""One spatial model for voxel grids and triangulated meshes (see ``docs/architecture.md``, "Space").

The names below load on first use (PEP 562): importing a light submodule such as ``runner.space.defaults`` (which a
config check needs) must not load scipy's graph and image modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.space.base import Space, select_peaks
    from runner.space.grid import GridSpace, VoxelGraph
    from runner.space.mesh import MeshSpace
    from runner.space.table import cluster_table

_HOMES = {"Space": "base", "select_peaks": "base", "GridSpace": "grid", "VoxelGraph": "grid", "MeshSpace": "mesh",
          "cluster_table": "table"}

__all__ = ["GridSpace", "MeshSpace", "Space", "VoxelGraph", "cluster_table", "select_peaks"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"runner.space.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'runner.space' has no attribute {name!r}")
