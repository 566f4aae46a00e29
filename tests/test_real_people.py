"""prlib.real_people on synthetic votes with and without a personal signal: models, metrics,
the person-shuffle null, routing for a person and new people."""

import numpy as np
import pandas as pd
import pytest

from prlib import human_logs, real_people as rp
from prlib.requests import split_queries

SEEDS = [0, 1]


def synthetic(personal: bool, n_people=16, n_questions=40, seed=0) -> pd.DataFrame:
    """Votes on 3 LLMs. With ``personal``, half of the people rank them 0 > 1 > 2 and the other
    half 2 > 1 > 0 (strongly); without, everybody ranks them 0 > 1 > 2 mildly."""
    rng = np.random.default_rng(seed)
    llms = ["x", "y", "z"]
    rows = []
    for u in range(n_people):
        theta = np.array([1.5, 0.0, -1.5]) if not personal else (
            np.array([2.0, 0.0, -2.0]) * (1 if u % 2 else -1))
        for q in rng.choice(n_questions, min(25, n_questions), replace=False):
            a, b = rng.choice(3, 2, replace=False)
            p = 1 / (1 + np.exp(-(theta[a] - theta[b])))
            r = rng.random()
            y = 1.0 if r < p * 0.85 else (0.5 if r < p * 0.85 + 0.15 else 0.0)
            rows.append({"user_id": f"u{u:02d}", "question_id": f"q{q:03d}", "llm_a": llms[a],
                         "llm_b": llms[b], "score_a": y})
    return pd.DataFrame(rows)


def test_vote_metrics_hand_computed():
    y = np.array([1.0, 0.0, 0.5, 1.0, 0.75])
    diff = np.array([0.3, 0.2, 5.0, 0.0, -0.1])
    m = rp.vote_metrics(y, diff, prob=np.array([0.8, 0.6, 0.5, 0.5, 0.4]))
    # decisive votes: 1 (right), 0 (wrong), 1 (zero difference: half), 0.75 (wrong); tie left out
    assert m["pair_accuracy"] == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    assert m["decisive"] == 4 and m["votes"] == 5
    ll = -np.mean([np.log(0.8), np.log(0.4), np.log(0.5), np.log(0.5),
                   0.75 * np.log(0.4) + 0.25 * np.log(0.6)])
    assert m["log_loss"] == pytest.approx(ll)
    assert np.isnan(rp.vote_metrics(y, diff)["log_loss"])


def test_population_strengths_recovered():
    v = rp.encode(synthetic(personal=False, n_people=40))
    theta = rp.fit_offsets(v, l2=0.01)[0]
    gaps = np.diff(theta)
    assert (gaps < -0.8).all(), theta  # x > y > z, by about 1.5 per step (ties shrink it)


def test_split_is_by_question_and_matches_split_queries():
    v = rp.encode(synthetic(personal=True))
    m = rp.split_masks(v, seed=3)
    qs = {s: set(v.question[mask]) for s, mask in m.items()}
    assert not (qs["train"] & qs["test"]) and not (qs["val"] & qs["test"])
    ref = split_queries(np.unique(v.question), rp.FRACTIONS, seed=3)
    assert qs["test"] == set(ref.test) and qs["train"] == set(ref.train)


def test_shuffle_keeps_strata():
    v = rp.encode(synthetic(personal=True))
    s = rp.shuffle_people(v, np.random.default_rng(0))
    assert (s.y == v.y).all() and (s.a == v.a).all() and (s.question == v.question).all()
    assert (s.user != v.user).any()
    lo, hi = np.minimum(v.a, v.b), np.maximum(v.a, v.b)
    key = pd.Series(list(zip(v.question, lo, hi)))
    for _, idx in key.groupby(key).indices.items():
        assert sorted(s.user[idx]) == sorted(v.user[idx])


@pytest.mark.parametrize("personal", [True, False])
def test_personal_gain_and_permutation(personal):
    v = rp.encode(synthetic(personal=personal))
    summary, null = rp.permutation_test(v, SEEDS, n_permutations=9)
    row = summary.set_index("statistic").loc[f"{rp.PERSON} log_loss"]
    assert len(null) == 9
    if personal:  # opposite tastes: the per-person model wins by far, beyond every shuffle
        assert row["observed gain"] > 0.1
        assert row["p-value"] == pytest.approx(0.1)  # the smallest p of 9 shuffles
    else:  # nobody differs: no gain to speak of, and no small p-value
        assert abs(row["observed gain"]) < 0.02
        assert row["p-value"] > 0.1


def test_known_people_rows():
    pairs = synthetic(personal=True)
    out = rp.known_people(rp.encode(pairs), SEEDS)
    assert set(out["model"]) == {rp.POPULATION, rp.PERSON, rp.KNN}
    acc = out.groupby("model")["pair_accuracy"].mean()
    assert acc[rp.PERSON] > acc[rp.POPULATION] + 0.2
    assert acc[rp.KNN] > acc[rp.POPULATION] + 0.2
    table = rp.paired_rows(out)
    assert table.set_index("model").loc[rp.PERSON, "log_loss vs population"].startswith("-")


def test_routing_for_a_person():
    out = rp.route_for_people(rp.encode(synthetic(personal=True)), SEEDS)
    rate = out.groupby("policy")["win_rate"].mean()
    assert rate["random LLM"] == pytest.approx(0.5)
    assert rate["the person's own best"] > rate["population's favourite"] + 0.2
    same = rp.route_for_people(rp.encode(synthetic(personal=False)), SEEDS)
    rate = same.groupby("policy")["win_rate"].mean()  # everybody's best is x: it wins most
    assert rate["population's favourite"] > 0.7
    assert rate["the person's own best"] == pytest.approx(rate["population's favourite"],
                                                           abs=0.05)


def test_new_people_k0_is_the_population():
    v = rp.encode(synthetic(personal=True, n_people=20))
    out = rp.new_people(v, SEEDS, shots=[0, 10], n_new=4)
    wide = out.pivot_table(index=["seed", "k"], columns="model", values="pair_accuracy")
    assert (wide.xs(0, level="k")[rp.PERSON] == wide.xs(0, level="k")[rp.POPULATION]).all()
    assert (wide.xs(0, level="k")[rp.PERSON_WEAK] == wide.xs(0, level="k")[rp.POPULATION]).all()
    assert (wide.xs(10, level="k")[rp.PERSON_WEAK] > wide.xs(10, level="k")[rp.POPULATION]).all()
    assert (wide.xs(10, level="k")[rp.PERSON] > wide.xs(10, level="k")[rp.POPULATION]).all()
    assert set(out["persons"]) == {4}


def test_bad_input():
    with pytest.raises(ValueError, match="lack columns"):
        rp.encode(pd.DataFrame({"user_id": ["u"]}))
    bad = synthetic(personal=False).assign(score_a=2.0)
    with pytest.raises(ValueError, match=r"score_a must lie in \[0, 1\]"):
        rp.encode(bad)


def test_sample_questions():
    pairs = synthetic(personal=False)
    some = human_logs.sample_questions(pairs, 5, seed=1)
    assert some["question_id"].nunique() == 5
    assert human_logs.sample_questions(pairs, 1000) is pairs


def test_router_setting_ratings_and_split():
    from prlib.bank import Bank
    from prlib.experiment import setting_views

    pairs = synthetic(personal=True, n_people=6, n_questions=12)
    # u99 on q900: x beats y by a grade (0.75), then loses to z as side b: x's rating is the
    # mean of 0.75 and 0, y's 0.25, z's 1
    hand = pd.DataFrame({"user_id": "u99", "question_id": "q900", "llm_a": ["x", "z"],
                         "llm_b": ["y", "x"], "score_a": [0.75, 1.0]})
    pairs = pd.concat([pairs, hand], ignore_index=True)
    questions = sorted(pairs["question_id"].unique())
    frame = pd.DataFrame([{"query_id": q, "query": f"text of {q}", "llm": m, "quality": np.nan,
                           "response": f"{m} answers {q}", "output_tokens": 5}
                          for q in questions for m in ("x", "y", "z")])
    llms = pd.DataFrame({"llm": ["x", "y", "z"], "input_usd_per_m": 1.0,
                         "output_usd_per_m": 1.0, "description": "an LLM"})
    bank = Bank.from_frame("toy", frame, llms)
    setting = rp.router_setting(pairs, bank, "toy people")
    inter = setting.preferences.interactions.set_index(["user_id", "query_id", "llm"])
    got = inter.loc[("u99", "q900")]
    assert got["utility"].to_dict() == pytest.approx({"x": 0.375, "y": 0.25, "z": 1.0})
    assert got["chosen"].to_dict() == {"x": False, "y": False, "z": True}
    assert setting.preferences.meta["simulated"] is False
    votes = rp.encode(pairs, bank.llm_names)
    for seed in (0, 5):
        views = setting_views(setting, seed)
        masks = rp.split_masks(votes, seed)
        for view, name in zip(views, ("train", "val", "test")):
            assert set(view.frame["query_id"]) == set(votes.question[masks[name]]), name
