"""OutputWriter: the one place outputs are named, written atomically and registered for the manifest."""

from __future__ import annotations

import gzip
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np
import pandas as pd

from runner.errors import RunnerError, storage_error
from runner.outputs import bids_derivative, naming
from runner.outputs.atomic import sha256_file, write_atomic, write_text_atomic
from runner.rundir import MANIFEST_FORMAT, MANIFEST_FORMAT_VERSION, MANIFEST_NAME

__all__ = ["MANIFEST_NAME", "OutputEntry", "OutputWriter", "gifti_bytes", "nifti_gz_bytes"]


@dataclass
class OutputEntry:
    """One registered output file (paths are relative to the run directory)."""

    path: str
    kind: str  # map | sidecar | clusters | table | figure | design | description | report | text
    contrast: str | None = None
    stat: str | None = None
    correction: str | None = None
    alpha: float | None = None
    threshold: float | None = None
    sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        extra = record.pop("extra")
        record.update(extra)
        return record


def nifti_gz_bytes(volume: np.ndarray, affine: np.ndarray) -> bytes:
    """A float32 NIfTI-1 image as deterministic gzip bytes (mtime 0, so re-runs are bit-identical)."""
    image = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=float))
    image.header.set_xyzt_units("mm")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def gifti_bytes(values: np.ndarray, hemi: str) -> bytes:
    """One float32 map as GIFTI bytes (one data array, intent NONE, the hemisphere as its structure)."""
    structure = {"L": "CortexLeft", "R": "CortexRight"}.get(hemi, "Other")
    array = nib.gifti.GiftiDataArray(np.asarray(values, dtype=np.float32), intent="NIFTI_INTENT_NONE",
                                     datatype="NIFTI_TYPE_FLOAT32")
    image = nib.GiftiImage(darrays=[array])
    image.meta = nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": structure})
    return image.to_bytes()


class OutputWriter:
    """Write every output of a run atomically under ``run_dir`` and keep the manifest entries.

    ``run_dir`` is the run's staging folder (``runner.rundir``): the folder is removed as a whole when the run is
    dropped, so the writer keeps no journal of its own and its temporaries need no clean-up by pattern.
    """

    def __init__(self, run_dir: Path, published_dir: Path | None = None) -> None:
        self.run_dir = Path(run_dir).resolve()
        with storage_errors("create", self.run_dir):
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.published_dir = Path(published_dir).resolve() if published_dir else self.run_dir  # where they end up
        self.entries: list[OutputEntry] = []
        self._dof: dict[str, Any] = {}  # degrees of freedom per contrast, for the sidecars of its corrected maps

    # -- paths -----------------------------------------------------------------------------------------------
    def _target(self, name: str) -> Path:
        """The path of a new output: a plain file name in the run directory, used once."""
        target = (self.run_dir / name).resolve()
        if ("/" in name or "\\" in name or "\x00" in name or name.startswith(".")
                or target.parent != self.run_dir):
            raise RunnerError(f"refusing to write {name!r}: outputs are plain file names in the run directory "
                              f"{self.run_dir}")
        if any(e.path == name for e in self.entries):
            raise RunnerError(
                f"two outputs would both be named {name!r}; give the contrasts names that differ "
                "in their letters or digits")
        if target.is_dir():
            raise RunnerError(f"cannot write output {name}: {target} is a folder; move it away or choose another "
                              "hydra.run.dir")
        return target

    def _register(self, name: str, target: Path, kind: str, **meta: Any) -> Path:
        known = {k: meta.pop(k) for k in ("contrast", "stat", "correction", "alpha", "threshold") if k in meta}
        for key in ("alpha", "threshold"):
            if known.get(key) is not None:
                known[key] = float(known[key])
        entry = OutputEntry(path=name, kind=kind, sha256=sha256_file(target), extra=meta, **known)
        self.entries.append(entry)
        return target

    # -- writers ---------------------------------------------------------------------------------------------
    def map(self, volume: np.ndarray, affine: np.ndarray, *, contrast: str, stat: str,
            correction: str | None = None, alpha: float | None = None, threshold: float | None = None,
            name: str | None = None, **extra: Any) -> Path:
        """Write a 3D statistical map as NIfTI (float32) named in BIDS-derivative style, and its JSON sidecar."""
        name = name or naming.map_name(contrast, stat, correction)
        target = self._target(name)
        payload = nifti_gz_bytes(volume, affine)
        with storage_errors(path=target):
            write_atomic(target, lambda tmp: tmp.write_bytes(payload))
        path = self._register(name, target, "map", contrast=contrast, stat=stat, correction=correction,
                              alpha=alpha, threshold=threshold, **extra)
        self._map_sidecar(name, contrast, stat, correction, extra)
        return path

    def _map_sidecar(self, name: str, contrast: str, stat: str, correction: str | None,
                     extra: dict[str, Any]) -> Path:
        """The JSON sidecar of the map just registered as ``name`` (volume, hemisphere or CIFTI alike)."""
        if extra.get("dof") is not None:
            self._dof[contrast] = extra["dof"]
        sidecar = bids_derivative.map_sidecar(
            contrast, stat, correction, self.entries[-1].alpha, self.entries[-1].threshold,
            extra.get("dof", self._dof.get(contrast)), {k: v for k, v in extra.items() if k != "dof"})
        return self.json(sidecar, name=naming.sidecar_name(name), kind="sidecar", contrast=contrast, stat=stat,
                         correction=correction)

    def json(self, content: dict[str, Any], *, name: str, kind: str, **meta: Any) -> Path:
        """Write a JSON file (sidecar, dataset_description.json): fixed key order, NaN as null, LF line ends."""
        target = self._target(name)
        with storage_errors(path=target):
            write_text_atomic(target, json.dumps(_jsonable(content), indent=2, allow_nan=False) + "\n")
        return self._register(name, target, kind, **meta)

    def surface_map(self, hemispheres: dict[str, np.ndarray], *, contrast: str, stat: str,
                    correction: str | None = None, alpha: float | None = None, threshold: float | None = None,
                    desc: str | None = None, **extra: Any) -> list[Path]:
        """Write one GIFTI (float32, ``.func.gii``) per hemisphere, ``..._hemi-<L|R>_statmap.func.gii``, each
        registered with its ``hemi`` and with its JSON sidecar."""
        paths = []
        for hemi, values in hemispheres.items():
            name = naming.surface_map_name(contrast, stat, hemi, correction, desc=desc)
            target = self._target(name)
            payload = gifti_bytes(values, hemi)
            with storage_errors(path=target):
                write_atomic(target, lambda tmp, payload=payload: tmp.write_bytes(payload))
            paths.append(self._register(name, target, "map", contrast=contrast, stat=stat, correction=correction,
                                        alpha=alpha, threshold=threshold, hemi=hemi, **extra))
            self._map_sidecar(name, contrast, stat, correction, {**extra, "hemisphere": hemi})
        return paths

    def cifti_map(self, payload: bytes, *, contrast: str, stat: str, correction: str | None = None,
                  alpha: float | None = None, threshold: float | None = None, desc: str | None = None,
                  hemi: str = "LR", structures: list[str] | None = None, **extra: Any) -> Path:
        """Write one CIFTI-2 dense scalar map (``payload``, see ``runner.data.cifti.dscalar_bytes``) as
        ``..._statmap.dscalar.nii``, registered with its ``hemi`` (``LR`` for both cortices) and the brain
        ``structures`` it covers."""
        name = naming.cifti_map_name(contrast, stat, correction, desc=desc)
        target = self._target(name)
        with storage_errors(path=target):
            write_atomic(target, lambda tmp: tmp.write_bytes(payload))
        path = self._register(name, target, "map", contrast=contrast, stat=stat, correction=correction,
                              alpha=alpha, threshold=threshold, hemi=hemi, structures=list(structures or []),
                              **extra)
        self._map_sidecar(name, contrast, stat, correction, {**extra, "structures": list(structures or [])})
        return path

    def table(self, frame: pd.DataFrame, *, suffix: str, kind: str = "table", contrast: str | None = None,
              stat: str | None = None, correction: str | None = None, alpha: float | None = None,
              threshold: float | None = None, name: str | None = None, **extra: Any) -> Path:
        """Write a TSV table (``n/a`` for missing values, as BIDS asks): ``[contrast-<c>_][desc-<m>_]<suffix>.tsv``."""
        name = name or naming.table_name(suffix, contrast=contrast, correction=correction)
        target = self._target(name)
        with storage_errors(path=target):
            write_atomic(target, lambda tmp: frame.to_csv(tmp, sep="\t", index=False, na_rep="n/a"))
        return self._register(name, target, kind, contrast=contrast, stat=stat, correction=correction,
                              alpha=alpha, threshold=threshold, **extra)

    def figure(self, fig: Any, *, name: str, contrast: str | None = None, stat: str | None = None,
               correction: str | None = None, dpi: int = 100, **extra: Any) -> Path:
        """Save a matplotlib figure as PNG and close it."""
        import matplotlib.pyplot as plt

        if not name.endswith(".png"):
            name += ".png"
        target = self._target(name)
        try:
            with storage_errors(path=target):
                write_atomic(target, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
        finally:
            plt.close(fig)
        return self._register(name, target, "figure", contrast=contrast, stat=stat, correction=correction,
                              **extra)

    def text(self, content: str, *, name: str, kind: str = "text", **extra: Any) -> Path:
        """Write a text file (config, report)."""
        target = self._target(name)
        with storage_errors(path=target):
            write_text_atomic(target, content)
        return self._register(name, target, kind, **extra)

    def register_existing(self, name: str, kind: str, **meta: Any) -> Path:
        """Register a file written by another tool (e.g. Hydra's config) so it is hashed in the manifest."""
        target = self._target(name)
        return self._register(name, target, kind, **meta)

    # -- manifest --------------------------------------------------------------------------------------------
    def manifest(self, status: str, **fields: Any) -> dict[str, Any]:
        """The manifest as a dict (outputs in write order)."""
        record = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_FORMAT_VERSION, "status": status,
                  "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        record.update(fields)
        record["outputs"] = [e.to_dict() for e in self.entries]
        return record

    def finalize(self, status: str, **fields: Any) -> Path:
        """Write manifest.json last and atomically."""
        record = self.manifest(status, **fields)
        text = json.dumps(_jsonable(record), indent=2, sort_keys=False, allow_nan=False)
        with storage_errors(path=self.run_dir / MANIFEST_NAME):
            return write_text_atomic(self.run_dir / MANIFEST_NAME, text + "\n")


@contextmanager
def storage_errors(action: str = "write", path: Path | None = None) -> Iterator[None]:
    """Turn the storage's refusals (full disk, file-size limit, read-only, a folder in the way) into one line
    naming ``path`` (when the error itself names no file)."""
    try:
        yield
    except OSError as error:
        converted = storage_error(error, action, path)
        if converted is None:
            raise
        raise converted from None


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars and non-finite floats into JSON-safe values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if np.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value
