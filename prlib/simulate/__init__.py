"""Simulated users: per (user, query) the utility of every candidate LLM and the user's choice.

Two strategies, as in PersonalizedRouter, plus the PersonaRoute-Bench generator:

- ``multi_cost`` (:mod:`prlib.simulate.multicost`): reward = p * quality - (1 - p) * cost_norm;
- ``judge`` (:mod:`prlib.simulate.judge`): an offline persona judge, a STAND-IN for an
  LLM-as-a-Judge, scoring real response texts;
- :mod:`prlib.simulate.bench`: 1,000 users from documented archetypes over 10 LLMs.

Every result is a :class:`Preferences` (the contract routers consume), saved under
``data/interim/preferences/<name>`` by notebook 20. All users are simulated.
"""

from prlib.simulate.bench import (BENCH_LLMS, JUDGE_ARCHETYPES, MULTI_COST_ARCHETYPES,
                                  BenchConfig, bench_summary, personaroute_bench)
from prlib.simulate.judge import (ALL_PERSONAS, DEFAULT_TEMPERATURE, PERSONA_WEIGHTS,
                                  STAND_IN_NOTE, STYLE_FEATURES, STYLE_SIGNATURES, TERMS,
                                  JudgeScores, QualityGate, judge_choices, judge_preferences,
                                  judge_scores, preferences_from_verdicts, simulate_judge,
                                  style_features)
from prlib.simulate.judge_checks import (agreement_matrix, chosen_profile, judge_validation,
                                         persona_checks, pick_shares)
from prlib.simulate.multicost import (COST_NOTE, PAPER_PS, best_llm_diversity, check_p,
                                      multi_cost_preferences, multi_cost_reward,
                                      normalized_cost, scorable_queries, simulate_multi_cost)
from prlib.simulate.preferences import (Preferences, PreferencesError, choose,
                                        preferences_dir)

__all__ = [
    "ALL_PERSONAS", "BENCH_LLMS", "COST_NOTE", "DEFAULT_TEMPERATURE", "JUDGE_ARCHETYPES",
    "MULTI_COST_ARCHETYPES", "PAPER_PS", "PERSONA_WEIGHTS", "STAND_IN_NOTE", "STYLE_FEATURES",
    "STYLE_SIGNATURES", "QualityGate", "persona_checks", "pick_shares",
    "preferences_from_verdicts", "TERMS", "BenchConfig", "JudgeScores", "Preferences",
    "PreferencesError", "agreement_matrix",
    "bench_summary", "best_llm_diversity", "check_p", "choose", "chosen_profile",
    "judge_choices", "judge_preferences", "judge_scores", "judge_validation",
    "multi_cost_preferences", "multi_cost_reward", "normalized_cost", "personaroute_bench",
    "preferences_dir", "scorable_queries", "simulate_judge", "simulate_multi_cost",
    "style_features",
]
