"""The ``prlib`` command: run notebooks, fetch data, train, route and serve a router.

    prlib run [NB ...] [--smoke]        execute notebooks (papermill), as python -m prlib.runner
    prlib data download|verify          the data files, as python -m prlib.data
    prlib train --bank NAME --out DIR   train ours on a bank with simulated users, save it
    prlib route --router DIR --user U "query text"
    prlib serve --router DIR --upstream URL [--map FILE]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

#: users ``prlib train`` can simulate on a bank
USERS = ("paper", "bench")


def _train(args) -> int:
    from prlib.data import load_bank
    from prlib.experiment import Setting, setting_views
    from prlib.routers import PersonalizedRouterV2
    from prlib.serve import save_for_serving
    from prlib.simulate import BenchConfig, personaroute_bench, simulate_multi_cost

    bank = load_bank(args.bank)
    if args.max_queries:
        bank = bank.sample_queries(args.max_queries, seed=0)
    if args.users == "paper":
        prefs = simulate_multi_cost(bank)
    else:
        cfg = BenchConfig(n_users=args.bench_users)
        prefs = personaroute_bench(bank, cfg, strategies=("multi_cost",))["multi_cost"]
        bank = bank.subset(llms=list(cfg.llms))
    setting = Setting(f"prlib train · {args.bank}", bank, prefs)
    print(f"{len(prefs.users)} simulated multi-cost users ({args.users}) on {bank.name}: "
          f"{len(bank.queries)} queries x {len(bank.llms)} LLMs", flush=True)
    train, val, test = setting_views(setting, args.seed)
    router = PersonalizedRouterV2(setting.feats, seed=args.seed, steps=args.steps)
    router.fit(train, val, progress=True)
    from prlib.metrics import routing_metrics

    reward = routing_metrics(test, router.route(test))["reward"]
    out = save_for_serving(router, args.out)
    print(f"trained on {len(train):,} requests (best step {router.log_.best_step}); test "
          f"reward {reward:.4f}; saved to {out}")
    return 0


def _route(args) -> int:
    from prlib.serve import load_for_serving

    router = load_for_serving(args.router)
    scores = router.text_scores(args.user, args.text)
    order = np.argsort(-scores)
    known = args.user in router.store_.upos
    print(json.dumps({"user": args.user, "known_user": known,
                      "llm": router.feats.llms[int(order[0])],
                      "scores": {router.feats.llms[i]: round(float(scores[i]), 6)
                                 for i in order}}, indent=1))
    return 0


def _serve(args) -> int:
    from prlib.serve import serve

    serve(args.router, upstream=args.upstream, map_file=args.map, host=args.host,
          port=args.port, retries=args.retries, save_to=args.save_to)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prlib", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute notebooks with papermill (figures/ or smoke)")
    r.add_argument("names", nargs="*", default=["all"], help="'all', numbers or stems")
    r.add_argument("--smoke", action="store_true", help="small sizes (also PRLIB_SMOKE=1)")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"), help="a notebook parameter (JSON, else text)")
    d = sub.add_parser("data", help="download or verify the data files")
    d.add_argument("rest", nargs=argparse.REMAINDER, help="download [--dest D] | verify")
    t = sub.add_parser("train", help="train ours on a bank with simulated users and save it")
    t.add_argument("--bank", required=True, help="llmrouter, arena-bench-v1, ...")
    t.add_argument("--users", choices=USERS, default="paper",
                   help="paper: the nine multi-cost users; bench: PersonaRoute-Bench multi-cost "
                        "users (arena-bench-v1)")
    t.add_argument("--bench-users", type=int, default=1000)
    t.add_argument("--max-queries", type=int, default=None, help="a seeded sample of queries")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, help="folder to save the router in")
    o = sub.add_parser("route", help="route one query text for a user with a saved router")
    o.add_argument("--router", required=True)
    o.add_argument("--user", default="anonymous")
    o.add_argument("text")
    s = sub.add_parser("serve", help="an OpenAI-compatible proxy routing by the user field")
    s.add_argument("--router", required=True, help="a folder written by `prlib train`")
    s.add_argument("--upstream", help="OpenAI-compatible base URL serving every LLM by name")
    s.add_argument("--map", help="JSON map: router LLM -> {base_url, model, api_key}")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--retries", type=int, default=2, help="further tries of a failed upstream")
    s.add_argument("--save-to", default=None,
                   help="where POST /v1/admin/save writes the router (nothing is written "
                        "otherwise)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.cmd == "run":
            from prlib.runner import main as run_main

            extra = [x for name, value in args.parameter for x in ("-p", name, value)]
            return run_main(args.names + (["--smoke"] if args.smoke else []) + extra)
        if args.cmd == "data":
            from prlib.data import main as data_main

            return data_main(args.rest)
        if args.cmd == "serve" and not (args.upstream or args.map):
            parser().error("serve needs --upstream URL or --map FILE")
        return {"train": _train, "route": _route, "serve": _serve}[args.cmd](args)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"prlib {args.cmd}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
