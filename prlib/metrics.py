"""Evaluation: routing metrics, Pareto fronts and aggregation over seeds."""

from __future__ import annotations

import numpy as np


def pareto_front(quality, cost) -> np.ndarray:
    """Boolean mask of points not dominated (higher-or-equal quality at lower-or-equal cost,
    strictly better in one); NaN quality is never on the front. Shapes (n,) -> (n,)."""
    q = np.asarray(quality, dtype=float)
    c = np.asarray(cost, dtype=float)
    ok = ~np.isnan(q) & ~np.isnan(c)
    front = np.zeros(len(q), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (q >= q[i]) & (c <= c[i]) & ((q > q[i]) | (c < c[i]))
        front[i] = not dominated.any()
    return front


def routing_metrics(requests, picks) -> dict[str, float]:
    """Metrics of routing ``requests`` (a :class:`prlib.graph.Requests`) to LLM indices ``picks``.

    reward: mean utility of the picked LLM (the user's reward in the multi-cost setting, the
    persona score in the judge setting); oracle_reward: mean of the per-request best utility;
    pct_oracle: reward / oracle_reward; accuracy: share of picks equal to the user's choice;
    performance / cost_usd: mean bank quality and USD cost of the picked LLMs.
    """
    picks = np.asarray(picks, dtype=int)
    rows = np.arange(len(picks))
    if len(picks) != len(requests):
        raise ValueError(f"{len(picks)} picks for {len(requests)} requests")
    if np.isnan(requests.utility[rows, picks]).any():
        raise ValueError("a pick names an LLM that is not a candidate of its request")
    reward = float(requests.utility[rows, picks].mean())
    oracle = float(np.nanmax(requests.utility, axis=1).mean())
    out = {"reward": reward, "oracle_reward": oracle,
           "pct_oracle": 100.0 * reward / oracle if oracle else float("nan"),
           "accuracy": float((picks == requests.chosen).mean())}
    if requests.quality is not None:
        out["performance"] = float(np.nanmean(requests.quality[rows, picks]))
        out["cost_usd"] = float(np.nanmean(requests.cost[rows, picks]))
    return out


def picks_vary_share(requests, picks) -> float:
    """Share of queries (asked by 2+ users) on which the picked LLM differs across users."""
    import pandas as pd

    df = pd.DataFrame({"query_id": requests.frame["query_id"].to_numpy(), "pick": picks})
    g = df.groupby("query_id")["pick"]
    multi = g.size() > 1
    return float((g.nunique()[multi] > 1).mean())
