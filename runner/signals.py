"""SIGTERM and SIGINT during a run become an exception, so the run can say "interrupted" in its manifest and remove
its temporary files instead of dying with a manifest that still says "running" (or, worse, looks complete)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """The run received SIGTERM or SIGINT. A KeyboardInterrupt, so no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process killed by that signal."""
        return 128 + self.signum


@contextmanager
def interruptible(signals: tuple[int, ...] = HANDLED) -> Iterator[None]:
    """Within the block, the first SIGTERM/SIGINT raises :class:`Interrupted` in the main thread; later ones are
    ignored while the run cleans up. Previous handlers come back on exit. Does nothing outside the main thread
    (Python delivers signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if received:
            return  # already unwinding: let the clean-up finish
        received.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextmanager
def deferred(signals: tuple[int, ...] = HANDLED) -> Iterator[None]:
    """Hold SIGTERM/SIGINT back for the block (a few renames that must not stop half-way) and deliver the first
    one received afterwards, to the handler that was in place before. Does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        if received:
            signal.raise_signal(received[0])
