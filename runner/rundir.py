"""What may be touched in a run folder, and by whom.

The runner writes only into a folder it created or one whose ``manifest.json`` (or journal) is its own; it never
writes into the working directory, the home folder, ``/`` or a folder holding the inputs. One run at a time holds a
folder (an exclusive lock). A run writes into a hidden staging folder and replaces the previous record only when it
has finished; it removes only files its own journal names (never by pattern, never into folders it did not make).

Layout of a run folder::

    manifest.json, outputs, run.log   the current record (the journal names each of these files)
    .runner.lock                      the lock (pid, host and start time of the holder while one runs)
    .runner-journal                   every path the runner put here, written before the path is created
    .runner-staging/                  the run in progress: its outputs, manifest, run.log and memory-mapped scratch
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runner.errors import RunnerError

log = logging.getLogger("runner")

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "second-level-runner.manifest"
MANIFEST_FORMAT_VERSION = 2  # 2: records written through a staging folder, with format fields and input_files
LOG_NAME = "run.log"
LOCK_NAME = ".runner.lock"
JOURNAL_NAME = ".runner-journal"
JOURNAL_HEADER = "# second-level-runner journal 1: paths this runner created here; it removes only these"
STAGING_NAME = ".runner-staging"
OWN_NAMES = frozenset({LOCK_NAME, JOURNAL_NAME, STAGING_NAME, JOURNAL_NAME + ".tmp"})
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # as Hydra's job logging formats the console
ADVICE = "use an empty folder or a new hydra.run.dir"


class RunDirRefused(RunnerError):
    """The run folder may not be used (its location, its contents or another run holding it): nothing was written."""


# -- the record -------------------------------------------------------------------------------------------------
def is_own_manifest(record: Any) -> bool:
    """True when a parsed manifest was written by this runner (its format field says so)."""
    return isinstance(record, dict) and record.get("format") == MANIFEST_FORMAT


def read_own_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The folder's manifest when it is this runner's, else None (absent, unreadable or another program's)."""
    path = Path(run_dir) / MANIFEST_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return record if is_own_manifest(record) else None


def record_names(record: dict[str, Any] | None) -> list[str]:
    """Files of a record: its listed outputs, its manifest and its run.log."""
    if not record:
        return []
    names = [str(entry.get("path", "")) for entry in record.get("outputs") or [] if isinstance(entry, dict)]
    return [n for n in dict.fromkeys(names + [MANIFEST_NAME, LOG_NAME]) if _plain_name(n)]


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\x00" not in name


# -- the policy -------------------------------------------------------------------------------------------------
def check_location(run_dir: Path, inputs: Iterable[Path | str] = ()) -> None:
    """Refuse the file-system root, the home folder, the working directory (``.``, ``''``), any folder holding one
    of them, and a folder that is or holds an input (image, table, mask, design matrix)."""
    real = Path(run_dir).resolve()
    if real == Path(real.anchor):
        raise RunDirRefused(f"the run directory {run_dir} is the file-system root; {ADVICE}")
    try:
        home: Path | None = Path.home().resolve()
    except (RuntimeError, KeyError):
        home = None
    if home is not None and (real == home or real in home.parents):
        raise RunDirRefused(f"the run directory {run_dir} is the home folder (or holds it); {ADVICE}")
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise RunDirRefused(f"the run directory {run_dir} is the working directory (or holds it); {ADVICE}, "
                            "e.g. hydra.run.dir=results/run1")
    for item in inputs:
        path = Path(item).resolve()
        if path == real or real in path.parents:
            raise RunDirRefused(f"the run directory {run_dir} holds the input {item}; {ADVICE} outside the inputs")


def check_ownership(run_dir: Path) -> None:
    """Refuse an existing folder that is not empty and holds neither this runner's manifest nor its journal."""
    run_dir = Path(run_dir)
    if not run_dir.exists() and not run_dir.is_symlink():
        return
    if not run_dir.is_dir():
        raise RunDirRefused(f"the run directory {run_dir} is a file, not a folder; choose another hydra.run.dir")
    try:
        foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in OWN_NAMES)
    except OSError as error:
        raise RunDirRefused(f"cannot list the run directory {run_dir} ({error.strerror}); {ADVICE}") from None
    if not foreign or read_own_manifest(run_dir) is not None or Journal(run_dir).is_own():
        return
    shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    raise RunDirRefused(f"the run directory {run_dir} is not empty ({shown}) and holds no manifest.json of this "
                        f"runner: it writes only into folders it made; {ADVICE}")


# -- the lock ---------------------------------------------------------------------------------------------------
@contextmanager
def exclusive_lock(path: Path, what: str, advice: str = "wait for it to finish",
                   wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block; one holder at a time.

    The holder's pid, host and start time are written into the file, so a second process is refused with one line
    naming the holder (after ``wait_seconds`` of retrying). The kernel releases the lock when its holder dies, even
    by SIGKILL; the identity left in the file then marks a stale lock, which is taken over and logged.

    Parameters
    ----------
    path : lock file (kept afterwards, emptied on release: removing it would let two processes lock two files).
    what : what the lock protects, for messages ("run directory D", "data cache entry E").
    advice : what the refused caller should do.
    wait_seconds : how long to retry before refusing (0: fail fast).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as error:
        raise RunDirRefused(f"cannot create the lock file {path} ({error.strerror}); {advice}") from None
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise RunDirRefused(f"cannot lock {path} ({error.strerror}); {advice}") from None
                if time.monotonic() >= deadline:
                    raise RunDirRefused(f"{what} is in use by {_describe(_read_holder(fd))}; {advice}") from None
                time.sleep(0.1)
        stale = _read_holder(fd)
        if stale:
            log.warning("took over a stale lock on %s left by %s (it no longer holds it)", what, _describe(stale))
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # an empty file: released cleanly
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "another process"
    return f"pid {holder['pid']} on {holder.get('host', '?')} since {holder.get('started', '?')}"


# -- the journal ------------------------------------------------------------------------------------------------
class Journal:
    """``.runner-journal``: the paths (relative, one per line) this runner created in a run folder. A path is
    journaled before it is created, so whatever a killed run leaves is named here and nowhere else."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / JOURNAL_NAME

    def is_own(self) -> bool:
        try:
            with open(self.path, encoding="utf-8") as handle:
                return handle.readline().rstrip("\n") == JOURNAL_HEADER
        except (OSError, UnicodeDecodeError):
            return False

    def names(self) -> list[str]:
        if not self.is_own():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()[1:]
        return [n for n in dict.fromkeys(lines) if _plain_name(n)]

    def add(self, *names: str) -> None:
        """Append names (durably: they must be on disk before the paths they name)."""
        new = not self.is_own()
        with open(self.path, "w" if new else "a", encoding="utf-8") as handle:
            handle.write((JOURNAL_HEADER + "\n" if new else "") + "".join(n + "\n" for n in names))
            handle.flush()
            os.fsync(handle.fileno())

    def rewrite(self, names: Iterable[str]) -> None:
        """Replace the list (atomically: a temporary file of a fixed name, then a rename)."""
        tmp = self.path.with_name(JOURNAL_NAME + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(JOURNAL_HEADER + "\n" + "".join(n + "\n" for n in dict.fromkeys(names)))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


# -- the folder of one run --------------------------------------------------------------------------------------
class RunFolder:
    """A run folder held under its lock: the current record, the staging folder, commit and discard."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.journal = Journal(self.run_dir)
        self.record = read_own_manifest(self.run_dir)
        self.staging = self.run_dir / STAGING_NAME

    @property
    def holds_complete_run(self) -> bool:
        return bool(self.record) and self.record.get("status") == "complete"

    def remove_leftovers(self) -> int:
        """Remove what a killed run left: the staging folder and journaled files outside the current record."""
        keep = set(record_names(self.record))
        removed = 0
        for name in self.journal.names():
            if name not in keep:
                removed += self._remove(name)
        self.journal.rewrite(n for n in self.journal.names() if n in keep and (self.run_dir / n).exists())
        return removed

    def stage(self) -> Path:
        """A new, empty staging folder (journaled before it is made)."""
        self.journal.add(STAGING_NAME)
        self._remove(STAGING_NAME)
        self.staging.mkdir()
        return self.staging

    def commit(self) -> None:
        """Make the staged record the folder's record: the previous record's files go, the staged files move in,
        its manifest last. Between the two the folder has no manifest (never one that lies); the journal names every
        file, so a run killed in between is cleaned by the next one. A file of the same name as a staged one that the
        journal does not name (the user's) is never replaced: RunDirRefused, before anything changed."""
        staged = read_own_manifest(self.staging)
        if staged is None:
            raise RuntimeError(f"no manifest in {self.staging} to commit")
        names = [n for n in record_names(staged)
                 if n != MANIFEST_NAME and (n != LOG_NAME or (self.staging / n).is_file())]
        missing = [n for n in names if not (self.staging / n).is_file()]
        if missing:  # a record must never list a file it does not have
            raise RuntimeError(f"the staged record lists {missing[0]}, which is not in {self.staging}")
        previous = [n for n in self.journal.names() if n != STAGING_NAME]
        for name in names + [MANIFEST_NAME]:
            target = self.run_dir / name
            if name not in previous and (target.exists() or target.is_symlink()):
                raise RunDirRefused(f"the run directory {self.run_dir} holds {name}, which this runner did not "
                                    f"write; move it away or choose another hydra.run.dir")
        self.journal.add(*names, MANIFEST_NAME)
        if MANIFEST_NAME in previous:
            self._remove(MANIFEST_NAME)  # first: from here on no record claims anything
        for name in previous:
            if name != MANIFEST_NAME and name not in names:
                self._remove(name)
        for name in names:
            os.replace(self.staging / name, self.run_dir / name)
        os.replace(self.staging / MANIFEST_NAME, self.run_dir / MANIFEST_NAME)
        self._remove(STAGING_NAME)
        self.journal.rewrite(names + [MANIFEST_NAME])
        self.record = staged

    def discard(self) -> None:
        """Drop the staging folder; the folder's record stays as it was."""
        self._remove(STAGING_NAME)
        self.journal.rewrite(n for n in self.journal.names() if n != STAGING_NAME)

    def settle_failure(self) -> None:
        """After a run failed: keep a complete record untouched (drop the attempt), otherwise commit the attempt's
        failed/interrupted record so the folder says what happened."""
        staged = read_own_manifest(self.staging)
        if self.holds_complete_run or not staged or staged.get("status") not in ("failed", "interrupted"):
            self.discard()
            return
        try:
            self.commit()
        except RunDirRefused:  # a file of the user's has the name of a staged one: leave the folder as it was
            self.discard()

    def _remove(self, name: str) -> int:
        """Remove one journaled path: the staging folder (ours, recursively) or a plain file (never a symlink's
        target, never a folder we did not make)."""
        path = self.run_dir / name
        if name == STAGING_NAME and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            return 1
        if (path.is_file() or path.is_symlink()) and name not in OWN_NAMES:
            path.unlink()
            return 1
        return 0


@contextmanager
def open_run_dir(run_dir: Path, inputs: Iterable[Path | str] = ()) -> Iterator[RunFolder]:
    """Check the folder against the policy, create it if needed, hold its lock and remove a killed run's leftovers.

    Raises :class:`RunDirRefused` (one line, nothing written) when the folder may not be used.
    """
    run_dir = Path(run_dir).absolute()
    check_location(run_dir, inputs)
    check_ownership(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirRefused(f"cannot create the run directory {run_dir} ({error.strerror}); "
                            "choose another hydra.run.dir") from None
    with exclusive_lock(run_dir / LOCK_NAME, f"the run directory {run_dir}",
                        advice="wait for that run to finish or choose another hydra.run.dir"):
        check_ownership(run_dir)  # again: another run may have written here before we held the lock
        folder = RunFolder(run_dir)
        removed = folder.remove_leftovers()
        if removed:
            log.info("removed %d path(s) an interrupted run left in %s (named by its journal)", removed, run_dir)
        yield folder


# -- run.log ----------------------------------------------------------------------------------------------------
@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Log the run (the root logger, INFO and above) into ``path`` for the block; closed on exit."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    root, ours = logging.getLogger(), logging.getLogger("runner")
    level = ours.level
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)  # run.log keeps what a reader needs even when nobody configured logging
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        ours.setLevel(level)


# -- resume -----------------------------------------------------------------------------------------------------
_VOLUME = re.compile(r"^(?P<path>.*)\[(?P<volume>\d+)\]$")  # runner.data.sources.ImageRef: "file.nii.gz[3]"


def image_paths(entries: Iterable[dict[str, Any]]) -> list[str]:
    """The image files of a manifest's ``inputs`` (a volume of a 4D file is recorded as ``file[3]``)."""
    paths = []
    for entry in entries:
        text = str(entry.get("path", ""))
        match = _VOLUME.match(text)
        paths.append(match["path"] if match and not Path(text).is_file() else text)
    return list(dict.fromkeys(paths))


def resume_mismatch(run_dir: Path, record: dict[str, Any], input_files: dict[str, dict[str, Any]]) -> str | None:
    """Why a complete record cannot stand for a re-run of the same config, or None when it can: every input file
    (images, table, mask, design matrix) still has its recorded sha256 and every listed output its recorded sha256.

    ``input_files`` are the declared inputs hashed now (role -> {path, sha256}).
    """
    from runner.outputs.atomic import sha256_file

    recorded_files = record.get("input_files")
    if not isinstance(recorded_files, dict):
        return "the record does not name its input files"
    for role in sorted(set(recorded_files) | set(input_files)):
        before, now = recorded_files.get(role) or {}, input_files.get(role) or {}
        if before.get("path") != now.get("path") or before.get("sha256") != now.get("sha256"):
            return f"the {role.replace('_', ' ')} {now.get('path') or before.get('path')} changed"
    checked: set[str] = set()
    for entry in record.get("inputs") or []:
        path = image_paths([entry])[0]
        if path in checked:
            continue  # the volumes of one 4D file share its sha256
        checked.add(path)
        now = sha256_file(Path(path)) if Path(path).is_file() else None
        if now != entry.get("sha256"):
            return f"the input image {path} changed" if now else f"the input image {path} is missing"
    for entry in record.get("outputs") or []:
        name = str(entry.get("path", ""))
        target = Path(run_dir) / name
        if not _plain_name(name) or not target.is_file():
            return f"the output {name} is missing"
        if sha256_file(target) != entry.get("sha256"):
            return f"the output {name} differs from its recorded sha256"
    return None


def hash_input_files(paths: dict[str, Path | None]) -> dict[str, dict[str, Any]]:
    """Role -> {path, sha256} for the declared input files that exist (the others fail later, with their message)."""
    from runner.outputs.atomic import sha256_file

    hashed = {}
    for role, path in paths.items():
        if path is not None and Path(path).is_file():
            try:
                hashed[role] = {"path": str(path), "sha256": sha256_file(Path(path))}
            except OSError:  # unreadable: reading it as an input fails with its own message
                continue
    return hashed
