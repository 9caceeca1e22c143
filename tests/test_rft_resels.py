"""Resel counts of lattice search volumes against brute-force cell counts and closed-form intrinsic volumes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from runner.inference.rft.resels import lattice_counts, resel_counts, search_dimension


def brute_force_counts(mask: np.ndarray) -> tuple[int, list[int], list[int], int]:
    """Points, edges per axis, faces per plane and cubes by visiting every cell of the grid one by one."""
    m = mask.astype(bool)
    nx, ny, nz = m.shape
    points = edges_x = edges_y = edges_z = faces_xy = faces_xz = faces_yz = cubes = 0
    for i, j, k in itertools.product(range(nx), range(ny), range(nz)):
        if not m[i, j, k]:
            continue
        points += 1
        def inside(di, dj, dk):
            a, b, c = i + di, j + dj, k + dk
            return a < nx and b < ny and c < nz and m[a, b, c]
        edges_x += inside(1, 0, 0)
        edges_y += inside(0, 1, 0)
        edges_z += inside(0, 0, 1)
        faces_xy += inside(1, 0, 0) and inside(0, 1, 0) and inside(1, 1, 0)
        faces_xz += inside(1, 0, 0) and inside(0, 0, 1) and inside(1, 0, 1)
        faces_yz += inside(0, 1, 0) and inside(0, 0, 1) and inside(0, 1, 1)
        cubes += all(inside(*offset) for offset in itertools.product((0, 1), repeat=3))
    return points, [edges_x, edges_y, edges_z], [faces_xy, faces_xz, faces_yz], cubes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cell_counts_match_brute_force_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((7, 6, 5)) < 0.7
    counts = lattice_counts(mask)
    points, edges, faces, cubes = brute_force_counts(mask)
    assert counts.points == points
    assert list(counts.edges) == edges
    assert list(counts.faces) == faces
    assert counts.cubes == cubes


@pytest.mark.parametrize("shape", [(5, 7, 9), (12, 3, 4), (2, 2, 2)])
@pytest.mark.parametrize("fwhm", [1.0, 2.5])
def test_box_resels_are_the_intrinsic_volumes_of_the_box(shape, fwhm):
    # A box of a x b x c voxel centres spans a solid box with sides (a-1, b-1, c-1) voxels; its intrinsic volumes
    # are 1, the sum of the sides, the half surface area and the volume (Worsley et al. 1996, Table 1).
    a, b, c = (s - 1 for s in shape)
    expected = np.array([1.0, (a + b + c) / fwhm, (a * b + a * c + b * c) / fwhm**2, a * b * c / fwhm**3])
    np.testing.assert_allclose(resel_counts(np.ones(shape, bool), fwhm), expected, rtol=1e-12)


def test_anisotropic_fwhm_scales_each_axis():
    a, b, c = 9, 5, 3
    w = np.array([2.0, 3.0, 4.0])
    expected = [1.0, a / w[0] + b / w[1] + c / w[2],
                a * b / (w[0] * w[1]) + a * c / (w[0] * w[2]) + b * c / (w[1] * w[2]), a * b * c / np.prod(w)]
    np.testing.assert_allclose(resel_counts(np.ones((a + 1, b + 1, c + 1)), w), expected, rtol=1e-12)


def ball(radius: float, size: int | None = None) -> np.ndarray:
    size = int(np.ceil(radius)) + 2 if size is None else size
    grid = np.indices((2 * size + 1,) * 3) - size
    return (grid**2).sum(axis=0) <= radius**2


def test_euler_characteristic_of_known_shapes():
    solid = ball(6)
    shell = ball(8) & ~ball(5, size=10)  # one cavity: EC = 1 + 1
    two = np.concatenate([ball(3), np.zeros((3, 11, 11), bool), ball(3)], axis=0)
    torus = np.zeros((25, 25, 7), bool)
    grid = np.indices(torus.shape) - np.array([12, 12, 3])[:, None, None, None]
    ring_radius = np.hypot(grid[0], grid[1])
    torus[(np.hypot(ring_radius - 8, grid[2]) <= 2.5)] = True  # one tunnel: EC = 1 - 1
    for mask, euler in [(solid, 1), (shell, 2), (two, 2), (torus, 0)]:
        assert resel_counts(mask, 1.0)[0] == euler


def test_digitised_ball_converges_to_its_closed_forms():
    # Ball of radius r: R3 = 4/3 pi r^3. The staircase surface of the voxelised ball counts each axis's projected
    # area (pi r^2) and each axis's 2r slabs of unit Euler characteristic, so R2 -> 3 pi r^2 and R1 = 6 r
    # (3/2 of the smooth ball's 2 pi r^2 and 4 r). The complex spanned by voxel centres sits about half a voxel
    # inside the sphere, so R2 and R3 approach their limits with a relative error of order 1/r.
    fwhm = 2.0
    errors = []
    for r in (15, 30):
        counts = resel_counts(ball(r), fwhm)
        assert counts[0] == 1
        np.testing.assert_allclose(counts[1], 6 * r / fwhm, rtol=1e-12)
        limits = np.array([3 * np.pi * r**2 / fwhm**2, 4 / 3 * np.pi * r**3 / fwhm**3])
        errors.append(np.abs(counts[2:] / limits - 1))
    assert np.all(errors[1] < 0.08)
    assert np.all(errors[1] < 0.6 * errors[0])  # halves (about) when the radius doubles


def test_slices_and_lines_have_lower_dimension():
    square = np.ones((10, 10, 1), bool)
    counts = resel_counts(square, 3.0)
    np.testing.assert_allclose(counts, [1, 18 / 3, 81 / 9, 0])
    assert search_dimension(counts) == 2
    line = resel_counts(np.ones(11, bool), 2.0)
    np.testing.assert_allclose(line, [1, 5, 0, 0])
    assert search_dimension(line) == 1
