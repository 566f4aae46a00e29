"""The visible feedback history as a graph that scoring reads in O(1) per request.

A router that learns from interactions keeps every visible request (a (user, query) pair with
the feedback of each candidate LLM) and aggregates it along typed edges into the states the
scorer reads:

====================  ========================================================================
edge (message)        what the new request hears
====================  ========================================================================
profile -> request    mean feedback per LLM of the user's visible requests of the same task
                      (the per-(user, task, LLM) lookup table) and their counts
user -> request       mean feedback per LLM of all the user's visible requests, and counts
task -> request       mean feedback per LLM of every user's visible requests of the task
retrieved -> request  the user's k visible requests whose queries are most similar to the new
                      one (exact cosine nearest neighbours of the MiniLM query embeddings),
                      with their similarity and feedback: what per-user kNN reads
pooled -> request     the k most similar visible *queries* of any user, with their mean
                      feedback over users: sharing across users
====================  ========================================================================

Feedback has two channels per LLM: the value the router sees (a utility, or 1 / 0 for the
picked / other answers with choice-only feedback) and its z-score within the request (which
LLMs this user preferred here). A request never hears its own query: every message excludes
the request's own row and every row of the same query (other users' feedback on it), so a
training request is predicted exactly as a new query would be (leave-one-query-out), and
labels of predicted requests never reach the scorer. :func:`check_no_label_leak_v2` checks it.

:class:`FeedbackStore` keeps the sums behind these messages; adding feedback updates only the
sums of the users, profiles, tasks and queries it touches. :func:`reference_messages` computes
the same messages from explicit edge lists (scikit-learn nearest neighbours, PyG ``scatter``) for
tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from prlib.requests import Requests

#: Feedback channels per (request, LLM): the value seen and its z-score within the request.
CHANNELS = 2
#: Static message features per (request, LLM): profile mean (2) and log count (1), user mean
#: (2) and log count (1), task mean (2) and log count (1), user-kNN mean at k and at k_small
#: (2 + 2), pooled-kNN mean at k (2), mean similarity of the user's and the pooled neighbours
#: (2).
N_STATIC = 17


def feedback_channels(req: Requests) -> tuple[np.ndarray, np.ndarray]:
    """``(values, observed)``: (n, n_llms, 2) float32 [value, z-score within the request], zero
    for non-candidates, and (n, n_llms) bool, True where the LLM is a candidate."""
    u = req.utility
    obs = ~np.isnan(u)
    mean = np.nanmean(u, axis=1, keepdims=True)
    std = np.nanstd(u, axis=1, keepdims=True)
    z = np.where(obs, (u - mean) / np.where(std > 0, std, 1.0), 0.0)
    return np.stack([np.where(obs, u, 0.0), z], -1).astype(np.float32), obs


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class Messages:
    """What a batch of n requests hears. ``static``: (n, n_llms, N_STATIC); ``user_nb`` /
    ``pool_nb``: (n, K) history-row / history-query indices of the retrieved neighbours (-1:
    none), with similarities ``user_sim`` / ``pool_sim`` (n, K)."""

    static: torch.Tensor
    user_nb: torch.Tensor
    user_sim: torch.Tensor
    pool_nb: torch.Tensor
    pool_sim: torch.Tensor

    def select(self, idx) -> "Messages":
        return Messages(*(t[idx] for t in (self.static, self.user_nb, self.user_sim,
                                            self.pool_nb, self.pool_sim)))


def _mean(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Sums (..., M, C) over counts (..., M) -> means, 0 where the count is 0."""
    return np.where(n[..., None] > 0, s / np.maximum(n, 1)[..., None], 0.0)


class FeedbackStore:
    """The visible history and the sums its messages are made of.

    ``query_ids`` / ``query_x`` (n_queries, d) and ``tasks``: the node features it may see;
    ``llms``: the candidate LLMs. ``k`` neighbours are retrieved (``k_small`` for a second,
    sharper kNN mean).
    """

    def __init__(self, query_ids, query_x: np.ndarray, tasks, llms, k: int = 20,
                 k_small: int = 5):
        self.qpos = {q: i for i, q in enumerate(query_ids)}
        self.query_x = unit(np.asarray(query_x, dtype=np.float32))
        self.tpos = {t: i for i, t in enumerate(tasks)}
        self.llms = list(llms)
        self.k, self.k_small = int(k), int(k_small)
        m, t = len(self.llms), len(self.tpos)
        self.users: list[str] = []
        self.upos: dict[str, int] = {}
        self.values = np.zeros((0, m, CHANNELS), np.float32)  # (n_rows, M, C)
        self.observed = np.zeros((0, m), bool)
        self.row_user = np.zeros(0, np.int64)
        self.row_query = np.zeros(0, np.int64)  # feature index of the row's query
        self.row_of: dict[tuple[int, int], int] = {}
        self.user_rows: dict[int, list[int]] = {}
        self.s_user = np.zeros((0, m, CHANNELS))
        self.n_user = np.zeros((0, m))
        self.s_prof = np.zeros((0, t, m, CHANNELS))
        self.n_prof = np.zeros((0, t, m))
        self.s_task = np.zeros((t, m, CHANNELS))
        self.n_task = np.zeros((t, m))
        self.s_query: dict[int, np.ndarray] = {}  # feature query index -> (M, C) sums
        self.n_query: dict[int, np.ndarray] = {}
        self._pool_cache = None

    # -------------------------------------------------------------- updates
    def add(self, req: Requests) -> None:
        """Make ``req``'s feedback visible; only the touched sums change. A (user, query) that
        is already visible is an error (its feedback would count twice)."""
        if req.llms != self.llms:
            raise ValueError(f"requests are over the LLMs {req.llms}, the store over {self.llms}")
        for u in dict.fromkeys(req.frame["user_id"]):
            if u not in self.upos:
                self.upos[u] = len(self.users)
                self.users.append(u)
        n_u, (t, m) = len(self.users), self.n_task.shape
        grow = n_u - len(self.s_user)
        if grow:
            self.s_user = np.concatenate([self.s_user, np.zeros((grow, m, CHANNELS))])
            self.n_user = np.concatenate([self.n_user, np.zeros((grow, m))])
            self.s_prof = np.concatenate([self.s_prof, np.zeros((grow, t, m, CHANNELS))])
            self.n_prof = np.concatenate([self.n_prof, np.zeros((grow, t, m))])
        u = req.frame["user_id"].map(self.upos).to_numpy(np.int64)
        q = self._query_index(req)
        tk = self._task_index(req)
        vals, obs = feedback_channels(req)
        start = len(self.row_user)
        for i, key in enumerate(zip(u.tolist(), q.tolist())):
            if key in self.row_of:
                raise ValueError(f"user {self.users[key[0]]!r} already has visible feedback on "
                                 "this query; a (user, query) is visible once")
            self.row_of[key] = start + i
            self.user_rows.setdefault(key[0], []).append(start + i)
        self.values = np.concatenate([self.values, vals])
        self.observed = np.concatenate([self.observed, obs])
        self.row_user = np.concatenate([self.row_user, u])
        self.row_query = np.concatenate([self.row_query, q])
        o = obs.astype(float)
        np.add.at(self.s_user, u, vals)
        np.add.at(self.n_user, u, o)
        np.add.at(self.s_prof, (u, tk), vals)
        np.add.at(self.n_prof, (u, tk), o)
        np.add.at(self.s_task, tk, vals)
        np.add.at(self.n_task, tk, o)
        for qi in np.unique(q):
            rows = q == qi
            self.s_query[qi] = self.s_query.get(qi, 0.0) + vals[rows].sum(0)
            self.n_query[qi] = self.n_query.get(qi, 0.0) + o[rows].sum(0)
        self._pool_cache = None

    def _query_index(self, req: Requests) -> np.ndarray:
        q = req.frame["query_id"].map(self.qpos)
        if q.isna().any():
            raise KeyError(f"queries missing from the features: "
                           f"{req.frame['query_id'][q.isna()].unique()[:5].tolist()}")
        return q.to_numpy(np.int64)

    def _task_index(self, req: Requests) -> np.ndarray:
        t = req.frame["task"].map(self.tpos)
        if t.isna().any():
            raise KeyError(f"tasks missing from the features: "
                           f"{req.frame['task'][t.isna()].unique()[:5].tolist()}")
        return t.to_numpy(np.int64)

    def pooled(self):
        """Visible queries (feature indices), their unit embeddings and mean feedback over
        users: ``(ids (Q,), x (Q, d), mean (Q, M, C))``."""
        if self._pool_cache is None:
            ids = np.array(sorted(self.s_query), np.int64)
            s = np.stack([self.s_query[i] for i in ids]) if len(ids) else np.zeros(
                (0, len(self.llms), CHANNELS))
            n = np.stack([self.n_query[i] for i in ids]) if len(ids) else np.zeros(
                (0, len(self.llms)))
            self._pool_cache = (ids, self.query_x[ids], _mean(s, n).astype(np.float32))
        return self._pool_cache

    # -------------------------------------------------------------- messages
    def messages(self, req: Requests, query_x: np.ndarray | None = None) -> Messages:
        """What each request of ``req`` hears from the visible history, excluding every row of
        its own query (so a visible request is predicted as if it were new). ``query_x``
        (n, d): embeddings of the requests' queries when they are not in the features (new
        texts); their query id is then never visible."""
        n, m, k = len(req), len(self.llms), self.k
        if query_x is None:
            q = self._query_index(req)
            x = self.query_x[q]
        else:
            q = np.full(n, -1, np.int64)
            x = unit(np.asarray(query_x, dtype=np.float32))
        tk = self._task_index(req)
        u = req.frame["user_id"].map(self.upos).fillna(-1).to_numpy(np.int64)
        known = u >= 0
        # the request's own row (its (user, query) visible: its label must not be heard)
        own = np.array([self.row_of.get((a, b), -1) for a, b in zip(u.tolist(), q.tolist())])
        own_v = np.where((own >= 0)[:, None, None], self.values[np.maximum(own, 0)], 0.0) \
            if len(self.values) else np.zeros((n, m, CHANNELS))
        own_o = np.where((own >= 0)[:, None], self.observed[np.maximum(own, 0)], False) \
            if len(self.observed) else np.zeros((n, m), bool)
        s_u = np.where(known[:, None, None], self.s_user[np.maximum(u, 0)], 0.0) - own_v \
            if len(self.s_user) else np.zeros((n, m, CHANNELS))
        n_u = np.where(known[:, None], self.n_user[np.maximum(u, 0)], 0.0) - own_o \
            if len(self.n_user) else np.zeros((n, m))
        s_p = np.where(known[:, None, None], self.s_prof[np.maximum(u, 0), tk], 0.0) - own_v \
            if len(self.s_prof) else np.zeros((n, m, CHANNELS))
        n_p = np.where(known[:, None], self.n_prof[np.maximum(u, 0), tk], 0.0) - own_o \
            if len(self.n_prof) else np.zeros((n, m))
        # the task's feedback without any row of the request's own query
        sq = np.stack([self.s_query.get(i, np.zeros((m, CHANNELS))) for i in q]) if n else \
            np.zeros((0, m, CHANNELS))
        nq = np.stack([self.n_query.get(i, np.zeros(m)) for i in q]) if n else np.zeros((0, m))
        s_t, n_t = self.s_task[tk] - sq, self.n_task[tk] - nq

        user_nb = np.full((n, k), -1, np.int64)
        user_sim = np.zeros((n, k), np.float32)
        for ui in np.unique(u[known]):
            mine = np.flatnonzero(u == ui)
            rows = np.asarray(self.user_rows.get(int(ui), []), np.int64)
            if not len(rows):
                continue
            sim = x[mine] @ self.query_x[self.row_query[rows]].T  # (n_mine, n_rows)
            sim[self.row_query[rows][None, :] == q[mine][:, None]] = -np.inf  # own query
            kk = min(k, len(rows))
            top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
            top_sim = np.take_along_axis(sim, top, 1)
            order = np.argsort(-top_sim, axis=1, kind="stable")
            top, top_sim = np.take_along_axis(top, order, 1), np.take_along_axis(top_sim, order, 1)
            ok = np.isfinite(top_sim)
            user_nb[mine, :kk] = np.where(ok, rows[top], -1)
            user_sim[mine, :kk] = np.where(ok, top_sim, 0.0)

        pool_ids, pool_x, pool_mean = self.pooled()
        pool_nb = np.full((n, k), -1, np.int64)
        pool_sim = np.zeros((n, k), np.float32)
        if len(pool_ids):
            sim = x @ pool_x.T  # (n, Q)
            sim[pool_ids[None, :] == q[:, None]] = -np.inf
            kk = min(k, len(pool_ids))
            top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
            top_sim = np.take_along_axis(sim, top, 1)
            order = np.argsort(-top_sim, axis=1, kind="stable")
            top, top_sim = np.take_along_axis(top, order, 1), np.take_along_axis(top_sim, order, 1)
            ok = np.isfinite(top_sim)
            pool_nb[:, :kk] = np.where(ok, top, -1)
            pool_sim[:, :kk] = np.where(ok, top_sim, 0.0)

        def knn_mean(nb, kk):
            nb = nb[:, :kk]
            ok = nb >= 0
            v = np.where(ok[..., None, None], self.values[np.maximum(nb, 0)], 0.0) \
                if len(self.values) else np.zeros((n, kk, m, CHANNELS))
            o = np.where(ok[..., None], self.observed[np.maximum(nb, 0)], False) \
                if len(self.observed) else np.zeros((n, kk, m), bool)
            return _mean(v.sum(1), o.sum(1))

        ok_p = pool_nb >= 0
        pv = np.where(ok_p[..., None, None], pool_mean[np.maximum(pool_nb, 0)], 0.0) \
            if len(pool_ids) else np.zeros((n, k, m, CHANNELS))
        pool_knn = pv.sum(1) / np.maximum(ok_p.sum(1), 1)[:, None, None]
        nbr_sim = lambda s, nb: (np.where(nb >= 0, s, 0).sum(1)  # noqa: E731
                                 / np.maximum((nb >= 0).sum(1), 1))
        per_req = np.stack([nbr_sim(user_sim, user_nb), nbr_sim(pool_sim, pool_nb)], 1)
        static = np.concatenate([
            _mean(s_p, n_p), np.log1p(n_p)[..., None], _mean(s_u, n_u), np.log1p(n_u)[..., None],
            _mean(s_t, n_t), np.log1p(n_t)[..., None], knn_mean(user_nb, k),
            knn_mean(user_nb, min(self.k_small, k)), pool_knn,
            np.repeat(per_req[:, None, :], m, 1)], -1)
        as_t = lambda a, d=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=d)  # noqa: E731
        return Messages(as_t(static), as_t(user_nb, torch.long), as_t(user_sim),
                        as_t(pool_nb, torch.long), as_t(pool_sim))


def check_no_label_leak_v2(store: FeedbackStore, req: Requests, msg: Messages) -> None:
    """Raise AssertionError if a request of ``req`` hears a row of its own query: a retrieved
    neighbour of the user's, or a pooled neighbour query, that is the request's own query (its
    label, or other users' labels of the same query). The sums are leave-one-query-out by
    construction; ``test_v2_messages_do_not_depend_on_the_labels_of_their_own_query`` tests it.
    """
    q = req.frame["query_id"].map(store.qpos).fillna(-1).to_numpy(np.int64)
    nb = msg.user_nb.numpy()
    own = (nb >= 0) & (store.row_query[np.maximum(nb, 0)] == q[:, None]) if len(
        store.row_query) else np.zeros(nb.shape, bool)
    assert not own.any(), f"{int(own.any(1).sum())} requests retrieve a row of their own query"
    ids = store.pooled()[0]
    pnb = msg.pool_nb.numpy()
    pooled_own = (pnb >= 0) & (ids[np.maximum(pnb, 0)] == q[:, None]) if len(ids) else \
        np.zeros(pnb.shape, bool)
    assert not pooled_own.any(), (f"{int(pooled_own.any(1).sum())} requests retrieve their own "
                                  "query from the pooled history")


def reference_messages(history: Requests, req: Requests, query_ids, query_x: np.ndarray,
                       k: int, k_small: int) -> torch.Tensor:
    """The static messages of :meth:`FeedbackStore.messages` from explicit edge lists (for
    tests): every (history row -> request) edge of each relation, built request by request with
    scikit-learn's exact nearest-neighbour search, aggregated with PyG's ``scatter``.
    Returns (n, n_llms, N_STATIC)."""
    from sklearn.neighbors import NearestNeighbors
    from torch_geometric.utils import scatter

    vals, obs = feedback_channels(history)
    vals, obs = torch.as_tensor(vals, dtype=torch.float64), torch.as_tensor(obs, dtype=torch.float64)
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
    # pooled: each neighbour query's mean over users, then their plain mean
    per_q = {a: (vals[rows].sum(0), obs[rows].sum(0)) for a, rows in by_query.items()}
    pool = torch.zeros(n, m, CHANNELS, dtype=torch.float64)
    cnt = torch.zeros(n)
    for a, i in zip(pool_src, pool_dst):
        s, c = per_q[a]
        pool[i] += torch.where(c[:, None] > 0, s / c.clamp(min=1)[:, None], 0.0)
        cnt[i] += 1
    out.append(pool / cnt.clamp(min=1)[:, None, None])
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
