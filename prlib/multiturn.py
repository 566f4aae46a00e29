"""Notebook 90's experiments: multi-turn (MT-Bench) and single-turn (arena-bench-v1) rating
settings, routers compared on preference pairs, the turn-chain ablation (new users with k
ratings: :func:`prlib.studies.few_shot_users` with ``ours=GMTRouter``).

A setting here is an ordinary :class:`~prlib.experiment.Setting` with ``feedback="utility"``
(users reveal ratings), ``metric="pair_accuracy"``, the turns of one conversation kept in one
split (``query_groups``) and, for multi-turn data, each request carrying the user's ratings of the
previous turn (``previous_query``): what the user has already said in this conversation. All
users are SIMULATED (:mod:`prlib.simulate.multiturn`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from prlib.bank import Bank, parse_turn_query_ids, turn_bank
from prlib.data import load_bank
from prlib.experiment import Setting, setting_views, test_metric
from prlib.metrics import paired_difference, preference_pairs
from prlib.report import mean_std
from prlib.routers import (BestPerUserRouter, PerUserBradleyTerryRouter, PerUserKNNRouter,
                           PreviousTurnRouter, Router)
from prlib.simulate.judge import judge_scores
from prlib.simulate.multiturn import (CARRY, RATING_NOISE, conversation_maps, rating_preferences,
                                      rating_users)


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


def describe_setting(setting: Setting) -> dict:
    """Counts of a rating setting: users, conversations, turn queries, the largest turn, LLMs,
    ratings, requests (user, turn) and preference pairs (over all splits)."""
    inter = setting.preferences.interactions
    turns = setting.bank.queries.get("turn", pd.Series(1, index=setting.bank.queries.index))
    wide = inter.pivot_table(index=["user_id", "query_id"], columns="llm", values="utility")
    return {"setting": setting.name, "users": inter["user_id"].nunique(),
            "conversations": len(set((setting.query_groups or {}).values())),
            "turn queries": inter["query_id"].nunique(), "max turn": int(turns.max()),
            "LLMs": len(setting.bank.llms), "ratings": len(inter),
            "requests (user, turn)": len(wide),
            "preference pairs": len(preference_pairs(wide.to_numpy())[0])}


#: Baselines of the new-user study (:func:`prlib.studies.few_shot_users` with
#: ``ours=GMTRouter``): given the same k ratings of each new user.
NEW_USER_BASELINES: tuple[type[Router], ...] = (BestPerUserRouter, PerUserBradleyTerryRouter,
                                                PerUserKNNRouter, PreviousTurnRouter)


def turn_chain_ablation(setting: Setting, fitted_on: Mapping, fitted_off: Mapping,
                        seeds: Sequence[int]) -> pd.DataFrame:
    """Pair accuracy of GMTRouters fitted with and without the conversation so far
    (``{("GMTRouter", seed): router}``, e.g. :func:`~prlib.experiment.run_setting`'s
    ``fitted``) on each seed's test requests, all turns and later turns only: one row per
    (seed, variant) with columns ``all turns`` and ``turn 2 only``."""
    rows = []
    for seed in seeds:
        test = setting_views(setting, seed)[2]
        later = test.select(parse_turn_query_ids(test.frame["query_id"])[1] > 1)
        for label, fitted in (("history on", fitted_on), ("history off", fitted_off)):
            router = fitted[("GMTRouter", seed)]
            rows.append({"seed": seed, "variant": label,
                         "all turns": test_metric(setting, router, test),
                         "turn 2 only": test_metric(setting, router, later)})
    return pd.DataFrame(rows)


def turn_chain_table(per_seed: pd.DataFrame) -> pd.DataFrame:
    """:func:`turn_chain_ablation`'s rows as a table: per request set, mean ± std with and
    without history and the paired difference on - off with its 95 % CI."""
    rows = []
    on = per_seed[per_seed["variant"] == "history on"].set_index("seed")
    off = per_seed[per_seed["variant"] == "history off"].set_index("seed").reindex(on.index)
    for col in ("all turns", "turn 2 only"):
        d = paired_difference(on[col].to_numpy(), off[col].to_numpy())
        rows.append({"requests": col, "history on": mean_std(on[col].to_numpy()),
                     "history off": mean_std(off[col].to_numpy()),
                     "on - off": f"{d['mean']:+.3f}",
                     "ci95": (f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if d["n"] > 1
                              else "n/a"), "seeds": d["n"]})
    return pd.DataFrame(rows)


def turn_carry(setting: Setting) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How much turn 1 says about turn 2 in a multi-turn rating setting: ``(table, pairs)``.
    ``pairs``: one row per (user, conversation, LLM) rated at both turns, with its turn-1 and
    turn-2 ratings and the same user's mean rating of that LLM over their *other*
    conversations (both turns; NaN when there is none). ``table``: the Pearson r of the turn-2
    rating with each of the two predictors (on the rows where both exist)."""
    q = setting.bank.queries.set_index("query_id")
    inter = setting.preferences.interactions.assign(
        conversation=lambda d: d["query_id"].map(q["conversation"]),
        turn=lambda d: d["query_id"].map(q["turn"]))
    pairs = inter.pivot_table(index=["user_id", "conversation", "llm"], columns="turn",
                              values="utility").dropna().rename(columns={1: "turn 1", 2: "turn 2"})
    per_conv = inter.groupby(["user_id", "conversation", "llm"])["utility"].agg(["sum", "count"])
    per_llm = per_conv.groupby(level=["user_id", "llm"]).sum()
    total = per_llm.reindex(pairs.index.droplevel("conversation")).to_numpy()
    own = per_conv.reindex(pairs.index).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        pairs["other conversations"] = (total[:, 0] - own[:, 0]) / (total[:, 1] - own[:, 1])
    ok = pairs["other conversations"].notna()
    table = pd.DataFrame([
        {"predictor of the turn-2 rating": "turn-1 rating, same conversation",
         "Pearson r": np.corrcoef(pairs.loc[ok, "turn 1"], pairs.loc[ok, "turn 2"])[0, 1]},
        {"predictor of the turn-2 rating": "the user's mean rating of that LLM in their other "
                                           "conversations",
         "Pearson r": np.corrcoef(pairs.loc[ok, "other conversations"],
                                  pairs.loc[ok, "turn 2"])[0, 1]}])
    table["rows"] = int(ok.sum())
    return table, pairs.reset_index()
