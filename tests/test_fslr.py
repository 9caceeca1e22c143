"""The user's meshes (data.mesh_left / data.mesh_right) at fsLR 32k's size: synthetic geodesic spheres with its
vertex and triangle counts, a CIFTI study on them (the fsLR 91k cortex) and a GIFTI study whose medial wall is 0
in every map, as HCP-style GIFTI files have it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import run_analysis
from surface_meshes import FSLR_32K_FREQUENCY, icosphere, write_surf_gii
from test_cifti import write_gifti, write_study
from test_space import random_mesh


@pytest.mark.slow  # about 7 s on 2 shared cores: 65k vertices read, fitted and written as CIFTI
def test_fslr_sized_user_meshes_with_cifti_inputs(tmp_path):
    """The user's meshes with fsLR 32k's counts (32492 vertices, 64980 triangles per hemisphere; synthetic geodesic
    spheres) and CIFTI files covering 29696 / 29716 vertices (the fsLR 91k cortex): the run's outputs keep those
    brain models and its t map equals a plain one-sample t (numpy) at every covered vertex."""
    sphere, faces = icosphere(FSLR_32K_FREQUENCY)
    assert sphere.shape == (32492, 3) and faces.shape == (64980, 3)
    vertices = {"L": sphere - [110.0, 0, 0], "R": sphere + [110.0, 0, 0]}
    paths = {h: write_surf_gii(vertices[h], faces, tmp_path / f"{h}.sphere.32k_fs_LR.surf.gii") for h in "LR"}
    cortex = {}
    for hemi, n_cortex, side in (("L", 29696, 1), ("R", 29716, -1)):  # the medial wall: the vertices nearest x=0
        order = np.argsort(side * vertices[hemi][:, 0], kind="stable")
        cortex[hemi] = np.ones(32492, bool)
        cortex[hemi][order[n_cortex:]] = False
    columns: list = []
    tables = write_study(tmp_path, vertices, cortex, seed=11, gifti=False, n_subjects=5, columns=columns)
    run_dir = tmp_path / "run"
    run_analysis(run_dir, [f"data.table={tables['cifti']}", f"data.mesh_left={paths['L']}",
                           f"data.mesh_right={paths['R']}", "correction=[fdr]", "report=false",
                           "contrasts=[{name:mean,expr:Intercept}]"])
    source = nib.load(tmp_path / "sub-00.dscalar.nii").header.get_axis(1)
    image = nib.load(run_dir / "contrast-mean_stat-t_statmap.dscalar.nii")
    assert image.header.get_axis(1) == source
    assert [m.nvertices for _, _, m in image.header.get_axis(1).iter_structures()][:2] == [
        {"CIFTI_STRUCTURE_CORTEX_LEFT": 32492}, {"CIFTI_STRUCTURE_CORTEX_RIGHT": 32492}]
    data = np.array(columns, dtype=np.float64)[:, :29696 + 29716]
    t = data.mean(axis=0) / (data.std(axis=0, ddof=1) / np.sqrt(5))
    np.testing.assert_allclose(np.asarray(image.dataobj)[0, :t.size], t, rtol=1e-5)


def test_gifti_on_user_meshes_leaves_out_vertices_zero_in_every_map(tmp_path):
    """Without a medial-wall mask (the user's meshes), vertices 0 in every GIFTI map leave the mask with a note;
    the t map elsewhere equals a plain one-sample t (numpy), and the left-out vertices are 0 in the outputs."""
    meshes = {"L": random_mesh(0, n_points=90), "R": random_mesh(1, n_points=70)}
    paths = {h: write_surf_gii(*meshes[h], tmp_path / f"{h}.surf.gii") for h in "LR"}
    rng = np.random.default_rng(4)
    wall = {h: np.zeros(len(meshes[h][0]), bool) for h in "LR"}
    wall["L"][:12], wall["R"][-5:] = True, True
    maps, rows = {"L": [], "R": []}, []
    for subject in range(6):
        row = {"participant_id": f"sub-{subject}"}
        for hemi, column in (("L", "path_left"), ("R", "path_right")):
            values = np.where(wall[hemi], 0.0, rng.standard_normal(len(wall[hemi])) + 0.5)
            write_gifti(values, tmp_path / f"s{subject}_{hemi}.func.gii")
            maps[hemi].append(values.astype(np.float32))
            row[column] = f"s{subject}_{hemi}.func.gii"
        rows.append(row)
    pd.DataFrame(rows).to_csv(tmp_path / "table.tsv", sep="\t", index=False)
    run_dir = tmp_path / "run"
    run_analysis(run_dir, [f"data.table={tmp_path / 'table.tsv'}", f"data.mesh_left={paths['L']}",
                           f"data.mesh_right={paths['R']}", "correction=[fdr]", "report=false",
                           "contrasts=[{name:mean,expr:Intercept}]"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert any("left out 17 vertex(es) that are 0 in every map" in note for note in manifest["notes"])
    for hemi in "LR":
        data = np.array(maps[hemi], dtype=np.float64)[:, ~wall[hemi]]
        t = data.mean(axis=0) / (data.std(axis=0, ddof=1) / np.sqrt(6))
        ours = np.asarray(nib.load(run_dir / f"contrast-mean_stat-t_hemi-{hemi}_statmap.func.gii").darrays[0].data)
        np.testing.assert_allclose(ours[~wall[hemi]], t, rtol=1e-5)
        assert not ours[wall[hemi]].any()
