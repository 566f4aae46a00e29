"""The ``prlib`` command: run notebooks, fetch data, train, route and serve a router.

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

#: users ``prlib train`` can simulate on a bank
USERS = ("paper", "bench")
#: the banks ``prlib train`` knows (:data:`prlib.data.BANK_NAMES`, kept here so that a wrong
#: name is reported without importing the data stack; a test checks they agree)
BANKS = ("llmrouter", "arena-bench-v1", "arena-hard-v0.1", "mt-bench")
#: text encoders (:data:`prlib.embed.ENCODERS`, kept here for the same reason)
ENCODERS = ("minilm", "static-minilm-256")
#: local models ``prlib serve --local-llm`` can start
LOCAL_LLMS = ("smollm2",)
#: users ``prlib compare`` simulates (:data:`prlib.comparison.USERS`)
COMPARE_USERS = ("multi-cost", "judge")
#: seeds of the reported tables and of tuning (:data:`prlib.config.REPORT_SEEDS`,
#: ``DEVELOPMENT_SEEDS``; a test checks they agree)
REPORT_SEEDS = (100, 101, 102, 103, 104)
DEVELOPMENT_SEEDS = (0, 1, 2, 3, 4)
#: training requests per user of ``prlib compare --sweep`` (:data:`prlib.headroom.LEVELS`)
SWEEP_LEVELS = ("1", "3", "5", "10", "20", "all")
#: file types ``prlib compare --bank`` reads (:data:`prlib.bank.BANK_FILE_TYPES`)
BANK_FILE_TYPES = (".csv", ".parquet", ".pq", ".jsonl", ".json")
#: the routers ``prlib compare --routers`` can pick, class name -> display name (those of
#: ``prlib.routers.registered()`` that compete; the upper bounds and references always run; a
#: test checks they agree)
ROUTERS = {
    "RandomRouter": "Random",
    "CheapestRouter": "Cheapest LLM",
    "MostExpensiveRouter": "Most expensive LLM",
    "BestSingleRouter": "Best single LLM",
    "BestPerUserRouter": "Best LLM per user",
    "BestPerUserTaskRouter": "Best LLM per user and task",
    "KNNRouter": "kNN (pooled)",
    "MLPRouter": "MLP classifier",
    "MFRouter": "Matrix factorisation (RouteLLM)",
    "GraphRouterGNN": "GraphRouter (GNN, no users)",
    "RouterDC": "RouterDC (dual contrastive)",
    "HybridLLMRouter": "HybridLLM",
    "FrugalGPTRouter": "FrugalGPT (cascade)",
    "PerUserKNNRouter": "kNN per user",
    "UserMLPRouter": "MLP + user embedding",
    "ReferenceDesignRouter": "Released PersonalizedRouter design",
    "PersonalizedRouterV2": "PersonalizedRouter v2 (ours)",
}
#: columns of a bank file (:data:`prlib.bank.FRAME_REQUIRED`) and of its LLMs
#: (:data:`prlib.bank.LLM_TABLE_REQUIRED`), checked in a CSV's header before anything loads
FRAME_REQUIRED = ("query", "llm", "quality")
LLM_TABLE_REQUIRED = ("llm", "input_usd_per_m", "output_usd_per_m", "description")

COMPARE_EPILOG = """the bank file: a row per (query, LLM) with the columns query, llm and quality
(in [0, 1]; empty: unscored), optionally query_id, task, response (the answer text),
input_tokens and output_tokens (each row needs a response or an output_tokens count); and the
LLM columns input_usd_per_m, output_usd_per_m (USD per 1M tokens) and description (one value
per LLM), unless --llms FILE gives them as a table. A folder written by Bank.save is read as is.

writes into --out: 55_multicost / 55_judge (one table per kind of users: every router, mean +-
std over --seeds), 55_tuning_*, 55_results_per_seed (+ .not_run.json: the routers not run and
why), 55_improvement_summary, the figure 55_main_results (.png, .pdf); with --sweep also
50_sweep_per_seed, 50_tuning_sweep, 50_headroom and the figure 50_sweep. Tables are CSV + .md.

the protocol (notebook 55): every router's grid tuned on validation of --tune-seeds, every torch
router (ours included) trained for at most --steps steps with early stopping, the report seeds
run, ours against the strongest baseline as a paired difference with a 95 % CI. Users are
simulated: the paper's nine multi-cost users (revealed utilities, reward), the offline persona
judges (they score the answer texts; choice-only feedback, accuracy). On a CPU the full protocol
(five seeds, 1,000 steps, every router) is long for thousands of queries: see how long a small
run takes first (--max-queries 300 --seeds 100 --steps 200)."""

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


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


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
    from prlib import provenance
    from prlib.metrics import routing_metrics

    provenance.check_fitted_and_scored(router, train, val, test, "prlib train", setting.feedback)

    reward = routing_metrics(test, router.route(test))["reward"]
    out = save_for_serving(router, args.out)
    print(f"trained on {len(train):,} requests (best step {router.log_.best_step}); test "
          f"reward {reward:.4f}; saved to {out}")
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
    st = router.store_
    counts = np.bincount(np.asarray(st.row_user, dtype=np.int64), minlength=len(st.users))
    rows = sorted(zip(st.users, counts.tolist()), key=lambda r: (-r[1], r[0]))
    if args.json:
        print(json.dumps({u: n for u, n in rows}, indent=1))
    else:
        print(f"{len(rows)} users, {int(counts.sum()):,} visible requests")
        for user, n in rows:
            print(f"{user}\t{n}")
    return 0


def _bank_path(text: str) -> Path:
    """A bank file (:data:`BANK_FILE_TYPES`) or a folder written by ``Bank.save``."""
    path = Path(text)
    if path.is_dir():
        if not (path / "meta.json").is_file():
            raise argparse.ArgumentTypeError(
                f"{path} is a folder without meta.json: give a bank file "
                f"({', '.join(BANK_FILE_TYPES)}) or a folder written by prlib.bank.Bank.save")
        return path
    if path.suffix.lower() not in BANK_FILE_TYPES:
        raise argparse.ArgumentTypeError(f"{path}: a bank file is one of "
                                         f"{', '.join(BANK_FILE_TYPES)}, got {path.suffix!r}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} not found")
    return path


def _router_name(text: str) -> str:
    """A router ``prlib compare`` can run: a class name or display name of :data:`ROUTERS`."""
    if text in ROUTERS or text in ROUTERS.values():
        return text
    import difflib

    names = {n.lower(): n for n in list(ROUTERS) + list(ROUTERS.values())}
    close = [names[n] for n in difflib.get_close_matches(text.lower(), names, n=3, cutoff=0.4)]
    raise argparse.ArgumentTypeError(
        f"no router {text!r}" + (f"; closest: {close}" if close else "") + f"; the routers: "
        f"{', '.join(ROUTERS)} (or their display names; the upper bounds and references "
        "always run)")


def _level(text: str) -> str:
    if text != "all":
        _positive_int(text)
    return text


def _csv_header(path: Path) -> list[str] | None:
    """The columns of a CSV file (``None`` for other types: they are read by the library)."""
    import csv

    if path.suffix.lower() != ".csv":
        return None
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


def _compare_checks(args) -> None:
    """Everything ``prlib compare`` can check before loading the data stack."""
    if set(args.tune_seeds) & set(REPORT_SEEDS):
        raise ValueError(f"--tune-seeds {sorted(set(args.tune_seeds) & set(REPORT_SEEDS))} are "
                         f"report seeds; tune on development seeds, e.g. {DEVELOPMENT_SEEDS}")
    if args.llms is not None and not Path(args.llms).is_file():
        raise FileNotFoundError(f"--llms {args.llms} not found")
    columns = None if args.bank.is_dir() else _csv_header(args.bank)
    if columns is not None:
        need = list(FRAME_REQUIRED) + ([] if args.llms else list(LLM_TABLE_REQUIRED[1:]))
        missing = [c for c in need if c not in columns]
        if missing:
            raise ValueError(f"{args.bank} lacks the columns {missing} (it has {columns})"
                             + ("" if args.llms else "; the LLM columns may come from --llms "
                                "FILE instead"))
        if "judge" in args.users and "response" not in columns:
            raise ValueError(f"{args.bank} has no 'response' column: the judge users score "
                             "answer texts; compare with --users multi-cost")
        if "response" not in columns and "output_tokens" not in columns:
            raise ValueError(f"{args.bank} needs a 'response' column (answer texts) or an "
                             "'output_tokens' column (answer lengths) to cost the answers")


def _compare(args) -> int:
    _compare_checks(args)
    from prlib.comparison import compare_bank

    out = compare_bank(args.bank, users=args.users, seeds=args.seeds,
                       tune_seeds=args.tune_seeds, steps=args.steps, folder=args.out,
                       sweep=args.sweep,
                       levels=[None if x == "all" else int(x) for x in args.levels],
                       routers=args.routers, ours=args.ours, llms=args.llms,
                       max_queries=args.max_queries,
                       judge_temperature=args.judge_temperature, device=args.device,
                       jobs=args.jobs, progress=True)
    print(out.describe())
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
    t.add_argument("--bench-users", type=_positive_int, default=1000,
                   help="how many PersonaRoute-Bench users (with --users bench)")
    t.add_argument("--max-queries", type=_positive_int, default=None,
                   help="a seeded sample of this many queries (default: all)")
    t.add_argument("--steps", type=_positive_int, default=1000,
                   help="training steps of the router")
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
    c = add("compare", "notebook 55's comparison of every router (and with --sweep notebook "
            "50's sweep) on a bank of your own, tables and figures into a folder",
            epilog=COMPARE_EPILOG)
    c.add_argument("--bank", required=True, type=_bank_path,
                   help=f"your bank: a {'/'.join(BANK_FILE_TYPES)} file, a row per (query, LLM) "
                        "(columns below), or a folder written by Bank.save")
    c.add_argument("--llms", metavar="FILE", default=None,
                   help="the LLM table (llm, input_usd_per_m, output_usd_per_m, description; "
                        "optional family, size_b), when the bank file lacks those columns")
    c.add_argument("--users", nargs="+", choices=COMPARE_USERS, default=["multi-cost"],
                   help="simulated users, one table each: multi-cost (nine users, revealed "
                        "utilities, reward); judge (persona judges of the answer texts, "
                        "choice-only feedback, accuracy; needs a response column)")
    c.add_argument("--seeds", nargs="+", type=int, default=list(REPORT_SEEDS),
                   help="report seeds: each one a query split and every router's initialisation")
    c.add_argument("--tune-seeds", nargs="+", type=int, default=[0],
                   help="development seeds whose validation split chooses each router's grid "
                        "point")
    c.add_argument("--steps", type=_positive_int, default=1000,
                   help="optimizer steps of every torch router, ours included (early stopping "
                        "on validation)")
    c.add_argument("--max-queries", type=_positive_int, default=None,
                   help="a seeded sample of this many queries (default: all)")
    c.add_argument("--routers", nargs="+", metavar="ROUTER", default=None, type=_router_name,
                   help="run only these (class or display names, `python -m prlib.routers` "
                        "lists them; the upper bounds and references always run) (default: "
                        "every registered router)")
    c.add_argument("--ours", metavar="ROUTER", default=None, type=_router_name,
                   help="the router compared with the strongest other (default: "
                        "PersonalizedRouterV2 when it runs, else the first of --routers)")
    c.add_argument("--sweep", action="store_true",
                   help="also notebook 50's sweep: every router (but GraphRouter and the "
                        "released design, the slowest) against training requests per user, "
                        "multi-cost users with revealed utilities and with choice-only noisy "
                        "picks")
    c.add_argument("--levels", nargs="+", type=_level, default=list(SWEEP_LEVELS),
                   help="training requests per user of the sweep ('all': every one)")
    c.add_argument("--judge-temperature", type=_non_negative_float, default=0.5,
                   help="the persona judges' choice temperature (0: always their best answer)")
    c.add_argument("--device", default="auto",
                   help="where ours trains: auto (CUDA when present), cpu, cuda")
    c.add_argument("--jobs", type=_positive_int, default=1,
                   help="fits at once, each in its own process with one torch thread (the "
                        "numbers do not depend on it)")
    c.add_argument("--out", default="compare-out", help="folder for the tables and figures")
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
    s.add_argument("--max-body-bytes", type=_positive_int, default=1_000_000,
                   help="larger request bodies get 413")
    s.add_argument("--connect-timeout", type=_positive_float, default=5.0,
                   help="seconds to connect to an upstream (then: unreachable)")
    s.add_argument("--read-timeout", type=_positive_float, default=120.0,
                   help="seconds an upstream may take to answer (then: 504)")
    s.add_argument("--retries", type=_non_negative_int, default=2,
                   help="further connection attempts to an upstream that cannot be reached "
                        "(a request that reached it is never retried)")
    s.add_argument("--fallbacks", type=_non_negative_int, default=2,
                   help="next-best LLMs tried when the chosen one cannot be reached")
    s.add_argument("--remember", type=_positive_int, default=100_000,
                   help="routed requests kept for feedback (the oldest are forgotten)")
    s.add_argument("--remember-mb", type=_positive_float, default=256.0,
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
                "compare": _compare}[args.cmd](args)
    except (FileNotFoundError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"prlib {args.cmd}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
