"""Progress bars (tqdm) that stay quiet in CI: off when stderr is not a terminal or when progress=false."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterator

from tqdm import tqdm


def progress_enabled(setting: bool | None) -> bool:
    """``None`` means automatic: on only when a person is watching a terminal."""
    if setting is None:
        return sys.stderr.isatty()
    return bool(setting)


@contextmanager
def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool | None = None) -> Iterator[Any]:
    """A tqdm bar; its ``update(k)`` is safe to call from worker threads."""
    bar = tqdm(total=total, desc=desc, unit=unit, disable=not progress_enabled(enabled), leave=False,
               dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
