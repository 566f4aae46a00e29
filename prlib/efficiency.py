"""How fast and how big a router is: fit time, peak memory, batched throughput, single-request
latency.

Used by notebook 95 (efficiency table and scaling study) and ``benchmarks/``. Timings are
wall-clock on whatever machine runs them, so every row names the device and the torch thread
count; they are benchmarks, never asserted by tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil
import torch

from prlib.requests import Requests

if TYPE_CHECKING:  # (efficiency measures routers; it needs none of their code)
    from prlib.routers import Router


def rss_mb() -> float:
    """Resident memory of this process now, MB."""
    return psutil.Process().memory_info().rss / 2 ** 20


def peak_rss_mb() -> float:
    """Peak resident memory of this process's own program, MB: Linux's high-water mark of the
    current address space (``VmHWM``). (``getrusage``'s ``ru_maxrss`` is not it: Linux keeps it
    across ``fork`` and ``exec``, so a fresh process started from a big one, e.g. a scaling
    point run from a notebook's kernel, would report the kernel's size.) Elsewhere
    ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


class PeakMemory:
    """Peak resident memory of this process while a ``with`` block runs.

    A background thread samples the resident set size every ``interval`` seconds (psutil);
    ``before_mb`` is the size when the block started, ``peak_mb`` the largest sample (the end
    included), ``increase_mb`` their difference: what the block needed on top of what the
    process already held (memory the process freed earlier and reuses counts as nothing).
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.before_mb = self.peak_mb = float("nan")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> "PeakMemory":
        self.before_mb = self.peak_mb = rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())

    @property
    def increase_mb(self) -> float:
        return self.peak_mb - self.before_mb


@dataclass
class FitCost:
    """What one fit cost: seconds, memory (MB, :class:`PeakMemory`), optimizer steps run and
    the validation-best step (``None`` for routers that take no steps)."""

    fit_s: float
    peak_mb: float
    increase_mb: float
    steps_run: int | None
    best_step: int | None

    @property
    def seconds_per_step(self) -> float:
        return self.fit_s / self.steps_run if self.steps_run else float("nan")


def timed_fit(router: Router, train: Requests, val: Requests) -> FitCost:
    """Fit ``router`` on ``train`` (early stopping on ``val``) and measure the fit."""
    with PeakMemory() as mem:
        start = time.perf_counter()
        router.fit(train, val)
        fit_s = time.perf_counter() - start
    log = getattr(router, "log_", None)
    steps = getattr(log, "step", None)
    steps_run = int(steps[-1]) if steps is not None and len(steps) else None
    return FitCost(fit_s, mem.peak_mb, mem.increase_mb, steps_run,
                   getattr(log, "best_step", None) if steps_run else None)


def _one_request_views(requests: Requests, calls: int, seed: int) -> list[Requests]:
    rng = np.random.default_rng(seed)
    return [requests.select([int(i)]) for i in rng.choice(len(requests), calls)]


def routing_speed(router: Router, requests: Requests, calls: int = 1000, warmup: int = 50,
                  repeats: int = 3, seed: int = 0, batched: bool = True) -> dict:
    """Batched throughput and single-request latency of a fitted router on ``requests``.

    ``requests_per_second``: all of ``requests`` routed in one call, best of ``repeats`` after a
    warm-up call. ``single_p50_ms`` / ``single_p99_ms``: ``route`` on one request at a time,
    over ``calls`` requests drawn with replacement (seeded) after ``warmup`` untimed calls;
    the one-row views are built before the clock starts. With ``calls = 0`` only the batched
    number is measured, with ``batched=False`` only the single-request ones. The torch thread
    count in force is reported as ``threads``.
    """
    if len(requests) == 0:
        raise ValueError("routing_speed needs at least one request to route")
    out = {"batch_requests": len(requests), "threads": torch.get_num_threads()}
    if batched:
        router.route(requests)  # warm-up
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            router.route(requests)
            runs.append(time.perf_counter() - start)
        out["requests_per_second"] = len(requests) / min(runs)
    if calls:
        singles = _one_request_views(requests, warmup + calls, seed)
        latency = []
        for i, one in enumerate(singles):
            start = time.perf_counter()
            router.route(one)
            if i >= warmup:
                latency.append(time.perf_counter() - start)
        ms = 1e3 * np.asarray(latency)
        out.update(single_p50_ms=float(np.percentile(ms, 50)),
                   single_p99_ms=float(np.percentile(ms, 99)), single_calls=len(ms))
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``; elsewhere what ``platform`` says):
    timings from two machines with the same core count can differ several-fold."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The machine a timing ran on: CPU model and cores, torch device and version, load
    average."""
    from prlib.config import resolve_device

    device = resolve_device("auto")
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "device": device,
            "device_name": name,
            "torch": torch.__version__, "load_average_1min": round(os.getloadavg()[0], 2)}
