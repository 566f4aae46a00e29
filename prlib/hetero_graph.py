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

Requests and query splits live in :mod:`prlib.requests`, node features in :mod:`prlib.features`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from prlib.features import NodeFeatures
from prlib.requests import Requests, RequestsError

#: Feedback features on request-LLM edges: [observed, chosen, utility (z-scored per user)].
EDGE_DIM = 3


class GraphInputError(RequestsError):
    """Inputs that cannot make a sound graph (users, queries or tasks missing from features)."""


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
    # one id per (user, query): a hidden request's pair must not also be visible as another node
    g.request_pair = torch.as_tensor(pd.MultiIndex.from_arrays([u_idx, q_idx]).factorize()[0])
    return g


def check_no_label_leak(g: HeteroData, hidden: np.ndarray) -> None:
    """Raise AssertionError if any edge of a ``hidden`` request carries feedback or links the
    request to its user/LLM in the label-bearing direction, if an aggregated edge reports a
    hidden request, or if a hidden request's (user, query) is also a visible request.
    PersonalizedRouter runs it on the first training step and on every ``scores`` call."""
    hidden_mask = torch.as_tensor(np.asarray(hidden, dtype=bool))
    hidden = torch.as_tensor(np.flatnonzero(hidden_mask.numpy()))
    if "request_pair" in g:  # the same (user, query) hidden and visible: its label is in sight
        both = torch.isin(g.request_pair[hidden_mask], g.request_pair[~hidden_mask])
        assert not both.any(), (f"{int(both.sum())} hidden requests are also visible as another "
                                "request of the same user and query")
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
