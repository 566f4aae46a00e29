"""``prlib compare``: notebook 55's comparison (and notebook 50's sweep) on a bank of your own.

Its arguments, and what can be checked of the bank file, are checked here before anything heavy
is imported; the work is :func:`prlib.comparison.compare_bank`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prlib.cli_args import non_negative_float, positive_int

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
    "PersonalizedRouterV3": "PersonalizedRouter v3 (ours)",
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
        positive_int(text)
    return text


def _csv_header(path: Path) -> list[str] | None:
    """The columns of a CSV file (``None`` for other types: they are read by the library)."""
    import csv

    if path.suffix.lower() != ".csv":
        return None
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        return next(csv.reader(f), [])


def check(args) -> None:
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


def run(args) -> int:
    check(args)
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


def add_parser(add) -> argparse.ArgumentParser:
    """The ``compare`` subcommand, added by the ``prlib`` parser's ``add(name, help, **kw)``."""
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
    c.add_argument("--steps", type=positive_int, default=1000,
                   help="optimizer steps of every torch router, ours included (early stopping "
                        "on validation)")
    c.add_argument("--max-queries", type=positive_int, default=None,
                   help="a seeded sample of this many queries (default: all)")
    c.add_argument("--routers", nargs="+", metavar="ROUTER", default=None, type=_router_name,
                   help="run only these (class or display names, `python -m prlib.routers` "
                        "lists them; the upper bounds and references always run) (default: "
                        "every registered router)")
    c.add_argument("--ours", metavar="ROUTER", default=None, type=_router_name,
                   help="the router compared with the strongest other (default: "
                        "PersonalizedRouterV3 when it runs, else the first of --routers)")
    c.add_argument("--sweep", action="store_true",
                   help="also notebook 50's sweep: every router (but GraphRouter and the "
                        "released design, the slowest) against training requests per user, "
                        "multi-cost users with revealed utilities and with choice-only noisy "
                        "picks")
    c.add_argument("--levels", nargs="+", type=_level, default=list(SWEEP_LEVELS),
                   help="training requests per user of the sweep ('all': every one)")
    c.add_argument("--judge-temperature", type=non_negative_float, default=0.5,
                   help="the persona judges' choice temperature (0: always their best answer)")
    c.add_argument("--device", default="auto",
                   help="where ours trains: auto (CUDA when present), cpu, cuda")
    c.add_argument("--jobs", type=positive_int, default=1,
                   help="fits at once, each in its own process with one torch thread (the "
                        "numbers do not depend on it)")
    c.add_argument("--out", default="compare-out", help="folder for the tables and figures")
    return c
