"""The spatial model: grids against scipy.ndimage and nilearn, meshes against breadth-first searches over face edges,
Heron's formula and a threshold-by-threshold TFCE."""

from __future__ import annotations

import warnings
from collections import deque

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.spatial import Delaunay

from runner.errors import RunnerError
from runner.inference import ari, clusters
from runner.inference.tfce import label_components, tfce
from runner.space import GridSpace, MeshSpace, Space
from runner.space.graph import label_graph
from runner.space.table import cluster_table

AFFINE = np.array([[3.0, 0, 0, -30], [0, 3.0, 0, -36], [0, 0, 3.0, -27], [0, 0, 0, 1]])
RANK = {6: 1, 18: 2, 26: 3}


# -- independent references -----------------------------------------------------------------------------------
def random_mesh(seed: int, n_points: int = 80, size_mm: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """A random triangulated sheet: Delaunay triangles of random points, lifted by a smooth bump (not planar)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size_mm, (n_points, 2))
    faces = Delaunay(xy).simplices.astype(np.int64)
    height = 5.0 * np.sin(xy[:, 0] / 7.0) * np.cos(xy[:, 1] / 9.0)
    return np.column_stack([xy, height]), faces


def face_edge_sets(n_vertices: int, faces: np.ndarray) -> list[set[int]]:
    neighbours: list[set[int]] = [set() for _ in range(n_vertices)]
    for a, b, c in faces.tolist():
        for u, v in ((a, b), (b, c), (c, a)):
            neighbours[u].add(v)
            neighbours[v].add(u)
    return neighbours


def bfs_components(neighbours: list[set[int]], active: set[int]) -> list[list[int]]:
    """Connected components of the active vertices by breadth-first search, in order of their lowest vertex."""
    seen: set[int] = set()
    components = []
    for start in sorted(active):
        if start in seen:
            continue
        queue, component = deque([start]), []
        seen.add(start)
        while queue:
            u = queue.popleft()
            component.append(u)
            for v in neighbours[u]:
                if v in active and v not in seen:
                    seen.add(v)
                    queue.append(v)
        components.append(sorted(component))
    return components


def heron_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    areas = []
    for face in faces:
        p, q, r = vertices[face]
        a, b, c = np.linalg.norm(p - q), np.linalg.norm(q - r), np.linalg.norm(r - p)
        s = (a + b + c) / 2
        areas.append(np.sqrt(max(s * (s - a) * (s - b) * (s - c), 0.0)))
    return np.array(areas)


def brute_force_vertex_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    areas = np.zeros(len(vertices))
    for face, area in zip(faces, heron_areas(vertices, faces), strict=True):
        for vertex in face:
            areas[vertex] += area / 3
    return areas


def brute_force_mesh_tfce(values: np.ndarray, neighbours: list[set[int]], weights: np.ndarray, E: float,
                          H: float, dh: float) -> np.ndarray:
    """Sum over thresholds h = k dh <= max of (summed weights of the component)^E h^H dh, both tails."""
    enhanced = np.zeros(values.size)
    for sign in (1.0, -1.0):
        tail = sign * values
        for height in dh * np.arange(1, int(tail.max() / dh) + 2):
            if height > tail.max():
                break
            active = {int(v) for v in np.flatnonzero(tail >= height)}
            for component in bfs_components(neighbours, active):
                enhanced[component] += sign * weights[component].sum() ** E * height**H * dh
    return enhanced


def partition(labels: np.ndarray) -> list[list[int]]:
    """Components of a label vector (0 = none) as sorted member lists, ordered by label."""
    return [sorted(np.flatnonzero(labels == c).tolist()) for c in range(1, int(labels.max(initial=0)) + 1)]


def holey_mask() -> np.ndarray:
    mask = np.zeros((9, 8, 7), dtype=bool)
    mask[1:8, 1:7, 1:6] = True
    mask[4, 3:5, :] = False
    return mask


# -- grid ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_grid_labelling_equals_ndimage(connectivity):
    mask = holey_mask()
    rng = np.random.default_rng(connectivity)
    space = GridSpace(mask, AFFINE, connectivity)
    assert isinstance(space, Space)
    structure = ndimage.generate_binary_structure(3, RANK[connectivity])
    for _ in range(5):
        active = rng.random(space.n_elements) < {6: 0.35, 18: 0.2, 26: 0.12}[connectivity]  # below percolation
        expected, count = ndimage.label(space.to_volume(active), structure)
        labels, n = space.label(active)
        assert n == count > 1
        np.testing.assert_array_equal(labels, expected[mask])  # same numbering: raster order of first voxel
        # the neighbour graph labels alike (a second, independent path through csgraph)
        graph_labels, graph_n = label_graph(space.neighbour_graph(), active)
        assert graph_n == count
        np.testing.assert_array_equal(graph_labels, expected[mask])


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_grid_neighbour_graph_is_symmetric_and_counts_the_neighbours(connectivity):
    mask = np.ones((5, 5, 5), dtype=bool)
    space = GridSpace(mask, AFFINE, connectivity)
    graph = space.neighbour_graph()
    assert (graph != graph.T).nnz == 0
    assert graph.diagonal().sum() == 0
    degree = np.diff(graph.indptr)
    centre = space.element_index[2, 2, 2]
    assert degree[centre] == connectivity
    assert degree[space.element_index[0, 0, 0]] == {6: 3, 18: 6, 26: 7}[connectivity]
    ijk = space.ijk
    rows, cols = graph.nonzero()
    steps = np.abs(ijk[rows] - ijk[cols])
    assert steps.max() == 1 and steps.sum(axis=1).max() == RANK[connectivity]


def test_grid_volumes_and_coordinates():
    mask = holey_mask()
    space = GridSpace(mask, AFFINE)
    values = np.arange(space.n_elements, dtype=float)
    volume = space.to_volume(values)
    assert volume[~mask].sum() == 0
    np.testing.assert_array_equal(space.from_volume(volume), values)
    stacked = space.to_volume(np.stack([values, 2 * values]))
    assert stacked.shape == mask.shape + (2,)
    np.testing.assert_array_equal(space.from_volume(stacked), np.stack([values, 2 * values]))
    ijk = np.argwhere(mask)
    np.testing.assert_allclose(space.coordinates([0, 5]), (AFFINE @ np.c_[ijk[[0, 5]], [1, 1]].T).T[:, :3])
    labels = np.zeros(space.n_elements, int)
    labels[:4], labels[10:13] = 1, 2
    counts, volumes = space.extent(labels)
    np.testing.assert_array_equal(counts, [4, 3])
    np.testing.assert_allclose(volumes, [4 * 27.0, 3 * 27.0])
    with pytest.raises(RunnerError, match="6, 18 or 26"):
        GridSpace(mask, AFFINE, 8)
    with pytest.raises(RunnerError, match="3D"):
        GridSpace(mask[0], AFFINE)


def nilearn_clusters(stat3d, threshold, two_sided, min_distance=8.0):
    reporting = pytest.importorskip("nilearn.reporting")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reporting.get_clusters_table(nib.Nifti1Image(stat3d, AFFINE), threshold, 0, two_sided, min_distance)


@pytest.mark.parametrize("seed", [0, 1])
def test_grid_peaks_and_subpeaks_equal_nilearn_and_the_3d_table(seed):
    """On a non-box mask, the space's table equals nilearn's get_clusters_table and clusters.cluster_table."""
    rng = np.random.default_rng(seed)
    shape = (20, 24, 18)
    z = ndimage.gaussian_filter(rng.standard_normal(shape), 1.2)
    z /= z.std()
    grid = np.indices(shape)
    for centre, amplitude in [((6, 8, 9), 6.0), ((13, 15, 8), -5.0), ((10, 18, 12), 3.5)]:
        z += amplitude * np.exp(-sum((grid[a] - centre[a]) ** 2 for a in range(3)) / 8.0)
    mask = ndimage.binary_erosion(np.abs(ndimage.gaussian_filter(rng.standard_normal(shape), 3)) < 0.25)
    mask |= np.abs(z) > 2  # keep the blobs, cut the noise with an irregular mask
    space = GridSpace(mask, AFFINE)
    z3d = space.to_volume(z[mask])
    for threshold in (2.0, 3.1):
        ours = clusters.cluster_table_in_space(space, z[mask], threshold, two_sided=True, min_distance=6.0)
        theirs = nilearn_clusters(z3d, threshold, True, 6.0)
        assert len(ours) == len(theirs) > 2
        assert list(ours["cluster_id"]) == [str(name) for name in theirs["Cluster ID"]]
        np.testing.assert_allclose(ours[["x", "y", "z"]].to_numpy(float), theirs[["X", "Y", "Z"]].to_numpy(float))
        np.testing.assert_allclose(ours["peak_stat"].to_numpy(float), theirs["Peak Stat"].to_numpy(float))
        pd.testing.assert_frame_equal(ours, clusters.cluster_table(z3d, AFFINE, threshold, two_sided=True,
                                                                   min_distance=6.0))


# -- mesh ---------------------------------------------------------------------------------------------------
def test_mesh_labelling_equals_a_breadth_first_search_over_face_edges():
    vertices, faces = random_mesh(0)
    rng = np.random.default_rng(1)
    mask = rng.random(len(vertices)) > 0.15
    space = MeshSpace(vertices, faces, mask=mask)
    assert isinstance(space, Space)
    neighbours = face_edge_sets(len(vertices), faces)
    in_mask = np.flatnonzero(mask)
    for _ in range(5):
        active = rng.random(space.n_elements) < 0.5
        labels, n = space.label(active)
        expected = bfs_components(neighbours, {int(v) for v in in_mask[active]})
        assert n == len(expected) > 1
        assert [in_mask[members].tolist() for members in partition(labels)] == expected
        # the batched labelling the permutation engine uses agrees (numbered from 0, -1 outside)
        batch, n_batch = label_components(active[None], space)
        assert n_batch == n
        assert sorted(sorted(np.flatnonzero(batch[0] == c)) for c in range(n)) == sorted(partition(labels))


def test_mesh_neighbour_graph_is_the_face_edges_within_the_mask():
    vertices, faces = random_mesh(2)
    mask = np.ones(len(vertices), bool)
    mask[::7] = False
    space = MeshSpace(vertices, faces, mask=mask)
    graph = space.neighbour_graph()
    assert (graph != graph.T).nnz == 0 and graph.diagonal().sum() == 0
    in_mask = np.flatnonzero(mask)
    neighbours = face_edge_sets(len(vertices), faces)
    for element, vertex in enumerate(in_mask):
        expected = sorted(v for v in neighbours[vertex] if mask[v])
        assert in_mask[graph.indices[graph.indptr[element]:graph.indptr[element + 1]]].tolist() == expected


def test_mesh_areas_are_thirds_of_the_triangles():
    vertices, faces = random_mesh(3)
    mask = np.ones(len(vertices), bool)
    mask[:10] = False  # a "medial wall": masked vertices keep their area out of the clusters
    space = MeshSpace(vertices, faces, mask=mask)
    expected = brute_force_vertex_areas(vertices, faces)
    np.testing.assert_allclose(space.vertex_areas.sum(), heron_areas(vertices, faces).sum(), rtol=1e-12)
    np.testing.assert_allclose(space.element_measure, expected[mask], rtol=1e-12)
    active = vertices[mask][:, 0] > 20
    labels, n = space.label(active)
    counts, areas = space.extent(labels, n)
    in_mask = np.flatnonzero(mask)
    for cluster, members in enumerate(partition(labels)):
        assert counts[cluster] == len(members)
        np.testing.assert_allclose(areas[cluster], expected[in_mask[members]].sum(), rtol=1e-12)


@pytest.mark.parametrize("area_weighted", [True, False])
def test_mesh_tfce_equals_threshold_by_threshold_components(area_weighted):
    vertices, faces = random_mesh(4, n_points=60)
    space = MeshSpace(vertices, faces)
    rng = np.random.default_rng(5)
    # a smooth field on the sheet with both signs
    values = 3 * np.sin(vertices[:, 0] / 6) * np.cos(vertices[:, 1] / 8) + 0.3 * rng.standard_normal(len(vertices))
    weights = brute_force_vertex_areas(vertices, faces) if area_weighted else np.ones(len(vertices))
    dh = 0.05
    expected = brute_force_mesh_tfce(values, face_edge_sets(len(vertices), faces), weights, 1.0, 2.0, dh)
    ours = tfce(values, space, E=1.0, H=2.0, dh=dh, area_weighted=area_weighted)
    assert np.count_nonzero(expected) > 20
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-10)


def test_mesh_tfce_with_exact_integral_matches_fine_steps():
    vertices, faces = random_mesh(6, n_points=50)
    space = MeshSpace(vertices, faces)
    values = np.sin(vertices[:, 0] / 5) * 2.5
    exact = tfce(values, space, E=1.0, H=2.0, dh="exact", area_weighted=True)
    fine = tfce(values, space, E=1.0, H=2.0, dh=1e-4, area_weighted=True)
    np.testing.assert_allclose(fine, exact, rtol=2e-3, atol=1e-6)


def two_hemispheres():
    left = random_mesh(7, n_points=70)
    right_vertices, right_faces = random_mesh(8, n_points=60)
    right = (right_vertices + [60.0, 0, 0], right_faces)
    masks = {"L": np.arange(70) >= 3, "R": np.ones(60, bool)}
    return MeshSpace.from_hemispheres({"L": left, "R": right}, masks), left, right, masks


def test_mesh_cluster_table_has_hemispheres_vertices_and_areas():
    space, left, right, masks = two_hemispheres()
    assert space.n_elements == 67 + 60
    xyz = space.coordinates(np.arange(space.n_elements))
    # one bump per hemisphere: positive on the left, negative on the right
    bumps = [((20.0, 20.0), 5.0), ((80.0, 20.0), -4.0)]
    stat = sum(a * np.exp(-((xyz[:, 0] - cx) ** 2 + (xyz[:, 1] - cy) ** 2) / 80.0) for (cx, cy), a in bumps)
    table = clusters.cluster_table_in_space(space, stat, 1.5, two_sided=True, min_distance=4.0)
    assert list(table.columns[:7]) == ["cluster_id", "x", "y", "z", "peak_stat", "size_vertices", "area_mm2"]
    assert list(table.columns[7:]) == ["hemi", "vertex"]
    peaks = table[table["size_vertices"].notna()]
    assert list(peaks["hemi"]) == ["L", "R"] and peaks["peak_stat"].iloc[1] < 0
    areas = np.concatenate([brute_force_vertex_areas(*left)[masks["L"]], brute_force_vertex_areas(*right)])
    for sign, hemi_rows in ((1, peaks.iloc[0]), (-1, peaks.iloc[1])):
        members = np.flatnonzero(sign * stat > 1.5)
        assert hemi_rows["size_vertices"] == members.size  # each bump is one connected cluster
        np.testing.assert_allclose(hemi_rows["area_mm2"], areas[members].sum(), rtol=1e-12)
        # the peak is the most extreme vertex, named by its index in its own hemisphere's mesh
        top = members[np.argmax(sign * stat[members])]
        assert hemi_rows["peak_stat"] == stat[top]
        hemi_vertices = left[0] if hemi_rows["hemi"] == "L" else right[0]
        np.testing.assert_allclose(hemi_vertices[hemi_rows["vertex"]], xyz[top])
        np.testing.assert_allclose(hemi_rows[["x", "y", "z"]].to_numpy(float), xyz[top])


def test_mesh_local_maxima_find_each_bump_and_a_plateau():
    vertices, faces = random_mesh(9, n_points=150, size_mm=60.0)
    space = MeshSpace(vertices, faces)
    xyz = vertices
    stat = 4 * np.exp(-((xyz[:, 0] - 15) ** 2 + (xyz[:, 1] - 30) ** 2) / 60) + 3 * np.exp(
        -((xyz[:, 0] - 45) ** 2 + (xyz[:, 1] - 30) ** 2) / 60) + 1.0
    labels, n = space.label(stat > 0.5)
    assert n == 1
    indices, values = space.local_maxima(stat, labels, n)[0]
    neighbours = face_edge_sets(len(vertices), faces)
    expected = [v for v in range(len(vertices)) if all(stat[v] > stat[u] for u in neighbours[v])]
    assert sorted(indices.tolist()) == sorted(expected)
    np.testing.assert_array_equal(values, stat[indices])
    # a constant cluster is one plateau, reported at the vertex nearest its centre
    flat = np.where(xyz[:, 0] < 30, 2.0, 0.0)
    labels, n = space.label(flat > 1)
    for cluster, (chosen, _) in enumerate(space.local_maxima(flat, labels, n), start=1):
        members = np.flatnonzero(labels == cluster)
        centre = xyz[members].mean(axis=0)
        assert chosen.tolist() == [members[np.argmin(np.linalg.norm(xyz[members] - centre, axis=1))]]


def test_ari_on_a_mesh_uses_the_mesh_schema_and_bounds():
    space, *_ = two_hemispheres()
    xyz = space.coordinates(np.arange(space.n_elements))
    z = 6 * np.exp(-((xyz[:, 0] - 20) ** 2 + (xyz[:, 1] - 20) ** 2) / 80.0)
    tdp, table = ari.cluster_tdp_in_space(space, z, [2.0, 3.0], alpha=0.05)
    assert list(table.columns) == ["threshold", "cluster_id", "size_vertices", "tdp", "true_discoveries",
                                   "peak_stat", "hemi", "vertex", "x", "y", "z", "area_mm2"]
    assert len(table) == 2 and set(table["hemi"]) == {"L"}
    np.testing.assert_array_equal(table["size_vertices"], [np.sum(z > 2.0), np.sum(z > 3.0)])
    assert ((tdp >= 0) & (tdp <= 1)).all() and (tdp[z <= 2.0] == 0).all()


def test_schema_orders_by_a_given_measure_and_appends_method_columns():
    """The permutation methods' form: rows by cluster size, one peak per cluster, their own columns after."""
    mask = np.ones((12, 5, 5), bool)
    space = GridSpace(mask, AFFINE, 26)
    stat = np.zeros(mask.shape)
    stat[1:3, 2, 2] = [5.0, 4.0]  # small cluster, highest peak
    stat[5:11, 2, 2] = [3.0, 3.5, 3.5, 3.0, 2.5, 2.6]  # larger cluster, a tie at its top
    values = stat[mask]
    labels, n = space.label(values > 1)
    counts, _ = space.extent(labels, n)
    table = cluster_table(space, values, labels, n, subpeaks=False, order_by=counts.astype(float),
                          extra={"p_fwe": np.array([0.5, 0.01])})
    assert list(table["size_voxels"]) == [6, 2]
    assert list(table[["i", "j", "k"]].iloc[0]) == [6, 2, 2]  # the tie goes to the first voxel
    assert list(table["p_fwe"]) == [0.01, 0.5]
    assert list(table.columns)[-1] == "p_fwe"


def test_mesh_input_errors():
    vertices, faces = random_mesh(0, n_points=10)
    with pytest.raises(RunnerError, match=r"\(N, 3\)"):
        MeshSpace(vertices[:, :2], faces)
    with pytest.raises(RunnerError, match="outside"):
        MeshSpace(vertices, faces + 100)
    with pytest.raises(RunnerError, match="one value per vertex"):
        MeshSpace(vertices, faces, mask=np.ones(3, bool))
    with pytest.raises(RunnerError, match="overlaps"):
        MeshSpace(vertices, faces, parts={"L": slice(0, 6), "R": slice(5, 10)})
    with pytest.raises(RunnerError, match="Space"):
        from runner.inference.tfce import voxel_graph

        tfce(np.ones(8), voxel_graph(np.ones((2, 2, 2), bool)), area_weighted=True)
