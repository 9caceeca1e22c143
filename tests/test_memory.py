"""Memory-bounded loading and fitting: a memory-mapped study gives the same numbers as one held in memory, 4D series
are streamed once, and the chunk loop keeps its order (bounded and cancellable: test_execution.py).
(benchmarks/bench_memory.py measures the memory.)"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from runner import chunks, glm, model
from runner.config import DataConfig
from runner.contrasts import build_contrast
from runner.data.loader import RowWriter, load_group_data
from runner.data.sources import apply_query, from_4d, from_table
from test_bad_inputs import AFFINE, SHAPE, brain_mask, save_map

TINY_BUDGET = 1024  # bytes: everything goes to disk, chunks are as narrow as the floor allows


@pytest.fixture
def maps(tmp_path):
    """Eight maps, one NaN voxel, one map on a shifted grid (resampled)."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(8):
        values = np.where(brain_mask(), rng.normal(1.0, 1.0, SHAPE), 0.0)
        affine = AFFINE.copy()
        if i == 5:
            values[4, 5, 4] = np.nan
        if i == 6:
            affine[:3, 3] += [1.5, 0, 0]
        save_map(tmp_path / f"m{i}.nii.gz", values, affine)
        rows.append({"path": f"m{i}.nii.gz", "age": 20 + i})
    pd.DataFrame(rows).to_csv(tmp_path / "table.tsv", sep="\t", index=False)
    save_map(tmp_path / "mask.nii.gz", brain_mask().astype(float))
    return tmp_path


@pytest.mark.parametrize("explicit_mask", [False, True])
@pytest.mark.parametrize("fwhm", [None, 6.0])
def test_memory_mapped_data_equal_the_data_in_memory(maps, tmp_path, explicit_mask, fwhm):
    inputs = from_table(maps / "table.tsv")
    settings = DataConfig(table=str(maps / "table.tsv"), smoothing_fwhm=fwhm,
                          mask=str(maps / "mask.nii.gz") if explicit_mask else None)
    in_memory = load_group_data(inputs, settings, n_jobs=2)
    on_disk = load_group_data(inputs, settings, n_jobs=2, memory_budget_bytes=TINY_BUDGET, scratch_dir=tmp_path)
    assert not isinstance(in_memory.Y, np.memmap) and isinstance(on_disk.Y, np.memmap)
    assert in_memory.Y.flags.c_contiguous and on_disk.Y.flags.c_contiguous  # one layout: the same BLAS rounding
    np.testing.assert_array_equal(in_memory.mask, on_disk.mask)
    np.testing.assert_array_equal(in_memory.Y, np.asarray(on_disk.Y))
    assert in_memory.notes == on_disk.notes and any("excluded 1" in note for note in on_disk.notes)
    assert in_memory.input_sha256 == on_disk.input_sha256
    assert not list(tmp_path.glob(".tmp-*"))  # the file is unlinked once mapped


def test_volumes_of_a_4d_series_are_streamed_once_and_equal_the_3d_files(maps, tmp_path, monkeypatch):
    volumes = [np.asarray(nib.load(maps / f"m{i}.nii.gz").dataobj) for i in (0, 1, 2, 3)]
    for suffix in (".nii.gz", ".nii"):
        series = save_map(tmp_path / f"series{suffix}", np.stack(volumes, axis=-1))
        table = pd.DataFrame({"age": [1, 2, 3, 4]})
        table.to_csv(tmp_path / "volumes.tsv", sep="\t", index=False)
        inputs = apply_query(from_4d(series, tmp_path / "volumes.tsv", 4), "age != 2")
        opened = []
        import gzip

        original = gzip.open
        monkeypatch.setattr(gzip, "open", lambda *a, **k: opened.append(a[0]) or original(*a, **k))
        data = load_group_data(inputs, DataConfig(image_4d=str(series), resample=False), n_jobs=2)
        monkeypatch.setattr(gzip, "open", original)
        expected = np.stack([volumes[i] for i in (0, 2, 3)])
        np.testing.assert_array_equal(data.Y, expected.reshape(3, -1)[:, data.mask.ravel()])
        if suffix == ".nii.gz":  # header check, then one stream per pass (scan, kept in memory: no second pass)
            assert len([p for p in opened if str(p) == str(series)]) <= 3


def test_fit_from_a_memory_map_equals_the_fit_in_memory(tmp_path):
    rng = np.random.default_rng(4)
    Y = rng.normal(size=(40, 70_000))
    X = np.column_stack([np.ones(40), rng.normal(size=40)])
    contrasts = [build_contrast("slope", "x", ["Intercept", "x"]), build_contrast("both", [[1, 0], [0, 1]],
                                                                                  ["Intercept", "x"])]
    np.save(tmp_path / "Y.npy", Y)
    mapped = np.load(tmp_path / "Y.npy", mmap_mode="r")
    in_memory = model.fit_contrasts(Y, X, contrasts, n_jobs=2)
    from_disk = model.fit_contrasts(mapped, X, contrasts, memory_budget_bytes=2 * 1024**3, n_jobs=2)
    narrow = model.fit_contrasts(mapped, X, contrasts, memory_budget_bytes=TINY_BUDGET, n_jobs=1)
    for name in ("slope", "both"):
        for field in ("effect", "variance", "stat", "p", "z"):
            np.testing.assert_array_equal(getattr(in_memory[name], field), getattr(from_disk[name], field))
            np.testing.assert_allclose(getattr(in_memory[name], field), getattr(narrow[name], field), rtol=1e-12,
                                       atol=1e-14)
    # one product over all voxels, with BLAS on its own threads: the same up to rounding (z of order 1; near z = 0
    # a rounding of 1e-16 is a large relative difference)
    whole = glm.t_contrast(glm.ols_fit(Y, X), [0, 1])
    np.testing.assert_allclose(whole.z, in_memory["slope"].z, rtol=1e-12, atol=1e-14)


def test_chunk_widths_are_capped_aligned_and_within_the_budget():
    assert chunks.chunk_size_for(30, 10**6, None) == chunks.MAX_CHUNK_VOXELS
    size = chunks.chunk_size_for(1000, 10**6, 1e9, copies=5)
    assert size % chunks.CHUNK_ALIGN == 0 and size * 1000 * 8 * 5 <= 1e9
    assert chunks.chunk_size_for(10**6, 50, 1.0) == 1  # a budget below one voxel still makes progress
    assert chunks.chunk_size_for(3, 500, None) == 500
    assert chunks.memory_budget_bytes(2) == 2 * 1024**3
    assert 0 < chunks.memory_budget_bytes(None) <= chunks.available_memory_bytes()


def test_ordered_map_and_reduce_chunks_keep_order():
    """Both run on the executor (look-ahead and errors: test_execution.py)."""
    assert list(chunks.ordered_map(lambda x: x + 1, range(5), n_jobs=3)) == [1, 2, 3, 4, 5]
    assert chunks.reduce_chunks(lambda s: np.arange(s.start, s.stop).max(), chunks.chunk_slices(100, 7),
                                np.maximum, n_jobs=2) == 99


def test_row_writer_leaves_nothing_when_discarded(tmp_path):
    rows = RowWriter((3, 5), np.float32, tmp_path)
    rows.write(0, np.ones(5))
    with pytest.raises(ValueError, match="in order"):
        rows.write(2, np.ones(5))
    rows.discard()
    assert list(tmp_path.iterdir()) == []
    rows = RowWriter((2, 4), np.float64, tmp_path)
    rows.write(0, np.arange(4))
    rows.write(1, np.arange(4) + 4)
    Y = rows.finish()
    np.testing.assert_array_equal(Y, np.arange(8).reshape(2, 4))
    assert isinstance(Y, np.memmap) and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocks_of_a_store_are_read_from_its_file_and_equal_slices(tmp_path, dtype):
    """read_block copies only the bytes asked for (positioned reads, not the mapping) and equals slicing."""
    from runner.chunks import read_block

    values = np.random.default_rng(1).standard_normal((13, 37)).astype(dtype)
    np.save(tmp_path / "Y.npy", values)
    store = np.load(tmp_path / "Y.npy", mmap_mode="r")
    for rows, columns in [(slice(None), slice(5, 17)), (slice(2, 9), slice(0, 37)), (slice(None), slice(30, 99)),
                          (slice(4, 4), slice(None)), (slice(0, 13, 2), slice(1, 8))]:
        block = read_block(store, rows, columns)
        assert not isinstance(block, np.memmap) and block.flags.c_contiguous and block.dtype == dtype
        np.testing.assert_array_equal(block, values[rows, columns])
    view = read_block(values, slice(None), slice(5, 17))
    assert view.base is values  # arrays in memory are sliced, not copied


@pytest.mark.slow  # three runs of the demo with 200 max-T permutations: about 8 s
def test_a_run_from_the_stored_entry_writes_the_bytes_of_a_run_in_memory(tmp_path):
    """The fit and max-T read a store by blocks (contiguous copies) and the data in memory by views: same bytes."""
    import json

    from conftest import run_analysis

    # one-sample sign-flips: no nuisance, so the max-T GEMMs read the data themselves (a view or a block)
    overrides = ["+experiment=one_sample_permutation", "report=false", "correction.maxt.n_permutations=200"]
    runs = {"memory": ["cache=false"], "miss": [f"cache_dir={tmp_path / 'cache'}"],
            "store": [f"cache_dir={tmp_path / 'cache'}"]}
    files = {}
    for name, extra in runs.items():
        run_analysis(tmp_path / name, overrides + extra)
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        files[name] = {e["path"]: e["sha256"] for e in manifest["outputs"] if e["kind"] != "config"}
        assert manifest["data_cache"] == {"memory": "off", "miss": "miss", "store": "hit"}[name]
    assert files["store"] == files["memory"] and any("desc-maxt" in path for path in files["memory"])
