"""Demo datasets: consistent files, identical regeneration, safe caching, and recoverable planted truth.

Expectations are checked with plain numpy/scipy statistics, independent of the runner's GLM.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from runner.demo import datasets
from runner.demo.datasets import DEMO_DATASETS, demo_root, ensure_demo
from runner.errors import RunnerError
from runner.resources import mni_mask

MASK_IMAGE = mni_mask(3)
MASK = np.asarray(MASK_IMAGE.dataobj) > 0


@pytest.fixture(scope="module")
def cache_root() -> Path:
    """The test session's demo cache (see conftest: never the user's), with every demo dataset in it."""
    root = demo_root()
    for name in DEMO_DATASETS:
        ensure_demo(name, root)
    return root


def load_maps(table_path: Path, column: str = "path") -> tuple[pd.DataFrame, np.ndarray]:
    """Table and its maps as a (n_maps, n_in_mask_voxels) float64 array."""
    table = pd.read_csv(table_path, sep="\t")
    maps = [np.asarray(nib.load(table_path.parent / p).dataobj, dtype=np.float64)[MASK] for p in table[column]]
    return table, np.stack(maps)


def load_truth(folder: Path, effect: str) -> np.ndarray:
    return np.asarray(nib.load(folder / f"truth_{effect}.nii.gz").dataobj, dtype=np.float64)[MASK]


def bh_threshold(p_values: np.ndarray, alpha: float = 0.05) -> float:
    """Benjamini-Hochberg step-up p threshold (0 when nothing survives)."""
    ordered = np.sort(p_values)
    below = np.nonzero(ordered <= alpha * np.arange(1, ordered.size + 1) / ordered.size)[0]
    return float(ordered[below[-1]]) if below.size else 0.0


def welch_t(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.mean(0) - b.mean(0)) / np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))


# ---------------------------------------------------------------------------------------------
# Files and tables


EXPECTED_COLUMNS = {
    "localizer": ["subject", "path", "variance_path", "age", "sex", "group", "fluency"],
    "paired": ["subject", "condition", "stimulus", "path"],
    "vbm": ["subject", "path", "age", "sex", "tiv"],
    "mixed": ["subject", "path", "variance_path", "n_trials"],
    "diffusion": ["subject", "path", "md_path", "age", "sex"],
}
EXPECTED_TRUTH = {
    "localizer": ["mean", "group", "fluency"],
    "paired": ["mean", "condition"],
    "vbm": ["age", "sex", "tiv"],
    "mixed": ["mean"],
    "diffusion": ["fa_age", "md_age"],
}


@pytest.mark.parametrize("name", [n for n in DEMO_DATASETS if n != "surface"])  # surface: test_surface.py
def test_every_file_is_on_the_mask_grid(cache_root: Path, name: str) -> None:
    table_path = ensure_demo(name, cache_root)
    assert table_path == cache_root / f"{name}-v{DEMO_DATASETS[name].version}" / "table.tsv"
    table = pd.read_csv(table_path, sep="\t")
    assert list(table.columns) == EXPECTED_COLUMNS[name]
    path_columns = [c for c in table.columns if c.endswith("path")]
    assert not any(Path(p).is_absolute() for c in path_columns for p in table[c])
    files = [table_path.parent / p for c in path_columns for p in table[c]]
    files += [table_path.parent / f"truth_{e}.nii.gz" for e in EXPECTED_TRUTH[name]]
    for file in files:
        image = nib.load(file)
        assert image.shape == MASK.shape
        np.testing.assert_allclose(image.affine, MASK_IMAGE.affine)
        assert image.get_data_dtype() == np.float32
        data = np.asarray(image.dataobj)
        assert np.isfinite(data).all()
        assert not data[~MASK].any(), f"{file.name} is not zero outside the brain mask"
    description = json.loads((table_path.parent / "dataset_description.json").read_text())
    assert description["DemoName"] == name and description["Seed"] == DEMO_DATASETS[name].seed
    assert set(description["PlantedEffects"]) == {f"truth_{e}.nii.gz" for e in EXPECTED_TRUTH[name]}
    assert not list(cache_root.glob(".*.tmp")), "a temporary generation folder was left behind"
    if name != "vbm":  # grey-matter density is legitimately 0 (clipped); effect maps are never exactly 0 in the brain
        _, maps = load_maps(table_path)
        assert (maps != 0).all(), "an exact 0 inside the brain punches a hole in every automatic mask"


def test_quantize_keeps_small_values_non_zero_with_their_sign() -> None:
    from runner.demo.simulate import quantize

    step = 2.0**-6
    values = np.array([0.0, 1e-9, -1e-9, 0.49 * step, -0.49 * step, 0.51 * step, 3.3 * step, -7.6 * step])
    expected = np.array([0.0, step, -step, step, -step, step, 3 * step, -8 * step], dtype=np.float32)
    np.testing.assert_array_equal(quantize(values, 6), expected)


def test_localizer_table_and_participants(cache_root: Path) -> None:
    table_path = ensure_demo("localizer", cache_root)
    table = pd.read_csv(table_path, sep="\t")
    assert len(table) == 30 and table.subject.is_unique and table.subject.iloc[0] == "sub-01"
    assert table.group.value_counts().to_dict() == {"control": 15, "patient": 15}
    assert set(table.sex) == {"F", "M"}
    assert table.age.dtype == float and table.fluency.dtype == float
    participants = pd.read_csv(table_path.parent / "participants.tsv", sep="\t")
    pd.testing.assert_frame_equal(participants, table[["subject", "age", "sex", "group", "fluency"]])
    # A glob finds the same effect maps as the table (BIDS-like names).
    found = table_path.parent.glob("sub-*/*_stat-effect_statmap.nii.gz")
    found = sorted(p.relative_to(table_path.parent).as_posix() for p in found)
    assert found == sorted(table.path)
    _, variances = load_maps(table_path, "variance_path")
    assert (variances > 0).all()


def test_diffusion_modalities_carry_the_planted_ageing_effects(cache_root: Path) -> None:
    """The age slope fitted voxel by voxel (least squares with an intercept and sex) follows the planted change per
    year in each modality: FA falls and MD rises in the shared region; FA does not change in the MD-only region."""
    table_path = ensure_demo("diffusion", cache_root)
    folder = table_path.parent
    table, fa = load_maps(table_path, "path")
    _, md = load_maps(table_path, "md_path")
    assert len(table) == 30 and 0.1 < fa.min() and fa.max() < 1 and 0.5 < md.min() and md.max() < 1.2
    X = np.column_stack([np.ones(len(table)), table.age - table.age.mean(), table.sex == "M"]).astype(float)
    for maps, effect in ((fa, "fa_age"), (md, "md_age")):
        slope = np.linalg.lstsq(X, maps, rcond=None)[0][1]
        truth = load_truth(folder, effect)
        planted = np.abs(truth) > 0.5 * np.abs(truth).max()
        assert np.corrcoef(slope[planted], truth[planted])[0, 1] > 0.3, effect
        assert np.sign(slope[planted].mean()) == np.sign(truth[planted].mean()), effect
        assert abs(slope[planted].mean() - truth[planted].mean()) < 0.35 * abs(truth[planted].mean()), effect
    only_md = (load_truth(folder, "md_age") > 0) & (load_truth(folder, "fa_age") == 0)
    fa_slope = np.linalg.lstsq(X, fa, rcond=None)[0][1]
    assert abs(fa_slope[only_md].mean()) < 0.0005  # noise only: well below the planted 0.0015 per year


def test_paired_and_vbm_tables(cache_root: Path) -> None:
    paired = pd.read_csv(ensure_demo("paired", cache_root), sep="\t")
    assert paired.subject.nunique() == 16 and len(paired) == 32
    assert (paired.groupby("subject").condition.apply(sorted) == pd.Series([["a", "b"]] * 16).values).all()
    vbm = pd.read_csv(ensure_demo("vbm", cache_root), sep="\t")
    assert len(vbm) == 100 and vbm.subject.iloc[0] == "sub-001"
    assert 20 <= vbm.age.min() and vbm.age.max() <= 90 and vbm.age.max() - vbm.age.min() > 50
    assert set(vbm.sex) == {"F", "M"}
    tiv = vbm.groupby("sex").tiv.mean()
    assert 1100 < tiv["F"] < tiv["M"] < 1800


# ---------------------------------------------------------------------------------------------
# Determinism and caching


def test_regeneration_is_bit_identical(cache_root: Path, tmp_path: Path) -> None:
    spec = DEMO_DATASETS["paired"]
    spec.generate(tmp_path, spec.seed)
    cached = cache_root / spec.folder_name
    names = sorted(p.relative_to(cached) for p in cached.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for name in names:
        assert (cached / name).read_bytes() == (tmp_path / name).read_bytes(), name


@pytest.mark.parametrize(("name", "size_constant"), [("localizer", "LOCALIZER_SUBJECTS"), ("vbm", "VBM_SUBJECTS")])
def test_small_generation_is_bit_identical_and_seed_dependent(
    name: str, size_constant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.demo import vbm

    monkeypatch.setattr(vbm if name == "vbm" else datasets, size_constant, 4)  # same code path, fewer subjects
    generate = DEMO_DATASETS[name].generate
    for folder, seed in (("first", 1), ("second", 1), ("other", 2)):
        generate(tmp_path / folder, seed)
    files = sorted(p.relative_to(tmp_path / "first") for p in (tmp_path / "first").rglob("*") if p.is_file())
    assert len(files) > 4
    for file in files:
        assert (tmp_path / "first" / file).read_bytes() == (tmp_path / "second" / file).read_bytes(), file
    table = pd.read_csv(tmp_path / "first" / "table.tsv", sep="\t")
    first = (tmp_path / "first" / table.path[0]).read_bytes()
    assert first != (tmp_path / "other" / table.path[0]).read_bytes()


def test_cached_dataset_is_reused(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table_path = ensure_demo("paired", cache_root)
    before = {p: p.stat().st_mtime_ns for p in table_path.parent.rglob("*")}

    def must_not_run(out_dir: Path, seed: int) -> None:
        raise AssertionError("the cached dataset was generated again")

    spec = dataclasses.replace(DEMO_DATASETS["paired"], generate=must_not_run)
    monkeypatch.setitem(DEMO_DATASETS, "paired", spec)
    assert ensure_demo("paired", cache_root) == table_path
    assert {p: p.stat().st_mtime_ns for p in table_path.parent.rglob("*")} == before


def test_losing_a_generation_race_uses_the_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "paired-v9"

    def generate_while_another_process_wins(out_dir: Path, seed: int) -> None:
        (out_dir / "table.tsv").write_text("mine\n")
        folder.mkdir()
        (folder / "table.tsv").write_text("winner\n")
        (folder / "other.txt").write_text("x")

    spec = dataclasses.replace(DEMO_DATASETS["paired"], version=9, generate=generate_while_another_process_wins)
    monkeypatch.setitem(DEMO_DATASETS, "paired", spec)
    table_path = ensure_demo("paired", tmp_path)
    assert table_path == folder / "table.tsv"
    assert table_path.read_text() == "winner\n"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["paired-v9"]  # loser's copy gone


def test_a_second_process_waits_for_the_generator_instead_of_generating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl
    import threading

    calls = []
    spec = dataclasses.replace(DEMO_DATASETS["paired"], version=9, generate=lambda out, seed: calls.append(out))
    monkeypatch.setitem(DEMO_DATASETS, "paired", spec)
    result = []
    with open(tmp_path / ".paired-v9.lock", "a") as held:  # "another process" is generating
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: result.append(ensure_demo("paired", tmp_path)))
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive()  # blocked on the lock
        (tmp_path / "paired-v9").mkdir()
        (tmp_path / "paired-v9" / "table.tsv").write_text("made by the other process\n")
    waiter.join(timeout=10)
    assert result == [tmp_path / "paired-v9" / "table.tsv"] and calls == []


def test_broken_cache_folder_and_failed_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = DEMO_DATASETS["paired"]
    (tmp_path / spec.folder_name).mkdir()
    (tmp_path / spec.folder_name / "leftover.txt").write_text("x")
    monkeypatch.setattr(datasets, "PAIRED_SUBJECTS", 1)
    with pytest.raises(RunnerError, match="delete it"):
        ensure_demo("paired", tmp_path)

    def fails(out_dir: Path, seed: int) -> None:
        raise KeyboardInterrupt

    shutil.rmtree(tmp_path / spec.folder_name)
    monkeypatch.setitem(DEMO_DATASETS, "paired", dataclasses.replace(spec, generate=fails))
    with pytest.raises(KeyboardInterrupt):
        ensure_demo("paired", tmp_path)
    # no partial dataset, no temporary folder (only the empty lock file, kept: deleting it would race a waiter)
    assert [p.name for p in tmp_path.iterdir()] == [f".{spec.folder_name}.lock"]


def test_cache_root_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNNER_DEMO_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo_root() == tmp_path / "xdg" / "second-level-runner" / "demo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert demo_root() == tmp_path / "home" / ".cache" / "second-level-runner" / "demo"
    monkeypatch.setenv("RUNNER_DEMO_DIR", str(tmp_path / "env"))
    assert demo_root() == tmp_path / "env"
    assert demo_root(tmp_path / "explicit") == tmp_path / "explicit"


def test_unknown_name_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="did you mean 'localizer'") as error:
        ensure_demo("localiser", tmp_path)
    assert all(name in str(error.value) for name in DEMO_DATASETS)
    with pytest.raises(RunnerError, match="'localizer', 'paired', 'surface', 'vbm'"):
        ensure_demo("mnist", tmp_path)
    assert list(tmp_path.iterdir()) == []
    for spec in DEMO_DATASETS.values():
        assert spec.description and "\n" not in spec.description


# ---------------------------------------------------------------------------------------------
# Planted truth is recoverable with simple, independent statistics


def test_localizer_one_sample_test_finds_the_mean_blobs(cache_root: Path) -> None:
    table_path = ensure_demo("localizer", cache_root)
    _, effects = load_maps(table_path)
    truth = load_truth(table_path.parent, "mean")
    t, p = stats.ttest_1samp(effects, 0.0, axis=0)
    significant = p <= bh_threshold(p)
    strong = np.abs(truth) >= 1.0
    assert strong.sum() > 50
    assert significant[strong].mean() > 0.7  # the strong blobs are found clearly
    assert np.sign(t[strong & significant]).tolist() == np.sign(truth[strong & significant]).tolist()
    outside = truth == 0
    assert (significant & outside).sum() / significant.sum() < 0.1  # few false discoveries
    assert np.median(np.abs(t[outside])) < 1.0
    weak = (truth > 0.3) & (truth < 0.8)  # edges and weak blobs: some found, many not
    assert 0.0 < significant[weak].mean() < 0.6


def test_localizer_group_and_fluency_effects(cache_root: Path) -> None:
    table_path = ensure_demo("localizer", cache_root)
    table, effects = load_maps(table_path)
    patients = (table.group == "patient").to_numpy()
    truth_group = load_truth(table_path.parent, "group")
    t_group = stats.ttest_ind(effects[patients], effects[~patients], axis=0).statistic
    core = truth_group > 0.5 * truth_group.max()
    assert np.median(t_group[core]) > 3.0
    assert np.median(np.abs(t_group[truth_group == 0])) < 1.0

    truth_fluency = load_truth(table_path.parent, "fluency")
    design = np.column_stack([np.ones(len(table)), table.fluency])
    slope = np.linalg.lstsq(design, effects, rcond=None)[0][1]
    core = truth_fluency > 0.5 * truth_fluency.max()
    np.testing.assert_allclose(slope[core].mean(), truth_fluency[core].mean(), rtol=0.4)
    assert np.abs(slope[truth_fluency == 0]).mean() < 0.3 * truth_fluency[core].mean()


def test_paired_test_beats_unpaired_within_the_condition_effect(cache_root: Path) -> None:
    table_path = ensure_demo("paired", cache_root)
    table, effects = load_maps(table_path)
    table = table.reset_index(drop=True)
    a = effects[table.index[table.condition == "a"]]
    b = effects[table.index[table.condition == "b"]]
    subjects_a = table.subject[table.condition == "a"].to_numpy()
    assert (subjects_a == table.subject[table.condition == "b"].to_numpy()).all()
    truth = load_truth(table_path.parent, "condition")
    core = np.abs(truth) > 0.5 * np.abs(truth).max()
    paired_t = stats.ttest_rel(b, a, axis=0).statistic
    unpaired_t = welch_t(b, a)
    assert np.median(np.abs(paired_t[core])) > 2.5 * np.median(np.abs(unpaired_t[core]))
    assert np.median(np.abs(paired_t[core])) > 3.0
    assert (np.sign(paired_t[core]) == np.sign(truth[core])).mean() > 0.95


def test_vbm_values_and_age_atrophy(cache_root: Path) -> None:
    table_path = ensure_demo("vbm", cache_root)
    table, density = load_maps(table_path)
    assert density.min() >= 0.0 and density.max() <= 1.0
    truth_age = load_truth(table_path.parent, "age")
    truth_sex = load_truth(table_path.parent, "sex")
    age = table.age.to_numpy()
    age_centred = age - age.mean()
    centred = density - density.mean(0)
    norms = np.linalg.norm(age_centred) * np.linalg.norm(centred, axis=0)
    correlation = age_centred @ centred / np.where(norms > 0, norms, 1.0)
    core = truth_age < 0.5 * truth_age.min()
    assert np.median(correlation[core]) < -0.5
    assert np.median(np.abs(correlation[(truth_age == 0) & (truth_sex == 0)])) < 0.2
    # Men have larger heads, hence more grey matter everywhere (TIV scaling), and more in the sex blob.
    men = (table.sex == "M").to_numpy()
    difference = density[men].mean(0) - density[~men].mean(0)
    sex_core = truth_sex > 0.5 * truth_sex.max()
    assert difference[sex_core].mean() > difference[truth_sex == 0].mean() + 0.5 * truth_sex[sex_core].mean()


def test_demo_export_copies_a_study_and_refuses_a_non_empty_folder(tmp_path):
    import pandas as pd

    from runner.demo.__main__ import main

    assert main(["localizer", str(tmp_path / "study")]) == 0
    table = pd.read_csv(tmp_path / "study" / "table.tsv", sep="\t")
    assert len(table) == 30 and all((tmp_path / "study" / p).is_file() for p in table["path"])
    assert main(["localizer", str(tmp_path / "study")]) == 2  # never writes into a folder holding files
