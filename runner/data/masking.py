"""Brain masks: an explicit mask file, or one computed from the inputs (non-zero everywhere, or SPM-like thresholds)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runner.errors import RunnerError


@dataclass(frozen=True)
class MaskRule:
    """How an automatic mask keeps a voxel: it must pass in every input image.

    strategy ``nonzero``: finite and non-zero; ``absolute``: value > threshold; ``relative``: value > threshold x the
    image's mean over its finite non-zero voxels (SPM's relative threshold masking).
    """

    strategy: str = "nonzero"
    threshold: float = 0.0

    def passes(self, volume: np.ndarray) -> np.ndarray:
        """Voxels of one image that pass the rule."""
        finite = np.isfinite(volume)
        if self.strategy == "nonzero":
            return finite & (volume != 0)
        if self.strategy == "absolute":
            return finite & (volume > self.threshold)
        if self.strategy == "relative":
            inside = volume[finite & (volume != 0)]
            mean = float(inside.mean()) if inside.size else 0.0
            return finite & (volume > self.threshold * mean)
        raise RunnerError(f"data.mask_strategy must be nonzero, absolute or relative, got {self.strategy!r}")


def binarise_mask(values: np.ndarray, name: str) -> np.ndarray:
    """A mask image's voxels > 0 (and finite) are in the mask; refuse an empty mask."""
    mask = np.isfinite(values) & (values > 0)
    if not mask.any():
        raise RunnerError(f"mask {name} is empty (no voxel above 0)")
    return mask


def check_mask(mask: np.ndarray, what: str) -> None:
    """Refuse a mask with no voxels left."""
    if not mask.any():
        raise RunnerError(f"{what} leaves no voxels to analyse")
