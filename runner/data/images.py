"""Reading input images: header checks before any voxel is decoded, one decode per file, resampling to a grid.

Headers are parsed from their raw bytes (never through ``nibabel.load``, which silently "fixes" bad fields and logs
about it), so every problem becomes one message naming the file: missing, unreadable, not NIfTI-1/2, absurd
dimensions, zero or NaN voxel sizes, a singular affine, or fewer bytes than the header promises (truncated).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from runner.errors import RunnerError

log = logging.getLogger(__name__)

MAX_VOXELS = 512**3  # a header claiming more voxels per volume than this is refused before anything is allocated
MAX_VOLUMES = 1_000_000
AFFINE_TOLERANCE = 1e-3  # mm; grids closer than this are the same grid
GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_SIZE, NIFTI2_SIZE = 348, 540
READ_BLOCK = 1 << 20


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

    @property
    def origin(self) -> list[float]:
        return [float(v) for v in np.round(self.affine[:3, 3], 2)]

    def describe(self) -> str:
        return f"shape {self.shape}, {_sizes(self.voxel_sizes)} mm voxels, origin {self.origin}"

    def difference(self, reference: "Grid") -> str:
        """How this grid differs from ``reference``, in the words a user checks in a viewer."""
        if self.shape != reference.shape:
            return f"shape {self.shape} instead of {reference.shape}"
        if not np.allclose(self.voxel_sizes, reference.voxel_sizes, atol=AFFINE_TOLERANCE):
            return f"voxel size {_sizes(self.voxel_sizes)} mm instead of {_sizes(reference.voxel_sizes)} mm"
        if not np.allclose(self.affine[:3, 3], reference.affine[:3, 3], atol=AFFINE_TOLERANCE):
            return f"origin {self.origin} mm instead of {reference.origin}"
        return "another orientation (the affines' axis directions differ)"


def _sizes(values: np.ndarray) -> str:
    return "x".join(f"{v:g}" for v in np.round(values, 4))


@dataclass(frozen=True)
class Header:
    """What the header says about an input file, read without decoding the voxels."""

    path: Path
    grid: Grid
    n_volumes: int  # 1 for 3D files
    dtype: np.dtype = np.dtype(np.float32)
    data_offset: int = 0
    slope: float | None = None
    inter: float | None = None
    compressed: bool = False

    @property
    def volume_bytes(self) -> int:
        return int(np.prod(self.grid.shape)) * self.dtype.itemsize

    @property
    def expected_bytes(self) -> int:
        """Bytes of the (uncompressed) file the header promises: header, extensions and every volume."""
        return self.data_offset + self.volume_bytes * self.n_volumes


# -- headers -----------------------------------------------------------------------------------------------------
def read_header(path: Path, what: str = "input image") -> Header:
    """Check that ``path`` is a readable, complete NIfTI-1/2 file with a sane 3D (or 4D) header.

    Reads the header bytes and, for compressed files, the gzip trailer; decompresses the whole file only when the
    trailer disagrees with the header (to tell a truncated file from one with trailing bytes).
    """
    path = Path(path)
    if not path.exists():
        raise RunnerError(f"{what} {path} does not exist")
    if not path.is_file():
        raise RunnerError(f"{what} {path} is not a file")
    compressed, raw = _read_start(path, what)
    kind = _nifti_kind(raw)
    if kind is None:
        raise RunnerError(_not_nifti_message(path, what))
    header_class, size, endianness = kind
    if len(raw) < size:
        raise RunnerError(f"{what} {path} is truncated (the file ends inside its header)")
    header = header_class(binaryblock=raw[:size], endianness=endianness, check=False)
    shape = _shape(header, path, what)
    zooms = np.asarray(header["pixdim"][1:4], dtype=float)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise RunnerError(f"{what} {path} has invalid voxel sizes {[float(z) for z in zooms]} in its header")
    try:
        dtype = np.dtype(header.get_data_dtype())
    except Exception:  # nibabel raises several types for unknown codes
        raise RunnerError(f"{what} {path} has an unknown data type code {int(header['datatype'])}") from None
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise RunnerError(f"{what} {path} holds {dtype} values; a map of real numbers is needed")
    try:
        slope, inter = header.get_slope_inter()
        affine = np.asarray(header.get_best_affine(), dtype=float)
    except Exception as error:  # HeaderDataError and friends: invalid scaling or orientation fields
        raise RunnerError(f"{what} {path} has an invalid header ({_reason(error)})") from None
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise RunnerError(f"{what} {path} has an invalid (singular or non-finite) affine")
    result = Header(path, Grid(shape[:3], affine), shape[3] if len(shape) == 4 else 1, dtype,
                    int(header.get_data_offset()), slope, inter, compressed)
    _check_complete(result, what)
    return result


def _read_start(path: Path, what: str) -> tuple[bool, bytes]:
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == GZIP_MAGIC
        if compressed:
            with gzip.open(path, "rb") as stream:
                return True, stream.read(NIFTI2_SIZE)
        with open(path, "rb") as handle:
            return False, handle.read(NIFTI2_SIZE)
    except EOFError:
        raise RunnerError(f"{what} {path} is truncated (the file ends inside its header)") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise RunnerError(f"{what} {path} is corrupt ({_reason(error)})") from None
    except PermissionError:
        raise RunnerError(f"{what} {path} cannot be read (permission denied)") from None
    except OSError as error:
        raise RunnerError(f"{what} {path} cannot be read ({_reason(error)})") from None


def _nifti_kind(raw: bytes) -> tuple[type, int, str] | None:
    """(header class, header size, endianness) when ``raw`` starts a single-file NIfTI-1/2 header."""
    for order, name in (("<", "little"), (">", "big")):
        size = int.from_bytes(raw[:4], name)
        if size == NIFTI1_SIZE and raw[344:348] == b"n+1\x00":
            return nib.Nifti1Header, NIFTI1_SIZE, order
        if size == NIFTI2_SIZE and raw[4:8] == b"n+2\x00":
            return nib.Nifti2Header, NIFTI2_SIZE, order
    return None


def _not_nifti_message(path: Path, what: str) -> str:
    """Name the format of a file that is not a single-file NIfTI, when nibabel knows it."""
    try:
        with nib.imageglobals.LoggingOutputSuppressor():
            image = nib.load(str(path))
        kind = type(image).__name__
    except Exception:  # anything nibabel cannot open is simply "not NIfTI"
        return f"{what} {path} is not a readable NIfTI image (no NIfTI-1/2 header)"
    if kind in ("Nifti1Pair", "Nifti2Pair"):
        return f"{what} {path} is a NIfTI .hdr/.img pair; convert it to a single .nii or .nii.gz file"
    return f"{what} {path} is a {kind}, not NIfTI-1/2"


def _shape(header: nib.Nifti1Header, path: Path, what: str) -> tuple[int, ...]:
    dim = [int(d) for d in header["dim"]]
    if not 1 <= dim[0] <= 7:
        raise RunnerError(f"{what} {path} has an invalid number of dimensions ({dim[0]}) in its header")
    shape = tuple(dim[1:dim[0] + 1])
    if any(s <= 0 for s in shape) or int(np.prod(shape[:3], dtype=np.int64)) > MAX_VOXELS \
            or (len(shape) > 3 and int(np.prod(shape[3:], dtype=np.int64)) > MAX_VOLUMES):
        raise RunnerError(f"{what} {path} has an implausible shape {shape} in its header")
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (3, 4):
        raise RunnerError(f"{what} {path} has {len(shape)} dimensions {shape}; a 3D map (or 4D series) is needed")
    return shape


def _check_complete(header: Header, what: str) -> None:
    """Refuse a file shorter than its header says: size for .nii, the gzip trailer (then a full read) for .nii.gz."""
    path, expected = header.path, header.expected_bytes
    if not header.compressed:
        size = path.stat().st_size
        if size < expected:
            raise RunnerError(f"{what} {path} is truncated ({size} bytes; its header needs {expected})")
        return
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        trailer_size = int.from_bytes(handle.read(4), "little")  # ISIZE: uncompressed size modulo 2**32
    if trailer_size == expected % 2**32:
        return
    size = 0
    for block in _decompressed_blocks(path, what):
        size += len(block)
    if size < expected:
        raise RunnerError(f"{what} {path} is truncated ({size} bytes once decompressed; its header needs "
                          f"{expected})")


def _decompressed_blocks(path: Path, what: str) -> Iterator[bytes]:
    """Stream the decompressed bytes of a gzip file block by block (constant memory)."""
    try:
        with gzip.open(path, "rb") as stream:
            while block := stream.read(READ_BLOCK):
                yield block
    except EOFError:
        raise RunnerError(f"{what} {path} is truncated (the compressed data end early)") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise RunnerError(f"{what} {path} is corrupt ({_reason(error)})") from None
    except OSError as error:
        raise RunnerError(f"{what} {path} cannot be read ({_reason(error)})") from None


# -- voxels ------------------------------------------------------------------------------------------------------
def read_volume(path: Path, volume: int | None = None, what: str = "input image",
                header: Header | None = None) -> tuple[np.ndarray, str]:
    """Decode one 3D volume (float64) and return it with the sha256 of the file's bytes (one read, one decode).

    For many volumes of one 4D file use :func:`iter_volumes`, which decompresses the file once.
    """
    path = Path(path)
    header = header or read_header(path, what)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise RunnerError(f"{what} {path} cannot be read ({_reason(error)})") from None
    digest = hashlib.sha256(raw).hexdigest()
    payload = _decompress(raw, path, what) if raw[:2] == GZIP_MAGIC else raw
    start = header.data_offset + (volume or 0) * header.volume_bytes
    if len(payload) < start + header.volume_bytes:
        raise RunnerError(f"{what} {path} is truncated (the file is shorter than its header says)")
    return decode_volume(memoryview(payload)[start:start + header.volume_bytes], header), digest


def iter_volumes(path: Path, header: Header, volumes: list[int], what: str = "data.image_4d") \
        -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(volume index, float64 volume)`` for the requested volumes of a 4D file, in file order.

    The file is read and decompressed once, one volume at a time, so memory holds a single volume whatever the
    length of the series. :func:`file_digest` gives the sha256 of the same bytes.
    """
    wanted = sorted(set(volumes))
    stream = (_decompressed_blocks(path, what) if header.compressed else _raw_blocks(path, what))
    buffer = bytearray()
    position = 0  # offset in the uncompressed file of buffer[0]
    for index in wanted:
        start = header.data_offset + index * header.volume_bytes
        end = start + header.volume_bytes
        while position + len(buffer) < end:
            block = next(stream, None)
            if block is None:
                raise RunnerError(f"{what} {path} is truncated (volume {index} is missing)")
            buffer += block
            if start > position + len(buffer):  # skip whole blocks before the volume
                position += len(buffer)
                buffer.clear()
        del buffer[: start - position]
        position = start
        yield index, decode_volume(memoryview(bytes(buffer[: header.volume_bytes])), header)


def _raw_blocks(path: Path, what: str) -> Iterator[bytes]:
    try:
        with open(path, "rb") as handle:
            while block := handle.read(READ_BLOCK):
                yield block
    except OSError as error:
        raise RunnerError(f"{what} {path} cannot be read ({_reason(error)})") from None


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def decode_volume(buffer: memoryview, header: Header) -> np.ndarray:
    """One volume's bytes -> float64 array on the header's grid (NIfTI stores voxels in Fortran order), scaled."""
    values = np.frombuffer(buffer, dtype=header.dtype).reshape(header.grid.shape, order="F")
    volume = values.astype(np.float64)
    if header.slope is not None:
        volume *= header.slope
        if header.inter:
            volume += header.inter
    return volume


def _decompress(raw: bytes, path: Path, what: str) -> bytes:
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise RunnerError(f"{what} {path} is truncated (the compressed data end early)") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise RunnerError(f"{what} {path} is corrupt ({_reason(error)})") from None


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


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__

