"""The one exception type for user errors: caught at the entry point, printed as one line, exit code 2."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

EXIT_USER_ERROR = 2


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
