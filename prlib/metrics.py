"""Evaluation: routing metrics, Pareto fronts and aggregation over seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd


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


def ceiling_utilities(requests) -> np.ndarray:
    """(n, n_llms): for each request, every LLM's mean utility over the requests of the same
    (user, task) in ``requests`` (NaN where the LLM was never a candidate there). Routing each
    request to the argmax is the decide-before-answers ceiling
    (:class:`prlib.routers.reference.CeilingRouter`): each user's best LLM per task, chosen on
    the requests themselves."""
    keys = [requests.frame["user_id"].astype(str).to_numpy(),
            requests.frame["task"].astype(str).to_numpy()]
    return pd.DataFrame(np.asarray(requests.utility, dtype=float)).groupby(
        keys, sort=False).transform("mean").to_numpy()


def routing_metrics(requests, picks, calls=None) -> dict[str, float]:
    """Metrics of routing ``requests`` (a :class:`prlib.requests.Requests`) to LLM indices
    ``picks`` (n,); ``calls`` (n, n_llms) bool: every LLM called per request (a cascade's
    tries; default: the pick only).

    reward: mean utility of the picked LLM (the user's reward in the multi-cost setting, the
    hidden persona score in the judge setting) minus the ``requests.call_cost`` of every other
    LLM called (what the user paid for answers that were thrown away); oracle_reward: mean of the
    per-request best utility; random_reward: mean over requests of the candidates' mean utility (the
    expected reward of a uniformly random pick); ceiling_reward: the reward of the
    decide-before-answers ceiling (:func:`ceiling_utilities`); **score**: the one normalised
    score of every table, ``100 * (reward - random_reward) / (ceiling_reward - random_reward)``,
    so that random routing scores 0 and the ceiling (what a router that decides before the
    answers exist can reach) 100 in every setting; the oracle scores above 100;
    score_oracle: the same with the oracle at 100; pct_oracle: reward / oracle_reward (the
    paper's "% of oracle", meaningful for multi-cost rewards only); accuracy: share of picks equal
    to the user's choice; performance: mean bank quality of the picks; cost_usd: mean USD cost of
    every LLM called; calls: mean number of LLMs called per request.
    """
    picks = np.asarray(picks, dtype=int)
    rows = np.arange(len(picks))
    if len(picks) != len(requests):
        raise ValueError(f"{len(picks)} picks for {len(requests)} requests")
    if np.isnan(requests.utility[rows, picks]).any():
        raise ValueError("a pick names an LLM that is not a candidate of its request")
    if calls is None:
        calls = np.zeros(requests.utility.shape, bool)
        calls[rows, picks] = True
    calls = np.asarray(calls, dtype=bool)
    if calls.shape != requests.utility.shape or not calls[rows, picks].all():
        raise ValueError(f"calls must be a bool array of shape {requests.utility.shape} that "
                         "includes every pick")
    if (calls & np.isnan(requests.utility)).any():
        raise ValueError("calls name an LLM that is not a candidate of its request")
    extra = calls.copy()
    extra[rows, picks] = False
    charged = 0.0
    if requests.call_cost is not None:
        charged = np.where(extra, np.nan_to_num(requests.call_cost), 0.0).sum(1)
    reward = float((requests.utility[rows, picks] - charged).mean())
    oracle = float(np.nanmax(requests.utility, axis=1).mean())
    random = float(np.nanmean(requests.utility, axis=1).mean())
    span = oracle - random
    means = ceiling_utilities(requests)
    best = np.where(np.isnan(requests.utility), -np.inf, np.nan_to_num(means, nan=-np.inf))
    ceiling = float(requests.utility[rows, best.argmax(1)].mean()) if len(rows) else float("nan")
    ceiling_span = ceiling - random
    out = {"reward": reward, "oracle_reward": oracle, "random_reward": random,
           "ceiling_reward": ceiling,
           "score": (100.0 * (reward - random) / ceiling_span if ceiling_span > 0
                     else float("nan")),
           "score_oracle": 100.0 * (reward - random) / span if span > 0 else float("nan"),
           "pct_oracle": 100.0 * reward / oracle if oracle else float("nan"),
           "accuracy": float((picks == requests.chosen).mean()),
           "calls": float(calls.sum(1).mean())}
    if requests.quality is not None:
        q = requests.quality[rows, picks]
        # a bank without quality scores (e.g. arena-hard) has none: NaN, and no warning
        out["performance"] = float(np.nanmean(q)) if np.isfinite(q).any() else float("nan")
        # a request whose called LLMs have an unknown (NaN) cost is left out of the mean
        out["cost_usd"] = float(np.nanmean(np.where(calls, requests.cost, 0.0).sum(1)))
    return out


def mean_ci(values, confidence: float = 0.95) -> dict[str, float]:
    """Mean over seeds with a Student-t confidence interval of the mean (``ci_low``,
    ``ci_high``; NaN with fewer than 2 values), plus ``std`` (ddof 1) and ``n``."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    n = len(v)
    mean = float(v.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "std": float("nan"), "ci_low": float("nan"),
                "ci_high": float("nan"), "n": n}
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return {"mean": mean, "std": float(v.std(ddof=1)), "ci_low": mean - half,
            "ci_high": mean + half, "n": n}


def paired_difference(a, b, confidence: float = 0.95) -> dict[str, float]:
    """Paired difference ``a - b`` over seeds (same split per seed): :func:`mean_ci` of the
    per-seed differences."""
    return mean_ci(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), confidence)


def picks_vary_share(requests, picks) -> float:
    """Share of queries (asked by 2+ users) on which the picked LLM differs across users."""
    import pandas as pd

    df = pd.DataFrame({"query_id": requests.frame["query_id"].to_numpy(), "pick": picks})
    g = df.groupby("query_id")["pick"]
    multi = g.size() > 1
    return float((g.nunique()[multi] > 1).mean())


#: Pairwise metrics (GMTRouter's): a setting may name one as its main metric.
PAIRWISE_METRICS = ("pair_accuracy", "pair_auc")


def preference_pairs(utility, eps: float = 1e-9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ordered pair of a request's candidates whose utilities differ by more than ``eps``
    (ties are skipped, as GMTRouter's labels do): ``(row, better, worse)``, each (n_pairs,),
    with ``utility[row, better] > utility[row, worse]``. ``utility``: (n, n_llms), NaN = no
    candidate."""
    u = np.asarray(utility, dtype=float)
    rows, better, worse = [], [], []
    for i, j in zip(*np.triu_indices(u.shape[1], k=1)):
        d = u[:, i] - u[:, j]
        ok = np.isfinite(d) & (np.abs(d) > eps)
        r = np.flatnonzero(ok)
        rows.append(r)
        better.append(np.where(d[r] > 0, i, j))
        worse.append(np.where(d[r] > 0, j, i))
    cat = lambda parts: np.concatenate(parts).astype(int) if parts else np.zeros(0, int)  # noqa: E731
    return cat(rows), cat(better), cat(worse)


def pairwise_metrics(requests, scores) -> dict[str, float]:
    """Pairwise accuracy and ROC-AUC of ``scores`` (n, n_llms) on the preference pairs of
    ``requests`` (:func:`preference_pairs` of its true utilities).

    A pair (better b, worse w) is predicted by the score difference ``s_b - s_w``:
    ``pair_accuracy`` = share of pairs with a positive difference (a zero difference counts
    one half, so a constant router scores 0.5); ``pair_auc`` = scikit-learn's ROC-AUC with every
    pair in both orientations (label 1 for (b, w), 0 for (w, b)), i.e. the probability that
    the difference of a correctly oriented pair exceeds that of a wrongly oriented one.
    ``n_pairs``: the number of pairs (NaN metrics when there is none). A candidate without a
    finite score ranks below the request's scored candidates (two of them tie)."""
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores, dtype=float)
    if s.shape != requests.utility.shape:
        raise ValueError(f"scores have shape {s.shape}, the requests {requests.utility.shape}")
    rows, b, w = preference_pairs(requests.utility)
    if len(rows) == 0:
        return {"pair_accuracy": float("nan"), "pair_auc": float("nan"), "n_pairs": 0}
    # a candidate a router cannot score (-inf / NaN, e.g. kNN without a neighbour that rated
    # it) ranks below every scored one of its request; two unscored candidates tie
    finite = np.isfinite(s)
    low = np.where(finite, s, np.inf).min(1, keepdims=True)
    s = np.where(finite, s, np.where(np.isfinite(low), low, 0.0) - 1.0)
    diff = s[rows, b] - s[rows, w]
    acc = float(np.mean((diff > 0) + 0.5 * (diff == 0)))
    auc = float(roc_auc_score(np.r_[np.ones(len(diff)), np.zeros(len(diff))], np.r_[diff, -diff]))
    return {"pair_accuracy": acc, "pair_auc": auc, "n_pairs": int(len(diff))}
