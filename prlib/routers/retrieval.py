"""The visible feedback history as a graph that scoring reads per request from cached sums.

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
sums of the users, profiles, tasks and queries it touches. The tests compute the same messages
from explicit edge lists (``tests/v2_reference.py``: scikit-learn nearest neighbours, PyG
``scatter``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat

import numpy as np
import torch

from prlib.requests import Requests

#: Feedback channels per (request, LLM): the value seen and its z-score within the request.
CHANNELS = 2
#: Static message features per (request, LLM): profile mean (2) and log count (1), user mean
#: (2) and log count (1), task mean (2) and log count (1), user-kNN mean at k and at k_small
#: (2 + 2), pooled-kNN mean at k (2), mean similarity of the user's and the pooled neighbours
#: (2).
N_STATIC = 17
#: Which static features are profile statistics (profile, user, task) and which come from
#: retrieval (kNN means and similarities), for the ablations.
PROFILE_STATS = slice(0, 9)
RETRIEVAL_STATS = slice(9, 17)


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
    ``pool_nb``: (n, K) history-row / pooled-query indices of the retrieved neighbours (-1:
    none), with similarities ``user_sim`` / ``pool_sim`` (n, K)."""

    static: torch.Tensor
    user_nb: torch.Tensor
    user_sim: torch.Tensor
    pool_nb: torch.Tensor
    pool_sim: torch.Tensor
    query: torch.Tensor  # (n,) feature index of each request's query, -1 for new texts
    #: (n,) the history row of the request's own (user, query), -1 if it has none; a visible
    #: request's messages leave that row out (leave-one-query-out)
    own: torch.Tensor

    def select(self, idx) -> "Messages":
        return Messages(*(t[idx] for t in (self.static, self.user_nb, self.user_sim,
                                            self.pool_nb, self.pool_sim, self.query, self.own)))


def _mean(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Sums (..., M, C) over counts (..., M) -> means, 0 where the count is 0."""
    return np.where(n[..., None] > 0, s / np.maximum(n, 1)[..., None], 0.0)


def _topk(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest finite entries per row of ``sim`` (n, N), most similar first:
    ``(index (n, k), value (n, k))``, index -1 and value 0 where a row has fewer."""
    n = sim.shape[0]
    kk = min(k, sim.shape[1])
    idx = torch.full((n, k), -1, dtype=torch.long)
    val = torch.zeros(n, k)
    if kk:
        top_v, top_i = torch.topk(sim, kk, dim=1)
        ok = torch.isfinite(top_v)
        idx[:, :kk] = torch.where(ok, top_i, -1)
        val[:, :kk] = torch.where(ok, top_v, 0.0)
    return idx, val


class FeedbackStore:
    """The visible history and the sums its messages are made of.

    ``query_ids`` / ``query_x`` (n_queries, d) and ``tasks``: the node features it may see;
    ``llms``: the candidate LLMs. ``k`` neighbours are retrieved (``k_small`` for a second,
    sharper kNN mean). Sums are dense arrays: per user (n_users, M, C), per (user, task)
    profile (n_users, T, M, C), per task (T, M, C) and per feature query (n_queries, M, C).
    """

    def __init__(self, query_ids, query_x: np.ndarray, tasks, llms, k: int = 20,
                 k_small: int = 5):
        self.qpos = {q: i for i, q in enumerate(query_ids)}
        self.query_x = unit(np.asarray(query_x, dtype=np.float32))
        self._query_x_t = torch.from_numpy(self.query_x)
        self.tpos = {t: i for i, t in enumerate(tasks)}
        self.llms = list(llms)
        self.k, self.k_small = int(k), int(k_small)
        m, t, nq = len(self.llms), len(self.tpos), len(self.qpos)
        self.users: list[str] = []
        self.upos: dict[str, int] = {}
        self.values = np.zeros((0, m, CHANNELS), np.float32)  # (n_rows, M, C)
        self.observed = np.zeros((0, m), bool)
        self.row_user = np.zeros(0, np.int64)
        self.row_query = np.zeros(0, np.int64)  # feature index of the row's query
        self.row_of: dict[tuple[int, int], int] = {}
        self._user_rows: list[list[int]] = []
        self._user_rows_cache: dict[int, np.ndarray] = {}
        self.s_user = np.zeros((0, m, CHANNELS))
        self.n_user = np.zeros((0, m))
        self.s_prof = np.zeros((0, t, m, CHANNELS))
        self.n_prof = np.zeros((0, t, m))
        self.s_task = np.zeros((t, m, CHANNELS))
        self.n_task = np.zeros((t, m))
        self.s_query = np.zeros((nq, m, CHANNELS))
        self.n_query = np.zeros((nq, m))
        self.query_visible = np.zeros(nq, bool)
        self._pool_cache = self._row_pos_cache = self._pool_xt = None

    # -------------------------------------------------------------- updates
    def add(self, req: Requests) -> None:
        """Make ``req``'s feedback visible; only the touched sums change. A (user, query) that
        is already visible is an error (its feedback would count twice)."""
        if req.llms != self.llms:
            raise ValueError(f"requests are over the LLMs {req.llms}, the store over {self.llms}")
        self._check_new(req)
        for u in dict.fromkeys(req.frame["user_id"]):
            if u not in self.upos:
                self.upos[u] = len(self.users)
                self.users.append(u)
                self._user_rows.append([])
        n_u, (t, m) = len(self.users), self.n_task.shape
        grow = n_u - len(self.s_user)
        if grow:
            self.s_user = np.concatenate([self.s_user, np.zeros((grow, m, CHANNELS))])
            self.n_user = np.concatenate([self.n_user, np.zeros((grow, m))])
            self.s_prof = np.concatenate([self.s_prof, np.zeros((grow, t, m, CHANNELS))])
            self.n_prof = np.concatenate([self.n_prof, np.zeros((grow, t, m))])
        u, q, tk = self.index(req)
        vals, obs = feedback_channels(req)
        start = len(self.row_user)
        for i, key in enumerate(zip(u.tolist(), q.tolist())):
            self.row_of[key] = start + i
            self._user_rows[key[0]].append(start + i)
            self._user_rows_cache.pop(key[0], None)
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
        np.add.at(self.s_query, q, vals)
        np.add.at(self.n_query, q, o)
        self.query_visible[q] = True
        self._pool_cache = self._row_pos_cache = self._pool_xt = None

    def add_queries(self, query_ids, query_x: np.ndarray) -> None:
        """New queries the history may refer to (no feedback yet): ``query_x`` (n, d), as the
        feature rows. A query id the store already has is an error."""
        query_ids = list(query_ids)
        known = [q for q in query_ids if q in self.qpos]
        if known or len(set(query_ids)) < len(query_ids):
            raise ValueError(f"queries already in the store (or given twice): {known[:5]}")
        n, m = len(query_ids), len(self.llms)
        for i, q in enumerate(query_ids):
            self.qpos[q] = len(self.query_x) + i
        self.query_x = np.concatenate([self.query_x, unit(np.asarray(query_x, np.float32))])
        self._query_x_t = torch.from_numpy(self.query_x)
        self.s_query = np.concatenate([self.s_query, np.zeros((n, m, CHANNELS))])
        self.n_query = np.concatenate([self.n_query, np.zeros((n, m))])
        self.query_visible = np.concatenate([self.query_visible, np.zeros(n, bool)])
        self._pool_cache = self._row_pos_cache = self._pool_xt = None

    def _check_new(self, req: Requests) -> None:
        """Refuse, before changing anything, requests whose (user, query) is already visible or
        appears twice in ``req`` (its feedback would count twice); unknown queries or tasks
        are refused by :meth:`index`."""
        u, q, _ = self.index(req)
        keys = list(zip(req.frame["user_id"].tolist(), q.tolist()))
        seen = [k for k in keys if k[0] in self.upos and (self.upos[k[0]], k[1]) in self.row_of]
        if seen or len(set(keys)) < len(keys):
            who = seen[0][0] if seen else next(k for k in keys if keys.count(k) > 1)[0]
            raise ValueError(f"user {who!r} already has visible feedback on a query of these "
                             "requests (or one twice in them); a (user, query) is visible once")

    def index(self, req: Requests, known_queries: bool = True):
        """``(user, query, task)`` int64 arrays (n,) of ``req``'s rows: user -1 for users
        without visible feedback; query -1 for queries outside the features unless
        ``known_queries`` (then an error). Unknown tasks are an error."""
        f = req.frame
        n = len(f)
        u = np.fromiter(map(self.upos.get, f["user_id"].tolist(), repeat(-1, n)), np.int64, n)
        q = np.fromiter(map(self.qpos.get, f["query_id"].tolist(), repeat(-1, n)), np.int64, n)
        tk = np.fromiter(map(self.tpos.get, f["task"].tolist(), repeat(-1, n)), np.int64, n)
        if known_queries and (q < 0).any():
            raise KeyError(f"queries missing from the features: "
                           f"{f['query_id'][q < 0].unique()[:5].tolist()}")
        if (tk < 0).any():
            raise KeyError(f"tasks missing from the features: "
                           f"{f['task'][tk < 0].unique()[:5].tolist()}")
        return u, q, tk

    def user_rows(self, user: int) -> np.ndarray:
        """History rows of user index ``user`` (int64, in the order they were added)."""
        rows = self._user_rows_cache.get(user)
        if rows is None:
            rows = self._user_rows_cache[user] = np.asarray(self._user_rows[user], np.int64)
        return rows

    def _row_pool_pos(self) -> np.ndarray:
        """(n_rows,) position of each history row's query among :meth:`pooled`'s ids."""
        if self._row_pos_cache is None:
            self._row_pos_cache = np.searchsorted(self.pooled()[0], self.row_query)
        return self._row_pos_cache

    def _pooled_xt(self) -> torch.Tensor:
        """The visible queries' unit embeddings transposed, (d, Q), kept contiguous (a product
        with a transposed view is slower)."""
        if self._pool_xt is None:
            with torch.inference_mode(False):  # a plain tensor: it outlives a scoring call
                self._pool_xt = torch.from_numpy(np.ascontiguousarray(self.pooled()[1].T))
        return self._pool_xt

    def pooled(self):
        """Visible queries (feature indices), their unit embeddings, mean feedback over users
        and which LLMs have any: ``(ids (Q,), x (Q, d), mean (Q, M, C), observed (Q, M))``."""
        if self._pool_cache is None:
            ids = np.flatnonzero(self.query_visible)
            self._pool_cache = (ids, self.query_x[ids],
                                _mean(self.s_query[ids], self.n_query[ids]).astype(np.float32),
                                self.n_query[ids] > 0)
        return self._pool_cache

    def _same_rows_groups(self, users: list[int]) -> list[list[int]]:
        """``users`` (sorted user indices) grouped by their visible rows' queries, in order:
        users of a group retrieve from the same queries in the same positions."""
        if len(users) < 2:
            return [users] if users else []
        groups: dict[bytes, list[int]] = {}
        for ui in users:
            groups.setdefault(self.row_query[self.user_rows(ui)].tobytes(), []).append(ui)
        return list(groups.values())

    def _search_rows(self, sim_p: torch.Tensor, d: np.ndarray, rows: np.ndarray):
        """The k nearest of ``rows`` (a user's history rows, or a group's shared positions) for
        distinct queries ``d`` (rows of ``sim_p`` (n_distinct, Q), own queries already out):
        ``(position in rows, value)`` (len(d), k)."""
        # (distinct queries, rows): columns first, the cheaper copy
        sim = sim_p.index_select(1, torch.from_numpy(self._row_pool_pos()[rows])).index_select(
            0, torch.from_numpy(d))
        return _topk(sim, self.k)

    # -------------------------------------------------------------- messages
    def messages(self, req: Requests, query_x: np.ndarray | None = None) -> Messages:
        """What each request of ``req`` hears from the visible history, excluding every row of
        its own query (so a visible request is predicted as if it were new). ``query_x``
        (n, d): embeddings of the requests' queries when they are not in the features (new
        texts); their query id is then never visible."""
        return self.messages_of(*self.index(req, known_queries=query_x is None), query_x)

    def messages_of(self, u: np.ndarray, q: np.ndarray, tk: np.ndarray,
                    query_x: np.ndarray | None = None) -> Messages:
        """:meth:`messages` of requests given by index (:meth:`index`): ``u`` / ``q`` / ``tk``
        int64 (n,) user (-1: no visible feedback), feature query and task of each; with
        ``query_x`` (n, d) the queries are new texts (``q`` is ignored). No data frame is
        touched: the path of a served request."""
        n, m, k = len(u), len(self.llms), self.k
        if query_x is None:
            x = None  # the feature queries' embeddings, gathered per distinct query below
        else:
            q = np.full(n, -1, np.int64)
            x = torch.from_numpy(unit(np.asarray(query_x, dtype=np.float32)))
        known = u >= 0
        uk = np.maximum(u, 0)
        # the request's own row (its (user, query) visible: its label must not be heard)
        own = np.fromiter((self.row_of.get(key, -1) for key in zip(u.tolist(), q.tolist())),
                          np.int64, n)
        has_own = own >= 0
        own_v = np.zeros((n, m, CHANNELS))
        own_o = np.zeros((n, m))
        own_v[has_own], own_o[has_own] = self.values[own[has_own]], self.observed[own[has_own]]
        if len(self.s_user):
            kn3, kn2 = known[:, None, None], known[:, None]
            s_u = np.where(kn3, self.s_user[uk], 0.0) - own_v
            n_u = np.where(kn2, self.n_user[uk], 0.0) - own_o
            s_p = np.where(kn3, self.s_prof[uk, tk], 0.0) - own_v
            n_p = np.where(kn2, self.n_prof[uk, tk], 0.0) - own_o
        else:
            s_u = s_p = np.zeros((n, m, CHANNELS))
            n_u = n_p = np.zeros((n, m))
        # the task's feedback without any row of the request's own query
        has_q = q >= 0
        sq = np.where(has_q[:, None, None], self.s_query[np.maximum(q, 0)], 0.0)
        nq = np.where(has_q[:, None], self.n_query[np.maximum(q, 0)], 0.0)
        s_t, n_t = self.s_task[tk] - sq, self.n_task[tk] - nq

        # similarities are per distinct query (a batch asks each query for many users), and
        # only to the visible queries (every history row's query is one of them)
        if query_x is None:
            uq, inv = np.unique(q, return_inverse=True)
            xq, q_of = self._query_x_t[torch.from_numpy(uq)], uq
        else:
            uq, inv, xq, q_of = np.arange(n), np.arange(n), x, q
        pool_ids, pool_x, pool_mean, pool_obs = self.pooled()
        sim_p = xq @ self._pooled_xt()  # (n_distinct, Q): cosine to visible queries
        row_pos = self._row_pool_pos()
        # a request never hears its own query: its column is out of every search, the pooled
        # one and the user's (whose rows of that query are only the request's own row)
        pos = np.searchsorted(pool_ids, q_of)
        own_pooled = (q_of >= 0) & (pool_ids[np.minimum(pos, len(pool_ids) - 1)] == q_of) \
            if len(pool_ids) else np.zeros(len(q_of), bool)
        sim_p[torch.from_numpy(np.flatnonzero(own_pooled)), torch.from_numpy(pos[own_pooled])] = \
            float("-inf")
        # pooled neighbours: the k most similar visible queries other than the request's own
        pool_top, pool_top_sim = _topk(sim_p, k)  # per distinct query
        pool_nb, pool_sim = pool_top[torch.from_numpy(inv)], pool_top_sim[torch.from_numpy(inv)]
        every_pooled = np.arange(len(pool_ids))
        user_nb = torch.full((n, k), -1, dtype=torch.long)
        user_sim = torch.zeros(n, k)
        # users whose visible rows are the same queries in the same order (in the paper's
        # setting every user has answered every training query) share one search per distinct
        # query: the same similarity rows, the same masks, so the same neighbours
        for group in self._same_rows_groups(np.unique(u[known]).tolist()):
            rows = self.user_rows(group[0])
            if not len(rows):
                continue
            mine = np.flatnonzero(np.isin(u, group)) if len(group) > 1 else \
                np.flatnonzero(u == group[0])
            d, d_of = np.unique(inv[mine], return_inverse=True)
            if np.array_equal(row_pos[rows], every_pooled):
                # the group's rows are every visible query in the pooled order: its similarity
                # rows are the pooled search's (own queries out), and so are its neighbours
                top, top_sim = pool_top[torch.from_numpy(d)], pool_top_sim[torch.from_numpy(d)]
            else:
                top, top_sim = self._search_rows(sim_p, d, rows)
            top, top_sim = top[torch.from_numpy(d_of)], top_sim[torch.from_numpy(d_of)]
            # each request's neighbours are rows of its own user at the shared positions
            row_of_pos = torch.from_numpy(np.stack([self.user_rows(ui) for ui in group]))
            which = torch.from_numpy(np.searchsorted(group, u[mine]))
            mine_t = torch.from_numpy(mine)
            user_nb[mine_t] = torch.where(top >= 0, row_of_pos[which[:, None], top.clamp(min=0)],
                                          -1)
            user_sim[mine_t] = top_sim

        un = user_nb.numpy()

        def knn_means(nb, sizes):
            """The mean feedback of the first ``size`` neighbours, for each size (one gather)."""
            if not len(self.values):
                return [np.zeros((len(nb), m, CHANNELS)) for _ in sizes]
            ok = nb >= 0
            if ok.all():  # k neighbours each: nothing to mask (the same values, fewer passes)
                v, o = np.take(self.values, nb, 0), np.take(self.observed, nb, 0)
            else:
                v = np.where(ok[..., None, None], self.values[np.maximum(nb, 0)], 0.0)
                o = np.where(ok[..., None], self.observed[np.maximum(nb, 0)], False)
            return [_mean(v[:, :size].sum(1), np.count_nonzero(o[:, :size], 1))
                    for size in sizes]

        # pooled: per LLM, the mean over the neighbour queries on which it has feedback; the
        # pooled neighbours are the distinct query's, so are their means
        pt = pool_top.numpy()  # (n_distinct, K)
        if len(pool_ids):
            ok_pm = (pt >= 0)[..., None] & pool_obs[np.maximum(pt, 0)]  # (n_distinct, K, M)
            pv = np.where(ok_pm[..., None], pool_mean[np.maximum(pt, 0)], 0.0)
            pool_knn = _mean(pv.sum(1), ok_pm.sum(1))[inv]
        else:
            pool_knn = np.zeros((n, m, CHANNELS))
        nbr_sim = lambda s, nb: s.sum(1) / np.maximum((nb >= 0).sum(1), 1)  # noqa: E731
        per_req = np.stack([nbr_sim(user_sim.numpy(), un),
                            nbr_sim(pool_top_sim.numpy(), pt)[inv]], 1)
        knn, knn_small = knn_means(un, (k, min(self.k_small, k)))
        static = np.concatenate([
            _mean(s_p, n_p), np.log1p(n_p)[..., None], _mean(s_u, n_u), np.log1p(n_u)[..., None],
            _mean(s_t, n_t), np.log1p(n_t)[..., None], knn, knn_small, pool_knn,
            np.repeat(per_req[:, None, :], m, 1)], -1)
        return Messages(torch.from_numpy(static.astype(np.float32)), user_nb, user_sim,
                        pool_nb, pool_sim, torch.from_numpy(q), torch.from_numpy(own))


def check_no_label_leak_v2(store: FeedbackStore, req: Requests, msg: Messages) -> None:
    """Raise AssertionError if a request of ``req`` hears a row of its own query: a retrieved
    neighbour of the user's, or a pooled neighbour query, that is the request's own query (its
    label, or other users' labels of the same query). The sums are leave-one-query-out by
    construction; ``test_v2_messages_do_not_depend_on_the_labels_of_their_own_query`` tests it.
    """
    q = msg.query.numpy()  # the feature query of each request (-1: a new text)
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
