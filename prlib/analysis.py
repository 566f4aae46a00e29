"""What ours learned, read out of a fitted :class:`~prlib.routers.PersonalizedRouterV2` for
notebook 80: each user's (or profile's) state, LLM prototype users placed among them, the
LLMs' states, and the random-weight control."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import torch

from prlib.config import seed_everything, torch_threads
from prlib.requests import Requests
from prlib.routers.personalized_v2 import PersonalizedRouterV2


def with_random_weights(router: PersonalizedRouterV2) -> PersonalizedRouterV2:
    """A copy with the same visible history and a freshly initialised scorer: the control
    of notebook 80. Seeded by the router's seed + 1, so that it is another draw than the
    initialisation the trained weights started from."""
    router._check_fitted()
    other = copy.deepcopy(router)
    seed_everything(router.seed + 1)
    other.model = other._new_model()
    other._hq_cache = None
    return other


@torch.no_grad()
def user_states(router: PersonalizedRouterV2, batch_size: int = 4096,
                by: str = "user") -> tuple[list[str], np.ndarray]:
    """What the router learned about each user with visible feedback: ``(ids, states
    (n_ids, n_llms * H))``, the mean over the user's visible requests (each heard
    leave-one-query-out, as in training) of the message embedding of every LLM, LLMs
    concatenated (an LLM that is not a candidate contributes zeros). ``by="profile"``: one
    state per (user, task) profile with visible requests, ids ``"<user>|<task>"``."""
    if by not in ("user", "profile"):
        raise ValueError(f"by must be 'user' or 'profile', got {by!r}")
    router._check_fitted()
    router._eval()
    st, h = router.store_, router.history_
    with torch_threads(router.config.threads):
        msg = st.messages(h)
        cand = torch.as_tensor(~np.isnan(h.utility), dtype=torch.float32)
        u, _, tk = st.index(h)
        if by == "user":
            ids, group = list(st.users), torch.as_tensor(u)
        else:
            codes, group = np.unique(u * len(st.tpos) + tk, return_inverse=True)
            tasks = list(st.tpos)
            ids = [f"{st.users[c // len(tasks)]}|{tasks[c % len(tasks)]}" for c in codes]
            group = torch.as_tensor(group)
        sums = torch.zeros(len(ids), router.n_llms, router.config.hidden)
        for start in range(0, len(h), batch_size):
            sel = torch.arange(start, min(start + batch_size, len(h)))
            part = msg.select(sel)
            nb = router._neighbours(part)
            _, e = router.model.embed(*router._states(part.query, nb), router._on_device(part), nb)
            sums.index_add_(0, group[sel], (e.cpu() * cand[sel, :, None]))
        counts = torch.bincount(group, minlength=len(ids)).clamp(min=1)
    return ids, (sums / counts[:, None, None]).flatten(1).numpy()


def llm_prototype_states(router: PersonalizedRouterV2, n_queries: int = 50,
                         seed: int = 0) -> np.ndarray:
    """Each LLM placed among the user states: the :func:`user_states` state (n_llms,
    n_llms * H) of a prototype user who, on ``n_queries`` visible queries (seeded draw),
    gave every LLM the population's mean feedback there except that LLM, which gets the
    query's best mean plus its spread (the top by a clear margin): an average user who
    always prefers that LLM. With choice-only feedback (every value 1 or 0) the prototype
    picks that LLM every time.
    Computed on a copy: the router's own history does not change."""
    router._check_fitted()
    h = router.history_
    qids = h.frame["query_id"].to_numpy()
    visible = np.unique(qids)
    take = np.sort(np.random.default_rng(seed).choice(
        len(visible), min(n_queries, len(visible)), replace=False))
    chosen_q = visible[take]
    tasks = h.frame.drop_duplicates("query_id").set_index("query_id")["task"]
    rows = pd.Series(np.arange(len(h))).groupby(qids).apply(list)
    with warnings.catch_warnings():  # an LLM no user had as a candidate there: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.stack([np.nanmean(h.utility[rows[q]], 0) for q in chosen_q])  # (n, M)
    mean = np.where(np.isnan(mean), np.nanmin(mean, 1, keepdims=True), mean)
    top = np.nanmax(mean, 1) + np.maximum(np.ptp(mean, 1), 1e-3)
    seen = h.utility[~np.isnan(h.utility)]
    if np.isin(seen, (0.0, 1.0)).all():  # choice-only feedback: the prototype picks it
        mean, top = np.zeros_like(mean), np.ones(len(mean))
    frames, utilities, picks = [], [], []
    for j, llm in enumerate(router.feats.llms):
        frames.append(pd.DataFrame({"user_id": f"__prefers__{llm}", "query_id": chosen_q,
                                    "task": tasks.loc[chosen_q].to_numpy(),
                                    "split": "prototype"}))
        util = mean.copy()
        util[:, j] = top
        utilities.append(util)
        picks.append(np.full(len(chosen_q), j))
    proto = Requests(pd.concat(frames, ignore_index=True), router.feats.llms,
                     np.concatenate(utilities), np.concatenate(picks))
    other = copy.deepcopy(router)
    other.add_user(proto)
    ids, states = user_states(other)
    pos = {u: i for i, u in enumerate(ids)}
    return states[[pos[f"__prefers__{llm}"] for llm in router.feats.llms]]


@torch.no_grad()
def llm_states(router: PersonalizedRouterV2) -> np.ndarray:
    """The LLMs' states (n_llms, H) that the scorer pairs with each query's state."""
    router._check_fitted()
    return router.model.llm(router._llm_x).cpu().numpy()
