"""Parity with nilearn (dev-only reference): the same files, the same mask, the same design -> the same maps.

Each study is written to a temporary folder as float32 NIfTI maps (smooth noise plus blobs), a binary mask and a
table; the runner is run end to end through the real Hydra config (``run_analysis``), and nilearn's
``SecondLevelModel`` is fitted on the same files with our written ``design_matrix.tsv`` and the weights of our
``contrasts.tsv``. Our maps are stored as float32, so "equal" means within 1e-5 relative, with an absolute
tolerance of 1e-6 x the map's largest value for values near zero (measured: at most ~1e-7 x the largest value,
i.e. float32 rounding, also with smoothing, where nilearn filters float32 inputs in float32).

What is compared:
- effect, variance, t, z, p (t contrasts) and F, z, p (F contrasts) for one-sample, two-sample with a covariate,
  paired designs; with 6 mm smoothing on isotropic and anisotropic (2 x 3 x 4 mm) voxels;
- inputs on another grid than the mask: with inputs that nilearn resampled *linearly* the maps agree to 1e-5 (the
  runner interpolates trilinearly); nilearn's own ``SecondLevelModel`` resamples with cubic splines
  ('continuous') and clips, so there only a loose agreement holds (z maps correlated at 0.997, |dz| 0.05 in the
  median, 0.36 at most on the synthetic study);
- ``threshold_stats_img`` thresholds and surviving voxels, ``get_clusters_table`` peaks, sub-peaks and sizes;
- ``make_second_level_design_matrix`` against our formula design;
- statsmodels OLS on a few voxels of the written maps (t, one-sided p, F);
- an extreme statistic (p far below 1e-308) still gives the exact, finite z (checked with mpmath).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, stats

from conftest import run_analysis
from runner.config import RunSettings

nilearn = pytest.importorskip("nilearn")
from nilearn.glm import threshold_stats_img  # noqa: E402
from nilearn.glm.second_level import SecondLevelModel, make_second_level_design_matrix  # noqa: E402
from nilearn.image import resample_img  # noqa: E402
from nilearn.reporting import get_clusters_table  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

RTOL = 1e-5  # our maps are written as float32 (relative rounding 6e-8); nilearn returns float64
ATOL_FRACTION = 1e-6  # absolute tolerance as a fraction of the map's largest |value| (values near zero)
THRESHOLD_ATOL = 1e-6
SHAPE = (20, 24, 20)
T_MAPS = {"effect": "effect_size", "variance": "effect_variance", "t": "stat", "z": "z_score", "p": "p_value"}
F_MAPS = {"F": "stat", "z": "z_score", "p": "p_value"}
# Every run loads its inputs for real (a data-cache hit would skip the decoding, resampling and smoothing compared
# here) and writes nothing outside tmp_path.
NO_CACHE = ["cache=false"] if "cache" in {f.name for f in fields(RunSettings)} else []


# -- synthetic studies -------------------------------------------------------------------------------------------
def grid_affine(voxel_mm, shape, shift_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Diagonal RAS affine whose grid is centred on (0, 0, 0) mm (plus ``shift_mm``)."""
    voxel_mm = np.asarray(voxel_mm, dtype=float)
    affine = np.diag([*voxel_mm, 1.0])
    affine[:3, 3] = -voxel_mm * (np.asarray(shape) - 1) / 2 + np.asarray(shift_mm)
    return affine


def world(shape, affine) -> np.ndarray:
    """mm coordinates of every voxel, shape (3, *shape)."""
    ijk = np.indices(shape).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape((3, *shape))


def gaussian_blob(xyz, centre_mm, sigma_mm) -> np.ndarray:
    d2 = sum((xyz[a] - centre_mm[a]) ** 2 for a in range(3))
    return np.exp(-d2 / (2 * sigma_mm**2))


def smooth_noise(rng, shape, sigma_vox=1.2) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_vox)
    return noise / noise.std()


@dataclass(frozen=True)
class Study:
    root: Path
    table: Path
    mask: Path
    frame: pd.DataFrame

    @property
    def paths(self) -> list[str]:
        return [str(self.root / p) for p in self.frame["path"]]

    @property
    def mask_array(self) -> np.ndarray:
        return np.asarray(nib.load(self.mask).dataobj) > 0


def write_study(root: Path, *, n_subjects=16, mask_voxel_mm=(3.0, 3.0, 3.0), mask_shape=SHAPE,
                input_voxel_mm=None, input_shape=None, input_shift_mm=(0.0, 0.0, 0.0), paired=False,
                seed=0) -> Study:
    """Maps = smooth noise + a positive blob (stronger in patients) + a negative blob growing with age.

    The mask is an ellipsoid on the mask grid; inputs are on the same grid unless ``input_*`` is given.
    ``paired``: two maps per subject (conditions a, b; b adds the positive blob), sharing a subject field.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mask_affine = grid_affine(mask_voxel_mm, mask_shape)
    unit = np.indices(mask_shape) / ((np.asarray(mask_shape) - 1) / 2)[:, None, None, None] - 1
    mask = (np.sum(unit**2, axis=0) <= 0.85).astype(np.uint8)
    nib.Nifti1Image(mask, mask_affine).to_filename(root / "mask.nii.gz")
    shape = tuple(input_shape or mask_shape)
    affine = grid_affine(input_voxel_mm or mask_voxel_mm, shape, input_shift_mm)
    xyz = world(shape, affine)
    extent = np.asarray(mask_voxel_mm) * (np.asarray(mask_shape) - 1) / 2
    positive = gaussian_blob(xyz, -0.35 * extent, 6.0)
    negative = gaussian_blob(xyz, 0.4 * extent * np.array([1, 1, -1]), 5.0)
    rows = []
    for s in range(n_subjects):
        age = float(np.round(rng.uniform(20, 60), 4))
        sex = "MF"[s % 2]
        group = ("control", "patient")[(s // 2) % 2]
        subject_field = 0.7 * smooth_noise(rng, shape)
        for condition in ("a", "b") if paired else (None,):
            volume = (smooth_noise(rng, shape) + (subject_field if paired else 0.0)
                      + (1.3 + 4.0 * (group == "patient")) * positive
                      - (0.8 + 0.1 * (age - 40)) * negative)
            if condition == "b":
                volume = volume + 1.1 * positive
            name = f"sub-{s:02d}" + (f"_cond-{condition}" if condition else "") + ".nii.gz"
            nib.Nifti1Image(volume.astype(np.float32), affine).to_filename(root / name)
            rows.append({"path": name, "subject": f"s{s:02d}", "age": age, "sex": sex, "male": float(sex == "M"),
                         "group": group, **({"condition": condition} if condition else {})})
    frame = pd.DataFrame(rows)
    frame.to_csv(root / "table.tsv", sep="\t", index=False)
    return Study(root, root / "table.tsv", root / "mask.nii.gz", frame)


def hydra_contrasts(specs: dict[str, object]) -> str:
    """``contrasts=[...]`` override: a string is a t contrast, a list of strings an F contrast."""
    items = []
    for name, expr in specs.items():
        if isinstance(expr, str):
            items.append(f'{{name:{name},expr:"{expr}"}}')
        else:
            rows = ",".join(f'"{e}"' for e in expr)
            items.append(f"{{name:{name},expr:[{rows}],type:F}}")
    return "contrasts=[" + ",".join(items) + "]"


@dataclass(frozen=True)
class Run:
    study: Study
    run_dir: Path
    smoothing: float | None
    nilearn_inputs: tuple[str, ...]

    @property
    def design_matrix(self) -> pd.DataFrame:
        return pd.read_csv(self.run_dir / "design_matrix.tsv", sep="\t")

    def contrast_weights(self, name: str) -> tuple[np.ndarray, str]:
        weights = pd.read_csv(self.run_dir / "contrasts.tsv", sep="\t")
        rows = weights[weights["contrast"] == name].sort_values("row")
        return rows[list(self.design_matrix.columns)].to_numpy(dtype=float), str(rows["type"].iloc[0])

    def ours(self, contrast: str, stat: str, correction: str | None = None) -> nib.Nifti1Image:
        suffix = f"_desc-{correction}" if correction else ""
        return nib.load(self.run_dir / f"contrast-{contrast}_stat-{stat}{suffix}_statmap.nii.gz")

    def manifest_entry(self, contrast: str, correction: str) -> dict:
        manifest = json.loads((self.run_dir / "manifest.json").read_text())
        return next(e for e in manifest["outputs"]
                    if e["kind"] == "map" and e.get("contrast") == contrast and e.get("correction") == correction)

    def nilearn_model(self) -> SecondLevelModel:
        model = SecondLevelModel(mask_img=str(self.study.mask), smoothing_fwhm=self.smoothing)
        return model.fit(list(self.nilearn_inputs), design_matrix=self.design_matrix)

    def nilearn(self, contrast: str, model: SecondLevelModel | None = None) -> dict[str, nib.Nifti1Image]:
        weights, stat_type = self.contrast_weights(contrast)
        model = model or self.nilearn_model()
        vector = weights[0] if stat_type == "t" else weights
        return model.compute_contrast(vector, second_level_stat_type=stat_type, output_type="all")


def run_ours(run_dir: Path, study: Study, formula: str, contrasts: dict[str, object], *extra: str,
             smoothing: float | None = None, nilearn_inputs: list[str] | None = None) -> Run:
    overrides = [f"data.table={study.table}", f"data.mask={study.mask}", "data.demo=null",
                 f"design.formula='{formula}'", hydra_contrasts(contrasts), "correction=[fpr,fdr,bonferroni]",
                 "report=false", "progress=false", *NO_CACHE, *extra]
    if smoothing:
        overrides.append(f"data.smoothing_fwhm={smoothing}")
    run_analysis(run_dir, overrides)
    return Run(study, run_dir, smoothing, tuple(nilearn_inputs or study.paths))


# -- comparison helpers ------------------------------------------------------------------------------------------
def on_mask_grid(image: nib.Nifti1Image, mask_image: nib.Nifti1Image) -> np.ndarray:
    """``image`` on the mask's grid; nilearn returns resampled results on the mask cropped to its bounding box,
    which is the same grid shifted by whole voxels, so nearest-neighbour placement is exact."""
    if image.shape == mask_image.shape and np.allclose(image.affine, mask_image.affine):
        return np.asarray(image.get_fdata())
    offset = np.linalg.solve(mask_image.affine, image.affine)
    assert np.allclose(offset[:3, :3], np.eye(3)) and np.allclose(offset[:3, 3], np.round(offset[:3, 3]))
    return np.asarray(resample_img(image, target_affine=mask_image.affine, target_shape=mask_image.shape,
                                   interpolation="nearest", force_resample=True, copy_header=True).get_fdata())


def assert_maps_match(ours: nib.Nifti1Image, theirs: nib.Nifti1Image, mask_path: Path, what: str,
                      rtol: float = RTOL, atol_fraction: float = ATOL_FRACTION) -> None:
    mask_image = nib.load(mask_path)
    mask = np.asarray(mask_image.dataobj) > 0
    assert ours.shape == mask.shape and np.allclose(ours.affine, mask_image.affine), what
    ours_values = np.asarray(ours.get_fdata())
    assert np.all(ours_values[~mask] == 0), f"{what}: nonzero values outside the mask"
    reference = on_mask_grid(theirs, mask_image)[mask]
    assert np.all(np.isfinite(reference)), what
    atol = atol_fraction * float(np.max(np.abs(reference)))
    np.testing.assert_allclose(ours_values[mask], reference, rtol=rtol, atol=atol, err_msg=what)


def assert_contrast_matches(run: Run, contrast: str, nilearn_maps: dict[str, nib.Nifti1Image], **tolerance) -> None:
    _, stat_type = run.contrast_weights(contrast)
    for ours_stat, their_key in (T_MAPS if stat_type == "t" else F_MAPS).items():
        assert_maps_match(run.ours(contrast, ours_stat), nilearn_maps[their_key], run.study.mask,
                          f"{contrast} {ours_stat}", **tolerance)


# -- studies run once per module ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_sample(tmp_path_factory) -> tuple[Run, dict]:
    study = write_study(tmp_path_factory.mktemp("one-sample"), n_subjects=16, seed=1)
    run = run_ours(study.root / "run", study, "1", {"mean": "Intercept"}, "correction.fpr.cluster_threshold=5")
    return run, {"mean": run.nilearn("mean")}


@pytest.fixture(scope="module")
def two_sample(tmp_path_factory) -> tuple[Run, dict]:
    study = write_study(tmp_path_factory.mktemp("two-sample"), n_subjects=18, seed=2)
    run = run_ours(study.root / "run", study, "C(group) + age",
                   {"groupDiff": "C(group)[T.patient]", "age": "age",
                    "groupOrAge": ["C(group)[T.patient]", "age"]},
                   "correction.fdr.two_sided=false", "correction.bonferroni.cluster_threshold=3")
    model = run.nilearn_model()
    return run, {c: run.nilearn(c, model) for c in ("groupDiff", "age", "groupOrAge")}


# -- maps ----------------------------------------------------------------------------------------------------------
def test_one_sample_maps_match_nilearn(one_sample):
    run, nilearn_maps = one_sample
    weights, stat_type = run.contrast_weights("mean")
    assert stat_type == "t" and weights.tolist() == [[1.0]]
    assert_contrast_matches(run, "mean", nilearn_maps["mean"])


def test_two_sample_with_covariate_maps_match_nilearn(two_sample):
    run, nilearn_maps = two_sample
    assert list(run.design_matrix.columns) == ["Intercept", "C(group)[T.patient]", "age"]
    np.testing.assert_array_equal(run.design_matrix["age"], run.study.frame["age"])
    for contrast in ("groupDiff", "age"):
        assert_contrast_matches(run, contrast, nilearn_maps[contrast])


def test_f_contrast_matches_nilearn(two_sample):
    run, nilearn_maps = two_sample
    weights, stat_type = run.contrast_weights("groupOrAge")
    assert stat_type == "F" and weights.tolist() == [[0, 1, 0], [0, 0, 1]]
    assert_contrast_matches(run, "groupOrAge", nilearn_maps["groupOrAge"])


def test_paired_maps_match_nilearn(tmp_path):
    study = write_study(tmp_path / "paired", n_subjects=10, paired=True, seed=3)
    run = run_ours(tmp_path / "run", study, "C(condition) + C(subject)", {"bMinusA": "C(condition)[T.b]"})
    assert run.design_matrix.shape == (20, 11)
    assert_contrast_matches(run, "bMinusA", run.nilearn("bMinusA"))


@pytest.mark.parametrize("voxel_mm", [(3.0, 3.0, 3.0), (2.0, 3.0, 4.0)], ids=["iso3mm", "aniso2x3x4mm"])
def test_smoothed_maps_match_nilearn(tmp_path, voxel_mm):
    """6 mm FWHM: the same separable Gaussian kernel per axis (sigma in voxels from the affine's column norms).

    nilearn smooths float32 inputs in float32, we smooth in float64: the differences stay at float32 rounding.
    """
    shape = (24, 20, 14) if voxel_mm != (3.0, 3.0, 3.0) else SHAPE
    study = write_study(tmp_path / "study", n_subjects=12, mask_voxel_mm=voxel_mm, mask_shape=shape, seed=4)
    run = run_ours(tmp_path / "run", study, "age", {"mean": "Intercept", "age": "age"}, smoothing=6.0)
    model = run.nilearn_model()
    for contrast in ("mean", "age"):
        assert_contrast_matches(run, contrast, run.nilearn(contrast, model))


@pytest.fixture(scope="module")
def off_grid(tmp_path_factory) -> Study:
    """Inputs on a 2 mm grid shifted by 1 mm; the mask on the 3 mm grid."""
    return write_study(tmp_path_factory.mktemp("off-grid"), n_subjects=12, input_voxel_mm=(2.0, 2.0, 2.0),
                       input_shape=(31, 37, 31), input_shift_mm=(1.0, -1.0, 1.0), seed=5)


def test_resampled_inputs_match_nilearn_linear_resampling(off_grid, tmp_path):
    """The runner resamples off-grid inputs trilinearly (0 outside the source). Feeding nilearn the inputs that
    ``nilearn.image.resample_img(interpolation='linear')`` puts on the mask grid gives the same maps to 1e-5."""
    mask_image = nib.load(off_grid.mask)
    linear = []
    for path in off_grid.paths:
        image = resample_img(nib.load(path), target_affine=mask_image.affine, target_shape=mask_image.shape,
                             interpolation="linear", force_resample=True, copy_header=True)
        target = tmp_path / Path(path).name
        image.to_filename(target)
        linear.append(str(target))
    run = run_ours(tmp_path / "run", off_grid, "age", {"mean": "Intercept", "age": "age"}, nilearn_inputs=linear)
    assert any("resampled 12 of 12" in n for n in json.loads((run.run_dir / "manifest.json").read_text())["notes"])
    model = run.nilearn_model()
    for contrast in ("mean", "age"):
        assert_contrast_matches(run, contrast, run.nilearn(contrast, model))


def test_resampled_inputs_agree_loosely_with_nilearn_continuous_resampling(off_grid, tmp_path):
    """nilearn's SecondLevelModel resamples with cubic B-splines ('continuous') and clips to the input range; the
    runner uses trilinear interpolation, so the maps cannot agree to 1e-5 (trilinear interpolation also smooths the
    noise a little more). On these smooth inputs (noise FWHM about 6 mm on a 2 mm grid) we measured z maps correlated
    at 0.997, differing by 0.05 in the median and 0.36 at most; the bounds below leave a margin over that."""
    run = run_ours(tmp_path / "run", off_grid, "age", {"mean": "Intercept", "age": "age"})
    mask_image = nib.load(off_grid.mask)
    mask = np.asarray(mask_image.dataobj) > 0
    model = run.nilearn_model()
    for contrast in ("mean", "age"):
        theirs = on_mask_grid(run.nilearn(contrast, model)["z_score"], mask_image)[mask]
        ours = run.ours(contrast, "z").get_fdata()[mask]
        difference = np.abs(ours - theirs)
        assert np.corrcoef(ours, theirs)[0, 1] > 0.99, contrast
        assert np.median(difference) < 0.1 and difference.max() < 0.5, (contrast, np.median(difference),
                                                                          difference.max())


# -- thresholds and cluster tables ---------------------------------------------------------------------------------
THRESHOLD_CASES = [
    ("one_sample", "mean", "fpr"), ("one_sample", "mean", "fdr"), ("one_sample", "mean", "bonferroni"),
    ("two_sample", "groupDiff", "fpr"), ("two_sample", "groupDiff", "fdr"), ("two_sample", "groupDiff", "bonferroni"),
    ("two_sample", "age", "fpr"),  # negative clusters only
    ("two_sample", "age", "bonferroni"),  # a cluster of exactly cluster_threshold (3) voxels survives
    ("two_sample", "groupOrAge", "fdr"), ("two_sample", "groupOrAge", "bonferroni"),  # F: one-sided
]


@pytest.mark.parametrize("study_name, contrast, method", THRESHOLD_CASES)
def test_thresholds_and_cluster_tables_match_nilearn(request, study_name, contrast, method):
    run, nilearn_maps = request.getfixturevalue(study_name)
    entry = run.manifest_entry(contrast, method)
    two_sided, cluster_threshold = bool(entry["two_sided"]), int(entry["cluster_threshold"])
    their_z = nilearn_maps[contrast]["z_score"]
    thresholded, their_threshold = threshold_stats_img(
        their_z, mask_img=str(run.study.mask), alpha=entry["alpha"], height_control=method,
        cluster_threshold=cluster_threshold, two_sided=two_sided)
    assert np.isfinite(their_threshold), "the synthetic blob should survive every correction"
    assert entry["threshold"] == pytest.approx(float(their_threshold), abs=THRESHOLD_ATOL)

    ours = run.ours(contrast, "z", method).get_fdata()
    theirs = thresholded.get_fdata()
    np.testing.assert_array_equal(ours != 0, theirs != 0)
    assert np.count_nonzero(ours) > 0
    np.testing.assert_allclose(ours[ours != 0], theirs[theirs != 0], rtol=RTOL)

    their_table = get_clusters_table(their_z, stat_threshold=their_threshold, cluster_threshold=cluster_threshold,
                                     two_sided=two_sided)
    our_table = pd.read_csv(run.run_dir / f"contrast-{contrast}_desc-{method}_clusters.tsv", sep="\t",
                            dtype={"cluster_id": str}, na_values=["n/a"], keep_default_na=False)
    assert len(our_table) == len(their_table) > 0
    assert our_table["cluster_id"].tolist() == their_table["Cluster ID"].astype(str).tolist()
    np.testing.assert_allclose(our_table[["x", "y", "z"]].to_numpy(float),
                               their_table[["X", "Y", "Z"]].to_numpy(float), atol=1e-6)
    np.testing.assert_allclose(our_table["peak_stat"], their_table["Peak Stat"].astype(float), rtol=RTOL)
    peaks = our_table["size_mm3"].notna().to_numpy()
    assert peaks.tolist() == (their_table["Cluster Size (mm3)"] != "").tolist()
    np.testing.assert_array_equal(our_table.loc[peaks, "size_mm3"].astype(int),
                                  their_table.loc[peaks, "Cluster Size (mm3)"].astype(int))


# -- design matrix ---------------------------------------------------------------------------------------------------
def test_design_matrix_matches_make_second_level_design_matrix(two_sample, tmp_path):
    """subject_label + covariates: nilearn's columns are the covariates then ``intercept``; ours are patsy's
    ``Intercept`` then the covariates; same numbers, and the same maps when nilearn fits its own design."""
    study = two_sample[0].study
    run = run_ours(tmp_path / "run", study, "age + male", {"age": "age"})
    confounds = study.frame[["subject", "age", "male"]].rename(columns={"subject": "subject_label"})
    theirs = make_second_level_design_matrix(study.frame["subject"].tolist(), confounds)
    assert list(theirs.columns) == ["age", "male", "intercept"]
    ours = run.design_matrix.rename(columns={"Intercept": "intercept"})[list(theirs.columns)]
    np.testing.assert_array_equal(ours.to_numpy(), theirs.to_numpy())
    model = SecondLevelModel(mask_img=str(study.mask)).fit(study.paths, design_matrix=theirs)
    assert_contrast_matches(run, "age", model.compute_contrast("age", output_type="all"))


# -- statsmodels on sampled voxels ---------------------------------------------------------------------------------
def test_written_maps_match_statsmodels_on_sampled_voxels(two_sample):
    import statsmodels.api as sm

    run, _ = two_sample
    mask = run.study.mask_array
    voxels = np.argwhere(mask)[np.random.default_rng(0).choice(int(mask.sum()), 6, replace=False)]
    peak = np.unravel_index(np.argmax(np.abs(run.ours("groupDiff", "t").get_fdata())), mask.shape)
    voxels = np.vstack([voxels, peak])
    data = np.stack([np.asarray(nib.load(p).dataobj, dtype=np.float64) for p in run.study.paths])
    X = run.design_matrix.to_numpy(dtype=float)
    maps = {(c, s): run.ours(c, s).get_fdata() for c, s in
            [("groupDiff", "t"), ("groupDiff", "p"), ("age", "t"), ("age", "p"), ("groupOrAge", "F"),
             ("groupOrAge", "p")]}
    for i, j, k in voxels:
        fit = sm.OLS(data[:, i, j, k], X).fit()
        for contrast, column in (("groupDiff", 1), ("age", 2)):
            c = np.eye(3)[column]
            t = float(np.squeeze(fit.t_test(c).tvalue))
            assert maps[contrast, "t"][i, j, k] == pytest.approx(t, rel=RTOL)
            assert maps[contrast, "p"][i, j, k] == pytest.approx(stats.t.sf(t, fit.df_resid), rel=RTOL)
        f_test = fit.f_test(np.eye(3)[1:])
        assert maps["groupOrAge", "F"][i, j, k] == pytest.approx(float(np.squeeze(f_test.fvalue)), rel=RTOL)
        assert maps["groupOrAge", "p"][i, j, k] == pytest.approx(float(f_test.pvalue), rel=RTOL, abs=1e-30)


# -- extreme statistics ----------------------------------------------------------------------------------------------
def test_extreme_t_gives_finite_exact_z(tmp_path):
    """A voxel of huge effect and tiny noise: p ~ 1e-400 underflows float64 (nilearn clips p at 1e-300, z = 37.0),
    but our z is finite and exact (mpmath reference from the t statistic computed here)."""
    mpmath = pytest.importorskip("mpmath")
    rng = np.random.default_rng(6)
    shape, n = (6, 6, 6), 60
    affine = grid_affine((3.0, 3.0, 3.0), shape)
    nib.Nifti1Image(np.ones(shape, np.uint8), affine).to_filename(tmp_path / "mask.nii.gz")
    extreme = {(3, 3, 3): 10.0, (2, 2, 2): -10.0}
    rows = []
    for s in range(n):
        volume = rng.standard_normal(shape)
        for voxel, value in extreme.items():
            volume[voxel] = value + 1e-5 * rng.standard_normal()
        nib.Nifti1Image(volume.astype(np.float32), affine).to_filename(tmp_path / f"sub-{s:02d}.nii.gz")
        rows.append({"path": f"sub-{s:02d}.nii.gz"})
    pd.DataFrame(rows).to_csv(tmp_path / "table.tsv", sep="\t", index=False)
    study = Study(tmp_path, tmp_path / "table.tsv", tmp_path / "mask.nii.gz", pd.DataFrame(rows))
    run = run_ours(tmp_path / "run", study, "1", {"mean": "Intercept"})
    t_map, z_map = run.ours("mean", "t").get_fdata(), run.ours("mean", "z").get_fdata()
    assert np.all(np.isfinite(z_map))
    data = np.stack([np.asarray(nib.load(p).dataobj, dtype=np.float64) for p in study.paths])
    mpmath.mp.dps = 40
    dof = n - 1
    for voxel, value in extreme.items():
        y = data[(slice(None), *voxel)]
        t = y.mean() / (y.std(ddof=1) / np.sqrt(n))
        assert t_map[voxel] == pytest.approx(t, rel=RTOL)
        # P(T > |t|) = I_x(dof/2, 1/2) / 2 with x = dof / (dof + t^2); z solves P(Z > z) = that.
        tail = mpmath.betainc(dof / 2, 0.5, 0, dof / (dof + mpmath.mpf(t) ** 2), regularized=True) / 2
        assert tail < mpmath.mpf("1e-308")
        z = mpmath.findroot(lambda q: mpmath.log(mpmath.ncdf(-q)) - mpmath.log(tail), 40)
        assert z_map[voxel] == pytest.approx(np.sign(value) * float(z), rel=1e-6)
        assert abs(z_map[voxel]) > 37.1  # beyond nilearn's clip
