"""A test executor that behaves like a distributed one: tasks are pickled, shared values travel once by handle, and
tasks run in reverse order (results still come back in task order)."""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from runner.execution import Progress, Task
from runner.execution.local import DEFAULT_BLAS_THREADS, blas_limit

@dataclass(frozen=True)
class Handle:
    key: int


class PicklingExecutor:
    """Implements :class:`runner.execution.Executor` the way a remote one would, to prove the callers rely on the
    protocol only: every task must survive pickling and be small; handles in its top-level arguments are replaced
    by the shared values (as Dask does with scattered futures)."""

    def __init__(self, n_workers: int = 3) -> None:
        self._n_workers = n_workers
        self.shared: dict[int, Any] = {}
        self.task_sizes: list[int] = []

    @property
    def n_workers(self) -> int:
        return self._n_workers

    def share(self, value: Any) -> Handle:
        handle = Handle(len(self.shared))
        self.shared[handle.key] = pickle.loads(pickle.dumps(value))
        return handle

    def map(self, tasks: Iterable[Task], progress: Progress | None = None) -> Iterator[Any]:
        tasks = list(tasks)
        results: list[Any] = [None] * len(tasks)
        # tasks run with BLAS pinned, as on every real executor: some BLAS builds (OpenBLAS 0.3.31) split a
        # product over their threads and round differently with another thread count
        with blas_limit(DEFAULT_BLAS_THREADS):
            for index in reversed(range(len(tasks))):
                payload = pickle.dumps(tasks[index])
                self.task_sizes.append(len(payload))
                task = pickle.loads(payload)
                arguments = tuple(self.shared[a.key] if isinstance(a, Handle) else a for a in task.arguments)
                results[index] = pickle.loads(pickle.dumps(task.function(*arguments)))
        for task, result in zip(tasks, results, strict=True):
            if progress is not None:
                progress(task.weight)
            yield result


def die_once(flag: str, function: Any, *arguments: Any) -> Any:
    """Kill this worker process the first time any task runs (the one that creates ``flag``); run normally after."""
    import os

    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return function(*arguments)
    os._exit(1)


class KillingExecutor:
    """Wraps an executor so that the first task to start kills its worker process (a node lost mid-run)."""

    def __init__(self, executor: Any, flag: str) -> None:
        self.executor, self.flag = executor, flag

    @property
    def n_workers(self) -> int:
        return self.executor.n_workers

    def share(self, value: Any) -> Any:
        return self.executor.share(value)

    def map(self, tasks: Iterable[Task], progress: Progress | None = None) -> Iterator[Any]:
        wrapped = (Task(die_once, (self.flag, task.function, *task.arguments), task.weight) for task in tasks)
        return self.executor.map(wrapped, progress)
