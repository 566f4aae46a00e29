"""Run routers over seeds on one (bank, preferences) pair; tidy results and mean ± std tables.

A seed fixes the query split (:func:`prlib.graph.split_queries`) and every router's
initialisation. With ``feedback="choice"`` (the judge setting: a user reveals only which answer
they picked) routers are trained and validated on :func:`prlib.baselines.choice_only` views, so
no router sees the judge's utilities; test metrics always use the true test requests.
"""

from __future__ import annotations

import inspect
import time
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from prlib.baselines import FAMILY, OracleRouter, choice_only
from prlib.config import seed_everything
from prlib.graph import NodeFeatures, build_requests, split_queries
from prlib.metrics import picks_vary_share, routing_metrics
from prlib.report import mean_std

#: A router factory: ``factory(feats, seed=seed)`` returns an unfitted router.
Factory = Callable[..., object]


def run_routers(factories: Sequence[Factory], bank, prefs, feats: NodeFeatures,
                seeds: Sequence[int], feedback: str = "utility", setting: str = "",
                fractions=(0.7, 0.1, 0.2), verbose: bool = False) -> pd.DataFrame:
    """Fit every router of ``factories`` on each seed's split and score it on that test split.

    Returns one row per (router, seed): ``setting``, ``router``, ``family``, ``seed``, the
    :func:`~prlib.metrics.routing_metrics` columns, ``picks_vary`` (share of test queries whose
    pick differs across users), ``fit_s`` (seconds) and ``n_train`` / ``n_test`` requests.
    """
    if feedback not in ("utility", "choice"):
        raise ValueError(f"feedback must be 'utility' or 'choice', got {feedback!r}")
    rows = []
    for seed in seeds:
        split = split_queries(prefs.interactions["query_id"].unique(), fractions, seed=seed)
        req = build_requests(prefs.interactions, bank, split)
        train, val, test = (req.split(s) for s in ("train", "val", "test"))
        if feedback == "choice":
            train, val = choice_only(train), choice_only(val)
        for factory in factories:
            seed_everything(seed)
            router = factory(feats, seed=seed)
            t0 = time.perf_counter()
            if "progress" in inspect.signature(router.fit).parameters:
                router.fit(train, val, progress=False)
            else:
                router.fit(train, val)
            fit_s = time.perf_counter() - t0
            picks = router.route(test)
            row = {"setting": setting, "router": router.name,
                   "family": FAMILY.get(router.name, "ours"), "seed": seed,
                   **routing_metrics(test, picks), "picks_vary": picks_vary_share(test, picks),
                   "fit_s": fit_s, "n_train": len(train), "n_test": len(test)}
            rows.append(row)
            if verbose:
                print(f"seed {seed} {router.name:38s} reward {row['reward']:.4f} "
                      f"acc {row['accuracy']:.3f} fit {fit_s:.1f}s", flush=True)
    return pd.DataFrame(rows)


def results_table(results: pd.DataFrame, metrics: Sequence[str], fmt: str = ".3f",
                  sort_by: str | None = None, mark: str | None = None) -> pd.DataFrame:
    """Mean ± std over seeds per router (:func:`prlib.report.mean_std`), one column per metric.

    Rows keep the order of first appearance, or descend by the mean of ``sort_by``. With
    ``mark`` (a metric), a ``best`` column flags the best router on it, the oracle excluded.
    """
    order = list(dict.fromkeys(results["router"]))
    g = results.groupby("router", sort=False)
    if sort_by is not None:
        order = g[sort_by].mean().sort_values(ascending=False).index.tolist()
    out = pd.DataFrame({"router": order,
                        "family": [results.loc[results["router"] == r, "family"].iloc[0]
                                   for r in order]})
    for m in metrics:
        out[m] = [mean_std(g.get_group(r)[m].to_numpy(), fmt) for r in order]
    out["seeds"] = [g.get_group(r)["seed"].nunique() for r in order]
    if mark is not None:
        best = strongest(results, mark, exclude=(OracleRouter.name,))
        out["best"] = np.where(out["router"] == best, "best (excl. oracle)", "")
    return out


def strongest(results: pd.DataFrame, metric: str, exclude: Sequence[str] = ()) -> str:
    """The router with the highest mean ``metric`` over seeds, ``exclude`` left out."""
    means = results[~results["router"].isin(exclude)].groupby("router")[metric].mean()
    return str(means.idxmax())


def improvement(results: pd.DataFrame, metric: str, ours: str) -> dict:
    """Relative improvement (%) of ``ours`` over the strongest other router (oracle excluded,
    strongest = best mean ``metric`` over seeds), computed per seed on the same split, then
    mean and std over seeds. A negative value means that baseline beats ours."""
    base = strongest(results, metric, exclude=(OracleRouter.name, ours))
    a = results[results["router"] == ours].set_index("seed")[metric]
    b = results[results["router"] == base].set_index("seed")[metric].reindex(a.index)
    pct = 100.0 * (a - b) / b.abs()
    return {"metric": metric, "ours": ours, "strongest_baseline": base,
            "ours_mean": float(a.mean()), "baseline_mean": float(b.mean()),
            "improvement_pct_mean": float(pct.mean()),
            "improvement_pct_std": float(pct.std(ddof=0)), "per_seed_pct": pct.to_dict(),
            "ours_wins": bool(a.mean() > b.mean())}


def describe_improvement(imp: dict, fmt: str = ".1f") -> str:
    """One sentence stating the computed improvement (or that a baseline wins)."""
    spread = mean_std(list(imp["per_seed_pct"].values()), fmt)
    if imp["ours_wins"]:
        return (f"{imp['ours']} beats the strongest baseline, {imp['strongest_baseline']}, on "
                f"{imp['metric']} by {spread} % (mean ± std over seeds; "
                f"{imp['ours_mean']:.4f} vs {imp['baseline_mean']:.4f}).")
    return (f"The strongest baseline, {imp['strongest_baseline']}, BEATS {imp['ours']} on "
            f"{imp['metric']}: ours differs by {spread} % (mean ± std over seeds; "
            f"{imp['ours_mean']:.4f} vs {imp['baseline_mean']:.4f}).")
