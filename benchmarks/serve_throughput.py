"""Benchmark (not a timed test): requests per second through `prlib serve`, each part in its
own process.

``serve_load.py`` runs the server, the fake upstream and the load generator in one Python
process (one interpreter lock), which measures the routing overhead well but the throughput
badly. Here the fake upstream (``tests/fake_openai_server.py``, answers at once) and ``prlib
serve`` (as a user starts it) run as separate processes on 127.0.0.1, and this process sends
``--requests`` routed chat completions from ``--users`` users, ``--concurrency`` at a time,
then reports requests/s, the statuses and the CPU time the server process and the upstream
process spent per request (on a loaded machine the wall clock measures the other processes too;
CPU time per request says what one core could serve). Writes ``figures/serve_throughput.json``.

Run: ``python benchmarks/serve_throughput.py --router DIR`` (a folder from ``prlib train``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter

from prlib.config import REPO_ROOT

UPSTREAM = ("import sys, time; sys.path.insert(0, {tests!r}); "
            "from fake_openai_server import FakeOpenAIServer; "
            "s = FakeOpenAIServer().__enter__(); print(s.url, flush=True); time.sleep(1e9)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _send(url: str, n: int, users: int, concurrency: int) -> tuple[list[int], float]:
    import httpx

    gate = asyncio.Semaphore(concurrency)

    async def one(c, i):
        async with gate:
            r = await c.post(f"{url}/chat/completions", json={
                "model": "auto", "user": f"user-{i % users}",
                "messages": [{"role": "user", "content": f"question {i}: sort {i} numbers"}]})
            return r.status_code

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as c:
        start = time.perf_counter()
        statuses = await asyncio.gather(*(one(c, i) for i in range(n)))
        return statuses, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    from prlib.efficiency import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--router", required=True, help="a folder written by `prlib train`")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--no-access-log", action="store_true",
                        help="start the server without its log line per request")
    parser.add_argument("--out", default=str(REPO_ROOT / "figures" / "serve_throughput.json"))
    args = parser.parse_args(argv)
    import httpx
    import psutil

    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM.format(
        tests=str(REPO_ROOT / "tests"))], stdout=subprocess.PIPE, text=True)
    port = _free_port()
    server = None
    try:
        upstream_url = upstream.stdout.readline().strip()
        server = subprocess.Popen([sys.executable, "-m", "prlib.cli", "serve", "--router",
                                   args.router, "--upstream", upstream_url, "--port", str(port)]
                                  + (["--no-access-log"] if args.no_access_log else []),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("prlib serve did not start")
            time.sleep(0.5)
        load_before = os.getloadavg()[0]
        url = f"http://127.0.0.1:{port}/v1"
        asyncio.run(_send(url, 50, args.users, args.concurrency))  # warm-up
        procs = {"server": psutil.Process(server.pid), "upstream": psutil.Process(upstream.pid)}
        cpu = lambda: {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}  # noqa: E731
        before = cpu()
        statuses, wall = asyncio.run(_send(url, args.requests, args.users, args.concurrency))
        after = cpu()
    finally:
        for p in (server, upstream):
            if p is not None:
                p.terminate()
                p.wait(timeout=30)
    result = {"what": f"{args.requests} routed chat completions from {args.users} users, "
                      f"{args.concurrency} at a time, through `prlib serve` (its own process) "
                      "to a fake upstream (its own process) on 127.0.0.1",
              "access_log": not args.no_access_log,
              "statuses": dict(Counter(map(str, statuses))), "wall_s": round(wall, 3),
              "requests_per_s": round(args.requests / wall, 1),
              **{f"{k}_cpu_ms_per_request": round(1e3 * (after[k] - before[k]) / args.requests,
                                                  3) for k in before},
              "target_requests_per_s": 1000, **machine(),
              "load_average_1min_before": round(load_before, 2)}
    with open(args.out, "w") as f:
        f.write(json.dumps(result, indent=1) + "\n")
    sentence = (  # the README's sentence, from the numbers above
        f"Throughput (`benchmarks/serve_throughput.py`, {result['cpu_model']}, "
        f"{result['cpu_count']} cores, `prlib serve` and the fake upstream each in its own "
        f"process): {args.requests} routed requests from {args.users} users, "
        f"{args.concurrency} at a time, {result['statuses'].get('200', 0)} answered, at "
        f"{result['requests_per_s']:.0f} requests/s (target 1,000); the server process spent "
        f"{result['server_cpu_ms_per_request']:.1f} ms of CPU per request, the upstream "
        f"{result['upstream_cpu_ms_per_request']:.1f} ms; load average "
        f"{result['load_average_1min_before']:.1f} before the run.\n")
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(sentence)
    print(json.dumps(result, indent=1))
    print(sentence)
    return result


if __name__ == "__main__":
    main()
