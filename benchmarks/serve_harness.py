"""Test and benchmark harness of ``prlib serve``: a uvicorn server in a background thread and
the burst / one-at-a-time load test (``benchmarks/serve_load.py``, ``tests/test_serve.py``)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np

from prlib.serve import create_app
from prlib.serve_routing import RoutingService


class BackgroundServer:
    """A uvicorn server of ``app`` on 127.0.0.1 in a background thread (tests, benchmarks);
    use as a context manager; ``url`` ends in ``/v1``."""

    def __init__(self, app, port: int = 0):
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the prlib server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


async def _fire(url: str, bodies: list[dict]) -> list:
    async with httpx.AsyncClient(timeout=120.0, limits=httpx.Limits(max_connections=None)) as c:
        return await asyncio.gather(*(c.post(f"{url}/chat/completions", json=b)
                                      for b in bodies))


async def _one_by_one(url: str, bodies: list[dict]) -> list:
    async with httpx.AsyncClient(timeout=120.0) as c:
        return [await c.post(f"{url}/chat/completions", json=b) for b in bodies]


def load_test(service: RoutingService, n_requests: int = 200, n_users: int = 20,
              sequential: int = 0, **app_options) -> dict:
    """``n_requests`` chat completions sent at once from ``n_users`` users (distinct texts) to
    a server of ``service`` on 127.0.0.1; returns what came back (statuses, request ids, the
    chosen LLMs) and the routing overhead per request, p50 / p99: ``route_ms`` (the router's
    scoring, under its lock), ``embed_ms`` (from arrival to the text's feature row: the
    batched encoder of :attr:`RoutingService.pipeline`, waiting included), ``overhead_ms``
    (from arrival to the routing decision, all queueing included) and the pipeline's batch
    sizes (requests waiting together are embedded in one batch and scored in one router call,
    whose time ``route_ms`` gives each).
    ``sequential`` > 0: then that many more requests one at a time (each alone on the server,
    new texts), whose ``single_*`` overheads are what one request costs on an idle server.
    ``app_options`` go to :func:`create_app`."""
    app = create_app(service, **app_options)

    def bodies(n, tag):
        return [{"model": "auto", "user": f"load-user-{i % n_users}",
                 "messages": [{"role": "user", "content": f"{tag} question {i}: how do I sort "
                                                          f"a list of {i} numbers?"}]}
                for i in range(n)]

    pct = lambda a, q: float(np.percentile(a, q)) if len(a) else float("nan")  # noqa: E731
    burst = bodies(n_requests, "load test")
    marks = lambda: (len(service.route_ms), len(service.embed_ms),  # noqa: E731
                     len(app.state.overhead_ms), len(service.pipeline.batch_sizes),
                     len(service.pipeline.batch_sizes))
    with BackgroundServer(app) as server:
        before = marks()
        start = time.perf_counter()
        replies = asyncio.run(_fire(server.url, burst))
        wall = time.perf_counter() - start
        after = marks()
        singles = asyncio.run(_one_by_one(server.url, bodies(sequential, "one at a time")))

    def part(log, i, lo, hi):
        return np.array(list(log)[lo[i]:hi[i]])

    logs = (service.route_ms, service.embed_ms, app.state.overhead_ms)
    route, embed, overhead = (part(log, i, before, after) for i, log in enumerate(logs))
    out = {"requests": n_requests, "users": n_users, "wall_s": wall,
           "statuses": [r.status_code for r in replies],
           "texts": [b["messages"][-1]["content"] for b in burst],
           "models": [r.headers.get("x-prlib-model") for r in replies],
           "request_ids": [r.headers.get("x-prlib-request-id") for r in replies],
           "route_ms_p50": pct(route, 50), "route_ms_p99": pct(route, 99),
           "embed_ms_p50": pct(embed, 50), "embed_ms_p99": pct(embed, 99),
           "overhead_ms_p50": pct(overhead, 50), "overhead_ms_p99": pct(overhead, 99),
           "encoder_batches": after[3] - before[3],
           "encoder_batch_max": int(max(list(service.pipeline.batch_sizes)[before[3]:after[3]],
                                        default=0)),
           "router_batches": after[4] - before[4],
           "router_batch_max": int(max(list(service.pipeline.batch_sizes)[before[4]:after[4]],
                                       default=0))}
    if sequential:
        done = marks()
        route, embed, overhead = (part(log, i, after, done) for i, log in enumerate(logs))
        out.update(single_statuses=[r.status_code for r in singles],
                   single_route_ms_p50=pct(route, 50), single_route_ms_p99=pct(route, 99),
                   single_embed_ms_p50=pct(embed, 50), single_embed_ms_p99=pct(embed, 99),
                   single_overhead_ms_p50=pct(overhead, 50),
                   single_overhead_ms_p99=pct(overhead, 99))
    return out
