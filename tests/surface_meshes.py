"""Synthetic meshes for surface tests: geodesic spheres with the vertex and triangle counts of the standard meshes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

FSLR_32K_FREQUENCY = 57  # fsLR 32k: 10 * 57^2 + 2 = 32492 vertices, 20 * 57^2 = 64980 triangles per hemisphere


def icosphere(frequency: int, radius: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """A geodesic sphere: each icosahedron face cut into ``frequency**2`` triangles, points pushed to the sphere.

    Points shared by faces are found by their exact integer barycentric weights over the icosahedron's corners,
    so the mesh is closed (10 f^2 + 2 vertices, 20 f^2 triangles, every edge in two triangles).
    """
    golden = (1 + 5**0.5) / 2
    corners = np.array([[-1, golden, 0], [1, golden, 0], [-1, -golden, 0], [1, -golden, 0],
                        [0, -1, golden], [0, 1, golden], [0, -1, -golden], [0, 1, -golden],
                        [golden, 0, -1], [golden, 0, 1], [-golden, 0, -1], [-golden, 0, 1]], dtype=float)
    base = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
            (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
            (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    n = frequency
    index: dict[tuple, int] = {}
    points, faces = [], []
    for a, b, c in base:
        local = {}
        for i in range(n + 1):
            for j in range(n + 1 - i):
                key = tuple(sorted((v, w) for v, w in ((a, n - i - j), (b, i), (c, j)) if w))
                if key not in index:
                    index[key] = len(points)
                    points.append(sum(w * corners[v] for v, w in key) / n)
                local[i, j] = index[key]
        for i in range(n):
            for j in range(n - i):
                faces.append((local[i, j], local[i + 1, j], local[i, j + 1]))
                if j < n - i - 1:
                    faces.append((local[i + 1, j], local[i + 1, j + 1], local[i, j + 1]))
    points = np.array(points)
    return radius * points / np.linalg.norm(points, axis=1, keepdims=True), np.array(faces, dtype=np.int64)


def write_surf_gii(vertices: np.ndarray, faces: np.ndarray, path: Path) -> Path:
    image = nib.GiftiImage(darrays=[
        nib.gifti.GiftiDataArray(np.asarray(vertices, np.float32), intent="NIFTI_INTENT_POINTSET"),
        nib.gifti.GiftiDataArray(np.asarray(faces, np.int32), intent="NIFTI_INTENT_TRIANGLE")])
    nib.save(image, path)
    return path
