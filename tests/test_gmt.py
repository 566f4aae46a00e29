"""GMTRouter, its graph, the pairwise metrics and the multi-turn data (notebook 90)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from gmt_toy import toy_world
from prlib.bank import Bank, turn_bank, turn_query_id
from prlib.metrics import pairwise_metrics, preference_pairs
from prlib.requests import Requests, split_queries, with_previous_turn
from prlib.routers import (BradleyTerryRouter, GMTRouter, PerUserBradleyTerryRouter,
                           PreviousTurnRouter, Router, registered)
from prlib.routers.gmt import NODE_TYPES, check_no_label_leak_gmt

FAST = {"steps": 40, "eval_every": 20, "hidden": 16, "heads": 2}


def _req(utility) -> Requests:
    u = np.asarray(utility, dtype=float)
    frame = pd.DataFrame({"user_id": ["u"] * len(u), "query_id": [f"q{i}" for i in range(len(u))],
                          "task": "t", "split": "test"})
    return Requests(frame, [f"m{j}" for j in range(u.shape[1])], u,
                    np.nanargmax(np.nan_to_num(u, nan=-np.inf), 1))


# ------------------------------------------------------------------ pairwise metrics
def test_preference_pairs_skip_ties_and_non_candidates():
    rows, better, worse = preference_pairs(np.array([[3.0, 1.0, 1.0, np.nan]]))
    pairs = sorted(zip(rows.tolist(), better.tolist(), worse.tolist()))
    assert pairs == [(0, 0, 1), (0, 0, 2)]  # (1, 2) tie skipped, LLM 3 no candidate


def test_pairwise_metrics_on_hand_made_cases():
    req = _req([[3.0, 1.0, 2.0]])  # pairs: 0>1, 0>2, 2>1
    assert pairwise_metrics(req, np.array([[0.9, 0.1, 0.5]]))["pair_accuracy"] == 1.0
    assert pairwise_metrics(req, np.array([[0.1, 0.9, 0.5]]))["pair_accuracy"] == 0.0
    # differences (correct orientation): 0-1: 0.8, 0-2: -0.4, 2-1: 0.4 -> 2 of 3 right;
    # AUC over both orientations: positives {0.8, -0.4, 0.4} vs negatives {-0.8, 0.4, -0.4}
    # = (3 + (1 + 0.5) + (2 + 0.5)) / 9 = 7 / 9
    m = pairwise_metrics(req, np.array([[0.5, 0.1, 0.9]]))
    assert m["pair_accuracy"] == pytest.approx(2 / 3)
    assert m["pair_auc"] == pytest.approx(7 / 9)
    assert m["n_pairs"] == 3
    const = pairwise_metrics(req, np.zeros((1, 3)))
    assert const["pair_accuracy"] == 0.5 and const["pair_auc"] == 0.5


def test_pairwise_auc_matches_scikit_learn_on_pair_differences():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    u, s = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    u[rng.random(u.shape) < 0.2] = np.nan
    req = _req(u)
    labels, diffs = [], []
    for i in range(30):  # every ordered pair of candidates, by hand
        for a in range(5):
            for b in range(5):
                if a != b and not np.isnan(u[i, a]) and not np.isnan(u[i, b]):
                    labels.append(int(u[i, a] > u[i, b]))
                    diffs.append(s[i, a] - s[i, b])
    m = pairwise_metrics(req, s)
    assert m["pair_auc"] == pytest.approx(roc_auc_score(labels, diffs))
    assert m["n_pairs"] == len(labels) // 2


# ------------------------------------------------------------------ multi-turn data
def _two_turn_bank() -> Bank:
    queries = pd.DataFrame({"query_id": ["c1", "c2"], "task": "writing",
                            "text": ["Write a poem.", "Explain rain."], "turns": 2,
                            "turn_texts": [["Write a poem.", "Now shorter."],
                                           ["Explain rain.", "For a child."]]})
    llms = pd.DataFrame({"llm": ["a", "b"], "family": "x", "size_b": 1.0,
                         "input_usd_per_m": 1.0, "output_usd_per_m": 2.0,
                         "description": ["model a", "model b"]})
    rows = [{"query_id": q, "task": "writing", "llm": m, "quality": np.nan, "input_tokens": 5,
             "output_tokens": 5, "cost_usd": 0.0, "response": f"{q}-{m}-1\n\n{q}-{m}-2",
             "response_turns": [f"{q}-{m}-1", f"{q}-{m}-2"]} for q in ("c1", "c2") for m in "ab"]
    return Bank("toy-mt", queries, llms, pd.DataFrame(rows))


def test_turn_bank_has_one_query_per_turn_with_that_turns_answer():
    tb = turn_bank(_two_turn_bank())
    q = tb.queries.set_index("query_id")
    assert list(q.index) == ["c1/t1", "c1/t2", "c2/t1", "c2/t2"]
    assert q.loc["c1/t2", "text"] == "Write a poem.\n\nNow shorter."
    assert q.loc["c1/t2", "turn_text"] == "Now shorter." and q.loc["c1/t2", "turn"] == 2
    resp = tb.bank.set_index(["query_id", "llm"])["response"]
    assert resp["c2/t2", "b"] == "c2-b-2" and resp["c2/t1", "a"] == "c2-a-1"
    with pytest.raises(ValueError, match="not multi-turn"):
        turn_bank(tb)


def test_group_split_keeps_the_turns_of_a_conversation_together():
    ids = [turn_query_id(f"c{c}", t) for c in range(30) for t in (1, 2)]
    groups = {q: q.split("/")[0] for q in ids}
    split = split_queries(ids, seed=3, groups=groups)
    side = split.of()
    for c in range(30):
        assert side[f"c{c}/t1"] == side[f"c{c}/t2"]
    assert len(split.test) > 0 and len(split.val) > 0


def test_previous_turn_carries_the_users_earlier_ratings_only():
    _, req = toy_world(n_users=2, n_conv=3)
    f = req.frame
    i2 = np.flatnonzero((f["user_id"] == "u1") & (f["query_id"] == "c2/t2"))[0]
    i1 = np.flatnonzero((f["user_id"] == "u1") & (f["query_id"] == "c2/t1"))[0]
    np.testing.assert_array_equal(req.previous[i2], req.utility[i1])
    assert np.isnan(req.previous[i1]).all()
    assert np.isnan(with_previous_turn(req, {}).previous).all()


def test_carry_makes_turn_two_depend_on_turn_one():
    from prlib.simulate.judge import JudgeScores
    from prlib.simulate.multiturn import rating_preferences, rating_users

    tb = turn_bank(_two_turn_bank())
    qids, llms = tb.queries["query_id"].tolist(), ["a", "b"]
    scores = np.array([[[1.0, 0.0], [0.0, 0.0], [0.0, 2.0], [0.0, 0.0]]] * 11)
    names = ["neutral"] + [p for p in
                           ("warm_relatable", "creative_humorous", "step_by_step_math",
                            "simple_direct_engineer", "detailed_student",
                            "precise_ir_specialist", "concise_news_editor",
                            "eloquent_literature_lover", "vivid_early_educator")]
    cand = np.ones((4, 2), bool)
    js = JudgeScores(names[:10], qids, llms, scores[:10], np.zeros((1, 4, 2)), cand,
                     np.full((4, 2), np.nan), pd.DataFrame(), False, {})
    users, w = rating_users(js, 2)
    util = {}
    for carry in (0.0, 0.5):
        p = rating_preferences(tb, js, users, w, 2, carry=carry, noise=0.0)
        util[carry] = p.interactions.set_index(["user_id", "query_id", "llm"])["utility"]
    u0 = users["user_id"][0]
    # turn 2 scores are 0: without carry it ties, with carry it inherits half of turn 1
    assert util[0.0][u0, "c1/t2", "a"] == util[0.0][u0, "c1/t2", "b"] == 0.0
    assert util[0.5][u0, "c1/t2", "a"] == pytest.approx(0.5 * util[0.5][u0, "c1/t1", "a"])
    assert util[0.5][u0, "c2/t2", "b"] == pytest.approx(1.0)


# ------------------------------------------------------------------ GMTRouter
@pytest.fixture(scope="module")
def fitted():
    feats, req = toy_world()
    train, val, test = (req.split(s) for s in ("train", "val", "test"))
    return feats, train, val, test, GMTRouter(feats, seed=0, **FAST).fit(train, val)


def test_gmt_is_registered_outside_the_single_turn_tables():
    assert GMTRouter not in registered()
    assert {GMTRouter, BradleyTerryRouter, PerUserBradleyTerryRouter,
            PreviousTurnRouter} <= set(registered(GMTRouter.family))


def test_every_node_type_is_updated_by_one_layer(fitted):
    feats, train, _, _, r = fitted
    g, _ = r.graph_for(train.select(np.arange(0)))
    net = r.net
    h0 = {t: F.relu(net.proj[t](g[t].x)) for t in NODE_TYPES}
    with torch.no_grad():
        out = net.convs[0](h0, g.edge_index_dict)
    for t in NODE_TYPES:
        assert out.get(t) is not None, f"{t} nodes get no output from the layer"
        # nodes with a rated interaction (queries of unseen conversations have none yet)
        linked = torch.zeros(g[t].num_nodes, dtype=torch.bool)
        for (_, _, dst), ei in g.edge_index_dict.items():
            if dst == t:
                linked[ei[1]] = True
        assert linked.float().mean() > 0.5, f"most {t} nodes have no incoming edge"
        # each linked node's state depends on its neighbours: perturb every other type's input
        h1 = {k: (v if k == t else v + 1.0) for k, v in h0.items()}
        with torch.no_grad():
            changed = (net.convs[0](h1, g.edge_index_dict)[t] - out[t]).abs().sum(1) > 1e-6
        assert changed[linked].all(), f"{int((~changed[linked]).sum())} {t} nodes hear no neighbour"


def test_no_rating_being_predicted_is_in_the_graph(fitted):
    feats, train, val, test, r = fitted
    check_no_label_leak_gmt(r.graph_for(test)[0], r.targets(test))  # test ratings absent
    rng = np.random.default_rng(0)
    inter = r.targets(train)
    for _ in range(5):  # training steps: no rating of a target's (user, conversation) visible
        batch = train.select(np.sort(rng.choice(len(train), 16, replace=False)))
        visible = r.training_context(batch, inter, rng)
        check_no_label_leak_gmt(r._graph(visible), r.targets(batch))
        hidden = set(zip(r.targets(batch).user.tolist(), r.targets(batch).conv.tolist()))
        shown = set(zip(visible.user.tolist(), visible.conv.tolist()))
        assert not hidden & shown, "a target's conversation is in its training graph"
        assert len(visible) < len(inter)  # a sampled subgraph, not the whole history


def test_the_conversation_so_far_reaches_turn_two_from_its_own_user_only(fitted):
    _, _, _, test, r = fitted
    turn2 = test.select(test.frame["query_id"].str.endswith("/t2").to_numpy())
    blind = Requests(turn2.frame, turn2.llms, turn2.utility, turn2.chosen, previous=None)
    assert not np.allclose(r.scores(turn2), r.scores(blind)), "the previous turn is not read"
    # another user's previous-turn ratings (labels of their own turn-1 requests) must not move
    # this user's scores
    mine = (turn2.frame["user_id"] == "u0").to_numpy()
    others = turn2.previous.copy()
    others[~mine] = others[~mine][::-1] + 3.0
    moved = Requests(turn2.frame, turn2.llms, turn2.utility, turn2.chosen, previous=others)
    np.testing.assert_allclose(r.scores(moved)[mine], r.scores(turn2)[mine], rtol=1e-5,
                               atol=1e-6)


def test_scores_do_not_depend_on_the_ratings_they_predict(fitted):
    _, _, _, test, r = fitted
    shuffled = Requests(test.frame, test.llms, test.utility[::-1].copy(), test.chosen,
                        previous=test.previous)
    shuffled.utility[np.isnan(test.utility)] = np.nan
    shuffled.utility[~np.isnan(test.utility)] = np.nan_to_num(shuffled.utility[
        ~np.isnan(test.utility)]) + 1.0
    np.testing.assert_allclose(r.scores(test), r.scores(shuffled), rtol=1e-5, atol=1e-6)
    # scoring both turns in one call gives turn 1 the scores it gets alone
    first = test.frame["query_id"].str.endswith("/t1").to_numpy()
    np.testing.assert_allclose(r.scores(test)[first], r.scores(test.select(first)), rtol=1e-5,
                               atol=1e-6)


def test_a_new_user_is_routed_from_k_ratings_without_retraining():
    feats, req = toy_world(n_users=7)
    train, val, test = (req.split(s) for s in ("train", "val", "test"))
    new = train.frame["user_id"] == "u6"
    val_known = val.select((val.frame["user_id"] != "u6").to_numpy())
    r = GMTRouter(feats, seed=0, **FAST).fit(train.select(~new.to_numpy()), val_known)
    weights = {k: v.clone() for k, v in r.net.state_dict().items()}
    # turn-1 requests: no previous turn, so only the added ratings can change their scores
    mine = test.select(((test.frame["user_id"] == "u6")
                        & test.frame["query_id"].str.endswith("/t1")).to_numpy())
    before = r.scores(mine)
    support = train.select(np.flatnonzero(new)[:4])
    r.add_user(support)
    after = r.scores(mine)
    _, ctx = r.graph_for(mine)
    seen = set(zip(ctx.user.tolist(), ctx.query.tolist(), ctx.llm.tolist()))
    added = r.targets(support)
    assert set(zip(added.user.tolist(), added.query.tolist(), added.llm.tolist())) <= seen
    assert np.isfinite(after[mine.candidates]).all()
    assert not np.allclose(before, after), "the k ratings did not reach the new user's state"
    for k, v in r.net.state_dict().items():
        assert torch.equal(v, weights[k]), f"add_user changed the weights ({k})"


def test_gmt_learns_the_toy_tastes_and_survives_save_and_load(fitted, tmp_path):
    feats, _, _, test, r = fitted
    assert pairwise_metrics(test, r.scores(test))["pair_accuracy"] > 0.7
    loaded = Router.load(r.save(tmp_path / "gmt"), feats)
    np.testing.assert_allclose(loaded.scores(test), r.scores(test), rtol=1e-5, atol=1e-6)


def test_pairwise_baselines_rank_as_their_definitions_say():
    feats, req = toy_world(n_users=4, n_conv=10)
    train, val, test = (req.split(s) for s in ("train", "val", "test"))
    bt = BradleyTerryRouter(feats, C=10.0).fit(train, val)
    mean = np.nanmean(train.utility, 0)
    assert np.argsort(bt.theta_).tolist() == np.argsort(mean).tolist()
    prev = PreviousTurnRouter(feats).fit(train, val)
    t2 = test.select(test.frame["query_id"].str.endswith("/t2").to_numpy())
    np.testing.assert_array_equal(prev.scores(t2), t2.previous)
    pu = PerUserBradleyTerryRouter(feats, C=1.0).fit(train, val)
    assert pairwise_metrics(test, pu.scores(test))["pair_accuracy"] > \
        pairwise_metrics(test, bt.scores(test))["pair_accuracy"]


def test_turn_carry_compares_turn_two_with_the_users_other_conversations():
    from types import SimpleNamespace

    from prlib.multiturn import turn_carry

    queries = pd.DataFrame({"query_id": ["a/t1", "a/t2", "b/t1", "b/t2"],
                            "conversation": ["a", "a", "b", "b"], "turn": [1, 2, 1, 2]})
    rows = [("u", "a/t1", "m", 1.0), ("u", "a/t2", "m", 2.0), ("u", "b/t1", "m", 3.0),
            ("u", "b/t2", "m", 5.0), ("u", "a/t1", "n", 0.0), ("u", "a/t2", "n", 1.0),
            ("u", "b/t1", "n", 2.0), ("u", "b/t2", "n", 2.0)]
    inter = pd.DataFrame(rows, columns=["user_id", "query_id", "llm", "utility"])
    setting = SimpleNamespace(bank=SimpleNamespace(queries=queries),
                              preferences=SimpleNamespace(interactions=inter))
    _, pairs = turn_carry(setting)
    other = pairs.set_index(["conversation", "llm"])["other conversations"]
    # the mean over the *other* conversation's two turns, never the rating it predicts
    assert other["a", "m"] == 4.0 and other["b", "m"] == 1.5
    assert other["a", "n"] == 2.0 and other["b", "n"] == 0.5


def test_ratings_fed_back_twice_still_score_and_fine_tune(fitted):
    import copy

    _, train, val, test, r = fitted
    again = copy.deepcopy(r)
    again.add_user(train.select(np.arange(6)))  # ratings that are already visible
    assert np.isfinite(again.scores(test)[test.candidates]).all()
    tuned = r.fine_tune(train.select(np.arange(6)), val, steps=4)
    assert tuned.log_.step[0] == 0 and tuned.log_.best_step is not None
