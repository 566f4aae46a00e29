"""The ``prlib`` command: run notebooks, fetch data, train, route and serve a router, compare
every router on your own bank.

    prlib run [NB ...] [--smoke]        execute notebooks (papermill), as python -m prlib.runner
    prlib data download|verify          the data files, as python -m prlib.data
    prlib train --bank NAME --out DIR   train ours on a bank with simulated users, save it
    prlib route --router DIR --user U "query text"
    prlib users --router DIR            the users a saved router knows, with their requests
    prlib serve --router DIR --upstream URL | --map FILE | --local-llm smollm2
    prlib compare --bank FILE [--users multi-cost judge] [--sweep] --out DIR
                                        notebooks 55 (and 50) on your own bank

``prlib`` is installed in the project's environment (``.venv/bin/prlib`` after ``make env``;
activate it or call it by that path). Arguments are checked before anything heavy is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prlib import cli_compare
from prlib.cli_args import non_negative_int, positive_float, positive_int

#: users ``prlib train`` can simulate on a bank
USERS = ("paper", "bench")
#: the banks ``prlib train`` knows (:data:`prlib.data.BANK_NAMES`, kept here so that a wrong
#: name is reported without importing the data stack; a test checks they agree)
BANKS = ("llmrouter", "arena-bench-v1", "arena-hard-v0.1", "mt-bench")
#: text encoders (:data:`prlib.embed.ENCODERS`, kept here for the same reason)
ENCODERS = ("minilm", "static-minilm-256")
#: local models ``prlib serve --local-llm`` can start
LOCAL_LLMS = ("smollm2",)
SERVE_EPILOG = """endpoints:
  POST /v1/chat/completions  OpenAI chat completion; "model": "auto" routes by the "user" field
  POST /v1/feedback          {"request_id", "user", "pick": LLM} or {..., "rating": 0-1}
  GET  /v1/models            the LLMs routed among
  GET  /health               status, what is remembered for feedback, the journal
  POST /v1/admin/save        write the router to --save-to (admin key when keys are on)
  GET  /docs                 the API documentation (admin key when keys are on)

keys: --api-key KEY (any user) and --keys FILE ({"keys": [{"key": "...", "user": "alice"}],
"admin_key": "..."}; a key with a user may only speak for that user). Without keys the server
binds a loopback address only, unless --insecure-no-keys."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help (where there is one); descriptions and
    epilogs kept as written."""

    def _get_help_string(self, action):
        if action.default in (None, False, []) or action.required:
            return action.help
        return super()._get_help_string(action)


def _router_dir(text: str) -> Path:
    """A folder written by ``prlib train`` (``router.json`` and ``features.npz``)."""
    folder = Path(text)
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{folder} is not a folder: give one written by "
                                         "`prlib train --out DIR`")
    missing = [f for f in ("router.json", "features.npz") if not (folder / f).is_file()]
    if missing:
        raise argparse.ArgumentTypeError(
            f"{folder} has no {' or '.join(missing)}: save the router with `prlib train` (or "
            "prlib.serve.save_for_serving)")
    return folder


def _router_llms(folder: Path) -> list[str]:
    """The LLMs of a saved router, from its ``router.json`` (nothing heavy loaded)."""
    return list(json.loads((folder / "router.json").read_text())["llms"])


def _train(args) -> int:
    from prlib.embed import use_encoder

    with use_encoder(args.encoder):  # the bank's features, and so the router's, use it
        return _train_with(args)


def _train_with(args) -> int:
    from prlib.data import load_bank
    from prlib.experiment import Setting, setting_views
    from prlib.routers import PersonalizedRouterV2, PersonalizedRouterV3
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
    if args.router == "v2":
        router = PersonalizedRouterV2(setting.feats, seed=args.seed, steps=args.steps)
    else:
        router = PersonalizedRouterV3(setting.feats, seed=args.seed)
    router.fit(train, val, progress=True)
    from prlib import provenance
    from prlib.metrics import routing_metrics

    provenance.check_fitted_and_scored(router, train, val, test, "prlib train", setting.feedback)

    reward = routing_metrics(test, router.route(test))["reward"]
    out = save_for_serving(router, args.out)
    best = getattr(getattr(router, "log_", None), "best_step", None)
    print(f"trained {router.name} on {len(train):,} requests"
          + (f" (best step {best})" if best is not None else "")
          + f"; test reward {reward:.4f}; saved to {out}")
    return 0


def _route(args) -> int:
    import numpy as np

    from prlib.serve import load_for_serving

    from prlib.embed import use_encoder
    from prlib.serve import router_encoder

    router = load_for_serving(args.router)
    with use_encoder(router_encoder(router)):
        scores = router.text_scores(args.user, args.text)
    order = np.argsort(-scores)
    known = args.user in router.store_.upos
    print(json.dumps({"user": args.user, "known_user": known,
                      "llm": router.feats.llms[int(order[0])],
                      "scores": {router.feats.llms[i]: round(float(scores[i]), 6)
                                 for i in order}}, indent=1))
    return 0


def _users(args) -> int:
    import numpy as np

    from prlib.serve import load_for_serving

    router = load_for_serving(args.router)
    counts = router.user_request_counts()  # ours (v3) and v2 keep their visible history
    rows = sorted(zip(counts.index, counts.tolist()), key=lambda r: (-r[1], r[0]))
    if args.json:
        print(json.dumps({u: n for u, n in rows}, indent=1))
    else:
        print(f"{len(rows)} users, {int(np.sum(counts)):,} visible requests")
        for user, n in rows:
            print(f"{user}\t{n}")
    return 0


def _serve_keys(args):
    """The server's keys from the options, the host checked against them (fast: no torch)."""
    from prlib.serve_http import KeyStore, is_loopback

    keys = KeyStore.from_options(args.api_key, args.keys, args.admin_key)
    if not is_loopback(args.host) and not keys.enabled and not args.insecure_no_keys:
        raise ValueError(f"--host {args.host} accepts connections from other machines, but "
                         "no API key is set: give --api-key KEY or --keys FILE (or, on a "
                         "trusted network, --insecure-no-keys)")
    return keys


def _serve(args) -> int:
    from prlib.serve_http import upstream_map

    keys = _serve_keys(args)
    if args.upstream or args.map:  # checked here, before the router and torch are loaded
        upstream_map(_router_llms(args.router), args.upstream, args.map)
    from prlib.serve import serve

    serve(args.router, upstream=args.upstream, map_file=args.map, host=args.host,
          port=args.port, retries=args.retries, save_to=args.save_to, keys=keys,
          insecure_no_keys=args.insecure_no_keys, journal=args.journal,
          remember=args.remember, remember_mb=args.remember_mb, local_llm=args.local_llm,
          max_body_bytes=args.max_body_bytes, connect_timeout=args.connect_timeout,
          read_timeout=args.read_timeout, fallbacks=args.fallbacks,
          access_log=not args.no_access_log)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prlib", description=__doc__.split("\n\n")[0],
                                formatter_class=_Formatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    add = lambda name, help_, **kw: sub.add_parser(  # noqa: E731
        name, help=help_, description=help_, formatter_class=_Formatter, **kw)
    r = add("run", "execute notebooks with papermill (figures/ or smoke)")
    r.add_argument("names", nargs="*", default=["all"], help="'all', numbers or stems")
    r.add_argument("--smoke", action="store_true", help="small sizes (also PRLIB_SMOKE=1)")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"), help="a notebook parameter (JSON, else text)")
    d = add("data", "download or verify the data files")
    d.add_argument("rest", nargs=argparse.REMAINDER, help="download [--dest D] | verify")
    t = add("train", "train ours on a bank with simulated users and save it")
    t.add_argument("--bank", required=True, choices=BANKS, help="the bank to train on")
    t.add_argument("--users", choices=USERS, default="paper",
                   help="paper: the nine multi-cost users; bench: PersonaRoute-Bench multi-cost "
                        "users (arena-bench-v1)")
    t.add_argument("--bench-users", type=positive_int, default=1000,
                   help="how many PersonaRoute-Bench users (with --users bench)")
    t.add_argument("--max-queries", type=positive_int, default=None,
                   help="a seeded sample of this many queries (default: all)")
    t.add_argument("--router", choices=("v3", "v2"), default="v3",
                   help="v3: ours (PersonalizedRouterV3); v2: the graph network, an ablation")
    t.add_argument("--steps", type=positive_int, default=1000,
                   help="training steps of the router (v2 only; v3 is not trained by steps)")
    t.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    t.add_argument("--encoder", choices=ENCODERS, default="minilm",
                   help="text encoder of queries, tasks and LLMs, saved with the router: "
                        "MiniLM, or a static model distilled from it (about 100x faster to "
                        "embed a request; distilled once, a few minutes)")
    t.add_argument("--out", required=True, help="folder to save the router in")
    o = add("route", "route one query text for a user with a saved router")
    o.add_argument("--router", required=True, type=_router_dir,
                   help="a folder written by `prlib train`")
    o.add_argument("--user", default="anonymous",
                   help="the user id (an unknown user gets the population prior)")
    o.add_argument("text", help="the query text to route")
    u = add("users", "list the users a saved router knows, with their visible requests")
    u.add_argument("--router", required=True, type=_router_dir,
                   help="a folder written by `prlib train`")
    u.add_argument("--json", action="store_true", help="print {user: requests} as JSON")
    cli_compare.add_parser(add)
    s = add("serve", "an OpenAI-compatible proxy routing by the user field",
            epilog=SERVE_EPILOG)
    s.add_argument("--router", required=True, type=_router_dir,
                   help="a folder written by `prlib train`")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--upstream", help="OpenAI-compatible base URL serving every LLM by name")
    where.add_argument("--map", help="JSON map: router LLM -> {base_url, model, api_key}")
    where.add_argument("--local-llm", choices=LOCAL_LLMS,
                       help="start this local model (transformers serve, 127.0.0.1) and map "
                            "every router LLM to it")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind; a non-loopback one needs keys")
    s.add_argument("--port", type=int, default=8080, help="port to listen on")
    s.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="a key clients send as 'Authorization: Bearer KEY' (repeatable; speaks "
                        "for any user)")
    s.add_argument("--keys", metavar="FILE",
                   help='JSON keys file: {"keys": [{"key", "user"}], "admin_key"}')
    s.add_argument("--admin-key", help="key for /v1/admin/* and /docs")
    s.add_argument("--insecure-no-keys", action="store_true",
                   help="allow a non-loopback --host without keys")
    s.add_argument("--max-body-bytes", type=positive_int, default=1_000_000,
                   help="larger request bodies get 413")
    s.add_argument("--connect-timeout", type=positive_float, default=5.0,
                   help="seconds to connect to an upstream (then: unreachable)")
    s.add_argument("--read-timeout", type=positive_float, default=120.0,
                   help="seconds an upstream may take to answer (then: 504)")
    s.add_argument("--retries", type=non_negative_int, default=2,
                   help="further connection attempts to an upstream that cannot be reached "
                        "(a request that reached it is never retried)")
    s.add_argument("--fallbacks", type=non_negative_int, default=2,
                   help="next-best LLMs tried when the chosen one cannot be reached")
    s.add_argument("--remember", type=positive_int, default=100_000,
                   help="routed requests kept for feedback (the oldest are forgotten)")
    s.add_argument("--remember-mb", type=positive_float, default=256.0,
                   help="memory bound of the requests kept for feedback")
    s.add_argument("--journal", metavar="FILE", default=None,
                   help="append feedback here (fsynced before it is acknowledged) and replay "
                        "it at start (default: feedback lives in memory only)")
    s.add_argument("--save-to", default=None,
                   help="where POST /v1/admin/save writes the router (nothing is written "
                        "otherwise)")
    s.add_argument("--no-access-log", action="store_true",
                   help="no log line per request (uvicorn's access log)")
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
        return {"train": _train, "route": _route, "users": _users, "serve": _serve,
                "compare": cli_compare.run}[args.cmd](args)
    except (FileNotFoundError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"prlib {args.cmd}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
