"""Simple routers: fixed rules and lookup tables, plus the oracle upper bound."""

from __future__ import annotations

import numpy as np
import pandas as pd

from prlib.routers.base import Router, candidates, col_nanmean, register


@register
class RandomRouter(Router):
    """A uniformly random candidate (seeded per request: a request gets the same pick in any
    batch)."""

    name = "Random"
    family = "simple"

    def _raw_scores(self, requests):
        """(n, n_llms) uniform draws keyed by (seed, user, query, LLM), not by batch position."""
        rows = pd.util.hash_pandas_object(requests.frame[["user_id", "query_id"]],
                                          index=False).to_numpy()
        cols = np.arange(self.n_llms, dtype=np.uint64) + np.uint64(self.seed) * np.uint64(4099)
        keys = rows[:, None] ^ (cols[None, :] * np.uint64(0x9E3779B97F4A7C15))
        return pd.util.hash_array(keys.ravel()).reshape(keys.shape) / float(2 ** 64)


class PerLLMRouter(Router):
    """One fixed value per LLM learned on train; routes to the best candidate by that value."""

    def _values(self, train) -> np.ndarray:
        raise NotImplementedError

    def fit(self, train, val, *, progress=False):
        self.values_ = self._values(train)
        return self

    def _raw_scores(self, requests):
        return np.broadcast_to(self.values_, (len(requests), self.n_llms))


@register
class CheapestRouter(PerLLMRouter):
    """The candidate with the lowest mean USD cost in train."""

    name = "Cheapest LLM"
    family = "simple"

    def _values(self, train):
        return -col_nanmean(np.where(candidates(train), train.cost, np.nan), fill=np.inf)


@register
class MostExpensiveRouter(PerLLMRouter):
    """The candidate with the highest mean USD cost in train."""

    name = "Most expensive LLM"
    family = "simple"

    def _values(self, train):
        return col_nanmean(np.where(candidates(train), train.cost, np.nan))


@register
class BestSingleRouter(PerLLMRouter):
    """The candidate with the highest mean utility over all users' training requests."""

    name = "Best single LLM"
    family = "simple"

    def _values(self, train):
        return col_nanmean(train.utility)


@register
class BestPerUserRouter(Router):
    """Each user's best LLM on their own training requests (unknown users: the overall best)."""

    name = "Best LLM per user"
    family = "simple"

    def fit(self, train, val, *, progress=False):
        self.overall_ = col_nanmean(train.utility)
        self.per_user_ = {}
        for user, rows in train.frame.groupby("user_id").indices.items():
            m = col_nanmean(train.utility[rows], fill=np.nan)
            self.per_user_[user] = np.where(np.isnan(m), self.overall_ - 1e6, m)
        return self

    def _raw_scores(self, requests):
        rows = [self.per_user_.get(u, self.overall_) for u in requests.frame["user_id"]]
        return np.stack(rows) if rows else np.zeros((0, self.n_llms))


@register
class BestPerUserTaskRouter(BestPerUserRouter):
    """Each user's best LLM on their own training requests of the query's task (a lookup table
    of mean utility per user, task and LLM); unseen (user, task) pairs fall back to the user's
    best, unknown users to the overall best."""

    name = "Best LLM per user and task"
    family = "simple"

    def fit(self, train, val, *, progress=False):
        super().fit(train, val)
        self.per_user_task_ = {}
        for key, rows in train.frame.groupby(["user_id", "task"]).indices.items():
            m = col_nanmean(train.utility[rows], fill=np.nan)
            self.per_user_task_[key] = np.where(np.isnan(m), self.overall_ - 1e6, m)
        return self

    def _raw_scores(self, requests):
        rows = [self.per_user_task_.get((u, t), self.per_user_.get(u, self.overall_))
                for u, t in zip(requests.frame["user_id"], requests.frame["task"])]
        return np.stack(rows) if rows else np.zeros((0, self.n_llms))


@register
class OracleRouter(Router):
    """Upper bound that READS THE LABELS of the requests it routes: the highest-utility
    candidate of every request (in the judge setting, the answer with the highest hidden
    persona score)."""

    name = "Oracle (reads test labels)"
    family = "upper bound"
    reads_labels = True
    row_names = {"utility": "Oracle (reads realised test utilities)",
                 "choice": "Oracle (reads hidden persona scores)",
                 "multi_cost": "Oracle (reads realised test utilities)"}

    def _raw_scores(self, requests):
        # the user's own choice wins ties (equal utility): the simulation breaks ties towards
        # the cheaper LLM, and a plain argmax would break them by column order instead
        scores = np.array(requests.utility, dtype=float)
        scores[np.arange(len(scores)), requests.chosen] += 1e-9
        return scores
