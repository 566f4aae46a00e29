"""PersonalizedRouter: a heterogeneous GNN that routes each (user, query) to an LLM.

Architecture (PyG): per-type linear projections to ``hidden``; ``layers`` rounds of
``HeteroConv`` over :mod:`prlib.hetero_graph`'s edge types, with residual connections and LayerNorm:
``GATConv`` on the structural edges and a :class:`FeedbackConv` (edge-conditioned, so feedback is
bound to the LLM it is about) on the feedback edges (LLM to request, request to LLM, LLM to
profile, and with choice-only feedback LLM to user). Node types that receive no messages keep
their state (unlike the GMTRouter reference code, no type is silently dropped). A request is scored
against every candidate LLM by an MLP over ``[z, h_llm, z * h_llm]`` with
``z = MLP([h_user, h_query, h_task, h_profile])``, ``h_profile`` being the state of the request's
(user, task) profile node, which has heard the feedback of that user's visible requests of that
task (a user's taste often differs across tasks: cheap models suffice on some, not on others).

Loss: with utilities (multi-cost), the mean squared error of the scores against the candidates'
utilities, so routing maximises expected reward; with choices only (judge), a listwise softmax
cross-entropy over the candidate LLMs of a request, the label being the user's pick: routing picks
one LLM among a small candidate set, and the softmax compares candidates directly (a per-edge
sigmoid would not). Each training step samples, per user, some
training requests as visible context and others as targets, and predicts the targets from the
context (labels of predicted requests never reach message passing); model selection uses the
validation split only, and the best checkpoint is reloaded before anything is scored on test.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATConv, HeteroConv, MessagePassing

from prlib.config import resolve_device, seed_everything
from prlib.features import NodeFeatures, llm_row, query_row
from prlib.hetero_graph import EDGE_DIM, build_graph, check_no_label_leak
from prlib.requests import Requests, concat_requests
from prlib.routers.base import Router, UnknownUserError, one_of, register
from prlib.routers.training import train_module


FEATURELESS = ("user", "request", "profile")


class FeedbackConv(MessagePassing):
    """Mean of ``(W_0 + sum_k e_k W_k) x_j`` over incoming feedback edges.

    The edge's feedback ``e`` (observed, chosen, utility) scales its own linear map of the
    source, so a request's state says *which* LLM its user liked (an additive edge term, as in
    GATConv or GeneralConv, cannot bind feedback to the LLM it belongs to). This equals PyG's
    ``NNConv`` with a linear edge network, without materialising a matrix per edge.

    Every feedback edge type has LLMs on one side, so the mean is computed as one dense product
    ``C @ proj``: ``C`` (n_dst, n_src * (edge_dim + 1)) holds each edge's coefficients
    ``[1, e] / in_degree(dst)`` at its source's columns and ``proj`` (n_src * (edge_dim + 1),
    out) is the source's linear maps. That is 5-9x faster than gathering an (E, edge_dim + 1,
    out) tensor per edge (the message-passing path, kept for graphs whose ``C`` would exceed
    ``dense_limit`` entries; both give the same output, tested).
    """

    dense_limit = 2 ** 24  # entries of C (64 MB in float32) above which messages are gathered

    def __init__(self, in_channels: int, out_channels: int, edge_dim: int):
        super().__init__(aggr="mean", node_dim=0)
        self.edge_dim, self.out_channels = edge_dim, out_channels
        self.lin = nn.Linear(in_channels, out_channels * (edge_dim + 1))

    def forward(self, x, edge_index, edge_attr):
        """``x``: (n, in) or a (source (n_src, in), destination (n_dst, *)) pair; ``edge_index``
        (2, E) source -> destination; ``edge_attr`` (E, edge_dim). Returns (n_dst, out)."""
        src, dst = x if isinstance(x, tuple) else (x, x)
        k = self.edge_dim + 1
        if dst.shape[0] * src.shape[0] * k <= self.dense_limit:
            return self._dense_mean(src, dst.shape[0], edge_index, edge_attr)
        proj = self.lin(src).view(-1, k, self.out_channels)
        return self.propagate(edge_index, x=(proj, dst), edge_attr=edge_attr,
                              size=(src.shape[0], dst.shape[0]))

    def _dense_mean(self, src, n_dst: int, edge_index, edge_attr) -> torch.Tensor:
        k = self.edge_dim + 1
        s, d = edge_index
        coef = torch.cat([torch.ones_like(edge_attr[:, :1]), edge_attr], dim=1)  # (E, k)
        deg = torch.bincount(d, minlength=n_dst).clamp_(min=1).to(coef.dtype)
        cols = s[:, None] * k + torch.arange(k, device=s.device)  # (E, k)
        c = coef.new_zeros(n_dst, src.shape[0] * k)
        c.index_put_((d[:, None].expand(-1, k), cols), coef / deg[d, None], accumulate=True)
        return c @ self.lin(src).view(-1, self.out_channels)

    def message(self, x_j: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        coef = torch.cat([torch.ones_like(edge_attr[:, :1]), edge_attr], dim=1)
        return (coef.unsqueeze(-1) * x_j).sum(1)


class PersonalizedRouterGNN(nn.Module):
    """The GNN: ``encode`` (message passing) and ``score`` ((n, n_llms) logits)."""

    def __init__(self, metadata, in_dims: dict[str, int], hidden: int = 32, layers: int = 2,
                 heads: int = 2, dropout: float = 0.1):
        super().__init__()
        node_types, edge_types = metadata
        self.hidden = hidden
        self.proj = nn.ModuleDict({t: nn.Linear(in_dims[t], hidden) for t in node_types
                                   if t not in FEATURELESS})
        with_attr = {("llm", "offered_to", "request"), ("request", "rated", "llm"),
                     ("llm", "rated_in", "profile"), ("llm", "picked_by", "user")}
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        # query and task nodes only send messages (their state is their text): PyG warns that
        # they are not updated, which is intended here
        warnings.filterwarnings("ignore", message="There exist node types", category=UserWarning)
        for _ in range(layers):
            self.convs.append(HeteroConv({
                et: (FeedbackConv(hidden, hidden, EDGE_DIM) if et in with_attr else
                     GATConv((hidden, hidden), hidden, heads=heads, concat=False,
                             add_self_loops=False))
                for et in edge_types}, aggr="sum"))
            self.norms.append(nn.ModuleDict({t: nn.LayerNorm(hidden) for t in node_types}))
        self.dropout = nn.Dropout(dropout)
        self.request_mlp = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.ReLU(),
                                         nn.Linear(hidden, hidden))
        self.score_mlp = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.ReLU(),
                                       nn.Linear(hidden, 1))

    def encode(self, g) -> dict[str, torch.Tensor]:
        """Node states after message passing, ``{type: (n_type, hidden)}``."""
        # users and requests have no features of their own: they start at zero and are made
        # entirely of the messages they receive (so a user is their history, nothing else)
        h = {t: (g[t].x.new_zeros(g[t].num_nodes, self.hidden) if t in FEATURELESS
                 else self.proj[t](g[t].x)) for t in g.node_types}
        edge_attr = {et: g[et].edge_attr for et in g.edge_types if "edge_attr" in g[et]}
        for conv, norm in zip(self.convs, self.norms):
            out = conv(h, g.edge_index_dict, edge_attr)
            h = {t: norm[t](h[t] + self.dropout(F.relu(out[t]))) if t in out else h[t]
                 for t in h}
        return h

    def score(self, h: dict[str, torch.Tensor], user, query, task, profile) -> torch.Tensor:
        """Logits of every LLM for requests given by index vectors (n,) -> (n, n_llms)."""
        z = self.request_mlp(torch.cat([h["user"][user], h["query"][query], h["task"][task],
                                        h["profile"][profile]], 1))
        llm = h["llm"]
        zz = z[:, None, :].expand(-1, llm.shape[0], -1)
        ll = llm[None, :, :].expand(z.shape[0], -1, -1)
        return self.score_mlp(torch.cat([zz, ll, zz * ll], -1)).squeeze(-1)


@dataclass
class TrainConfig:
    """Hyper-parameters of :class:`PersonalizedRouter` (saved with the model)."""

    hidden: int = 32
    layers: int = 2
    heads: int = 2
    dropout: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 1e-5
    steps: int = 1000  # optimizer steps, each on a freshly sampled sub-graph
    eval_every: int = 25  # steps between validation checks
    patience: int = 10  # validation checks without improvement before stopping
    context_per_user: int = 256  # visible (labelled) training requests per user and step
    targets_per_user: int = 64  # hidden training requests per user and step (the loss)
    use_utility: bool = True
    loss: str = "utility"  # "utility" (regress utilities) or "choice" (listwise cross-entropy)
    select_on: str = "utility"  # validation metric: "utility" (mean reward) or "accuracy"
    seed: int = 0
    device: str = "auto"


def _masked(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~candidates, float("-inf"))


@register
class PersonalizedRouter(Router):
    """Ours: a heterogeneous GNN over user, (user, task) profile, request, query, task and LLM
    nodes; a user is their visible feedback history, and a request is scored against every
    candidate LLM (link prediction). Trained by sampling, per user, visible context and hidden
    targets; early stopping on validation.

    Beyond the common interface: ``add_user`` (a new user from k interactions, no retraining),
    ``add_llm`` (a new candidate from its description and prices) and ``route_text``. The router
    remembers the *visible history* (requests whose feedback it has seen); scoring new requests
    builds the graph of that history plus the new requests (without their labels).
    """

    name = "PersonalizedRouter v1 (notebook 30's graph)"
    relative_fit_time = 20.0
    #: superseded by :class:`~prlib.routers.personalized_v2.PersonalizedRouterV2`; registered
    #: (it saves and loads like any router) but not among the routers of the comparison tables
    family = "ablation"
    selection = "early stopping (validation-best checkpoint)"
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name != "seed"}
    constraints = {"loss": one_of("utility", "choice"), "select_on": one_of("utility", "accuracy")}
    tags = frozenset({"torch", "online"})
    grid = {"lr": [2e-3, 5e-3], "dropout": [0.0, 0.1]}

    def __init__(self, feats: NodeFeatures, seed: int = 0, **params):
        super().__init__(feats, seed, **params)
        self.config = TrainConfig(seed=self.seed, **self.params)
        self.device = resolve_device(self.config.device)
        self.model: PersonalizedRouterGNN | None = None

    @classmethod
    def params_for(cls, feedback: str) -> dict:
        """Choice-only feedback: no utilities on edges, listwise loss on the pick, selected on
        validation accuracy."""
        if feedback == "choice":
            return {"use_utility": False, "loss": "choice", "select_on": "accuracy"}
        return {}

    # -------------------------------------------------------------- training
    def _new_model(self, metadata) -> PersonalizedRouterGNN:
        c = self.config
        dims = {"user": 1, "request": 1, "query": self.feats.query_x.shape[1],
                "task": self.feats.task_x.shape[1], "llm": self.feats.llm_x.shape[1]}
        return PersonalizedRouterGNN(metadata, dims, c.hidden, c.layers, c.heads,
                                     c.dropout).to(self.device)

    def _logits(self, req: Requests, visible: np.ndarray, targets: np.ndarray,
                check_leaks: bool = False) -> torch.Tensor:
        """Logits (n_targets, n_llms) of the ``targets`` requests from the graph in which only
        ``visible`` requests carry feedback; ``check_leaks`` runs :func:`check_no_label_leak`."""
        g = build_graph(req, self.feats, visible, self.users_, self.config.use_utility)
        if check_leaks:
            check_no_label_leak(g, ~np.asarray(visible, dtype=bool))
        g = g.to(self.device)
        if self.model is None:
            self.model = self._new_model(g.metadata())
        h = self.model.encode(g)
        t = torch.as_tensor(np.flatnonzero(targets), device=self.device)
        logits = self.model.score(h, g.request_user[t], g.request_query[t], g.request_task[t],
                                  g.request_profile[t])
        cand = torch.as_tensor(~np.isnan(req.utility[targets]), device=self.device)
        return _masked(logits, cand)

    def fit(self, train: Requests, val: Requests, *,
            progress: bool = False) -> "PersonalizedRouter":
        """Train on ``train``, select the checkpoint on ``val`` (never on test).

        Each step samples, per user, ``context_per_user`` training requests whose feedback is
        visible and ``targets_per_user`` other training requests whose chosen LLM is predicted
        (their labels are not in the graph), so a step costs the same whatever the data size.
        """
        c = self.config
        seed_everything(c.seed)
        rng = np.random.default_rng(c.seed)
        self.users_ = sorted(set(train.frame["user_id"]) | set(val.frame["user_id"]))
        by_user = train.frame.groupby("user_id").indices
        # validation sees a fixed sample of each user's training history as context (cheap to
        # re-score every few steps; test-time scoring uses the whole history)
        ctx = np.concatenate([rng.permutation(r)[: 4 * c.context_per_user]
                              for r in by_user.values()])
        val_both = concat_requests(train.select(np.sort(ctx)), val)
        val_is_ctx = np.arange(len(val_both)) < len(ctx)
        self.model = None
        with torch.no_grad():
            self._logits(val_both, val_is_ctx, ~val_is_ctx)  # lazy init of the model

        first_step = [True]

        def step_loss() -> torch.Tensor:
            context, targets = [], []
            for rows in by_user.values():
                rows = rng.permutation(rows)
                n_t = min(c.targets_per_user, max(1, len(rows) // 2))
                targets.append(rows[:n_t])
                context.append(rows[n_t:n_t + c.context_per_user])
            context, targets = np.concatenate(context), np.concatenate(targets)
            sub = train.select(np.concatenate([context, targets]))
            hidden = np.arange(len(sub)) >= len(context)
            logits = self._logits(sub, ~hidden, hidden, check_leaks=first_step[0])
            first_step[0] = False
            return self._loss(logits, sub.select(hidden))

        self.log_ = train_module(
            self.model, step_loss, lambda: self._val_metric(val_both, val_is_ctx, val),
            steps=c.steps, lr=c.lr, weight_decay=c.weight_decay, eval_every=c.eval_every,
            patience=c.patience, min_delta=1e-6, progress=progress, desc="PersonalizedRouter")
        self.history_ = train
        return self

    def _loss(self, logits: torch.Tensor, targets: Requests) -> torch.Tensor:
        """Listwise cross-entropy on the chosen LLM, or (``loss="utility"``) mean squared error
        of the scores against the candidates' utilities, so routing maximises expected reward."""
        if self.config.loss == "choice":
            return F.cross_entropy(logits, torch.as_tensor(targets.chosen, device=self.device))
        u = torch.as_tensor(targets.utility, dtype=torch.float32, device=self.device)
        cand = ~torch.isnan(u)
        return F.mse_loss(logits[cand], u[cand])

    @torch.no_grad()
    def _val_metric(self, both: Requests, is_train: np.ndarray, val: Requests) -> float:
        pick = self._logits(both, is_train, ~is_train).argmax(1).cpu().numpy()
        if self.config.select_on == "accuracy":
            return float((pick == val.chosen).mean())
        return float(val.utility[np.arange(len(val)), pick].mean())

    # -------------------------------------------------------------- inference
    @torch.no_grad()
    def _raw_scores(self, requests: Requests) -> np.ndarray:
        """Logits (n, n_llms) for ``requests`` given the visible history; -inf = not a candidate.

        Users of ``requests`` must have a visible history (seen in ``fit`` or ``add_user``)."""
        unknown = sorted(set(requests.frame["user_id"]) - set(self.users_))
        if unknown:
            raise UnknownUserError(f"users without history: {unknown[:5]}; call "
                                   "add_user(history) first (a user's representation is built "
                                   "from their interactions)")
        both = concat_requests(self.history_, requests)
        is_hist = np.arange(len(both)) < len(self.history_)
        self.model.eval()
        return self._logits(both, is_hist, ~is_hist, check_leaks=True).cpu().numpy()

    def add_user(self, history: Requests) -> None:
        """Make new users routable from k observed interactions, without retraining."""
        self._check_fitted()
        self.history_ = concat_requests(self.history_, history)
        self.users_ = sorted(set(self.users_) | set(history.frame["user_id"]))

    def route_text(self, user_id: str, query_text: str, task: str | None = None) -> str:
        """The LLM this router picks for a known user and a new query text.

        ``task`` defaults to the task whose description embedding is closest to the query's."""
        self._check_fitted()
        if user_id not in self.users_:
            raise UnknownUserError(f"user {user_id!r} has no history; call add_user(history) "
                                   "first")
        row = query_row(query_text)
        if task is None:
            sims = torch.nn.functional.cosine_similarity(self.feats.task_x, row[:, :-1])
            task = self.feats.tasks[int(sims.argmax())]
        elif task not in self.feats.tasks:
            raise KeyError(f"unknown task {task!r}; known tasks: {self.feats.tasks}")
        qid = f"__new__{len(self.feats.query_ids)}"
        self.feats = replace(self.feats, query_ids=self.feats.query_ids + [qid],
                             query_x=torch.cat([self.feats.query_x, row]), answer_x=None,
                             answer_ok=None)
        n = len(self.feats.llms)
        request = Requests(pd.DataFrame({"user_id": [user_id], "query_id": [qid], "task": [task],
                                         "split": ["new"]}), self.feats.llms,
                           np.zeros((1, n)), np.zeros(1, dtype=int))
        return self.feats.llms[int(self.scores(request).argmax())]

    def add_llm(self, name: str, description: str, input_usd_per_m: float,
                output_usd_per_m: float, history: Requests | None = None) -> None:
        """Add a candidate LLM from its description, prices and (optionally) observed
        interactions over the extended LLM list, without retraining."""
        self._check_fitted()
        if name in self.feats.llms:
            raise ValueError(f"LLM {name!r} is already a candidate")
        if history is not None and history.llms != self.feats.llms + [name]:
            raise ValueError(f"history must be over the LLMs {self.feats.llms + [name]}")
        self.feats = replace(self.feats, llms=self.feats.llms + [name], llm_x=torch.cat(
            [self.feats.llm_x, llm_row(description, input_usd_per_m, output_usd_per_m)]),
            answer_x=None, answer_ok=None)
        self.n_llms = len(self.feats.llms)
        self.history_ = self.history_.with_llm_columns(
            self.feats.llms, lambda a: np.hstack([a, np.full((len(a), 1), np.nan)]))
        if history is not None:
            self.history_ = concat_requests(self.history_, history)

    # -------------------------------------------------------------- persistence
    def _modules(self):
        self._check_fitted()
        return {"model": self.model}

    def _rebuild(self) -> None:
        """Re-create the GNN from the saved visible history (its node and edge types)."""
        n = len(self.history_)
        self.model = None
        with torch.no_grad():
            self._logits(self.history_, np.ones(n, bool), np.zeros(n, bool))
