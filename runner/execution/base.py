"""The executor protocol: how the runner hands independent tasks to workers and gets their results back in order.

Two loops go through it: the voxel-chunk OLS fit (:mod:`runner.model` via :mod:`runner.chunks`) and the blocks of
permutations (:mod:`runner.inference.permutation.driver`). A :class:`Task` is a plain module-level function and its
arguments, so an executor may run it in this process (threads, :mod:`runner.execution.local`) or pickle it to other
processes or machines (a Dask executor, issue 13). Arrays that every task reads are handed over once with
:meth:`Executor.share`; the task function receives the value itself whatever the executor (Dask resolves a
scattered future given as an argument; the local executor shares by reference).

Results come back in task order, so a caller that combines them in that order gets the same numbers whatever the
number of workers; an executor also fixes the number of BLAS threads each worker uses, because BLAS rounds
differently with a different number of threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Progress = Callable[[int], None]  # called with a finished task's weight, in task order


@dataclass(frozen=True)
class Task:
    """One unit of work, ``function(*arguments)``.

    ``function`` should be importable by name (module level, not a lambda or closure) and ``arguments`` picklable,
    so that any executor can run it; ``weight`` is the task's share of a progress total (voxels, permutations).
    """

    function: Callable[..., Any]
    arguments: tuple[Any, ...] = ()
    weight: int = 1

    def __call__(self) -> Any:
        return self.function(*self.arguments)


@runtime_checkable
class Executor(Protocol):
    """Runs tasks on ``n_workers`` workers; see the module docstring for the contract."""

    @property
    def n_workers(self) -> int:
        """Number of tasks that may run at the same time."""
        ...

    def share(self, value: Any) -> Any:
        """A handle for ``value`` to pass in task arguments, so that it travels to each worker once.

        Tasks receive ``value`` itself in place of the handle.
        """
        ...

    def map(self, tasks: Iterable[Task], progress: Progress | None = None) -> Iterator[Any]:
        """Run ``tasks`` and yield their results in task order, calling ``progress(task.weight)`` after each.

        Only a bounded number of tasks is in flight at a time, so results waiting to be consumed stay few; an
        error in a task is raised here and the tasks not yet started are cancelled.
        """
        ...


def run_all(executor: Executor, tasks: Iterable[Task], progress: Progress | None = None) -> list[Any]:
    """Every task's result, in task order."""
    return list(executor.map(tasks, progress))
