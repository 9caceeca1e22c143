"""Small MNI152 template files bundled with the package (see README.md here for origin and licence).

Every image is on the conventional RAS+ MNI grid whose voxel (0, 0, 0) sits at (-90, -126, -72) mm:
(91, 109, 91) voxels at 2 mm and (61, 73, 61) voxels at 3 mm. ``scripts/make_resources.py`` derives
them from the 1 mm ICBM152 2009a symmetric template; nothing here needs nilearn.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np

from runner.errors import RunnerError

RESOLUTIONS_MM = (2, 3)
MASK_FILE = "mni152_brain_mask_{resolution}mm.nii.gz"
TEMPLATE_FILE = "mni152_t1_{resolution}mm.nii.gz"
GRAY_MATTER_FILE = "mni152_gm_{resolution}mm.nii.gz"

_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


def resource_path(name: str) -> Path:
    """Path of a bundled resource file, e.g. ``resource_path("mni152_t1_3mm.nii.gz")``.

    Parameters
    ----------
    name : str
        File name inside ``runner/resources``.

    Returns
    -------
    Path
        A real file on disk (extracted to a temporary file, kept until exit, if the package is zipped).
    """
    traversable = resources.files(__name__) / name
    if not traversable.is_file():
        available = sorted(p.name for p in resources.files(__name__).iterdir() if p.name.endswith(".nii.gz"))
        raise RunnerError(f"no bundled resource named {name!r}; available: {', '.join(available)}")
    if isinstance(traversable, Path):
        return traversable
    return _extracted.enter_context(resources.as_file(traversable))


@functools.cache
def _read(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Voxel data (read-only) and affine of a bundled image, read once per process."""
    image = nib.load(resource_path(name))
    data = np.asanyarray(image.dataobj)
    data.flags.writeable = False
    return data, image.affine


def _file_name(pattern: str, resolution_mm: int) -> str:
    if resolution_mm not in RESOLUTIONS_MM:
        allowed = ", ".join(str(r) for r in RESOLUTIONS_MM)
        raise RunnerError(f"bundled MNI resolution must be one of {allowed} mm, got {resolution_mm!r}")
    return pattern.format(resolution=resolution_mm)


def _image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    image = nib.Nifti1Image(np.array(data), affine.copy())
    image.header.set_xyzt_units("mm")
    return image


def mni_mask(resolution_mm: int = 3) -> nib.Nifti1Image:
    """MNI152 brain mask (uint8, 1 inside the brain) from grey + white matter probability, holes filled.

    Parameters
    ----------
    resolution_mm : int
        2 or 3 (about 236k and 70k voxels inside).

    Returns
    -------
    nibabel.Nifti1Image
    """
    data, affine = _read(_file_name(MASK_FILE, resolution_mm))
    return _image(data, affine)


def mni_template(resolution_mm: int = 3) -> nib.Nifti1Image:
    """MNI152 T1 template as stored (uint8, 0..255, brain only), a background for figures.

    Parameters
    ----------
    resolution_mm : int
        2 or 3.

    Returns
    -------
    nibabel.Nifti1Image
    """
    data, affine = _read(_file_name(TEMPLATE_FILE, resolution_mm))
    return _image(data, affine)


def mni_gray_matter(resolution_mm: int = 3) -> nib.Nifti1Image:
    """MNI152 grey-matter probability as float32 in [0, 1] (stored as uint8 x 255).

    Parameters
    ----------
    resolution_mm : int
        2 or 3.

    Returns
    -------
    nibabel.Nifti1Image
    """
    data, affine = _read(_file_name(GRAY_MATTER_FILE, resolution_mm))
    return _image(data.astype(np.float32) / np.float32(255.0), affine)


__all__ = ["RESOLUTIONS_MM", "mni_gray_matter", "mni_mask", "mni_template", "resource_path"]
