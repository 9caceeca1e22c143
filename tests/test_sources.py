"""Data sources: table (TSV/CSV), glob + participants, 4D NIfTI, row queries; masks, resampling and smoothing."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from runner.config import DataConfig
from runner.data.loader import load_group_data
from runner.data.sources import apply_query, from_4d, from_glob, from_table
from runner.errors import RunnerError

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
SHAPE = (10, 12, 9)


def _maps(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(n,) + SHAPE).astype(np.float32)
    maps[:, 0] = 0.0  # a slab that is zero in every map (outside the automatic mask)
    return maps


@pytest.fixture
def study(tmp_path):
    maps = _maps(6)
    rows = []
    for i, volume in enumerate(maps):
        path = tmp_path / f"sub-{i + 1:02d}" / f"sub-{i + 1:02d}_stat-effect_statmap.nii.gz"
        path.parent.mkdir()
        nib.save(nib.Nifti1Image(volume, AFFINE), path)
        rows.append({"participant_id": f"sub-{i + 1:02d}", "age": 20.0 + i, "group": "ab"[i % 2],
                     "path": str(path.relative_to(tmp_path))})
    table = pd.DataFrame(rows)
    table.to_csv(tmp_path / "table.tsv", sep="\t", index=False)
    table.drop(columns="path").to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    return tmp_path, maps


def test_table_paths_resolve_against_the_table_folder(study, monkeypatch, tmp_path_factory):
    root, maps = study
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    inputs = from_table(root / "table.tsv")
    data = load_group_data(inputs, DataConfig())
    expected_mask = np.all(maps != 0, axis=0)
    np.testing.assert_array_equal(data.mask, expected_mask)
    np.testing.assert_allclose(data.Y, maps[:, expected_mask], rtol=1e-7)


def test_csv_table(study):
    root, _ = study
    pd.read_csv(root / "table.tsv", sep="\t").to_csv(root / "table.csv", index=False)
    assert len(from_table(root / "table.csv").images) == 6


def test_glob_joins_participants_on_subject_label(study):
    root, maps = study
    inputs = from_glob(str(root / "sub-*" / "*_statmap.nii.gz"), root / "participants.tsv")
    assert list(inputs.table.participant_id) == [f"sub-{i:02d}" for i in range(1, 7)]
    assert list(inputs.table.age) == [20.0 + i for i in range(6)]
    (root / "sub-07").mkdir()
    nib.save(nib.Nifti1Image(maps[0], AFFINE), root / "sub-07" / "sub-07_stat-effect_statmap.nii.gz")
    with pytest.raises(RunnerError, match="sub-07"):
        from_glob(str(root / "sub-*" / "*_statmap.nii.gz"), root / "participants.tsv")


def test_4d_file_one_row_per_volume(study):
    root, maps = study
    nib.save(nib.Nifti1Image(np.moveaxis(maps, 0, -1), AFFINE), root / "all.nii.gz")
    table = pd.read_csv(root / "table.tsv", sep="\t").drop(columns="path")
    table.to_csv(root / "rows.tsv", sep="\t", index=False)
    inputs = from_4d(root / "all.nii.gz", root / "rows.tsv", 6)
    data = load_group_data(inputs, DataConfig())
    np.testing.assert_allclose(data.Y, maps[:, np.all(maps != 0, axis=0)], rtol=1e-7)
    with pytest.raises(RunnerError, match="5 volumes but data.table"):
        from_4d(root / "all.nii.gz", root / "rows.tsv", 5)


def test_query_selects_rows_and_refuses_code(study):
    root, _ = study
    inputs = apply_query(from_table(root / "table.tsv"), "group == 'a' and age > 20")
    assert list(inputs.table.participant_id) == ["sub-03", "sub-05"]
    assert [p.path.name for p in inputs.images] == ["sub-03_stat-effect_statmap.nii.gz",
                                                    "sub-05_stat-effect_statmap.nii.gz"]
    for bad in ("age.__class__", "__import__('os')", "@x > 1"):
        with pytest.raises(RunnerError, match="data.query"):
            apply_query(from_table(root / "table.tsv"), bad)


def test_explicit_mask_and_threshold_masks(study):
    root, maps = study
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[2:8, 3:9, 2:7] = 1
    nib.save(nib.Nifti1Image(mask, AFFINE), root / "mask.nii.gz")
    inputs = from_table(root / "table.tsv")
    data = load_group_data(inputs, DataConfig(mask=str(root / "mask.nii.gz")))
    np.testing.assert_array_equal(data.mask, mask.astype(bool))
    positive = np.abs(maps) * 2  # grey-matter-like values: mostly well above zero
    for ref, volume in zip(inputs.images, positive):
        nib.save(nib.Nifti1Image(volume, AFFINE), ref.path)
    absolute = load_group_data(inputs, DataConfig(mask_strategy="absolute", mask_threshold=0.1))
    np.testing.assert_array_equal(absolute.mask, np.all(positive > 0.1, axis=0))
    relative = load_group_data(inputs, DataConfig(mask_strategy="relative", mask_threshold=0.2))
    means = [m[(m != 0) & np.isfinite(m)].mean() for m in positive]
    np.testing.assert_array_equal(relative.mask, np.all([m > 0.2 * mu for m, mu in zip(positive, means)], axis=0))
    assert 0 < relative.mask.sum() < absolute.mask.sum() + relative.mask.size


def test_anisotropic_smoothing_matches_per_axis_gaussian(tmp_path):
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    volume = np.zeros(SHAPE, dtype=np.float32)
    volume[5, 6, 4] = 1.0
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"m{i}.nii.gz")
        nib.save(nib.Nifti1Image(volume * (i + 1), affine), paths[-1])
    pd.DataFrame({"path": [p.name for p in paths]}).to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    mask = np.ones(SHAPE, dtype=np.uint8)
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "mask.nii.gz")
    data = load_group_data(from_table(tmp_path / "t.tsv"), DataConfig(mask=str(tmp_path / "mask.nii.gz"),
                                                                      smoothing_fwhm=6.0))
    sigma = 6.0 / np.sqrt(8 * np.log(2)) / np.array([2.0, 3.0, 4.0])
    expected = ndimage.gaussian_filter(volume.astype(float), sigma, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(data.unmask(data.Y[0]), expected, atol=1e-6)


def test_inputs_on_another_grid_are_resampled_with_a_log_line(study, caplog):
    root, maps = study
    mask = np.ones(SHAPE, dtype=np.uint8)
    nib.save(nib.Nifti1Image(mask, AFFINE), root / "mask.nii.gz")
    shifted = AFFINE.copy()
    shifted[:3, 3] = [3.0, 0.0, 0.0]  # one voxel along x
    first = root / "sub-01" / "sub-01_stat-effect_statmap.nii.gz"
    nib.save(nib.Nifti1Image(maps[0], shifted), first)
    inputs = from_table(root / "table.tsv")
    with caplog.at_level(logging.INFO):
        data = load_group_data(inputs, DataConfig(mask=str(root / "mask.nii.gz")))
    assert any("resampled 1 of 6" in r.getMessage() for r in caplog.records)
    # voxel i of the reference grid is voxel i - 1 of the shifted image
    np.testing.assert_allclose(data.unmask(data.Y[0])[3:8, :, :], maps[0][2:7, :, :], atol=1e-5)
    with pytest.raises(RunnerError, match="not on the reference grid.*data.resample=true"):
        load_group_data(inputs, DataConfig(mask=str(root / "mask.nii.gz"), resample=False))
