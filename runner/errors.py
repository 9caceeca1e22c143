"""The one exception type for user errors: caught at the entry point, printed as one line, exit code 2."""

from __future__ import annotations

import difflib
import errno
import re
from collections.abc import Iterable

EXIT_USER_ERROR = 2


# OSError numbers that say the storage refused a write: the user's disk, quota, permissions or file-size limit, not
# a bug in the runner (reported as one line, no traceback).
STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
                  errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG}


class RunnerError(ValueError):
    """A problem with the user's inputs or configuration, reported as one line without a traceback.

    A ValueError, so pure functions can raise it (or callers catch it) without knowing about the command line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def closest(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Return the valid names closest to ``name`` (for "did you mean" hints).

    A choice is scored by its best similarity to ``name`` as a whole or through one of its words, so
    ``'sexx'`` finds ``'C(sex)[T.M]'``.
    """
    target = str(name).lower()
    scored = []
    for choice in dict.fromkeys(str(c) for c in choices):
        words = [choice.lower()] + [w for w in re.split(r"[^0-9a-zA-Z_]+", choice.lower()) if w]
        score = max(difflib.SequenceMatcher(None, target, w).ratio() for w in words)
        if score >= cutoff:
            scored.append((-score, len(choice), choice))
    return [choice for _, _, choice in sorted(scored)[:n]]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A short hint naming the closest valid names, or listing what is allowed."""
    choices = list(choices)
    near = closest(name, choices)
    if near:
        return "did you mean " + " or ".join(repr(c) for c in near) + "?"
    shown = ", ".join(repr(c) for c in choices[:12])
    more = ", ..." if len(choices) > 12 else ""
    return f"valid names: {shown}{more}"


def storage_error(error: OSError, action: str = "write", path: object = None) -> RunnerError | None:
    """A one-line RunnerError for an OSError from the storage (full disk, file-size limit, read-only, permission),
    naming the file (``path`` when the error does not say) and what to do; None for other errors (they are bugs
    and keep their traceback)."""
    if error.errno not in STORAGE_ERRNOS:
        return None
    where = error.filename or path or "a file"
    reason = error.strerror or str(error)
    hints = {errno.ENOSPC: "free disk space or choose another hydra.run.dir / output_root",
             errno.EDQUOT: "free space within your quota or choose another hydra.run.dir / output_root",
             errno.EFBIG: "the disk is full or a file-size limit is set (ulimit -f); free space or raise the limit",
             errno.EROFS: "the file system is read-only; choose another hydra.run.dir / output_root",
             errno.EISDIR: "a folder has that name; move it away or choose another hydra.run.dir",
             errno.ENOTDIR: "a file stands where a folder is needed; choose another hydra.run.dir",
             errno.EEXIST: "a file stands where a folder is needed; choose another hydra.run.dir"}
    hint = hints.get(error.errno, "check the folder's permissions or choose another hydra.run.dir / output_root")
    return RunnerError(f"cannot {action} {where}: {reason}; {hint}")
