"""Progress of a run of tasks as a callback, a tqdm bar or nothing, advanced by the executor as tasks finish."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ProgressSetting = bool | Callable[[int, int], None] | None


class ProgressReporter:
    """``advance(count)`` adds ``count`` to the work done; ``close()`` ends the bar.

    ``setting`` is a callable ``(done, total)``, True for a tqdm bar on stderr, or False/None for nothing.
    """

    def __init__(self, setting: ProgressSetting, total: int, description: str = "", unit: str = "it") -> None:
        self.total = int(total)
        self.done = 0
        self._callback = setting if callable(setting) else None
        self._bar: Any = None
        if setting is True:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, unit=unit, desc=description)

    def advance(self, count: int) -> None:
        if not count:  # a task that shares its block's count with others may carry none
            return
        self.done += int(count)
        if self._callback is not None:
            self._callback(self.done, self.total)
        elif self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
