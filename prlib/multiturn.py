"""Notebook 90's experiments: multi-turn (MT-Bench) and single-turn (arena-bench-v1) rating
settings, routers compared on preference pairs, new users with k ratings, the turn-chain
ablation.

A setting here is an ordinary :class:`~prlib.experiment.Setting` with ``feedback="utility"``
(users reveal ratings), ``metric="pair_accuracy"``, the turns of one conversation kept in one
split (``query_groups``) and, for multi-turn data, each request carrying the user's ratings of the
previous turn (``previous_query``): what the user has already said in this conversation. All
users are SIMULATED (:mod:`prlib.simulate.multiturn`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from prlib.bank import Bank, turn_bank
from prlib.data import load_bank
from prlib.experiment import Setting, _new_router, setting_views
from prlib.metrics import pairwise_metrics
from prlib.requests import Requests, concat_requests
from prlib.routers import (BestPerUserRouter, GMTRouter, PerUserBradleyTerryRouter,
                           PerUserKNNRouter, PreviousTurnRouter, Router)
from prlib.simulate.judge import judge_scores
from prlib.simulate.multiturn import (CARRY, RATING_NOISE, conversation_maps, rating_preferences,
                                      rating_users)
from prlib.studies import of_users, split_users, support_requests


@dataclass(frozen=True)
class RatingConfig:
    """Sizes of a rating setting: ``n_users`` (the nine personas, then mixtures),
    ``llms_per_conversation`` rated per conversation, ``conversations`` (a seeded subsample of
    the bank's conversations; None = all), ``llms`` (None = all of the bank's), ``carry`` and
    ``noise`` of the ratings (:mod:`prlib.simulate.multiturn`)."""

    n_users: int = 24
    llms_per_conversation: int = 6
    conversations: int | None = None
    llms: tuple[str, ...] | None = None
    carry: float = CARRY
    noise: float = RATING_NOISE
    seed: int = 0


def rating_setting(bank: Bank | str, cfg: RatingConfig = RatingConfig(),
                   multi_turn: bool = True, name: str | None = None) -> Setting:
    """A pairwise rating setting on ``bank`` (a multi-turn bank such as ``"mt-bench"`` is cut
    into turns; a single-turn one is used as it is). ``multi_turn=False`` withholds the
    previous-turn ratings from the requests (the ablation's "history off")."""
    bank = load_bank(bank) if isinstance(bank, str) else bank
    if "turn_texts" in bank.queries and "response_turns" in bank.bank:
        bank = turn_bank(bank)
    if cfg.conversations is not None or cfg.llms is not None:
        groups, _ = conversation_maps(bank)
        keep = None
        if cfg.conversations is not None:
            convs = sorted(set(groups.values()))
            rng = np.random.default_rng([cfg.seed, 92])
            chosen = set(rng.choice(convs, min(cfg.conversations, len(convs)), replace=False))
            keep = [q for q, c in groups.items() if c in chosen]
        bank = bank.subset(query_ids=keep, llms=list(cfg.llms) if cfg.llms else None)
    js = judge_scores(bank, use_quality=bank.has_quality)
    users, w = rating_users(js, cfg.n_users, seed=cfg.seed)
    prefs = rating_preferences(bank, js, users, w, cfg.llms_per_conversation, carry=cfg.carry,
                               noise=cfg.noise, seed=cfg.seed)
    groups, previous = conversation_maps(bank)
    return Setting(name or f"ratings · {bank.name}", bank, prefs, feedback="utility",
                   metric="pair_accuracy", query_groups=groups,
                   previous_query=previous if multi_turn else None)


def without_history(setting: Setting) -> Setting:
    """The same setting with the previous-turn ratings withheld from every request."""
    return replace(setting, name=f"{setting.name} · history off", previous_query=None)


def _pair(setting: Setting, router: Router, test: Requests) -> float:
    return float(pairwise_metrics(test, router.scores(test))[setting.metric])


#: Baselines of the new-user study: given the same k ratings of each new user.
NEW_USER_BASELINES: tuple[type[Router], ...] = (BestPerUserRouter, PerUserBradleyTerryRouter,
                                                PerUserKNNRouter, PreviousTurnRouter)
GMT_NO_RETRAINING = "GMTRouter, k ratings added (no retraining)"


def few_shot_users_pairwise(setting: Setting, seeds: Sequence[int], ks: Sequence[int],
                            n_heldout: int, params: Mapping | None = None,
                            progress: bool = False, fitted: Mapping | None = None,
                            baseline_params: Mapping[str, dict] | None = None) -> pd.DataFrame:
    """New users on pairs: per seed, ``n_heldout`` users are held out of training; GMTRouter
    (trained on the others) gets ``k`` of each new user's training-split requests as visible
    ratings (``add_user``, no retraining) and scores their test requests; the baselines of
    :data:`NEW_USER_BASELINES` are fitted on the known users plus the same k. One row per
    (seed, k, method) with ``metric`` (the setting's pairwise metric on the new users' test
    requests), ``full`` (GMTRouter trained with every user, on the same requests) and
    ``pct_of_full``. ``fitted``: GMTRouters already trained with every user on this setting,
    by ``("GMTRouter", seed)`` (e.g. from :func:`~prlib.experiment.run_setting`), reused as the
    full model. ``baseline_params``: hyper-parameters per baseline class name (e.g. the tuned
    points, :meth:`~prlib.experiment.Tuning.params`), so they get the same tuning as GMTRouter."""
    params = dict(params or {})
    rows = []
    for seed in tqdm(seeds, desc="new users: seeds", disable=not progress):
        train, val, test = setting_views(setting, seed)
        known, new = split_users(train.frame["user_id"], n_heldout, seed)
        test_new = of_users(test, new)
        full = (fitted or {}).get(("GMTRouter", seed)) or \
            _new_router(GMTRouter, setting, seed, params).fit(train, val)
        full_metric = _pair(setting, full, test_new)
        tr_known, va_known = of_users(train, known), of_users(val, known)
        base = _new_router(GMTRouter, setting, seed, params).fit(tr_known, va_known)
        seen = set(base.history_.frame["user_id"]) & set(new)
        assert not seen, f"held-out users {sorted(seen)} are in the training history"
        for k in ks:
            support = support_requests(of_users(train, new), new, k, seed)
            ours = copy.deepcopy(base)
            if len(support):
                ours.add_user(support)
            out = [(GMT_NO_RETRAINING, _pair(setting, ours, test_new))]
            hist = concat_requests(tr_known, support) if len(support) else tr_known
            for cls in NEW_USER_BASELINES:
                b = _new_router(cls, setting, seed,
                                (baseline_params or {}).get(cls.__name__, {})).fit(hist, va_known)
                out.append((cls.name, _pair(setting, b, test_new)))
            rows += [{"seed": seed, "k": k, "method": m, "metric": v, "full": full_metric,
                      "pct_of_full": 100 * v / full_metric} for m, v in out]
    return pd.DataFrame(rows)
