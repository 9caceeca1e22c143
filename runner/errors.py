"""The one exception type for user errors: caught at the entry point, printed as one line, exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_USER_ERROR = 2


class RunnerError(Exception):
    """A problem with the user's inputs or configuration, reported as one line without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return the valid names closest to ``name`` (for "did you mean" hints)."""
    choices = [str(c) for c in choices]
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not found:
        lowered = {c.lower(): c for c in choices}
        found = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)]
    return found


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A short hint naming the closest valid names, or listing what is allowed."""
    choices = list(choices)
    near = closest(name, choices)
    if near:
        return "did you mean " + " or ".join(repr(c) for c in near) + "?"
    shown = ", ".join(repr(c) for c in choices[:12])
    more = ", ..." if len(choices) > 12 else ""
    return f"valid names: {shown}{more}"
