"""PersonalizedRouter v3: what a user values, learned from what they pick, shrunk towards what
everyone values until the user has said enough.

Two halves, one model:

* **Shared (population) attributes per (task, LLM)**, pooled over every user's training requests
  from the bank's columns those requests carry (``quality``, ``cost``): the expected quality, the
  expected cost relative to the task's cost range and the expected log cost of each LLM on a
  query of each task (per-(task, LLM) means shrunk towards the LLM's mean), plus an LLM identity
  one-hot (style, length and anything else a user likes about an LLM beyond quality and cost).
  Every user's requests inform these.
* **A utility per user**: ``u(user, query, LLM) = w_user . phi(query, LLM)``, linear in those
  attributes. At training time ``phi`` is the request's own attributes (what the user saw when
  choosing: the answer's quality and cost); at routing time the population's expectation of them
  for the query's task (by linearity, the expected utility). With choice-only feedback ``w`` is
  fitted by a choice likelihood (multinomial logit over the candidates: each pick says which
  trade-off the user makes); with utilities, by regression of the request-centred utilities.
* **Shrinkage by evidence**: ``w_user`` has a Gaussian prior ``N(mu0, Sigma)`` learned from all
  users (empirical Bayes: EM over the users' Laplace posteriors); ``Sigma`` is a full covariance
  (eigenvalues floored), so the directions in which users differ (a trade-off of quality against
  cost: weights that move together) are learned from everyone and a user with a few picks moves
  along them first (``prior="diagonal"``: independent weights, the first v3). A user is scored
  with their posterior mean, which is the population's ``mu0`` for a user without feedback and
  moves towards the user's own fit as their evidence grows. ``add_user`` / ``record_feedback``
  recompute only the touched users' posteriors (a few Newton steps on their own rows), with no
  retraining.

Nothing of the multi-cost simulator's form is written in: the features are generic, the weights
and the prior are learned; a judge who likes one LLM's style gets weight on its one-hot.
Routing a request is a row lookup and a (n_llms x d) product: O(1) in the history.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from prlib.features import query_row
from prlib.requests import Requests, concat_requests
from prlib.routers.base import (ABLATION, Router, non_negative, one_of, positive,
                                query_embeddings, register, reward_of)

#: Base attributes of a (query, LLM): quality, cost / the task's cost span, log cost.
BASE = ("quality", "relative cost", "log cost")
#: Floor of the prior variance over users (standardised feature units): a population whose
#: users all agree still lets a user who disagrees move, after tens of picks, not one.
TAU2_FLOOR = 0.01
#: EM steps of the prior (development seeds 0-2, full prior: 12 steps instead of 4 moved
#: PersonaRoute-Bench's 5-pick cell by +0.002; the other cells were compared only for the full
#: prior with 12 steps against the diagonal one with 4).
EM_ITERS = 12


def _row_attributes(quality: np.ndarray, cost: np.ndarray, span: np.ndarray) -> np.ndarray:
    """(n, n_llms, 3) raw attributes of (request, LLM) from quality and USD cost (n, n_llms)
    and each request's task cost span (n,)."""
    c = np.maximum(np.nan_to_num(cost, nan=0.0), 0.0)
    return np.stack([quality, cost / span[:, None], np.log(c + 1e-7)], -1)


def _eigen_floored(cov: np.ndarray, floor: float) -> np.ndarray:
    """The symmetric (d, d) ``cov`` with its eigenvalues raised to at least ``floor``."""
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
    return (vecs * np.maximum(vals, floor)) @ vecs.T


@register
class PersonalizedRouterV3(Router):
    """Ours, v3: a per-user utility over population attributes of each (query, LLM) (expected
    quality, relative and log cost per task, LLM identity), learned from the user's picks by a
    choice likelihood (or from utilities by regression) under an empirical-Bayes prior learned
    from all users, so a user with little feedback is routed like the population and moves away
    as their evidence grows; online posterior updates, no retraining; routing is a lookup and one
    small product per request."""

    name = "PersonalizedRouter v3 (ours)"
    family = "ours"
    selection = ("the starting prior of the empirical-Bayes EM and the feature set (grid); the "
                 "prior itself is learned by EM")
    defaults = {"loss": "utility", "prior_scale": 1.0, "features": "core+llm", "shrink": 5.0,
                "newton_iters": 12, "start_prec": 1.0, "prior": "full"}
    constraints = {"loss": one_of("utility", "choice"), "prior_scale": positive(float),
                   "prior": one_of("diagonal", "full"),
                   "features": one_of("core", "core+llm"), "shrink": non_negative(),
                   "newton_iters": positive(), "start_prec": positive(float)}
    grid = {"start_prec": [1.0, 10.0], "features": ["core", "core+llm"]}
    tags = frozenset({"online"})

    @classmethod
    def params_for(cls, feedback: str) -> dict:
        """Choice-only feedback: the choice likelihood."""
        return {"loss": "choice"} if feedback == "choice" else {}

    # -------------------------------------------------------------- features
    @property
    def _d(self) -> int:
        return len(BASE) + (self.n_llms if self.params["features"] == "core+llm" else 0)

    def _task_index(self, tasks) -> np.ndarray:
        """Row of each task in the attribute table (unknown tasks: the last, LLM-level row)."""
        pos = getattr(self, "_tpos", None)
        if pos is None or len(pos) != len(self.tasks_):
            pos = self._tpos = {t: i for i, t in enumerate(self.tasks_)}
        return np.array([pos.get(t, len(self.tasks_)) for t in tasks], np.int64)

    def _expand(self, base: np.ndarray) -> np.ndarray:
        """(..., n_llms, 3) standardised base attributes -> (..., n_llms, d) features."""
        if self.params["features"] != "core+llm":
            return base
        eye = np.broadcast_to(np.eye(self.n_llms), base.shape[:-1] + (self.n_llms,))
        return np.concatenate([base, eye], -1)

    def _fit_attributes(self, train: Requests) -> None:
        """Population attributes per (task, LLM) from the distinct training queries' bank
        columns, and the standardisation of the attributes."""
        f = train.frame
        first = ~f.duplicated("query_id").to_numpy()
        q = train.quality[first] if train.quality is not None else None
        c = train.cost[first] if train.cost is not None else None
        cand = train.candidates[first]
        n_llms = self.n_llms
        if q is None:  # no bank columns: quality unknown (0), cost unknown (0)
            q = np.where(cand, 0.0, np.nan)
        if c is None:
            c = np.where(cand, 0.0, np.nan)
        q = np.where(cand, q, np.nan)
        c = np.where(cand, c, np.nan)
        tasks = sorted(set(self.feats.tasks) | set(f["task"].astype(str)))
        self.tasks_ = tasks
        t_idx = self._task_index(f["task"].to_numpy()[first])
        # each task's cost span over its training rows (the global span where a task has few)
        finite = c[np.isfinite(c)]
        g_span = float(finite.max() - finite.min()) if finite.size > 1 else 1.0
        g_span = g_span if g_span > 0 else 1.0
        span = np.full(len(tasks) + 1, g_span)
        for t in range(len(tasks)):
            ct = c[t_idx == t]
            ct = ct[np.isfinite(ct)]
            if ct.size >= 2 * n_llms and ct.max() > ct.min():
                span[t] = ct.max() - ct.min()
        self.span_ = span
        raw = _row_attributes(q, c, span[t_idx])  # (nq, n_llms, 3)
        raw = np.where(cand[..., None], raw, np.nan)
        with warnings.catch_warnings():  # an attribute with no value (a bank without costs):
            warnings.simplefilter("ignore", RuntimeWarning)  # mean 0 and sd 1 below
            mu = np.nanmean(raw.reshape(-1, 3), 0) if np.isfinite(raw).any() else np.zeros(3)
            sd = np.nanstd(raw.reshape(-1, 3), 0) if np.isfinite(raw).any() else np.ones(3)
        mu, sd = np.nan_to_num(mu), np.nan_to_num(sd, nan=1.0)
        self.attr_mean_, self.attr_sd_ = mu, np.where(sd > 1e-12, sd, 1.0)
        z = (raw - mu) / self.attr_sd_
        # per-LLM means (shrunk to 0 = the attribute's mean), then per-(task, LLM) shrunk to those
        ok = np.isfinite(z[..., 0])
        k = float(self.params["shrink"])
        zz = np.nan_to_num(z)
        n_l = ok.sum(0)[:, None]
        llm_mean = zz.sum(0) / (n_l + 1.0)  # (n_llms, 3)
        table = np.zeros((len(tasks) + 1, n_llms, 3))
        for t in range(len(tasks)):
            m = t_idx == t
            n_t = ok[m].sum(0)[:, None]
            table[t] = (zz[m].sum(0) + k * llm_mean) / (n_t + k)
        table[-1] = llm_mean
        self.table_ = table

    def _standardised(self, req: Requests) -> np.ndarray:
        """(n, n_llms, 3) standardised attributes of requests the user has answered: their own
        bank columns where present, else the population's expectation."""
        t_idx = self._task_index(req.frame["task"].to_numpy())
        expect = self.table_[t_idx]
        if req.quality is None and req.cost is None:
            return expect
        q = req.quality if req.quality is not None else np.full(req.utility.shape, np.nan)
        c = req.cost if req.cost is not None else np.full(req.utility.shape, np.nan)
        raw = _row_attributes(q, c, self.span_[t_idx])
        if req.cost is None:
            raw[..., 1:] = np.nan
        z = (raw - self.attr_mean_) / self.attr_sd_
        return np.where(np.isfinite(z), z, expect)

    def _padded(self, req: Requests) -> Requests:
        """``req`` over this router's LLMs (columns of LLMs added after it was made: NaN)."""
        if len(req.llms) == self.n_llms:
            return req
        extra = self.n_llms - len(req.llms)
        return req.with_llm_columns(self.llms_, lambda a: np.hstack(
            [a, np.full((len(a), extra), np.nan)]))

    # -------------------------------------------------------------- posteriors
    def _posteriors(self, req: Requests, users: list[str], mu0: np.ndarray, prec0: np.ndarray,
                    w0: np.ndarray | None = None, sigma2: float | None = None):
        """Posterior means (U, d) and covariances (U, d, d) of ``users``' weights from their
        requests in ``req`` under the prior N(mu0, diag 1/prec0) (``prec0`` (d,): a diagonal
        prior) or N(mu0, inv(prec0)) (``prec0`` (d, d): a full one); regression: also the
        summed squared residual and row count (for the noise variance); choice: each user's
        log posterior at the mode (U,) and 0."""
        d = self._d
        full = prec0.ndim == 2
        P0 = prec0 if full else np.diag(prec0)

        def prior_pull(w: np.ndarray) -> np.ndarray:
            """(U, d) gradient of the log prior's negative at weights ``w`` (U, d)."""
            return (w - mu0) @ P0 if full else prec0 * (w - mu0)

        def prior_energy(w: np.ndarray) -> np.ndarray:
            """(U,) the log prior's negative (up to a constant), times 2."""
            dev = w - mu0
            return np.einsum("ud,de,ue->u", dev, P0, dev) if full else (prec0 * dev ** 2).sum(1)
        pos = {u: i for i, u in enumerate(users)}
        uid = np.array([pos.get(u, -1) for u in req.frame["user_id"]], np.int64)
        keep = uid >= 0
        order = np.flatnonzero(keep)[np.argsort(uid[keep], kind="stable")]
        req, uid = req.select(order), uid[order]
        U = len(users)
        bounds = np.searchsorted(uid, np.arange(U + 1))
        segs = [slice(bounds[u], bounds[u + 1]) for u in range(U)]

        def seg_sum(v: np.ndarray) -> np.ndarray:
            """Per-user sums (U, ...) of per-row values (n, ...)."""
            return np.stack([v[sl].sum(0) for sl in segs]) if U else np.zeros((0,) + v.shape[1:])

        def seg_gram(A: np.ndarray, B: np.ndarray) -> np.ndarray:
            """Per-user sum over rows and candidates of outer products: (U, d, d) from
            A, B (n, M, d) (one BLAS product per user)."""
            return np.stack([A[sl].reshape(-1, d).T @ B[sl].reshape(-1, d) for sl in segs]) \
                if U else np.zeros((0, d, d))
        X = self._expand(self._standardised(req))  # (n, M, d)
        cand = req.candidates
        cf = cand.astype(float)
        prior_p = np.broadcast_to(P0, (U, d, d))
        if self.params["loss"] == "utility":
            s2 = self.sigma2_ if sigma2 is None else sigma2
            ncand = np.maximum(cf.sum(1, keepdims=True), 1.0)
            Xc = (X - (X * cf[..., None]).sum(1, keepdims=True) / ncand[..., None]) * cf[..., None]
            y = np.nan_to_num(req.utility)
            yc = (y - (y * cf).sum(1, keepdims=True) / ncand) * cf
            H = seg_gram(Xc, Xc) / s2
            g = seg_sum(np.einsum("nmd,nm->nd", Xc, yc)) / s2
            P = prior_p + H
            cov = np.linalg.inv(P)
            mean = np.einsum("ude,ue->ud", cov, g + (P0 @ mu0 if full else prec0 * mu0))
            resid = yc - np.einsum("nmd,nd->nm", Xc, mean[uid]) * cf
            sse = float((resid ** 2).sum())
            n_rows = float(np.maximum(cf.sum(1) - 1, 0).sum())
            # the expected squared residual also counts the posterior's spread
            sse += float(np.einsum("nmd,nde,nme->", Xc, cov[uid], Xc))
            return mean, cov, sse, n_rows
        # choice likelihood: Newton on each user's log posterior, all users at once
        w = np.tile(mu0, (U, 1)) if w0 is None else w0.copy()
        chosen = req.chosen
        rows = np.arange(len(req))
        x_ch = X[rows, chosen]  # (n, d)
        def objective(w):
            z = np.where(cand, np.einsum("nmd,nd->nm", X, w[uid]), -np.inf)
            top = z.max(1)
            lse = top + np.log(np.exp(z - top[:, None]).sum(1))
            return seg_sum(z[rows, chosen] - lse) - 0.5 * prior_energy(w)

        obj = objective(w)
        for _ in range(int(self.params["newton_iters"])):
            z = np.einsum("nmd,nd->nm", X, w[uid])
            z = np.where(cand, z, -np.inf)
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            xbar = np.einsum("nm,nmd->nd", p, X)
            g = seg_sum(x_ch - xbar)
            g -= prior_pull(w)
            H = seg_gram(p[..., None] * X, X) - seg_gram(xbar[:, None], xbar[:, None])
            step = np.linalg.solve(H + prior_p, g[..., None])[..., 0]
            # backtracking per user: halve the step until the log posterior does not drop
            size = np.ones(U)
            for _ in range(30):
                new = objective(w + size[:, None] * step)
                worse = new < obj - 1e-12
                if not worse.any():
                    break
                size = np.where(worse, size / 2, size)
            new = objective(w + size[:, None] * step)
            ok = new >= obj - 1e-12
            w = np.where(ok[:, None], w + size[:, None] * step, w)
            obj = np.where(ok, new, obj)
            if np.abs(size[:, None] * step).max() < 1e-6:
                break
        z = np.where(cand, np.einsum("nmd,nd->nm", X, w[uid]), -np.inf)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        xbar = np.einsum("nm,nmd->nd", p, X)
        H = seg_gram(p[..., None] * X, X) - seg_gram(xbar[:, None], xbar[:, None])
        return w, np.linalg.inv(H + prior_p), objective(w), 0.0

    def _empirical_bayes(self, history: Requests) -> None:
        """The prior N(mu0_, diag tau2_) over users' weights (and the noise variance of the
        regression), learned from all users; then every user's posterior mean.

        ``mu0``: the pooled fit (every user's feedback as one user's) under the starting prior
        N(0, 1 / start_prec). ``tau2``: the moment estimate from each user's own fit around
        ``mu0`` (spread of the fits minus their own uncertainty, floored: a direction the users'
        data do not tell apart keeps everyone at the population's value), then refined by a few
        EM steps over the users' (Laplace) posteriors. With ``prior="full"`` the prior's
        covariance ``prior_cov_`` is the full matrix of that spread (its eigenvalues floored), so
        the directions in which users differ from one another (a trade-off between quality and
        cost, say) are learned from all users, and a user with a few picks moves along them
        first; ``tau2_`` is then its diagonal."""
        users = sorted(set(history.frame["user_id"]))
        d = self._d
        start = np.full(d, float(self.params["start_prec"]))
        utility = self.params["loss"] == "utility"
        if utility:
            self.sigma2_ = 1.0
        (mu0,), *_ = self._posteriors(history.renamed("(all)"), ["(all)"], np.zeros(d), start)
        mean, cov, sse, n_rows = self._posteriors(history, users, mu0, start)
        if utility and n_rows > 0:
            self.sigma2_ = max(sse / n_rows, 1e-8)
            mean, cov, *_ = self._posteriors(history, users, mu0, start)
        var = np.diagonal(cov, axis1=1, axis2=2)
        floor = TAU2_FLOOR * float(np.mean(mu0[:len(BASE)] ** 2))
        self.tau2_floor_ = floor
        full = self.params["prior"] == "full"
        if full:
            dev = mean - mu0
            prior_cov = _eigen_floored(dev.T @ dev / len(users) - cov.mean(0), floor)
        else:
            tau2 = np.maximum(((mean - mu0) ** 2).mean(0) - var.mean(0), floor)
        for _ in range(EM_ITERS):
            prec = np.linalg.inv(prior_cov) if full else 1.0 / tau2
            mean, cov, sse, n_rows = self._posteriors(history, users, mu0, prec, mean)
            if utility and n_rows > 0:
                self.sigma2_ = max(sse / n_rows, 1e-8)
            mu0 = mean.mean(0)
            if full:
                dev = mean - mu0
                prior_cov = _eigen_floored(dev.T @ dev / len(users) + cov.mean(0), floor)
            else:
                tau2 = np.maximum(((mean - mu0) ** 2 + np.diagonal(cov, axis1=1, axis2=2))
                                  .mean(0), floor)
        self.mu0_ = mu0
        if full:
            self.prior_cov_, self.tau2_ = prior_cov, np.diag(prior_cov).copy()
        else:
            self.tau2_ = tau2
        self._refresh(history, users)

    def _prior_prec(self) -> np.ndarray:
        """The prior's precision: (d,) for a diagonal prior, (d, d) for a full one (a router
        saved before full priors has only ``tau2_``: diagonal)."""
        scale = float(self.params["prior_scale"])
        if self.params["prior"] == "full" and getattr(self, "prior_cov_", None) is not None:
            return np.linalg.inv(self.prior_cov_ * scale)
        return 1.0 / (self.tau2_ * scale)

    def _refresh(self, history: Requests, users: list[str]) -> None:
        """Recompute the posterior means of ``users`` (others unchanged) from ``history``."""
        if not users:
            return
        mean, *_ = self._posteriors(history, users, self.mu0_, self._prior_prec())
        pos = {u: i for i, u in enumerate(self.user_ids_)}
        new = [u for u in users if u not in pos]
        if new:
            self.user_ids_ = list(self.user_ids_) + new
            self.W_ = np.vstack([self.W_, np.zeros((len(new), self._d))])
            pos = {u: i for i, u in enumerate(self.user_ids_)}
        self.W_[[pos[u] for u in users]] = mean
        self._sync()

    def _sync(self) -> None:
        """Routing caches: each user's row, and the weights with the prior mean last (unknown
        users), so that routing one request reads one row."""
        self._upos = {u: i for i, u in enumerate(self.user_ids_)}
        self._w_all = np.vstack([self.W_, self.mu0_[None]])

    # -------------------------------------------------------------- fit
    def fit(self, train: Requests, val: Requests, *, progress: bool = False):
        """Population attributes and the empirical-Bayes prior from ``train``, then each user's
        posterior mean. (The grid point is chosen on ``val`` by the experiment; nothing in the
        fit reads ``val``.)"""
        self.llms_ = list(train.llms)
        self._fit_attributes(train)
        self._fit_task_centroids(train)
        self.history_ = train
        self.user_ids_, self.W_ = [], np.zeros((0, self._d))
        self._empirical_bayes(train)
        return self

    def fine_tune(self, history: Requests, val: Requests, steps: int = 100, *,
                  progress: bool = False):
        """Make ``history`` visible (as :meth:`add_user`), then re-learn the prior over users
        from the whole visible history by empirical Bayes (the population attributes stay);
        kept only when it does not lower the validation reward. ``steps`` is accepted for the
        common interface (EM runs a fixed number of iterations)."""
        self._check_fitted()
        self._add(history)
        before = reward_of(val, self.scores(val))
        saved = (self.mu0_.copy(), self.tau2_.copy(), self.W_.copy(),
                 getattr(self, "sigma2_", None), getattr(self, "prior_cov_", None))
        self._empirical_bayes(self.history_)
        if reward_of(val, self.scores(val)) < before:
            self.mu0_, self.tau2_, self.W_, sigma2, prior_cov = saved
            if sigma2 is not None:
                self.sigma2_ = sigma2
            if prior_cov is not None:
                self.prior_cov_ = prior_cov
            self._sync()
        return self

    # -------------------------------------------------------------- online
    def _add(self, history: Requests) -> None:
        history = self._padded(history)
        self.history_ = concat_requests(self.history_, history)
        self._refresh(self.history_, sorted(set(history.frame["user_id"])))

    def knows_user(self, user_id: str) -> bool:
        """Whether feedback of ``user_id`` is visible to the router (served users included)."""
        return user_id in self._upos

    def user_request_counts(self) -> pd.Series:
        """Visible requests per known user (served users included), index: user ids."""
        counts = self.history_.frame["user_id"].value_counts()
        return pd.Series([int(counts.get(u, 0)) for u in self.user_ids_],
                         index=list(self.user_ids_), name="requests")

    def add_user(self, history: Requests) -> None:
        """Make feedback visible (new users or new requests of known ones) and update those
        users' posteriors (their own rows, the prior fixed): no retraining."""
        self._check_fitted()
        self._add(history)

    def record_feedback(self, feedback: Requests) -> None:
        """A served request's feedback (a pick or utilities): the same online posterior update
        as :meth:`add_user`."""
        self.add_user(feedback)

    def add_llm(self, name: str, description: str, input_usd_per_m: float,
                output_usd_per_m: float, history: Requests | None = None) -> None:
        """Add a candidate LLM without retraining: its attributes per task are the population's
        (mean quality over the LLMs; cost scaled from the LLM of the nearest price), its one-hot
        weight starts at the prior's 0; with ``history`` (over the extended LLM list) its
        attributes come from those requests' bank columns and the users' posteriors update."""
        self._check_fitted()
        if name in self.feats.llms:
            raise ValueError(f"LLM {name!r} is already a candidate")
        from prlib.features import llm_row
        llms = self.feats.llms + [name]
        if history is not None and history.llms != llms:
            raise ValueError(f"history must be over the LLMs {llms}, got {history.llms}")
        price = np.expm1(self.feats.llm_x[:, -2:].numpy().astype(float)).mean(1)
        new_price = (input_usd_per_m + output_usd_per_m) / 2
        near = int(np.argmin(np.abs(np.log1p(price) - np.log1p(new_price))))
        col = self.table_[:, near:near + 1].copy()
        col[..., 0] = self.table_[..., 0].mean(1, keepdims=True)
        ratio = new_price / max(price[near], 1e-12)
        for j, fn in ((1, lambda v: v * ratio), (2, lambda v: v + np.log(max(ratio, 1e-12)))):
            raw = col[..., j] * self.attr_sd_[j] + self.attr_mean_[j]
            col[..., j] = (fn(raw) - self.attr_mean_[j]) / self.attr_sd_[j]
        old_d = self._d
        self.feats = replace(self.feats, llms=llms, llm_x=torch.cat(
            [self.feats.llm_x, llm_row(description, input_usd_per_m, output_usd_per_m)]),
            answer_x=None, answer_ok=None)
        self.n_llms, self.llms_ = len(llms), list(llms)
        self.table_ = np.concatenate([self.table_, col], 1)
        if self._d > old_d:  # a one-hot column for the new LLM: prior mean 0, mean variance
            self.mu0_ = np.append(self.mu0_, 0.0)
            self.tau2_ = np.append(self.tau2_, self.tau2_[len(BASE):].mean())
            if getattr(self, "prior_cov_", None) is not None:  # uncorrelated with the rest
                cov = np.zeros((old_d + 1, old_d + 1))
                cov[:old_d, :old_d] = self.prior_cov_
                cov[-1, -1] = self.tau2_[-1]
                self.prior_cov_ = cov
            self.W_ = np.hstack([self.W_, np.zeros((len(self.W_), 1))])
        self.history_ = self._padded(self.history_)
        if history is not None:
            t_idx = self._task_index(history.frame["task"].to_numpy())
            z = self._standardised(history)[:, -1]
            ok = history.candidates[:, -1]
            for t in np.unique(t_idx[ok]):
                m = ok & (t_idx == t)
                k = float(self.params["shrink"])
                self.table_[t, -1] = (z[m].sum(0) + k * self.table_[t, -1]) / (m.sum() + k)
            self._add(history)
        self._sync()

    # -------------------------------------------------------------- routing
    def _weights(self, user_ids) -> np.ndarray:
        """(n, d) posterior means of the users (the prior mean for unknown users)."""
        pos = self._upos
        idx = np.array([pos.get(u, -1) for u in user_ids], np.int64)
        return self._w_all[idx]  # -1 -> the last row, the prior mean

    def _raw_scores(self, requests: Requests) -> np.ndarray:
        """Expected utility (n, n_llms) of each LLM for each request's user."""
        f = requests.frame
        X = self._expand(self.table_[self._task_index(f["task"].to_numpy())])
        return np.einsum("nmd,nd->nm", X, self._weights(f["user_id"].to_numpy()))

    def user_weights(self) -> pd.DataFrame:
        """Each user's posterior mean weights (rows) per feature (columns), the prior's last."""
        cols = list(BASE) + (self.llms_ if self.params["features"] == "core+llm" else [])
        return pd.DataFrame(np.vstack([self.W_, self.mu0_]), index=list(self.user_ids_) +
                            ["(prior)"], columns=cols)

    # text routing (the serving path): a text without a task label gets the task whose training
    # queries it is closest to
    def _fit_task_centroids(self, train: Requests) -> None:
        """``task_centroids_`` (n_tasks, text_dim): the mean unit text embedding of each task's
        distinct training queries (a task without any: its description's embedding), rows in
        ``tasks_`` order. Only the serving path reads them (the tables take tasks from the
        bank)."""
        dim = self.feats.task_x.shape[1]
        f = train.frame
        first = ~f.duplicated("query_id").to_numpy()
        x = query_embeddings(self.feats, train.select(first))[:, :dim]
        x = F.normalize(torch.as_tensor(x), dim=1).numpy()
        t_idx = self._task_index(f["task"].to_numpy()[first])
        described = dict(zip(self.feats.tasks, self.feats.task_x.numpy()))
        rows = []
        for t, task in enumerate(self.tasks_):
            mine = x[t_idx == t]
            rows.append(mine.mean(0) if len(mine) else described.get(task, np.zeros(dim)))
        self.task_centroids_ = np.asarray(rows, np.float32)

    def _text_tasks(self, rows: torch.Tensor) -> list[str]:
        """The inferred task of each text's feature row (n, query_dim), all at once: the closest
        training-query centroid (a router saved before the centroids: task description)."""
        if len(rows) == 0:
            return []
        centroids = getattr(self, "task_centroids_", None)
        if centroids is None:
            names, anchors = self.feats.tasks, self.feats.task_x
        else:
            names, anchors = self.tasks_, torch.as_tensor(centroids)
        c = F.normalize(anchors.float(), dim=1)
        x = F.normalize(rows[:, :c.shape[1]].float(), dim=1)
        return [names[int(k)] for k in (x @ c.T).argmax(1)]

    def _text_task(self, row: torch.Tensor, task: str | None) -> str:
        """``task`` if given, else the one inferred from ``row`` (1, query_dim)."""
        return task if task is not None else self._text_tasks(row)[0]

    def text_scores_batch(self, user_ids: list[str], query_x: torch.Tensor,
                          tasks: list[str | None] | None = None) -> np.ndarray:
        """Scores (n, n_llms) for new query texts given their feature rows (n, query_dim)."""
        self._check_fitted()
        tasks = list(tasks) if tasks is not None else [None] * len(user_ids)
        unlabelled = [i for i, t in enumerate(tasks) if t is None]
        for i, task in zip(unlabelled, self._text_tasks(query_x[unlabelled].cpu())):
            tasks[i] = task
        X = self._expand(self.table_[self._task_index(tasks)])
        return np.einsum("nmd,nd->nm", X, self._weights(user_ids))

    def text_scores(self, user_id: str, query_text: str, task: str | None = None,
                    query_x: torch.Tensor | None = None) -> np.ndarray:
        """Scores (n_llms,) of every LLM for ``user_id`` and a new query text."""
        row = query_row(query_text) if query_x is None else query_x
        return self.text_scores_batch([user_id], row, [task])[0]

    def route_text(self, user_id: str, query_text: str, task: str | None = None) -> str:
        """The LLM picked for ``user_id`` and a new query text."""
        return self.feats.llms[int(np.argmax(self.text_scores(user_id, query_text, task)))]

    def add_text_feedback(self, user_id: str, query_text: str, utility: np.ndarray,
                          task: str | None = None, query_x: torch.Tensor | None = None,
                          query_id: str | None = None) -> str:
        """A user's feedback on a new query text (``utility`` (n_llms,), NaN = none; a pick is
        1 / 0): the user's posterior updates online. Returns the query id given to it."""
        self._check_fitted()
        utility = np.asarray(utility, dtype=float).reshape(1, -1)
        if utility.shape[1] != self.n_llms or np.isnan(utility).all():
            raise ValueError(f"utility must give feedback on at least one of the {self.n_llms} "
                             "LLMs (NaN = none)")
        row = (query_row(query_text) if query_x is None else query_x).cpu()
        task = self._text_task(row, task)
        qid = query_id or f"text-{len(self.history_)}"
        chosen = np.nan_to_num(utility, nan=-np.inf).argmax(1)
        req = Requests(pd.DataFrame({"user_id": [user_id], "query_id": [qid], "task": [task],
                                     "split": ["train"]}), self.llms_, utility, chosen)
        self.record_feedback(req)
        return qid

    # -------------------------------------------------------------- persistence
    def _rebuild(self) -> None:
        self.n_llms = len(self.llms_)
        self._sync()


@register
class V3PopulationOnly(PersonalizedRouterV3):
    """Ours without per-user weights: every user is routed with the population's (the prior
    mean learned from all users), so it shows what personalisation buys."""

    name = "ours without per-user weights (population only)"
    family = ABLATION

    def _weights(self, user_ids) -> np.ndarray:
        return np.broadcast_to(self.mu0_, (len(user_ids), len(self.mu0_)))


@register
class V3WithoutShrinkage(PersonalizedRouterV3):
    """Ours without the learned prior: each user's weights from their own feedback alone (a
    vague prior, 10,000 times the learned variance), so it shows what shrinkage buys."""

    name = "ours without shrinkage (each user alone)"
    family = ABLATION
    defaults = {**PersonalizedRouterV3.defaults, "prior_scale": 1e4}


@register
class V3DiagonalPrior(PersonalizedRouterV3):
    """Ours with a diagonal prior (independent weights, as the first v3): the users' weights
    do not move together, so it shows what learning the directions users differ in buys."""

    name = "ours with a diagonal prior (independent weights)"
    family = ABLATION
    defaults = {**PersonalizedRouterV3.defaults, "prior": "diagonal"}


#: What each half of ours buys (notebook 40).
V3_ABLATIONS = (V3PopulationOnly, V3WithoutShrinkage, V3DiagonalPrior)
