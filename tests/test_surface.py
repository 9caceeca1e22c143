"""Surface analyses: GIFTI inputs on fsaverage5 against nilearn's SecondLevelModel on SurfaceImage, mesh clusters
against connected components of the face-edge graph, the engine's mesh TFCE against a threshold-by-threshold sum,
mesh smoothing against the closed-form variance of a random walk, FWE calibration on smooth null surfaces."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from conftest import run_analysis
from test_space import brute_force_mesh_tfce, brute_force_vertex_areas, face_edge_sets, random_mesh

from runner.errors import RunnerError

N_SUBJECTS = 12


def write_gifti(values: np.ndarray, path: Path) -> None:
    array = nib.gifti.GiftiDataArray(np.asarray(values, dtype=np.float32), intent="NIFTI_INTENT_NONE",
                                     datatype="NIFTI_TYPE_FLOAT32")
    nib.save(nib.GiftiImage(darrays=[array]), path)


def read_gifti(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).darrays[0].data, dtype=np.float64)


@pytest.fixture(scope="module")
def fsaverage5():
    from nilearn.datasets import load_fsaverage

    return load_fsaverage("fsaverage5")


@pytest.fixture(scope="module")
def surface_study(tmp_path_factory, fsaverage5):
    """12 subjects' maps on fsaverage5 (float32 GIFTI, both hemispheres) with a planted bump, and our run on them."""
    folder = tmp_path_factory.mktemp("surface_study")
    pial = fsaverage5["pial"]
    rng = np.random.default_rng(7)
    rows, data = [], {"left": [], "right": []}
    centre = pial.parts["left"].coordinates[100]
    bump = 1.5 * np.exp(-np.sum((pial.parts["left"].coordinates - centre) ** 2, axis=1) / (2 * 10.0**2))
    for subject in range(N_SUBJECTS):
        row = {"participant_id": f"sub-{subject:02d}"}
        for hemi, column in (("left", "path_left"), ("right", "path_right")):
            n = pial.parts[hemi].n_vertices
            values = (rng.standard_normal(n) + (bump if hemi == "left" else 0.0)).astype(np.float32)
            name = f"sub-{subject:02d}_hemi-{hemi[0].upper()}.func.gii"
            write_gifti(values, folder / name)
            data[hemi].append(values)
            row[column] = name
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "table.tsv", sep="\t", index=False)
    run_dir = folder / "run"
    run_analysis(run_dir, [f"data.table={folder / 'table.tsv'}", "data.mesh=fsaverage5",
                           "data.exclude_medial_wall=false", "correction=[fdr,bonferroni]", "report=false",
                           "contrasts=[{name:mean,expr:Intercept}]"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return folder, run_dir, manifest, {h: np.array(v) for h, v in data.items()}


def our_map(run_dir: Path, stat: str, correction: str | None = None) -> np.ndarray:
    desc = f"_desc-{correction}" if correction else ""
    return np.concatenate([read_gifti(run_dir / f"contrast-mean_stat-{stat}_hemi-{h}{desc}_statmap.func.gii")
                           for h in ("L", "R")])


def test_bundled_fsaverage5_is_nilearns_mesh(fsaverage5):
    from runner.data.surface import bundled_mesh

    ours = bundled_mesh("fsaverage5")
    for hemi, part in (("L", "left"), ("R", "right")):
        np.testing.assert_allclose(ours[hemi].vertices, fsaverage5["pial"].parts[part].coordinates, atol=1e-4)
        np.testing.assert_array_equal(ours[hemi].faces, fsaverage5["pial"].parts[part].faces)
        np.testing.assert_allclose(ours[hemi].inflated, fsaverage5["inflated"].parts[part].coordinates, atol=1e-4)
        # the medial wall is a minority of the vertices (about 7 %), one connected patch
        wall = ~ours[hemi].cortex
        assert 0.05 < wall.mean() < 0.1


def test_maps_equal_nilearn_second_level_on_surface_image(surface_study, fsaverage5):
    from nilearn.glm.second_level import SecondLevelModel
    from nilearn.surface import SurfaceImage

    _, run_dir, manifest, data = surface_study
    images = [SurfaceImage(mesh=fsaverage5["pial"], data={"left": data["left"][i], "right": data["right"][i]})
              for i in range(N_SUBJECTS)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SecondLevelModel().fit(images, design_matrix=pd.DataFrame({"intercept": np.ones(N_SUBJECTS)}))
        maps = model.compute_contrast("intercept", output_type="all")
    for ours, theirs in (("t", "stat"), ("z", "z_score"), ("p", "p_value"), ("effect", "effect_size"),
                         ("variance", "effect_variance")):
        expected = np.concatenate([np.asarray(maps[theirs].data.parts[h]).ravel() for h in ("left", "right")])
        np.testing.assert_allclose(our_map(run_dir, ours), expected, rtol=1e-5, atol=1e-12, err_msg=ours)
    # FDR and Bonferroni thresholds and the thresholded maps, as threshold_stats_img gives them
    from nilearn.glm import threshold_stats_img

    for method in ("fdr", "bonferroni"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            thresholded, threshold = threshold_stats_img(maps["z_score"], alpha=0.05, height_control=method)
        entry = next(e for e in manifest["outputs"] if e.get("correction") == method and e["kind"] == "map"
                     and e["hemi"] == "L")
        assert entry["threshold"] == pytest.approx(float(threshold), rel=1e-6)
        expected = np.concatenate([np.asarray(thresholded.data.parts[h]).ravel() for h in ("left", "right")])
        np.testing.assert_allclose(our_map(run_dir, "z", method), expected, rtol=1e-5, atol=1e-6)


def test_outputs_are_named_and_registered_per_hemisphere(surface_study):
    _, run_dir, manifest, _ = surface_study
    maps = [e for e in manifest["outputs"] if e["kind"] == "map"]
    assert maps and all(f"_hemi-{e['hemi']}" in e["path"] and e["path"].endswith("_statmap.func.gii") for e in maps)
    assert {e["hemi"] for e in maps} == {"L", "R"}
    # one record per file, with the file's own sha256 (so resume and verify check each hemisphere file)
    import hashlib

    assert len(manifest["inputs"]) == 2 * N_SUBJECTS
    for record in manifest["inputs"]:
        assert record["sha256"] == hashlib.sha256(Path(record["path"]).read_bytes()).hexdigest()
    assert {Path(r["path"]).name for r in manifest["inputs"][:2]} == {"sub-00_hemi-L.func.gii",
                                                                      "sub-00_hemi-R.func.gii"}


def test_every_hemisphere_map_has_its_bids_sidecar(surface_study):
    """A .func.gii map's sidecar is its name with .json for .func.gii, listed in the manifest, and says what the
    map holds (as the volume maps' sidecars do) and which hemisphere."""
    _, run_dir, manifest, _ = surface_study
    listed = {e["path"] for e in manifest["outputs"]}
    maps = [e for e in manifest["outputs"] if e["kind"] == "map"]
    for entry in maps:
        sidecar = entry["path"][: -len(".func.gii")] + ".json"
        assert sidecar in listed, sidecar
        content = json.loads((run_dir / sidecar).read_text())
        assert content["Contrast"] == entry["contrast"] and content["Statistic"] == entry["stat"]
        assert content["Hemisphere"] == entry["hemi"] and content["Correction"] == entry.get("correction")
    t_maps = [e for e in maps if e["stat"] == "t"]
    assert t_maps and all(json.loads((run_dir / (e["path"][:-9] + ".json")).read_text())["DegreesOfFreedom"]
                          == N_SUBJECTS - 1 for e in t_maps)


def test_mesh_clusters_are_connected_components_of_the_edge_graph(surface_study):
    """The FDR cluster table: each cluster is a connected component of the suprathreshold vertices on the face
    edges (scipy's csgraph over the edges listed by the faces), its area the summed vertex areas (Heron)."""
    from runner.data.surface import bundled_mesh

    _, run_dir, manifest, _ = surface_study
    entry = next(e for e in manifest["outputs"] if e.get("correction") == "fdr" and e["kind"] == "map")
    table = pd.read_csv(run_dir / "contrast-mean_desc-fdr_clusters.tsv", sep="\t", na_values="n/a")
    z = our_map(run_dir, "z")
    mesh = bundled_mesh("fsaverage5")
    offset = len(mesh["L"].vertices)
    vertices = np.concatenate([mesh["L"].vertices, mesh["R"].vertices])
    faces = np.concatenate([mesh["L"].faces, mesh["R"].faces + offset])
    areas = brute_force_vertex_areas(vertices, faces)
    expected = []
    for sign in (1.0, -1.0):
        active = sign * z > entry["threshold"]
        edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        edges = edges[active[edges[:, 0]] & active[edges[:, 1]]]
        graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(z), len(z)))
        _, labels = connected_components(graph, directed=False)
        for label in np.unique(labels[active]):
            members = np.flatnonzero(active & (labels == label))
            expected.append((members.size, areas[members].sum()))
    clusters = table[table["size_vertices"].notna()]
    assert len(clusters) == len(expected) > 0
    ours = sorted(zip(clusters["size_vertices"].astype(int), clusters["area_mm2"]))
    for (n_ours, area_ours), (n_ref, area_ref) in zip(ours, sorted(expected)):
        assert n_ours == n_ref and area_ours == pytest.approx(area_ref, rel=1e-9)


def test_engine_tfce_and_cluster_area_on_a_mesh():
    """The permutation engine on a MeshSpace: its observed TFCE equals the threshold-by-threshold sum of component
    areas, and its cluster sizes are the components' areas."""
    from runner.inference.permutation import PermutationOptions, permutation_inference
    from runner.space import MeshSpace

    vertices, faces = random_mesh(3, n_points=120)
    space = MeshSpace(vertices, faces)
    rng = np.random.default_rng(0)
    bump = 2.0 * np.exp(-np.sum((vertices - vertices[5]) ** 2, axis=1) / 80.0)
    Y = rng.standard_normal((10, len(vertices))) + bump
    options = PermutationOptions(n_permutations=50, seed=1, two_sided=True, tfce_E=1.0, tfce_H=2.0, tfce_dh=0.05,
                                 cluster_forming_p=0.05)
    outcome = permutation_inference(Y, np.ones((10, 1)), np.array([[1.0]]), space, ["tfce", "clustersize"],
                                    options)
    weights = brute_force_vertex_areas(vertices, faces)
    expected = brute_force_mesh_tfce(outcome.stat, face_edge_sets(len(vertices), faces), weights, 1.0, 2.0, 0.05)
    np.testing.assert_allclose(outcome.tfce, expected, rtol=1e-9, atol=1e-9)
    table = outcome.clusters["clustersize"]
    from scipy import stats

    threshold = stats.t.isf(0.025, 9)
    neighbours = face_edge_sets(len(vertices), faces)
    for sign in (1, -1):
        active = {int(v) for v in np.flatnonzero(sign * outcome.stat > threshold)}
        from test_space import bfs_components

        reference = sorted(weights[c].sum() for c in bfs_components(neighbours, active))
        ours = sorted(table.loc[table["sign"] == sign, "size_voxels"])
        np.testing.assert_allclose(ours, reference, rtol=1e-12)


def test_mesh_smoothing_has_the_variance_of_its_fwhm():
    """On a flat equilateral lattice, a smoothed delta's second moment per axis is sigma^2 = FWHM^2 / (8 ln 2)."""
    from runner.data.surface import smooth_on_mesh
    from runner.space import MeshSpace

    spacing, n = 2.0, 61
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    xy = np.c_[(i + 0.5 * j).ravel() * spacing, j.ravel() * spacing * np.sqrt(3) / 2]
    index = (i * n + j)
    faces = np.concatenate([np.c_[index[:-1, :-1].ravel(), index[1:, :-1].ravel(), index[:-1, 1:].ravel()],
                            np.c_[index[1:, :-1].ravel(), index[1:, 1:].ravel(), index[:-1, 1:].ravel()]])
    space = MeshSpace(np.c_[xy, np.zeros(len(xy))], faces)
    centre = (n // 2) * n + n // 2
    delta = np.zeros((1, len(xy)))
    delta[0, centre] = 1.0
    fwhm = 8.0
    smoothed = smooth_on_mesh(delta, space, fwhm)[0]
    assert smoothed.sum() == pytest.approx(1.0, abs=1e-9)  # the mass stays (no boundary reached)
    offset = xy - xy[centre]
    sigma2 = fwhm**2 / (8 * np.log(2))
    for axis in (0, 1):
        assert (smoothed * offset[:, axis] ** 2).sum() == pytest.approx(sigma2, rel=1e-6)


def test_fwe_is_calibrated_on_smooth_null_surfaces():
    """Light version of benchmarks/bench_surface_fwe.py: null data smoothed on a mesh; max-T and TFCE reject
    in about alpha of the datasets (60 datasets: at most 9 rejections, P(X >= 10 | 0.05) < 0.002)."""
    from runner.data.surface import smooth_on_mesh
    from runner.inference.permutation import PermutationOptions, permutation_inference
    from runner.space import MeshSpace

    vertices, faces = random_mesh(11, n_points=300, size_mm=60.0)
    space = MeshSpace(vertices, faces)
    rng = np.random.default_rng(2024)
    rejections = {"maxt": 0, "tfce": 0}
    for dataset in range(60):
        Y = smooth_on_mesh(rng.standard_normal((12, len(vertices))), space, 6.0)
        options = PermutationOptions(n_permutations=100, seed=dataset, two_sided=True, tfce_E=1.0, tfce_H=2.0)
        outcome = permutation_inference(Y, np.ones((12, 1)), np.array([[1.0]]), space, ["maxt", "tfce"], options)
        for method in rejections:
            rejections[method] += bool(outcome.corrected_p[method].min() < 0.05)
    assert all(count <= 9 for count in rejections.values()), rejections


def test_surface_config_errors_are_one_line(tmp_path, surface_study):
    folder = surface_study[0]
    with pytest.raises(RunnerError, match="data.glob is for volumes"):
        run_analysis(tmp_path / "a", ["data.glob=*.func.gii", "data.mesh=fsaverage5"])
    bad = pd.read_csv(folder / "table.tsv", sep="\t")
    write_gifti(np.zeros(100), tmp_path / "short.func.gii")
    bad.loc[0, "path_left"] = str(tmp_path / "short.func.gii")
    bad.to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
    with pytest.raises(RunnerError, match="has 100 values but its mesh hemisphere has 10242 vertices"):
        run_analysis(tmp_path / "b", [f"data.table={tmp_path / 'bad.tsv'}", "data.mesh=fsaverage5",
                                      "report=false"])
    with pytest.raises(RunnerError, match="no column 'path_left_x'.*did you mean 'path_left'"):
        run_analysis(tmp_path / "c", [f"data.table={folder / 'table.tsv'}", "data.mesh=fsaverage5",
                                      "data.path_left_column=path_left_x", "report=false"])


@pytest.mark.slow  # about 10 s: the preset with its figures, report and verify
def test_surface_preset_runs_with_figures_and_verifies(tmp_path, monkeypatch):
    from runner.verify import verify

    monkeypatch.setenv("RUNNER_DEMO_DIR", str(tmp_path / "demo"))
    run_dir = tmp_path / "run"
    run_analysis(run_dir, ["+experiment=surface_one_sample", "correction.maxt.n_permutations=100"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    figures = [e["path"] for e in manifest["outputs"] if e.get("view") == "surface"]
    assert "contrast-mean_stat-z_desc-fdr_surface.png" in figures
    assert "lateral and medial" in (run_dir / "report.html").read_text().lower()
    # the planted bumps are found: the FDR clusters' peaks are on the left and the right hemisphere
    table = pd.read_csv(run_dir / "contrast-mean_desc-fdr_clusters.tsv", sep="\t", na_values="n/a")
    assert {"L", "R"} <= set(table["hemi"])
    # max-T's table gives each peak the FWE p of its vertex, as the written -log10 p map has it
    maxt = pd.read_csv(run_dir / "contrast-mean_desc-maxt_clusters.tsv", sep="\t", na_values="n/a")
    assert len(maxt)
    for _, row in maxt.iterrows():
        logp = read_gifti(run_dir / f"contrast-mean_stat-logp_hemi-{row['hemi']}_desc-maxt_statmap.func.gii")
        assert row["p_fwe"] == pytest.approx(10 ** -abs(logp[int(row["vertex"])]), rel=1e-5)
    verdict = verify(run_dir)
    assert verdict.ok, verdict.changed_inputs + verdict.differences


def test_surface_demo_is_on_fsaverage5_and_its_planted_effects_are_recoverable(tmp_path):
    """Every map has one value per fsaverage5 vertex, 0 on the medial wall; a plain one-sample t at each vertex
    (scipy) is largest inside the planted mean bumps, and a plain two-sample t inside the planted group bump."""
    from scipy import stats

    from runner.data.surface import bundled_mesh
    from runner.demo.datasets import ensure_demo

    table_path = ensure_demo("surface", tmp_path)
    table = pd.read_csv(table_path, sep="\t")
    assert list(table.columns) == ["participant_id", "group", "age", "path_left", "path_right"]
    mesh = bundled_mesh("fsaverage5")
    maps = {}
    for hemi, column in (("L", "path_left"), ("R", "path_right")):
        maps[hemi] = np.array([read_gifti(table_path.parent / p) for p in table[column]])
        assert maps[hemi].shape == (30, len(mesh[hemi].vertices))
        assert not maps[hemi][:, ~mesh[hemi].cortex].any()
    for hemi in ("L", "R"):
        truth = read_gifti(table_path.parent / f"truth_mean_hemi-{hemi}.func.gii")
        t = stats.ttest_1samp(maps[hemi], 0.0).statistic
        assert truth[np.nanargmax(t)] > 0.5 * truth.max()
    truth = read_gifti(table_path.parent / "truth_patientMinusControl_hemi-R.func.gii")
    patients = table["group"].to_numpy() == "patient"
    t = stats.ttest_ind(maps["R"][patients], maps["R"][~patients]).statistic
    assert truth[np.nanargmax(t)] > 0.5 * truth.max()


def test_surface_figure_colours_exactly_the_faces_around_surviving_vertices():
    """Four views (lateral and medial of each hemisphere) and a colour bar; the coloured faces of a view are those
    having a vertex at or above the threshold (counted from the faces directly)."""
    from runner.data.surface import bundled_mesh
    from runner.outputs.figures_surface import surface_views_figure

    mesh = bundled_mesh("fsaverage5")
    values = {"L": np.zeros(len(mesh["L"].vertices)), "R": np.zeros(len(mesh["R"].vertices))}
    values["L"][[100, 2000]] = [5.0, 2.0]  # one above the threshold, one below
    values["R"][50] = -4.0
    figure = surface_views_figure(mesh, values, 3.0, "test")
    labels = [ax.get_label() for ax in figure.axes]
    assert labels == ["left lateral", "left medial", "right medial", "right lateral", "colorbar"]
    for ax in figure.axes[:4]:
        hemi = "L" if ax.get_label().startswith("left") else "R"
        colours = ax.collections[0].get_facecolors()
        coloured = int(np.sum(np.ptp(colours[:, :3], axis=1) > 1e-6))  # grey shades have r = g = b
        expected = int(np.any(np.abs(values[hemi][mesh[hemi].faces]) >= 3.0, axis=1).sum())
        assert coloured == expected > 0


def test_engine_on_a_mesh_does_not_depend_on_workers_or_blocks():
    """Seeded mesh TFCE and cluster results are identical with 1 and 2 workers and other block sizes."""
    from runner.inference.permutation import PermutationOptions, permutation_inference
    from runner.space import MeshSpace

    vertices, faces = random_mesh(5, n_points=150)
    space = MeshSpace(vertices, faces)
    Y = np.random.default_rng(1).standard_normal((9, len(vertices))) + 0.8
    results = []
    for n_jobs, block_size in ((1, None), (2, None), (2, 7)):
        options = PermutationOptions(n_permutations=40, seed=3, two_sided=True, tfce_E=1.0, tfce_H=2.0,
                                     cluster_forming_p=0.05, n_jobs=n_jobs, block_size=block_size)
        results.append(permutation_inference(Y, np.ones((9, 1)), np.array([[1.0]]), space,
                                             ["tfce", "clustersize", "clustermass"], options))
    for other in results[1:]:
        np.testing.assert_array_equal(other.tfce, results[0].tfce)
        for method in ("tfce", "clustersize", "clustermass"):
            np.testing.assert_array_equal(other.null_max[method], results[0].null_max[method])
            np.testing.assert_array_equal(other.corrected_p[method], results[0].corrected_p[method])


def test_ari_and_cluster_methods_run_on_the_surface(surface_study, tmp_path):
    """ARI's clusters on the mesh are the face-edge components above its threshold (sizes and areas), and the
    permutation cluster methods publish the mesh table schema."""
    from runner.data.surface import bundled_mesh

    folder = surface_study[0]
    run_dir = tmp_path / "run"
    run_analysis(run_dir, [f"data.table={folder / 'table.tsv'}", "data.mesh=fsaverage5", "report=false",
                           "correction=[ari,clustersize]", "correction.clustersize.n_permutations=50",
                           "correction.clustersize.cluster_forming_p=0.01", "correction.ari.thresholds=[3.0]",
                           "contrasts=[{name:mean,expr:Intercept}]"])
    z = our_map(run_dir, "z")
    mesh = bundled_mesh("fsaverage5")
    cortex = np.concatenate([mesh["L"].cortex, mesh["R"].cortex])
    faces = np.concatenate([mesh["L"].faces, mesh["R"].faces + len(mesh["L"].vertices)])
    areas = brute_force_vertex_areas(np.concatenate([mesh["L"].vertices, mesh["R"].vertices]), faces)
    active = (z > 3.0) & cortex
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = edges[active[edges[:, 0]] & active[edges[:, 1]]]
    _, labels = connected_components(coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])),
                                                shape=(len(z), len(z))), directed=False)
    expected = sorted((int((active & (labels == c)).sum()), areas[active & (labels == c)].sum())
                      for c in np.unique(labels[active]))
    table = pd.read_csv(run_dir / "contrast-mean_desc-ari_clusters.tsv", sep="\t", na_values="n/a")
    ours = sorted(zip(table["size_vertices"].astype(int), table["area_mm2"]))
    assert len(ours) == len(expected) > 0
    for (n_ours, area_ours), (n_ref, area_ref) in zip(ours, expected):
        assert n_ours == n_ref and area_ours == pytest.approx(area_ref, rel=1e-9)
    clusters = pd.read_csv(run_dir / "contrast-mean_desc-clustersize_clusters.tsv", sep="\t", na_values="n/a")
    assert list(clusters.columns) == ["cluster_id", "sign", "x", "y", "z", "peak_stat", "size_vertices", "area_mm2",
                                      "hemi", "vertex", "mass", "p_fwe"]
    assert len(clusters) and clusters["p_fwe"].between(0, 1).all()


def test_user_meshes_as_surf_gii(surface_study, fsaverage5, tmp_path):
    """The user's .surf.gii meshes (here fsaverage5's pial, written by nibabel) give the same maps as the bundled
    mesh without its medial-wall mask, and are recorded as inputs (verify sees a changed mesh)."""
    folder, run_dir, _, _ = surface_study
    paths = {}
    for hemi, part in (("left", "left"), ("right", "right")):
        mesh = fsaverage5["pial"].parts[part]
        image = nib.GiftiImage(darrays=[
            nib.gifti.GiftiDataArray(np.asarray(mesh.coordinates, np.float32), intent="NIFTI_INTENT_POINTSET"),
            nib.gifti.GiftiDataArray(np.asarray(mesh.faces, np.int32), intent="NIFTI_INTENT_TRIANGLE")])
        paths[hemi] = tmp_path / f"{hemi}.pial.surf.gii"
        nib.save(image, paths[hemi])
    user_run = tmp_path / "user"
    run_analysis(user_run, [f"data.table={folder / 'table.tsv'}", f"data.mesh_left={paths['left']}",
                            f"data.mesh_right={paths['right']}", "correction=[fdr,bonferroni]", "report=false",
                            "contrasts=[{name:mean,expr:Intercept}]"])
    for stat in ("t", "z", "p"):
        np.testing.assert_array_equal(our_map(user_run, stat), our_map(run_dir, stat))
    manifest = json.loads((user_run / "manifest.json").read_text())
    assert {"mesh_left", "mesh_right"} <= set(manifest["input_files"])
    with pytest.raises(RunnerError, match="data.mesh_left and data.mesh_right go together"):
        run_analysis(tmp_path / "bad", [f"data.table={folder / 'table.tsv'}", f"data.mesh_left={paths['left']}",
                                        "report=false"])


def test_surface_demo_regeneration_is_bit_identical(tmp_path):
    from runner.demo.datasets import DEMO_DATASETS

    spec = DEMO_DATASETS["surface"]
    for folder in ("a", "b"):
        spec.generate(tmp_path / folder, spec.seed)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(names) > 60
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_cifti_dscalar_round_trips_through_nibabel_with_its_brain_models(tmp_path):
    """A map written by dscalar_bytes reads back (nibabel, then our reader) with the same cortex brain models
    (structures, vertex lists, mesh sizes) and values."""
    from runner.data.cifti import dscalar_bytes, layout_from_mask, read_cifti_map

    rng = np.random.default_rng(0)
    sizes = {"L": 40, "R": 30}
    covered = rng.random(70) < 0.8
    values = np.where(covered, rng.standard_normal(70), np.nan)
    content = dscalar_bytes(values, layout_from_mask(covered, sizes), "z")
    (tmp_path / "map.dscalar.nii").write_bytes(content)
    image = nib.load(tmp_path / "map.dscalar.nii")
    models = image.header.get_axis(1)
    structures = [(name, model.vertex.tolist(), model.nvertices[name]) for name, _, model in models.iter_structures()]
    assert structures == [("CIFTI_STRUCTURE_CORTEX_LEFT", np.flatnonzero(covered[:40]).tolist(), 40),
                          ("CIFTI_STRUCTURE_CORTEX_RIGHT", np.flatnonzero(covered[40:]).tolist(), 30)]
    assert list(image.header.get_axis(0).name) == ["z"]
    back = read_cifti_map(tmp_path / "map.dscalar.nii", sizes, content)
    np.testing.assert_array_equal(back.covered, covered)
    np.testing.assert_allclose(back.values[covered], values[covered].astype(np.float32))

