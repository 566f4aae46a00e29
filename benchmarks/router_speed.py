"""Benchmark (not a timed test): PersonalizedRouter training time and routing throughput.

Trains the 9-user multi-cost model on the full LLMRouter bank (the paper's users, default
hyper-parameters) and times batched routing of the test requests. Writes
``figures/40_router_benchmark.json`` and the README's sentence (``40_router_benchmark.md``).
Run: ``.venv/bin/python benchmarks/router_speed.py``.
"""

from __future__ import annotations

import json
import os
import platform
import time

import torch

from prlib import data
from prlib.config import REPO_ROOT, resolve_device
from prlib.features import node_features
from prlib.metrics import routing_metrics
from prlib.requests import build_requests, split_queries
from prlib.routers import PersonalizedRouter
from prlib.simulate import simulate_multi_cost


def main() -> dict:
    bank = data.load_bank("llmrouter")
    prefs = simulate_multi_cost(bank)
    req = build_requests(prefs.interactions, bank, split_queries(bank.queries["query_id"], seed=0))
    feats = node_features(bank, progress=True)  # cached on disk after the first run
    train, val, test = req.split("train"), req.split("val"), req.split("test")
    start = time.perf_counter()
    router = PersonalizedRouter(feats, seed=0).fit(train, val, progress=True)
    fit_s = time.perf_counter() - start
    router.scores(test)  # warm-up
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        picks = router.route(test)
        runs.append(time.perf_counter() - start)
    route_s = min(runs)
    result = {
        "what": "PersonalizedRouter, multi-cost, LLMRouter bank, 9 paper users (simulated)",
        "device": resolve_device("auto"), "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "train_requests": len(train), "val_requests": len(val), "test_requests": len(test),
        "fit_seconds": round(fit_s, 1), "steps_run": router.log_.step[-1],
        "best_step": router.log_.best_step,
        "route_seconds_batched": round(route_s, 3),
        "requests_per_second": round(len(test) / route_s),
        "note": "routing time includes encoding the whole history graph once for the batch",
        "test_metrics": routing_metrics(test, picks),
    }
    out = REPO_ROOT / "figures" / "40_router_benchmark.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(  # the README's sentence, from the numbers above
        f"On CPU ({result['cpu_count']} cores, {result['torch_threads']} torch threads) the "
        f"nine-user multi-cost model trains in {result['fit_seconds']:.0f} s "
        f"({result['steps_run']} steps, early-stopped) and routes "
        f"{result['requests_per_second']:,} requests/s batched "
        "(`figures/40_router_benchmark.json`, `benchmarks/router_speed.py`).\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
