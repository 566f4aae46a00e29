"""Benchmark (not a timed test): `prlib serve` under load, against a fake upstream on 127.0.0.1.

500 chat completions sent at once from 50 users (distinct texts), routed by a saved router
(``--router DIR`` from ``prlib train``; default: ours trained here on 1,500 LLMRouter queries
with the nine paper users, with the text encoder ``--encoder``) and forwarded to a local fake
OpenAI-compatible server that answers at once, then ``--sequential`` requests one at a time.
Reports: every request answered once
(counted on the upstream: lost or duplicated requests are listed); per request, p50 and p99:
the router's scoring (``route_ms``), the wait for the text's embedding (``embed_ms``: the
server embeds the texts that wait together in one batch, on CPU) and the whole overhead from
arrival to the routing decision (``overhead_ms``, queueing included); and the same for requests
sent one at a time (``single_*``: what a request costs on an idle server). Writes
``figures/serve_load.json`` and the README's sentence ``figures/serve_load.md``.

Run: ``python benchmarks/serve_load.py --encoder static-minilm-256`` (a few minutes on 2 CPU
cores, training included; ``--encoder minilm`` for the MiniLM router).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter

from prlib.config import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tests"))  # the fake upstream of the tests


def main(argv: list[str] | None = None) -> dict:
    from fake_openai_server import FakeOpenAIServer, request_key

    from prlib.cli import main as prlib_main
    from prlib.efficiency import machine
    from prlib.serve import RoutingService, load_for_serving, upstream_map
    from serve_harness import load_test

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--router", help="a folder written by `prlib train` (default: train one)")
    parser.add_argument("--encoder", default="static-minilm-256",
                        choices=("minilm", "static-minilm-256"),
                        help="text encoder of the router trained here (without --router)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=100,
                        help="requests then sent one at a time (idle-server latency)")
    parser.add_argument("--out", default=str(REPO_ROOT / "figures" / "serve_load.json"))
    args = parser.parse_args(argv)
    folder = args.router
    if folder is None:
        folder = tempfile.mkdtemp(prefix="prlib-router-")
        if prlib_main(["train", "--bank", "llmrouter", "--max-queries", "1500", "--encoder",
                       args.encoder, "--out", folder]):
            raise SystemExit("prlib train failed (see above)")
    import torch

    torch.set_num_threads(1)  # as `prlib serve` runs (prlib.serve.serve)
    router = load_for_serving(folder)
    load_before = os.getloadavg()[0]
    with FakeOpenAIServer() as upstream:
        service = RoutingService(router, upstream_map(router.feats.llms, upstream.url))
        out = load_test(service, args.requests, args.users, args.sequential)
        sent = Counter(request_key(m, [{"role": "user", "content": t}])
                       for m, t in zip(out["models"], out["texts"]))
        lost = sorted(set(sent) - set(upstream.received))
        duplicated = sorted(k for k, n in upstream.received.items() if n > 1)
    result = {"what": f"{args.requests} concurrent chat completions from {args.users} users, "
                      "prlib serve in front of a fake upstream on 127.0.0.1",
              "router": type(router).__name__, "encoder": service.encoder.encoder,
              "router_users": len(router.user_request_counts()),
              "history_requests": int(router.user_request_counts().sum()),
              "answered_200": out["statuses"].count(200),
              "statuses": dict(Counter(map(str, out["statuses"]))), "lost": len(lost),
              "duplicated": len(duplicated), "wall_s": round(out["wall_s"], 3),
              "requests_per_s": round(args.requests / out["wall_s"], 1),
              **{k: round(v, 3) for k, v in out.items()
                 if k.endswith(("_ms_p50", "_ms_p99"))},
              "encoder_batches": out["encoder_batches"],
              "encoder_batch_max": out["encoder_batch_max"],
              "router_batches": out["router_batches"], "router_batch_max": out["router_batch_max"],
              "sequential_requests": args.sequential,
              "sequential_answered_200": out.get("single_statuses", []).count(200),
              "target_overhead_p99_ms": 5.0, **machine(),
              "load_average_1min_before": round(load_before, 2)}
    with open(args.out, "w") as f:
        f.write(json.dumps(result, indent=1) + "\n")
    sentence = (  # the README's sentence, from the numbers above
        f"Load test (`benchmarks/serve_load.py`, {result['cpu_model']}, {result['cpu_count']} "
        "cores): "
        f"{args.requests} concurrent chat completions from {args.users} users through `prlib "
        f"serve` ({result['router']} over {result['history_requests']:,} visible requests of "
        f"{result['router_users']} users, text encoder {result['encoder']}) to a fake upstream "
        f"on 127.0.0.1: {result['answered_200']} answered, {result['lost']} lost, "
        f"{result['duplicated']} duplicated (counted on the upstream), in "
        f"{result['wall_s']:.1f} s ({result['requests_per_s']:,.0f} requests/s through the "
        "proxy, load generator in the same process); their texts were "
        f"embedded in {result['encoder_batches']} batches (at most "
        f"{result['encoder_batch_max']} texts) and routed in {result['router_batches']} router "
        f"calls (at most {result['router_batch_max']} requests). Per request, the router call "
        f"that scored it took "
        f"{result['route_ms_p50']:.1f} ms p50 / {result['route_ms_p99']:.1f} ms p99, and from "
        f"arrival to the routing decision (waiting for the batched embedding and for the "
        f"one router included) {result['overhead_ms_p50']:.0f} ms p50 / "
        f"{result['overhead_ms_p99']:.0f} ms p99. Sent one at a time "
        f"({result['sequential_answered_200']} of {args.sequential} answered), a request's "
        f"routing overhead was {result['single_overhead_ms_p50']:.1f} ms p50 / "
        f"{result['single_overhead_ms_p99']:.1f} ms p99 (target p99 <= 5 ms), of which "
        f"embedding its text {result['single_embed_ms_p50']:.1f} ms p50 and scoring "
        f"{result['single_route_ms_p50']:.1f} ms p50; load average "
        f"{result['load_average_1min_before']:.1f} before the run.\n")
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(sentence)
    print(json.dumps(result, indent=1))
    print(sentence)
    return result


if __name__ == "__main__":
    main()
