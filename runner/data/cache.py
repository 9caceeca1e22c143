"""Content-addressed cache of loaded group data, so jobs of a sweep that share inputs decode them once.

The key is the sha256 of the inputs' bytes plus every setting that changes the loaded array (mask, masking rule,
smoothing, resampling, NaN policy, dtype). An entry is a folder ``<cache>/<key[:2]>/<key>/`` holding ``Y.npy``,
``mask.npy``, ``affine.npy``, ``meta.json`` and, written last, a seal (``complete``) with the sha256 of each of them.

Integrity: a hit re-hashes the entry's files against its seal and checks the arrays' shapes against the inputs, so
an entry whose bytes changed (rows reordered, a truncated or edited file, a bad seal) is a miss: it is logged,
loaded again and rebuilt. ``Y.npy`` is hashed while it is written and read once on a hit (about 1 s per GB of
loaded data, far less than decoding the maps again). The seal detects corruption and edits of the arrays; it is not
a signature (someone who rewrites both an array and the seal is not detected): ``python -m runner.verify`` re-runs
without the cache for that reason.

Writers take a lock per entry (a second writer of the same entry skips storing it) and stage the entry in a
temporary folder renamed into place, so readers never see a partial entry (the staging folder of a writer that was
killed is removed by a later store, once no one holds that entry's lock). The cache is capped (``cache_max_gb``):
after each store, the least recently used entries (by the access stamp a hit touches) are evicted until the cache
fits. An entry larger than the cap is not stored.

An entry is also the study's on-disk store for large analyses: ``Y.npy`` (maps x voxels, C order) is what tasks
read by block (:func:`runner.chunks.read_block`: positioned reads, so a process holds its block, not the file),
locally or on Dask workers that map it by name over a shared file system. Not zarr (on PyPI, an optional extra it
would be): a chunked, compressed store would pay off on object storage or slow network file systems, which the
runner does not target yet; noise-like float maps compress little, and one sealed ``.npy`` file keeps one format
for the cache, the loader's scratch and the store.

Where the cache lives is decided by :func:`cache_directory`: ``cache_dir`` when set; else ``<output_root>/.cache``
when the run directory lies inside ``output_root``; else nowhere (the cache is off for that run, with a log line),
so a run pointed at a folder of its own never creates a cache beside something the user did not ask for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from runner.config import DataConfig
from runner.data.images import read_header
from runner.data.loader import GroupData, save_rows
from runner.data.sources import InputSet
from runner.errors import RunnerError
from runner.outputs.atomic import sha256_file
from runner.rundir import exclusive_lock

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: entries carry a seal with the sha256 of their files
_KEY_SETTINGS = ("mask", "mask_strategy", "mask_threshold", "smoothing_fwhm", "resample", "nan_policy", "dtype")
SEAL = "complete"  # written last: JSON {version, key, sha256: {file: hex}}
STAMP = "used"  # its mtime is the entry's last use (least-recently-used eviction)
ENTRY_FILES = ("Y.npy", "mask.npy", "affine.npy", "meta.json")
TMP_PREFIX = ".tmp-"


def cache_directory(cache_dir: str | None, output_root: str, run_dir: Path | None) -> Path | None:
    """The data cache folder of a run, or None when the run gets no cache.

    ``cache_dir`` when set; else ``<output_root>/.cache/data`` when ``run_dir`` lies inside ``output_root``
    (relative paths are relative to the working directory); else None, logged: a run directory outside the output
    root (``hydra.run.dir=/elsewhere``) must not leave a cache under the working directory.
    """
    if cache_dir:
        return Path(cache_dir).expanduser().resolve() / "data"
    root = Path(output_root).expanduser().resolve()
    if run_dir is not None:
        run_dir = Path(run_dir).expanduser().resolve()
        if run_dir != root and run_dir.is_relative_to(root):
            return root / ".cache" / "data"
    log.info("data cache off: the run directory %s is outside output_root %s (set cache_dir to share loaded data "
             "between runs)", run_dir, root)
    return None


def cache_key(inputs: InputSet, settings: DataConfig) -> tuple[str, dict[str, str]]:
    """Key of the loaded data, and the sha256 of every input file (read once here).

    Headers are checked first, so a missing or broken file gets its own clear error rather than a hashing failure.
    """
    if settings.mask:
        read_header(Path(settings.mask), what="data.mask")
    for path in dict.fromkeys(ref.path for ref in inputs.images):
        read_header(path)
    hashes: dict[str, str] = {}
    for ref in inputs.images:
        if str(ref.path) not in hashes:
            hashes[str(ref.path)] = sha256_file(ref.path)
    description = {
        "version": CACHE_VERSION,
        "inputs": [[hashes[str(ref.path)], ref.volume] for ref in inputs.images],
        "mask_sha256": sha256_file(Path(settings.mask)) if settings.mask else None,
        "settings": {k: v for k, v in asdict(settings).items() if k in _KEY_SETTINGS and k != "mask"},
    }
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return key, hashes


def cached_load(inputs: InputSet, settings: DataConfig, cache_dir: Path, load: Callable[[], GroupData],
                max_bytes: int | None = None, map_stored: bool = False) -> tuple[GroupData, str]:
    """Return the group data from the cache when a sound entry is present (memory-mapped), else load and store it.

    The entry is the study's on-disk store: ``Y.npy`` (maps x voxels, C order), read by voxel chunk (or block of
    maps) by whoever maps it. On a miss whose data were memory-mapped by the loader (larger than half the memory
    budget), or when ``map_stored``, the run goes on with the stored entry mapped read-only rather than the loaded
    array: workers then map the entry by its file name and read only their blocks (the loader's scratch file has no
    name to share), and the scratch copy is released.

    Parameters
    ----------
    inputs, settings : what is loaded and how (they make the key).
    cache_dir : the cache folder (see :func:`cache_directory`).
    load : loads the data when the cache cannot give it.
    max_bytes : size cap of the cache; least recently used entries are evicted beyond it (None: no cap).
    map_stored : continue from the stored entry, memory-mapped, even when the loaded data are in memory.

    Returns
    -------
    The data and ``"hit"`` or ``"miss"`` (an unsound entry is a miss: logged, and rebuilt).
    """
    cache_dir = Path(cache_dir)
    key, hashes = cache_key(inputs, settings)
    entry = cache_dir / key[:2] / key
    if entry.exists():
        try:
            data = read_entry(entry, key, inputs, hashes, settings)
        except Exception as error:  # any fault of an entry (bytes, json, shapes) is a miss, never a traceback
            log.warning("data cache entry %s is not sound (%s); loading the inputs again and rebuilding it",
                        key[:12], _one_line(error))
        else:
            _touch(entry)
            log.info("data cache hit %s: reused the loaded data of %d map(s) without decoding them", key[:12],
                     len(inputs.images))
            return data, "hit"
    data = load()
    if store_entry(entry, key, data, max_bytes) and (map_stored or isinstance(data.Y, np.memmap)):
        try:
            data = dataclasses.replace(data, Y=np.load(entry / "Y.npy", mmap_mode="r", allow_pickle=False))
        except (OSError, ValueError) as error:  # evicted meanwhile: the loaded data serve as well
            log.warning("data cache entry %s could not be mapped (%s); using the loaded data", key[:12],
                        _one_line(error))
    return data, "miss"


def read_entry(entry: Path, key: str, inputs: InputSet, hashes: dict[str, str], settings: DataConfig) -> GroupData:
    """The entry's data after checking its files against the seal and its arrays against the inputs.

    Raises ``ValueError`` (or ``OSError``) naming the first fault.
    """
    seal = json.loads((entry / SEAL).read_text(encoding="utf-8"))
    if not isinstance(seal, dict) or seal.get("version") != CACHE_VERSION or seal.get("key") != key:
        raise ValueError("its seal is from another cache version or key")
    recorded = seal.get("sha256") or {}
    for name in ENTRY_FILES:
        if recorded.get(name) != sha256_file(entry / name):
            raise ValueError(f"{name} does not match the sha256 in its seal")
    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    Y = np.load(entry / "Y.npy", mmap_mode="r", allow_pickle=False)
    mask = np.load(entry / "mask.npy", allow_pickle=False)
    affine = np.load(entry / "affine.npy", allow_pickle=False)
    if Y.ndim != 2 or Y.shape[0] != len(inputs.images) or Y.dtype != np.dtype(settings.dtype):
        raise ValueError(f"Y has shape {Y.shape} and dtype {Y.dtype}, {len(inputs.images)} row(s) of "
                         f"{settings.dtype} expected")
    if mask.ndim != 3 or mask.dtype != bool or int(mask.sum()) != Y.shape[1]:
        raise ValueError("its mask does not match the columns of Y")
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError("its affine is not a finite 4x4 matrix")
    notes = meta.get("notes", []) if isinstance(meta, dict) else None
    if not isinstance(notes, list):
        raise ValueError("meta.json has no list of notes")
    return GroupData(Y=Y, mask=mask, affine=affine, table=inputs.table, inputs=inputs.images,
                     input_sha256=hashes, notes=tuple(str(n) for n in notes))


def store_entry(entry: Path, key: str, data: GroupData, max_bytes: int | None = None) -> bool:
    """Store ``data`` as the entry ``key`` (replacing an unsound one), then evict beyond ``max_bytes``.

    Returns True when stored. Never raises for a cache problem: the run has its data and goes on.
    """
    size = int(data.Y.nbytes + data.mask.nbytes + data.affine.nbytes)
    if max_bytes is not None and size > max_bytes:
        log.info("data cache: the loaded data (%.3g GB) exceed cache_max_gb; not stored", size / 1024**3)
        return False
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(_lock_path(entry), f"data cache entry {key[:12]}"):
            _write_entry(entry, key, data)
    except RunnerError:  # another job is storing the same entry right now
        log.info("data cache: another run is storing entry %s; not storing it twice", key[:12])
        return False
    except OSError as error:
        log.warning("could not store the data cache entry %s: %s", key[:12], _one_line(error))
        return False
    log.info("data cache miss %s: stored the loaded data for later jobs", key[:12])
    if max_bytes is not None:
        evict(entry.parent.parent, max_bytes, keep=entry)
    return True


def evict(cache_dir: Path, max_bytes: int, keep: Path | None = None) -> list[Path]:
    """Remove least recently used entries until the cache holds at most ``max_bytes``; returns those removed.

    ``keep`` (the entry just stored) and entries being written (locked) are never removed. Staging folders that a
    killed writer left behind (their entry is not locked) are removed first.
    """
    _remove_leftovers(Path(cache_dir))
    entries = []
    for folder in Path(cache_dir).glob("??/*"):
        if folder.is_dir() and not folder.name.startswith("."):
            entries.append((_last_used(folder), _folder_bytes(folder), folder))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, folder in sorted(entries, key=lambda item: item[0]):
        if total <= max_bytes:
            break
        if keep is not None and folder == keep:
            continue
        try:
            with exclusive_lock(_lock_path(folder), f"data cache entry {folder.name[:12]}"):
                _remove_entry(folder)
        except (RunnerError, OSError):
            continue
        total -= size
        removed.append(folder)
        log.info("data cache: evicted entry %s (least recently used) to stay within cache_max_gb", folder.name[:12])
    return removed


# -- internals ---------------------------------------------------------------------------------------------------
def _write_entry(entry: Path, key: str, data: GroupData) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{key}-", dir=entry.parent))
    try:
        hashes = {"Y.npy": save_rows(staging / "Y.npy", data.Y)}  # in blocks, hashed while written
        np.save(staging / "mask.npy", np.asarray(data.mask, dtype=bool))
        np.save(staging / "affine.npy", np.asarray(data.affine, dtype=np.float64))
        (staging / "meta.json").write_text(json.dumps({"notes": list(data.notes)}), encoding="utf-8")
        for name in ENTRY_FILES[1:]:
            hashes[name] = sha256_file(staging / name)
        (staging / SEAL).write_text(json.dumps({"version": CACHE_VERSION, "key": key, "sha256": hashes}),
                                    encoding="utf-8")
        (staging / STAMP).touch()
        if entry.exists():  # unsound (the reader found it so), or stored meanwhile: ours is as good
            _remove_entry(entry)
        os.rename(staging, entry)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _remove_entry(entry: Path) -> None:
    """Move the entry aside (one rename, so readers see it whole or not at all), then delete it."""
    doomed = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{entry.name}-old-", dir=entry.parent))
    os.rename(entry, doomed / entry.name)
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_leftovers(cache_dir: Path) -> None:
    """Delete ``.tmp-<key>-*`` folders whose entry nobody is writing (a writer killed mid-way left them)."""
    for folder in cache_dir.glob(f"??/{TMP_PREFIX}*"):
        key = folder.name[len(TMP_PREFIX):].split("-", 1)[0]
        if not folder.is_dir() or not key:
            continue
        try:
            with exclusive_lock(_lock_path(folder.parent / key), f"data cache entry {key[:12]}"):
                shutil.rmtree(folder, ignore_errors=True)
        except (RunnerError, OSError):
            continue


def _lock_path(entry: Path) -> Path:
    return entry.parent / f".{entry.name}.lock"


def _touch(entry: Path) -> None:
    try:
        (entry / STAMP).touch()
    except OSError:  # a read-only cache still serves hits; it just cannot record them
        pass


def _last_used(entry: Path) -> float:
    for name in (STAMP, SEAL):
        try:
            return (entry / name).stat().st_mtime
        except OSError:
            continue
    return 0.0


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.iterdir():
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def _one_line(error: BaseException) -> str:
    text = str(error).splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
