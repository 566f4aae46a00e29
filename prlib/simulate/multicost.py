"""Multi-cost-efficiency users (PersonalizedRouter's first simulation).

A user has a performance preference ``p`` in [0, 1]; the reward of LLM ``m`` on query ``q`` is

    reward = p * quality(q, m) - (1 - p) * cost_norm(q, m)

where ``cost_norm`` is the USD cost min-max normalised **per task** over all (query, LLM) rows of
that task in the bank, as the paper does. The user's choice is argmax reward (ties -> the cheaper
LLM), or, in the noisy mode, a draw from softmax(reward / temperature).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from prlib.bank import Bank
from prlib.simulate.preferences import Preferences, PreferencesError, choose

#: The paper's nine users: p = 0.2, 0.3, ..., 1.0.
PAPER_PS: tuple[float, ...] = tuple(round(0.2 + 0.1 * i, 1) for i in range(9))
COST_NOTE = ("cost_usd min-max normalised per task over that task's (query, LLM) rows of the bank "
             "(PersonalizedRouter's convention); a task whose costs are all equal gets 0")
TIE_NOTE = "ties in reward are broken by the lower raw cost, then by the LLM order of the bank"


def check_p(p) -> np.ndarray:
    """``p`` as a float array; a clear error when any value is outside [0, 1] or not a number."""
    arr = np.atleast_1d(np.asarray(p, dtype=float))
    bad = arr[~((arr >= 0) & (arr <= 1))]
    if bad.size:
        raise PreferencesError(f"performance preference p must lie in [0, 1] (p=1: quality only, "
                               f"p=0: cost only); got {bad.tolist()[:5]}. Rescale or clip it.")
    return arr


def normalized_cost(bank: Bank) -> pd.Series:
    """Per-task min-max normalised cost, aligned with ``bank.bank`` rows (values in [0, 1])."""
    cost = bank.bank["cost_usd"].astype(float)
    grp = cost.groupby(bank.bank["task"])
    lo, hi = grp.transform("min"), grp.transform("max")
    span = (hi - lo).to_numpy()
    out = np.where(span > 0, (cost - lo).to_numpy() / np.where(span > 0, span, 1.0), 0.0)
    return pd.Series(out, index=bank.bank.index, name="cost_norm")


def multi_cost_reward(quality, cost_norm, p: float) -> np.ndarray:
    """``p * quality - (1 - p) * cost_norm``, elementwise."""
    (p,) = check_p(p)
    return p * np.asarray(quality, dtype=float) - (1.0 - p) * np.asarray(cost_norm, dtype=float)


def scorable_queries(bank: Bank) -> tuple[list[str], list[str]]:
    """(kept, dropped) query ids: a query is dropped when any of its rows has NaN quality, or it
    has no row at all (it cannot be scored; nothing is guessed)."""
    nan_q = set(bank.bank.loc[bank.bank["quality"].isna(), "query_id"])
    present = set(bank.bank["query_id"])
    ids = bank.queries["query_id"].tolist()
    kept = [q for q in ids if q in present and q not in nan_q]
    return kept, [q for q in ids if q not in kept]


class _Grid:
    """Bank columns as dense (query x llm) arrays; ``-inf``/NaN where an LLM is no candidate."""

    def __init__(self, bank: Bank, query_ids: list[str]):
        self.query_ids = list(query_ids)
        self.llms = bank.llm_names
        b = bank.bank.assign(cost_norm=normalized_cost(bank))
        b = b[b["query_id"].isin(set(self.query_ids))]
        qpos = {q: i for i, q in enumerate(self.query_ids)}
        lpos = {l: j for j, l in enumerate(self.llms)}
        shape = (len(self.query_ids), len(self.llms))
        self.quality, self.cost_norm, self.cost = (np.full(shape, np.nan) for _ in range(3))
        i = b["query_id"].map(qpos).to_numpy()
        j = b["llm"].map(lpos).to_numpy()
        self.quality[i, j] = b["quality"].to_numpy(dtype=float)
        self.cost_norm[i, j] = b["cost_norm"].to_numpy(dtype=float)
        self.cost[i, j] = b["cost_usd"].to_numpy(dtype=float)
        self.candidate = ~np.isnan(self.quality)
        self.qpos = qpos


def interactions_frame(user_ids: list[str], rows: list[np.ndarray], utilities: list[np.ndarray],
                       chosen: list[np.ndarray], candidate: np.ndarray, query_ids: list[str],
                       llms: list[str]) -> pd.DataFrame:
    """Long interactions table from per-user blocks.

    ``rows[u]``: (n_u,) query positions; ``utilities[u]``: (n_u, k); ``chosen[u]``: (n_u,) column
    index; ``candidate``: (n_queries, k) bool mask. Only candidate cells become rows.
    """
    qids, lnames = np.asarray(query_ids, dtype=object), np.asarray(llms, dtype=object)
    parts = {"user_id": [], "query_id": [], "llm": [], "utility": [], "chosen": []}
    for uid, r, util, ch in zip(user_ids, rows, utilities, chosen):
        mask = candidate[r]
        qi, lj = np.nonzero(mask)
        parts["user_id"].append(np.full(len(qi), uid, dtype=object))
        parts["query_id"].append(qids[r][qi])
        parts["llm"].append(lnames[lj])
        parts["utility"].append(util[qi, lj])
        parts["chosen"].append(ch[qi] == lj)
    if not user_ids:
        return pd.DataFrame({c: [] for c in parts})
    return pd.DataFrame({k: np.concatenate(v) for k, v in parts.items()}).astype(
        {"user_id": str, "query_id": str, "llm": str, "utility": float, "chosen": bool})


def multi_cost_preferences(bank: Bank, users: pd.DataFrame,
                           samples: dict[str, list[str]] | None = None, seed: int = 0,
                           name: str | None = None, extra_meta: dict | None = None) -> Preferences:
    """Preferences of given multi-cost users on ``bank``.

    ``users`` needs ``user_id``, ``archetype``, ``p`` and ``temperature`` (0 = argmax); ``samples``
    maps a user to the query ids it sees (default: every scorable query). Queries with a NaN
    quality are dropped (counted in ``meta``); a sampled query that was dropped is skipped.
    """
    if not bank.has_quality:
        raise PreferencesError(f"bank {bank.name!r} has no quality scores, so multi-cost rewards "
                               "cannot be computed; use a scored bank (llmrouter, arena-bench-v1) "
                               "or the judge strategy on response texts")
    check_p(users["p"])
    kept, dropped = scorable_queries(bank)
    if not kept:
        raise PreferencesError(f"bank {bank.name!r}: no query has a quality score for every LLM")
    grid = _Grid(bank, kept)
    rng = np.random.default_rng(seed)
    rows, utils, chosen, skipped = [], [], [], 0
    for u in users.itertuples():
        if samples is None:
            r = np.arange(len(kept))
        else:
            qs = samples.get(u.user_id, [])
            if len(qs) == 0:
                raise PreferencesError(f"user {u.user_id!r} has an empty query sample; give every "
                                       "user at least one query (queries_per_user >= 1)")
            r = np.array([grid.qpos[q] for q in qs if q in grid.qpos], dtype=int)
            skipped += len(qs) - len(r)
        util = multi_cost_reward(grid.quality[r], grid.cost_norm[r], u.p)
        util = np.where(grid.candidate[r], util, -np.inf)
        ch = choose(util, float(u.temperature), rng, tie_break=np.where(grid.candidate[r],
                                                                        grid.cost[r], np.inf))
        rows.append(r), utils.append(util), chosen.append(ch)
    inter = interactions_frame(users["user_id"].tolist(), rows, utils, chosen, grid.candidate,
                               kept, grid.llms)
    # what calling an LLM costs the user in reward units: a cascade that calls several LLMs
    # is charged this for each one it calls (prlib.metrics.routing_metrics)
    cost_norm = pd.Series(grid.cost_norm.ravel(), index=pd.MultiIndex.from_product(
        [grid.query_ids, grid.llms]))
    p_of = dict(zip(users["user_id"], users["p"].astype(float)))
    inter["call_cost"] = (1.0 - inter["user_id"].map(p_of).to_numpy()) * cost_norm.reindex(
        pd.MultiIndex.from_arrays([inter["query_id"], inter["llm"]])).to_numpy()
    meta = {"reward": "p * quality - (1 - p) * cost_norm", "cost_normalisation": COST_NOTE,
            "call_cost": "(1 - p) * cost_norm: the reward a call of that LLM costs the user",
            "choice": "argmax reward (temperature 0) or softmax(reward / temperature) draw",
            "ties": TIE_NOTE, "seed": seed, "llms": grid.llms,
            "queries_scored": len(kept), "queries_dropped_nan_quality": len(dropped),
            "sampled_queries_skipped_nan_quality": skipped,
            "quality_source": bank.meta.get("quality", "")}
    meta.update(extra_meta or {})
    return Preferences(name or f"multi_cost-{bank.name}", "multi_cost", bank.name,
                       users.reset_index(drop=True), inter, meta)


def paper_multi_cost_users(ps=PAPER_PS, temperature: float = 0.0) -> pd.DataFrame:
    """The users table of one user per ``p`` (default: the paper's nine, 0.2 ... 1.0)."""
    ps = check_p(ps)
    if temperature < 0:
        raise PreferencesError(f"temperature must be >= 0, got {temperature}")
    return pd.DataFrame({
        "user_id": [f"mc-{i:02d}" for i in range(len(ps))], "strategy": "multi_cost",
        "archetype": "paper_fixed_p",
        "params": [json.dumps({"p": float(p), "temperature": float(temperature)}) for p in ps],
        "p": ps.astype(float), "temperature": float(temperature)})


def simulate_multi_cost(bank: Bank, ps=PAPER_PS, temperature: float = 0.0, seed: int = 0,
                        query_ids: list[str] | None = None, name: str | None = None) -> Preferences:
    """The paper's multi-cost users (one per ``p``) on every scorable query of ``bank`` (or on
    ``query_ids``). ``temperature > 0`` turns on noisy (softmax) choices, seeded by ``seed``."""
    users = paper_multi_cost_users(ps, temperature)
    samples = None
    if query_ids is not None:
        query_ids = list(query_ids)
        if not query_ids:
            raise PreferencesError("query_ids is empty; pass None for every query or a non-empty "
                                   "list of query ids of the bank")
        samples = {u: query_ids for u in users["user_id"]}
    return multi_cost_preferences(bank, users, samples, seed, name,
                                  {"generator": {"ps": [float(p) for p in check_p(ps)],
                                                 "temperature": temperature}})


def best_llm_diversity(prefs: Preferences) -> dict:
    """How often users disagree on a query: share of queries (seen by >= 2 users) whose chosen
    LLM differs between users, and the mean number of distinct chosen LLMs per query."""
    c = prefs.choices()
    per_q = c.groupby("query_id")["chosen_llm"].agg(["nunique", "size"])
    per_q = per_q[per_q["size"] >= 2]
    return {"queries": len(per_q), "share_differs": float((per_q["nunique"] > 1).mean()),
            "mean_distinct_llms": float(per_q["nunique"].mean())}
