"""The data cache serves only sound entries: tampered or inconsistent ones are misses and are rebuilt; it lives under
the run's output root, locks entries while writing and stays within its size cap by evicting the least recently used.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import run_analysis
from runner.config import DataConfig
from runner.data import cache
from runner.data.loader import load_group_data
from runner.data.sources import ImageRef, InputSet


@pytest.fixture
def inputs(tmp_path) -> InputSet:
    """Six tiny maps whose rows differ (so a reordering is visible)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "maps"
    folder.mkdir()
    paths = []
    for i in range(6):
        path = folder / f"sub-{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(rng.normal(i, 1.0, (5, 4, 3)).astype(np.float32), np.diag([2.0, 2, 2, 1])), path)
        paths.append(path)
    table = pd.DataFrame({"subject": [f"sub-{i:02d}" for i in range(6)], "age": np.arange(6.0)})
    return InputSet(table=table, images=tuple(ImageRef(p) for p in paths))


def _load(inputs: InputSet, settings: DataConfig):
    calls = []

    def load():
        calls.append(1)
        return load_group_data(inputs, settings)

    return load, calls


def _entry(cache_dir: Path) -> Path:
    (entry,) = [p for p in cache_dir.glob("??/*") if p.is_dir() and not p.name.startswith(".")]
    return entry


def test_hit_gives_the_arrays_a_fresh_load_gives(inputs, tmp_path):
    settings = DataConfig()
    load, calls = _load(inputs, settings)
    first, outcome = cache.cached_load(inputs, settings, tmp_path / "cache", load)
    assert outcome == "miss" and len(calls) == 1
    second, outcome = cache.cached_load(inputs, settings, tmp_path / "cache", load)
    assert outcome == "hit" and len(calls) == 1
    reference = load_group_data(inputs, settings)
    np.testing.assert_array_equal(np.asarray(second.Y), reference.Y)
    np.testing.assert_array_equal(second.mask, reference.mask)
    np.testing.assert_array_equal(second.affine, reference.affine)


def test_rows_reordered_is_a_miss_and_the_entry_is_rebuilt(inputs, tmp_path, caplog):
    settings = DataConfig()
    load, calls = _load(inputs, settings)
    cache.cached_load(inputs, settings, tmp_path / "cache", load)
    entry = _entry(tmp_path / "cache")
    Y = np.load(entry / "Y.npy")
    np.save(entry / "Y.npy", Y[::-1])  # reproduction 8: same shape, same values, rows in another order
    with caplog.at_level(logging.WARNING, logger="runner.data.cache"):
        data, outcome = cache.cached_load(inputs, settings, tmp_path / "cache", load)
    assert outcome == "miss" and len(calls) == 2
    assert "Y.npy does not match" in caplog.text
    np.testing.assert_array_equal(np.asarray(data.Y), Y)  # the loaded rows, in the table's order
    again, outcome = cache.cached_load(inputs, settings, tmp_path / "cache", load)
    assert outcome == "hit" and len(calls) == 2
    np.testing.assert_array_equal(np.asarray(again.Y), Y)


def _reseal(entry: Path) -> None:
    """Recompute the seal so only the shape checks can catch what was changed."""
    seal = json.loads((entry / cache.SEAL).read_text())
    seal["sha256"] = {name: cache.sha256_file(entry / name) for name in cache.ENTRY_FILES}
    (entry / cache.SEAL).write_text(json.dumps(seal))


CORRUPTIONS = {
    "missing Y": lambda e: (e / "Y.npy").unlink(),
    "truncated Y": lambda e: (e / "Y.npy").write_bytes((e / "Y.npy").read_bytes()[:200]),
    "seal not json": lambda e: (e / cache.SEAL).write_text("{not json"),
    "seal of an old version": lambda e: (e / cache.SEAL).write_text(""),
    "meta not json": lambda e: ((e / "meta.json").write_text("]"), _reseal(e)),
    "one row fewer": lambda e: (np.save(e / "Y.npy", np.load(e / "Y.npy")[1:]), _reseal(e)),
    "mask of another size": lambda e: (np.save(e / "mask.npy", np.ones((2, 2, 2), bool)), _reseal(e)),
    "affine not 4x4": lambda e: (np.save(e / "affine.npy", np.eye(3)), _reseal(e)),
    "Y of another dtype": lambda e: (np.save(e / "Y.npy", np.load(e / "Y.npy").astype(np.float32)), _reseal(e)),
    "object array": lambda e: (np.save(e / "Y.npy", np.array([[None]], dtype=object), allow_pickle=True),
                               _reseal(e)),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_inconsistent_entry_is_a_logged_miss(inputs, tmp_path, caplog, corruption):
    settings = DataConfig()
    load, calls = _load(inputs, settings)
    reference, _ = cache.cached_load(inputs, settings, tmp_path / "cache", load)
    CORRUPTIONS[corruption](_entry(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="runner.data.cache"):
        data, outcome = cache.cached_load(inputs, settings, tmp_path / "cache", load)
    assert outcome == "miss" and len(calls) == 2
    assert "is not sound" in caplog.text and "\n" not in caplog.records[-1].getMessage()
    np.testing.assert_array_equal(np.asarray(data.Y), np.asarray(reference.Y))
    assert cache.cached_load(inputs, settings, tmp_path / "cache", load)[1] == "hit"  # rebuilt


def test_least_recently_used_entries_are_evicted_to_stay_under_the_cap(inputs, tmp_path):
    root = tmp_path / "cache"
    keys = {}
    for fwhm in (0.0, 2.0):
        settings = DataConfig(smoothing_fwhm=fwhm)
        cache.cached_load(inputs, settings, root, _load(inputs, settings)[0])
        keys[fwhm] = cache.cache_key(inputs, settings)[0]
    entry = {fwhm: root / key[:2] / key for fwhm, key in keys.items()}
    size = cache._folder_bytes(entry[0.0])
    os.utime(entry[0.0] / cache.STAMP, (1000, 1000))
    os.utime(entry[2.0] / cache.STAMP, (2000, 2000))
    # a hit makes the older entry the most recently used one
    assert cache.cached_load(inputs, DataConfig(smoothing_fwhm=0.0), root, _load(inputs, DataConfig())[0])[1] == "hit"
    cap = int(2.5 * size)
    settings = DataConfig(smoothing_fwhm=4.0)
    cache.cached_load(inputs, settings, root, _load(inputs, settings)[0], max_bytes=cap)
    newest = cache.cache_key(inputs, settings)[0]
    left = {p.name for p in root.glob("??/*") if p.is_dir() and not p.name.startswith(".")}
    assert left == {keys[0.0], newest}  # the entry not used since it was stored went
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.name.startswith("."))
    assert total <= cap


def test_staging_left_by_a_killed_writer_is_removed_unless_being_written(inputs, tmp_path):
    root = tmp_path / "cache"
    dead, alive = "a" * 64, "b" * 64
    for key in (dead, alive):
        (root / key[:2] / f".tmp-{key}-x1").mkdir(parents=True)
        (root / key[:2] / f".tmp-{key}-x1" / "Y.npy").write_bytes(b"partial")
    with open(cache._lock_path(root / alive[:2] / alive), "a") as writer:
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        cache.cached_load(inputs, DataConfig(), root, _load(inputs, DataConfig())[0], max_bytes=10**9)
    assert not (root / dead[:2] / f".tmp-{dead}-x1").exists()
    assert (root / alive[:2] / f".tmp-{alive}-x1" / "Y.npy").is_file()


def test_entry_larger_than_the_cap_is_not_stored(inputs, tmp_path):
    settings = DataConfig()
    cache.cached_load(inputs, settings, tmp_path / "cache", _load(inputs, settings)[0], max_bytes=100)
    assert not [p for p in (tmp_path / "cache").rglob("*.npy")]


def test_entry_being_written_by_another_run_is_not_written_twice(inputs, tmp_path):
    settings = DataConfig()
    key = cache.cache_key(inputs, settings)[0]
    entry = tmp_path / "cache" / key[:2] / key
    entry.parent.mkdir(parents=True)
    with open(cache._lock_path(entry), "a") as holder:  # another process's lock (flock: per open file)
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        data, outcome = cache.cached_load(inputs, settings, tmp_path / "cache", _load(inputs, settings)[0])
    assert outcome == "miss" and data.n_maps == 6
    assert not entry.exists()
    assert cache.cached_load(inputs, settings, tmp_path / "cache", _load(inputs, settings)[0])[1] == "miss"
    assert entry.is_dir()


def test_cache_directory_follows_the_output_root(tmp_path):
    root = tmp_path / "out"
    assert cache.cache_directory(None, str(root), root / "a" / "b") == root.resolve() / ".cache" / "data"
    assert cache.cache_directory(None, str(root), tmp_path / "elsewhere") is None
    assert cache.cache_directory(None, str(root), root) is None  # never inside the run directory itself
    assert cache.cache_directory(str(tmp_path / "c"), str(root), tmp_path / "x") == (tmp_path / "c").resolve() / "data"


ANALYSIS = ["report=false", "correction=[fdr]", "design.formula=1 + age", "contrasts=[{name:age,expr:age}]"]


def test_run_outside_the_output_root_leaves_no_cache_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_analysis(tmp_path / "elsewhere" / "run", ANALYSIS + ["cache_dir=null"])
    manifest = json.loads((tmp_path / "elsewhere" / "run" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["data_cache"] == "off"
    assert not (tmp_path / "experiments").exists()
    inside = tmp_path / "out" / "study" / "run"
    run_analysis(inside, ANALYSIS + ["cache_dir=null", f"output_root={tmp_path / 'out'}"])
    assert json.loads((inside / "manifest.json").read_text())["data_cache"] == "miss"
    assert list((tmp_path / "out" / ".cache" / "data").glob("??/*/Y.npy"))


def test_tampered_entry_does_not_change_the_results_of_a_run(tmp_path):
    """Reproduction 8: rows of a cache entry reordered; the run must detect it and match a run without the cache."""
    cache_dir = tmp_path / "cache"
    run_analysis(tmp_path / "first", ANALYSIS + [f"cache_dir={cache_dir}"])
    (entry,) = [p.parent for p in cache_dir.rglob("Y.npy")]
    Y = np.load(entry / "Y.npy")
    np.save(entry / "Y.npy", Y[np.random.default_rng(1).permutation(len(Y))])
    run_analysis(tmp_path / "second", ANALYSIS + [f"cache_dir={cache_dir}"])
    run_analysis(tmp_path / "plain", ANALYSIS + ["cache=false"])

    def outputs(run: Path) -> dict[str, str]:
        manifest = json.loads((run / "manifest.json").read_text())
        return manifest["data_cache"], {e["path"]: e["sha256"] for e in manifest["outputs"] if e["kind"] != "config"}

    cached, plain = outputs(tmp_path / "second"), outputs(tmp_path / "plain")
    assert cached[0] == "miss" and plain[0] == "off"
    assert cached[1] == plain[1]
    np.testing.assert_array_equal(np.load(entry / "Y.npy"), Y)  # rebuilt in the table's order


def test_cache_cap_must_be_positive():
    from conftest import compose
    from runner.config import build_settings
    from runner.errors import RunnerError

    with pytest.raises(RunnerError, match="cache_max_gb must be > 0"):
        build_settings(compose(["cache_max_gb=0"]))


def test_a_miss_goes_on_from_the_stored_entry_when_the_data_are_memory_mapped(inputs, tmp_path):
    """The entry is the study's store: a loaded memory map (over the budget) is swapped for the entry's file, which
    workers can map by name; in-memory data stay in memory unless asked (map_stored)."""
    settings = DataConfig()

    def mapped_load():
        return load_group_data(inputs, settings, memory_budget_bytes=1, scratch_dir=tmp_path)

    data, outcome = cache.cached_load(inputs, settings, tmp_path / "cache", mapped_load)
    assert outcome == "miss" and isinstance(data.Y, np.memmap)
    assert Path(data.Y.filename) == _entry(tmp_path / "cache") / "Y.npy" and not data.Y.flags.writeable
    np.testing.assert_array_equal(np.asarray(data.Y), load_group_data(inputs, settings).Y)
    in_memory, _ = cache.cached_load(inputs, DataConfig(smoothing_fwhm=4.0), tmp_path / "cache2",
                                     _load(inputs, DataConfig(smoothing_fwhm=4.0))[0])
    assert not isinstance(in_memory.Y, np.memmap)
    asked, _ = cache.cached_load(inputs, DataConfig(smoothing_fwhm=4.0), tmp_path / "cache3",
                                 _load(inputs, DataConfig(smoothing_fwhm=4.0))[0], map_stored=True)
    assert isinstance(asked.Y, np.memmap) and Path(asked.Y.filename).is_relative_to(tmp_path / "cache3")
    np.testing.assert_array_equal(np.asarray(asked.Y), in_memory.Y)


def test_a_second_run_reads_the_store_without_decoding_any_map_and_writes_the_same_files(tmp_path, monkeypatch):
    """Reused across runs (and sweep jobs) through the data cache: model.fit=sufficient over a memory-mapped store."""
    from runner.data import loader

    cache_dir = tmp_path / "cache"
    overrides = ANALYSIS + [f"cache_dir={cache_dir}", "model.fit=sufficient", "model.batch_maps=8",
                            "memory_budget_gb=0.01"]
    run_analysis(tmp_path / "first", overrides)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a map was decoded again")

    monkeypatch.setattr(loader, "read_volume", no_decoding)
    monkeypatch.setattr(loader, "iter_volumes", no_decoding)
    run_analysis(tmp_path / "second", overrides)

    def record(run: Path) -> tuple[str, dict[str, str]]:
        manifest = json.loads((run / "manifest.json").read_text())
        return manifest["data_cache"], {e["path"]: e["sha256"] for e in manifest["outputs"]}

    (first, first_files), (second, second_files) = record(tmp_path / "first"), record(tmp_path / "second")
    assert (first, second) == ("miss", "hit")
    assert first_files == second_files and any("stat-t" in path for path in first_files)
    log = (tmp_path / "first" / "run.log").read_text()
    assert "memory-mapped" in log and "fitting OLS from sufficient statistics" in log
