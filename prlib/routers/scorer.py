"""The scorer of ours (:class:`~prlib.routers.personalized_v2.PersonalizedRouterV2`): its
hyper-parameters (:class:`V2Config`) and the network that scores each (request, candidate LLM)
from the request's messages (:class:`RetrievalScorer`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prlib.routers.retrieval import CHANNELS, N_STATIC, PROFILE_STATS, RETRIEVAL_STATS, Messages


@dataclass
class V2Config:
    """Hyper-parameters of :class:`PersonalizedRouterV2`."""

    hidden: int = 64
    k: int = 20  # retrieved neighbours per request (user's and pooled)
    k_small: int = 5  # a second, sharper per-user kNN mean
    attention: bool = True  # learned attention over the retrieved neighbours
    #: ablations (notebook 40): retrieval messages (the user's and the pooled nearest
    #: neighbours), profile statistics (the profile, user and task means), and ``layers`` = 0:
    #: no message at all (the scorer reads the query and LLM embeddings only); v2 has one hop
    retrieval: bool = True
    profile_stats: bool = True
    layers: int = 1
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-5
    steps: int = 1000
    batch_size: int = 256
    eval_every: int = 25
    patience: int = 10
    loss: str = "utility"  # "utility" (MSE on the utilities) or "choice" (cross-entropy)
    device: str = "auto"
    #: torch threads while fitting and scoring: the model is small, and a second thread costs
    #: more than it brings whenever the machine is shared (None: leave torch's setting)
    threads: int | None = 1


class RetrievalScorer(nn.Module):
    """Scores (n, n_llms) from a batch's :class:`~prlib.routers.retrieval.Messages`."""

    def __init__(self, query_dim: int, llm_dim: int, hidden: int, attention: bool,
                 dropout: float, retrieval: bool = True, profile_stats: bool = True,
                 layers: int = 1):
        super().__init__()
        if layers not in (0, 1):
            raise ValueError(f"layers must be 0 (no messages) or 1 (one hop), got {layers}")
        keep = torch.ones(N_STATIC, dtype=torch.bool)
        if not profile_stats or not layers:
            keep[PROFILE_STATS] = False
        if not retrieval or not layers:
            keep[RETRIEVAL_STATS] = False
        attention = attention and retrieval and bool(layers)
        self.register_buffer("keep", keep, persistent=False)
        self.hidden, self.attention = hidden, attention
        self.query = nn.Sequential(nn.Linear(query_dim, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden))
        self.llm = nn.Linear(llm_dim, hidden)
        if attention:
            self.key = nn.Linear(hidden, hidden, bias=False)
            self.sim_weight = nn.Parameter(torch.tensor([5.0, 5.0]))
        # without messages (layers = 0) the message MLP reads a constant 1
        d_in = max(int(keep.sum()) + (2 * CHANNELS if attention else 0), 1)
        # (ReLUs in place: each works on a fresh (n, M, H) buffer, which a large batch would
        # otherwise allocate once more per layer)
        self.message = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(inplace=True),
                                     nn.Dropout(dropout), nn.Linear(hidden, hidden),
                                     nn.ReLU(inplace=True))
        self.out = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))
        self.readout = nn.Linear(d_in, 1)
        # start as the lookup table: the score is the profile's mean feedback value (message
        # feature 0; without profile statistics the user's kNN mean), and the MLP learns what to
        # add to it
        start = [i for i in (0, RETRIEVAL_STATS.start) if keep[i]][:1]
        with torch.no_grad():
            self.readout.weight.zero_()
            if start:
                self.readout.weight[0, int(keep[:start[0]].sum())] = 1.0
            self.readout.bias.zero_()
            self.out[-1].weight.zero_()
            self.out[-1].bias.zero_()

    def neighbour_logits(self, hq, hn) -> torch.Tensor:
        """Attention logits (n, K) of the requests' query states ``hq`` (n, H) on their
        neighbours' query states ``hn`` (n, K, H), before the similarity term."""
        return (self.key(hq)[:, None, :] * hn).sum(-1) / self.hidden ** 0.5

    def attend(self, logit, nb_sim, nb_ok, nb_values, nb_observed, which: int):
        """Attention-weighted feedback of the neighbours, (n, M, C); ``logit`` (n, K): the
        :meth:`neighbour_logits`."""
        logit = logit + self.sim_weight[which] * nb_sim
        logit = logit.masked_fill(~nb_ok, float("-inf"))
        alpha = torch.softmax(logit, 1).nan_to_num(0.0) * nb_ok  # (n, K); no neighbour: 0
        w = alpha[..., None] * nb_observed  # (n, K, M)
        return (w[..., None] * nb_values).sum(1) / w.sum(1).clamp(min=1e-6)[..., None]

    def forward(self, hq, h_user, h_pool, llm_x, msg: Messages, nb: dict,
                logits: tuple | None = None, query_of: torch.Tensor | None = None) -> torch.Tensor:
        """``hq`` (n, H): the requests' query states; ``h_user`` / ``h_pool`` (n, K, H): the
        query states of the user's and the pooled retrieved neighbours, or ``logits``: their
        :meth:`neighbour_logits` (n, K) each, computed by the caller (then ``h_*`` are unused).
        With ``query_of`` (n,) (and ``logits``), ``hq`` (n_distinct, H) holds each distinct
        query once and ``query_of`` gives each request's row."""
        z, e = self.embed(hq, h_user, h_pool, msg, nb, logits)
        hm = self.llm(llm_x)  # (M, H)
        # out[0] reads [e, hq * hm, mean over candidates of e]: its three blocks are applied
        # separately, the context block once per request and the query block once per query
        # (the same map, fewer products)
        first = self.out[0]
        w_e, w_qm, w_ctx = first.weight.split(self.hidden, 1)
        ctx = e.mean(1) @ w_ctx.T + first.bias  # (n, H)
        qm = (hq[:, None, :] * hm[None]) @ w_qm.T
        if query_of is not None:
            qm = qm[query_of]
        pre = e @ w_e.T
        pre += qm  # (in place: no new (n, M, H) buffer per term; autograd allows it)
        pre += ctx[:, None, :]
        s = self.out[1:](pre).squeeze(-1)
        return s + self.readout(z).squeeze(-1)

    def embed(self, hq, h_user, h_pool, msg: Messages, nb: dict, logits: tuple | None = None):
        """``(z, e)``: the messages each (request, LLM) hears, (n, M, d_in), and their
        embedding, (n, M, H); arguments as :meth:`forward`."""
        parts = [msg.static[..., self.keep]]
        if self.attention:
            if logits is None:
                logits = self.neighbour_logits(hq, h_user), self.neighbour_logits(hq, h_pool)
            parts += [self.attend(logits[0], msg.user_sim, nb["user_ok"], nb["user_values"],
                                  nb["user_observed"], 0),
                      self.attend(logits[1], msg.pool_sim, nb["pool_ok"], nb["pool_values"],
                                  nb["pool_observed"], 1)]
        z = torch.cat(parts, -1)  # (n, M, d_in)
        if not z.shape[-1]:
            z = torch.ones(*z.shape[:-1], 1, device=z.device)
        return z, self.message(z)
