"""A tiny study with planted effects of both signs, for tests of signed maps and figures (no demo data needed)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SHAPE = (12, 10, 8)
AFFINE = np.array([[2.0, 0, 0, -11], [0, 2.0, 0, -9], [0, 0, 2.0, -7], [0, 0, 0, 1]])
POSITIVE_CENTRE = (3, 5, 4)
NEGATIVE_CENTRE = (8, 5, 4)


def ball(centre: tuple[int, int, int], radius: float = 1.5) -> np.ndarray:
    """Voxels within ``radius`` voxels of ``centre``."""
    grid = np.indices(SHAPE, dtype=float)
    return ((grid - np.asarray(centre, dtype=float)[:, None, None, None]) ** 2).sum(axis=0) <= radius**2


def planted_study(root: Path, n_maps: int = 12, positive: float = 2.0, negative: float = -1.5,
                  seed: int = 0) -> list[str]:
    """Write maps = N(0, 1) noise + ``positive`` in one ball + ``negative`` in another, a table and a mask.

    Returns the overrides that analyse it with a one-sample design (the mean contrast).
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[1:-1, 1:-1, 1:-1] = True
    effect = positive * ball(POSITIVE_CENTRE) + negative * ball(NEGATIVE_CENTRE)
    paths = []
    for i in range(n_maps):
        values = np.where(mask, rng.standard_normal(SHAPE) + effect, 0.0)
        path = root / f"sub-{i + 1:02d}.nii.gz"
        nib.save(nib.Nifti1Image(values.astype(np.float32), AFFINE), str(path))
        paths.append(path.name)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), str(root / "mask.nii.gz"))
    pd.DataFrame({"participant_id": [f"sub-{i + 1:02d}" for i in range(n_maps)], "path": paths}).to_csv(
        root / "table.tsv", sep="\t", index=False)
    return ["data=table", f"data.table={root / 'table.tsv'}", f"data.mask={root / 'mask.nii.gz'}", "n_jobs=1",
            "progress=false", "cache=false"]
