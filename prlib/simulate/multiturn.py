"""Multi-turn users (GMTRouter's setting): persona users who RATE every turn of a conversation.

SIMULATED. Each user mixes the persona judge's personas (:mod:`prlib.simulate.judge`, the
offline STAND-IN for an LLM-as-a-Judge, run on each turn's real answer texts) and rates the
answers of a few LLMs to each conversation they hold, turn by turn:

    rating_1(m) = s_1(m) + noise * e_1
    rating_t(m) = s_t(m) + carry * rating_{t-1}(m) + noise * e_t        (t >= 2)

where ``s_t(m)`` is the user's persona score of LLM m's answer at turn t (a mix of per-turn
z-scores with the quality gate), ``e`` is standard normal noise (seeded), and ``carry`` is how
much turn-1 experience carries into turn 2: a user who disliked an LLM's first answer weighs its
second one down. Within one conversation the user rates the same LLMs at every turn (each LLM
continues its own conversation: MT-Bench's turn-2 answers follow that LLM's own turn-1 answer).
These ratings are the routers' feedback (``feedback="utility"``) and the source of the test
pairs (:func:`prlib.metrics.preference_pairs`, ties skipped). With ``carry = 0`` turns are
independent; single-turn banks (arena-bench-v1) use the same users with one turn.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from prlib.bank import Bank
from prlib.personas import PERSONAS
from prlib.simulate.judge import STAND_IN_NOTE, JudgeScores
from prlib.simulate.multicost import interactions_frame
from prlib.simulate.preferences import Preferences, PreferencesError

CARRY = 0.5
RATING_NOISE = 0.5
RATING_NOTE = ("SIMULATED multi-turn ratings: rating_t(m) = persona score of LLM m's answer at "
               "turn t + carry x rating_(t-1)(m) + noise x N(0, 1); the persona scores come "
               "from the offline persona judge (a stand-in for an LLM-as-a-Judge)")


def rating_users(js: JudgeScores, n_users: int, seed: int = 0,
                 dirichlet_alpha: float = 0.3) -> tuple[pd.DataFrame, np.ndarray]:
    """``n_users`` rating users: the paper's nine personas first (one each), then seeded
    Dirichlet(``dirichlet_alpha``) mixtures of the nine (archetype: the dominant persona).
    Returns (users table, weights (n_users, n_personas of ``js``))."""
    nine = [p.name for p in PERSONAS]
    if n_users < 1:
        raise PreferencesError(f"n_users must be >= 1, got {n_users}")
    rng = np.random.default_rng([seed, 90])
    w9 = np.vstack([np.eye(len(nine))[: min(n_users, len(nine))],
                    rng.dirichlet(np.full(len(nine), dirichlet_alpha),
                                  size=max(0, n_users - len(nine)))])
    w = np.zeros((n_users, len(js.personas)))
    for k, name in enumerate(nine):
        w[:, js.persona_index(name)] = w9[:, k]
    dominant = [nine[k] for k in w9.argmax(1)]
    users = pd.DataFrame({
        "user_id": [f"mt-{i:03d}-{d}" for i, d in enumerate(dominant)],
        "strategy": "judge", "archetype": ["paper_persona"] * min(n_users, len(nine))
        + ["persona_mixture"] * max(0, n_users - len(nine)),
        "params": [json.dumps({"persona_weights": dict(zip(nine, np.round(r, 4).tolist()))})
                   for r in w9],
        "p": np.nan, "temperature": 0.0, "persona": dominant})
    return users, w


def rating_preferences(bank: Bank, js: JudgeScores, users: pd.DataFrame, weights: np.ndarray,
                       llms_per_conversation: int = 8, conversations_per_user: int | None = None,
                       carry: float = CARRY, noise: float = RATING_NOISE, seed: int = 0,
                       name: str | None = None) -> Preferences:
    """Ratings of ``users`` (weights (n_users, n_personas)) on ``bank``, turn by turn.

    ``bank``: a turn bank (:func:`prlib.bank.turn_bank`; queries with ``conversation`` and
    ``turn``) or a single-turn bank (each query its own conversation). Per user: a seeded sample
    of ``conversations_per_user`` conversations (default all), and in each ``llms_per_conversation``
    LLMs that answered every turn of it, rated at every turn (module docstring). ``utility`` =
    rating; ``chosen`` = the best-rated LLM of each (user, turn)."""
    if llms_per_conversation < 2:
        raise PreferencesError("llms_per_conversation must be >= 2 (pairs need two LLMs)")
    if noise < 0:
        raise PreferencesError(f"noise must be >= 0, got {noise}")
    q = bank.queries.set_index("query_id")
    conv = q["conversation"] if "conversation" in q else pd.Series(q.index, index=q.index)
    turn = q["turn"] if "turn" in q else pd.Series(1, index=q.index)
    qpos = {qid: i for i, qid in enumerate(js.query_ids)}
    missing = sorted(set(q.index) - set(qpos))
    if missing:
        raise PreferencesError(f"the judge scores lack queries {missing[:3]}; score the whole "
                               "bank (judge_scores(bank))")
    convs: dict[str, list[int]] = {}  # conversation -> query positions, by turn
    for qid in sorted(q.index, key=lambda x: (conv[x], turn[x])):
        convs.setdefault(str(conv[qid]), []).append(qpos[qid])
    conv_ids = sorted(convs)
    if conversations_per_user is not None and not 1 <= conversations_per_user <= len(conv_ids):
        raise PreferencesError(f"conversations_per_user must be in 1..{len(conv_ids)}, got "
                               f"{conversations_per_user}")
    rng = np.random.default_rng([seed, 91])
    cand = js.candidate
    rows, utils, chosen = [], [], []
    for w in np.asarray(weights, dtype=float):
        mixed = js.mixed(w)
        picked = (conv_ids if conversations_per_user is None else
                  [conv_ids[i] for i in np.sort(rng.choice(len(conv_ids), conversations_per_user,
                                                           replace=False))])
        r_u, u_u = [], []
        for c in picked:
            pos = convs[c]
            ok = np.flatnonzero(cand[pos].all(0))
            if len(ok) < 2:
                continue
            llms = rng.choice(ok, min(llms_per_conversation, len(ok)), replace=False)
            prev = np.zeros(len(llms))
            for t, p in enumerate(pos):
                rating = mixed[p, llms] + noise * rng.standard_normal(len(llms))
                if t > 0:
                    rating = rating + carry * prev
                row = np.full(cand.shape[1], np.nan)
                row[llms] = rating
                r_u.append(p), u_u.append(row)
                prev = rating
        util = np.array(u_u).reshape(-1, cand.shape[1])
        rows.append(np.array(r_u, dtype=int)), utils.append(util)
        chosen.append(np.nanargmax(util, 1) if len(util) else np.zeros(0, int))
    inter = []
    for uid, r, util, ch in zip(users["user_id"], rows, utils, chosen):
        m = np.zeros((len(js.query_ids), cand.shape[1]), bool)
        m[r] = ~np.isnan(util)
        block = interactions_frame([uid], [r], [np.nan_to_num(util)], [ch], m, js.query_ids,
                                   js.llms)
        inter.append(block)
    meta = {"stand_in": STAND_IN_NOTE, "ratings": RATING_NOTE, "carry": carry, "noise": noise,
            "llms_per_conversation": llms_per_conversation,
            "conversations_per_user": conversations_per_user, "seed": seed,
            "personas": js.personas, "dropped": js.dropped}
    return Preferences(name or f"ratings-{bank.name}", "judge", bank.name,
                       users.reset_index(drop=True), pd.concat(inter, ignore_index=True), meta)


def conversation_maps(bank: Bank) -> tuple[dict[str, str], dict[str, str]]:
    """``(query_groups, previous_query)`` of a turn bank for :class:`prlib.experiment.Setting`:
    each turn query's conversation, and each later turn's previous turn."""
    q = bank.queries
    if "conversation" not in q:
        return {qid: qid for qid in q["query_id"]}, {}
    groups = dict(zip(q["query_id"], q["conversation"].astype(str)))
    by = {(c, int(t)): qid for qid, c, t in zip(q["query_id"], q["conversation"].astype(str),
                                                q["turn"])}
    previous = {qid: by[(c, int(t) - 1)] for (c, t), qid in by.items() if (c, int(t) - 1) in by}
    return groups, previous
