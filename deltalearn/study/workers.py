"""Run a study's independent tasks one after another, in local processes, or on a Dask cluster.

The games of a reproduction and the cells of a sweep do not depend on each other, so they can
run anywhere. :func:`map_tasks` hands them to a kept library -- :mod:`concurrent.futures` for
local processes, ``dask.distributed`` for a cluster that already runs -- and returns the results
in task order, so a parallel run writes exactly what the serial one writes. Every task in a
worker runs with one torch thread: two threads per process on a shared machine only wait on
each other, and a float sum can depend on how many threads split it.
"""
from __future__ import annotations

import multiprocessing
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

__all__ = ["ENGINES", "resolve_engine", "iter_tasks", "map_tasks"]

ENGINES: tuple[str, ...] = ("serial", "processes", "dask")
"""Where tasks run: here one after another, in ``workers`` local processes, or on a Dask cluster."""

# what a worker process was given once, at its start, for every task it runs (see _start_process)
_SHARED: tuple[Any, ...] | None = None


def resolve_engine(workers: int = 1, engine: str | None = None, scheduler: Any = None) -> str:
    """The engine a call runs on, checked: by default ``dask`` when a scheduler is given, else
    ``processes`` for more than one worker, else ``serial``."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    if engine is None:
        engine = "dask" if scheduler is not None else ("processes" if workers > 1 else "serial")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "dask" and scheduler is None:
        raise ValueError("engine 'dask' needs a scheduler: the address of a running Dask scheduler "
                         "(e.g. tcp://scheduler-host:8786) or a distributed.Client")
    if engine == "serial" and workers > 1:
        raise ValueError(f"engine 'serial' runs one task at a time: workers={workers} needs engine 'processes'")
    if engine != "dask" and scheduler is not None:
        raise ValueError(f"a scheduler is only used by engine 'dask', not {engine!r}")
    return engine


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _call(fn: Callable[..., Any], shared: tuple[Any, ...] | None, task: Any) -> Any:
    return fn(task) if shared is None else fn(shared[0], task)


def _start_process(shared: tuple[Any, ...] | None) -> None:
    # Ctrl-C belongs to the parent, which stops the workers itself (see _in_processes): a worker
    # interrupted on its own would report the interrupt as its task's error and take the next task
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _one_thread()
    global _SHARED
    _SHARED = shared


@contextmanager
def _sigint_ignored_by_new_processes() -> Iterator[None]:
    """Start processes with Ctrl-C ignored (a process inherits that), so one still importing when
    Ctrl-C comes does not print a traceback: the parent stops its workers itself."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _in_process(fn: Callable[..., Any], task: Any) -> Any:
    return _call(fn, _SHARED, task)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the pool's processes now: cancelling futures cannot stop tasks already handed to them.

    The pool then finds itself broken and fails every task it still holds, which is what lets
    ``shutdown`` return at once (cancelling them as well races that on Python 3.11).
    """
    if hasattr(pool, "terminate_workers"):  # Python 3.14+
        pool.terminate_workers()
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join()


def _in_processes(fn: Callable[..., Any], tasks: Sequence[Any], shared: tuple[Any, ...] | None,
                  workers: int) -> Iterator[Any]:
    # spawn: a fresh interpreter per worker, the same on Linux, macOS and Windows, and safe
    # after torch has started its own threads in this process (fork is not)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_process, initargs=(shared,))
    futures: list[Future[Any]] = []
    try:
        with _sigint_ignored_by_new_processes():  # the pool starts its processes as tasks are submitted
            futures = [pool.submit(_in_process, fn, t) for t in tasks]
        for f in futures:
            yield f.result()
    except BaseException:  # an error in a task, Ctrl-C here, or the caller stopped reading
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True)
        # an interrupt's traceback keeps this frame: without the pool in it, its queues' semaphores are
        # released now rather than reported as leaked when the interpreter exits
        del pool, futures


def _in_dask_worker(task: Any, fn: Callable[..., Any], shared: tuple[Any, ...] | None) -> Any:
    _one_thread()
    return _call(fn, shared, task)


def _on_dask(fn: Callable[..., Any], tasks: Sequence[Any], shared: tuple[Any, ...] | None,
             scheduler: Any) -> Iterator[Any]:
    try:
        from distributed import Client
    except ImportError as e:  # the optional extra
        raise ImportError("engine 'dask' needs dask.distributed, which is not installed: "
                          "pip install 'deltalearn[cluster]'") from e
    own = isinstance(scheduler, str)
    client = Client(scheduler, set_as_default=False) if own else scheduler
    futures: list[Any] = []
    try:
        if shared is not None:  # sent to every worker once, not once per task
            shared = (client.scatter(shared[0], broadcast=True, hash=False),)
        futures = client.map(_in_dask_worker, list(tasks), fn=fn, shared=shared, pure=False)
        for f in futures:
            yield f.result()
    except BaseException:
        # tasks not started are dropped; a task already running finishes on its worker
        client.cancel(futures)
        raise
    finally:
        if own:
            client.close()


def iter_tasks(fn: Callable[..., Any], tasks: Sequence[Any], *, shared: Any = None, workers: int = 1,
               engine: str | None = None, scheduler: Any = None) -> Iterator[Any]:
    """``fn(task)`` (or ``fn(shared, task)``) for every task, yielded in task order as each is ready.

    ``fn`` must be a module-level function (other processes import it by name), and the tasks,
    ``shared`` and the results must pickle. ``shared`` is what every task reads (a network, a
    recorded episode): it is sent to each worker once rather than with every task. ``engine``
    is one of :data:`ENGINES` (see :func:`resolve_engine`); ``scheduler`` is a Dask scheduler's
    address or a ``distributed.Client``. The first task error is raised here, and the tasks not
    yet started are dropped.
    """
    engine = resolve_engine(workers, engine, scheduler)
    box = None if shared is None else (shared,)
    tasks = list(tasks)
    if not tasks:
        return iter(())
    if engine == "serial":
        return (_call(fn, box, t) for t in tasks)
    if engine == "processes":
        return _in_processes(fn, tasks, box, workers)
    return _on_dask(fn, tasks, box, scheduler)


def map_tasks(fn: Callable[..., Any], tasks: Sequence[Any], *, shared: Any = None, workers: int = 1,
              engine: str | None = None, scheduler: Any = None) -> list[Any]:
    """The results of :func:`iter_tasks`, as a list in task order."""
    return list(iter_tasks(fn, tasks, shared=shared, workers=workers, engine=engine, scheduler=scheduler))
