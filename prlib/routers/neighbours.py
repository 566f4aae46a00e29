"""Nearest-neighbour routers: cosine kNN over MiniLM query embeddings, pooled or per user."""

from __future__ import annotations

import numpy as np
import pandas as pd

from prlib.routers.base import Router, query_embeddings, register


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, shape kept."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_predict(x_unit: np.ndarray, y: np.ndarray, xq: np.ndarray, ks) -> dict[int, np.ndarray]:
    """Mean target of the k most cosine-similar rows, for every k of ``ks``.

    ``x_unit`` (n, d) unit rows with targets ``y`` (n, n_llms) (NaN = missing); queries ``xq``
    (m, d). Returns ``{k: (m, n_llms)}`` (NaN where no neighbour has a target).
    """
    xq = unit_rows(xq)
    kmax = min(max(ks), len(x_unit))
    sim = xq @ x_unit.T
    nn_idx = np.argsort(-sim, axis=1)[:, :kmax]  # (m, kmax)
    yn = y[nn_idx]  # (m, kmax, n_llms)
    ok = ~np.isnan(yn)
    csum = np.cumsum(np.where(ok, yn, 0.0), axis=1)
    ccnt = np.cumsum(ok, axis=1)
    out = {}
    for k in ks:
        j = min(k, kmax) - 1
        out[k] = np.where(ccnt[:, j] > 0, csum[:, j] / np.maximum(ccnt[:, j], 1), np.nan)
    return out


@register
class KNNRouter(Router):
    """Pooled kNN (cosine over query embeddings): predicts an LLM's utility on a query as its
    mean utility over all users on the k most similar training queries (k from the grid)."""

    name = "kNN (pooled)"
    family = "non-personalised"
    defaults = {"k": 10}
    grid = {"k": [3, 10, 30, 100]}

    def _fit_pooled(self, train) -> None:
        by_q = pd.DataFrame(train.utility).groupby(train.frame["query_id"].to_numpy()).mean()
        qx = self.feats.query_x.numpy()[pd.Index(self.feats.query_ids).get_indexer(by_q.index)]
        self.pooled_x_, self.pooled_y_ = unit_rows(qx), by_q.to_numpy()

    def _predict(self, requests, ks) -> dict[int, np.ndarray]:
        return knn_predict(self.pooled_x_, self.pooled_y_, query_embeddings(self.feats, requests),
                           ks)

    def fit(self, train, val, *, progress=False):
        self._fit_pooled(train)
        return self

    def _raw_scores(self, requests):
        k = int(self.params["k"])
        return self._predict(requests, [k])[k]


@register
class PerUserKNNRouter(KNNRouter):
    """Personalised kNN: neighbours among the requesting user's own training requests (their
    utilities); one k for all users (from the grid); unknown users fall back to pooled kNN."""

    name = "kNN per user"
    family = "personalised"

    def fit(self, train, val, *, progress=False):
        self._fit_pooled(train)
        x = query_embeddings(self.feats, train)
        groups = train.frame.groupby("user_id").indices.items()
        self.user_x_ = {u: unit_rows(x[r]) for u, r in groups}
        self.user_y_ = {u: train.utility[r] for u, r in groups}
        return self

    def _predict(self, requests, ks):
        x = query_embeddings(self.feats, requests)
        out = {k: np.full((len(requests), self.n_llms), np.nan) for k in ks}
        for u, r in requests.frame.groupby("user_id").indices.items():
            if u in self.user_x_:
                pred = knn_predict(self.user_x_[u], self.user_y_[u], x[r], ks)
            else:
                pred = knn_predict(self.pooled_x_, self.pooled_y_, x[r], ks)
            for k in ks:
                out[k][r] = pred[k]
        return out
