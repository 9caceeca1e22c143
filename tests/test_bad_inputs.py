"""The catalogue of bad inputs.

Every case breaks one thing in a small, otherwise valid study and runs the command line (in-process, through
``runner.cli.main`` exactly as ``python -m runner`` does). Each must end with exit code 2, exactly one line on stderr
(``error: ...`` holding the expected text, which names what is wrong and where), no traceback, and no manifest marked
complete. docs/errors.md lists the same messages for users.
"""

from __future__ import annotations

import gzip
import json
import struct
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

N_MAPS = 8
SHAPE = (9, 10, 8)
AFFINE = np.array([[3.0, 0, 0, -12], [0, 3.0, 0, -15], [0, 0, 3.0, -10], [0, 0, 0, 1]])


def brain_mask(shape=SHAPE) -> np.ndarray:
    """An ellipsoid well inside the grid (the study's 'brain')."""
    grid = np.indices(shape, dtype=float)
    centre = (np.asarray(shape, dtype=float) - 1) / 2
    radius = np.asarray(shape, dtype=float) / 2 - 1
    return (((grid - centre[:, None, None, None]) / radius[:, None, None, None]) ** 2).sum(axis=0) <= 1


def save_map(path: Path, values: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(values, dtype=np.float32), affine), str(path))
    return path


def patch_header(path: Path, offset: int, fmt: str, *values) -> None:
    """Overwrite fields of an uncompressed NIfTI-1 header in place (little endian)."""
    raw = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, raw, offset, *values)
    path.write_bytes(bytes(raw))


@dataclass
class Study:
    """A valid 8-map study on a small grid; cases break one thing in it."""

    root: Path
    frame: pd.DataFrame
    values: list[np.ndarray] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def table_path(self) -> Path:
        return self.root / "table.tsv"

    def image(self, i: int) -> Path:
        return self.root / self.frame.loc[i, "path"]

    def save_table(self, frame: pd.DataFrame | None = None, name: str = "table.tsv") -> Path:
        path = self.root / name
        (self.frame if frame is None else frame).to_csv(path, sep="\t", index=False)
        return path

    def overrides(self, *extra: str) -> list[str]:
        return ["data=table", f"data.table={self.table_path}", "correction=[fpr]", "report=false", "progress=false",
                "n_jobs=1", f"output_root={self.root / 'out'}", f"hydra.run.dir={self.run_dir}", *extra]


@pytest.fixture
def study(tmp_path, monkeypatch) -> Study:
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    inside = brain_mask()
    rows, values = [], []
    for i in range(N_MAPS):
        volume = np.where(inside, rng.normal(1.0, 1.0, SHAPE), 0.0)
        path = f"maps/sub-{i + 1:02d}.nii.gz"
        save_map(tmp_path / path, volume)
        values.append(volume)
        rows.append({"participant_id": f"sub-{i + 1:02d}", "path": path, "age": 20.5 + 3 * i,
                     "sex": "MF"[i % 2], "group": "AB"[i // 4]})
    result = Study(tmp_path, pd.DataFrame(rows), values)
    result.save_table()
    return result


def run_cli_inprocess(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """``python -m runner <args>`` in this process: (exit code, stdout, stderr)."""
    from runner import cli

    monkeypatch.setattr(sys, "argv", ["runner", *args])
    capsys.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def hydra_quote(text: str) -> str:
    """A string as a quoted value in a Hydra override."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def manifest_status(run_dir: Path) -> str | None:
    path = run_dir / "manifest.json"
    return json.loads(path.read_text())["status"] if path.is_file() else None


def assert_refused(study: Study, overrides: list[str], message: str, capsys, monkeypatch) -> str:
    """Run and check: exit 2, one stderr line holding ``message``, no traceback, no complete manifest."""
    code, out, err = run_cli_inprocess(study.overrides(*overrides), capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, out[-2000:], err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert manifest_status(study.run_dir) != "complete"
    return lines[0]


# -- the catalogue -----------------------------------------------------------------------------------------------
# Each case breaks the study and returns (overrides, expected text of the one-line error).
def missing_file(s: Study):
    s.image(3).unlink()
    return [], f"input image {s.image(3)} does not exist"


def folder_instead_of_file(s: Study):
    s.image(2).unlink()
    s.image(2).mkdir()
    return [], f"input image {s.image(2)} is not a file"


def unreadable_file(s: Study):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    s.image(1).chmod(0)
    return [], f"input image {s.image(1)} cannot be read"


def not_nifti(s: Study):
    s.image(4).write_bytes(gzip.compress(b"subject,value\n1,2\n" * 40))
    return [], f"input image {s.image(4)} is not a readable NIfTI image"


def other_format(s: Study):
    path = s.root / "maps" / "sub-05.mgz"
    nib.save(nib.MGHImage(s.values[4].astype(np.float32), AFFINE), str(path))
    s.frame.loc[4, "path"] = "maps/sub-05.mgz"
    s.save_table()
    return [], f"input image {path} is a MGHImage, not NIfTI-1/2"


def four_d_in_table(s: Study):
    save_map(s.image(0), np.stack([s.values[0]] * 3, axis=-1))
    return [], f"input {s.image(0)} is 4D (3 volumes)"


def four_d_wrong_volume_count(s: Study):
    path = save_map(s.root / "all.nii.gz", np.stack(s.values, axis=-1))
    table = s.save_table(s.frame.drop(columns="path").iloc[:7], name="volumes.tsv")
    return ["data.table=" + str(table), f"data.image_4d={path}"], \
        f"data.image_4d {path} has 8 volumes but data.table {table} has 7 rows"


def two_d_image(s: Study):
    save_map(s.image(5), s.values[5][:, :, 3])
    return [], f"input image {s.image(5)} has 2 dimensions"


def other_shape_without_resampling(s: Study):
    save_map(s.image(6), np.pad(s.values[6], ((0, 1), (0, 0), (0, 0))))
    return ["data.resample=false"], (f"input {s.image(6)} is not on the reference grid of {s.image(0)}: "
                                     "shape (10, 10, 8) instead of (9, 10, 8); set data.resample=true")


def other_affine_without_resampling(s: Study):
    shifted = AFFINE.copy()
    shifted[:3, 3] += [6, 0, 0]
    save_map(s.image(6), s.values[6], shifted)
    return ["data.resample=false"], (f"input {s.image(6)} is not on the reference grid of {s.image(0)}: "
                                     "origin [-6.0, -15.0, -10.0] mm instead of [-12.0, -15.0, -10.0]")


def other_voxel_size_without_resampling(s: Study):
    bigger = AFFINE.copy()
    bigger[:3, :3] *= 2 / 3
    save_map(s.image(6), s.values[6], bigger)
    return ["data.resample=false"], "voxel size 2x2x2 mm instead of 3x3x3 mm"


def mask_on_other_grid_without_resampling(s: Study):
    mask = save_map(s.root / "mask.nii.gz", np.pad(brain_mask(), ((0, 2), (0, 0), (0, 0))).astype(float))
    return ["data.resample=false", f"data.mask={mask}"], \
        f"input {s.image(0)} is not on the reference grid of data.mask {mask}: shape (9, 10, 8) instead of (11, 10, 8)"


def zero_voxel_size(s: Study):
    path = save_map(s.root / "maps" / "sub-03.nii", s.values[2])
    patch_header(path, 80, "f", 0.0)  # pixdim[1]
    s.frame.loc[2, "path"] = "maps/sub-03.nii"
    s.save_table()
    return [], f"input image {path} has invalid voxel sizes [0.0, 3.0, 3.0] in its header"


def nan_voxel_size(s: Study):
    path = save_map(s.root / "maps" / "sub-03.nii", s.values[2])
    patch_header(path, 84, "f", float("nan"))  # pixdim[2]
    s.frame.loc[2, "path"] = "maps/sub-03.nii"
    s.save_table()
    return [], f"input image {path} has invalid voxel sizes [3.0, nan, 3.0] in its header"


def absurd_dimensions(s: Study):
    path = save_map(s.root / "maps" / "sub-03.nii", s.values[2])
    patch_header(path, 40, "8h", 3, 2000, 1000, 500, 1, 1, 1, 1)  # 10^9 voxels claimed by a 3 kB file
    s.frame.loc[2, "path"] = "maps/sub-03.nii"
    s.save_table()
    return [], f"input image {path} has an implausible shape (2000, 1000, 500) in its header"


def truncated_gzip(s: Study):
    raw = s.image(7).read_bytes()
    s.image(7).write_bytes(raw[: len(raw) // 2])
    return [], f"input image {s.image(7)} is truncated"


def truncated_uncompressed(s: Study):
    path = save_map(s.root / "maps" / "sub-08.nii", s.values[7])
    path.write_bytes(path.read_bytes()[:-100])
    s.frame.loc[7, "path"] = "maps/sub-08.nii"
    s.save_table()
    return [], f"input image {path} is truncated"


def corrupt_gzip(s: Study):
    raw = bytearray(s.image(7).read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 16] = bytes(16)
    s.image(7).write_bytes(bytes(raw))
    return [], f"input image {s.image(7)} is corrupt"


def table_missing(s: Study):
    return [f"data.table={s.root / 'nope.tsv'}"], f"data.table file {s.root / 'nope.tsv'} does not exist"


def table_empty(s: Study):
    s.save_table(s.frame.iloc[:0])
    return [], f"data.table {s.table_path} has no rows"


def path_column_missing(s: Study):
    s.save_table(s.frame.rename(columns={"path": "paths"}))
    return [], f"data.table {s.table_path} has no column 'path' naming the images; did you mean 'paths'?"


def empty_path_cell(s: Study):
    frame = s.frame.copy()
    frame.loc[3, "path"] = ""
    s.save_table(frame)
    return [], f"data.table {s.table_path} row 4 has an empty 'path'"


def duplicate_ids(s: Study):
    frame = s.frame.copy()
    frame.loc[5, "participant_id"] = "sub-02"
    s.save_table(frame)
    return [], "participant_id 'sub-02' appears in rows 2 and 6: each map needs its own id"


def duplicate_image(s: Study):
    frame = s.frame.copy()
    frame.loc[6, "path"] = frame.loc[1, "path"]
    s.save_table(frame)
    return [], f"rows 2 and 7 of the input table name the same image {s.image(1)}"


def covariate_missing(s: Study):
    return ["design.formula=agee + sex"], "design.formula names column 'agee', which is not in the table; did you " \
                                          "mean 'age'?"


def decimal_comma(s: Study):
    frame = s.frame.astype({"age": str})
    frame.loc[2, "age"] = "12,5"
    s.save_table(frame)
    return ["design.formula=age"], "column 'age' holds '12,5' (row 3), not a number: a decimal comma? write 12.5"


def text_in_numeric_column(s: Study):
    frame = s.frame.astype({"age": str})
    frame.loc[4, "age"] = "unknown"
    s.save_table(frame)
    return ["design.formula=age"], "column 'age' holds 'unknown' (row 5), not a number"


def missing_covariate_values(s: Study):
    frame = s.frame.copy()
    frame.loc[1, "age"] = None
    s.save_table(frame)
    return ["design.formula=age"], "1 row(s) have missing values in columns used by the formula: sub-02 (age)"


def too_few_maps(s: Study):
    s.save_table(s.frame.iloc[[0, 1, 4]])
    return ["design.formula='age + C(sex) + C(group)'"], \
        "3 input maps are too few for a design with 4 column(s): at least 5 are needed"


def rank_deficient(s: Study):
    frame = s.frame.assign(age2=s.frame["age"] * 2)
    s.save_table(frame)
    return ["design.formula=age + age2"], "the design matrix is rank deficient: column 'age2' is a linear combination"


def nan_voxels_refused(s: Study):
    s.values[3][4, 5, 4] = np.nan
    save_map(s.image(3), s.values[3])
    mask = save_map(s.root / "mask.nii.gz", brain_mask().astype(float))
    return [f"data.mask={mask}", "data.nan_policy=error"], \
        f"input {s.image(3)} has 1 NaN or infinite voxel(s) inside the mask (data.nan_policy=error)"


def nan_voxels_refused_automatic_mask(s: Study):
    s.values[3][4, 5, 4] = np.inf
    save_map(s.image(3), s.values[3])
    return ["data.nan_policy=error"], f"input {s.image(3)} has 1 NaN or infinite voxel(s) inside the mask"


def all_zero_image(s: Study):
    save_map(s.image(5), np.zeros(SHAPE))
    return [], f"input {s.image(5)} is all zeros"


def all_zero_image_inside_mask(s: Study):
    save_map(s.image(5), np.where(brain_mask(), 0.0, 1.0))
    mask = save_map(s.root / "mask.nii.gz", brain_mask().astype(float))
    return [f"data.mask={mask}"], f"input {s.image(5)} is all zeros (or NaN) inside the mask"


def empty_mask(s: Study):
    mask = save_map(s.root / "mask.nii.gz", np.zeros(SHAPE))
    return [f"data.mask={mask}"], f"mask {mask} is empty (no voxel above 0)"


def missing_mask(s: Study):
    return [f"data.mask={s.root / 'mask.nii.gz'}"], f"data.mask {s.root / 'mask.nii.gz'} does not exist"


def mask_outside_the_data(s: Study):
    outside = ~brain_mask()
    outside[0, 0, 0] = outside[0, 0, 0]  # the corners of the grid, where every map is 0
    mask = save_map(s.root / "mask.nii.gz", outside.astype(float))
    return [f"data.mask={mask}"], f"data.mask {mask} does not overlap the data"


def mask_beyond_the_field_of_view(s: Study):
    far = AFFINE.copy()
    far[:3, 3] += 500.0
    mask = save_map(s.root / "mask.nii.gz", brain_mask().astype(float), far)
    return [f"data.mask={mask}"], f"data.mask {mask} does not overlap the data"


def automatic_mask_empty(s: Study):
    for i in (0, 1):  # two maps with disjoint support: no voxel is non-zero in both
        half = np.zeros(SHAPE)
        half[: SHAPE[0] // 2] = 1.0 if i == 0 else 0.0
        half[SHAPE[0] // 2:] = 0.0 if i == 0 else 1.0
        save_map(s.image(i), half * brain_mask())
    return [], "the automatic mask is empty"


def contrast_names_collide(s: Study):
    return ["contrasts=[{name:a-b,expr:Intercept},{name:a_b,expr:Intercept}]"], \
        "contrasts 'a-b' and 'a_b' would write files with the same name (aB)"


def unknown_contrast_column(s: Study):
    return ["contrasts=[{name:x,expr:agee}]", "design.formula=age"], \
        "contrast 'x' names 'agee', which is not a design column; did you mean 'age'?"


CATALOGUE = [
    missing_file, folder_instead_of_file, unreadable_file, not_nifti, other_format, four_d_in_table,
    four_d_wrong_volume_count, two_d_image, other_shape_without_resampling, other_affine_without_resampling,
    other_voxel_size_without_resampling, mask_on_other_grid_without_resampling, zero_voxel_size, nan_voxel_size,
    absurd_dimensions, truncated_gzip, truncated_uncompressed, corrupt_gzip, table_missing, table_empty,
    path_column_missing, empty_path_cell, duplicate_ids, duplicate_image, covariate_missing, decimal_comma,
    text_in_numeric_column, missing_covariate_values, too_few_maps, rank_deficient, nan_voxels_refused,
    nan_voxels_refused_automatic_mask, all_zero_image, all_zero_image_inside_mask, empty_mask, missing_mask,
    mask_outside_the_data, mask_beyond_the_field_of_view, automatic_mask_empty, contrast_names_collide,
    unknown_contrast_column,
]


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.__name__ for c in CATALOGUE])
def test_bad_input_gives_one_line_and_exit_code_2(case, study, capsys, monkeypatch):
    overrides, message = case(study)
    assert_refused(study, overrides, message, capsys, monkeypatch)


def test_header_problems_are_found_before_any_voxel_is_decoded(study, capsys, monkeypatch):
    """A broken header in the last row is refused before the other maps are read (no decode, no hashing)."""
    import runner.data.images as images

    path = save_map(study.root / "maps" / "sub-08.nii", study.values[7])
    patch_header(path, 40, "8h", 3, 2000, 1000, 500, 1, 1, 1, 1)
    study.frame.loc[7, "path"] = "maps/sub-08.nii"
    study.save_table()
    decoded = []
    original = images.read_volume
    monkeypatch.setattr(images, "read_volume", lambda *a, **k: decoded.append(a) or original(*a, **k))
    started = time.perf_counter()
    assert_refused(study, [], "has an implausible shape", capsys, monkeypatch)
    assert decoded == [] and time.perf_counter() - started < 10


def test_second_run_after_an_error_succeeds_into_the_same_folder(study, capsys, monkeypatch):
    save_map(study.image(5), np.zeros(SHAPE))
    assert_refused(study, [], "is all zeros", capsys, monkeypatch)
    assert manifest_status(study.run_dir) == "failed"
    save_map(study.image(5), study.values[5])
    code, _, err = run_cli_inprocess(study.overrides(), capsys, monkeypatch)
    assert code == 0, err
    assert manifest_status(study.run_dir) == "complete"


# -- problems that are not errors: the run completes and says what it did ------------------------------------------
def run_ok(study: Study, overrides: list[str], capsys, monkeypatch) -> str:
    code, out, err = run_cli_inprocess(study.overrides(*overrides), capsys, monkeypatch)
    assert code == 0, err[-3000:]
    assert manifest_status(study.run_dir) == "complete"
    return (study.run_dir / "run.log").read_text()


def test_resampling_is_logged(study, capsys, monkeypatch):
    shifted = AFFINE.copy()
    shifted[:3, 3] += [1.5, 0, 0]
    save_map(study.image(6), study.values[6], shifted)
    log = run_ok(study, [], capsys, monkeypatch)
    assert f"resampled 1 of 8 input(s) to the reference grid" in log and str(study.image(6)) in log


def test_nan_voxels_are_excluded_with_a_count(study, capsys, monkeypatch):
    study.values[3][4, 5, 4] = np.nan
    study.values[2][4, 4, 4] = np.inf
    save_map(study.image(3), study.values[3])
    save_map(study.image(2), study.values[2])
    mask = save_map(study.root / "mask.nii.gz", brain_mask().astype(float))
    log = run_ok(study, [f"data.mask={mask}"], capsys, monkeypatch)
    assert "excluded 2 in-mask voxel(s) that are NaN or infinite in at least one input" in log
    manifest = json.loads((study.run_dir / "manifest.json").read_text())
    assert manifest["n_voxels"] == int(brain_mask().sum()) - 2


def test_nan_voxels_are_excluded_from_the_automatic_mask_with_a_count(study, capsys, monkeypatch):
    study.values[3][4, 5, 4] = np.nan
    save_map(study.image(3), study.values[3])
    background = study.values[1].copy()
    background[~brain_mask()] = np.nan  # NaN outside the brain (as SPM writes it) is not counted
    save_map(study.image(1), background)
    log = run_ok(study, [], capsys, monkeypatch)
    assert "excluded 1 voxel(s) that are NaN or infinite in some inputs" in log


def test_constant_voxels_give_nan_statistics_counted_once_without_warnings(study, capsys, monkeypatch):
    for i in range(N_MAPS):
        study.values[i][4, 5, 4] = 2.5
        study.values[i][3, 5, 4] = 2.5
        save_map(study.image(i), study.values[i])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log = run_ok(study, ["correction=[fpr,fdr,bonferroni,ari]"], capsys, monkeypatch)
    assert "contrast mean: 2 voxel(s) have no statistic (zero" in log
    assert log.count("have no statistic") == 1
    t = nib.load(study.run_dir / "contrast-mean_stat-t_statmap.nii.gz").get_fdata()
    assert np.isnan(t[4, 5, 4]) and np.isnan(t[3, 5, 4]) and np.isfinite(t[4, 4, 4])


def test_single_member_levels_are_warned_about(study, capsys, monkeypatch):
    frame = study.frame.copy()
    frame.loc[7, "group"] = "C"
    study.save_table(frame)
    log = run_ok(study, ["design.formula='age + C(group)'"], capsys, monkeypatch)
    assert "level 'C' of 'group' has a single map (sub-08)" in log


# -- outputs named from user strings stay in the run directory ------------------------------------------------------
def files_outside_the_run(study: Study) -> set[Path]:
    return {p for p in study.root.rglob("*") if p != study.run_dir and study.run_dir not in p.parents}


@pytest.mark.parametrize("name", ["../../etc/x", "/abs/path", "a;b|c&d$(touch pwned)`id`", "..", "-rf *"])
def test_hostile_contrast_names_cannot_write_outside_the_run_directory(name, study, capsys, monkeypatch):
    before = files_outside_the_run(study)
    run_ok(study, [f"contrasts=[{{name:{hydra_quote(name)},expr:Intercept}}]"], capsys, monkeypatch)
    after = files_outside_the_run(study)
    assert {p for p in after - before if p.relative_to(study.root).parts[0] != "out"} == set()
    assert not list(study.root.rglob("pwned")) and not Path("/abs").exists()
    for entry in json.loads((study.run_dir / "manifest.json").read_text())["outputs"]:
        target = (study.run_dir / entry["path"]).resolve()
        assert study.run_dir.resolve() in target.parents and "/" not in entry["path"]


def test_nul_in_a_contrast_name_is_refused(study, tmp_path):
    from conftest import run_analysis

    from runner.errors import RunnerError

    overrides = [o for o in study.overrides() if not o.startswith("hydra.")]
    with pytest.raises(RunnerError, match="contains a NUL character"):
        run_analysis(study.run_dir, overrides + [f"contrasts=[{{name:{hydra_quote('a' + chr(0) + 'b')},expr:Intercept}}]"])
    assert manifest_status(study.run_dir) != "complete"


def test_override_values_cannot_move_the_run_directory(study, capsys, monkeypatch):
    overrides = [o for o in study.overrides() if not o.startswith("hydra.run.dir")]
    code, _, err = run_cli_inprocess(overrides + ["name=../../escape", "data.query=\"age > 0 or sex != '/x/..'\""],
                                     capsys, monkeypatch)
    assert code == 0, err
    manifests = list((study.root / "out").rglob("manifest.json"))
    assert len(manifests) == 1 and (study.root / "out").resolve() in manifests[0].resolve().parents
    assert not (study.root.parent / "escape").exists()
