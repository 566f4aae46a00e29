"""Every derived column pinned against a hand computation on a few hand-made rows: reward,
score, pct_oracle, performance, cost_usd, cost_per_1k, calls, accuracy, the multi-cost utility
and call cost, and the pair metrics."""

import numpy as np
import pandas as pd
import pytest

from prlib import routers as R
from prlib.bank import Bank
from prlib.experiment import Setting, run_setting, setting_views
from prlib.metrics import pairwise_metrics, picks_vary_share, routing_metrics
from prlib.requests import Requests
from prlib.routers import CheapestRouter
from prlib.simulate import simulate_multi_cost

NAN = np.nan


def two_requests() -> Requests:
    frame = pd.DataFrame({"user_id": ["a", "b"], "query_id": ["q1", "q1"],
                          "task": ["t", "t"], "split": ["test", "test"]})
    return Requests(frame, ["x", "y", "z"],
                    utility=np.array([[0.5, 0.2, NAN], [0.1, 0.4, 0.3]]),
                    chosen=np.array([0, 1]),
                    quality=np.array([[1.0, 0.0, NAN], [0.0, 1.0, 1.0]]),
                    cost=np.array([[0.01, 0.02, 0.03], [0.01, 0.02, 0.03]]),
                    call_cost=np.array([[0.05, 0.1, NAN], [0.05, 0.1, 0.2]]))


def test_routing_metrics_equal_the_hand_computation():
    req = two_requests()
    picks = np.array([1, 1])
    calls = np.array([[True, True, False], [False, True, False]])  # request 0 also called x
    m = routing_metrics(req, picks, calls)
    reward = ((0.2 - 0.05) + 0.4) / 2  # the thrown-away answer of x costs request 0 its call
    oracle, random = (0.5 + 0.4) / 2, ((0.5 + 0.2) / 2 + (0.1 + 0.4 + 0.3) / 3) / 2
    assert m["reward"] == pytest.approx(reward)
    assert m["oracle_reward"] == pytest.approx(oracle)
    assert m["random_reward"] == pytest.approx(random)
    # each (user, task) has one request here, so the ceiling is the oracle
    assert m["ceiling_reward"] == pytest.approx(oracle)
    assert m["score"] == pytest.approx(100 * (reward - random) / (oracle - random))
    assert m["pct_oracle"] == pytest.approx(100 * reward / oracle)
    assert m["accuracy"] == pytest.approx(0.5)  # request 1 picked what its user chose
    assert m["performance"] == pytest.approx((0.0 + 1.0) / 2)
    assert m["cost_usd"] == pytest.approx(((0.01 + 0.02) + 0.02) / 2)  # every call charged
    assert m["calls"] == pytest.approx(1.5)
    plain = routing_metrics(req, picks)
    assert plain["reward"] == pytest.approx((0.2 + 0.4) / 2) and plain["calls"] == 1.0
    assert plain["cost_usd"] == pytest.approx(0.02)


def test_the_ceiling_and_the_score_equal_the_hand_computation():
    """One user, one task, two queries: the ceiling routes both to the LLM with the best mean
    utility over the two (y: 0.4 against x: 0.3); the score runs random 0 .. ceiling 100."""
    frame = pd.DataFrame({"user_id": ["a", "a"], "query_id": ["q1", "q2"], "task": ["t", "t"],
                          "split": ["test", "test"]})
    req = Requests(frame, ["x", "y"], utility=np.array([[0.5, 0.2], [0.1, 0.6]]),
                   chosen=np.array([0, 1]))
    m = routing_metrics(req, np.array([0, 0]))
    ceiling, oracle, random, reward = (0.2 + 0.6) / 2, (0.5 + 0.6) / 2, 0.35, 0.3
    assert m["ceiling_reward"] == pytest.approx(ceiling)
    assert m["score"] == pytest.approx(100 * (reward - random) / (ceiling - random))
    assert m["score_oracle"] == pytest.approx(100 * (reward - random) / (oracle - random))
    ceiling_router = R.CeilingRouter.__new__(R.CeilingRouter)
    assert ceiling_router._raw_scores(req).argmax(1).tolist() == [1, 1]


def test_picks_vary_share_counts_queries_whose_picks_differ_across_users():
    req = two_requests()
    assert picks_vary_share(req, np.array([1, 1])) == 0.0
    assert picks_vary_share(req, np.array([0, 1])) == 1.0


def test_pair_metrics_equal_the_hand_computation():
    frame = pd.DataFrame({"user_id": ["a"], "query_id": ["q"], "task": ["t"], "split": ["test"]})
    req = Requests(frame, ["x", "y", "z"], np.array([[3.0, 1.0, 2.0]]), np.array([0]))
    m = pairwise_metrics(req, np.array([[0.9, 0.1, 0.1]]))
    # pairs (x>y, x>z, z>y): differences 0.8, 0.8, 0 (a tie counts one half)
    assert m["n_pairs"] == 3
    assert m["pair_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    # AUC over the pairs in both orientations: positives {.8, .8, 0}, negatives {-.8, -.8, 0}
    assert m["pair_auc"] == pytest.approx((3 + 3 + 2 + 0.5) / 9)


def test_multi_cost_utility_call_cost_and_the_run_rows_equal_the_hand_computation():
    """Two queries of one task, two LLMs: cost min-max normalised per task, utility = p *
    quality - (1 - p) * cost_norm, call_cost = (1 - p) * cost_norm; run_setting's cost_per_1k
    is 1,000 x the mean USD cost of the picks."""
    llms = pd.DataFrame({"llm": ["cheap", "dear"], "input_usd_per_m": [1.0, 10.0],
                         "output_usd_per_m": [1.0, 10.0], "description": ["c.", "d."]})
    rows = [{"query": f"question {i}", "llm": m, "task": "t", "quality": q,
             "output_tokens": 100 * (i + 1)}
            for i in range(6) for m, q in (("cheap", 0.2 + 0.1 * i), ("dear", 0.9))]
    bank = Bank.from_frame("hand", pd.DataFrame(rows), llms)
    prefs = simulate_multi_cost(bank, ps=[0.25])
    inter = prefs.interactions.merge(bank.bank[["query_id", "llm", "quality", "cost_usd"]],
                                     on=["query_id", "llm"])
    c = inter["cost_usd"]
    cost_norm = (c - c.min()) / (c.max() - c.min())
    np.testing.assert_allclose(inter["utility"], 0.25 * inter["quality"] - 0.75 * cost_norm)
    np.testing.assert_allclose(inter["call_cost"], 0.75 * cost_norm)
    best = inter.loc[inter.groupby("query_id")["utility"].idxmax(), "llm"]
    assert (inter.loc[best.index, "chosen"]).all() and inter["chosen"].sum() == 6

    setting = Setting("hand", bank, prefs, fractions=(0.5, 1 / 6, 1 / 3))
    row = run_setting(setting, [CheapestRouter], seeds=[0]).iloc[0]
    test = setting_views(setting, 0)[2]
    cheap = test.llms.index("cheap")
    assert row["cost_usd"] == pytest.approx(test.cost[:, cheap].mean())
    assert row["cost_per_1k"] == pytest.approx(1000 * test.cost[:, cheap].mean())
    assert row["reward"] == pytest.approx(test.utility[:, cheap].mean())
    assert row["n_test"] == len(test) == 2
