"""Derive the small MNI template files bundled in ``runner/resources/`` (run by hand, never at runtime).

The source is the MNI ICBM152 2009a nonlinear symmetric template as bundled in nilearn's wheel (1 mm,
uint8 0..255): T1, grey-matter and white-matter probability. Nilearn is imported only to find that
folder; pass ``--source DIR`` to use another copy of the same three files.

Outputs, all on the conventional RAS+ MNI grids whose voxel (0, 0, 0) is at (-90, -126, -72) mm:

- ``mni152_brain_mask_{2,3}mm.nii.gz``  uint8 0/1 brain mask (GM + WM probability, holes filled)
- ``mni152_t1_{2,3}mm.nii.gz``          uint8 T1 template, background for figures
- ``mni152_gm_{2,3}mm.nii.gz``          uint8 grey-matter probability x 255 (VBM demo)

Usage::

    .venv/bin/python scripts/make_resources.py [--source DIR] [--out runner/resources]

The files are deterministic: the same source gives the same bytes (gzip without a time stamp).
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

SOURCE_NAME = "mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz"
GRID_ORIGIN_MM = (-90.0, -126.0, -72.0)
# Same bounding box at both resolutions: x -90..90, y -126..90, z -72..108 mm.
GRID_SHAPES = {2: (91, 109, 91), 3: (61, 73, 61)}
# GM + WM probability above this is brain (low, so the partial-volume rim of cortex stays inside).
BRAIN_PROBABILITY_THRESHOLD = 0.2
# Closing radius (source voxels = mm): bridges the interhemispheric fissure and deep sulci.
CLOSING_RADIUS_MM = 4.0
# A grid voxel is inside the mask when at least this share of its volume is inside the 1 mm mask.
MASK_VOLUME_FRACTION = 0.5
GZIP_LEVEL = 9


def grid_affine(resolution_mm: int) -> np.ndarray:
    """Affine of the conventional MNI grid at ``resolution_mm`` (RAS+, origin (-90, -126, -72))."""
    affine = np.diag([float(resolution_mm)] * 3 + [1.0])
    affine[:3, 3] = GRID_ORIGIN_MM
    return affine


def resample_average(
    volume: np.ndarray,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
) -> np.ndarray:
    """Downsample ``volume`` onto a coarser grid: Gaussian anti-aliasing, then trilinear sampling.

    The Gaussian has a FWHM of sqrt(target^2 - source^2) mm per axis, so each target voxel
    approximately averages the source voxels it covers.

    Parameters
    ----------
    volume : np.ndarray
        3D source data.
    source_affine, target_affine : np.ndarray
        4x4 voxel-to-mm affines (axis-aligned, no rotation).
    target_shape : tuple of int
        Shape of the target grid.

    Returns
    -------
    np.ndarray
        float64 array of ``target_shape``.
    """
    source_voxel = np.abs(np.diag(source_affine)[:3])
    target_voxel = np.abs(np.diag(target_affine)[:3])
    fwhm_mm = np.sqrt(np.maximum(target_voxel**2 - source_voxel**2, 0.0))
    sigma_voxels = fwhm_mm / np.sqrt(8.0 * np.log(2.0)) / source_voxel
    smoothed = ndimage.gaussian_filter(volume.astype(np.float64), sigma_voxels, mode="constant")
    target_to_source = np.linalg.inv(source_affine) @ target_affine
    return ndimage.affine_transform(
        smoothed,
        target_to_source[:3, :3],
        offset=target_to_source[:3, 3],
        output_shape=target_shape,
        order=1,
        mode="constant",
        cval=0.0,
    )


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 6-connected component of a binary volume."""
    labels, n_labels = ndimage.label(mask)
    if n_labels <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def brain_mask_1mm(gray_matter: np.ndarray, white_matter: np.ndarray) -> np.ndarray:
    """Solid brain mask at the source resolution from GM + WM probability (both in [0, 1]).

    Threshold, close small gaps (sulci at the surface), fill enclosed holes (ventricles) and keep
    the largest connected piece, so the mask is one brain-shaped solid.
    """
    brain = (gray_matter + white_matter) > BRAIN_PROBABILITY_THRESHOLD
    brain = binary_closing_mm(brain, CLOSING_RADIUS_MM)
    brain = ndimage.binary_fill_holes(brain)
    return largest_component(brain)


def binary_closing_mm(mask: np.ndarray, radius_voxels: float) -> np.ndarray:
    """Morphological closing with a ball, via Euclidean distance transforms (fast for large balls).

    Dilation keeps voxels within ``radius_voxels`` of the mask; erosion of that keeps voxels farther
    than ``radius_voxels`` from its outside. The volume is padded so the border does not erode.
    """
    pad = int(np.ceil(radius_voxels)) + 1
    padded = np.pad(mask, pad)
    dilated = ndimage.distance_transform_edt(~padded) <= radius_voxels
    closed = ndimage.distance_transform_edt(dilated) > radius_voxels
    return closed[pad:-pad, pad:-pad, pad:-pad]


def mask_on_grid(mask_1mm: np.ndarray, source_affine: np.ndarray, resolution_mm: int) -> np.ndarray:
    """Coarse-grid mask: voxels at least ``MASK_VOLUME_FRACTION`` inside the fine mask, holes filled."""
    fraction = resample_average(
        mask_1mm.astype(np.float64), source_affine, grid_affine(resolution_mm), GRID_SHAPES[resolution_mm]
    )
    mask = ndimage.binary_fill_holes(fraction >= MASK_VOLUME_FRACTION)
    return largest_component(mask)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Round values in [0, 255] to uint8."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, description: str) -> int:
    """Write a NIfTI-1 file gzipped without a time stamp (identical bytes for identical data).

    Returns
    -------
    int
        Size of the written file in bytes.
    """
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=4)  # 4 = MNI152
    image.header.set_sform(affine, code=4)
    image.header["descrip"] = description[:79].encode("ascii")
    payload = gzip.compress(image.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)
    path.write_bytes(payload)
    return len(payload)


def nilearn_data_folder() -> Path:
    """Folder of nilearn's bundled MNI files (nilearn is imported only to locate it)."""
    import nilearn.datasets  # noqa: PLC0415  (dev-only dependency, needed for this lookup only)

    return Path(nilearn.datasets.__file__).parent / "data"


def load_source(folder: Path, tissue: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one of the 1 mm source volumes as float64 in [0, 255] and its affine."""
    image = nib.load(folder / SOURCE_NAME.format(tissue=tissue))
    return np.asarray(image.dataobj, dtype=np.float64), image.affine


def make_resources(source: Path, out: Path) -> dict[str, int]:
    """Write every bundled file into ``out``; return {file name: size in bytes}."""
    t1, affine = load_source(source, "t1")
    gray_matter, gm_affine = load_source(source, "gm")
    white_matter, wm_affine = load_source(source, "wm")
    if not (np.allclose(affine, gm_affine) and np.allclose(affine, wm_affine)):
        raise SystemExit("the T1, GM and WM source files are not on the same grid")

    mask_1mm = brain_mask_1mm(gray_matter / 255.0, white_matter / 255.0)
    out.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    for resolution in (2, 3):
        target = grid_affine(resolution)
        shape = GRID_SHAPES[resolution]
        mask = mask_on_grid(mask_1mm, affine, resolution)
        name = f"mni152_brain_mask_{resolution}mm.nii.gz"
        sizes[name] = save_nifti(
            mask.astype(np.uint8), target, out / name, f"MNI152 2009a sym brain mask {resolution}mm"
        )
        print(f"{name}: {int(mask.sum())} voxels inside")
        name = f"mni152_t1_{resolution}mm.nii.gz"
        t1_grid = to_uint8(resample_average(t1, affine, target, shape))
        sizes[name] = save_nifti(t1_grid, target, out / name, f"MNI152 2009a sym T1 {resolution}mm")

        name = f"mni152_gm_{resolution}mm.nii.gz"
        gm_grid = to_uint8(resample_average(gray_matter, affine, target, shape))
        sizes[name] = save_nifti(
            gm_grid, target, out / name, f"MNI152 2009a sym GM probability x255 {resolution}mm"
        )
    return sizes


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None, help="folder with the 1 mm MNI files")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "runner" / "resources",
        help="destination folder (default: runner/resources)",
    )
    args = parser.parse_args(argv)
    source = args.source if args.source is not None else nilearn_data_folder()
    sizes = make_resources(source, args.out)
    for name, size in sizes.items():
        print(f"{name}: {size / 1024:.1f} KiB")
    print(f"total: {sum(sizes.values()) / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
