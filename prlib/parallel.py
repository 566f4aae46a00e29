"""Fits in worker processes: :func:`map_fits` (joblib's loky pool, one torch thread per fit,
results in task order) and :class:`Shared` (an object sent to each worker once, not with every
task)."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Sequence

from tqdm.auto import tqdm

from prlib.config import cache_dir, torch_threads

#: Torch threads of every fit: one, so one configuration gives one number wherever it runs.
THREADS = 1
#: Objects kept per worker process (most recent last).
KEPT = 8


class Shared:
    """An object that worker processes receive once, not with every task.

    In this process ``obj`` is the object itself. Pickled (a task sent to a worker of
    :func:`map_fits`), it is only the path of a temporary file into which the object was
    pickled once, on the first send; a worker loads that file on first use and keeps the
    object (:data:`_SHARED`). The file is removed when this process's ``Shared`` is garbage
    collected. (A 1,000-user bench setting is ~110 MB: sent with each of a notebook's ~200
    fits, pickling and unpickling it cost more than the fits.)
    """

    def __init__(self, obj):
        self.obj, self.path = obj, None

    def __getstate__(self) -> dict:
        if self.path is None:
            import pickle
            import tempfile
            import weakref

            import cloudpickle

            folder = cache_dir() / "shared"
            folder.mkdir(parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(suffix=".pkl", dir=folder)
            with os.fdopen(fd, "wb") as f:
                cloudpickle.dump(self.obj, f, protocol=pickle.HIGHEST_PROTOCOL)
            self.path = path
            weakref.finalize(self, _remove_quietly, path)
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        if self.path not in _SHARED:
            import pickle

            with open(self.path, "rb") as f:
                _SHARED[self.path] = pickle.load(f)
            while len(_SHARED) > KEPT:
                _SHARED.popitem(last=False)
        self.obj = _SHARED[self.path]


#: Objects loaded from :class:`Shared` files in this (worker) process, by path.
_SHARED: OrderedDict = OrderedDict()


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _call_with_threads(fn, threads, args):
    _keep_worker_caches()
    with torch_threads(threads):
        return fn(*args)


def _keep_worker_caches() -> None:
    """Tell loky (joblib's worker pool) that this worker's growth is not a leak: a worker keeps
    the views and shared settings of its fits on purpose (:data:`_VIEWS`, :data:`_SHARED`),
    and loky restarts a worker that grew by more than 300 MB since its first task (with psutil
    installed), throwing those caches away."""
    try:
        from joblib.externals.loky import process_executor
    except ImportError:  # pragma: no cover - joblib vendors loky
        return
    process_executor._MAX_MEMORY_LEAK_SIZE = max(process_executor._MAX_MEMORY_LEAK_SIZE,
                                                 64 * 2 ** 30)


def map_fits(fn, tasks: Sequence[tuple], jobs: int = 1, threads: int | None = THREADS,
             progress: bool = False, desc: str = "", label=None, cost=None):
    """``fn(*task)`` for each task with ``threads`` torch threads, results yielded in task order,
    with a progress bar.

    ``jobs`` > 1 runs the tasks in that many worker processes (at most the machine's cores;
    joblib's loky backend: ``fn`` and its arguments are pickled with cloudpickle, results are
    pickled back). Every fit seeds itself, so a task gives the same result in a worker as here;
    only wall-clock timings feel the other jobs (with fewer free cores than ``jobs`` they slow
    each other). ``label(*task)``: the progress bar's text of a task (serial runs only).
    ``cost(*task)``: a task's rough expected run time; with several jobs the costliest tasks
    are started first (longest first: no worker is left running one long fit at the end while
    the others idle), and results still come back in task order."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress)
    try:
        if jobs == 1 or len(tasks) < 2:
            for task in tasks:
                if label is not None:
                    bar.set_postfix_str(label(*task))
                yield _call_with_threads(fn, threads, task)
                bar.update()
            return
        from joblib import Parallel, delayed

        bar.set_postfix_str(f"{jobs} processes")
        n_jobs = min(jobs, len(tasks), os.cpu_count() or 1)
        order = list(range(len(tasks)))
        if cost is not None:  # stable: equal costs keep their task order
            order.sort(key=lambda i: -float(cost(*tasks[i])))
        runs = Parallel(n_jobs=n_jobs, return_as="generator", batch_size=1)(
            delayed(_call_with_threads)(fn, threads, tasks[i]) for i in order)
        done, nxt = {}, 0
        for i, result in zip(order, runs):
            done[i] = result
            bar.update()
            while nxt in done:  # yield in task order as soon as the prefix is complete
                yield done.pop(nxt)
                nxt += 1
    finally:
        bar.close()


