"""The interaction graph: ``HeteroData`` with user, task, query, request and LLM nodes.

Feedback differs per user for the same (query, LLM), so the graph carries it per user: a
*request* node stands for one (user, query) pair, linked to its user, query and task and to every
candidate LLM. The observed feedback (utility, choice) rides on the request-LLM edges of
*visible* requests only; requests whose label is predicted are in the graph without it.

Node types and features (``x``):

==========  =============================================================================
user        no identity feature (a constant 1): a user is what their visible history says
task        MiniLM embedding of the task's description paragraph, shape (n_tasks, 384)
query       MiniLM embedding of the query text + log input tokens, shape (n_queries, 385)
llm         MiniLM embedding of the LLM's description + log prices, shape (n_llms, 386)
request     a constant 1 (everything it knows arrives by message passing)
profile     a constant 1: one node per (user, task) pair, the user's taste on that task
==========  =============================================================================

Edge types: ``('user','asks','request')``, ``('query','asked_in','request')``,
``('task','of','request')``, ``('llm','offered_to','request')`` (edge_attr = feedback, zero for
hidden requests), and for visible requests only ``('request','by','user')`` and
``('request','rated','llm')`` (edge_attr = feedback); ``('llm','rated_in','profile')`` carries
the feedback of the visible requests of a (user, task) pair to its profile node (every candidate
with utilities, only the picked LLM with choice-only feedback; then users also hear their visible
picks directly through ``('llm','picked_by','user')``), and ``('profile','of','request')``
links every request to its profile. Labels never ride on an edge of a hidden request;
:func:`check_no_label_leak` tests that.

Splits are by query: one seeded partition of the query ids into train / val / test shared by
all users, so a test query has never been seen with a label by anybody.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from prlib.bank import Bank
from prlib.data import task_descriptions
from prlib.embed import embed_texts

#: Feedback features on request-LLM edges: [observed, chosen, utility (z-scored per user)].
EDGE_DIM = 3
SPLITS = ("train", "val", "test")


class GraphInputError(ValueError):
    """Inputs that cannot make a sound graph (unknown users, empty splits, ...)."""


@dataclass
class QuerySplit:
    """A partition of query ids into train / val / test (disjoint by construction)."""

    train: list[str]
    val: list[str]
    test: list[str]

    def of(self) -> dict[str, str]:
        return {q: s for s in SPLITS for q in getattr(self, s)}


def split_queries(query_ids, fractions=(0.7, 0.1, 0.2), seed: int = 0) -> QuerySplit:
    """Seeded random partition of ``query_ids`` (70/10/20 by default)."""
    ids = np.array(sorted(set(map(str, query_ids))))
    if len(ids) < 3:
        raise GraphInputError(f"need at least 3 queries to split, got {len(ids)}")
    if not np.isclose(sum(fractions), 1.0) or min(fractions) <= 0:
        raise GraphInputError(f"split fractions must be positive and sum to 1, got {fractions}")
    perm = np.random.default_rng(seed).permutation(ids)
    n_train = int(round(fractions[0] * len(ids)))
    n_val = max(1, int(round(fractions[1] * len(ids))))
    return QuerySplit(perm[:n_train].tolist(), perm[n_train:n_train + n_val].tolist(),
                      perm[n_train + n_val:].tolist())


@dataclass
class Requests:
    """The (user, query) requests of an experiment with their candidates' utilities.

    ``utility`` and ``chosen`` have shape (n_requests, n_llms); a NaN utility marks an LLM that
    is not a candidate for that request.
    """

    frame: pd.DataFrame  # user_id, query_id, task, split
    llms: list[str]
    utility: np.ndarray
    chosen: np.ndarray  # int index of the chosen LLM per request
    quality: np.ndarray | None = None  # (n, n_llms) bank quality, for reporting only
    cost: np.ndarray | None = None  # (n, n_llms) bank cost in USD, for reporting only

    def __len__(self) -> int:
        return len(self.frame)

    def select(self, mask) -> "Requests":
        """Requests by boolean mask or integer positions, shape (n,) -> a new set."""
        mask = np.asarray(mask)
        pick = lambda a: None if a is None else a[mask]  # noqa: E731
        return Requests(self.frame.iloc[mask].reset_index(drop=True), self.llms, self.utility[mask],
                        self.chosen[mask], pick(self.quality), pick(self.cost))

    def renamed(self, user_id: str) -> "Requests":
        """The same requests asked by another (e.g. a new) user."""
        return Requests(self.frame.assign(user_id=user_id), self.llms, self.utility, self.chosen,
                        self.quality, self.cost)

    def split(self, name: str) -> "Requests":
        """The requests of one split ("train", "val" or "test")."""
        return self.select(self.frame["split"].to_numpy() == name)


def build_requests(interactions: pd.DataFrame, bank: Bank, split: QuerySplit) -> Requests:
    """Wide per-request arrays from tidy interactions (user_id, query_id, llm, utility, chosen)."""
    llms = bank.llm_names
    inter = interactions[interactions["query_id"].isin(split.of())]
    if inter.empty:
        raise GraphInputError("no interaction names a query of the split; check bank and split")
    key = inter[["user_id", "query_id"]].drop_duplicates().reset_index(drop=True)
    key["task"] = key["query_id"].map(dict(zip(bank.queries["query_id"], bank.queries["task"])))
    key["split"] = key["query_id"].map(split.of())
    row = pd.Series(np.arange(len(key)), index=pd.MultiIndex.from_frame(key[["user_id", "query_id"]]))
    r = row.loc[list(zip(inter["user_id"], inter["query_id"]))].to_numpy()
    col = pd.Index(llms).get_indexer(inter["llm"])
    if (col < 0).any():
        raise GraphInputError(f"interactions name LLMs not in bank {bank.name!r}: "
                              f"{sorted(set(inter['llm'][col < 0]))[:5]}")
    utility = np.full((len(key), len(llms)), np.nan)
    utility[r, col] = inter["utility"].to_numpy(dtype=float)
    chosen = np.full(len(key), -1)
    picked = inter["chosen"].to_numpy(dtype=bool)
    chosen[r[picked]] = col[picked]
    if (chosen < 0).any():
        raise GraphInputError(f"{int((chosen < 0).sum())} requests have no chosen LLM")
    rows = pd.Index(bank.queries["query_id"]).get_indexer(key["query_id"])
    quality = bank.matrix("quality").to_numpy(dtype=float)[rows]
    cost = bank.matrix("cost_usd").to_numpy(dtype=float)[rows]
    return Requests(key, llms, utility, chosen, quality, cost)


@dataclass
class NodeFeatures:
    """Static node features of a bank (embeddings), computed once and cached on disk."""

    query_ids: list[str]
    query_x: torch.Tensor  # (n_queries, 385)
    tasks: list[str]
    task_x: torch.Tensor  # (n_tasks, 384)
    llms: list[str]
    llm_x: torch.Tensor  # (n_llms, 386)


def node_features(bank: Bank, progress: bool = False) -> NodeFeatures:
    """MiniLM embeddings of queries, task descriptions and LLM descriptions (+ token/price logs)."""
    q = bank.queries
    q_emb = embed_texts(q["text"].tolist(), progress=progress)
    tokens = bank.bank.groupby("query_id")["input_tokens"].median().reindex(q["query_id"])
    q_extra = np.log1p(tokens.fillna(0).to_numpy())[:, None] / 10.0
    desc = task_descriptions(bank)
    tasks = sorted(desc)
    t_emb = embed_texts([desc[t] for t in tasks])
    l_emb = embed_texts(bank.llms["description"].tolist())
    prices = np.log1p(bank.llms[["input_usd_per_m", "output_usd_per_m"]].to_numpy(dtype=float))
    as_t = lambda a: torch.tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    return NodeFeatures(q["query_id"].tolist(), as_t(np.hstack([q_emb, q_extra])), tasks,
                        as_t(t_emb), bank.llm_names, as_t(np.hstack([l_emb, prices])))


def query_row(text: str, input_tokens: int | None = None) -> torch.Tensor:
    """Features of a new query (as in :func:`node_features`), shape (1, 385)."""
    from prlib.data import count_tokens

    tokens = int(count_tokens([text])[0]) if input_tokens is None else input_tokens
    extra = np.log1p([[tokens]]) / 10.0
    return torch.tensor(np.hstack([embed_texts([text]), extra]), dtype=torch.float32)


def llm_row(description: str, input_usd_per_m: float, output_usd_per_m: float) -> torch.Tensor:
    """Features of a new LLM (as in :func:`node_features`), shape (1, 386)."""
    prices = np.log1p([[input_usd_per_m, output_usd_per_m]])
    return torch.tensor(np.hstack([embed_texts([description]), prices]), dtype=torch.float32)


def feedback_features(req: Requests, use_utility: bool = True) -> torch.Tensor:
    """Edge features of every (request, candidate LLM) pair, shape (n_req, n_llms, EDGE_DIM).

    Utility is z-scored per request so it says which LLMs this user liked here, not how hard
    the query was; with ``use_utility=False`` (a judge's pick is all a user reveals) it is zero.
    Non-candidates are all zero.
    """
    u = req.utility
    mean = np.nanmean(u, axis=1, keepdims=True)
    std = np.nanstd(u, axis=1, keepdims=True)
    z = np.nan_to_num((u - mean) / np.where(std > 0, std, 1.0))
    chosen = np.zeros_like(u)
    chosen[np.arange(len(u)), req.chosen] = 1.0
    observed = (~np.isnan(u)).astype(float)
    if not use_utility:
        z = np.zeros_like(z)
    return torch.tensor(np.stack([observed, chosen, z], axis=-1), dtype=torch.float32)


def build_graph(req: Requests, feats: NodeFeatures, visible: np.ndarray,
                users: list[str] | None = None, use_utility: bool = True) -> HeteroData:
    """The message-passing graph: all requests as nodes, feedback only on ``visible`` ones.

    ``visible`` is a boolean mask over requests whose labels may be seen. ``users`` fixes the
    order of user nodes (default: sorted user ids of ``req``). The returned graph also carries
    ``request_user``, ``request_query``, ``request_task``, ``request_profile`` index vectors
    (n_req,) for scoring.
    """
    visible = np.asarray(visible, dtype=bool)
    users = users if users is not None else sorted(req.frame["user_id"].unique())
    u_idx = pd.Index(users).get_indexer(req.frame["user_id"])
    q_idx = pd.Index(feats.query_ids).get_indexer(req.frame["query_id"])
    t_idx = pd.Index(feats.tasks).get_indexer(req.frame["task"])
    if (u_idx < 0).any() or (q_idx < 0).any() or (t_idx < 0).any():
        raise GraphInputError("requests name users, queries or tasks missing from the features")
    n = len(req)
    g = HeteroData()
    g["user"].x = torch.ones(len(users), 1)
    g["request"].x = torch.ones(n, 1)
    g["query"].x = feats.query_x
    g["task"].x = feats.task_x
    g["llm"].x = feats.llm_x
    r = torch.arange(n)
    ut, qt, tt = (torch.as_tensor(a, dtype=torch.long) for a in (u_idx, q_idx, t_idx))
    g["user", "asks", "request"].edge_index = torch.stack([ut, r])
    g["query", "asked_in", "request"].edge_index = torch.stack([qt, r])
    g["task", "of", "request"].edge_index = torch.stack([tt, r])
    cand_r, cand_l = np.nonzero(~np.isnan(req.utility))
    fb = feedback_features(req, use_utility)[cand_r, cand_l]
    vis_edge = torch.as_tensor(visible[cand_r])
    fb = fb * vis_edge[:, None]  # hidden requests: no feedback at all, not even 'observed'
    cr, cl = torch.as_tensor(cand_r), torch.as_tensor(cand_l)
    g["llm", "offered_to", "request"].edge_index = torch.stack([cl, cr])
    g["llm", "offered_to", "request"].edge_attr = fb
    vis = torch.as_tensor(np.flatnonzero(visible))
    g["request", "by", "user"].edge_index = torch.stack([vis, ut[vis]])
    g["request", "rated", "llm"].edge_index = torch.stack([cr[vis_edge], cl[vis_edge]])
    g["request", "rated", "llm"].edge_attr = fb[vis_edge]
    # user-task profiles: one node per (user, task) of the requests; it hears the feedback of
    # that user's *visible* requests of that task (mean aggregation), and every request of the
    # pair (visible or hidden) hears it back. With utilities, an edge per visible request-LLM
    # pair; with choices only, an edge per visible pick (the unpicked candidates say nothing
    # more, and averaging over them would dilute the picks by the number of candidates)
    prof, _ = pd.MultiIndex.from_arrays([u_idx, t_idx]).factorize()
    pt = torch.as_tensor(prof, dtype=torch.long)
    g["profile"].x = torch.ones(int(prof.max()) + 1 if n else 0, 1)
    to_profile = vis_edge if use_utility else vis_edge & (fb[:, 1] > 0)
    src_llm, src_req = cl[to_profile], cr[to_profile]
    # choice-only feedback: users also hear their visible picks directly (a request's state
    # holds its pick diluted among all candidates; tasks can be too fine for profiles)
    aggregated = {("llm", "rated_in", "profile"): pt[src_req]}
    if not use_utility:
        aggregated[("llm", "picked_by", "user")] = ut[src_req]
    for rel, dst in aggregated.items():
        g[rel].edge_index = torch.stack([src_llm, dst])
        g[rel].edge_attr = fb[to_profile]
        g[rel].source_request = src_req  # the request each edge reports (checked for leaks)
    g.request_user, g.request_query, g.request_task, g.request_profile = ut, qt, tt, pt
    g.visible = torch.tensor(visible)
    return g


def check_no_label_leak(g: HeteroData, hidden: np.ndarray) -> None:
    """Raise AssertionError if any edge of a ``hidden`` request carries feedback or links the
    request to its user/LLM in the label-bearing direction."""
    hidden = torch.as_tensor(np.flatnonzero(np.asarray(hidden, dtype=bool)))
    ei = g["llm", "offered_to", "request"].edge_index
    at = g["llm", "offered_to", "request"].edge_attr
    leaked = torch.isin(ei[1], hidden) & (at.abs().sum(1) > 0)
    assert not leaked.any(), f"{int(leaked.sum())} hidden request edges carry feedback"
    for rel in [("request", "by", "user"), ("request", "rated", "llm")]:
        assert not torch.isin(g[rel].edge_index[0], hidden).any(), f"hidden request in {rel}"
    # edges that aggregate feedback (into profiles, or users' picks) report visible requests only
    for rel in g.edge_types:
        if "source_request" in g[rel]:
            leaked = torch.isin(g[rel].source_request, hidden)
            assert not leaked.any(), f"{int(leaked.sum())} {rel} edges report a hidden request"


def graph_stats(g: HeteroData) -> pd.DataFrame:
    """Counts per node type and edge type (for notebook 30)."""
    rows = [{"kind": "node", "type": t, "count": g[t].num_nodes,
             "feature_dim": g[t].x.shape[1]} for t in g.node_types]
    rows += [{"kind": "edge", "type": " -> ".join(et), "count": g[et].edge_index.shape[1],
              "feature_dim": g[et].edge_attr.shape[1] if "edge_attr" in g[et] else 0}
             for et in g.edge_types]
    return pd.DataFrame(rows)
