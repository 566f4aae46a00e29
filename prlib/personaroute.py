"""PersonaRoute-Bench routed (notebook 95): the bench as settings, a sparsity sweep over
interactions per user, and a scaling study over the number of users.

The users come from :func:`prlib.simulate.personaroute_bench` (simulated, documented
archetypes); routers are compared by the one experiment path (:mod:`prlib.experiment`), so the
tables follow the protocol of notebook 50: grid points chosen on validation of a development
seed, report seeds for the numbers, paired confidence intervals.

A scaling point (:func:`scaling_point`) generates a bench of ``n_users`` users and fits a router
on it, measuring what it costs (:mod:`prlib.efficiency`); :func:`scaling_study` runs every point
in a fresh process (``python -m prlib.personaroute``), so each point's peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import pandas as pd
from tqdm.auto import tqdm

from prlib.bank import Bank
from prlib.efficiency import machine, peak_rss_mb, routing_speed, timed_fit
from prlib import provenance
from prlib.experiment import Setting, _new_router, run_setting, setting_views
from prlib.features import NodeFeatures, node_features
from prlib.metrics import routing_metrics
from prlib.routers import Router, get_router
from prlib.simulate import BENCH_LLMS, BenchConfig, JudgeScores, personaroute_bench
from prlib.simulate.bench import STRATEGIES

#: What each strategy's users reveal and the tables' main metric (as in notebook 50).
FEEDBACK = {"multi_cost": ("utility", "reward"), "judge": ("choice", "accuracy")}
#: The routers of the bench's sweeps over training requests per user (notebooks 50 and 95): the
#: population routers, the per-user lookup and kNN, both MLPs, ours and the reference rows; the
#: other routers take minutes per fit at 1,000 users and run in notebook 95's main table only.
SWEEP_ROUTERS: tuple[str, ...] = (
    "CheapestRouter", "BestSingleRouter", "BestPerUserRouter", "MLPRouter", "PerUserKNNRouter",
    "UserMLPRouter", "PersonalizedRouterV3", "StructuredReferenceRouter", "CeilingRouter",
    "OracleRouter")


def bench_settings(bank: Bank, cfg: BenchConfig, scores: JudgeScores | None = None,
                   train_per_user: int | None = None, features: NodeFeatures | None = None,
                   strategies: Sequence[str] = STRATEGIES) -> dict[str, Setting]:
    """The bench's strategies as :class:`~prlib.experiment.Setting` s on ``bank``
    (arena-bench-v1) restricted to the bench's LLMs: ``{"multi_cost": ..., "judge": ...}``.

    Multi-cost users reveal every candidate's utility (main metric: reward); judge users only
    their pick (choice-only feedback, main metric: accuracy). ``train_per_user``: each user
    keeps at most that many training requests (validation and test unchanged). ``features``:
    node features of ``bank.subset(llms=cfg.llms)`` (computed once, with answer embeddings,
    when not given); both settings share them.
    """
    prefs = personaroute_bench(bank, cfg, scores=scores, strategies=tuple(strategies))
    sub = bank.subset(llms=list(cfg.llms))
    feats = features if features is not None else node_features(sub, answers=True)
    out = {}
    for strategy, p in prefs.items():
        feedback, metric = FEEDBACK[strategy]
        out[strategy] = Setting(f"PersonaRoute-Bench · {strategy} · {cfg.n_users} users", sub,
                                p, feedback=feedback, metric=metric, features=feats,
                                train_per_user=train_per_user)
    return out


def sparsity_sweep(setting: Setting, levels: Sequence[int],
                   routers: Sequence[type[Router] | str], seeds: Sequence[int],
                   params: Mapping[str, dict] | None = None, progress: bool = False,
                   jobs: int = 1) -> pd.DataFrame:
    """:func:`~prlib.experiment.run_setting` once per level of interactions per user in
    training (``train_per_user``; validation and test requests unchanged, so every level is
    scored on the same test requests); the rows of all levels with a ``train_per_user``
    column. ``params`` may name routers that are not swept (e.g. a whole
    :meth:`~prlib.experiment.Tuning.params`); only the swept routers' are used."""
    names = {get_router(r).__name__ for r in routers}
    params = {k: v for k, v in (params or {}).items() if k in names}
    if not levels:
        raise ValueError("levels is empty: give the interactions per user to sweep, e.g. "
                         "[5, 10, 20, 50]")
    frames = []
    for level in tqdm(list(levels), desc=f"sparsity · {setting.name}", disable=not progress):
        res = run_setting(replace(setting, train_per_user=int(level)), routers, seeds, params,
                          jobs=jobs)
        frames.append(res.assign(train_per_user=int(level)))
    return pd.concat(frames, ignore_index=True)


def scaling_point(n_users: int, bank: Bank, router: str = "PersonalizedRouterV3",
                  strategy: str = "multi_cost", queries_per_user: int = 100,
                  train_per_user: int | None = 20, seed: int = 0,
                  params: Mapping | None = None, calls: int = 300,
                  scores: JudgeScores | None = None,
                  features: NodeFeatures | None = None,
                  llms: Sequence[str] = BENCH_LLMS) -> dict:
    """Generate a bench of ``n_users`` users, fit ``router`` on split ``seed`` and measure it.

    ``features``: node features of the bench's bank (default: query, task and LLM embeddings
    without answer texts, enough for every router but a cascade). ``llms``: the bench's LLMs
    (default: :data:`~prlib.simulate.BENCH_LLMS`).

    Returns one row: users and requests, generation seconds, fit seconds, optimizer steps run
    and the validation-best step, seconds per step, the fit's memory increase (MB,
    :class:`~prlib.efficiency.PeakMemory`), the process's peak resident memory so far (data,
    libraries and fit together; meaningful when the point runs in its own process), batched
    and single-request routing speed on the test requests
    (:func:`~prlib.efficiency.routing_speed`), the test metric, and the machine.
    """
    start = time.perf_counter()
    cfg = BenchConfig(n_users=n_users, queries_per_user=queries_per_user, seed=0,
                      llms=tuple(llms))
    if features is None:
        features = node_features(bank.subset(llms=list(cfg.llms)))
    setting = bench_settings(bank, cfg, scores=scores, train_per_user=train_per_user,
                             features=features, strategies=[strategy])[strategy]
    train, val, test = setting_views(setting, seed)
    generate_s = time.perf_counter() - start
    cls = get_router(router)
    model = _new_router(cls, setting, seed, dict(params or {}))
    cost = timed_fit(model, train, val)
    where = f"scaling point {n_users} users, seed {seed}"
    provenance.check_fitted_and_scored(model, train, val, test, where, setting.feedback)
    speed = routing_speed(model, test, calls=calls)
    metric = routing_metrics(test, model.route(test))[setting.metric]
    return {"router": cls.name, "strategy": strategy, "n_users": n_users,
            "train_per_user": train_per_user, "train_requests": len(train),
            "val_requests": len(val), "test_requests": len(test), "seed": seed,
            "generate_s": generate_s, "fit_s": cost.fit_s, "steps_run": cost.steps_run,
            "best_step": cost.best_step, "s_per_step": cost.seconds_per_step,
            "fit_memory_increase_mb": cost.increase_mb,
            "process_peak_rss_mb": peak_rss_mb(), **speed,
            "metric": setting.metric, "test_metric": metric, **machine()}


def scaling_study(users: Sequence[int], router: str = "PersonalizedRouterV3",
                  strategy: str = "multi_cost", queries_per_user: int = 100,
                  train_per_user: int | None = 20, seed: int = 0,
                  params: Mapping | None = None, calls: int = 300, threads: int = 1,
                  queries: int | None = None, progress: bool = False) -> pd.DataFrame:
    """:func:`scaling_point` for each number of ``users``, each in a fresh process with
    ``threads`` torch threads (so its peak memory is its own) on arena-bench-v1 (``queries``:
    a seeded sample of that many of its queries); one row per point."""
    rows = []
    for n in tqdm(list(users), desc=f"scaling · {router}", disable=not progress):
        cmd = [sys.executable, "-m", "prlib.personaroute", "--users", str(n), "--router", router,
               "--strategy", strategy, "--queries-per-user", str(queries_per_user),
               "--seed", str(seed), "--calls", str(calls), "--threads", str(threads),
               "--params", json.dumps(dict(params or {}))]
        if train_per_user is not None:
            cmd += ["--train-per-user", str(train_per_user)]
        if queries is not None:
            cmd += ["--queries", str(queries)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"scaling point with {n} users failed (exit {out.returncode}):\n"
                               f"{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    """One scaling point in this process, printed as one JSON line (used by
    :func:`scaling_study`)."""
    parser = argparse.ArgumentParser(prog="python -m prlib.personaroute",
                                     description=scaling_point.__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--router", default="PersonalizedRouterV3")
    parser.add_argument("--strategy", default="multi_cost", choices=list(STRATEGIES))
    parser.add_argument("--queries-per-user", type=int, default=100)
    parser.add_argument("--train-per-user", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--params", default="{}", help="router hyper-parameters as JSON")
    parser.add_argument("--queries", type=int, default=None,
                        help="a seeded sample of this many arena-bench-v1 queries (smoke runs)")
    args = parser.parse_args(argv)
    import torch

    from prlib.data import load_bank

    torch.set_num_threads(args.threads)
    bank = load_bank("arena-bench-v1")
    if args.queries is not None:
        bank = bank.sample_queries(args.queries, seed=0)
    row = scaling_point(args.users, bank, args.router, args.strategy,
                        args.queries_per_user, args.train_per_user, args.seed,
                        json.loads(args.params), args.calls)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
