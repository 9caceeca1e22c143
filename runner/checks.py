"""Range checks attached to config schema fields (``field(metadata=check(fn))``); each raises one RunnerError line."""

from __future__ import annotations

import math
from typing import Any, Callable

from runner.errors import RunnerError

Check = Callable[[str, Any], None]


def check(fn: Check) -> dict[str, Any]:
    """Field metadata carrying a range check, run by ``runner.config.convert`` after the type check."""
    return {"check": fn}


def in_open_unit(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise RunnerError(f"{name} must be in (0, 1), got {value:g}")


def positive(name: str, value: float) -> None:
    if not value > 0:
        raise RunnerError(f"{name} must be > 0, got {value:g}")


def non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise RunnerError(f"{name} must be >= 0, got {value:g}")


def one_of(*allowed: Any) -> Check:
    def check_value(name: str, value: Any) -> None:
        if value not in allowed:
            raise RunnerError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return check_value


def tfce_step(name: str, value: Any) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (value == "exact" or (number and math.isfinite(value) and value > 0)):
        raise RunnerError(f"{name} must be a positive number, null (max/100) or exact, got {value!r}")


def subject_pattern(name: str, value: str) -> None:
    """A regular expression that compiles, is short and cannot backtrack catastrophically."""
    from runner.data.patterns import check_pattern

    check_pattern(value, name)
