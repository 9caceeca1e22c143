"""Content-addressed cache of loaded group data, so jobs of a sweep that share inputs decode them once.

The key is the sha256 of the inputs' bytes plus every setting that changes the loaded array (mask, masking rule,
smoothing, resampling, NaN policy, dtype). Entries are written to a temporary folder and renamed into place, so
concurrent jobs never see a partial entry; the loser of a race discards its copy.
"""

from __future__ import annotations

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
from runner.outputs.atomic import sha256_file

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_KEY_SETTINGS = ("mask", "mask_strategy", "mask_threshold", "smoothing_fwhm", "resample", "nan_policy", "dtype")


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


def cached_load(inputs: InputSet, settings: DataConfig, cache_dir: Path,
                load: Callable[[], GroupData]) -> tuple[GroupData, str]:
    """Return the group data from the cache when present (memory-mapped), else load and store it.

    Returns the data and ``"hit"`` or ``"miss"``.
    """
    cache_dir = Path(cache_dir)
    key, hashes = cache_key(inputs, settings)
    entry = cache_dir / key[:2] / key
    if (entry / "complete").is_file():
        try:
            data = _read_entry(entry, inputs, hashes)
            log.info("data cache hit %s: reused the loaded data of %d map(s) without decoding them", key[:12],
                     len(inputs.images))
            return data, "hit"
        except (OSError, ValueError, KeyError) as error:
            log.warning("data cache entry %s is unreadable (%s); loading the inputs again", key[:12], error)
    data = load()
    try:
        _write_entry(entry, data)
        log.info("data cache miss %s: stored the loaded data for later jobs", key[:12])
    except OSError as error:
        log.warning("could not store the data cache entry %s: %s", key[:12], error)
    return data, "miss"


def _read_entry(entry: Path, inputs: InputSet, hashes: dict[str, str]) -> GroupData:
    meta = json.loads((entry / "meta.json").read_text())
    Y = np.load(entry / "Y.npy", mmap_mode="r")
    mask = np.load(entry / "mask.npy")
    affine = np.load(entry / "affine.npy")
    return GroupData(Y=Y, mask=mask, affine=affine, table=inputs.table, inputs=inputs.images,
                     input_sha256=hashes, notes=tuple(meta.get("notes", [])))


def _write_entry(entry: Path, data: GroupData) -> None:
    if (entry / "complete").is_file():
        return
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    try:
        save_rows(staging / "Y.npy", data.Y)  # in blocks: a memory-mapped Y is never held whole
        np.save(staging / "mask.npy", data.mask)
        np.save(staging / "affine.npy", data.affine)
        (staging / "meta.json").write_text(json.dumps({"notes": list(data.notes)}))
        (staging / "complete").write_text("")
        try:
            os.rename(staging, entry)
        except OSError:
            if not (entry / "complete").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
