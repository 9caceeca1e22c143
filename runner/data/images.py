"""Reading input images: header checks before any voxel is decoded, one decode per file, resampling to a grid."""

from __future__ import annotations

import gzip
import hashlib
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from runner.errors import RunnerError

log = logging.getLogger(__name__)

MAX_VOXELS = 512**3  # a header claiming more voxels than this is refused before anything is allocated
AFFINE_TOLERANCE = 1e-3  # mm; grids closer than this are the same grid


@dataclass(frozen=True)
class Grid:
    """A voxel grid: 3D shape and voxel-to-mm affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def same_as(self, other: "Grid") -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=AFFINE_TOLERANCE)

    @property
    def voxel_sizes(self) -> np.ndarray:
        return np.sqrt(np.sum(self.affine[:3, :3] ** 2, axis=0))

    def describe(self) -> str:
        sizes = "x".join(f"{v:g}" for v in self.voxel_sizes)
        return f"shape {self.shape}, {sizes} mm voxels, origin {np.round(self.affine[:3, 3], 2).tolist()}"


@dataclass(frozen=True)
class Header:
    """What the header says about an input file, read without decoding the voxels."""

    path: Path
    grid: Grid
    n_volumes: int  # 1 for 3D files


def read_header(path: Path, what: str = "input image") -> Header:
    """Check that ``path`` is a readable NIfTI with a sane 3D (or 4D) header."""
    path = Path(path)
    if not path.exists():
        raise RunnerError(f"{what} {path} does not exist")
    if not path.is_file():
        raise RunnerError(f"{what} {path} is not a file")
    try:
        image = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as error:
        raise RunnerError(f"{what} {path} is not a readable NIfTI image ({_reason(error)})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise RunnerError(f"{what} {path} is a {type(image).__name__}, not NIfTI-1/2")
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3] + (1,)
    if len(shape) not in (3, 4):
        raise RunnerError(f"{what} {path} has {len(shape)} dimensions {shape}; a 3D map (or 4D series) is needed")
    if any(s <= 0 for s in shape) or int(np.prod(shape[:3], dtype=np.int64)) > MAX_VOXELS:
        raise RunnerError(f"{what} {path} has an implausible shape {shape} in its header")
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=float)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise RunnerError(f"{what} {path} has invalid voxel sizes {zooms.tolist()} in its header")
    affine = np.asarray(image.affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise RunnerError(f"{what} {path} has an invalid (singular or non-finite) affine")
    n_volumes = shape[3] if len(shape) == 4 else 1
    return Header(path, Grid(shape[:3], affine), n_volumes)


def read_volume(path: Path, volume: int | None = None, what: str = "input image") -> tuple[np.ndarray, str]:
    """Decode one 3D volume (float64) and return it with the sha256 of the file's bytes (one read, one decode)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise RunnerError(f"{what} {path} cannot be read ({_reason(error)})") from None
    digest = hashlib.sha256(raw).hexdigest()
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        image = (nib.Nifti2Image if _is_nifti2(raw) else nib.Nifti1Image).from_bytes(raw)
        data = np.asanyarray(image.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise RunnerError(f"{what} {path} is truncated or corrupt ({_reason(error)})") from None
    except (ValueError, nib.filebasedimages.ImageFileError, OSError) as error:
        text = str(error)
        if "buffer" in text or "size" in text or "truncat" in text.lower():
            raise RunnerError(f"{what} {path} is truncated (the file is shorter than its header says)") from None
        raise RunnerError(f"{what} {path} cannot be decoded ({_reason(error)})") from None
    if data.ndim == 4:
        data = data[..., volume if volume is not None else 0]
    elif data.ndim != 3:
        data = np.squeeze(data)
        if data.ndim != 3:
            raise RunnerError(f"{what} {path} is not a 3D map (shape {image.shape})")
    return np.asarray(data, dtype=np.float64), digest


def resample(data: np.ndarray, source: Grid, target: Grid, order: int = 1) -> np.ndarray:
    """Resample a volume from its grid onto the target grid (trilinear by default; 0 outside the source)."""
    transform = np.linalg.solve(source.affine, target.affine)  # target voxel -> source voxel
    finite = np.isfinite(data)
    out = ndimage.affine_transform(np.where(finite, data, 0.0), transform[:3, :3], offset=transform[:3, 3],
                                   output_shape=target.shape, order=order, mode="constant", cval=0.0)
    if not finite.all():
        # A target voxel touching a non-finite source voxel stays non-finite, so the NaN policy still sees it.
        bad = ndimage.affine_transform((~finite).astype(float), transform[:3, :3], offset=transform[:3, 3],
                                       output_shape=target.shape, order=0, mode="constant", cval=0.0)
        out[bad > 0.5] = np.nan
    return out


def _is_nifti2(raw: bytes) -> bool:
    """NIfTI-2 headers start with sizeof_hdr = 540 (NIfTI-1: 348), in either byte order."""
    return any(int.from_bytes(raw[:4], order) == 540 for order in ("little", "big"))


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
