"""RouterDC: dual contrastive learning of a query encoder and LLM embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from prlib.routers.base import NEG, register
from prlib.routers.training import TorchRouter, mlp


@register
class RouterDC(TorchRouter):
    """RouterDC-style dual contrastive learning: a query encoder and one learned embedding per
    LLM, score = cosine / tau (+ a learned per-LLM bias if ``llm_bias``, our addition, off by
    default). Sample-LLM loss: each of the top-utility candidates (positives) against the
    candidates at or below the median utility (negatives; with choice-only feedback, every
    answer not picked); sample-sample loss: queries of the same k-means cluster (of training
    query embeddings) are pulled together."""

    name = "RouterDC (dual contrastive)"
    family = "non-personalised"
    defaults = {**TorchRouter.defaults, "tau": 0.2, "top_k": 2, "n_clusters": 8,
                "cluster_weight": 1.0, "cluster_batch": 128, "llm_bias": False}
    grid = {"lr": [1e-3, 3e-3], "llm_bias": [False, True]}

    def _prepare(self, train):
        from sklearn.cluster import KMeans

        qids = train.frame["query_id"].unique()
        qx = self.feats.query_x.numpy()[pd.Index(self.feats.query_ids).get_indexer(qids)]
        k = max(2, min(self.params["n_clusters"], len(qids) // 5))
        labels = KMeans(k, n_init=3, random_state=self.seed).fit_predict(qx)
        self.cluster_ = {q: int(c) for q, c in zip(qids, labels)}

    def _resolve_ids(self, train):
        super()._resolve_ids(train)
        train.lookup("query_id", self._cluster_index())

    def _cluster_index(self) -> pd.Index:
        """The clustered query ids (``cluster_``'s keys) as an index, built once per fit."""
        if getattr(self, "_clusters_of", None) is not self.cluster_:
            self._clusters_of = self.cluster_
            self._cluster_ids = pd.Index(list(self.cluster_))
            self._cluster_labels = np.fromiter(self.cluster_.values(), np.int64)
        return self._cluster_ids

    def _cluster_codes(self) -> np.ndarray:
        """The cluster of each query of :meth:`_cluster_index`, shape (n_clustered,)."""
        self._cluster_index()
        return self._cluster_labels

    def _make_net(self):
        h = self.params["hidden"]
        return nn.ModuleDict({"enc": mlp(self.feats.query_x.shape[1], h, h),
                              "llm": nn.Embedding(self.n_llms, h),
                              "bias": nn.Embedding(1, self.n_llms)})

    def _encode(self, requests):
        return F.normalize(self.net["enc"](self._qx(requests)), dim=-1)

    def _forward(self, requests):
        llm = F.normalize(self.net["llm"].weight, dim=-1)
        out = self._encode(requests) @ llm.T / self.params["tau"]
        return out + self.net["bias"].weight if self.params["llm_bias"] else out

    def _contrast_sets(self, cand: torch.Tensor, util: torch.Tensor):
        """Positives and negatives of the sample-LLM loss, both (n, n_llms) bool: positives are
        the top-``top_k`` candidates above the median utility (always the best one); negatives
        the candidates at or below the median that are not the best, chosen by value, not by
        rank: with tied utilities (choice-only feedback: every answer not picked is 0) a rank
        cut would keep an arbitrary fixed half of the LLMs and never contrast the pick with
        the others."""
        u = util.masked_fill(~cand, -np.inf)
        order = u.argsort(1, descending=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(u.shape[1]).expand_as(order))
        top = u.max(1, keepdim=True).values
        med = torch.nanmedian(util.masked_fill(~cand, float("nan")), 1, keepdim=True).values
        pos = cand & (rank < self.params["top_k"]) & ((u > med) | (rank == 0))
        neg = cand & (u < top) & (u <= med)
        return pos, neg

    def _loss(self, out, batch):
        p = self.params
        cand, util, _ = self._targets(batch)
        pos, neg = self._contrast_sets(cand, util)
        neg_lse = torch.logsumexp(out.masked_fill(~neg, -np.inf), 1, keepdim=True)
        lp = out - torch.logaddexp(out, neg_lse)
        sample_llm = -(lp * pos).sum() / pos.sum().clamp(min=1)
        sub = batch.select(np.arange(min(len(batch), p["cluster_batch"])))
        h = self._encode(sub)
        cl = torch.as_tensor(self._cluster_codes()[sub.lookup("query_id", self._cluster_index())])
        eye = torch.eye(len(h), dtype=torch.bool)
        sim = (h @ h.T / p["tau"]).masked_fill(eye, NEG)
        same = (cl[:, None] == cl[None, :]) & ~eye
        has = same.any(1)
        sample_sample = torch.logsumexp(sim, 1) - torch.logsumexp(sim.masked_fill(~same, NEG), 1)
        sample_sample = sample_sample[has].mean() if has.any() else sim.sum() * 0
        return sample_llm + p["cluster_weight"] * sample_sample
