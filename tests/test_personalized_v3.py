"""PersonalizedRouter v3 on a tiny hand-made bank whose users differ in their quality / cost
trade-off: it learns the trade-off from picks alone (not pick frequencies), routes a user with
one pick like the population and a user with many like themselves, updates online, and saves."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from prlib import routers as R
from prlib.features import NodeFeatures
from prlib.metrics import routing_metrics
from prlib.requests import Requests, choice_only
from prlib.routers.base import Router

LLMS = ["small", "mid", "large"]
P_CORRECT = np.array([0.35, 0.6, 0.9])
PRICE = np.array([1.0, 2.0, 6.0])
N_Q = 300
#: p per user: three who value quality, one who values cost
USERS = {"q1": 0.95, "q2": 0.95, "q3": 0.95, "frugal": 0.3}


def feats() -> NodeFeatures:
    rng = np.random.default_rng(0)
    prices = np.log1p(np.stack([PRICE, 2 * PRICE], 1))
    return NodeFeatures([f"q{i:03d}" for i in range(N_Q)],
                        torch.tensor(rng.normal(size=(N_Q, 4)), dtype=torch.float32),
                        ["t0", "t1"], torch.tensor(rng.normal(size=(2, 3)), dtype=torch.float32),
                        LLMS, torch.tensor(np.hstack([rng.normal(size=(3, 384)), prices]),
                                           dtype=torch.float32))


def requests(users=USERS) -> Requests:
    """Every user asks every query; quality 0/1 drawn per (query, LLM), cost grows with the
    LLM's price; utility p * quality - (1 - p) * cost / max cost; the pick is a draw from
    softmax(utility / 0.05) (a little noise, as the benchmark's choice-only users)."""
    rng = np.random.default_rng(1)
    quality = (rng.random((N_Q, 3)) < P_CORRECT).astype(float)
    cost = PRICE * (1 + 0.3 * rng.random((N_Q, 1))) * 1e-4
    rows, util, q, c = [], [], [], []
    for i in range(N_Q):
        split = "train" if i < 0.6 * N_Q else "val" if i < 0.75 * N_Q else "test"
        for u, p in users.items():
            rows.append({"user_id": u, "query_id": f"q{i:03d}", "task": f"t{i % 2}",
                         "split": split})
            util.append(p * quality[i] - (1 - p) * cost[i] / cost.max())
            q.append(quality[i])
            c.append(cost[i])
    util = np.array(util)
    gumbel = -np.log(-np.log(rng.random(util.shape)))
    return Requests(pd.DataFrame(rows), LLMS, util, (util / 0.05 + gumbel).argmax(1),
                    np.array(q), np.array(c))


@pytest.fixture(scope="module")
def data():
    req = requests()
    return feats(), choice_only(req.split("train")), choice_only(req.split("val")), \
        req.split("test")


def of_user(req: Requests, user: str, n: int | None = None) -> Requests:
    rows = np.flatnonzero(req.frame["user_id"].to_numpy() == user)
    return req.select(rows[:n])


def fit_v3(f, train, val, **kw):
    return R.PersonalizedRouterV3(f, seed=0, loss="choice", **kw).fit(train, val)


def test_exactly_one_router_is_ours_and_v2_stays_as_an_ablation():
    assert [c.__name__ for c in R.registered("ours")] == ["PersonalizedRouterV3"]
    assert R.PersonalizedRouterV2 in R.registered("ablation")
    assert R.get_router("PersonalizedRouterV2") is R.PersonalizedRouterV2


def test_learns_the_trade_off_from_picks_not_pick_frequencies(data):
    """Users who value quality mostly *pick* the small LLM (whenever it happens to be right, it
    is the cheapest right answer), so a pick-frequency lookup sends them to small or mid; their
    expected utility is highest on large, which v3 infers from what each pick was chosen over."""
    f, train, val, test = data
    v3 = fit_v3(f, train, val)
    lookup = R.BestPerUserTaskRouter(f).fit(train, val)
    ours, base = (routing_metrics(test, r.route(test))["reward"] for r in (v3, lookup))
    assert ours > base + 0.03, (ours, base)
    picks = pd.Series(v3.route(test), index=test.frame["user_id"])
    assert (picks["q1"] == 2).mean() > 0.9 and (picks["frugal"] == 0).mean() > 0.9
    w = v3.user_weights()
    assert w.loc["frugal", "relative cost"] < w.loc["q1", "relative cost"]


def test_evidence_moves_a_user_from_the_population_to_themselves(data):
    """A frugal user's scores start at the population's (the prior mean: most users value
    quality) and move towards their own as their picks grow: 1 pick moves them less than half
    the way that all their picks do, and every further pick moves them further."""
    f, train, val, test = data
    req = requests({**USERS, "q4": 0.95, "q5": 0.95, "newbie": 0.3})
    tr, te = choice_only(req.split("train")), req.split("test")
    v3 = fit_v3(f, tr.select((tr.frame["user_id"] != "newbie").to_numpy()),
                choice_only(req.split("val")))
    newbie = of_user(tr, "newbie")
    asked = of_user(te, "newbie")

    def centred(s):
        return s - s.mean(1, keepdims=True)

    population = centred(v3.scores(asked.renamed("nobody-yet")))
    away, seen = [], 0
    for n in (1, 10, 40, len(newbie)):
        v3.add_user(newbie.select(np.arange(seen, n)))
        seen = n
        away.append(np.abs(centred(v3.scores(asked)) - population).mean())
    assert away[0] < away[-1] / 2 and np.all(np.diff(away) > 0), away
    assert (v3.route(asked) == 0).mean() > 0.9  # all picks: their own trade-off
    assert (v3.route(asked.renamed("nobody-yet")) != 0).mean() > 0.9  # not the population's


def test_add_user_and_record_feedback_update_routes_without_retraining(data):
    f, train, val, test = data
    v3 = fit_v3(f, train.select((train.frame["user_id"] != "frugal").to_numpy()), val)
    prior = (v3.mu0_.copy(), v3.tau2_.copy(), v3.table_.copy())
    new_test = of_user(test, "frugal").renamed("newcomer")
    before = v3.route(new_test)
    assert (before == 2).mean() > 0.9  # unknown: the population's choice
    v3.add_user(of_user(train, "frugal", 1).renamed("newcomer"))
    one = v3.scores(new_test)
    assert (one.argmax(1) == 2).mean() > 0.9  # one pick: still near the population
    v3.record_feedback(of_user(train, "frugal").select(np.arange(1, 180)).renamed("newcomer"))
    assert (v3.route(new_test) == 0).mean() > 0.9  # enough picks: their own trade-off
    for a, b in zip(prior, (v3.mu0_, v3.tau2_, v3.table_)):
        np.testing.assert_array_equal(a, b)  # the shared parts were not retrained
    assert "newcomer" in v3.user_weights().index


def test_save_load_round_trip_after_online_updates(data, tmp_path):
    f, train, val, test = data
    v3 = fit_v3(f, train, val, features="core+llm")
    v3.add_user(of_user(train, "frugal", 5).renamed("late"))
    users = test.frame["user_id"].to_numpy().copy()
    users[::3] = "late"
    mixed = replace(test, frame=test.frame.assign(user_id=users))
    loaded = Router.load(v3.save(tmp_path / "v3"), f)
    np.testing.assert_allclose(loaded.scores(mixed), v3.scores(mixed), rtol=1e-12, atol=1e-12)
    loaded.add_user(of_user(train, "frugal", 40).renamed("later"))
    v3.add_user(of_user(train, "frugal", 40).renamed("later"))
    np.testing.assert_allclose(loaded.scores(mixed.renamed("later")),
                               v3.scores(mixed.renamed("later")), rtol=1e-10, atol=1e-10)


def test_utility_feedback_recovers_each_users_best_and_a_new_llm_gets_population_features(data):
    f, *_ = data
    req = requests()
    v3 = R.PersonalizedRouterV3(f, seed=0).fit(req.split("train"), req.split("val"))
    test = req.split("test")
    picks = pd.Series(v3.route(test), index=test.frame["user_id"])
    assert (picks["q2"] == 2).mean() > 0.9 and (picks["frugal"] == 0).mean() > 0.9
    v3.add_llm("tiny", "A tiny model.", 0.1, 0.2)
    assert v3.n_llms == 4 and v3.table_.shape[1] == 4
    wide = test.with_llm_columns(LLMS + ["tiny"], lambda a: np.hstack([a, a[:, :1]]))
    s = v3.scores(wide)
    assert s.shape == (len(test), 4) and np.isfinite(s).all()
    # a tenth of the small LLM's price, as good on average: the frugal user's new favourite
    assert (pd.Series(s.argmax(1), index=test.frame["user_id"])["frugal"] == 3).mean() > 0.9


def test_a_text_without_a_task_gets_the_task_its_training_queries_are_closest_to(data, tmp_path):
    """The serving path (no task label): the task is inferred from the text's embedding by the
    closest task centroid of the training queries, so on a bank whose queries cluster by task
    (and whose task descriptions say nothing) ours scores an unlabelled test query exactly as
    the labelled one; the centroids survive save/load."""
    _, train, val, test = data
    rng = np.random.default_rng(3)
    centre = rng.normal(size=(2, 4)) * 3
    task_of = np.array([i % 2 for i in range(N_Q)])
    f = replace(feats(), query_x=torch.tensor(centre[task_of] + rng.normal(size=(N_Q, 4)),
                                              dtype=torch.float32))
    v3 = fit_v3(f, train, val)
    x = f.query_x[test.lookup("query_id", f.query_index)]
    truth = test.frame["task"].tolist()
    inferred = [v3._text_task(x[i:i + 1], None) for i in range(len(test))]
    assert np.mean(np.array(inferred) == np.array(truth)) > 0.95
    ok = np.array(inferred) == np.array(truth)
    users = test.frame["user_id"].tolist()
    np.testing.assert_allclose(v3.text_scores_batch(users, x)[ok],
                               v3.text_scores_batch(users, x, truth)[ok])
    loaded = Router.load(v3.save(tmp_path / "v3_tasks"), f)
    assert [loaded._text_task(x[i:i + 1], None) for i in range(len(test))] == inferred


def test_a_full_prior_learns_the_direction_users_differ_in_and_moves_sparse_users_along_it():
    """Forty users with all their picks and thirty with two or three each, whose trade-off p
    spreads over [0.1, 0.95]: a user who values quality more minds cost less, so their weight on
    quality grows as their (negative) weight on cost shrinks towards 0: the two move together.
    The full prior learns that (a strong positive correlation over users), and a sparse user
    moves along it: with two picks, scoring them with the prior's off-diagonals dropped loses
    reward; with three, the diagonal prior (independent weights, its own EM) loses reward."""
    rng = np.random.default_rng(5)
    dense = {f"d{i}": float(p) for i, p in enumerate(rng.uniform(0.1, 0.95, 40))}
    sparse = {f"s{i}": float(p) for i, p in enumerate(rng.uniform(0.1, 0.95, 30))}
    req = requests({**dense, **sparse})
    train, val, test = choice_only(req.split("train")), choice_only(req.split("val")), \
        req.split("test")
    user = train.frame["user_id"].to_numpy()
    asked = test.select(np.flatnonzero(np.isin(test.frame["user_id"], list(sparse))))

    def reward(router):
        return routing_metrics(asked, router.route(asked))["reward"]

    for picks in (2, 3):
        keep = np.isin(user, list(dense))
        for s in sparse:
            keep[np.flatnonzero(user == s)[:picks]] = True
        fitted = {prior: fit_v3(feats(), train.select(np.flatnonzero(keep)), val, prior=prior,
                                features="core") for prior in ("diagonal", "full")}
        full = fitted["full"]
        cov = full.prior_cov_  # features: quality, relative cost, log cost
        corr = cov[0, 1:] / np.sqrt(cov[0, 0] * np.diag(cov)[1:])  # quality vs cost weights
        assert corr.max() > 0.8, cov
        assert np.allclose(full.tau2_, np.diag(cov))
        got = {"full": reward(full), "diagonal": reward(fitted["diagonal"])}
        full.prior_cov_ = np.diag(np.diag(cov))  # the same variances, no directions
        full._refresh(full.history_, list(sparse))
        got["off-diagonals dropped"] = reward(full)
        if picks == 2:
            assert got["full"] > got["off-diagonals dropped"] + 0.006, got
        else:
            assert got["full"] > got["diagonal"] + 0.008, got
