"""User regular expressions (``data.subject_pattern``): checked at the door and matched under a time limit.

Python's ``re`` backtracks, so a pattern such as ``(a+)+$`` takes exponential time on some file names. A pattern is
refused when it is long, does not compile, or repeats without bound something that can itself match in several ways
(a repeat or an alternation inside an unbounded repeat: the classic catastrophic-backtracking shape). Matching
then also runs under a wall-clock limit (in the main thread, where a timer signal can interrupt ``re``).
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from runner.errors import RunnerError

try:  # the parser behind re.compile (public as sre_parse before Python 3.11)
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_parse  # type: ignore[no-redef]

MAX_PATTERN_CHARS = 200
MATCH_SECONDS = 2.0  # for all the file names of one glob together
_REPEATS = {sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT} | (
    {sre_parse.POSSESSIVE_REPEAT} if hasattr(sre_parse, "POSSESSIVE_REPEAT") else set())


def check_pattern(pattern: str, key: str = "data.subject_pattern") -> re.Pattern[str]:
    """Compile a user regular expression, refusing long, invalid or catastrophically backtracking patterns.

    Parameters
    ----------
    pattern : str
        The regular expression as the user wrote it.
    key : str
        The config key named in error messages.

    Returns
    -------
    re.Pattern
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RunnerError(f"{key} is {len(pattern)} characters long; at most {MAX_PATTERN_CHARS} are allowed")
    try:
        parsed = sre_parse.parse(pattern)
        compiled = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as error:
        raise RunnerError(f"{key} {pattern!r} is not a valid regular expression ({error}); e.g. "
                          r"'sub-([A-Za-z0-9]+)'") from None
    if _nested_unbounded_repeat(parsed, inside_unbounded=False):
        raise RunnerError(f"{key} {pattern!r} repeats a repeated or alternative group without bound (like "
                          "'(a+)+'), which can take forever to match; write it without nesting, e.g. "
                          r"'sub-([A-Za-z0-9]+)'")
    return compiled


def _nested_unbounded_repeat(items, inside_unbounded: bool) -> bool:
    """True when an unbounded repeat contains another repeat or an alternation."""
    for op, value in items:
        if op in _REPEATS:
            low, high, sub = value
            if inside_unbounded and high > 1 and low != high:  # a{2} inside (...)+ is one way only
                return True
            if _nested_unbounded_repeat(sub, inside_unbounded or high == sre_parse.MAXREPEAT):
                return True
        elif op is sre_parse.BRANCH:
            if inside_unbounded:
                return True
            if any(_nested_unbounded_repeat(branch, inside_unbounded) for branch in value[1]):
                return True
        elif op is sre_parse.IN:
            continue
        elif op is sre_parse.SUBPATTERN:
            if _nested_unbounded_repeat(value[-1], inside_unbounded):
                return True
        elif isinstance(value, (list, tuple)):
            for element in value:
                if isinstance(element, sre_parse.SubPattern) and _nested_unbounded_repeat(element,
                                                                                          inside_unbounded):
                    return True
    return False


class PatternTimeout(Exception):
    """Matching took longer than the limit."""


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise RunnerError when the block takes longer than ``seconds`` (main thread only; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):  # noqa: ANN001 - signal handler signature
        raise PatternTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except PatternTimeout:
        raise RunnerError(f"{what} took more than {seconds:g} s to match the file names; simplify it") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
