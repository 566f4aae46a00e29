"""Benchmark (not a timed test): requests per second through `prlib serve`, each part in its
own process.

``serve_load.py`` runs the server, the fake upstream and the load generator in one Python
process (one interpreter lock), which measures the routing overhead well but the throughput
badly. Here a fake upstream that answers at once (:func:`run_upstream`: aiohttp, keep-alive,
counting each completion it receives) and ``prlib serve`` (as a user starts it) run as separate
processes on 127.0.0.1, and this process sends ``--requests`` routed chat completions from
``--users`` users, ``--concurrency`` at a time (aiohttp), then reports requests/s, the statuses,
the completions the upstream received (each exactly once) and the CPU time the server process
and the upstream process spent per request (on a loaded machine the wall clock measures the
other processes too; CPU time per request says what one core could serve). Writes
``figures/serve_throughput.json``.

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



def run_upstream(port: int) -> None:
    """A fake OpenAI upstream that answers every chat completion at once (blocks):
    ``GET /v1/stats`` says how many completions it received, how many distinct last messages
    and which were received more than once."""
    from aiohttp import web

    received: Counter = Counter()

    async def chat(request):
        body = await request.json()
        received[body["messages"][-1]["content"]] += 1
        text = f"{body['model']} says: {body['messages'][-1]['content']}"
        return web.json_response({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
            "model": body["model"], "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                              "total_tokens": 2},
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}]})

    async def stats(_request):
        return web.json_response({
            "completions": sum(received.values()), "distinct": len(received),
            "repeated": [text for text, n in received.items() if n > 1]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _send(url: str, n: int, users: int, concurrency: int,
                start_at: int = 0) -> tuple[list[int], float]:
    import aiohttp

    gate = asyncio.Semaphore(concurrency)

    async def one(session, i):
        async with gate:
            async with session.post(f"{url}/chat/completions", json={
                    "model": "auto", "user": f"user-{i % users}",
                    "messages": [{"role": "user",
                                  "content": f"question {i}: sort {i} numbers"}]}) as r:
                await r.read()
                return r.status

    async def one_or_error(session, i):
        try:
            return await one(session, i)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:  # counted, not fatal
            return type(e).__name__

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        start = time.perf_counter()
        statuses = await asyncio.gather(*(one_or_error(session, start_at + i)
                                          for i in range(n)))
        return statuses, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--upstream-only":
        return run_upstream(int(sys.argv[2]))  # without torch: the upstream is light
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

    upstream_port, port = _free_port(), _free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--upstream-only",
                                 str(upstream_port)])
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    server = None
    try:
        server = subprocess.Popen([sys.executable, "-m", "prlib.cli", "serve", "--router",
                                   args.router, "--upstream", upstream_url, "--port", str(port)]
                                  + (["--no-access-log"] if args.no_access_log else []),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while True:
            try:
                if (httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code
                        == httpx.get(f"{upstream_url}/stats", timeout=2).status_code == 200):
                    break
            except httpx.HTTPError:
                pass
            if (time.time() > deadline or server.poll() is not None
                    or upstream.poll() is not None):
                raise SystemExit("prlib serve or the fake upstream did not start")
            time.sleep(0.5)
        load_before = os.getloadavg()[0]
        url = f"http://127.0.0.1:{port}/v1"
        warm_up = 50
        asyncio.run(_send(url, warm_up, args.users, args.concurrency))
        procs = {"server": psutil.Process(server.pid), "upstream": psutil.Process(upstream.pid)}
        cpu = lambda: {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}  # noqa: E731
        before = cpu()
        statuses, wall = asyncio.run(_send(url, args.requests, args.users, args.concurrency,
                                           start_at=warm_up))
        after = cpu()
        stats = httpx.get(f"{upstream_url}/stats").json()
    finally:
        for p in (server, upstream):
            if p is not None:
                p.terminate()
        for p in (server, upstream):
            if p is not None:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
    # every request's last message is its own: each must reach the upstream exactly once
    received = stats["completions"] - warm_up
    expected = {f"question {i}: sort {i} numbers" for i in range(warm_up + args.requests)}
    repeated = len(stats["repeated"])
    missing = len(expected) - stats["distinct"]
    result = {"what": f"{args.requests} routed chat completions from {args.users} users, "
                      f"{args.concurrency} at a time, through `prlib serve` (its own process) "
                      "to a fake upstream (its own process) on 127.0.0.1",
              "access_log": not args.no_access_log,
              "statuses": dict(Counter(map(str, statuses))), "wall_s": round(wall, 3),
              "upstream_received": received, "upstream_missing": missing,
              "upstream_duplicated": repeated,
              "requests_per_s": round(args.requests / wall, 1),
              "answered_per_s": round(statuses.count(200) / wall, 1),
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
        f"{args.concurrency} at a time, {result['statuses'].get('200', 0)} answered "
        f"({received} completions received upstream: {missing} missing, {repeated} "
        f"received twice), at "
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
