"""Bundled MNI resources: grids, value ranges, shapes of the masks, and that the files rebuild identically."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from runner import resources
from runner.errors import RunnerError

REPO = Path(__file__).resolve().parents[1]
EXPECTED_SHAPES = {2: (91, 109, 91), 3: (61, 73, 61)}
BUNDLED_FILES = [
    f"mni152_{kind}_{resolution}mm.nii.gz" for kind in ("brain_mask", "t1", "gm") for resolution in (2, 3)
]


def expected_affine(resolution: int) -> np.ndarray:
    affine = np.diag([resolution, resolution, resolution, 1.0])
    affine[:3, 3] = (-90.0, -126.0, -72.0)
    return affine


@pytest.mark.parametrize("resolution", [2, 3])
def test_images_share_the_conventional_mni_grid(resolution: int) -> None:
    for loader in (resources.mni_mask, resources.mni_template, resources.mni_gray_matter):
        image = loader(resolution)
        assert image.shape == EXPECTED_SHAPES[resolution]
        np.testing.assert_array_equal(image.affine, expected_affine(resolution))
    # World coordinate (0, 0, 0) is a voxel centre on both grids.
    origin_voxel = np.linalg.inv(expected_affine(resolution)) @ [0, 0, 0, 1]
    np.testing.assert_array_equal(origin_voxel, np.round(origin_voxel))


@pytest.mark.parametrize(("resolution", "low", "high"), [(2, 215_000, 250_000), (3, 64_000, 75_000)])
def test_mask_is_one_solid_brain(resolution: int, low: int, high: int) -> None:
    data = np.asarray(resources.mni_mask(resolution).dataobj)
    assert data.dtype == np.uint8
    assert set(np.unique(data)) == {0, 1}
    mask = data > 0
    assert low <= mask.sum() <= high
    # Brain volume in litres is about that of the MNI template (~1.7-1.9 l), whatever the grid.
    assert 1.6 < mask.sum() * resolution**3 / 1e6 < 2.0
    _, n_components = ndimage.label(mask)
    assert n_components == 1
    np.testing.assert_array_equal(ndimage.binary_fill_holes(mask), mask)
    # Nothing touches the border of the grid.
    for axis in range(3):
        assert not mask.take([0, -1], axis=axis).any()


def test_masks_agree_across_resolutions() -> None:
    mask2 = np.asarray(resources.mni_mask(2).dataobj) > 0
    mask3 = np.asarray(resources.mni_mask(3).dataobj) > 0
    # Sample the 2 mm mask at the 3 mm voxel centres (world x = 3i - 90 -> 2 mm index 1.5 i).
    centres = np.indices(mask3.shape).reshape(3, -1) * 1.5
    sampled = ndimage.map_coordinates(mask2.astype(float), centres, order=1).reshape(mask3.shape) >= 0.5
    agreement = 2 * (sampled & mask3).sum() / (sampled.sum() + mask3.sum())
    assert agreement > 0.97


@pytest.mark.parametrize("resolution", [2, 3])
def test_template_and_gray_matter_fall_in_the_mask(resolution: int) -> None:
    mask = np.asarray(resources.mni_mask(resolution).dataobj) > 0
    template = np.asarray(resources.mni_template(resolution).dataobj)
    assert template.dtype == np.uint8 and template.max() > 200
    assert template[mask].sum() / template.sum() > 0.97
    gray_matter = resources.mni_gray_matter(resolution).get_fdata(dtype=np.float32)
    assert gray_matter.min() >= 0.0 and 0.9 < gray_matter.max() <= 1.0
    assert gray_matter[mask].sum() / gray_matter.sum() > 0.97
    # Deep white matter (corona radiata at x=-30, y=-20, z=30 mm) has little grey matter.
    to_voxel = np.linalg.inv(expected_affine(resolution))
    white = tuple(np.round(to_voxel @ [-30, -20, 30, 1])[:3].astype(int))
    assert gray_matter[white] < 0.2


def test_images_are_independent_copies() -> None:
    first = resources.mni_mask(3)
    np.asarray(first.dataobj)[...] = 0
    assert np.asarray(resources.mni_mask(3).dataobj).sum() > 0


def test_bad_requests_are_user_errors() -> None:
    with pytest.raises(RunnerError, match="2, 3"):
        resources.mni_mask(1)
    with pytest.raises(RunnerError, match="mni152_t1_3mm.nii.gz"):
        resources.resource_path("mni152_t1_4mm.nii.gz")


def test_bundle_is_small_and_documented() -> None:
    sizes = [resources.resource_path(name).stat().st_size for name in BUNDLED_FILES]
    assert sum(sizes) < 1_500_000
    assert resources.resource_path("mni152_brain_mask_3mm.nii.gz").stat().st_size < 50_000
    readme = (REPO / "runner" / "resources" / "README.md").read_text(encoding="utf-8")
    words = " ".join(readme.replace(">", " ").split())
    assert "Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre" in words
    assert "provided that the above copyright notice appear in all copies" in words
    assert "scripts/make_resources.py" in readme


def _load_script():
    spec = importlib.util.spec_from_file_location("make_resources", REPO / "scripts" / "make_resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_downsampling_averages() -> None:
    script = _load_script()
    fine = np.zeros((60, 60, 60))
    fine[:, :, 30:] = 1.0  # a step at z = 29.5 (source voxel units = mm)
    source = np.eye(4)
    target = np.diag([3.0, 3.0, 3.0, 1.0])
    coarse = script.resample_average(fine, source, target, (20, 20, 20))
    assert np.allclose(coarse[5:15, 5:15, 14:18], 1.0, atol=1e-3)
    assert np.allclose(coarse[5:15, 5:15, 3:8], 0.0, atol=1e-3)
    assert 0.3 < coarse[10, 10, 10] < 0.7  # the voxel centred on the step (z = 30 mm) is mixed


@pytest.mark.slow
def test_script_rebuilds_the_bundled_files_byte_for_byte(tmp_path: Path) -> None:
    pytest.importorskip("nilearn")
    script = _load_script()
    source = script.nilearn_data_folder()
    if not (source / script.SOURCE_NAME.format(tissue="t1")).is_file():
        pytest.skip("nilearn's bundled MNI files are not available")
    script.make_resources(source, tmp_path)
    for name in BUNDLED_FILES:
        assert (tmp_path / name).read_bytes() == resources.resource_path(name).read_bytes(), name
