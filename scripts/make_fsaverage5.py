"""Derive the bundled fsaverage5 mesh ``runner/resources/fsaverage5.npz`` (run by hand, never at runtime).

The source is FreeSurfer's fsaverage5 as shipped in nilearn's wheel (``nilearn/datasets/data/fsaverage5/``,
GIFTI). Nilearn is imported only to find that folder; pass ``--source DIR`` to use another copy of the files.

Arrays written, per hemisphere ``h`` in (``left``, ``right``), 10242 vertices and 20480 triangles each:

- ``pial_{h}``      (N, 3) float32 pial vertex positions, mm (analysis geometry: areas, distances, smoothing)
- ``inflated_{h}``  (N, 3) float32 inflated vertex positions, mm (figures)
- ``faces_{h}``     (F, 3) int32 triangles (shared by the pial and inflated surfaces)
- ``sulc_{h}``      (N,) float32 sulcal depth (figure background)
- ``cortex_{h}``    (N,) bool, False on the medial wall: the vertices that no triangle of FreeSurfer's cortex
  patch (``?h.cortex.patch.flat``, nilearn's ``flat_{h}``) uses

Usage::

    .venv/bin/python scripts/make_fsaverage5.py [--source DIR] [--out runner/resources/fsaverage5.npz]

Deterministic: np.savez_compressed writes fixed zip time stamps, so the same source gives the same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

HEMISPHERES = ("left", "right")


def default_source() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data" / "fsaverage5"


def _arrays(path: Path) -> list[np.ndarray]:
    return [np.asarray(a.data) for a in nib.load(path).darrays]


def derive(source: Path) -> dict[str, np.ndarray]:
    """The bundled arrays from the fsaverage5 GIFTI files in ``source``."""
    out: dict[str, np.ndarray] = {}
    for hemi in HEMISPHERES:
        pial, faces = _arrays(source / f"pial_{hemi}.gii.gz")
        inflated, inflated_faces = _arrays(source / f"infl_{hemi}.gii.gz")
        if not np.array_equal(faces, inflated_faces):
            raise SystemExit(f"the pial and inflated {hemi} surfaces do not share their triangles")
        flat_faces = _arrays(source / f"flat_{hemi}.gii.gz")[1]
        cortex = np.zeros(len(pial), dtype=bool)
        cortex[np.unique(flat_faces)] = True
        out[f"pial_{hemi}"] = pial.astype(np.float32)
        out[f"inflated_{hemi}"] = inflated.astype(np.float32)
        out[f"faces_{hemi}"] = faces.astype(np.int32)
        out[f"sulc_{hemi}"] = _arrays(source / f"sulc_{hemi}.gii.gz")[0].astype(np.float32)
        out[f"cortex_{hemi}"] = cortex
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "runner" / "resources" / "fsaverage5.npz")
    args = parser.parse_args()
    arrays = derive(args.source or default_source())
    np.savez_compressed(args.out, **arrays)
    for hemi in HEMISPHERES:
        print(f"{hemi}: {len(arrays[f'pial_{hemi}'])} vertices, {len(arrays[f'faces_{hemi}'])} triangles, "
              f"{int((~arrays[f'cortex_{hemi}']).sum())} on the medial wall")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
