"""Tests of prlib.simulate: rewards, cost normalisation, the offline judge, the bench, the
contract."""

import json
import time

import numpy as np
import pandas as pd
import pytest

from prlib.bank import Bank
from prlib.simulate import (PAPER_PS, BenchConfig, Preferences, PreferencesError,
                            best_llm_diversity, check_p, choose, judge_scores,
                            multi_cost_reward, normalized_cost, personaroute_bench,
                            simulate_judge, simulate_multi_cost, style_features)


def tiny_bank(responses: bool = True) -> Bank:
    """2 tasks, 3 queries, 3 LLMs, hand-made numbers (q2's row for 'big' has NaN quality)."""
    queries = pd.DataFrame({"query_id": ["q0", "q1", "q2"], "task": ["a", "a", "b"],
                            "text": ["What is 2+2?", "Explain gravity.", "Tell a joke."],
                            "turns": 1})
    llms = pd.DataFrame({"llm": ["small", "mid", "big"], "family": "x", "size_b": [1.0, 7.0, 70.0],
                         "input_usd_per_m": 1.0, "output_usd_per_m": 1.0, "description": ""})
    rows = [  # query, task, llm, quality, cost
        ("q0", "a", "small", 0.5, 1.0), ("q0", "a", "mid", 0.8, 3.0), ("q0", "a", "big", 1.0, 5.0),
        ("q1", "a", "small", 0.0, 2.0), ("q1", "a", "mid", 0.6, 4.0), ("q1", "a", "big", 0.7, 9.0),
        ("q2", "b", "small", 0.2, 10.0), ("q2", "b", "mid", 0.9, 20.0),
        ("q2", "b", "big", np.nan, 30.0)]
    bank = pd.DataFrame(rows, columns=["query_id", "task", "llm", "quality", "cost_usd"])
    bank["input_tokens"], bank["output_tokens"] = 10, 10
    if responses:
        bank["response"] = ["4", "2 + 2 = 4. Step 1: add.", "",
                            "It pulls.", "Gravity is a force between masses.", None,
                            "Ha!", "Why did the chicken cross the road? To get to the other side!",
                            "A long joke."]
    return Bank("tiny", queries, llms, bank)


def test_cost_is_min_max_normalised_per_task():
    b = tiny_bank()
    nc = normalized_cost(b)
    # task a: costs 1..9 -> (c - 1) / 8; task b: costs 10..30 -> (c - 10) / 20
    expected = [0, 2 / 8, 4 / 8, 1 / 8, 3 / 8, 1.0, 0.0, 0.5, 1.0]
    np.testing.assert_allclose(nc.to_numpy(), expected)


def test_reward_formula_and_choices_on_hand_made_rows():
    b = tiny_bank()
    np.testing.assert_allclose(multi_cost_reward([0.8], [0.25], 0.6), [0.6 * 0.8 - 0.4 * 0.25])
    prefs = simulate_multi_cost(b, ps=[0.2, 1.0])
    # q2 has a NaN quality -> dropped and counted, never guessed
    assert prefs.meta["queries_dropped_nan_quality"] == 1
    assert set(prefs.interactions["query_id"]) == {"q0", "q1"}
    u = prefs.utility_matrix("mc-00")  # p = 0.2
    assert u.loc["q0", "mid"] == pytest.approx(0.2 * 0.8 - 0.8 * 0.25)
    assert u.loc["q1", "big"] == pytest.approx(0.2 * 0.7 - 0.8 * 1.0)
    ch = prefs.choices().set_index(["user_id", "query_id"])["chosen_llm"]
    assert ch[("mc-00", "q0")] == "small"  # 0.1 vs -0.04 vs -0.2
    assert ch[("mc-01", "q0")] == "big"    # p = 1: quality only
    assert ch[("mc-01", "q1")] == "big"
    assert "per task" in prefs.meta["cost_normalisation"]
    assert prefs.meta["simulated"] is True


def test_ties_go_to_the_cheaper_llm():
    u = np.array([[1.0, 1.0, 0.5]])
    assert choose(u, tie_break=np.array([[3.0, 2.0, 1.0]]))[0] == 1
    assert choose(u)[0] == 0


def test_noisy_choice_is_seeded_and_follows_softmax():
    u = np.tile([0.0, 1.0], (4000, 1))
    a = choose(u, 1.0, np.random.default_rng(0))
    b = choose(u, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert abs((a == 1).mean() - np.exp(1) / (1 + np.exp(1))) < 0.03


def test_paper_users_disagree_across_p_on_llmrouter(llmrouter_bank):
    b = llmrouter_bank
    prefs = simulate_multi_cost(b, PAPER_PS)
    share = best_llm_diversity(prefs)["share_differs"]
    tasks = dict(zip(b.queries["query_id"], b.queries["task"]))
    c = prefs.choices().assign(task=lambda d: d["query_id"].map(tasks))
    graded = c[c["task"] == "commongen"].groupby("query_id")["chosen_llm"].nunique()
    print(f"\nLLMRouter, 9 paper users: best LLM differs across p on {share:.1%} of "
          f"{b.queries.shape[0]} queries; on commongen (graded quality) {(graded > 1).mean():.1%}")
    # binary correctness makes the cheapest correct LLM best for every p on most queries;
    # the released reference code routes all users identically (0 %)
    assert share > 0.05
    assert (graded > 1).mean() > 0.5
    # the expensive tier is chosen more often as p grows
    expensive = c.merge(prefs.users[["user_id", "p"]])
    expensive = expensive.assign(exp=expensive["chosen_llm"].str.contains("51b|49b|70b"))
    rate = expensive.groupby("p")["exp"].mean().to_numpy()
    assert np.all(np.diff(rate) >= -1e-9) and rate[-1] > rate[0]


def test_bad_input_gives_clear_errors(llmrouter_bank):
    b = tiny_bank()
    with pytest.raises(PreferencesError, match=r"\[0, 1\]"):
        check_p([0.5, 1.2])
    with pytest.raises(PreferencesError, match=r"\[0, 1\]"):
        simulate_multi_cost(b, ps=[-0.1])
    with pytest.raises(PreferencesError, match="empty"):
        simulate_multi_cost(b, query_ids=[])
    with pytest.raises(PreferencesError, match="empty"):
        judge_scores(b, query_ids=[])
    small = llmrouter_bank.subset(query_ids=llmrouter_bank.queries["query_id"][:5])
    with pytest.raises(PreferencesError, match="no response texts.*multi_cost"):
        simulate_judge(small)
    with pytest.raises(PreferencesError, match="queries_per_user"):
        BenchConfig(queries_per_user=0)


@pytest.fixture(scope="module")
def arena_small(arena_bench_bank):
    from prlib.simulate import BENCH_LLMS

    q = arena_bench_bank.queries["query_id"][:6].tolist()
    return arena_bench_bank.subset(query_ids=q, llms=list(BENCH_LLMS))


def test_judge_never_chooses_a_missing_text(arena_small):
    b = arena_small
    bank = b.bank.copy()
    bank["response"] = bank["response"].astype(object)
    # blank out the best-quality answer of every query (text missing or whitespace)
    best = bank.groupby("query_id")["quality"].idxmax()
    bank.loc[best[::2], "response"] = None
    bank.loc[best[1::2], "response"] = "   "
    holed = Bank(b.name, b.queries, b.llms, bank, b.meta)
    prefs = simulate_judge(holed, temperature=2.0, seed=3)  # much noise
    blanked = set(zip(bank.loc[best, "query_id"], bank.loc[best, "llm"]))
    got = set(zip(prefs.interactions["query_id"], prefs.interactions["llm"]))
    assert not blanked & got  # no missing text is even a candidate, so never chosen
    chosen = set(map(tuple, prefs.choices()[["query_id", "chosen_llm"]].to_numpy()))
    assert not blanked & chosen
    assert prefs.meta["dropped"]["responses_without_text"] == len(best)
    assert "stand-in" in prefs.meta["stand_in"]


def test_judge_with_tiny_bank_excludes_empty_and_none():
    prefs = simulate_judge(tiny_bank(), temperature=5.0, seed=1)
    bad = {("q0", "big"), ("q1", "big")}
    assert not bad & set(zip(prefs.interactions["query_id"], prefs.interactions["llm"]))


def test_style_features_are_interpretable():
    f = style_features(["Short.", "Step 1: compute 2 + 3 = 5.\nStep 2: then 5 * 2 = 10.",
                        "```python\nprint('hi')\n```", "- a\n- b\n# Title\n"])
    assert f.loc[0, "length"] < f.loc[1, "length"]
    assert f.loc[1, "steps"] > 0 and f.loc[1, "math"] > f.loc[0, "math"]
    assert f.loc[2, "code"] > 0.5 and f.loc[3, "structure"] == 1.0


def test_same_seed_same_users_and_contract_roundtrip(arena_small, tmp_path):
    cfg = BenchConfig(n_users=25, queries_per_user=4, seed=7)
    t = time.time()
    a = personaroute_bench(arena_small, cfg)
    b = personaroute_bench(arena_small, cfg)
    c = personaroute_bench(arena_small, BenchConfig(n_users=25, queries_per_user=4, seed=8))
    assert time.time() - t < 30
    for s in ("multi_cost", "judge"):
        pd.testing.assert_frame_equal(a[s].users, b[s].users)
        pd.testing.assert_frame_equal(a[s].interactions, b[s].interactions)
        assert not a[s].users["params"].equals(c[s].users["params"])
    mc, jd = a["multi_cost"], a["judge"]
    assert mc.users["p"].between(0, 1).all()
    assert set(mc.users["archetype"]) <= {"cost_oriented", "balanced", "performance_oriented"}
    assert np.allclose(jd.users.filter(like="w_").sum(axis=1), 1.0)
    json.loads(jd.users["params"].iloc[0])
    for p in (mc, jd):
        per = p.interactions.groupby(["user_id", "query_id"])["chosen"].sum()
        assert (per == 1).all()
        assert p.interactions.groupby("user_id")["query_id"].nunique().max() <= 4
        assert set(p.interactions["llm"]) <= set(arena_small.llm_names)
        back = Preferences.load(p.save(tmp_path / p.name))
        pd.testing.assert_frame_equal(back.interactions, p.interactions)
        pd.testing.assert_frame_equal(back.users, p.users)
        assert back.meta == json.loads(json.dumps(back.meta))
        assert back.strategy == p.strategy and back.bank_name == p.bank_name
    uid = jd.users["user_id"].iloc[0]
    wide = jd.utility_matrix(uid)
    assert wide.shape[0] == 4 and list(wide.columns) == list(arena_small.llm_names)
    assert list(jd.choices().columns) == ["user_id", "query_id", "chosen_llm"]


def test_contract_rejects_two_choices():
    users = pd.DataFrame({"user_id": ["u"], "strategy": "multi_cost", "archetype": "x",
                          "params": "{}"})
    inter = pd.DataFrame({"user_id": ["u", "u"], "query_id": ["q", "q"], "llm": ["a", "b"],
                          "utility": [1.0, 0.0], "chosen": [True, True]})
    with pytest.raises(PreferencesError, match="exactly one"):
        Preferences("x", "multi_cost", "tiny", users, inter)


# ------------------------------------------------------------------ a plausible persona judge
def gate_bank() -> Bank:
    """One question, four answers: two correct and short, one correct and detailed, one broken
    (GPT-4 1/10) that is the longest and most 'detailed' of all."""
    answers = {
        "terse": "Paris.",
        "short": "The capital of France is Paris.",
        "detailed": ("The capital of France is Paris. It has been the capital since the 10th "
                     "century, is the seat of government, and with about two million people "
                     "in the city proper it is also the country's largest city."),
        "broken": ("The capital of France is Lyon. First, Lyon is large; second, it is old; "
                   "third, it has many museums and rivers; then it has a famous cuisine; next "
                   "it has silk; finally it hosts many events, therefore it is the capital, "
                   "which gives the answer Lyon, as we get from all these many reasons above."),
    }
    q = pd.DataFrame({"query_id": ["q0"], "task": ["geo"], "turns": 1,
                      "text": ["What is the capital of France? Explain."]})
    llms = pd.DataFrame({"llm": list(answers), "family": "x", "size_b": 1.0,
                         "input_usd_per_m": 1.0, "output_usd_per_m": 1.0, "description": ""})
    quality = {"terse": 1.0, "short": 1.0, "detailed": 1.0, "broken": 0.0}
    rows = pd.DataFrame({"query_id": "q0", "task": "geo", "llm": list(answers),
                         "quality": [quality[m] for m in answers], "input_tokens": 10,
                         "output_tokens": 10, "cost_usd": 1e-5, "response": list(answers.values())})
    return Bank("gate", q, llms, rows)


def test_quality_gate_lets_style_choose_among_adequate_answers_only():
    """The detail-loving student picks the detailed correct answer; the playful persona, whose
    style the broken answer suits best, picks it only when the gate's penalty is switched off."""
    from prlib.simulate import QualityGate, judge_choices

    js = judge_scores(gate_bank())
    assert js.adequate[0].tolist() == [True, True, True, False]
    pick = lambda scores, p: scores.llms[judge_choices(scores, p, temperature=0.0)[0]]  # noqa: E731
    assert pick(js, "detailed_student") == "detailed"
    assert pick(js, "concise_news_editor") in {"terse", "short"}
    assert pick(js, "creative_humorous") != "broken"
    ungated = judge_scores(gate_bank(), gate=QualityGate(penalty=0.0))
    assert pick(ungated, "creative_humorous") == "broken"  # the gate is what keeps it away


@pytest.mark.outside_ci
def test_persona_checks_on_real_answers(arena_bench_bank):
    """On 40 real arena-bench questions with all 16 LLMs: no persona picks an answer GPT-4
    scored <= 2/10 where another scored >= 8/10 in more than 2 % of queries, and at least 8 of
    the 9 personas' picks differ from the neutral persona's the way their descriptions say."""
    from prlib.simulate import STYLE_SIGNATURES, persona_checks

    b = arena_bench_bank.subset(query_ids=arena_bench_bank.queries["query_id"][:40])
    checks = persona_checks(judge_scores(b), temperature=0.5, seed=0)
    assert (checks["bad_pick_rate"] < 0.02).all(), checks[["persona", "bad_pick_rate"]]
    nine = checks[checks["persona"].isin(STYLE_SIGNATURES)]
    assert len(nine) == 9 and nine["signature_holds"].sum() >= 8, nine


def test_live_verdicts_become_choice_preferences():
    from prlib.simulate import preferences_from_verdicts

    b = tiny_bank()
    verdicts = pd.DataFrame({
        "query_id": ["q0", "q1", "q0", "q2"], "persona": ["warm_relatable"] * 2 + ["neutral"] * 2,
        "judge_model": "m", "permutation": [["mid", "small"], ["small", "mid"], ["mid", "small"],
                                            ["mid", "small", "big"]],
        "choice_llm": ["small", "mid", "mid", None], "valid": [True, True, True, False]})
    prefs = preferences_from_verdicts(verdicts, b)
    assert prefs.meta["simulated"] is False and prefs.meta["invalid_verdicts_dropped"] == 1
    c = prefs.choices().set_index(["user_id", "query_id"])["chosen_llm"].to_dict()
    assert c == {("judge-warm_relatable", "q0"): "small", ("judge-warm_relatable", "q1"): "mid",
                 ("judge-neutral", "q0"): "mid"}
    assert set(prefs.interactions["llm"]) == {"small", "mid"}  # only the answers shown
    with pytest.raises(PreferencesError, match="lack columns"):
        preferences_from_verdicts(verdicts.drop(columns="permutation"), b)
