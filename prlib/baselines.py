"""Baseline routers behind the same interface as :class:`prlib.models.PersonalizedRouter`.

Every router has a ``name``, ``fit(train, val) -> self`` (any hyper-parameter is chosen on
``val`` only), ``scores(requests) -> (n, n_llms)`` with ``-inf`` for non-candidates, and
``route(requests)`` (argmax of the scores). Constructors take the bank's
:class:`~prlib.graph.NodeFeatures` and a ``seed``.

Families (see :data:`BASELINES`):

- simple: :class:`RandomRouter`, :class:`CheapestRouter`, :class:`MostExpensiveRouter`,
  :class:`BestSingleRouter`, :class:`BestPerUserRouter`, :class:`OracleRouter` (reads labels);
- non-personalised, fit on all users' data pooled, from the query only: :class:`KNNRouter`,
  :class:`MLPRouter`, :class:`MFRouter` (RouteLLM-style matrix factorisation),
  :class:`GraphRouterGNN` (task/query/LLM graph, no users), :class:`RouterDC` (dual contrastive),
  :class:`HybridLLMRouter` (small-vs-large gap classifier), :class:`FrugalGPTRouter` (cascade);
- personalised, no graph: :class:`PerUserKNNRouter`, :class:`UserMLPRouter`;
- :class:`ReferenceDesignRouter`: the released PersonalizedRouter's input design (user one-hot
  folded into the query node, tiled by position), which cannot personalise.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from prlib.config import seed_everything
from prlib.graph import NodeFeatures, Requests

NEG = -1e9  # finite stand-in for -inf inside losses


# ------------------------------------------------------------------ shared helpers
def query_embeddings(feats: NodeFeatures, requests: Requests) -> np.ndarray:
    """Query feature rows of ``requests``, shape (n, query_dim)."""
    idx = pd.Index(feats.query_ids).get_indexer(requests.frame["query_id"])
    if (idx < 0).any():
        raise KeyError("requests name queries missing from the node features")
    return feats.query_x.numpy()[idx]


def candidates(requests: Requests) -> np.ndarray:
    """Boolean (n, n_llms): which LLMs are candidates of each request."""
    return ~np.isnan(requests.utility)


def mask_scores(scores: np.ndarray, requests: Requests) -> np.ndarray:
    """``scores`` with ``-inf`` wherever the LLM is not a candidate (NaN scores -> -inf too)."""
    s = np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf)
    return np.where(candidates(requests), s, -np.inf)


def reward_of(requests: Requests, scores: np.ndarray) -> float:
    """Mean utility of the argmax pick of (masked) ``scores``: the validation criterion."""
    pick = mask_scores(scores, requests).argmax(1)
    return float(requests.utility[np.arange(len(requests)), pick].mean())


def col_nanmean(a: np.ndarray, fill: float = -np.inf) -> np.ndarray:
    """Column means ignoring NaN; all-NaN columns get ``fill``."""
    a = np.asarray(a, dtype=float)
    n = (~np.isnan(a)).sum(0)
    return np.where(n > 0, np.nansum(a, 0) / np.maximum(n, 1), fill)


def choice_only(requests: Requests) -> Requests:
    """The view a router gets when feedback is the choice only: utility = 1 for the chosen
    LLM, 0 for the other candidates (NaN stays NaN), so validation reward = accuracy."""
    u = np.where(candidates(requests), 0.0, np.nan)
    u[np.arange(len(u)), requests.chosen] = 1.0
    return Requests(requests.frame, requests.llms, u, requests.chosen, requests.quality,
                    requests.cost)


def pick_one(requests: Requests, preferred: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Scores that pick ``preferred[i]`` (else ``fallback[i]``, else any candidate): 1 / 0 / -1."""
    n = len(requests)
    rows = np.arange(n)
    s = np.full((n, len(requests.llms)), -1.0)
    s[rows, fallback] = 0.0
    s[rows, preferred] = 1.0
    return mask_scores(s, requests)


class Router:
    """Base class: subclasses implement ``fit`` and ``_raw_scores``."""

    name = "router"
    reads_labels = False

    def __init__(self, feats: NodeFeatures, seed: int = 0):
        self.feats, self.seed = feats, seed
        self.n_llms = len(feats.llms)

    def fit(self, train: Requests, val: Requests) -> "Router":
        return self

    def _raw_scores(self, requests: Requests) -> np.ndarray:
        raise NotImplementedError

    def scores(self, requests: Requests) -> np.ndarray:
        """(n, n_llms) scores, ``-inf`` for non-candidates."""
        return mask_scores(self._raw_scores(requests), requests)

    def route(self, requests: Requests) -> np.ndarray:
        return self.scores(requests).argmax(1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


# ------------------------------------------------------------------ simple
class RandomRouter(Router):
    """A uniformly random candidate (seeded)."""

    name = "Random"

    def _raw_scores(self, requests):
        return np.random.default_rng(self.seed).random((len(requests), self.n_llms))


class _PerLLMRouter(Router):
    """One fixed value per LLM learned on train; routes to the best candidate by that value."""

    def _values(self, train: Requests) -> np.ndarray:
        raise NotImplementedError

    def fit(self, train, val):
        self.values_ = self._values(train)
        return self

    def _raw_scores(self, requests):
        return np.broadcast_to(self.values_, (len(requests), self.n_llms))


class CheapestRouter(_PerLLMRouter):
    """The candidate with the lowest mean USD cost in train."""

    name = "Cheapest LLM"

    def _values(self, train):
        return -col_nanmean(np.where(candidates(train), train.cost, np.nan), fill=np.inf)


class MostExpensiveRouter(_PerLLMRouter):
    """The candidate with the highest mean USD cost in train."""

    name = "Most expensive LLM"

    def _values(self, train):
        return col_nanmean(np.where(candidates(train), train.cost, np.nan))


class BestSingleRouter(_PerLLMRouter):
    """The candidate with the highest mean utility over all users' training requests."""

    name = "Best single LLM"

    def _values(self, train):
        return col_nanmean(train.utility)


class BestPerUserRouter(Router):
    """Each user's best LLM on their own training requests (unknown users: the overall best)."""

    name = "Best LLM per user"

    def fit(self, train, val):
        self.overall_ = col_nanmean(train.utility)
        self.per_user_ = {}
        for user, rows in train.frame.groupby("user_id").indices.items():
            m = col_nanmean(train.utility[rows], fill=np.nan)
            self.per_user_[user] = np.where(np.isnan(m), self.overall_ - 1e6, m)
        return self

    def _raw_scores(self, requests):
        rows = [self.per_user_.get(u, self.overall_) for u in requests.frame["user_id"]]
        return np.stack(rows) if rows else np.zeros((0, self.n_llms))


class BestPerUserTaskRouter(BestPerUserRouter):
    """Each user's best LLM on their own training requests *of the same task* (a lookup table of
    mean utility per user, task and LLM); unseen (user, task) pairs fall back to the user's best,
    unknown users to the overall best."""

    name = "Best LLM per user and task"

    def fit(self, train, val):
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


class OracleRouter(Router):
    """Upper bound: READS THE LABELS (utility) of the requests it routes."""

    name = "Oracle (reads test labels)"
    reads_labels = True

    def _raw_scores(self, requests):
        # the user's own choice wins ties (equal utility): the simulation breaks ties towards
        # the cheaper LLM, and a plain argmax would break them by column order instead
        scores = np.array(requests.utility, dtype=float)
        scores[np.arange(len(scores)), requests.chosen] += 1e-9
        return scores


# ------------------------------------------------------------------ k nearest neighbours
class _KNNIndex:
    """Cosine kNN over rows ``X`` with targets ``Y`` (NaN = missing), predicting for many k."""

    def __init__(self, X: np.ndarray, Y: np.ndarray):
        self.X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        self.Y = Y

    def predict(self, Xq: np.ndarray, ks) -> dict[int, np.ndarray]:
        Xq = Xq / np.maximum(np.linalg.norm(Xq, axis=1, keepdims=True), 1e-12)
        kmax = min(max(ks), len(self.X))
        sim = Xq @ self.X.T
        nn_idx = np.argsort(-sim, axis=1)[:, :kmax]  # (m, kmax)
        Yn = self.Y[nn_idx]  # (m, kmax, n_llms)
        ok = ~np.isnan(Yn)
        csum = np.cumsum(np.where(ok, Yn, 0.0), axis=1)
        ccnt = np.cumsum(ok, axis=1)
        out = {}
        for k in ks:
            j = min(k, kmax) - 1
            out[k] = np.where(ccnt[:, j] > 0, csum[:, j] / np.maximum(ccnt[:, j], 1), np.nan)
        return out


class KNNRouter(Router):
    """Pooled kNN (cosine over query embeddings): predicts an LLM's utility on a query as its
    mean utility over all users on the k most similar training queries; k tuned on val."""

    name = "kNN (pooled)"
    K_GRID = (1, 3, 5, 10, 20, 50)

    def _pooled_index(self, train: Requests) -> _KNNIndex:
        by_q = pd.DataFrame(train.utility).groupby(train.frame["query_id"].to_numpy()).mean()
        qx = self.feats.query_x.numpy()[pd.Index(self.feats.query_ids).get_indexer(by_q.index)]
        return _KNNIndex(qx, by_q.to_numpy())

    def _predict(self, requests, ks) -> dict[int, np.ndarray]:
        return self.pooled_.predict(query_embeddings(self.feats, requests), ks)

    def fit(self, train, val):
        self.pooled_ = self._pooled_index(train)
        return self._tune(val)

    def _tune(self, val):
        preds = self._predict(val, self.K_GRID)
        self.k_ = max(self.K_GRID, key=lambda k: (reward_of(val, preds[k]), -k))
        return self

    def _raw_scores(self, requests):
        return self._predict(requests, [self.k_])[self.k_]


class PerUserKNNRouter(KNNRouter):
    """Personalised kNN: neighbours among the requesting user's own training requests (their
    utilities); one k for all users, tuned on val; unknown users fall back to pooled kNN."""

    name = "kNN per user"

    def fit(self, train, val):
        self.pooled_ = self._pooled_index(train)
        x = query_embeddings(self.feats, train)
        self.index_ = {u: _KNNIndex(x[r], train.utility[r])
                       for u, r in train.frame.groupby("user_id").indices.items()}
        return self._tune(val)

    def _predict(self, requests, ks):
        x = query_embeddings(self.feats, requests)
        out = {k: np.full((len(requests), self.n_llms), np.nan) for k in ks}
        for u, r in requests.frame.groupby("user_id").indices.items():
            pred = self.index_[u].predict(x[r], ks) if u in self.index_ else \
                self.pooled_.predict(x[r], ks)
            for k in ks:
                out[k][r] = pred[k]
        return out


# ------------------------------------------------------------------ torch routers
class _TorchRouter(Router):
    """Shared training loop: Adam on mini-batches of training requests, validation reward every
    ``eval_every`` steps, early stopping with ``patience``, best-validation weights reloaded.

    Subclasses implement ``_build(train)`` (returns the module) and ``_forward(requests)``
    ((n, n_llms) tensor); ``loss`` is ``"ce"`` (the chosen LLM, softmax over candidates) or
    ``"mse"`` (utilities of candidates); ``_loss`` may be overridden.
    """

    loss = "ce"

    def __init__(self, feats: NodeFeatures, seed: int = 0, steps: int = 300, hidden: int = 64,
                 lr: float = 3e-3, weight_decay: float = 1e-4, batch_size: int = 512,
                 eval_every: int = 10, patience: int = 8):
        super().__init__(feats, seed)
        self.steps, self.hidden, self.lr, self.weight_decay = steps, hidden, lr, weight_decay
        self.batch_size, self.eval_every, self.patience = batch_size, eval_every, patience

    def _build(self, train: Requests) -> nn.Module:
        raise NotImplementedError

    def _forward(self, requests: Requests) -> torch.Tensor:
        raise NotImplementedError

    def _qx(self, requests: Requests) -> torch.Tensor:
        return torch.as_tensor(query_embeddings(self.feats, requests))

    @staticmethod
    def _targets(requests: Requests):
        cand = torch.as_tensor(candidates(requests))
        util = torch.as_tensor(np.nan_to_num(requests.utility), dtype=torch.float32)
        return cand, util, torch.as_tensor(requests.chosen)

    def _loss(self, out: torch.Tensor, batch: Requests) -> torch.Tensor:
        cand, util, chosen = self._targets(batch)
        if self.loss == "ce":
            return F.cross_entropy(out.masked_fill(~cand, NEG), chosen)
        return ((out - util) ** 2 * cand).sum() / cand.sum().clamp(min=1)

    def _train_loss(self, train: Requests, rng: np.random.Generator) -> torch.Tensor:
        idx = rng.choice(len(train), min(self.batch_size, len(train)), replace=False)
        batch = train.select(idx)
        return self._loss(self._forward(batch), batch)

    def fit(self, train, val):
        seed_everything(self.seed)
        rng = np.random.default_rng(self.seed)
        self.net = self._build(train)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best, best_state, wait = -np.inf, None, 0
        self.curve_ = []
        for step in range(1, self.steps + 1):
            self.net.train()
            loss = self._train_loss(train, rng)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % self.eval_every and step != self.steps:
                continue
            metric = reward_of(val, self._raw_scores(val))
            self.curve_.append((step, float(loss.detach()), metric))
            if metric > best + 1e-9:
                best, best_state, wait, self.best_step_ = (
                    metric, copy.deepcopy(self.net.state_dict()), 0, step)
            else:
                wait += 1
                if wait >= self.patience:
                    break
        self.net.load_state_dict(best_state)
        return self

    @torch.no_grad()
    def _raw_scores(self, requests):
        self.net.eval()
        return self._forward(requests).double().numpy()


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float = 0.1) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, d_out))


class MLPRouter(_TorchRouter):
    """Non-personalised MLP classifier: query embedding -> the chosen LLM (pooled users)."""

    name = "MLP classifier"

    def _build(self, train):
        return _mlp(self.feats.query_x.shape[1], self.hidden, self.n_llms)

    def _forward(self, requests):
        return self.net(self._qx(requests))


class UserMLPRouter(_TorchRouter):
    """Personalised MLP: [query embedding, learned user embedding] -> the chosen LLM. Users not
    seen in training get a zero embedding."""

    name = "MLP + user embedding"
    user_dim = 16

    def _build(self, train):
        self.users_ = sorted(train.frame["user_id"].unique())
        net = nn.ModuleDict({"user": nn.Embedding(len(self.users_) + 1, self.user_dim),
                             "mlp": _mlp(self.feats.query_x.shape[1] + self.user_dim,
                                         self.hidden, self.n_llms)})
        with torch.no_grad():
            net["user"].weight[-1].zero_()
        return net

    def _forward(self, requests):
        u = pd.Index(self.users_).get_indexer(requests.frame["user_id"])
        u = torch.as_tensor(np.where(u < 0, len(self.users_), u))
        return self.net["mlp"](torch.cat([self._qx(requests), self.net["user"](u)], 1))


class MFRouter(_TorchRouter):
    """RouteLLM-style matrix factorisation: score(q, m) = w . (v_m * P q) + b_m, with the query
    embedding projected by P and a learned embedding v_m per LLM; MSE on the utilities."""

    name = "Matrix factorisation (RouteLLM)"
    loss = "mse"

    def _build(self, train):
        d = self.hidden
        return nn.ModuleDict({"proj": nn.Linear(self.feats.query_x.shape[1], d, bias=False),
                              "llm": nn.Embedding(self.n_llms, d),
                              "out": nn.Linear(d, 1)})

    def _forward(self, requests):
        q = self.net["proj"](self._qx(requests))  # (n, d)
        v = self.net["llm"].weight  # (m, d)
        return self.net["out"](q[:, None, :] * v[None, :, :]).squeeze(-1)


class RouterDC(_TorchRouter):
    """RouterDC-style dual contrastive learning. A query encoder and one learned embedding per
    LLM; score = cosine / tau. Sample-LLM loss: each of the top-utility candidates (positives)
    against the bottom half of candidates (negatives). Sample-sample loss: queries of the same
    k-means cluster (of training query embeddings) are pulled together."""

    name = "RouterDC (dual contrastive)"
    tau = 0.2
    top_k = 2
    n_clusters = 8
    cluster_weight = 1.0
    cluster_batch = 128  # anchors of the sample-sample loss per step

    def _build(self, train):
        from sklearn.cluster import KMeans

        qids = train.frame["query_id"].unique()
        qx = self.feats.query_x.numpy()[pd.Index(self.feats.query_ids).get_indexer(qids)]
        k = max(2, min(self.n_clusters, len(qids) // 5))
        labels = KMeans(k, n_init=3, random_state=self.seed).fit_predict(qx)
        self.cluster_ = dict(zip(qids, labels))
        return nn.ModuleDict({"enc": _mlp(self.feats.query_x.shape[1], self.hidden, self.hidden),
                              "llm": nn.Embedding(self.n_llms, self.hidden)})

    def _encode(self, requests):
        return F.normalize(self.net["enc"](self._qx(requests)), dim=-1)

    def _forward(self, requests):
        return self._encode(requests) @ F.normalize(self.net["llm"].weight, dim=-1).T / self.tau

    def _loss(self, out, batch):
        cand, util, _ = self._targets(batch)
        u = util.masked_fill(~cand, -np.inf)
        order = u.argsort(1, descending=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(u.shape[1]).expand_as(order))
        n_c = cand.sum(1, keepdim=True)
        top = u.max(1, keepdim=True).values
        med = torch.nanmedian(util.masked_fill(~cand, float("nan")), 1, keepdim=True).values
        pos = cand & (rank < self.top_k) & ((u > med) | (rank == 0))
        neg = cand & (rank >= n_c - n_c // 2) & (u < top)
        neg_lse = torch.logsumexp(out.masked_fill(~neg, -np.inf), 1, keepdim=True)
        lp = out - torch.logaddexp(out, neg_lse)
        sample_llm = -(lp * pos).sum() / pos.sum().clamp(min=1)
        sub = batch.select(np.arange(min(len(batch), self.cluster_batch)))
        h = self._encode(sub)
        cl = torch.tensor(sub.frame["query_id"].map(self.cluster_).to_numpy(dtype=np.int64))
        sim = (h @ h.T / self.tau).masked_fill(torch.eye(len(h), dtype=torch.bool), NEG)
        same = (cl[:, None] == cl[None, :]) & ~torch.eye(len(h), dtype=torch.bool)
        has = same.any(1)
        sample_sample = (torch.logsumexp(sim, 1) - torch.logsumexp(sim.masked_fill(~same, NEG), 1))
        sample_sample = sample_sample[has].mean() if has.any() else sim.sum() * 0
        return sample_llm + self.cluster_weight * sample_sample


# ------------------------------------------------------------------ graph routers (no users)
class _QueryGNN(nn.Module):
    """HeteroConv over task -> query, llm <-> query (edge attr [visible, utility]); predicts
    (n_queries, n_llms) from [h_query, h_llm, h_query * h_llm]."""

    def __init__(self, dims: dict[str, int], hidden: int, layers: int = 2):
        super().__init__()
        from torch_geometric.nn import GATConv, HeteroConv

        self.proj = nn.ModuleDict({t: nn.Linear(d, hidden) for t, d in dims.items()})
        gat = lambda e: GATConv((hidden, hidden), hidden, heads=1, edge_dim=e,  # noqa: E731
                                add_self_loops=False)
        with warnings.catch_warnings():  # task nodes only send messages: by design
            warnings.filterwarnings("ignore", message="There exist node types")
            self.convs = nn.ModuleList(HeteroConv({
                ("task", "has", "query"): gat(None), ("llm", "offered", "query"): gat(2),
                ("query", "rated", "llm"): gat(2)}, aggr="sum") for _ in range(layers))
        self.out = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: dict, edge_index: dict, edge_attr: dict) -> torch.Tensor:
        h = {t: self.proj[t](v) for t, v in x.items()}
        for conv in self.convs:
            out = conv(h, edge_index, edge_attr)
            h = {t: F.relu(h[t] + out[t]) if t in out else h[t] for t in h}
        q, m = h["query"], h["llm"]
        qq = q[:, None, :].expand(-1, m.shape[0], -1)
        mm = m[None, :, :].expand(q.shape[0], -1, -1)
        return self.out(torch.cat([qq, mm, qq * mm], -1)).squeeze(-1)


class GraphRouterGNN(_TorchRouter):
    """GraphRouter-style GNN without user nodes: task, query and LLM nodes; a query-LLM edge
    carries the LLM's mean utility (over users) on that query for visible training queries.
    Each step hides a random 30% of training queries and predicts their mean utility (MSE on
    every request of a hidden query) from the rest; scoring hides the new queries."""

    name = "GraphRouter (GNN, no users)"
    loss = "mse"
    hide_share = 0.3

    def __init__(self, feats, seed=0, steps=200, hidden=32, **kw):
        super().__init__(feats, seed, steps=steps, hidden=hidden, **kw)

    def _query_x(self) -> torch.Tensor:
        return self.feats.query_x

    def _build(self, train):
        by_q = pd.DataFrame(train.utility).groupby(train.frame["query_id"].to_numpy()).mean()
        self.train_q_ = by_q.index.to_numpy()
        self.train_u_ = by_q.to_numpy()  # (n_train_q, n_llms), NaN = never a candidate
        self.task_of_ = dict(zip(train.frame["query_id"], train.frame["task"]))
        dims = {"task": self.feats.task_x.shape[1], "query": self._query_x().shape[1],
                "llm": self.feats.llm_x.shape[1]}
        return _QueryGNN(dims, self.hidden)

    def _graph_scores(self, qids: np.ndarray, util: np.ndarray, visible: np.ndarray):
        """(len(qids), n_llms) predictions; ``util`` rows are the edge labels (NaN = no edge),
        used only where ``visible``."""
        qpos = pd.Index(self.feats.query_ids).get_indexer(qids)
        tpos = pd.Index(self.feats.tasks).get_indexer([self.task_of_[q] for q in qids])
        n = len(qids)
        r, m = np.nonzero(~np.isnan(util))
        attr = np.stack([visible[r].astype(float), np.where(visible[r], util[r, m], 0.0)], 1)
        attr = torch.as_tensor(attr, dtype=torch.float32)
        rq, mq = torch.as_tensor(r), torch.as_tensor(m)
        vis = torch.as_tensor(visible[r])
        ei = {("task", "has", "query"): torch.stack([torch.as_tensor(tpos), torch.arange(n)]),
              ("llm", "offered", "query"): torch.stack([mq, rq]),
              ("query", "rated", "llm"): torch.stack([rq[vis], mq[vis]])}
        ea = {("llm", "offered", "query"): attr, ("query", "rated", "llm"): attr[vis]}
        x = {"task": self.feats.task_x, "query": self._query_x()[qpos], "llm": self.feats.llm_x}
        return self.net(x, ei, ea)

    def _train_loss(self, train, rng):
        hidden = rng.random(len(self.train_q_)) < self.hide_share
        if not hidden.any():
            hidden[rng.integers(len(hidden))] = True
        pred = self._graph_scores(self.train_q_, self.train_u_, ~hidden)
        rows = pd.Index(self.train_q_).get_indexer(train.frame["query_id"])
        keep = np.flatnonzero(hidden[rows])
        return self._loss(pred[torch.as_tensor(rows[keep])], train.select(keep))

    def _forward(self, requests):
        for q, t in zip(requests.frame["query_id"], requests.frame["task"]):
            self.task_of_.setdefault(q, t)
        new = np.array(sorted(set(requests.frame["query_id"]) - set(self.train_q_)), dtype=object)
        by_new = pd.DataFrame(candidates(requests).astype(float)).groupby(
            requests.frame["query_id"].to_numpy()).max().reindex(new).to_numpy()
        util = np.vstack([self.train_u_, np.where(by_new > 0, 0.0, np.nan)])
        qids = np.concatenate([self.train_q_, new])
        visible = np.arange(len(qids)) < len(self.train_q_)
        pred = self._graph_scores(qids, util, visible)
        return pred[torch.as_tensor(pd.Index(qids).get_indexer(requests.frame["query_id"]))]


class ReferenceDesignRouter(GraphRouterGNN):
    """The released PersonalizedRouter's design, faithfully: the user one-hot is folded into the
    *query* node and tiled by position (query i carries user i mod n_users), whatever user asks;
    trained on the users' choices. A query's scores therefore never depend on the requesting
    user: every user gets the same LLM (see REFERENCE.md, flaw 1)."""

    name = "Released PersonalizedRouter design"
    loss = "ce"

    def _build(self, train):
        self.n_users_ = train.frame["user_id"].nunique()
        return super()._build(train)

    def _query_x(self):
        n_q = self.feats.query_x.shape[0]
        onehot = F.one_hot(torch.arange(n_q) % self.n_users_, self.n_users_).float()
        return torch.cat([self.feats.query_x, onehot], 1)


# ------------------------------------------------------------------ HybridLLM, FrugalGPT
def _cost_order(train: Requests) -> np.ndarray:
    """LLM indices by mean training cost, cheapest first."""
    return np.argsort(col_nanmean(np.where(candidates(train), train.cost, np.nan),
                                  fill=np.inf), kind="stable")


def _threshold_grid(values: np.ndarray, n: int = 21) -> np.ndarray:
    v = values[np.isfinite(values)]
    qs = np.quantile(v, np.linspace(0, 1, n)) if len(v) else np.zeros(0)
    return np.unique(np.concatenate([[-np.inf, np.inf], qs]))


class HybridLLMRouter(Router):
    """HybridLLM: a logistic-regression classifier on the query embedding predicts whether the
    large (most expensive) LLM beats the small (cheapest) one for the user; route to small when
    that probability is below a threshold tuned on val (pooled users)."""

    name = "HybridLLM"

    def fit(self, train, val):
        from sklearn.linear_model import LogisticRegression

        order = _cost_order(train)
        self.small_, self.large_ = int(order[0]), int(order[-1])
        ok = candidates(train)[:, self.small_] & candidates(train)[:, self.large_]
        y = (train.utility[ok, self.large_] > train.utility[ok, self.small_]).astype(int)
        x = query_embeddings(self.feats, train)[ok]
        self.clf_ = None
        if len(np.unique(y)) == 2:
            self.clf_ = LogisticRegression(C=1.0, max_iter=500).fit(x, y)
        self.const_ = float(y.mean()) if len(y) else 0.5
        p = self._p_large(val)
        self.threshold_ = max(_threshold_grid(p),
                              key=lambda t: reward_of(val, self._scores_at(val, p, t)))
        return self

    def _p_large(self, requests):
        if self.clf_ is None:
            return np.full(len(requests), self.const_)
        return self.clf_.predict_proba(query_embeddings(self.feats, requests))[:, 1]

    def _scores_at(self, requests, p, threshold):
        small = p < threshold
        n = len(requests)
        pref = np.where(small, self.small_, self.large_)
        return pick_one(requests, pref, np.where(small, self.large_, self.small_)) \
            if n else np.zeros((0, self.n_llms))

    def _raw_scores(self, requests):
        return self._scores_at(requests, self._p_large(requests), self.threshold_)


class FrugalGPTRouter(Router):
    """FrugalGPT-style cascade. The chain: LLMs by mean training cost, keeping each one only if
    its mean training utility beats every cheaper one kept (at most ``max_chain``). A ridge
    answer scorer per chained LLM predicts its utility from the query embedding; the cascade
    stops at the first LLM whose predicted utility reaches its threshold (the last LLM
    otherwise). Thresholds: coordinate ascent on val over quantile grids. Scores are 1 for the
    LLM where the cascade stops."""

    name = "FrugalGPT (cascade)"
    max_chain = 4

    def fit(self, train, val):
        from sklearn.linear_model import Ridge

        mean_u = col_nanmean(train.utility)
        chain, best = [], -np.inf
        for m in _cost_order(train):
            if np.isfinite(mean_u[m]) and mean_u[m] > best + 1e-12:
                chain.append(int(m))
                best = mean_u[m]
        self.chain_ = chain[-self.max_chain:] if len(chain) > self.max_chain else chain
        x = query_embeddings(self.feats, train)
        self.scorers_ = {}
        for m in self.chain_:
            ok = candidates(train)[:, m]
            self.scorers_[m] = Ridge(alpha=1.0).fit(x[ok], train.utility[ok, m])
        pred = self._predict(val)
        self.thresholds_ = np.full(len(self.chain_) - 1, np.inf)
        for _ in range(2):
            for i in range(len(self.thresholds_)):
                def val_reward(t, i=i):
                    th = self.thresholds_.copy()
                    th[i] = t
                    return reward_of(val, self._cascade(val, pred, th))
                self.thresholds_[i] = max(_threshold_grid(pred[:, i]), key=val_reward)
        return self

    def _predict(self, requests) -> np.ndarray:
        x = query_embeddings(self.feats, requests)
        return np.stack([self.scorers_[m].predict(x) for m in self.chain_], 1) if len(x) else \
            np.zeros((0, len(self.chain_)))

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


#: Every baseline, in table order (the oracle last).
BASELINES: list[type[Router]] = [
    RandomRouter, CheapestRouter, MostExpensiveRouter, BestSingleRouter, BestPerUserRouter,
    BestPerUserTaskRouter, KNNRouter, MLPRouter, MFRouter, GraphRouterGNN, RouterDC,
    HybridLLMRouter, FrugalGPTRouter, PerUserKNNRouter, UserMLPRouter, ReferenceDesignRouter, OracleRouter]

#: The family of each baseline, for tables.
FAMILY = {
    **{c.name: "simple" for c in (RandomRouter, CheapestRouter, MostExpensiveRouter,
                                  BestSingleRouter, BestPerUserRouter, BestPerUserTaskRouter)},
    **{c.name: "non-personalised" for c in (KNNRouter, MLPRouter, MFRouter, GraphRouterGNN,
                                            RouterDC, HybridLLMRouter, FrugalGPTRouter)},
    **{c.name: "personalised" for c in (PerUserKNNRouter, UserMLPRouter)},
    ReferenceDesignRouter.name: "released design", OracleRouter.name: "upper bound"}
