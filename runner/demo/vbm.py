"""Demo ``vbm``: grey-matter maps with age-related atrophy, a sex difference and head-size (TIV) scaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from runner.demo.simulate import Blob, blob_map, quantize, smooth_noise
from runner.resources import mni_gray_matter

VBM_SUBJECTS = 100
VBM_AGE_RANGE = (20.0, 90.0)
VBM_AGE_CENTER = 55.0
VBM_TIV_MEAN_ML = {"F": 1350.0, "M": 1500.0}
VBM_TIV_SD_ML = 110.0
VBM_TIV_REFERENCE_ML = 1425.0
VBM_TIV_GAIN = 0.5  # relative change of grey matter per relative change of TIV
# Grey-matter change per year, relative to the template's grey-matter probability.
VBM_AGE_BLOBS = [
    Blob("left hippocampus", (-27.0, -21.0, -12.0), 6.0, -0.004),
    Blob("right hippocampus", (27.0, -21.0, -12.0), 6.0, -0.004),
    Blob("medial prefrontal", (0.0, 48.0, 6.0), 8.0, -0.003),
]
# Male minus female, relative to the template's grey-matter probability.
VBM_SEX_BLOBS = [Blob("left posterior cerebellum", (-24.0, -72.0, -36.0), 7.0, 0.12)]
VBM_NOISE_FWHM_MM = 8.0


def generate_vbm(out_dir: Path, seed: int) -> None:
    """Grey-matter maps of 100 adults built from the bundled template's grey-matter probability.

    gm_i = clip(template * (1 + 0.5 * (tiv_i / 1425 - 1)) + (age_i - 55) * age + (male_i - 1/2) * sex
                + noise, 0, 1)

    Parameters
    ----------
    out_dir : Path
        Empty or new folder to write into.
    seed : int
        Seed of the only random generator used.
    """
    from runner.demo import datasets as demo  # the shared file helpers; imported here to avoid a cycle

    n = VBM_SUBJECTS
    rng, mask, affine, subjects = demo.start(seed, n)
    template = np.where(mask, np.asarray(mni_gray_matter(demo.RESOLUTION_MM).dataobj, dtype=np.float64), 0.0)

    age = np.round(rng.uniform(*VBM_AGE_RANGE, size=n), 1)
    sex = rng.choice(np.array(["F", "M"]), size=n)
    tiv_mean = np.array([VBM_TIV_MEAN_ML[s] for s in sex])
    tiv = np.round(tiv_mean + VBM_TIV_SD_ML * rng.standard_normal(n)).astype(int)

    truth_age = template * blob_map(VBM_AGE_BLOBS, mask, affine)
    truth_sex = template * blob_map(VBM_SEX_BLOBS, mask, affine)
    truth_tiv = template * VBM_TIV_GAIN / VBM_TIV_REFERENCE_ML
    noise_scale = 0.01 + 0.05 * template  # tissue variability grows with grey-matter content

    rows = []
    for i, subject in enumerate(subjects):
        noise = noise_scale * smooth_noise(rng, mask.shape, affine, VBM_NOISE_FWHM_MM)
        density = (
            template
            + (tiv[i] - VBM_TIV_REFERENCE_ML) * truth_tiv
            + (age[i] - VBM_AGE_CENTER) * truth_age
            + (float(sex[i] == "M") - 0.5) * truth_sex
            + noise
        )
        density = np.where(mask, np.clip(density, 0.0, 1.0), 0.0)
        path = f"{subject}/{subject}_space-{demo.SPACE}_res-{demo.RESOLUTION_MM}_label-GM_probseg.nii.gz"
        demo.save_map(quantize(density, demo.GRAY_MATTER_STEP_EXPONENT), affine, out_dir / path)
        rows.append({"subject": subject, "path": path, "age": age[i], "sex": sex[i], "tiv": tiv[i]})

    table = pd.DataFrame(rows)
    demo.save_table(table, out_dir / demo.TABLE_NAME)
    demo.save_table(table[["subject", "age", "sex", "tiv"]], out_dir / demo.PARTICIPANTS_NAME)
    demo.save_map(truth_age, affine, out_dir / "truth_age.nii.gz")
    demo.save_map(truth_sex, affine, out_dir / "truth_sex.nii.gz")
    demo.save_map(truth_tiv, affine, out_dir / "truth_tiv.nii.gz")
    demo.save_description(
        out_dir / demo.DESCRIPTION_NAME,
        "vbm",
        demo.DEMO_DATASETS["vbm"].description,
        seed,
        {
            "Files": f"sub-<label>/sub-<label>_space-{demo.SPACE}_res-{demo.RESOLUTION_MM}_label-GM_probseg.nii.gz",
            "AgeCenter": VBM_AGE_CENTER,
            "TIVReferenceML": VBM_TIV_REFERENCE_ML,
            "PlantedEffects": {
                "truth_age.nii.gz": {
                    "meaning": "grey-matter change per year of age (template probability x blob amplitude)",
                    "blobs": [b.as_dict() for b in VBM_AGE_BLOBS],
                },
                "truth_sex.nii.gz": {
                    "meaning": "male minus female (template probability x blob amplitude)",
                    "blobs": [b.as_dict() for b in VBM_SEX_BLOBS],
                },
                "truth_tiv.nii.gz": {
                    "meaning": "grey-matter change per mL of total intracranial volume (global scaling)",
                    "gain": VBM_TIV_GAIN,
                },
            },
            "Note": "values are clipped to [0, 1], which slightly attenuates effects where grey matter is "
            "near 0 or 1",
        },
    )
