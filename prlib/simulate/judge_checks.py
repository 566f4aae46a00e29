"""Checks of the offline persona judge (notebook 20): agreement with the bank's real scores,
pick shares, persona agreement, the chosen answers' style profile and every persona's checks
(bad-pick rate, signature). A stand-in judge must behave like a plausible one: these say
whether it does."""

from __future__ import annotations

import numpy as np
import pandas as pd

from prlib.simulate.judge import (DEFAULT_TEMPERATURE, STYLE_FEATURES, STYLE_SIGNATURES,
                                  JudgeScores, judge_choices)


def judge_validation(js: JudgeScores, persona: str = "neutral",
                     temperature: float = DEFAULT_TEMPERATURE, seed: int = 0) -> dict:
    """Agreement of one persona with the bank's real quality scores (e.g. GPT-4 on arena-bench).

    Per query (candidates with a score, >= 2 of them): Spearman correlation of the persona's
    deterministic score with quality, averaged over queries; top-1 agreement: share of queries
    whose chosen answer has the query's highest quality (ties count as agreement); chance: the
    same share for a uniformly random pick (mean of n_top / n_candidates) and 1 / n_llms.
    """
    from scipy.stats import spearmanr

    choice = judge_choices(js, persona, temperature, seed)
    s = js.scores[js.persona_index(persona)]
    rhos, hits, chance = [], [], []
    for qi in range(len(js.query_ids)):
        m = js.candidate[qi] & ~np.isnan(js.quality[qi])
        if m.sum() < 2 or choice[qi] < 0 or not m[choice[qi]]:
            continue
        q = js.quality[qi, m]
        if np.ptp(q) > 0:
            rhos.append(spearmanr(s[qi, m], q).statistic)
        top = js.quality[qi] >= q.max() - 1e-12
        hits.append(bool(top[choice[qi]]))
        chance.append((top & m).sum() / m.sum())
    return {"persona": persona, "quality_term": js.use_quality, "queries": len(hits),
            "spearman_mean": float(np.nanmean(rhos)) if rhos else np.nan,
            "top1_agreement": float(np.mean(hits)) if hits else np.nan,
            "chance_tie_aware": float(np.mean(chance)) if chance else np.nan,
            "chance_1_over_n": 1.0 / len(js.llms)}


def persona_picks(js: JudgeScores, personas: list[str] | None = None,
                  temperature: float = DEFAULT_TEMPERATURE, seed: int = 0) -> dict[str, np.ndarray]:
    """Each persona's picks, ``{persona: (n_queries,) column index, -1 = no candidate}``. Every
    persona draws its own noise, seed + its index in ``js.personas``, so a persona's picks are the
    same whichever subset of personas is asked for (all persona reports read these)."""
    personas = js.personas if personas is None else list(personas)
    return {p: judge_choices(js, p, temperature, seed + js.personas.index(p)) for p in personas}


def agreement_matrix(js: JudgeScores, personas: list[str] | None = None,
                     temperature: float = DEFAULT_TEMPERATURE, seed: int = 0) -> pd.DataFrame:
    """Share of queries on which two personas pick the same answer, (n_personas x n_personas).
    Each persona's choices are its :func:`persona_picks`."""
    picks = persona_picks(js, personas, temperature, seed)
    personas = list(picks)
    ch = np.stack(list(picks.values()))
    ok = (ch >= 0).all(axis=0)
    m = (ch[:, None, ok] == ch[None, :, ok]).mean(axis=2)
    return pd.DataFrame(m, index=personas, columns=personas)


def chosen_profile(js: JudgeScores, personas: list[str] | None = None,
                   temperature: float = DEFAULT_TEMPERATURE, seed: int = 0) -> pd.DataFrame:
    """Mean raw statistics (words, relevance, style features, quality) of the answers each
    persona picks (its :func:`persona_picks`)."""
    return _profile(js, persona_picks(js, personas, temperature, seed))


def _profile(js: JudgeScores, picks: dict[str, np.ndarray]) -> pd.DataFrame:
    raw = js.raw.set_index(["query_id", "llm"])
    cols = ["quality", "words", "relevance"] + list(STYLE_FEATURES)
    out = []
    for p, ch in picks.items():
        keys = [(js.query_ids[qi], js.llms[c]) for qi, c in enumerate(ch) if c >= 0]
        out.append(raw.loc[keys, cols].mean().rename(p))
    return pd.DataFrame(out)


# ---------------------------------------------------------------------- persona checks
#: A bad pick: an answer the bank scores at most this (GPT-4 <= 2/10) while another answer of the
#: same query scores at least ``BAD_PICK_BEST`` (GPT-4 >= 8/10).
BAD_PICK_WORST, BAD_PICK_BEST = 1.0 / 9.0, 7.0 / 9.0


def persona_checks(js: JudgeScores, personas: list[str] | None = None,
                   temperature: float = DEFAULT_TEMPERATURE, seed: int = 0,
                   watch: tuple[str, ...] = ()) -> pd.DataFrame:
    """Per persona: the bad-pick rate (share of queries with an answer scored >= 8/10 whose pick
    scored <= 2/10; NaN without scores), the mean quality of its picks, its three most-picked
    LLMs, the share and rank of each LLM in ``watch`` (rank = n_llms if never picked), and its style
    signature
    (:data:`STYLE_SIGNATURES`) next to the neutral persona's; all from :func:`persona_picks`."""
    personas = js.personas if personas is None else list(personas)
    picks = persona_picks(js, list(dict.fromkeys(personas + ["neutral"])), temperature, seed)
    profile = _profile(js, picks)
    q = np.where(js.candidate, js.quality, np.nan)
    best = np.max(np.nan_to_num(q, nan=-np.inf), axis=1)  # -inf: no scored answer
    rows = []
    for p in personas:
        ch = picks[p]
        ok = np.flatnonzero(ch >= 0)
        picked = q[ok, ch[ok]]
        at_risk = best[ok] >= BAD_PICK_BEST - 1e-9
        bad = at_risk & (picked <= BAD_PICK_WORST + 1e-9)
        shares = pd.Series(np.array(js.llms)[ch[ok]]).value_counts(normalize=True)
        row = {"persona": p, "queries": len(ok),
               "bad_pick_rate": float(bad.sum() / at_risk.sum()) if at_risk.any() else np.nan,
               "picked_quality": float(np.nanmean(picked)) if np.isfinite(picked).any() else np.nan,
               "adequate_picks": float(js.adequate[ok, ch[ok]].mean()),
               "top_llms": ", ".join(f"{m} {v:.0%}" for m, v in shares.head(3).items())}
        for m in watch:
            row[f"share_{m}"] = float(shares.get(m, 0.0))
            row[f"rank_{m}"] = int(list(shares.index).index(m) + 1) if m in shares else len(js.llms)
        if p in STYLE_SIGNATURES:
            stat, sign = STYLE_SIGNATURES[p]
            mine, neutral = profile.loc[p, stat], profile.loc["neutral", stat]
            row.update(signature=f"{stat} {'more' if sign > 0 else 'less'} than neutral",
                       signature_value=float(mine), neutral_value=float(neutral),
                       signature_holds=bool(sign * (mine - neutral) > 0))
        rows.append(row)
    return pd.DataFrame(rows)


def pick_shares(js: JudgeScores, personas: list[str] | None = None,
                temperature: float = DEFAULT_TEMPERATURE, seed: int = 0) -> pd.DataFrame:
    """Share of each LLM among each persona's picks, (n_personas x n_llms), rows sum to 1."""
    out = {p: pd.Series(np.array(js.llms)[ch[ch >= 0]]).value_counts(normalize=True)
           for p, ch in persona_picks(js, personas, temperature, seed).items()}
    return pd.DataFrame(out).T.reindex(columns=js.llms).fillna(0.0)


