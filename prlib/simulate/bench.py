"""PersonaRoute-Bench: 1,000 simulated users over 10 LLMs of arena-bench-v1, both strategies.

The paper does not publish how its 1,000 users were generated; ours are drawn from documented
archetypes with individual variation, every draw seeded:

- multi-cost users: an archetype (cost-oriented, balanced, performance-oriented) drawn with fixed
  shares; the user's p ~ Beta(a, b) of the archetype; a personal choice temperature
  ~ Uniform(0, ``max_choice_temperature``) (0 = always the reward-optimal LLM);
- judge users: an archetype (focused: Dirichlet concentration 0.3 over the 9 personas, so one or
  two personas dominate; eclectic: concentration 2.0, a broad blend) and persona weights
  w ~ Dirichlet(alpha * 1_9); the user's judge scores are the w-weighted mix of persona scores;
- every user sees its own random sample of ``queries_per_user`` queries (without replacement).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from prlib.bank import Bank
from prlib.personas import PERSONAS
from prlib.simulate.judge import (DEFAULT_TEMPERATURE, JudgeScores, judge_preferences,
                                  judge_scores)
from prlib.simulate.multicost import multi_cost_preferences, scorable_queries
from prlib.simulate.preferences import Preferences, PreferencesError

#: 10 of arena-bench-v1's 16 judged LLMs spanning cost (~$0.00005 to ~$0.022 per query) and
#: quality (0.25 to 0.87), 7 families. Left out: llama-13b (an outlier far below all others),
#: vicuna-33b-v1.3 and llama-2-70b-chat's near twin in cost/quality, and older near-duplicates of
#: kept models (gpt-3.5-turbo-0613, claude-1, claude-2.0, gpt-4-0314).
BENCH_LLMS: tuple[str, ...] = (
    "palm-2-chat-bison-001", "mistral-7b-instruct-v0.1", "openchat-3.5", "starling-lm-7b-alpha",
    "mixtral-8x7b-instruct-v0.1", "llama-2-70b-chat", "gpt-3.5-turbo-1106", "claude-instant-1",
    "claude-2.1", "gpt-4-1106-preview")

MULTI_COST_ARCHETYPES: dict[str, dict] = {
    "cost_oriented": {"share": 0.3, "beta_a": 2.0, "beta_b": 5.0},
    "balanced": {"share": 0.3, "beta_a": 5.0, "beta_b": 5.0},
    "performance_oriented": {"share": 0.4, "beta_a": 5.0, "beta_b": 2.0},
}
JUDGE_ARCHETYPES: dict[str, dict] = {
    "focused": {"share": 0.5, "dirichlet_alpha": 0.3},
    "eclectic": {"share": 0.5, "dirichlet_alpha": 2.0},
}


@dataclass
class BenchConfig:
    """Every parameter of the PersonaRoute-Bench generator (printed by notebook 20)."""

    n_users: int = 1000
    queries_per_user: int = 100
    seed: int = 0
    llms: tuple[str, ...] = BENCH_LLMS
    multi_cost_archetypes: dict = field(default_factory=lambda: dict(MULTI_COST_ARCHETYPES))
    max_choice_temperature: float = 0.02
    judge_archetypes: dict = field(default_factory=lambda: dict(JUDGE_ARCHETYPES))
    judge_temperature: float = DEFAULT_TEMPERATURE
    judge_queries: int | None = None  # restrict the judge pool (embedding time); None = all

    def __post_init__(self) -> None:
        if self.n_users < 1:
            raise PreferencesError(f"n_users must be >= 1, got {self.n_users}")
        if self.queries_per_user < 1:
            raise PreferencesError(f"queries_per_user must be >= 1 (an empty query sample cannot "
                                   f"be simulated), got {self.queries_per_user}")
        for arch in (self.multi_cost_archetypes, self.judge_archetypes):
            if not np.isclose(sum(a["share"] for a in arch.values()), 1.0):
                raise PreferencesError(f"archetype shares must sum to 1: {arch}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["llms"] = list(self.llms)
        return d


def _archetypes(rng: np.random.Generator, arch: dict, n: int) -> np.ndarray:
    names = list(arch)
    return rng.choice(names, size=n, p=[arch[a]["share"] for a in names])


def sample_queries(rng: np.random.Generator, pool: list[str], user_ids: list[str],
                   k: int) -> dict[str, list[str]]:
    """Each user's own random sample of ``min(k, len(pool))`` queries, without replacement."""
    if not pool:
        raise PreferencesError("the query pool is empty: no query can be simulated")
    if k < 1:
        raise PreferencesError(f"queries per user must be >= 1, got {k}")
    k = min(k, len(pool))
    arr = np.asarray(pool, dtype=object)
    return {u: arr[rng.choice(len(pool), size=k, replace=False)].tolist() for u in user_ids}


def bench_multi_cost_users(cfg: BenchConfig) -> pd.DataFrame:
    """The multi-cost users of the bench (seeded by ``cfg.seed``)."""
    rng = np.random.default_rng([cfg.seed, 1])
    arch = _archetypes(rng, cfg.multi_cost_archetypes, cfg.n_users)
    a = np.array([cfg.multi_cost_archetypes[x]["beta_a"] for x in arch])
    b = np.array([cfg.multi_cost_archetypes[x]["beta_b"] for x in arch])
    p = rng.beta(a, b)
    temp = rng.uniform(0.0, cfg.max_choice_temperature, size=cfg.n_users)
    ids = [f"prb-mc-{i:04d}" for i in range(cfg.n_users)]
    return pd.DataFrame({"user_id": ids, "strategy": "multi_cost", "archetype": arch,
                         "params": [json.dumps({"p": float(x), "temperature": float(t)})
                                    for x, t in zip(p, temp)],
                         "p": p, "temperature": temp})


def bench_judge_users(cfg: BenchConfig, persona_names: list[str]) -> tuple[pd.DataFrame,
                                                                          np.ndarray]:
    """The judge users of the bench: (users table, weights (n_users, len(persona_names)))."""
    rng = np.random.default_rng([cfg.seed, 2])
    arch = _archetypes(rng, cfg.judge_archetypes, cfg.n_users)
    nine = [p.name for p in PERSONAS]
    w9 = np.stack([rng.dirichlet(np.full(len(nine), cfg.judge_archetypes[x]["dirichlet_alpha"]))
                   for x in arch])
    w = np.zeros((cfg.n_users, len(persona_names)))
    for k, name in enumerate(nine):
        w[:, persona_names.index(name)] = w9[:, k]
    ids = [f"prb-judge-{i:04d}" for i in range(cfg.n_users)]
    users = pd.DataFrame({"user_id": ids, "strategy": "judge", "archetype": arch,
                          "params": [json.dumps({"persona_weights": dict(zip(nine, np.round(r, 4)
                                                                               .tolist())),
                                                 "temperature": cfg.judge_temperature})
                                     for r in w9],
                          "p": np.nan, "temperature": float(cfg.judge_temperature),
                          "persona": [nine[k] for k in w9.argmax(axis=1)]})
    for k, name in enumerate(persona_names):
        users[f"w_{name}"] = w[:, k]
    return users, w


STRATEGIES = ("multi_cost", "judge")


def personaroute_bench(bank: Bank, cfg: BenchConfig | None = None,
                       scores: JudgeScores | None = None, progress: bool | None = None,
                       strategies: tuple[str, ...] = STRATEGIES) -> dict[str, Preferences]:
    """Both strategies of PersonaRoute-Bench on ``bank`` (arena-bench-v1): ``{"multi_cost": ...,
    "judge": ...}`` (or only those in ``strategies``). ``scores`` may pass precomputed judge
    scores of the bench's LLMs."""
    cfg = cfg or BenchConfig()
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown or not strategies:
        raise PreferencesError(f"strategies must be a non-empty subset of {STRATEGIES}, got "
                               f"{tuple(strategies)}")
    sub = bank.subset(llms=list(cfg.llms))
    base_meta = {"benchmark": "PersonaRoute-Bench (our generator; the paper's is unpublished)",
                 "generator": cfg.as_dict()}
    out: dict[str, Preferences] = {}
    if "multi_cost" in strategies:
        out["multi_cost"] = _bench_multi_cost(sub, cfg, base_meta)
    if "judge" in strategies:
        out["judge"] = _bench_judge(sub, cfg, base_meta, scores, progress)
    return out


def _bench_multi_cost(sub: Bank, cfg: BenchConfig, base_meta: dict) -> Preferences:
    # pool = queries scored for all 10 LLMs
    pool, dropped = scorable_queries(sub)
    users = bench_multi_cost_users(cfg)
    samples = sample_queries(np.random.default_rng([cfg.seed, 3]), pool, users["user_id"].tolist(),
                             cfg.queries_per_user)
    return multi_cost_preferences(sub, users, samples, seed=cfg.seed,
                                  name="personaroute-bench-multi_cost",
                                  extra_meta={**base_meta,
                                              "queries_per_user": min(cfg.queries_per_user,
                                                                      len(pool))})


def _bench_judge(sub: Bank, cfg: BenchConfig, base_meta: dict, scores: JudgeScores | None,
                 progress: bool | None) -> Preferences:
    # pool = (optionally the first judge_queries) queries with texts
    qids = sub.queries["query_id"].tolist()
    if cfg.judge_queries is not None:
        qids = qids[:cfg.judge_queries]
    js = scores or judge_scores(sub, query_ids=qids, progress=progress)
    if js.llms != list(cfg.llms):
        raise PreferencesError("the precomputed judge scores are not over the bench's LLMs; "
                               "compute them on bank.subset(llms=BENCH_LLMS)")
    jpool = [q for q, ok in zip(js.query_ids, js.candidate.any(axis=1)) if ok]
    jusers, w = bench_judge_users(cfg, js.personas)
    jsamples = sample_queries(np.random.default_rng([cfg.seed, 4]), jpool,
                              jusers["user_id"].tolist(), cfg.queries_per_user)
    return judge_preferences(js, jusers, w, jsamples, sub.name, seed=cfg.seed,
                             name="personaroute-bench-judge",
                             extra_meta={**base_meta,
                                         "queries_per_user": min(cfg.queries_per_user,
                                                                 len(jpool))})


def bench_summary(prefs: dict[str, Preferences]) -> pd.DataFrame:
    """Per strategy: users, queries, interactions, archetype counts, choice shares of the LLMs."""
    rows = []
    for strategy, p in prefs.items():
        c = p.choices()
        share = c["chosen_llm"].value_counts(normalize=True)
        arch = p.users["archetype"].value_counts()
        rows.append({"strategy": strategy, **{k: v for k, v in p.summary().items()
                                               if k not in ("name", "strategy", "bank")},
                     "archetypes": ", ".join(f"{a}: {n}" for a, n in arch.items()),
                     "distinct_choices_per_user": float(c.groupby("user_id")["chosen_llm"]
                                                        .nunique().mean()),
                     "top_choice": f"{share.index[0]} ({share.iloc[0]:.0%})",
                     "llms_ever_chosen": int(share.size)})
    return pd.DataFrame(rows)
