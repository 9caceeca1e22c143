"""CIFTI-2 dense scalars: outputs over the inputs' brain models (read back with nibabel), values equal to the
GIFTI path's on the same data, subcortical voxels left out (a note, NaN in the outputs); verify compares NIfTI,
GIFTI and CIFTI maps."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import run_analysis

from runner.errors import RunnerError

N_SUBJECTS = 8
COMMON = ["correction=[fdr,clustersize]", "correction.clustersize.n_permutations=30",
          "correction.clustersize.cluster_forming_p=0.01", "report=false", "contrasts=[{name:mean,expr:Intercept}]"]


def write_gifti(values: np.ndarray, path: Path) -> None:
    array = nib.gifti.GiftiDataArray(np.asarray(values, dtype=np.float32), intent="NIFTI_INTENT_NONE",
                                     datatype="NIFTI_TYPE_FLOAT32")
    nib.save(nib.GiftiImage(darrays=[array]), path)


def cifti_models(cortex: dict[str, np.ndarray], n_voxels: int = 3) -> nib.cifti2.BrainModelAxis:
    """Cortex models over ``cortex`` vertices, then a small left-thalamus volume model (``n_voxels`` voxels)."""
    volume = np.zeros((3, 3, 3), dtype=bool)
    volume.flat[[4, 13, 22][:n_voxels]] = True
    models = (nib.cifti2.BrainModelAxis.from_mask(cortex["L"], name="CortexLeft")
              + nib.cifti2.BrainModelAxis.from_mask(cortex["R"], name="CortexRight"))
    if n_voxels:
        models = models + nib.cifti2.BrainModelAxis.from_mask(volume, name="ThalamusLeft",
                                                               affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    return models


def write_study(folder: Path, vertices: dict[str, np.ndarray], cortex: dict[str, np.ndarray], seed: int,
                gifti: bool = True, n_subjects: int = N_SUBJECTS, columns: list | None = None) -> dict[str, Path]:
    """Per subject: noise plus a bump on the left hemisphere, as a GIFTI pair and as one .dscalar.nii (cortex
    brain models plus 3 thalamus voxels of value 7); tables ``gifti.tsv`` and ``cifti.tsv``. ``columns`` receives
    each CIFTI file's values (float32)."""
    rng = np.random.default_rng(seed)
    n_columns = int(cortex["L"].sum() + cortex["R"].sum()) + 3
    # one file's bytes, then every subject's data in place of its data block (nibabel writes little-endian float32
    # last; building each image anew costs 0.3 s per fsLR-sized file)
    template = nib.Cifti2Image(np.zeros((1, n_columns), np.float32),
                               header=(nib.cifti2.ScalarAxis(["effect"]), cifti_models(cortex))).to_bytes()
    head = template[: len(template) - 4 * n_columns]
    centre = vertices["L"][np.flatnonzero(cortex["L"])[0]]
    bump = 2.0 * np.exp(-np.sum((vertices["L"] - centre) ** 2, axis=1) / (2 * 12.0**2))
    gifti_rows, cifti_rows = [], []
    for subject in range(n_subjects):
        label = f"sub-{subject:02d}"
        maps = {"L": rng.standard_normal(len(vertices["L"])) + bump, "R": rng.standard_normal(len(vertices["R"]))}
        if gifti:
            for hemi in ("L", "R"):
                write_gifti(maps[hemi], folder / f"{label}_hemi-{hemi}.func.gii")
            gifti_rows.append({"participant_id": label, "path_left": f"{label}_hemi-L.func.gii",
                               "path_right": f"{label}_hemi-R.func.gii"})
        values = np.concatenate([maps["L"][cortex["L"]], maps["R"][cortex["R"]], np.full(3, 7.0)]).astype("<f4")
        (folder / f"{label}.dscalar.nii").write_bytes(head + values.tobytes())
        if columns is not None:
            columns.append(values)
        cifti_rows.append({"participant_id": label, "path": f"{label}.dscalar.nii"})
    tables = {"cifti": folder / "cifti.tsv"}
    pd.DataFrame(cifti_rows).to_csv(tables["cifti"], sep="\t", index=False)
    if gifti:
        tables["gifti"] = folder / "gifti.tsv"
        pd.DataFrame(gifti_rows).to_csv(tables["gifti"], sep="\t", index=False)
    return tables


@pytest.fixture(scope="module")
def fsaverage5_runs(tmp_path_factory):
    """The same maps on fsaverage5 (medial wall out) as GIFTI pairs and as CIFTI dense scalars, each run."""
    from runner.data.surface import bundled_mesh

    folder = tmp_path_factory.mktemp("cifti_study")
    mesh = bundled_mesh("fsaverage5")
    cortex = {h: mesh[h].cortex for h in ("L", "R")}
    tables = write_study(folder, {h: mesh[h].vertices for h in ("L", "R")}, cortex, seed=5)
    runs = {}
    for kind, table in tables.items():
        runs[kind] = folder / f"run_{kind}"
        run_analysis(runs[kind], [f"data.table={table}", "data.mesh=fsaverage5"] + COMMON)
    manifests = {k: json.loads((run / "manifest.json").read_text()) for k, run in runs.items()}
    return folder, cortex, runs, manifests


def gifti_counterpart(run_dir: Path, cifti_name: str) -> np.ndarray:
    stem = cifti_name[: -len("_statmap.dscalar.nii")]
    head, _, desc = stem.partition("_desc-")  # BIDS puts hemi before desc
    names = [f"{head}_hemi-{h}" + (f"_desc-{desc}" if desc else "") + "_statmap.func.gii" for h in ("L", "R")]
    return np.concatenate([np.asarray(nib.load(run_dir / n).darrays[0].data, dtype=np.float64) for n in names])


def test_cifti_outputs_keep_the_inputs_brain_models_and_equal_the_gifti_run(fsaverage5_runs):
    folder, cortex, runs, manifests = fsaverage5_runs
    source = nib.load(folder / "sub-00.dscalar.nii").header.get_axis(1)
    maps = [e for e in manifests["cifti"]["outputs"] if e["kind"] == "map"]
    gifti_maps = [e for e in manifests["gifti"]["outputs"] if e["kind"] == "map"]
    assert len(maps) * 2 == len(gifti_maps) and len(maps) >= 7  # 5 contrast maps, fdr z, clustersize maps
    assert not any(e["path"].endswith(".gii") for e in manifests["cifti"]["outputs"])
    covered = np.concatenate([cortex["L"], cortex["R"]])
    for entry in maps:
        assert entry["path"].endswith("_statmap.dscalar.nii") and entry["hemi"] == "LR"
        assert entry["structures"] == ["CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT",
                                       "CIFTI_STRUCTURE_THALAMUS_LEFT"]
        image = nib.load(runs["cifti"] / entry["path"])
        models = image.header.get_axis(1)
        # the brain models, structure by structure: names, vertex indices, mesh sizes (and the voxels)
        assert models == source
        for (name, _, ours), (name_in, _, theirs) in zip(models.iter_structures(), source.iter_structures()):
            assert name == name_in
            np.testing.assert_array_equal(ours.vertex, theirs.vertex)
            np.testing.assert_array_equal(ours.voxel, theirs.voxel)
            assert ours.nvertices == theirs.nvertices
        assert list(image.header.get_axis(0).name) == [entry["path"][: -len("_statmap.dscalar.nii")]]
        values = np.asarray(image.dataobj, dtype=np.float64)[0]
        expected = gifti_counterpart(runs["gifti"], entry["path"])[covered]
        np.testing.assert_array_equal(values[:covered.sum()], expected.astype(np.float32), err_msg=entry["path"])
        assert np.isnan(values[covered.sum():]).all()  # the left-out thalamus voxels
        sidecar = json.loads((runs["cifti"] / (entry["path"][: -len(".dscalar.nii")] + ".json")).read_text())
        assert sidecar["Contrast"] == entry["contrast"] and sidecar["Statistic"] == entry["stat"]
        assert sidecar["Structures"] == entry["structures"]
    for table in ("contrast-mean_desc-fdr_clusters.tsv", "contrast-mean_desc-clustersize_clusters.tsv"):
        assert (runs["cifti"] / table).read_bytes() == (runs["gifti"] / table).read_bytes()
    assert any("left out 3 subcortical voxel(s)" in n and "NaN" in n for n in manifests["cifti"]["notes"])


def test_verify_passes_on_a_cifti_run(fsaverage5_runs):
    from runner.verify import verify

    verdict = verify(fsaverage5_runs[2]["cifti"])
    assert verdict.ok, verdict.changed_inputs + verdict.differences
    assert verdict.compared > 0


def test_compare_maps_reads_nifti_gifti_and_cifti(tmp_path):
    """Values are compared whatever the format; the geometry each format carries is compared too."""
    from runner.data.cifti import dscalar_bytes, layout_from_mask
    from runner.outputs.writer import gifti_bytes, nifti_gz_bytes
    from runner.verify import compare_maps

    values = np.arange(10, dtype=float)
    changed = values.copy()
    changed[3] += 1e-3
    layout = layout_from_mask(np.ones(10, bool), {"L": 6, "R": 4})
    other_layout = layout_from_mask(np.r_[np.ones(6), 0, np.ones(4)].astype(bool), {"L": 7, "R": 4})
    files = {
        "nii.gz": [nifti_gz_bytes(v.reshape(2, 5, 1), np.eye(4)) for v in (values, values, changed)]
        + [nifti_gz_bytes(values.reshape(2, 5, 1), np.diag([2.0, 2, 2, 1]))],
        "gii": [gifti_bytes(v, "L") for v in (values, values, changed)] + [gifti_bytes(values, "R")],
        "dscalar.nii": [dscalar_bytes(v, layout, "z") for v in (values, values, changed)]
        + [dscalar_bytes(np.r_[values[:6], 0.0, values[6:]], other_layout, "z")],
    }
    for extension, contents in files.items():
        paths = []
        for number, content in enumerate(contents):
            paths.append(tmp_path / f"{number}.{extension}")
            paths[-1].write_bytes(content)
        assert compare_maps(paths[0], paths[1], 0.0) is None
        message = compare_maps(paths[0], paths[2], 0.0)
        assert message is not None and "1 " in message and "differ" in message, message
        assert compare_maps(paths[0], paths[2], 1e-2) is None
        assert compare_maps(paths[0], paths[3], 0.0) is not None, extension
    assert compare_maps(tmp_path / "0.dscalar.nii", tmp_path / "3.dscalar.nii", 0.0) == \
        "CIFTI axes (brain models or map names) differs"
    assert compare_maps(tmp_path / "0.gii", tmp_path / "3.gii", 0.0) == "anatomical structure differs"
    assert compare_maps(tmp_path / "0.nii.gz", tmp_path / "3.nii.gz", 0.0) == "affine differs"


def test_cifti_files_on_other_brain_models_are_refused(fsaverage5_runs, tmp_path):
    folder, cortex, _, _ = fsaverage5_runs
    table = pd.read_csv(folder / "cifti.tsv", sep="\t")
    models = cifti_models(cortex, n_voxels=2)  # one thalamus voxel fewer
    values = np.zeros((1, len(models)), np.float32)
    values[0, :10] = 1.0
    header = (nib.cifti2.ScalarAxis(["effect"]), models)
    nib.Cifti2Image(values, header=header).to_filename(tmp_path / "odd.dscalar.nii")
    table["path"] = [str(folder / p) for p in table["path"]]
    table.loc[3, "path"] = str(tmp_path / "odd.dscalar.nii")
    table.to_csv(tmp_path / "table.tsv", sep="\t", index=False)
    with pytest.raises(RunnerError, match="odd.dscalar.nii has other brain models than .*sub-00.dscalar.nii"):
        run_analysis(tmp_path / "run", [f"data.table={tmp_path / 'table.tsv'}", "data.mesh=fsaverage5"] + COMMON)
    # without data.mesh the files would be read as volumes: refused, naming the setting
    with pytest.raises(RunnerError, match="is a surface file .*set data.mesh=fsaverage5"):
        run_analysis(tmp_path / "run", [f"data.table={folder / 'cifti.tsv'}"] + COMMON)
    # a file from another mesh is refused in one line
    small = nib.cifti2.BrainModelAxis.from_mask(np.ones(50, bool), name="CortexLeft")
    nib.Cifti2Image(np.ones((1, 50), np.float32), header=(nib.cifti2.ScalarAxis(["x"]), small)).to_filename(
        tmp_path / "odd.dscalar.nii")
    with pytest.raises(RunnerError, match="CORTEX_LEFT is on a mesh of 50 vertices but data.mesh has 10242"):
        run_analysis(tmp_path / "run", [f"data.table={tmp_path / 'table.tsv'}", "data.mesh=fsaverage5"] + COMMON)


def test_demo_exports_the_surface_maps_as_cifti(tmp_path):
    """``python -m runner.demo surface FOLDER --cifti``: one .dscalar.nii per row whose cortex columns are the row's
    GIFTI values at fsaverage5's cortex vertices (read with nibabel), listed in table_cifti.tsv."""
    from runner.data.surface import bundled_mesh
    from runner.demo.__main__ import main

    assert main(["surface", str(tmp_path / "study"), "--cifti"]) == 0
    assert main(["paired", str(tmp_path / "other"), "--cifti"]) == 2
    mesh = bundled_mesh("fsaverage5")
    gifti = pd.read_csv(tmp_path / "study" / "table.tsv", sep="\t")
    cifti = pd.read_csv(tmp_path / "study" / "table_cifti.tsv", sep="\t")
    assert list(cifti.columns) == ["participant_id", "group", "age", "path"] and len(cifti) == len(gifti)
    for row in (0, len(cifti) - 1):
        image = nib.load(tmp_path / "study" / cifti["path"][row])
        models = image.header.get_axis(1)
        assert [(name, m.nvertices[name]) for name, _, m in models.iter_structures()] == [
            ("CIFTI_STRUCTURE_CORTEX_LEFT", 10242), ("CIFTI_STRUCTURE_CORTEX_RIGHT", 10242)]
        expected = np.concatenate([
            np.asarray(nib.load(tmp_path / "study" / gifti[column][row]).darrays[0].data)[mesh[hemi].cortex]
            for hemi, column in (("L", "path_left"), ("R", "path_right"))])
        np.testing.assert_array_equal(np.asarray(image.dataobj)[0], expected)
