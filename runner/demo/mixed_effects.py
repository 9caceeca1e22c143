"""Demo ``mixed``: first-level effect and variance maps whose precision differs a lot between subjects.

Some subjects' effects are measured far more precisely than others (more trials, less motion): their first-level
variances span two orders of magnitude. A mixed-effects model (``model=mfx``) weighs each map by
``1 / (s_i + tau2)`` and finds the planted effects with more power than OLS, which weighs every map the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from runner.demo.simulate import Blob, blob_map, quantize, smooth_noise

MIXED_SUBJECTS = 24
MIXED_MEAN_BLOBS = [
    Blob("left motor cortex", (-36.0, -24.0, 57.0), 7.0, 1.6),
    Blob("right motor cortex", (36.0, -24.0, 57.0), 7.0, 1.2),
    Blob("supplementary motor area (weak)", (0.0, -6.0, 60.0), 5.0, 0.9),
    Blob("left cerebellum (weak)", (-24.0, -54.0, -24.0), 6.0, 0.7),
]
MIXED_FWHM_MM = 9.0
MIXED_BETWEEN_SD = 0.4  # between-subject (random-effects) noise: tau2 = 0.16
# First-level standard deviation of subject i: log-uniform between these, so variances span 0.04 to 4.
MIXED_WITHIN_SD_RANGE = (0.2, 2.0)


def generate_mixed(out_dir: Path, seed: int) -> None:
    """24 subjects' effect maps with their first-level variance maps and a planted group mean.

    effect_i = mean + between-subject noise (SD 0.4) + first-level noise (variance_i, given by variance_path)

    Parameters
    ----------
    out_dir : Path
        Empty or new folder to write into.
    seed : int
        Seed of the only random generator used.
    """
    from runner.demo import datasets as demo

    n = MIXED_SUBJECTS
    rng, mask, affine, subjects = demo.start(seed, n)
    low, high = np.log(MIXED_WITHIN_SD_RANGE)
    within_sd = np.exp(rng.uniform(low, high, size=n))
    n_trials = np.round(40.0 / within_sd**2).astype(int)  # what a user would see: fewer trials, noisier effect
    truth_mean = blob_map(MIXED_MEAN_BLOBS, mask, affine)
    variance_pattern = 1.0 + 0.3 * np.tanh(smooth_noise(rng, mask.shape, affine, 30.0))

    rows = []
    for i, subject in enumerate(subjects):
        variance = within_sd[i] ** 2 * variance_pattern
        between = MIXED_BETWEEN_SD * smooth_noise(rng, mask.shape, affine, MIXED_FWHM_MM)
        within = np.sqrt(variance) * smooth_noise(rng, mask.shape, affine, MIXED_FWHM_MM)
        effect = np.where(mask, truth_mean + between + within, 0.0)
        stem = f"{subject}/{subject}_task-motor_contrast-movement"
        effect_path = f"{stem}_stat-effect_statmap.nii.gz"
        variance_path = f"{stem}_stat-variance_statmap.nii.gz"
        demo.save_map(quantize(effect, demo.EFFECT_STEP_EXPONENT), affine, out_dir / effect_path)
        # Rounded up to the variance step so that no in-mask variance is rounded to zero.
        step = 2.0 ** -demo.VARIANCE_STEP_EXPONENT
        stored = np.where(mask, np.maximum(quantize(variance, demo.VARIANCE_STEP_EXPONENT), step), 0.0)
        demo.save_map(stored, affine, out_dir / variance_path)
        rows.append({"subject": subject, "path": effect_path, "variance_path": variance_path,
                     "n_trials": int(n_trials[i])})

    table = pd.DataFrame(rows)
    demo.save_table(table, out_dir / demo.TABLE_NAME)
    demo.save_map(truth_mean, affine, out_dir / "truth_mean.nii.gz")
    demo.save_description(
        out_dir / demo.DESCRIPTION_NAME,
        "mixed",
        demo.DEMO_DATASETS["mixed"].description,
        seed,
        {
            "Files": "sub-<label>/sub-<label>_task-motor_contrast-movement_stat-<effect|variance>_statmap.nii.gz",
            "SmoothnessFWHMmm": MIXED_FWHM_MM,
            "BetweenSubjectSD": MIXED_BETWEEN_SD,
            "FirstLevelSD": [round(float(s), 4) for s in within_sd],
            "PlantedEffects": {
                "truth_mean.nii.gz": {"meaning": "group mean effect (intercept)",
                                      "blobs": [b.as_dict() for b in MIXED_MEAN_BLOBS]},
            },
        },
    )
