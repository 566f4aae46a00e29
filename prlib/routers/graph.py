"""Graph routers without users: GraphRouter (task, query and LLM nodes) and the released
PersonalizedRouter's input design."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from prlib.routers.base import candidates, register
from prlib.routers.training import TorchRouter


class QueryGNN(nn.Module):
    """HeteroConv over task -> query, llm <-> query (edge attr [visible, utility]); predicts
    (n_rows, n_llms) from [h_query, h_llm, h_query * h_llm] for the query nodes ``rows`` (all
    of them by default: the head, the costliest part, runs only where a score is read)."""

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

    def forward(self, x: dict, edge_index: dict, edge_attr: dict,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        h = {t: self.proj[t](v) for t, v in x.items()}
        for conv in self.convs:
            out = conv(h, edge_index, edge_attr)
            h = {t: F.relu(h[t] + out[t]) if t in out else h[t] for t in h}
        q, m = h["query"], h["llm"]
        if rows is not None:
            q = q[rows]
        qq = q[:, None, :].expand(-1, m.shape[0], -1)
        mm = m[None, :, :].expand(q.shape[0], -1, -1)
        return self.out(torch.cat([qq, mm, qq * mm], -1)).squeeze(-1)


@register
class GraphRouterGNN(TorchRouter):
    """GraphRouter-style GNN without user nodes: task, query and LLM nodes; a query-LLM edge
    carries the LLM's mean utility (over users) on that query for visible training queries.
    Each step hides a random 30% of training queries and predicts their mean utility (MSE on
    every request of a hidden query) from the rest; scoring hides the new queries."""

    name = "GraphRouter (GNN, no users)"
    relative_fit_time = 20.0
    family = "non-personalised"
    defaults = {**TorchRouter.defaults, "hidden": 32, "hide_share": 0.3, "loss": "mse"}
    grid = {"hidden": [32, 64], "lr": [1e-3, 3e-3]}

    def _query_x(self) -> torch.Tensor:
        return self.feats.query_x

    def _prepare(self, train):
        by_q = pd.DataFrame(train.utility).groupby(train.frame["query_id"].to_numpy()).mean()
        self.train_q_ = by_q.index.to_numpy()
        self.train_u_ = by_q.to_numpy()  # (n_train_q, n_llms), NaN = never a candidate
        self.task_of_ = dict(zip(train.frame["query_id"], train.frame["task"]))
        # what every training step reads, looked up once per fit (no pandas in the step loop):
        # the training queries' feature positions, each training request's row among them, and
        # the requests' targets
        self._step_positions = self._query_positions(self.train_q_)
        self._step_rows = pd.Index(self.train_q_).get_indexer(train.frame["query_id"])
        # on the router's device: _prepare runs outside the fit's device scope, and each step
        # indexes the targets with a tensor made inside it (on CPU nothing moves)
        self._step_targets = tuple(t.to(self.device) for t in self._targets(train))

    def fit(self, train, val, *, progress=False):
        super().fit(train, val, progress=progress)
        del self._step_positions, self._step_rows, self._step_targets  # the fit's own
        return self

    def _make_net(self):
        dims = {"task": self.feats.task_x.shape[1], "query": self._query_x().shape[1],
                "llm": self.feats.llm_x.shape[1]}
        return QueryGNN(dims, self.params["hidden"])

    def _graph_scores(self, qids: np.ndarray, util: np.ndarray, visible: np.ndarray,
                      positions: tuple[np.ndarray, np.ndarray] | None = None,
                      rows: np.ndarray | None = None):
        """(len(rows), n_llms) predictions for the queries ``qids[rows]`` (default: every one)
        on the graph of all ``qids``; ``util`` rows are the edge labels (NaN = no edge), used
        only where ``visible``; ``positions``: :meth:`_query_positions` of ``qids`` when the
        caller has them."""
        qpos, tpos = self._query_positions(qids) if positions is None else positions
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
        x = {"task": self._on_device(self.feats.task_x),
             "query": self._on_device(self._query_x()[qpos]),
             "llm": self._on_device(self.feats.llm_x)}
        return self.net(x, ei, ea, None if rows is None else self._on_device(torch.as_tensor(rows)))

    def _query_positions(self, qids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feature rows of ``qids`` and of their tasks."""
        return (pd.Index(self.feats.query_ids).get_indexer(qids),
                pd.Index(self.feats.tasks).get_indexer([self.task_of_[q] for q in qids]))

    def _train_loss(self, train, rng):
        hidden = rng.random(len(self.train_q_)) < self.params["hide_share"]
        if not hidden.any():
            hidden[rng.integers(len(hidden))] = True
        hidden_rows = np.flatnonzero(hidden)  # only hidden queries' scores enter the loss
        pred = self._graph_scores(self.train_q_, self.train_u_, ~hidden, self._step_positions,
                                  rows=hidden_rows)
        rows = self._step_rows
        keep = np.flatnonzero(hidden[rows])
        at = torch.as_tensor(np.searchsorted(hidden_rows, rows[keep]))  # request -> pred row
        keep = torch.as_tensor(keep)
        return self._loss_of(pred[at], *(t[keep] for t in self._step_targets))

    def _forward(self, requests):
        for q, t in zip(requests.frame["query_id"], requests.frame["task"]):
            self.task_of_.setdefault(q, t)
        new = np.array(sorted(set(requests.frame["query_id"]) - set(self.train_q_)), dtype=object)
        by_new = pd.DataFrame(candidates(requests).astype(float)).groupby(
            requests.frame["query_id"].to_numpy()).max().reindex(new).to_numpy()
        util = np.vstack([self.train_u_, np.where(by_new > 0, 0.0, np.nan)])
        qids = np.concatenate([self.train_q_, new])
        visible = np.arange(len(qids)) < len(self.train_q_)
        asked = pd.Index(qids).get_indexer(requests.frame["query_id"])
        needed, at = np.unique(asked, return_inverse=True)  # the head only for asked queries
        pred = self._graph_scores(qids, util, visible, rows=needed)
        return pred[torch.as_tensor(at.reshape(-1))]


@register
class ReferenceDesignRouter(GraphRouterGNN):
    """The released PersonalizedRouter's design, faithfully: the user one-hot is folded into the
    *query* node and tiled by position (query i carries user i mod n_users), whatever user asks;
    trained on the users' choices. A query's scores therefore never depend on the requesting
    user: every user gets the same LLM (see REFERENCE.md, flaw 1)."""

    name = "Released PersonalizedRouter design"
    family = "released design"
    defaults = {**GraphRouterGNN.defaults, "loss": "ce"}

    def _prepare(self, train):
        self.n_users_ = int(train.frame["user_id"].nunique())
        super()._prepare(train)

    def _query_x(self):
        n_q = self.feats.query_x.shape[0]
        onehot = F.one_hot(torch.arange(n_q, device="cpu") % self.n_users_, self.n_users_).float()
        return torch.cat([self.feats.query_x, onehot], 1)  # on CPU, like the features
