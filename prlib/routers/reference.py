"""Reference rows of every table: what a router could at best reach, and a structured reference.

- :class:`CeilingRouter`, the **decide-before-answers ceiling**: each user's best LLM per task,
  chosen on the mean utility of the very requests it routes (it READS THE TEST LABELS, at
  (user, task) granularity only). A router that decides before the answers exist sees the user,
  the query and the history; this reference sees the user's true taste and the test split's
  per-(task, LLM) means, so it is what a perfect per-user, per-task lookup table reaches. It is
  the tightest honest reference we can justify, **not a strict bound**: a router that reads the
  query text could in principle beat it, by the share of per-query correctness the text
  predicts (on LLMRouter a within-task AUC of about 0.56: little), and with few test requests
  per (user, task) it is optimistic, since it is chosen on the requests it is scored on.
- :class:`StructuredReferenceRouter`, for **multi-cost users only**: it knows the simulator's
  form (utility = p * quality - (1 - p) * cost normalised per task) but not its parameters; it
  learns each user's ``p`` from the training feedback (least squares on revealed utilities, a
  choice likelihood on picks, shrunk towards the population by an empirical-Bayes prior) and
  the per-(task, LLM) mean quality and cost from the training requests, shrunk towards each
  LLM's mean. It shows what structure buys; it is not a competitor (it is told the form).

Both are left out of "strongest baseline" and "best" in every table (:data:`REFERENCE`,
:data:`~prlib.report.UPPER_BOUND`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix

from prlib.metrics import ceiling_utilities
from prlib.routers.base import Router, candidates, col_nanmean, non_negative, one_of, register

#: The family of references that are not competitors (left out of "strongest" and "best").
REFERENCE = "reference"


@register
class CeilingRouter(Router):
    """Decide-before-answers ceiling that READS THE TEST LABELS at (user, task) granularity:
    each user's best LLM per task under the mean utility of the requests it routes (for
    multi-cost users: their true p with the test split's per-(task, LLM) mean quality and cost;
    for persona judges: the best LLM per persona and task under the hidden test scores)."""

    name = "Ceiling (reads test labels per user and task)"
    family = "upper bound"
    reads_labels = True
    tags = frozenset({"reads_batch"})
    row_names = {"utility": "Ceiling: best LLM per user and task on test utilities",
                 "choice": "Ceiling: best LLM per user and task on hidden test scores",
                 "multi_cost": "Ceiling: best LLM per user and task on test utilities"}

    def _raw_scores(self, requests):
        return ceiling_utilities(requests)


def _cost_norm(cost: np.ndarray, tasks: np.ndarray, bounds: dict) -> np.ndarray:
    """``cost`` (n, n_llms) min-max normalised per task with ``bounds`` {task: (lo, hi)} (a
    task without bounds, or with lo == hi, gets 0)."""
    out = np.zeros_like(cost, dtype=float)
    for task in np.unique(tasks):
        rows = tasks == task
        lo, hi = bounds.get(task, (0.0, 0.0))
        out[rows] = (cost[rows] - lo) / (hi - lo) if hi > lo else 0.0
    return out


@register
class StructuredReferenceRouter(Router):
    """Knows the multi-cost form (utility = p * quality - (1 - p) * cost min-max normalised per
    task), learns each user's p from the training feedback (revealed utilities: least squares;
    picks: a softmax choice likelihood over a p grid with an empirical-Bayes population prior,
    the temperature chosen by likelihood) and per-(task, LLM) mean quality and cost from the
    training requests, shrunk towards each LLM's mean by ``shrink`` pseudo-queries. Multi-cost
    users only; a reference, not a competitor."""

    name = "Structured reference (told the multi-cost form)"
    family = REFERENCE
    selection = "shrinkage of the per-task means"
    strategies = ("multi_cost",)
    defaults = {"shrink": 5.0, "feedback": "utility"}
    grid = {"shrink": [0.0, 2.0, 10.0, 50.0]}
    constraints = {"shrink": non_negative(float), "feedback": one_of("utility", "choice")}
    #: p values of the choice likelihood's grid, and the temperatures it chooses among.
    P_GRID = np.linspace(0.0, 1.0, 101)
    TEMPERATURES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)

    @classmethod
    def params_for(cls, feedback: str) -> dict:
        """Picks only (``"choice"``): the choice likelihood; utilities: least squares."""
        return {"feedback": feedback}

    def fit(self, train, val, *, progress=False):
        if train.quality is None or train.cost is None or np.isnan(train.quality).all():
            raise ValueError("the structured reference reads the training requests' quality "
                             "and cost; these requests have none")
        tasks = train.frame["task"].astype(str).to_numpy()
        ok = candidates(train)
        bounds = {}
        for task in np.unique(tasks):
            c = train.cost[tasks == task][ok[tasks == task]]
            bounds[task] = (float(np.nanmin(c)), float(np.nanmax(c)))
        self.cost_bounds_ = {t: list(b) for t, b in bounds.items()}
        cn = np.where(ok, _cost_norm(np.nan_to_num(train.cost), tasks, bounds), np.nan)
        q = np.where(ok, train.quality, np.nan)
        self._fit_task_means(q, cn, tasks, train.frame["query_id"].to_numpy())
        self._fit_preferences(train, q, cn)
        return self

    def _fit_task_means(self, q, cn, tasks, query_ids) -> None:
        """Per-(task, LLM) mean quality and normalised cost over distinct training queries,
        shrunk towards each LLM's mean over all of them."""
        first = ~pd.Series(query_ids).duplicated().to_numpy()
        q, cn, tasks = q[first], cn[first], tasks[first]
        self.llm_quality_, self.llm_cost_ = col_nanmean(q, 0.0), col_nanmean(cn, 0.0)
        k = float(self.params["shrink"])
        self.task_quality_, self.task_cost_ = {}, {}
        for task in np.unique(tasks):
            rows = tasks == task
            n = (~np.isnan(q[rows])).sum(0)
            sq, sc = np.nansum(q[rows], 0), np.nansum(cn[rows], 0)
            self.task_quality_[task] = (sq + k * self.llm_quality_) / np.maximum(n + k, 1e-12)
            self.task_cost_[task] = (sc + k * self.llm_cost_) / np.maximum(n + k, 1e-12)

    def _fit_preferences(self, train, q, cn) -> None:
        """Each user's p: from revealed utilities by least squares, from picks (a choice-only
        view: utility 1 for the pick, 0 otherwise) by the posterior mean under a choice
        likelihood and a population prior."""
        users = train.frame["user_id"].astype(str).to_numpy()
        self.user_p_ = {}
        if self.params["feedback"] == "utility":
            a, b = train.utility + cn, q + cn  # u = p q - (1 - p) cn  <=>  u + cn = p (q + cn)
            for user in np.unique(users):
                rows = users == user
                den = np.nansum(b[rows] ** 2)
                self.user_p_[user] = float(np.clip(np.nansum(a[rows] * b[rows]) / den, 0, 1)
                                           if den > 0 else 0.5)
            self.population_p_ = float(np.mean(list(self.user_p_.values())))
            self.temperature_ = 0.0
            return
        grid = self.P_GRID
        # utility of every candidate under every grid p: (grid, n, n_llms)
        util = grid[:, None, None] * np.nan_to_num(q)[None] - (1 - grid[:, None, None]) * (
            np.nan_to_num(cn)[None])
        util = np.where(candidates(train)[None], util, -np.inf)  # not a candidate: probability 0
        picked = util[:, np.arange(len(train)), train.chosen]  # (grid, n)
        names, user_of = np.unique(users, return_inverse=True)
        # (n_users, n) 0/1: a product with it sums each user's rows of the log-likelihood
        rows_of_user = csr_matrix((np.ones(len(users)), (user_of, np.arange(len(users)))),
                                  shape=(len(names), len(users)))
        top = util.max(2)  # (grid, n): log-sum-exp over LLMs, shifted by the best utility
        top[~np.isfinite(top)] = 0.0
        below = np.subtract(util, top[..., None], out=util)  # (grid, n, n_llms), <= 0
        scaled = np.empty_like(below)
        best = None
        for tau in self.TEMPERATURES:
            np.exp(np.divide(below, tau, out=scaled), out=scaled)
            loglik = (picked - top) / tau - np.log(scaled.sum(2))  # (grid, n)
            per_user = np.asarray(rows_of_user @ loglik.T)  # (n_users, grid)
            prior = np.full(len(grid), 1.0 / len(grid))
            for _ in range(50):  # EM for the population prior over the p grid
                post = per_user + np.log(prior)[None]
                post = np.exp(post - post.max(1, keepdims=True))
                post /= post.sum(1, keepdims=True)
                prior = post.mean(0) + 1e-12
                prior /= prior.sum()
            marginal = np.logaddexp.reduce(per_user + np.log(prior)[None], 1).sum()
            if best is None or marginal > best[0]:
                best = (marginal, tau, post, prior)
        _, self.temperature_, post, prior = best
        for user, row in zip(names, post):
            self.user_p_[user] = float(row @ grid)
        self.population_p_ = float(prior @ grid)

    def _raw_scores(self, requests):
        tasks = requests.frame["task"].astype(str).to_numpy()
        quality = np.stack([self.task_quality_.get(t, self.llm_quality_) for t in tasks]) \
            if len(tasks) else np.zeros((0, self.n_llms))
        cost = np.stack([self.task_cost_.get(t, self.llm_cost_) for t in tasks]) \
            if len(tasks) else np.zeros((0, self.n_llms))
        p = np.array([self.user_p_.get(str(u), self.population_p_)
                      for u in requests.frame["user_id"]])[:, None]
        return p * quality - (1 - p) * cost
