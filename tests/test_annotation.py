"""Atlas labels of peaks on the mesh: reading .annot and .label.gii (nibabel writes them), the nearest labelled
vertex against a brute-force search, and the `label` column of a surface run's cluster tables."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import run_analysis
from test_cifti import write_gifti

from runner.errors import RunnerError


def write_annot(keys: np.ndarray, names: list[str], path) -> None:
    """A FreeSurfer .annot: ``keys`` index ``names`` (-1: no label)."""
    colours = np.array([[20 * i % 256, 40 * i % 256, 60 * i % 256, 0, 0] for i in range(len(names))])
    nib.freesurfer.write_annot(str(path), np.asarray(keys, np.int32), colours, names, fill_ctab=True)


def write_label_gii(keys: np.ndarray, names: dict[int, str], path) -> None:
    table = nib.gifti.GiftiLabelTable()
    for key, name in names.items():
        label = nib.gifti.GiftiLabel(key=key, red=0.5, green=0.5, blue=0.5, alpha=1.0)
        label.label = name
        table.labels.append(label)
    array = nib.gifti.GiftiDataArray(np.asarray(keys, np.int32), intent="NIFTI_INTENT_LABEL",
                                     datatype="NIFTI_TYPE_INT32")
    nib.save(nib.GiftiImage(darrays=[array], labeltable=table), path)


def brute_force_label(names: list[str], coordinates: np.ndarray, vertex: int) -> str:
    """The vertex's own label, else the label of the labelled vertex at the smallest distance (a plain loop)."""
    if names[vertex]:
        return names[vertex]
    best, best_distance = "", np.inf
    for other, name in enumerate(names):
        distance = float(np.linalg.norm(coordinates[other] - coordinates[vertex]))
        if name and distance < best_distance:
            best, best_distance = name, distance
    return best


def test_annot_and_label_gii_read_the_same_labels(tmp_path):
    from runner.data.annotation import read_annotation

    rng = np.random.default_rng(0)
    keys = rng.integers(-1, 3, size=50)
    keys[:4] = [-1, 0, 1, 2]
    write_annot(keys, ["unknown", "precentral", "insula"], tmp_path / "lh.test.annot")
    write_label_gii(keys, {0: "???", 1: "precentral", 2: "insula"}, tmp_path / "lh.test.label.gii")
    expected = np.array([{-1: "", 0: "", 1: "precentral", 2: "insula"}[int(k)] for k in keys], dtype=object)
    for name in ("lh.test.annot", "lh.test.label.gii"):
        np.testing.assert_array_equal(read_annotation(tmp_path / name, 50, "data.annotation_left"), expected)
    with pytest.raises(RunnerError, match="labels 50 vertices but its mesh hemisphere has 60"):
        read_annotation(tmp_path / "lh.test.annot", 60, "data.annotation_left")
    (tmp_path / "bad.annot").write_bytes(b"not an annotation")
    with pytest.raises(RunnerError, match="cannot be read as an annotation"):
        read_annotation(tmp_path / "bad.annot", 50, "data.annotation_left")


def test_nearest_labels_equal_a_brute_force_search():
    from runner.data.annotation import nearest_labels

    rng = np.random.default_rng(1)
    coordinates = rng.uniform(0, 50, size=(200, 3))
    names = [("" if rng.random() < 0.6 else f"region{rng.integers(5)}") for _ in range(200)]
    vertices = np.arange(200)
    ours = nearest_labels(np.array(names, dtype=object), coordinates, vertices)
    assert ours == [brute_force_label(names, coordinates, int(v)) for v in vertices]
    assert nearest_labels(np.array([""] * 3, dtype=object), coordinates[:3], np.arange(3)) == ["", "", ""]


def test_surface_cluster_tables_gain_the_peaks_labels(tmp_path):
    """A two-region toy atlas (anterior / posterior of y = -20 mm, the medial wall unlabelled) on fsaverage5: each
    cluster-table row's label is its peak vertex's region, found from the mesh coordinates independently."""
    from runner.data.surface import bundled_mesh

    mesh = bundled_mesh("fsaverage5")
    rng = np.random.default_rng(3)
    names, rows = {}, []
    for hemi in ("L", "R"):
        y = mesh[hemi].vertices[:, 1]
        keys = np.where(y > -20, 1, 2)
        keys[~mesh[hemi].cortex] = -1 if hemi == "L" else 0
        names[hemi] = [{-1: "", 0: "", 1: "anterior", 2: "posterior"}[int(k)] for k in keys]
        if hemi == "L":
            write_annot(keys, ["unknown", "anterior", "posterior"], tmp_path / "lh.toy.annot")
        else:
            write_label_gii(keys, {0: "Medial_Wall", 1: "anterior", 2: "posterior"}, tmp_path / "rh.toy.label.gii")
    centres = {"L": mesh["L"].vertices[np.flatnonzero(mesh["L"].cortex)[500]],
               "R": mesh["R"].vertices[np.flatnonzero(mesh["R"].cortex)[4000]]}
    for subject in range(10):
        row = {"participant_id": f"sub-{subject:02d}"}
        for hemi in ("L", "R"):
            bump = 2.5 * np.exp(-np.sum((mesh[hemi].vertices - centres[hemi]) ** 2, axis=1) / (2 * 10.0**2))
            write_gifti(rng.standard_normal(len(mesh[hemi].vertices)) + bump, tmp_path / f"s{subject}_{hemi}.func.gii")
            row[f"path_{'left' if hemi == 'L' else 'right'}"] = f"s{subject}_{hemi}.func.gii"
        rows.append(row)
    pd.DataFrame(rows).to_csv(tmp_path / "table.tsv", sep="\t", index=False)
    run_dir = tmp_path / "run"
    run_analysis(run_dir, [f"data.table={tmp_path / 'table.tsv'}", "data.mesh=fsaverage5", "report=false",
                           f"data.annotation_left={tmp_path / 'lh.toy.annot'}",
                           f"data.annotation_right={tmp_path / 'rh.toy.label.gii'}",
                           "correction=[fpr,ari]", "correction.fpr.alpha=0.001", "correction.ari.thresholds=[3.0]",
                           "contrasts=[{name:mean,expr:Intercept}]"])
    for method in ("fpr", "ari"):
        table = pd.read_csv(run_dir / f"contrast-mean_desc-{method}_clusters.tsv", sep="\t", na_values="n/a")
        assert list(table.columns).index("label") == list(table.columns).index("vertex") + 1
        assert {"L", "R"} <= set(table["hemi"])
        for _, row in table.iterrows():
            hemi, vertex = row["hemi"], int(row["vertex"])
            assert row["label"] == brute_force_label(names[hemi], mesh[hemi].vertices, vertex)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {"annotation_left", "annotation_right"} <= set(manifest["input_files"])
    with pytest.raises(RunnerError, match="data.annotation_left / data.annotation_right label peaks on a mesh"):
        run_analysis(tmp_path / "bad", ["data.demo=localizer", f"data.annotation_left={tmp_path / 'lh.toy.annot'}"])
