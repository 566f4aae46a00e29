"""GMTRouter (ours, re-implemented): multi-turn interactions as a heterogeneous graph, HGT.

Graph of the visible feedback history (:func:`build_interaction_graph`), one node type per
entity and one *interaction* (``turn``) node per rated answer:

==========  ==============================================================================
user        a constant input (no id embedding): a user's state is only what message passing
            brings from their interactions, so a new user needs no retraining
llm         MiniLM of the LLM's description + log prices (386)
query       MiniLM of the user messages so far + log input tokens (385), one per turn query
response    MiniLM of the answer text (384) of each (turn query, LLM) that a visible rating is
            about: what those users read. The answer to the request being routed does not
            exist yet at routing time and is not read (its LLM's earlier answers are)
turn        one per visible rating (user, turn query, LLM): [r, 1{first turn}, 1{later
            turn}, r x the LLM's features] (389), r = the rating min-max normalised per user
            minus 0.5
==========  ==============================================================================

Edges: ``turn -by-> user``, ``turn -of-> llm``, ``turn -on-> query``, ``turn -saw-> response``
(the response's query and LLM are two hops away, through the rating), and the turn chain
``turn -next-> turn`` from a user's rating of an LLM at turn t-1 of a conversation to their rating
of the same LLM at turn t; each with a reverse edge (``rev_*``), so **every node type is updated**
by the PyG ``HGTConv`` layers (the released code updates only destination types and never reads
answers).
The scorer reads the user, query and LLM states and the conversation so far of the request (the
user's rating of that LLM at the previous turn and that earlier answer's embedding) and is trained
with GMTRouter's pairwise loss (softplus of the negative score difference of every preference pair
of a request).

No label being predicted is in the graph that predicts it (:func:`check_no_label_leak_gmt`):
the graph holds the visible history only (at training steps: without any rating of a target's
user in the target's conversation); the request's own conversation so far (its user's
previous-turn ratings, ``Requests.previous``) reaches only that request's scorer row, never
message passing, so no request sees another request's labels. Turn queries are recognised by their
id (:func:`prlib.bank.turn_query_id`, ``"<conversation>/t<turn>"``, read back by
:func:`prlib.bank.parse_turn_query_ids`); other ids are single turns.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import HGTConv

from prlib.bank import parse_turn_query_ids, turn_query_id
from prlib.config import seed_everything, torch_threads
from prlib.features import NodeFeatures
from prlib.metrics import pairwise_metrics, preference_pairs
from prlib.requests import Requests, concat_requests
from prlib.routers.base import PAIRWISE, Router, RouterError, register
from prlib.routers.training import train_module

CHAIN = ("turn", "next", "turn")
NODE_TYPES = ("user", "llm", "query", "response", "turn")


def turn_structure(feats: NodeFeatures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per feature query, each (n_queries,) int64: the conversation code (the position of the
    conversation's first turn among the feature queries; the query's own position when that is
    absent or the id is no turn id, :func:`prlib.bank.parse_turn_query_ids`), the turn (1, 2,
    ...), and the position of the previous turn's query (-1 at a first turn)."""
    conv, turn = parse_turn_query_ids(feats.query_ids)
    index = pd.Index(feats.query_ids)
    first = index.get_indexer([turn_query_id(c, 1) for c in conv])
    codes = np.where(first >= 0, first, np.arange(len(conv)))
    prev = np.where(turn > 1, index.get_indexer([turn_query_id(c, max(t - 1, 1))
                                                 for c, t in zip(conv, turn)]), -1)
    return codes.astype(np.int64), turn.astype(np.int64), prev.astype(np.int64)


@dataclass
class Interactions:
    """Visible ratings as flat arrays, one entry per (user, turn query, LLM) rating: ``user``,
    ``query``, ``llm`` (node indices), ``rating`` (normalised), ``conv`` (conversation code,
    :func:`turn_structure`), ``turn`` (1, 2, ...); all shape (n,) int64 (rating float32)."""

    user: np.ndarray
    query: np.ndarray
    llm: np.ndarray
    rating: np.ndarray
    conv: np.ndarray
    turn: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def take(self, idx) -> "Interactions":
        return Interactions(*(a[idx] for a in (self.user, self.query, self.llm, self.rating,
                                               self.conv, self.turn)))


def build_interaction_graph(inter: Interactions, feats: NodeFeatures, n_users: int,
                            chain: bool = True) -> HeteroData:
    """The HeteroData of :mod:`prlib.routers.gmt` from visible ``inter``; node ``x`` as in the
    module docstring; ``g["turn"].key`` (n_turn, 3) holds (user, query, llm) of each turn node
    (what :func:`check_no_label_leak_gmt` reads). ``chain``: add the turn chain (off for the
    multi-turn ablation)."""
    if feats.answer_x is None:
        raise RouterError("GMTRouter reads the answers: build the features with answers=True")
    g = HeteroData()
    n_m = len(feats.llms)
    # response nodes: the answers the visible ratings are about (what those users read); an
    # answer that nobody has rated yet (e.g. to the query being routed) is not in the graph
    ok = feats.answer_ok.numpy()[inter.query, inter.llm]
    pair = inter.query.astype(np.int64) * n_m + inter.llm
    codes, resp = np.unique(pair[ok], return_inverse=True)
    rq, rm = codes // n_m, codes % n_m
    resp_of = np.full(len(inter), -1, dtype=np.int64)
    resp_of[ok] = resp
    g["user"].x = torch.ones(n_users, 1)
    g["llm"].x = feats.llm_x
    g["query"].x = feats.query_x
    g["response"].x = feats.answer_x[torch.as_tensor(rq), torch.as_tensor(rm)].reshape(
        len(rq), feats.answer_x.shape[2])
    first = torch.as_tensor((inter.turn == 1).astype(np.float32))[:, None]
    centred = torch.as_tensor(inter.rating - 0.5, dtype=torch.float32)[:, None]
    # the rating times the rated LLM's features: "liked / disliked an LLM like this one"
    g["turn"].x = torch.cat([centred, first, 1 - first,
                             centred * feats.llm_x[torch.as_tensor(inter.llm)]], 1)
    g["turn"].key = torch.as_tensor(np.stack([inter.user, inter.query, inter.llm], 1))
    t = np.arange(len(inter))
    has = resp_of >= 0
    edges = {("turn", "by", "user"): (t, inter.user), ("turn", "of", "llm"): (t, inter.llm),
             ("turn", "on", "query"): (t, inter.query), ("turn", "saw", "response"):
             (t[has], resp_of[has])}
    src, dst = chain_edges(inter) if chain else (np.zeros(0, int), np.zeros(0, int))
    edges[CHAIN] = (src, dst)
    for (s, r, d), (a, b) in edges.items():
        ei = torch.as_tensor(np.stack([a, b]).astype(np.int64)).reshape(2, -1)
        g[s, r, d].edge_index = ei
        g[d, f"rev_{r}", s].edge_index = ei.flip(0)
    return g


def interaction_keys(user, conv, llm, turn) -> np.ndarray:
    """One int64 key per (user, conversation code, LLM, turn), shape (n,)."""
    u, c, m, t = (np.asarray(a, dtype=np.int64) for a in (user, conv, llm, turn))
    if len(t) and (t.max() >= 64 or m.max() >= 4099 or c.max() >= 1_000_003):
        raise RouterError("interaction keys hold at most 63 turns, 4,098 LLMs and 1,000,002 "
                          "queries; widen interaction_keys for more")
    return ((u * 1_000_003 + c) * 4099 + m) * 64 + t


def chain_edges(inter: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """Turn-chain edges: from the rating of (user, conversation, LLM) at turn t-1 to the one at
    turn t, ``(src, dst)`` positions in ``inter`` (a rating given twice, e.g. fed back again
    through ``add_user``, chains from its last copy)."""
    keys = interaction_keys(inter.user, inter.conv, inter.llm, inter.turn)
    last = pd.Series(np.arange(len(keys)), index=keys)
    last = last[~last.index.duplicated(keep="last")]
    src = last.reindex(interaction_keys(inter.user, inter.conv, inter.llm, inter.turn - 1))
    src = src.fillna(-1).to_numpy(dtype=np.int64)
    dst = np.flatnonzero(src >= 0)
    return src[dst], dst.astype(np.int64)


def check_no_label_leak_gmt(g: HeteroData, targets: Interactions) -> None:
    """Raise AssertionError if a rating to be predicted is in the graph: no turn node may carry
    a (user, query, LLM) of ``targets`` (its rating would reach the scorer)."""
    key = g["turn"].key.numpy()
    seen = set(map(tuple, key.tolist()))
    bad = [k for k in zip(targets.user.tolist(), targets.query.tolist(), targets.llm.tolist())
           if k in seen]
    assert not bad, f"{len(bad)} predicted ratings are turn nodes of the graph, e.g. {bad[0]}"


class GMTNet(nn.Module):
    """Per-type input projections, ``layers`` HGTConv layers (hidden, heads, residual), a
    scorer: an MLP over [user, query, LLM states, the projected conversation so far] plus a
    bilinear user x LLM term."""

    def __init__(self, metadata, dims: dict[str, int], hidden: int, heads: int, layers: int,
                 dropout: float, prev_dim: int):
        super().__init__()
        self.proj = nn.ModuleDict({t: nn.Linear(d, hidden) for t, d in dims.items()})
        self.convs = nn.ModuleList([HGTConv(hidden, hidden, metadata, heads)
                                    for _ in range(layers)])
        self.dropout = dropout
        self.prev_proj = nn.Linear(prev_dim, hidden)
        self.scorer = nn.Sequential(nn.Linear(4 * hidden, 2 * hidden), nn.ReLU(),
                                    nn.Dropout(dropout), nn.Linear(2 * hidden, 1))
        self.user_llm = nn.Bilinear(hidden, hidden, 1)  # taste: user state x LLM state

    def encode(self, g: HeteroData) -> dict[str, torch.Tensor]:
        """Node states of every type, each (n_type, hidden)."""
        h = {t: F.relu(self.proj[t](g[t].x)) for t in NODE_TYPES}
        for conv in self.convs:
            out = conv(h, g.edge_index_dict)
            h = {t: F.dropout(F.relu(out[t]) if out.get(t) is not None else h[t],
                              self.dropout, self.training) + h[t] for t in NODE_TYPES}
        return h

    def score(self, h, user, query, llm, prev_x) -> torch.Tensor:
        """Scores of (user, query, llm) triples, shape (n,); ``prev_x`` (n, prev_dim): the
        conversation so far of each triple (:meth:`GMTRouter.previous_features`)."""
        feats = torch.cat([h["user"][user], h["query"][query], h["llm"][llm],
                           F.relu(self.prev_proj(prev_x))], 1)
        return (self.scorer(feats) + self.user_llm(h["user"][user], h["llm"][llm])).squeeze(1)


@register
class GMTRouter(Router):
    """GMTRouter, re-implemented: user, LLM, query, response and turn nodes, turn chain across a
    conversation, PyG HGTConv (every node type updated), answers embedded, pairwise softplus loss; a
    user's state comes from their visible ratings only (new users need no retraining)."""

    tags = frozenset({"torch", "online", "pairwise", "needs_answers"})
    name, family = "GMTRouter (ours, HGT)", PAIRWISE
    selection = "grid on validation pair accuracy; early stopping (validation-best checkpoint)"
    relative_fit_time = 20.0
    defaults = {"hidden": 32, "heads": 2, "layers": 2, "dropout": 0.1, "lr": 1e-3,
                "weight_decay": 1e-5, "steps": 200, "batch_size": 64, "eval_every": 25,
                "patience": 4, "multi_turn": True, "threads": 1, "user_context": 30,
                "pool_context": 1000}
    grid = {"lr": [1e-3, 3e-3], "layers": [1, 2]}

    @classmethod
    def unavailable(cls, feats: NodeFeatures) -> str | None:
        if feats.answer_x is None:
            return "needs answer texts (the response nodes embed them)"
        return None

    # ---------------------------------------------------------------- data
    def _users(self, requests: Requests) -> np.ndarray:
        ids = requests.frame["user_id"].astype(str)
        for u in ids.unique():
            if u not in self.user_index_:
                self.user_index_[u] = len(self.user_index_)
        return ids.map(self.user_index_).to_numpy(dtype=np.int64)

    def _norm(self, user: np.ndarray, rating: np.ndarray) -> np.ndarray:
        """Min-max normalised per user with the user's visible range (as the reference)."""
        lo = np.array([self.user_range_.get(int(u), (0.0, 1.0))[0] for u in user])
        hi = np.array([self.user_range_.get(int(u), (0.0, 1.0))[1] for u in user])
        return np.clip((rating - lo) / np.maximum(hi - lo, 1e-9), -0.5, 1.5)

    def _queries(self, requests: Requests) -> np.ndarray:
        """Feature-query position of each request, (n,) int64."""
        qidx = pd.Index(self.feats.query_ids).get_indexer(requests.frame["query_id"])
        if (qidx < 0).any():
            raise RouterError("requests name queries missing from the node features")
        return qidx.astype(np.int64)

    def _interactions(self, requests: Requests) -> Interactions:
        """The ratings of ``requests`` as :class:`Interactions`."""
        users, qidx = self._users(requests), self._queries(requests)
        r, m = np.nonzero(~np.isnan(requests.utility))
        return Interactions(users[r], qidx[r], m.astype(np.int64),
                            self._norm(users[r], requests.utility[r, m]).astype(np.float32),
                            self.conv_[qidx[r]], self.turn_[qidx[r]])

    def _fit_ranges(self, history: Requests) -> None:
        """Each user's rating range over ``history``, widened (never replaced) when the user
        already has one (``add_user`` of new ratings of a known user)."""
        users = self._users(history)
        for u in np.unique(users):
            vals = history.utility[users == u]
            vals = vals[~np.isnan(vals)]
            if len(vals):
                lo, hi = self.user_range_.get(int(u), (np.inf, -np.inf))
                self.user_range_[int(u)] = (min(lo, float(vals.min())), max(hi, float(vals.max())))

    # ---------------------------------------------------------------- model
    def _make_net(self) -> GMTNet:
        g = build_interaction_graph(self._interactions(self.history_.select(np.arange(0))),
                                    self.feats, 1, chain=True)
        dims = {t: g[t].x.shape[1] for t in NODE_TYPES}
        p = self.params
        return GMTNet(g.metadata(), dims, p["hidden"], p["heads"], p["layers"], p["dropout"],
                      prev_dim=2 + self.feats.answer_x.shape[2])

    def _graph(self, visible: Interactions) -> HeteroData:
        return build_interaction_graph(visible, self.feats, len(self.user_index_),
                                       chain=self.params["multi_turn"])

    def graph_for(self, requests: Requests) -> tuple[HeteroData, Interactions]:
        """The graph (and its interactions) that scores ``requests`` after fit: the visible
        history only; the requests' own ratings are never in it, and their conversation so far
        reaches the scorer directly, per request (:meth:`previous_features`)."""
        self._users(requests)
        ctx = self._interactions(self.history_)
        return self._graph(ctx), ctx

    def targets(self, requests: Requests) -> Interactions:
        """The ratings of ``requests`` as interactions (what a leak check looks for)."""
        return self._interactions(requests)

    def previous_features(self, requests: Requests) -> torch.Tensor:
        """Per (request, candidate) row of ``np.nonzero(candidates)``: [the user's normalised
        rating of that LLM at the previous turn of this conversation - 0.5, 1{there is one},
        the MiniLM embedding of that LLM's previous-turn answer], shape (n_rows, 386); zeros
        at a first turn, without ``Requests.previous`` or with ``multi_turn=False``. Only the
        request's own user's earlier ratings enter, so no other request's label does."""
        r, m = np.nonzero(~np.isnan(requests.utility))
        dim = self.feats.answer_x.shape[2]
        out = torch.zeros(len(r), 2 + dim)
        if not self.params["multi_turn"] or requests.previous is None or not len(r):
            return out
        rating = requests.previous[r, m]
        users = self._users(requests)[r]
        prev_q = self.prev_q_[self._queries(requests)][r]
        has = ~np.isnan(rating) & (prev_q >= 0)
        idx = np.flatnonzero(has)
        out[idx, 0] = torch.as_tensor(self._norm(users[idx], rating[idx]) - 0.5,
                                      dtype=torch.float32)
        out[idx, 1] = 1.0
        out[idx, 2:] = self.feats.answer_x[torch.as_tensor(prev_q[idx]), torch.as_tensor(m[idx])]
        return out

    def _score_requests(self, visible: Interactions, requests: Requests) -> torch.Tensor:
        """(n, n_llms) scores of ``requests`` on the graph of ``visible``; non-candidates get
        0 (masked later)."""
        return self._score_on(self.net.encode(self._graph(visible)), requests)

    def _score_on(self, h, requests: Requests) -> torch.Tensor:
        users = self._users(requests)
        if len(self.user_index_) > h["user"].shape[0]:
            raise RouterError("a user was added after the graph was built")
        qidx = self._queries(requests)
        r, m = np.nonzero(~np.isnan(requests.utility))
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64))  # noqa: E731
        s = self.net.score(h, t(users[r]), t(qidx[r]), t(m), self.previous_features(requests))
        out = torch.zeros(len(requests), self.n_llms)
        out[t(r), t(m)] = s
        return out

    # ---------------------------------------------------------------- training
    def _step_loss(self, train: Requests, inter: Interactions, rng) -> torch.Tensor:
        """One step: a batch of target requests; their conversations' ratings are hidden from
        the graph, their previous turns reach the scorer directly (as at test time)."""
        # at most half of the requests are targets, so the rest can be their context
        n = min(self.params["batch_size"], max(1, len(train) // 2))
        idx = np.sort(rng.choice(len(train), n, replace=False))
        batch = train.select(idx)
        visible = self.training_context(batch, inter, rng)
        scores = self._score_on(self.net.encode(self._graph(visible)), batch)
        rows, better, worse = preference_pairs(batch.utility)
        if len(rows) == 0:
            return scores.sum() * 0.0
        rt = torch.as_tensor(rows)
        diff = scores[rt, torch.as_tensor(better)] - scores[rt, torch.as_tensor(worse)]
        return F.softplus(-diff).mean()

    def training_context(self, batch: Requests, inter: Interactions,
                         rng: np.random.Generator | None = None) -> Interactions:
        """The visible ratings of a training step whose targets are ``batch``: every rating
        not hidden for them (:meth:`_hidden_for`); with ``rng``, a sampled subgraph of those:
        up to ``user_context`` ratings of each target user and ``pool_context`` ratings of
        anybody (so a step costs what its batch needs, not what the whole history holds)."""
        visible = np.flatnonzero(~self._hidden_for(batch, inter))
        if rng is None:
            return inter.take(visible)
        p = self.params
        mine = visible[np.isin(inter.user[visible], np.unique(self._users(batch)))]
        mine = rng.permutation(mine)
        keep = [mine[pd.Series(inter.user[mine]).groupby(inter.user[mine]).cumcount()
                     .to_numpy() < p["user_context"]],
                rng.choice(visible, min(p["pool_context"], len(visible)), replace=False)]
        return inter.take(np.unique(np.concatenate(keep)))

    def _hidden_for(self, targets: Requests, inter: Interactions) -> np.ndarray:
        """(len(inter),) bool: the ratings that predicting ``targets`` must not see: every
        rating of each target's user in the target's conversation (its own turn, the later
        ones, and the earlier ones, which reach the scorer through ``previous`` as at test
        time)."""
        users, qidx = self._users(targets), self._queries(targets)
        hidden = np.unique(users * 1_000_003 + self.conv_[qidx])
        return np.isin(inter.user * 1_000_003 + inter.conv, hidden)

    def _train(self, history: Requests, val: Requests, rng: np.random.Generator, steps: int,
               eval_every: int, desc: str, progress: bool = False,
               check_at_start: bool = False):
        """:func:`~prlib.routers.training.train_module` on ``history`` (steps of
        :meth:`_step_loss`), checked on ``val``'s pair accuracy with ``history`` visible."""
        inter = self._interactions(history)
        p = self.params
        return train_module(
            self.net, lambda: self._step_loss(history, inter, rng),
            lambda: pairwise_metrics(val, self._score_requests(inter, val)
                                     .double().numpy())["pair_accuracy"],
            steps=steps, lr=p["lr"], weight_decay=p["weight_decay"], eval_every=eval_every,
            patience=p["patience"], progress=progress, desc=desc, check_at_start=check_at_start)

    def fit(self, train: Requests, val: Requests, *, progress: bool = False) -> "GMTRouter":
        seed_everything(self.seed)
        rng = np.random.default_rng(self.seed)
        self.user_index_: dict[str, int] = {}
        self.user_range_: dict[int, tuple[float, float]] = {}
        self.conv_, self.turn_, self.prev_q_ = turn_structure(self.feats)
        self.history_ = train
        self._fit_ranges(train)
        self._users(val)
        with torch_threads(self.params["threads"]):
            self.net = self._make_net()
            self.log_ = self._train(train, val, rng, self.params["steps"],
                                    self.params["eval_every"], self.name, progress)
        return self

    # ---------------------------------------------------------------- routing
    def _modules(self):
        self._check_fitted()
        return {"net": self.net}

    def _rebuild(self) -> None:
        self.user_index_ = {str(k): int(v) for k, v in self.user_index_.items()}
        self.user_range_ = {int(k): tuple(v) for k, v in self.user_range_.items()}
        self.conv_, self.turn_, self.prev_q_ = turn_structure(self.feats)
        self.net = self._make_net()

    @torch.no_grad()
    def _raw_scores(self, requests: Requests) -> np.ndarray:
        self.net.eval()
        with torch_threads(self.params["threads"]):
            g, _ = self.graph_for(requests)
            out = self._score_on(self.net.encode(g), requests)
        return out.double().numpy()

    def add_user(self, history: Requests) -> None:
        """Make ``history`` (a new user's k ratings, or new ratings of known users) visible to
        message passing; no retraining: the user's state is what their ratings bring."""
        self._check_fitted()
        self._fit_ranges(history)
        self.history_ = concat_requests(self.history_, history)


    def fine_tune(self, support: Requests, val: Requests, steps: int = 50) -> "GMTRouter":
        """A copy with ``support`` visible, trained ``steps`` more steps on history + support
        (validation-best checkpoint on ``val``, the untrained copy included)."""
        out = copy.deepcopy(self)
        out.add_user(support)
        with torch_threads(out.params["threads"]):
            out.log_ = out._train(out.history_, val, np.random.default_rng(self.seed + 1), steps,
                                  max(1, steps // 4), "fine-tune", check_at_start=True)
        return out
