"""Cost-aware routers: HybridLLM (small vs large) and the FrugalGPT cascade."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit

from prlib.metrics import routing_metrics
from prlib.routers.base import (Router, RouterError, candidates, col_nanmean, pick_one,
                                query_embeddings, register, reward_of)


def cost_order(train) -> np.ndarray:
    """LLM indices by mean training cost, cheapest first."""
    return np.argsort(col_nanmean(np.where(candidates(train), train.cost, np.nan),
                                  fill=np.inf), kind="stable")


def threshold_grid(values: np.ndarray, n: int = 21) -> np.ndarray:
    """-inf, +inf and ``n`` quantiles of the finite ``values`` (sorted, unique)."""
    v = values[np.isfinite(values)]
    qs = np.quantile(v, np.linspace(0, 1, n)) if len(v) else np.zeros(0)
    return np.unique(np.concatenate([[-np.inf, np.inf], qs]))


@register
class HybridLLMRouter(Router):
    """HybridLLM: a logistic-regression classifier on the query embedding predicts whether the
    large (most expensive) LLM beats the small (cheapest) one for the user; route to small when
    that probability is below a threshold tuned on val (pooled users)."""

    name = "HybridLLM"
    family = "non-personalised"
    selection = "threshold"
    defaults = {"C": 1.0}
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}

    def fit(self, train, val, *, progress=False):
        from sklearn.linear_model import LogisticRegression

        order = cost_order(train)
        self.small_, self.large_ = int(order[0]), int(order[-1])
        ok = candidates(train)[:, self.small_] & candidates(train)[:, self.large_]
        y = (train.utility[ok, self.large_] > train.utility[ok, self.small_]).astype(int)
        x = query_embeddings(self.feats, train)[ok]
        self.coef_ = self.intercept_ = None  # logistic regression weights, (1, d) and (1,)
        if len(np.unique(y)) == 2:
            clf = LogisticRegression(C=self.params["C"], max_iter=500).fit(x, y)
            self.coef_, self.intercept_ = clf.coef_, clf.intercept_
        self.const_ = float(y.mean()) if len(y) else 0.5
        p = self._p_large(val)
        self.threshold_ = float(max(threshold_grid(p),
                                    key=lambda t: reward_of(val, self._scores_at(val, p, t))))
        return self

    def _p_large(self, requests) -> np.ndarray:
        """P(large beats small) per request, shape (n,)."""
        if self.coef_ is None:
            return np.full(len(requests), self.const_)
        x = query_embeddings(self.feats, requests)
        return expit(x @ self.coef_.T + self.intercept_)[:, 0]

    def _scores_at(self, requests, p, threshold):
        small = p < threshold
        pref = np.where(small, self.small_, self.large_)
        return pick_one(requests, pref, np.where(small, self.large_, self.small_)) \
            if len(requests) else np.zeros((0, self.n_llms))

    def _raw_scores(self, requests):
        return self._scores_at(requests, self._p_large(requests), self.threshold_)


@register
class FrugalGPTRouter(Router):
    """FrugalGPT cascade: call cost-ordered LLMs one after another and stop at the first whose
    *answer* a scorer accepts (its predicted utility, from the query and answer embeddings,
    reaches a threshold tuned on val); every LLM called is charged. Needs answer texts.

    The chain: LLMs by mean training cost, keeping each one only if its mean training utility
    beats every cheaper one kept (the last ``max_chain``). A ridge answer scorer per chained LLM
    predicts the request's utility of that LLM from [query embedding, answer embedding]. The
    cascade calls the first LLM, scores its answer, and stops when the score reaches that LLM's
    threshold, else calls the next (the last LLM always answers). Thresholds: coordinate ascent
    on val over quantile grids, maximising val reward with every call charged. On a bank
    without answer texts it does not run (a cascade that cannot read answers is not one)."""

    tags = frozenset({"needs_answers"})
    name = "FrugalGPT (cascade)"
    family = "non-personalised"
    selection = "thresholds (coordinate ascent)"
    defaults = {"max_chain": 3, "ridge_alpha": 1.0}
    grid = {"max_chain": [2, 3], "ridge_alpha": [1.0, 10.0]}

    @classmethod
    def unavailable(cls, feats) -> str | None:
        if feats.answer_x is None:
            return ("the bank has no answer texts: a cascade reads each answer before deciding "
                    "to stop")
        return None

    def fit(self, train, val, *, progress=False):
        from sklearn.linear_model import Ridge

        reason = self.unavailable(self.feats)
        if reason:
            raise RouterError(f"{type(self).__name__} cannot run here: {reason}")
        mean_u = col_nanmean(train.utility)
        chain, best = [], -np.inf
        for m in cost_order(train):
            if np.isfinite(mean_u[m]) and mean_u[m] > best + 1e-12:
                chain.append(int(m))
                best = mean_u[m]
        max_chain = self.params["max_chain"]
        self.chain_ = chain[-max_chain:] if len(chain) > max_chain else chain
        coef, intercept = [], []
        for m in self.chain_[:-1]:
            x, ok = self._scorer_input(train, m)
            ok &= candidates(train)[:, m]
            ridge = Ridge(alpha=self.params["ridge_alpha"]).fit(x[ok], train.utility[ok, m])
            coef.append(ridge.coef_)
            intercept.append(float(ridge.intercept_))
        self.scorer_coef_ = np.array(coef).reshape(len(coef), -1)  # (len(chain) - 1, d)
        self.scorer_intercept_ = np.array(intercept)  # (len(chain) - 1,)
        pred = self._predict(val)
        self.thresholds_ = np.full(len(self.chain_) - 1, np.inf)
        for _ in range(2):
            for i in range(len(self.thresholds_)):
                def val_reward(t, i=i):
                    th = self.thresholds_.copy()
                    th[i] = t
                    stop, calls = self._cascade(val, pred, th)
                    return routing_metrics(val, stop, calls)["reward"]
                self.thresholds_[i] = max(threshold_grid(pred[:, i]), key=val_reward)
        return self

    def _scorer_input(self, requests, m: int):
        """[query embedding, answer embedding of LLM m] per request, (n, d), and whether the
        answer text exists, (n,)."""
        idx = pd.Index(self.feats.query_ids).get_indexer(requests.frame["query_id"])
        x = np.hstack([query_embeddings(self.feats, requests), self.feats.answer_x.numpy()[idx, m]])
        return x, self.feats.answer_ok.numpy()[idx, m].copy()

    def _predict(self, requests) -> np.ndarray:
        """Predicted utility of each chained LLM's answer but the last, (n, len(chain) - 1)."""
        cols = []
        for i, m in enumerate(self.chain_[:-1]):
            x, ok = self._scorer_input(requests, m)
            cols.append(np.where(ok, x @ self.scorer_coef_[i] + self.scorer_intercept_[i],
                                 -np.inf))  # no answer text: never accepted
        return np.stack(cols, 1) if cols else np.zeros((len(requests), 0))

    def _cascade(self, requests, pred, thresholds):
        """The LLM where the cascade stops, (n,), and every LLM it called, (n, n_llms) bool."""
        cand = candidates(requests)
        n = len(requests)
        last = self.chain_[-1]
        stop = np.full(n, -1)
        calls = np.zeros((n, self.n_llms), bool)
        for i, m in enumerate(self.chain_[:-1]):
            open_ = (stop < 0) & cand[:, m]
            calls[open_, m] = True
            here = open_ & (pred[:, i] >= thresholds[i])
            stop[here] = m
        rest = stop < 0
        fallback = np.where(cand[:, last], last, cand.argmax(1))  # any candidate if not last
        stop[rest] = fallback[rest]
        calls[np.flatnonzero(rest), fallback[rest]] = True
        return stop, calls

    def _raw_scores(self, requests):
        stop, _ = self._cascade(requests, self._predict(requests), self.thresholds_)
        return pick_one(requests, stop, stop)

    def calls(self, requests, picks):
        """Every LLM the cascade called (the cheaper ones whose answers it rejected, and the
        one that answered)."""
        stop, calls = self._cascade(requests, self._predict(requests), self.thresholds_)
        if not np.array_equal(stop, np.asarray(picks)):
            raise RouterError("FrugalGPT.calls: picks differ from the cascade's own stops")
        return calls
