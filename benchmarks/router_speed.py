"""Benchmark (not a timed test): training time, peak memory and routing speed of ours and of the
strongest baselines.

Setting: the nine paper users (simulated multi-cost users) on the full LLMRouter bank, split of
seed 0, default hyper-parameters. Each router runs in its own fresh process, so its peak memory is
its own: fit time, the process's peak resident memory (``VmHWM``, data and libraries
included) and its resident memory before the fit, batched routing throughput of the test
requests (best of 3, after a warm-up; 1 and 2 torch threads), and single-request latency
p50 / p99 over ``--calls`` warm calls of ``route`` on one request each (the one-row requests are
built before the clock starts). Writes ``figures/40_router_benchmark.json`` and the README's
sentence ``figures/40_router_benchmark.md``; with ``--routers all``, every registered router
into the efficiency table ``figures/40_efficiency_llmrouter.json`` / ``.md`` instead (notebook
95 writes the same table on PersonaRoute-Bench, ``figures/95_efficiency.*``).

Run: ``python benchmarks/router_speed.py`` (``--routers`` to choose, ``--calls`` for the latency
sample). Runs take a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from prlib.efficiency import machine, peak_rss_mb, routing_speed

#: Ours and the strongest baselines of notebook 50 (the per-user lookup table, per-user kNN and
#: the MLP with a user embedding).
DEFAULT_ROUTERS = ["PersonalizedRouterV3", "BestPerUserTaskRouter", "PerUserKNNRouter",
                   "UserMLPRouter"]


def _set_scoring_threads(router, threads: int) -> None:
    """Ours sets its own torch thread count when scoring (its ``config.threads``)."""
    if hasattr(router, "config") and hasattr(router.config, "threads"):
        router.config.threads = threads


def measure(router_class: str, calls: int) -> dict:
    """Fit one router and time it (run in a fresh process by :func:`main`)."""
    import torch

    from prlib import data
    from prlib.config import resolve_device, torch_threads
    from prlib.features import node_features
    from prlib.metrics import routing_metrics
    from prlib.requests import build_requests, split_queries
    from prlib.routers import get_router
    from prlib.simulate import simulate_multi_cost

    bank = data.load_bank("llmrouter")
    prefs = simulate_multi_cost(bank)
    req = build_requests(prefs.interactions, bank, split_queries(bank.queries["query_id"], seed=0))
    feats = node_features(bank, progress=False)  # cached on disk after the first run
    train, val, test = req.split("train"), req.split("val"), req.split("test")
    cls = get_router(router_class)
    why_not = cls.unavailable(feats)  # e.g. a cascade needs answer texts these features lack
    if why_not:
        return {"router": cls.name, "class": router_class, "skipped": why_not}
    rss_before = peak_rss_mb()
    with torch_threads(1):
        start = time.perf_counter()
        router = cls(feats, seed=0).fit(train, val)
        fit_s = time.perf_counter() - start
    rss_after_fit = peak_rss_mb()
    throughput = {}
    for threads in (1, 2):
        _set_scoring_threads(router, threads)
        with torch_threads(threads):
            speed = routing_speed(router, test, calls=0)
        throughput[f"requests_per_second_{threads}_thread{'s' if threads > 1 else ''}"] = round(
            speed["requests_per_second"])
    _set_scoring_threads(router, 1)
    with torch_threads(1):
        single = routing_speed(router, test, calls=calls, batched=False)
    picks = router.route(test)
    log = getattr(router, "log_", None)
    return {
        "router": cls.name, "class": router_class, "device": resolve_device("auto"),
        "fit_seconds": round(fit_s, 2), "fit_torch_threads": 1,
        "steps_run": int(log.step[-1]) if log is not None and len(log.step) else None,
        "best_step": getattr(log, "best_step", None),
        "peak_rss_mb": round(peak_rss_mb()), "rss_before_fit_mb": round(rss_before),
        "peak_rss_after_fit_mb": round(rss_after_fit), **throughput,
        "single_request_p50_ms": round(single["single_p50_ms"], 3),
        "single_request_p99_ms": round(single["single_p99_ms"], 3),
        "single_request_calls": single["single_calls"],
        "test_reward": round(routing_metrics(test, picks)["reward"], 4),
        "train_requests": len(train), "test_requests": len(test),
        "torch_version": torch.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routers", nargs="+", default=DEFAULT_ROUTERS,
                        help="class names, or 'all' for every registered router (the efficiency "
                             "table, figures/40_efficiency_llmrouter.*)")
    parser.add_argument("--calls", type=int, default=1000, help="single-request calls timed")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one router
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.calls)))
        return {}
    from prlib.config import REPO_ROOT

    every = args.routers == ["all"]
    if every:
        from prlib.experiment import registered

        args.routers = [c.__name__ for c in sorted(registered(), key=lambda c: c.family != "ours")]
    load_before = os.getloadavg()[0]
    rows = []
    for name in args.routers:
        print(f"[router_speed] {name} ...", flush=True)
        out = subprocess.run([sys.executable, __file__, "--one", name, "--calls", str(args.calls)],
                             check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1], indent=1), flush=True)
    result = {
        "what": "fit, memory and routing speed; multi-cost, full LLMRouter bank, the 9 paper users "
                "(simulated), split of seed 0, default hyper-parameters, one process per router",
        **machine(), "python": platform.python_version(),
        "load_average_1min_before": round(load_before, 2),
        "routers": rows,
    }
    if every:
        return _write_efficiency_table(result,
                                       REPO_ROOT / "figures" / "40_efficiency_llmrouter.json")
    out = REPO_ROOT / "figures" / "40_router_benchmark.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    ours = next((r for r in rows if r["class"] == DEFAULT_ROUTERS[0]), rows[0])
    where = "On CPU" if ours["device"] == "cpu" else f"On {ours['device']}"
    out.with_suffix(".md").write_text(  # the README's sentence, from the numbers above
        f"{where} ({result['cpu_model']}, {result['cpu_count']} cores) {ours['router']} trains "
        f"the nine-user multi-cost model on the full LLMRouter bank ({ours['train_requests']:,} "
        f"training requests) in {ours['fit_seconds']:.0f} s on one torch thread (peak memory "
        f"{ours['peak_rss_mb']:,} MB for the whole process), routes "
        f"{ours['requests_per_second_1_thread']:,} requests/s batched on one thread "
        f"({ours['requests_per_second_2_threads']:,} on two) and a single request in "
        f"{ours['single_request_p50_ms']:.1f} ms (p50) / {ours['single_request_p99_ms']:.1f} ms "
        f"(p99) over {ours['single_request_calls']:,} calls, with a load average of "
        f"{result['load_average_1min_before']:.1f} on the machine when the run started (above 0: "
        "other jobs shared the cores); baselines in "
        "`figures/40_router_benchmark.json` (`benchmarks/router_speed.py`).\n")
    print(out.with_suffix(".md").read_text())
    return result


def _write_efficiency_table(result: dict, out) -> dict:
    """The efficiency table of every router: JSON and a Markdown table beside it."""
    import pandas as pd

    from prlib.report import to_markdown

    out.write_text(json.dumps(result, indent=1) + "\n")
    cols = {"router": "router", "fit_seconds": "fit (s)", "peak_rss_mb": "peak memory (MB)",
            "requests_per_second_1_thread": "batched req/s (1 thread)",
            "requests_per_second_2_threads": "batched req/s (2 threads)",
            "single_request_p50_ms": "single p50 (ms)", "single_request_p99_ms": "single p99 (ms)",
            "test_reward": "test reward"}
    cols["skipped"] = "not run because"
    table = pd.DataFrame(result["routers"]).reindex(columns=list(cols)).rename(columns=cols)
    note = (f"{result['what']}; {result['cpu_model']}, {result['cpu_count']} cores, device "
            f"{result['routers'][0]['device']}, load average {result['load_average_1min_before']} "
            f"before the run (`python benchmarks/router_speed.py --routers all`).")
    out.with_suffix(".md").write_text(to_markdown(table, floatfmt=",.2f") + "\n\n"
                                      + note + "\n")
    print(out.with_suffix(".md").read_text())
    return result


if __name__ == "__main__":
    main()
