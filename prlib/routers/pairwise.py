"""Pairwise baselines of notebook 90 (family ``"pairwise (notebook 90)"``): Bradley-Terry
strengths from preference pairs, and the user's own rating of the previous turn.

Bradley-Terry: P(LLM b preferred to w) = sigmoid(theta_b - theta_w), fitted by scikit-learn's
L2-regularised logistic regression on the difference of one-hot LLM indicators of every training
preference pair (:func:`prlib.metrics.preference_pairs`, both orientations, no intercept). The
global model pools every user (Elo's static limit); the per-user model adds a per-user strength
fitted the same way on that user's pairs alone, shrunk towards 0 by its regularisation
(``C``), so a user with few pairs falls back to the global strengths.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from prlib.metrics import preference_pairs
from prlib.requests import Requests
from prlib.routers.base import PAIRWISE, Router, col_nanmean, register


def bradley_terry(utility: np.ndarray, C: float) -> np.ndarray:
    """Bradley-Terry strengths (n_llms,) from the preference pairs of ``utility`` (n, n_llms);
    zeros when there is no pair."""
    n_llms = utility.shape[1]
    rows, b, w = preference_pairs(utility)
    if len(rows) == 0:
        return np.zeros(n_llms)
    x = np.zeros((len(rows), n_llms))
    x[np.arange(len(rows)), b] = 1.0
    x[np.arange(len(rows)), w] = -1.0
    lr = LogisticRegression(C=C, fit_intercept=False, max_iter=500)
    lr.fit(np.vstack([x, -x]), np.r_[np.ones(len(x)), np.zeros(len(x))])
    return lr.coef_[0]


@register
class BradleyTerryRouter(Router):
    """Global Bradley-Terry: one strength per LLM from every user's training preference pairs
    (logistic regression on pair differences); the same ranking for every user and query."""

    tags = frozenset({"pairwise"})
    name, family = "Bradley-Terry (global)", PAIRWISE
    selection = "grid on validation"
    defaults = {"C": 1.0}
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}

    def fit(self, train: Requests, val: Requests, *, progress: bool = False):
        self.theta_ = bradley_terry(train.utility, self.params["C"])
        return self

    def _raw_scores(self, requests: Requests) -> np.ndarray:
        return np.tile(self.theta_, (len(requests), 1))


@register
class PerUserBradleyTerryRouter(BradleyTerryRouter):
    """Per-user Bradley-Terry: global strengths plus each user's own strengths fitted on that user's
    pairs alone (L2-shrunk to 0, so sparse users fall back to the global ranking)."""

    tags = frozenset({"pairwise", "online"})
    name = "Bradley-Terry per user"
    #: Regularisation of the global strengths; the grid tunes the per-user ones (``C``).
    GLOBAL_C = 1.0

    def fit(self, train: Requests, val: Requests, *, progress: bool = False):
        self.theta_ = bradley_terry(train.utility, self.GLOBAL_C)
        self.user_theta_ = {}
        self.add_user(train)
        return self

    def add_user(self, history: Requests) -> None:
        """Fit (or refit) the per-user strengths of the users in ``history`` on it."""
        users = history.frame["user_id"].astype(str).to_numpy()
        for u in np.unique(users):
            own = history.utility[users == u]
            self.user_theta_[u] = bradley_terry(own, self.params["C"])

    def _raw_scores(self, requests: Requests) -> np.ndarray:
        zero = np.zeros(self.n_llms)
        own = np.stack([self.user_theta_.get(str(u), zero) for u in requests.frame["user_id"]]) \
            if len(requests) else np.zeros((0, self.n_llms))
        return self.theta_[None, :] + own


@register
class PreviousTurnRouter(Router):
    """The user's own rating of each LLM at the previous turn of this conversation (the conversation
    so far); at a first turn, or for an LLM not rated then, the user's mean training rating of that
    LLM (else the population's)."""

    tags = frozenset({"pairwise"})
    name, family = "Previous turn's rating (else user mean)", PAIRWISE

    def fit(self, train: Requests, val: Requests, *, progress: bool = False):
        u = train.utility
        self.theta_ = col_nanmean(u, fill=0.0)
        self.user_mean_ = {}
        users = train.frame["user_id"].astype(str).to_numpy()
        for user in np.unique(users):
            own = u[users == user]
            seen = ~np.isnan(own).all(0)
            mean = self.theta_.copy()
            mean[seen] = col_nanmean(own[:, seen])
            self.user_mean_[user] = mean
        return self

    def _raw_scores(self, requests: Requests) -> np.ndarray:
        base = np.stack([self.user_mean_.get(str(u), self.theta_)
                         for u in requests.frame["user_id"]]) if len(requests) \
            else np.zeros((0, self.n_llms))
        if requests.previous is None:
            return base
        return np.where(np.isnan(requests.previous), base, requests.previous)
