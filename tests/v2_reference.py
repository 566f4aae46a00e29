"""The static messages of ours from explicit edge lists, a reference that shares no code with
:class:`prlib.routers.retrieval.FeedbackStore` (for tests of its cached, shared searches)."""

import numpy as np
import pandas as pd
import torch

from prlib.requests import Requests
from prlib.routers.retrieval import CHANNELS, feedback_channels, unit


def reference_messages(history: Requests, req: Requests, query_ids, query_x: np.ndarray,
                       k: int, k_small: int) -> torch.Tensor:
    """The static messages of :meth:`FeedbackStore.messages` from explicit edge lists (for
    tests): every (history row -> request) edge of each relation, built request by request with
    scikit-learn's exact nearest-neighbour search, aggregated with PyG's ``scatter``.
    Returns (n, n_llms, N_STATIC)."""
    from sklearn.neighbors import NearestNeighbors
    from torch_geometric.utils import scatter

    vals, obs = feedback_channels(history)
    vals = torch.as_tensor(vals, dtype=torch.float64)
    obs = torch.as_tensor(obs, dtype=torch.float64)
    qpos = {q: i for i, q in enumerate(query_ids)}
    qx = unit(np.asarray(query_x, dtype=np.float32))
    h, n, m = history.frame, len(req), len(history.llms)
    edges = {r: ([], []) for r in ("profile", "user", "task", "knn", "knn_small")}
    pool_src, pool_dst = [], []
    hq = h["query_id"].to_numpy()
    by_query = pd.DataFrame({"q": hq, "row": np.arange(len(h))}).groupby("q")["row"].apply(list)
    for i, (u, q, t) in enumerate(zip(req.frame["user_id"], req.frame["query_id"],
                                      req.frame["task"])):
        other = hq != q
        mine = np.flatnonzero(other & (h["user_id"].to_numpy() == u))
        for rel, rows in (("profile", np.flatnonzero(other & (h["user_id"].to_numpy() == u)
                                                     & (h["task"].to_numpy() == t))),
                          ("user", mine), ("task", np.flatnonzero(other & (h["task"].to_numpy()
                                                                           == t)))):
            edges[rel][0].extend(rows.tolist())
            edges[rel][1].extend([i] * len(rows))
        x = qx[[qpos[q]]]
        if len(mine):
            nn = NearestNeighbors(metric="cosine").fit(qx[[qpos[a] for a in hq[mine]]])
            for rel, kk in (("knn", k), ("knn_small", min(k_small, k))):
                idx = nn.kneighbors(x, min(kk, len(mine)), return_distance=False)[0]
                edges[rel][0].extend(mine[idx].tolist())
                edges[rel][1].extend([i] * len(idx))
        pooled = [a for a in by_query.index if a != q]
        if pooled:
            nn = NearestNeighbors(metric="cosine").fit(qx[[qpos[a] for a in pooled]])
            idx = nn.kneighbors(x, min(k, len(pooled)), return_distance=False)[0]
            pool_src.extend([pooled[j] for j in idx])
            pool_dst.extend([i] * len(idx))

    def mean(rel):
        src, dst = (torch.as_tensor(a, dtype=torch.long) for a in edges[rel])
        s = scatter(vals[src], dst, 0, dim_size=n, reduce="sum")
        c = scatter(obs[src], dst, 0, dim_size=n, reduce="sum")
        return torch.where(c[..., None] > 0, s / c.clamp(min=1)[..., None], 0.0), c

    out = []
    for rel in ("profile", "user", "task"):
        mu, c = mean(rel)
        out += [mu, torch.log1p(c)[..., None]]
    out += [mean("knn")[0], mean("knn_small")[0]]
    # pooled: each neighbour query's mean over users, then per LLM their mean over the
    # neighbour queries on which the LLM has feedback
    per_q = {a: (vals[rows].sum(0), obs[rows].sum(0)) for a, rows in by_query.items()}
    pool = torch.zeros(n, m, CHANNELS, dtype=torch.float64)
    cnt = torch.zeros(n, m, dtype=torch.float64)
    for a, i in zip(pool_src, pool_dst):
        s, c = per_q[a]
        pool[i] += torch.where(c[:, None] > 0, s / c.clamp(min=1)[:, None], 0.0)
        cnt[i] += (c > 0).double()
    out.append(pool / cnt.clamp(min=1)[..., None])
    sims = []
    for rel_src, rel_dst, pooled_rel in ((edges["knn"][0], edges["knn"][1], False),
                                         (pool_src, pool_dst, True)):
        s = torch.zeros(n)
        c = torch.zeros(n)
        for a, i in zip(rel_src, rel_dst):
            qa = qpos[a] if pooled_rel else qpos[hq[a]]
            s[i] += float(qx[qpos[req.frame["query_id"].iloc[i]]] @ qx[qa])
            c[i] += 1
        sims.append(s / c.clamp(min=1))
    out.append(torch.stack(sims, 1)[:, None, :].expand(n, m, 2).double())
    return torch.cat(out, -1).float()
