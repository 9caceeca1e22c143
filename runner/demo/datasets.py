"""Seeded demo datasets (localizer, paired, vbm, mixed, diffusion, surface), generated on first use, cached, always identical.

``ensure_demo(name)`` returns the dataset's ``table.tsv``. Datasets live under the cache root
(``root`` argument, else ``$RUNNER_DEMO_DIR``, else ``$XDG_CACHE_HOME/second-level-runner/demo``,
else ``~/.cache/second-level-runner/demo``) in ``<name>-v<version>/``. Each dataset is generated into
a temporary sibling folder and renamed into place, so concurrent callers never see half a dataset.

All maps are float32 NIfTI on the bundled 3 mm MNI grid, zero outside the bundled brain mask. Each
dataset also writes its ground truth (``truth_<effect>.nii.gz``: planted amplitude, 0 elsewhere) and a
``dataset_description.json`` listing the planted effects.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from runner.demo.simulate import Blob, blob_map, quantize, smooth_noise
from runner.demo.surface import generate_surface
from runner.errors import RunnerError, did_you_mean
from runner.resources import mni_mask

TABLE_NAME = "table.tsv"
PARTICIPANTS_NAME = "participants.tsv"
DESCRIPTION_NAME = "dataset_description.json"
CACHE_ENV = "RUNNER_DEMO_DIR"
RESOLUTION_MM = 3
SPACE = "MNI152NLin2009aSym"
GZIP_LEVEL = 3
# Maps are rounded to multiples of 2**-k (see quantize()): 1/64 for effects (noise SD about 1),
# 1/128 for grey matter (noise SD 0.01-0.06), 1/1024 for variances (values about 0.1-0.5).
EFFECT_STEP_EXPONENT = 6
GRAY_MATTER_STEP_EXPONENT = 7
VARIANCE_STEP_EXPONENT = 10


# --------------------------------------------------------------------------------------------
# Files


def save_map(values: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a float32 NIfTI, gzipped without a time stamp so identical data gives identical bytes."""
    image = nib.Nifti1Image(np.asarray(values, dtype=np.float32), affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=4)  # 4 = MNI152
    image.header.set_sform(affine, code=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0))


def save_table(table: pd.DataFrame, path: Path) -> None:
    """Write a tab-separated table with fixed formatting (no index, LF line ends)."""
    table.to_csv(path, sep="\t", index=False, lineterminator="\n")


def save_description(path: Path, name: str, summary: str, seed: int, details: dict[str, object]) -> None:
    """Write a small BIDS-like dataset_description.json."""
    spec = DEMO_DATASETS[name]
    description = {
        "Name": f"second-level-runner demo: {name}",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "runner.demo.datasets", "Description": "simulated data, not real subjects"}],
        "DemoName": name,
        "DemoVersion": spec.version,
        "Seed": seed,
        "Summary": summary,
        "Space": f"{SPACE}, {RESOLUTION_MM} mm grid of runner.resources.mni_mask({RESOLUTION_MM})",
        **details,
    }
    path.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Brain mask (bool) and affine of the 3 mm MNI grid every demo map lives on."""
    image = mni_mask(RESOLUTION_MM)
    return np.asarray(image.dataobj) > 0, image.affine


def _subject_labels(n: int) -> list[str]:
    width = max(2, len(str(n)))
    return [f"sub-{i:0{width}d}" for i in range(1, n + 1)]


def start(seed: int, n: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray, list[str]]:
    """What every volume demo begins with: its only random generator, the grid's mask and affine, n subject labels."""
    mask, affine = _grid()
    return np.random.default_rng(seed), mask, affine, _subject_labels(n)


# --------------------------------------------------------------------------------------------
# localizer: one-sample, two-sample and covariate effects on first-level contrast maps

LOCALIZER_SUBJECTS = 30
LOCALIZER_MEAN_BLOBS = [
    Blob("left posterior superior temporal", (-54.0, -42.0, 6.0), 8.0, 2.0),
    Blob("left inferior frontal", (-48.0, 18.0, 12.0), 7.0, 1.6),
    Blob("right superior temporal", (54.0, -30.0, 3.0), 6.0, 1.0),
    Blob("left fusiform (small, weak)", (-42.0, -57.0, -15.0), 4.5, 0.8),
    Blob("supplementary motor area (weak)", (0.0, 6.0, 60.0), 5.0, 0.6),
    Blob("posterior cingulate (deactivation)", (0.0, -54.0, 30.0), 8.0, -1.0),
]
# Patient minus control, in a region without a mean effect.
LOCALIZER_GROUP_BLOBS = [Blob("right inferior frontal", (48.0, 24.0, -3.0), 7.0, 1.6)]
# Effect per point of fluency (about 0.8 per standard deviation of 10 points).
LOCALIZER_FLUENCY_BLOBS = [Blob("left angular gyrus", (-45.0, -66.0, 30.0), 7.0, 0.08)]
LOCALIZER_FLUENCY_MEAN = 40.0
LOCALIZER_FLUENCY_SD = 10.0
LOCALIZER_FWHM_MM = 9.0
LOCALIZER_BETWEEN_SD = 0.8  # between-subject (random-effects) noise
LOCALIZER_WITHIN_SD = 0.5  # first-level estimation noise, matched by the variance maps
LOCALIZER_GAIN_SD = 0.2  # subject-to-subject variation of the activation amplitude


def generate_localizer(out_dir: Path, seed: int) -> None:
    """Language-localizer contrast maps of 30 subjects with variance maps and three planted effects.

    effect_i = gain_i * mean + (patient_i - 1/2) * group + (fluency_i - 40) * fluency
               + between-subject noise + first-level noise (variance given by variance_i)

    Parameters
    ----------
    out_dir : Path
        Empty or new folder to write into.
    seed : int
        Seed of the only random generator used.
    """
    n = LOCALIZER_SUBJECTS
    rng, mask, affine, subjects = start(seed, n)

    group = np.array(["control"] * (n // 2) + ["patient"] * (n - n // 2))[rng.permutation(n)]
    sex = rng.choice(np.array(["F", "M"]), size=n)
    age = np.round(rng.uniform(19.0, 45.0, size=n), 1)
    fluency = np.round(rng.normal(LOCALIZER_FLUENCY_MEAN, LOCALIZER_FLUENCY_SD, size=n), 1)
    gain = 1.0 + LOCALIZER_GAIN_SD * rng.standard_normal(n)
    noise_scale = np.exp(0.25 * rng.standard_normal(n))  # some subjects are noisier than others

    truth_mean = blob_map(LOCALIZER_MEAN_BLOBS, mask, affine)
    truth_group = blob_map(LOCALIZER_GROUP_BLOBS, mask, affine)
    truth_fluency = blob_map(LOCALIZER_FLUENCY_BLOBS, mask, affine)
    # First-level variance varies smoothly over the brain (e.g. lower SNR near air-tissue borders).
    variance_pattern = 1.0 + 0.3 * np.tanh(smooth_noise(rng, mask.shape, affine, 30.0))

    rows = []
    for i, subject in enumerate(subjects):
        signal = (
            gain[i] * truth_mean
            + (float(group[i] == "patient") - 0.5) * truth_group
            + (fluency[i] - LOCALIZER_FLUENCY_MEAN) * truth_fluency
        )
        variance = (LOCALIZER_WITHIN_SD * noise_scale[i]) ** 2 * variance_pattern
        between = LOCALIZER_BETWEEN_SD * smooth_noise(rng, mask.shape, affine, LOCALIZER_FWHM_MM)
        within = np.sqrt(variance) * smooth_noise(rng, mask.shape, affine, LOCALIZER_FWHM_MM)
        effect = np.where(mask, signal + between + within, 0.0)
        stem = f"{subject}/{subject}_task-localizer_contrast-language"
        effect_path = f"{stem}_stat-effect_statmap.nii.gz"
        variance_path = f"{stem}_stat-variance_statmap.nii.gz"
        save_map(quantize(effect, EFFECT_STEP_EXPONENT), affine, out_dir / effect_path)
        variance = np.where(mask, variance, 0.0)
        save_map(quantize(variance, VARIANCE_STEP_EXPONENT), affine, out_dir / variance_path)
        rows.append(
            {
                "subject": subject,
                "path": effect_path,
                "variance_path": variance_path,
                "age": age[i],
                "sex": sex[i],
                "group": group[i],
                "fluency": fluency[i],
            }
        )

    table = pd.DataFrame(rows)
    save_table(table, out_dir / TABLE_NAME)
    save_table(table[["subject", "age", "sex", "group", "fluency"]], out_dir / PARTICIPANTS_NAME)
    save_map(truth_mean, affine, out_dir / "truth_mean.nii.gz")
    save_map(truth_group, affine, out_dir / "truth_group.nii.gz")
    save_map(truth_fluency, affine, out_dir / "truth_fluency.nii.gz")
    save_description(
        out_dir / DESCRIPTION_NAME,
        "localizer",
        DEMO_DATASETS["localizer"].description,
        seed,
        {
            "Files": "sub-<label>/sub-<label>_task-localizer_contrast-language_stat-<effect|variance>"
            "_statmap.nii.gz",
            "SmoothnessFWHMmm": LOCALIZER_FWHM_MM,
            "PlantedEffects": {
                "truth_mean.nii.gz": {
                    "meaning": "group mean effect (intercept)",
                    "blobs": [b.as_dict() for b in LOCALIZER_MEAN_BLOBS],
                },
                "truth_group.nii.gz": {
                    "meaning": "patient minus control",
                    "blobs": [b.as_dict() for b in LOCALIZER_GROUP_BLOBS],
                },
                "truth_fluency.nii.gz": {
                    "meaning": "effect per point of fluency",
                    "blobs": [b.as_dict() for b in LOCALIZER_FLUENCY_BLOBS],
                },
            },
            "NoPlantedEffect": ["age", "sex"],
        },
    )


# --------------------------------------------------------------------------------------------
# paired: two conditions per subject; large shared subject offsets make pairing matter

PAIRED_SUBJECTS = 16
PAIRED_CONDITIONS = {"a": "horizontal", "b": "vertical"}  # condition -> checkerboard meridian
PAIRED_COMMON_BLOBS = [
    Blob("left occipital pole", (-15.0, -96.0, 3.0), 9.0, 2.0),
    Blob("right occipital pole", (15.0, -96.0, 3.0), 9.0, 2.0),
]
# Condition b minus condition a.
PAIRED_DIFFERENCE_BLOBS = [
    Blob("left calcarine", (-9.0, -87.0, 3.0), 7.0, 1.7),
    Blob("right lingual", (12.0, -75.0, -6.0), 6.0, 1.4),
    Blob("right cuneus", (9.0, -81.0, 27.0), 6.0, -1.3),
]
PAIRED_SUBJECT_SD = 2.0  # spatially smooth subject offsets shared by both conditions
PAIRED_SUBJECT_FWHM_MM = 15.0
PAIRED_CONDITION_SD = 0.6  # independent noise of each condition map
PAIRED_FWHM_MM = 9.0


def generate_paired(out_dir: Path, seed: int) -> None:
    """Two condition maps per subject: map = common + offset_subject +/- difference / 2 + noise.

    Parameters
    ----------
    out_dir : Path
        Empty or new folder to write into.
    seed : int
        Seed of the only random generator used.
    """
    rng, mask, affine, subjects = start(seed, PAIRED_SUBJECTS)
    truth_mean = blob_map(PAIRED_COMMON_BLOBS, mask, affine)
    truth_condition = blob_map(PAIRED_DIFFERENCE_BLOBS, mask, affine)

    rows = []
    for subject in subjects:
        offset = PAIRED_SUBJECT_SD * smooth_noise(rng, mask.shape, affine, PAIRED_SUBJECT_FWHM_MM)
        gain = 1.0 + 0.2 * rng.standard_normal()
        for condition, stimulus in PAIRED_CONDITIONS.items():
            sign = 0.5 if condition == "b" else -0.5
            noise = PAIRED_CONDITION_SD * smooth_noise(rng, mask.shape, affine, PAIRED_FWHM_MM)
            effect = np.where(mask, gain * truth_mean + offset + sign * truth_condition + noise, 0.0)
            path = f"{subject}/{subject}_task-checkerboard_contrast-{condition}_stat-effect_statmap.nii.gz"
            save_map(quantize(effect, EFFECT_STEP_EXPONENT), affine, out_dir / path)
            rows.append({"subject": subject, "condition": condition, "stimulus": stimulus, "path": path})

    table = pd.DataFrame(rows)
    save_table(table, out_dir / TABLE_NAME)
    save_table(pd.DataFrame({"subject": subjects}), out_dir / PARTICIPANTS_NAME)
    save_map(truth_mean, affine, out_dir / "truth_mean.nii.gz")
    save_map(truth_condition, affine, out_dir / "truth_condition.nii.gz")
    save_description(
        out_dir / DESCRIPTION_NAME,
        "paired",
        DEMO_DATASETS["paired"].description,
        seed,
        {
            "Files": "sub-<label>/sub-<label>_task-checkerboard_contrast-<a|b>_stat-effect_statmap.nii.gz",
            "Conditions": PAIRED_CONDITIONS,
            "SubjectOffsetSD": PAIRED_SUBJECT_SD,
            "ConditionNoiseSD": PAIRED_CONDITION_SD,
            "PlantedEffects": {
                "truth_mean.nii.gz": {
                    "meaning": "visual response common to both conditions",
                    "blobs": [b.as_dict() for b in PAIRED_COMMON_BLOBS],
                },
                "truth_condition.nii.gz": {
                    "meaning": "condition b minus condition a (C(condition)[T.b])",
                    "blobs": [b.as_dict() for b in PAIRED_DIFFERENCE_BLOBS],
                },
            },
        },
    )


# --------------------------------------------------------------------------------------------
# vbm and mixed live in their own modules (they use the file helpers above)


def _generate_vbm(out_dir: Path, seed: int) -> None:
    from runner.demo.vbm import generate_vbm

    generate_vbm(out_dir, seed)


def _generate_mixed(out_dir: Path, seed: int) -> None:
    from runner.demo.mixed_effects import generate_mixed

    generate_mixed(out_dir, seed)


def _generate_diffusion(out_dir: Path, seed: int) -> None:
    from runner.demo.diffusion import generate_diffusion

    generate_diffusion(out_dir, seed)


# --------------------------------------------------------------------------------------------
# Registry and cache


@dataclass(frozen=True)
class DemoDataset:
    """A registered demo dataset: bump ``version`` whenever its generation changes."""

    name: str
    version: int
    seed: int
    description: str
    generate: Callable[[Path, int], None]

    @property
    def folder_name(self) -> str:
        """Cache sub-folder, ``<name>-v<version>``."""
        return f"{self.name}-v{self.version}"


DEMO_DATASETS: dict[str, DemoDataset] = {
    spec.name: spec
    for spec in (
        DemoDataset(
            "localizer",
            2,
            20240601,
            "30 subjects' language-localizer effect and variance maps; planted mean blobs, "
            "a patient-control difference and a fluency effect",
            generate_localizer,
        ),
        DemoDataset(
            "paired",
            3,
            20240602,
            "16 subjects x 2 checkerboard conditions (a/b) with large subject offsets; "
            "a paired test finds the planted condition difference that an unpaired test misses",
            generate_paired,
        ),
        DemoDataset(
            "surface",
            2,
            20240604,
            "30 subjects' contrast maps on fsaverage5 (both hemispheres, GIFTI); planted mean bumps and a "
            "patient-control difference",
            generate_surface,
        ),
        DemoDataset(
            "vbm",
            2,
            20240603,
            "100 grey-matter maps (age 20-90) with age-related atrophy, a sex difference and TIV scaling",
            _generate_vbm,
        ),
        DemoDataset(
            "mixed",
            2,
            20240604,
            "24 subjects' effect maps with first-level variance maps spanning two orders of magnitude; a planted "
            "group mean that mixed effects (model=mfx) finds with more power than OLS",
            _generate_mixed,
        ),
        DemoDataset(
            "diffusion",
            1,
            20240605,
            "30 adults' FA and MD maps (two modalities, columns path and md_path) with an ageing effect shared by "
            "both in one region and in MD alone in another",
            _generate_diffusion,
        ),
    )
}


def demo_root(root: Path | str | None = None) -> Path:
    """Cache folder for the demo datasets: ``root``, ``$RUNNER_DEMO_DIR`` or the user cache."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "second-level-runner" / "demo"


def demo_dataset(name: str) -> DemoDataset:
    """The registered dataset called ``name``; an unknown name is a user error."""
    if name not in DEMO_DATASETS:
        hint = did_you_mean(name, DEMO_DATASETS)
        if not hint.startswith("valid names"):
            hint += " (valid names: " + ", ".join(repr(n) for n in DEMO_DATASETS) + ")"
        raise RunnerError(f"unknown demo dataset {name!r}; {hint}")
    return DEMO_DATASETS[name]


def ensure_demo(name: str, root: Path | str | None = None) -> Path:
    """Path of the demo dataset's ``table.tsv``, generating the dataset first if it is not cached.

    Generation writes into a temporary sibling folder renamed into place at the end, so a reader
    never sees a partial dataset. Generation holds a lock, so a second process waits and then uses the
    first one's dataset; where locks are unavailable and two processes race, the loser discards its copy
    and uses the winner's (both are identical anyway).

    Parameters
    ----------
    name : str
        One of ``DEMO_DATASETS`` ("localizer", "paired", "vbm", "mixed", "surface").
    root : Path or str, optional
        Cache root; default ``$RUNNER_DEMO_DIR`` or ``$XDG_CACHE_HOME/second-level-runner/demo``.

    Returns
    -------
    Path
        ``<root>/<name>-v<version>/table.tsv`` (paths inside it are relative to its folder).
    """
    spec = demo_dataset(name)
    folder = demo_root(root) / spec.folder_name
    table = folder / TABLE_NAME
    if table.is_file():
        return table
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunnerError(f"cannot create the demo cache folder {folder.parent}: {error}") from error
    with _generation_lock(folder.parent / f".{spec.folder_name}.lock"):
        if table.is_file():  # made by the process that held the lock before us
            return table
        _generate_into(spec, folder)
    return table


@contextmanager
def _generation_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (parallel sweep jobs and test workers wait for one generator instead of
    each generating the same dataset); without ``fcntl`` or a lockable file, no lock (the rename keeps it safe)."""
    try:
        import fcntl

        handle = open(path, "a")  # noqa: SIM115 -- held for the duration of the block
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()


def _generate_into(spec: DemoDataset, folder: Path) -> None:
    """Generate into a temporary sibling of ``folder`` and rename it into place."""
    name, table = spec.name, folder / TABLE_NAME
    try:
        # A unique sibling (not tempfile.mkdtemp, whose 0700 mode would make a shared cache private).
        scratch = folder.parent / f".{spec.folder_name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        scratch.mkdir()
    except OSError as error:
        raise RunnerError(f"cannot create the demo cache folder {folder.parent}: {error}") from error
    try:
        spec.generate(scratch, spec.seed)
        try:
            os.rename(scratch, folder)
        except OSError:
            if not table.is_file():  # not a lost race: something else is in the way
                raise RunnerError(
                    f"cannot install demo dataset {name!r} at {folder}: the folder exists without "
                    f"{TABLE_NAME}; delete it and retry"
                ) from None
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
