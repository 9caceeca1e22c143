"""The ``surface`` demo: 30 subjects' contrast maps on the bundled fsaverage5 mesh, with planted effects.

Each subject has a left and a right hemisphere GIFTI map (``sub-XX_hemi-L.func.gii``, ``..._hemi-R...``):
a group mean (two left and one right bump), a patient-control difference (one right bump), subject-specific
amplitude and noise smoothed on the mesh (FWHM ``NOISE_FWHM_MM``), 0 on the medial wall. Bumps are Gaussian in
the Euclidean distance on the pial surface from a centre vertex. The ground truth is written as
``truth_<effect>_hemi-<L|R>.func.gii``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from runner.demo.simulate import quantize

SUBJECTS = 30
NOISE_FWHM_MM = 6.0
BETWEEN_SD = 1.0
GAIN_SD = 0.2
AGE_RANGE = (20.0, 60.0)


@dataclass(frozen=True)
class SurfaceBump:
    """A planted effect: centre near ``target_mm`` on hemisphere ``hemi``, Gaussian of ``sigma_mm``."""

    name: str
    hemi: str
    target_mm: tuple[float, float, float]
    sigma_mm: float
    amplitude: float


MEAN_BUMPS = [SurfaceBump("left superior temporal", "L", (-58.0, -20.0, 4.0), 12.0, 1.6),
              SurfaceBump("left inferior frontal", "L", (-48.0, 24.0, 6.0), 10.0, 1.4),
              SurfaceBump("right superior temporal", "R", (58.0, -22.0, 4.0), 12.0, 1.4)]
GROUP_BUMPS = [SurfaceBump("right inferior parietal", "R", (44.0, -60.0, 40.0), 12.0, 2.0)]


def bump_map(hemispheres: dict, bumps: list[SurfaceBump]) -> dict[str, np.ndarray]:
    """The summed bumps on every vertex of each hemisphere (0 on the medial wall)."""
    out = {h: np.zeros(len(m.vertices)) for h, m in hemispheres.items()}
    for bump in bumps:
        mesh = hemispheres[bump.hemi]
        cortex = np.flatnonzero(mesh.cortex)
        centre = mesh.vertices[cortex[np.argmin(np.linalg.norm(mesh.vertices[cortex] - bump.target_mm, axis=1))]]
        distance2 = np.sum((mesh.vertices - centre) ** 2, axis=1)
        out[bump.hemi] += bump.amplitude * np.exp(-distance2 / (2 * bump.sigma_mm**2)) * mesh.cortex
    return out


def generate_surface(out_dir: Path, seed: int) -> None:
    """Write the surface demo into ``out_dir``: maps, table.tsv, truth maps and dataset_description.json."""
    from runner.data.surface import HEMISPHERES, bundled_mesh, smooth_on_mesh
    from runner.demo.datasets import DESCRIPTION_NAME, TABLE_NAME, save_description, save_table
    from runner.outputs.writer import gifti_bytes
    from runner.space.mesh import MeshSpace

    rng = np.random.default_rng(seed)
    hemispheres = bundled_mesh("fsaverage5")
    space = MeshSpace.from_hemispheres({h: (hemispheres[h].vertices, hemispheres[h].faces) for h in HEMISPHERES},
                                       {h: hemispheres[h].cortex for h in HEMISPHERES})
    mean = bump_map(hemispheres, MEAN_BUMPS)
    group_effect = bump_map(hemispheres, GROUP_BUMPS)
    mean_in = np.concatenate([mean[h][hemispheres[h].cortex] for h in HEMISPHERES])
    group_in = np.concatenate([group_effect[h][hemispheres[h].cortex] for h in HEMISPHERES])
    noise = smooth_on_mesh(rng.standard_normal((SUBJECTS, space.n_elements)), space, NOISE_FWHM_MM)
    noise *= BETWEEN_SD / noise.std(axis=1, keepdims=True)
    groups = np.array(["patient", "control"] * (SUBJECTS // 2))
    ages = np.round(rng.uniform(*AGE_RANGE, SUBJECTS), 1)
    gains = 1.0 + GAIN_SD * rng.standard_normal(SUBJECTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    sizes = [int(hemispheres[h].cortex.sum()) for h in HEMISPHERES]
    for subject in range(SUBJECTS):
        values = gains[subject] * mean_in + (groups[subject] == "patient") * group_in + noise[subject]
        label = f"sub-{subject + 1:02d}"
        paths = {}
        for hemi, part in zip(HEMISPHERES, np.split(values, [sizes[0]])):
            full = np.zeros(len(hemispheres[hemi].vertices))
            full[hemispheres[hemi].cortex] = part
            name = f"{label}_hemi-{hemi}.func.gii"
            (out_dir / name).write_bytes(gifti_bytes(quantize(full, 6), hemi))
            paths[hemi] = name
        rows.append({"participant_id": label, "group": groups[subject], "age": ages[subject],
                     "path_left": paths["L"], "path_right": paths["R"]})
    for effect, maps in (("mean", mean), ("patientMinusControl", group_effect)):
        for hemi in HEMISPHERES:
            (out_dir / f"truth_{effect}_hemi-{hemi}.func.gii").write_bytes(gifti_bytes(maps[hemi], hemi))
    save_table(pd.DataFrame(rows), out_dir / TABLE_NAME)
    save_description(out_dir / DESCRIPTION_NAME, "surface", "30 subjects on fsaverage5 (both hemispheres)", seed,
                     {"Mesh": "fsaverage5 (bundled, runner/resources/fsaverage5.npz)",
                      "NoiseFWHMmm": NOISE_FWHM_MM,
                      "Effects": [{"effect": effect, "name": b.name, "hemi": b.hemi, "target_mm": list(b.target_mm),
                                   "sigma_mm": b.sigma_mm, "amplitude": b.amplitude}
                                  for effect, bumps in (("mean", MEAN_BUMPS), ("patientMinusControl", GROUP_BUMPS))
                                  for b in bumps]})
