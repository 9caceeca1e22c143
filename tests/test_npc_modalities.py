"""Non-parametric combination over several modalities (data sources of the same subjects): the combined null against a
brute-force least-squares oracle, a run whose table names a second modality against the combination computed here
from maps read with nibabel, the refusals, and a light null calibration (``benchmarks/bench_palm.py`` runs 500+)."""

from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import compose, run_analysis
from oracles import binomial_interval, reference_statistic
from planted import AFFINE, planted_study
from runner.config import build_settings
from runner.errors import RunnerError
from runner.inference.permutation import PermutationOptions
from runner.inference.permutation.npc import npc_inference


def _freedman_lane_t(Y, X, c, order, signs):
    """t of contrast ``c`` (one row) on the shuffled residuals of the model without it, fitted directly."""
    Z = X[:, np.flatnonzero(c[0] == 0)]
    residuals = Y - Z @ np.linalg.lstsq(Z, Y, rcond=None)[0]
    return reference_statistic(signs[:, None] * residuals[order], X, c)


def test_null_of_two_modalities_is_the_brute_force_combination():
    """Every element's combined maximum: each contrast on each modality, all shuffled by the same element."""
    rng = np.random.default_rng(11)
    n = 14
    X = np.c_[np.ones(n), rng.standard_normal((n, 2))]
    Y = rng.standard_normal((n, 25))
    other = 0.6 * Y + rng.standard_normal((n, 25))  # a correlated second modality
    contrasts = [np.eye(3)[[1]], np.eye(3)[[2]]]
    for how in ("fisher", "tippett"):
        result = npc_inference(Y, X, contrasts, how, PermutationOptions(n_permutations=30, seed=2),
                               modalities=[other])
        orders, signs = result.permutations.rows(0, result.permutations.size)
        for j in range(result.permutations.size):
            log_p = [np.log(2 * stats.t.sf(np.abs(_freedman_lane_t(data, X, c, orders[j], signs[j])), n - 3))
                     for data in (Y, other) for c in contrasts]
            combined = -2 * np.sum(log_p, axis=0) if how == "fisher" else -np.min(log_p, axis=0)
            assert result.null_max[j] == pytest.approx(np.max(combined), rel=1e-8), (how, j)


def test_one_contrast_on_two_modalities_is_enough_and_shapes_must_match():
    rng = np.random.default_rng(12)
    Y = rng.standard_normal((10, 8))
    X = np.ones((10, 1))
    result = npc_inference(Y, X, [np.ones((1, 1))], "stouffer", PermutationOptions(n_permutations=20),
                           modalities=[Y[:, ::-1].copy()])
    t = [reference_statistic(data, X, np.ones((1, 1))) for data in (Y, Y[:, ::-1])]
    z = [stats.norm.isf(2 * stats.t.sf(np.abs(value), 9)) for value in t]
    np.testing.assert_allclose(result.statistic, (z[0] + z[1]) / np.sqrt(2), rtol=1e-8)
    with pytest.raises(RunnerError, match="at least two partial tests"):
        npc_inference(Y, X, [np.ones((1, 1))])
    with pytest.raises(RunnerError, match="modality 2 has shape"):
        npc_inference(Y, X, [np.ones((1, 1))], modalities=[Y[:, :5]])
    with pytest.raises(RunnerError, match="modality 2 contains NaN"):
        npc_inference(Y, X, [np.ones((1, 1))], modalities=[np.where(Y > 1, np.nan, Y)])


def _two_modality_study(root):
    """The planted study plus a second modality (another planted study's maps, other seed) in column md_path."""
    overrides = planted_study(root, n_maps=12)
    planted_study(root / "md", n_maps=12, positive=1.0, negative=-2.0, seed=9)
    table = pd.read_csv(root / "table.tsv", sep="\t")
    table["md_path"] = [f"md/{p}" for p in table["path"]]
    table.to_csv(root / "table.tsv", sep="\t", index=False)
    return overrides, table


@pytest.mark.slow
def test_a_run_combines_the_modalities_of_its_table(tmp_path):
    overrides, table = _two_modality_study(tmp_path / "study")
    run_dir = tmp_path / "run"
    summary = run_analysis(run_dir, overrides + [
        "correction=[npc]", "correction.npc.n_permutations=100", "correction.npc.modalities=[md_path]",
        "report=false"])
    row = summary["contrasts"]["npcFisher"]["npc"]
    assert row["combined"] == "Fisher combination of mean on path, md_path"
    # independently: the maps read with nibabel, the one-sample t of each modality, Fisher's combination
    mask = nib.load(tmp_path / "study" / "mask.nii.gz").get_fdata() > 0
    X = np.ones((len(table), 1))
    log_p = []
    for column in ("path", "md_path"):
        Y = np.stack([nib.load(tmp_path / "study" / p).get_fdata()[mask] for p in table[column]])
        log_p.append(np.log(2 * stats.t.sf(np.abs(reference_statistic(Y, X, np.ones((1, 1)))), len(table) - 1)))
    statistic = nib.load(run_dir / "contrast-npcFisher_stat-fisher_statmap.nii.gz").get_fdata()[mask]
    np.testing.assert_allclose(statistic, -2 * np.sum(log_p, axis=0), rtol=1e-4)  # float32 maps
    sidecar = json.loads((run_dir / "contrast-npcFisher_stat-fisher_statmap.json").read_text())
    assert sidecar["Modalities"] == ["path", "md_path"] and sidecar["Contrasts"] == ["mean"]
    manifest = (run_dir / "manifest.json").read_text()
    assert manifest.count('"role": "modality md_path"') == len(table)  # each file recorded with its sha256
    logp = nib.load(run_dir / "contrast-npcFisher_stat-logp_desc-npc_statmap.nii.gz").get_fdata()
    assert logp.max() == pytest.approx(np.log10(100))  # the planted balls reach the smallest p 100 flips allow


@pytest.mark.slow
def test_modality_errors_name_the_column_or_the_file(tmp_path):
    overrides, table = _two_modality_study(tmp_path / "study")
    base = overrides + ["correction=[npc]", "correction.npc.n_permutations=20", "report=false"]
    with pytest.raises(RunnerError, match="names column 'md_pth'.*md_path"):
        run_analysis(tmp_path / "r1", base + ["correction.npc.modalities=[md_pth]"])
    bad = tmp_path / "study" / "md" / table["path"][3]
    values = nib.load(bad).get_fdata()
    values[5, 5, 4] = np.nan
    nib.save(nib.Nifti1Image(values.astype(np.float32), AFFINE), str(bad))
    with pytest.raises(RunnerError, match=f"{bad.name} has 1 missing"):
        run_analysis(tmp_path / "r2", base + ["correction.npc.modalities=[md_path]"])
    record = json.loads((tmp_path / "r2" / "manifest.json").read_text())
    assert record["status"] == "failed" and bad.name in record["error"]  # no result that looks complete
    assert not list((tmp_path / "r2").glob("*_statmap.nii.gz"))
    with pytest.raises(RunnerError, match="'path' twice"):
        build_settings(compose(overrides + ["correction=[npc]", "correction.npc.modalities=[path]"]))
    with pytest.raises(RunnerError, match="data=bids .* has no such columns"):
        build_settings(compose(["data=bids", "data.root=/nonexistent", "correction=[npc]",
                                "correction.npc.modalities=[md_path]"]))


@pytest.mark.slow
def test_null_calibration_of_npc_over_two_correlated_modalities():
    """Null data, two modalities correlated 0.7 (same subjects), two covariate contrasts: FWE of Fisher and Tippett
    inside the binomial interval of 0.05 (light: 60 datasets, 100 permutations)."""
    n_datasets = 60
    rejected = {"fisher": 0, "tippett": 0}
    options = PermutationOptions(n_permutations=100, scheme="permutation")
    for index in range(n_datasets):
        rng = np.random.default_rng(3000 + index)
        n, V = 20, 120
        X = np.c_[np.ones(n), rng.standard_normal((n, 2))]
        Y = rng.standard_normal((n, V))
        other = 0.7 * Y + np.sqrt(1 - 0.7**2) * rng.standard_normal((n, V))
        contrasts = [np.eye(3)[[1]], np.eye(3)[[2]]]
        for how in rejected:
            result = npc_inference(Y, X, contrasts, how, replace(options, seed=index), modalities=[other])
            rejected[how] += result.corrected_p.min() <= 0.05
    low, high = binomial_interval(n_datasets)
    for how, count in rejected.items():
        assert low <= count <= high, (how, rejected)


def _write_gifti(values: np.ndarray, path) -> None:
    array = nib.gifti.GiftiDataArray(np.asarray(values, dtype=np.float32), intent="NIFTI_INTENT_NONE",
                                     datatype="NIFTI_TYPE_FLOAT32")
    nib.save(nib.GiftiImage(darrays=[array]), str(path))


def _surface_study(folder, n=8):
    """Two modalities of n subjects on fsaverage5 as GIFTI pairs: columns path_left/right and md_path_left/right."""
    from runner.data.surface import bundled_mesh

    sizes = {h: len(m.vertices) for h, m in bundled_mesh("fsaverage5").items()}
    rng = np.random.default_rng(21)
    rows = []
    for subject in range(n):
        row = {"participant_id": f"sub-{subject:02d}"}
        for column in ("path", "md_path"):
            for hemi, side in (("L", "left"), ("R", "right")):
                name = f"sub-{subject:02d}_{column}_hemi-{hemi}.func.gii"
                _write_gifti(rng.standard_normal(sizes[hemi]) + 0.3, folder / name)
                row[f"{column}_{side}"] = name
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(folder / "table.tsv", sep="\t", index=False)
    return table


def _fisher_of_one_sample_tests(modalities):
    """Fisher's combination of the two-sided one-sample t tests of each (n, V) array, written the textbook way."""
    log_p = []
    for Y in modalities:
        n = Y.shape[0]
        t = Y.mean(axis=0) / (Y.std(axis=0, ddof=1) / np.sqrt(n))
        log_p.append(np.log(2 * stats.t.sf(np.abs(t), n - 1)))
    return -2 * np.sum(log_p, axis=0)


@pytest.mark.slow
def test_surface_modalities_as_gifti_pairs_and_as_cifti(tmp_path):
    from runner.demo.__main__ import export_cifti

    folder = tmp_path / "study"
    folder.mkdir()
    table = _surface_study(folder)
    base = ["data.mesh=fsaverage5", "correction=[npc]", "correction.npc.n_permutations=20", "report=false",
            "contrasts=[{name:mean,expr:Intercept}]"]
    gifti_run = tmp_path / "gifti"
    summary = run_analysis(gifti_run, [f"data.table={folder / 'table.tsv'}", "correction.npc.modalities=[md_path]",
                                       *base])
    assert summary["contrasts"]["npcFisher"]["npc"]["combined"] == "Fisher combination of mean on path, md_path"
    read = {column: np.stack([np.concatenate([np.asarray(nib.load(folder / row[f"{column}_{side}"]).darrays[0].data,
                                                         dtype=np.float64) for side in ("left", "right")])
                              for _, row in table.iterrows()]) for column in ("path", "md_path")}
    statistic = np.concatenate([np.asarray(nib.load(gifti_run / f"contrast-npcFisher_stat-fisher_hemi-{h}"
                                                    "_statmap.func.gii").darrays[0].data) for h in ("L", "R")])
    inside = statistic != 0  # the medial wall is left out (0 in the outputs)
    expected = _fisher_of_one_sample_tests([read["path"][:, inside], read["md_path"][:, inside]])
    np.testing.assert_allclose(statistic[inside], expected, rtol=1e-4)
    manifest = json.loads((gifti_run / "manifest.json").read_text())
    assert sum(r.get("role") == "modality md_path" for r in manifest["inputs"]) == 2 * len(table)  # both files

    # the same maps as CIFTI: one .dscalar.nii column per modality, the same combined statistic
    for column in ("path", "md_path"):
        single = tmp_path / f"as_{column}"
        single.mkdir()
        pairs = table[["participant_id", f"{column}_left", f"{column}_right"]]
        pairs = pairs.rename(columns={f"{column}_left": "path_left", f"{column}_right": "path_right"})
        pairs = pairs.assign(path_left=[str(folder / p) for p in pairs.path_left],
                             path_right=[str(folder / p) for p in pairs.path_right])
        pairs.to_csv(single / "table.tsv", sep="\t", index=False)
        converted = pd.read_csv(export_cifti(single / "table.tsv"), sep="\t")
        table[f"cifti_{column}"] = [str(single / p) for p in converted["path"]]
    cifti_table = table[["participant_id", "cifti_path", "cifti_md_path"]].rename(columns={"cifti_path": "path"})
    cifti_table.to_csv(folder / "table_cifti.tsv", sep="\t", index=False)
    cifti_run = tmp_path / "cifti"
    run_analysis(cifti_run, [f"data.table={folder / 'table_cifti.tsv'}",
                             "correction.npc.modalities=[cifti_md_path]", *base])
    combined = nib.load(cifti_run / "contrast-npcFisher_stat-fisher_statmap.dscalar.nii").get_fdata()[0]
    np.testing.assert_allclose(np.sort(combined[np.isfinite(combined) & (combined != 0)]),
                               np.sort(statistic[inside]), rtol=1e-6)
    with pytest.raises(RunnerError, match="needs a column 'md_left' of hemisphere GIFTI files; did you mean 'md_path_left'"):
        run_analysis(tmp_path / "bad", [f"data.table={folder / 'table.tsv'}", "correction.npc.modalities=[md]",
                                        *base])
