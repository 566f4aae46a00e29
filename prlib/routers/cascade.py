"""Cost-aware routers: HybridLLM (small vs large) and a FrugalGPT-style cascade."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from prlib.routers.base import (Router, candidates, col_nanmean, pick_one, query_embeddings,
                                register, reward_of)


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

    def fit(self, train, val, *, progress=False):
        from sklearn.linear_model import LogisticRegression

        order = cost_order(train)
        self.small_, self.large_ = int(order[0]), int(order[-1])
        ok = candidates(train)[:, self.small_] & candidates(train)[:, self.large_]
        y = (train.utility[ok, self.large_] > train.utility[ok, self.small_]).astype(int)
        x = query_embeddings(self.feats, train)[ok]
        self.coef_ = self.intercept_ = None  # logistic regression weights, (1, d) and (1,)
        if len(np.unique(y)) == 2:
            clf = LogisticRegression(C=1.0, max_iter=500).fit(x, y)
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
    """FrugalGPT-style cascade over cost-ordered LLMs, stopping at the first whose predicted
    utility (a ridge regression on the query embedding) clears its tuned threshold.

    The chain: LLMs by mean training cost, keeping each one only if
    its mean training utility beats every cheaper one kept (at most ``max_chain``). A ridge
    answer scorer per chained LLM predicts its utility from the query embedding; the cascade
    stops at the first LLM whose predicted utility reaches its threshold (the last LLM
    otherwise). Thresholds: coordinate ascent on val over quantile grids. Scores are 1 for the
    LLM where the cascade stops."""

    name = "FrugalGPT (cascade)"
    family = "non-personalised"
    selection = "thresholds (coordinate ascent)"
    defaults = {"max_chain": 4, "ridge_alpha": 1.0}

    def fit(self, train, val, *, progress=False):
        from sklearn.linear_model import Ridge

        mean_u = col_nanmean(train.utility)
        chain, best = [], -np.inf
        for m in cost_order(train):
            if np.isfinite(mean_u[m]) and mean_u[m] > best + 1e-12:
                chain.append(int(m))
                best = mean_u[m]
        max_chain = self.params["max_chain"]
        self.chain_ = chain[-max_chain:] if len(chain) > max_chain else chain
        x = query_embeddings(self.feats, train)
        coef, intercept = [], []
        for m in self.chain_:
            ok = candidates(train)[:, m]
            ridge = Ridge(alpha=self.params["ridge_alpha"]).fit(x[ok], train.utility[ok, m])
            coef.append(ridge.coef_)
            intercept.append(float(ridge.intercept_))
        self.scorer_coef_ = np.array(coef)  # (len(chain), d)
        self.scorer_intercept_ = np.array(intercept)  # (len(chain),)
        pred = self._predict(val)
        self.thresholds_ = np.full(len(self.chain_) - 1, np.inf)
        for _ in range(2):
            for i in range(len(self.thresholds_)):
                def val_reward(t, i=i):
                    th = self.thresholds_.copy()
                    th[i] = t
                    return reward_of(val, self._cascade(val, pred, th))
                self.thresholds_[i] = max(threshold_grid(pred[:, i]), key=val_reward)
        return self

    def _predict(self, requests) -> np.ndarray:
        """Predicted utility of each chained LLM, shape (n, len(chain))."""
        x = query_embeddings(self.feats, requests)
        if not len(x):
            return np.zeros((0, len(self.chain_)))
        return np.stack([x @ self.scorer_coef_[i] + self.scorer_intercept_[i]
                         for i in range(len(self.chain_))], 1)

    def _cascade(self, requests, pred, thresholds):
        cand = candidates(requests)
        n = len(requests)
        stop = np.full(n, self.chain_[-1])
        done = np.zeros(n, bool)
        for i, m in enumerate(self.chain_[:-1]):
            here = ~done & cand[:, m] & (pred[:, i] >= thresholds[i])
            stop[here], done = m, done | here
        return pick_one(requests, stop, np.full(n, self.chain_[-1]))

    def _raw_scores(self, requests):
        return self._cascade(requests, self._predict(requests), self.thresholds_)
