"""Demo ``diffusion``: two modalities of the same subjects (FA-like and MD-like maps) with an ageing effect in both.

White-matter ageing lowers fractional anisotropy (FA) and raises mean diffusivity (MD). Here one region changes in
both modalities, each change too weak to stand out well on its own, and one region in MD only: the non-parametric
combination of the two modalities (``correction.npc.modalities=[md_path]``) finds the shared region with more power
than either modality tested alone. Values are in the usual units (FA 0-1, MD in 10^-3 mm^2/s) but simulated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from runner.demo.simulate import Blob, blob_map, quantize, smooth_noise
from runner.resources import mni_gray_matter

DIFFUSION_SUBJECTS = 30
DIFFUSION_AGE_RANGE = (20.0, 75.0)
DIFFUSION_AGE_CENTER = 45.0
DIFFUSION_FWHM_MM = 8.0
DIFFUSION_STEP_EXPONENT = 10  # maps rounded to multiples of 1/1024 (noise SD 0.02-0.03)
FA_NOISE_SD = 0.025
MD_NOISE_SD = 0.03
# change per year of age (amplitude at the blob's centre)
SHARED_FA_BLOBS = [Blob("left corona radiata (FA and MD)", (-24.0, -12.0, 27.0), 8.0, -0.0015)]
SHARED_MD_BLOBS = [Blob("left corona radiata (FA and MD)", (-24.0, -12.0, 27.0), 8.0, 0.0018)]
MD_ONLY_BLOBS = [Blob("right frontal white matter (MD only)", (27.0, 33.0, 12.0), 8.0, 0.0030)]


def generate_diffusion(out_dir: Path, seed: int) -> None:
    """FA and MD maps of 30 adults (age 20-75) with planted ageing effects.

    fa_i = fa_base + (age_i - 45) * fa_age + noise;  md_i = md_base + (age_i - 45) * md_age + noise, with the
    base maps derived from the bundled grey-matter probability (FA high and MD low in white matter).

    Parameters
    ----------
    out_dir : Path
        Empty or new folder to write into.
    seed : int
        Seed of the only random generator used.
    """
    from runner.demo import datasets as demo

    n = DIFFUSION_SUBJECTS
    rng, mask, affine, subjects = demo.start(seed, n)
    age = np.round(rng.uniform(*DIFFUSION_AGE_RANGE, size=n), 1)
    sex = rng.choice(np.array(["F", "M"]), size=n)

    gray = np.where(mask, np.asarray(mni_gray_matter(demo.RESOLUTION_MM).dataobj, dtype=np.float64), 0.0)
    fa_base = 0.2 + 0.4 * (1.0 - gray)
    md_base = 0.7 + 0.3 * gray
    truth_fa = blob_map(SHARED_FA_BLOBS, mask, affine)
    truth_md = blob_map(SHARED_MD_BLOBS + MD_ONLY_BLOBS, mask, affine)

    rows = []
    for i, subject in enumerate(subjects):
        years = age[i] - DIFFUSION_AGE_CENTER
        fa = fa_base + years * truth_fa + FA_NOISE_SD * smooth_noise(rng, mask.shape, affine, DIFFUSION_FWHM_MM)
        md = md_base + years * truth_md + MD_NOISE_SD * smooth_noise(rng, mask.shape, affine, DIFFUSION_FWHM_MM)
        stem = f"{subject}/{subject}_space-{demo.SPACE}_res-{demo.RESOLUTION_MM}_model-tensor"
        paths = {"path": f"{stem}_param-fa_dwimap.nii.gz", "md_path": f"{stem}_param-md_dwimap.nii.gz"}
        for column, values in (("path", fa), ("md_path", md)):
            stored = np.where(mask, quantize(values, DIFFUSION_STEP_EXPONENT), 0.0)
            demo.save_map(stored, affine, out_dir / paths[column])
        rows.append({"subject": subject, **paths, "age": age[i], "sex": sex[i]})

    table = pd.DataFrame(rows)
    demo.save_table(table, out_dir / demo.TABLE_NAME)
    demo.save_table(table[["subject", "age", "sex"]], out_dir / demo.PARTICIPANTS_NAME)
    demo.save_map(truth_fa, affine, out_dir / "truth_fa_age.nii.gz")
    demo.save_map(truth_md, affine, out_dir / "truth_md_age.nii.gz")
    demo.save_description(
        out_dir / demo.DESCRIPTION_NAME,
        "diffusion",
        demo.DEMO_DATASETS["diffusion"].description,
        seed,
        {
            "Files": f"sub-<label>/sub-<label>_space-{demo.SPACE}_res-{demo.RESOLUTION_MM}_model-tensor"
            "_param-<fa|md>_dwimap.nii.gz (columns path and md_path)",
            "SmoothnessFWHMmm": DIFFUSION_FWHM_MM,
            "AgeCenter": DIFFUSION_AGE_CENTER,
            "NoiseSD": {"fa": FA_NOISE_SD, "md": MD_NOISE_SD},
            "PlantedEffects": {
                "truth_fa_age.nii.gz": {"meaning": "FA change per year of age",
                                        "blobs": [b.as_dict() for b in SHARED_FA_BLOBS]},
                "truth_md_age.nii.gz": {"meaning": "MD change per year of age (10^-3 mm^2/s)",
                                        "blobs": [b.as_dict() for b in SHARED_MD_BLOBS + MD_ONLY_BLOBS]},
            },
            "NoPlantedEffect": ["sex"],
        },
    )
