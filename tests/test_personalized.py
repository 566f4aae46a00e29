"""prlib.hetero_graph + PersonalizedRouter (v1): personalisation, leakage, checkpoint selection,
persistence."""

import numpy as np
import pandas as pd
import pytest
import torch

from prlib import data
from prlib.bank import Bank
from prlib.features import node_features
from prlib.hetero_graph import build_graph, check_no_label_leak
from prlib.metrics import picks_vary_share, routing_metrics
from prlib.requests import (QuerySplit, Requests, RequestsError, build_requests,
                            concat_requests, split_queries)
from prlib.routers import PersonalizedRouter
from prlib.simulate import simulate_multi_cost


@pytest.fixture(scope="module")
def toy():
    """A hand-made bank: 'cheap' is mediocre and cheap, 'big' is good and costly, 'mid' between.
    Two users with opposite preferences p = 0.2 (cost) and p = 1.0 (quality)."""
    rng = np.random.default_rng(0)
    n = 240
    tasks = ["math", "chat"]
    q = pd.DataFrame({"query_id": [f"q{i:03d}" for i in range(n)],
                      "task": [tasks[i % 2] for i in range(n)],
                      "text": [f"{'solve the equation' if i % 2 == 0 else 'write a story about'} "
                               f"{i}" for i in range(n)], "turns": 1})
    llms = pd.DataFrame({"llm": ["cheap", "mid", "big"], "family": "toy",
                         "size_b": [7.0, 30.0, 70.0],
                         "input_usd_per_m": [0.1, 0.5, 2.0], "output_usd_per_m": [0.1, 0.5, 2.0],
                         "description": ["a small cheap model", "a mid-size model",
                                         "a large costly model"]})
    p_right = {"cheap": 0.3, "mid": 0.6, "big": 0.9}
    rows = [{"query_id": qid, "task": t, "llm": l, "quality": 0.5 * float(rng.random() < p_right[l])
             + 0.5 * p_right[l], "input_tokens": 100, "output_tokens": 512,
             "cost_usd": {"cheap": 1e-4, "mid": 5e-4, "big": 2e-3}[l]}
            for qid, t in zip(q["query_id"], q["task"]) for l in llms["llm"]]
    bank = Bank("toy", q, llms, pd.DataFrame(rows))
    prefs = simulate_multi_cost(bank, ps=(0.2, 1.0))
    split = split_queries(bank.queries["query_id"], seed=0)
    req = build_requests(prefs.interactions, bank, split)
    return bank, req, node_features(bank)


def test_splits_are_disjoint_by_query_and_seeded():
    ids = [f"q{i}" for i in range(100)]
    s = split_queries(ids, seed=3)
    assert len(s.train) == 70 and len(s.val) == 10 and len(s.test) == 20
    assert not (set(s.train) & set(s.val) or set(s.train) & set(s.test) or set(s.val) & set(s.test))
    assert split_queries(ids, seed=3) == s and split_queries(ids, seed=4) != s
    with pytest.raises(RequestsError):
        split_queries(["a", "b"])


def test_requests_of_one_query_share_a_split(toy):
    _, req, _ = toy
    assert req.frame.groupby("query_id")["split"].nunique().max() == 1


def test_no_label_of_a_hidden_request_reaches_message_passing(toy):
    _, req, feats = toy
    visible = req.frame["split"].eq("train").to_numpy()
    g = build_graph(req, feats, visible)
    check_no_label_leak(g, ~visible)
    # the check itself can fail: leak a label on purpose
    g["llm", "offered_to", "request"].edge_attr[:] = 1.0
    with pytest.raises(AssertionError, match="carry feedback"):
        check_no_label_leak(g, ~visible)



def test_leak_check_catches_a_hidden_request_that_is_also_visible(toy):
    """The same (user, query) as a hidden target and as visible context leaks its label."""
    _, req, feats = toy
    train = req.split("train")
    both = concat_requests(train.select(np.arange(40)), train.select(np.arange(30, 60)))
    hidden = np.arange(len(both)) >= 40  # rows 30-39 are hidden and visible at once
    with pytest.raises(AssertionError, match="also visible"):
        check_no_label_leak(build_graph(both, feats, ~hidden), hidden)
    check_no_label_leak(build_graph(both.select(np.r_[0:30, 40:70]), feats, np.arange(60) < 30),
                        np.arange(60) >= 30)


@pytest.mark.parametrize("rel", [("llm", "rated_in", "profile"), ("llm", "picked_by", "user")])
def test_leak_check_catches_a_hidden_request_in_an_aggregated_edge(toy, rel):
    _, req, feats = toy
    visible = req.frame["split"].eq("train").to_numpy()
    g = build_graph(req, feats, visible, use_utility=False)
    check_no_label_leak(g, ~visible)
    g[rel].source_request[0] = int(np.flatnonzero(~visible)[0])  # a hidden request's label
    with pytest.raises(AssertionError, match="report a hidden request"):
        check_no_label_leak(g, ~visible)


@pytest.mark.parametrize("feedback", [{}, {"use_utility": False, "loss": "choice"}],
                         ids=["utilities", "choices-only"])
def test_scores_do_not_depend_on_the_hidden_labels(toy, feedback):
    """Changing the labels of the predicted requests must not change their scores."""
    _, req, feats = toy
    router = PersonalizedRouter(feats, steps=50, eval_every=25, seed=0, **feedback).fit(
        req.split("train"), req.split("val"))
    test = req.split("test")
    before = router.scores(test)
    scrambled = test.select(np.arange(len(test)))
    scrambled.utility = -scrambled.utility  # not NaN: same candidates, opposite labels
    scrambled.chosen = np.zeros_like(scrambled.chosen)
    np.testing.assert_allclose(router.scores(scrambled), before, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def trained(toy):
    _, req, feats = toy
    router = PersonalizedRouter(feats, steps=400, eval_every=20, patience=20, seed=0)
    return router.fit(req.split("train"), req.split("val"))


def test_opposite_users_get_different_llms(toy, trained):
    _, req, _ = toy
    test = req.split("test")
    picks = trained.route(test)
    users = test.frame["user_id"].to_numpy()
    cheap_user = np.bincount(picks[users == "mc-00"], minlength=3)
    quality_user = np.bincount(picks[users == "mc-01"], minlength=3)
    assert cheap_user.argmax() == 0, cheap_user  # p = 0.2 mostly gets 'cheap'
    assert quality_user.argmax() == 2, quality_user  # p = 1.0 mostly gets 'big'
    # on the queries where the two oracle choices differ, the router's choices differ too
    df = test.frame.assign(pick=picks, oracle=test.chosen)
    differ = df.groupby("query_id")["oracle"].nunique() > 1
    share = (df.groupby("query_id")["pick"].nunique()[differ] > 1).mean()
    assert share > 0.8, share
    m = routing_metrics(test, picks)
    assert m["pct_oracle"] > 80, m


def test_checkpoint_is_the_validation_best(toy):
    """The weights kept after fit are those of the best validation check: re-scoring the
    validation requests as fit did gives the best recorded metric, not the last one (a high
    learning rate and short patience make the run stop after passing its best)."""
    _, req, feats = toy
    train, val = req.split("train"), req.split("val")
    router = PersonalizedRouter(feats, steps=300, eval_every=5, patience=2, lr=0.05, seed=0)
    log = router.fit(train, val).log_
    best = int(np.argmax(log.val_metric))
    assert log.best_step == log.step[best]
    assert log.val_metric[-1] < log.val_metric[best] - 1e-6, "precondition: stopped past its best"
    rng = np.random.default_rng(router.config.seed)  # the context sample fit drew first
    by_user = train.frame.groupby("user_id").indices
    ctx = np.concatenate([rng.permutation(r)[: 4 * router.config.context_per_user]
                          for r in by_user.values()])
    both = concat_requests(train.select(np.sort(ctx)), val)
    is_ctx = np.arange(len(both)) < len(ctx)
    router.model.eval()
    assert router._val_metric(both, is_ctx, val) == pytest.approx(log.val_metric[best], abs=1e-9)


def test_save_load_roundtrip_without_pickles(tmp_path, toy, trained):
    _, req, feats = toy
    folder = trained.save(tmp_path / "router")
    state = torch.load(folder / "model.pt", weights_only=True)  # tensors only
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    loaded = PersonalizedRouter.load(folder, feats)
    test = req.split("test")
    np.testing.assert_allclose(loaded.scores(test), trained.scores(test), rtol=1e-5, atol=1e-6)


def test_new_user_from_a_few_interactions(toy, trained):
    """add_user builds a user from k interactions without retraining."""
    _, req, _ = toy
    train, test = req.split("train"), req.split("test")
    with pytest.raises(KeyError, match="add_user"):
        trained.scores(test.select(test.frame["user_id"].eq("mc-00").to_numpy()).renamed("new"))
    for k, expected in [(10, 2)]:
        shots = train.select(np.flatnonzero(train.frame["user_id"].eq("mc-01").to_numpy())[:k])
        trained.add_user(shots.renamed("new-quality-user"))
        probe = test.select(test.frame["user_id"].eq("mc-01").to_numpy()).renamed(
            "new-quality-user")
        picks = trained.route(probe)
        assert np.bincount(picks, minlength=3).argmax() == expected


def test_route_text_for_a_known_user(trained):
    """A new query text routes like the same query asked as a request: the cost-minded user gets
    the cheap LLM, the quality-minded one the big one (as on the test split)."""
    cheap = trained.route_text("mc-00", "solve the equation 2x + 3 = 7", task="math")
    big = trained.route_text("mc-01", "solve the equation 2x + 3 = 7", task="math")
    assert (cheap, big) == ("cheap", "big")
    with pytest.raises(KeyError, match="add_user"):
        trained.route_text("nobody", "hello", task="chat")


def test_paper_users_on_llmrouter_personalise():
    """On the real LLMRouter bank (subsample), picks vary across the 9 paper users."""
    bank = data.load_bank("llmrouter")
    bank = bank.subset(query_ids=bank.queries["query_id"].sample(300, random_state=0))
    prefs = simulate_multi_cost(bank)
    req = build_requests(prefs.interactions, bank, split_queries(bank.queries["query_id"], seed=0))
    router = PersonalizedRouter(node_features(bank), steps=150, eval_every=25, seed=0).fit(
        req.split("train"), req.split("val"))
    test = req.split("test")
    picks = router.route(test)
    assert picks_vary_share(test, picks) > 0.05


def test_zero_layers_means_no_message_passing_and_no_personalisation(toy):
    """layers=0: users and profiles are featureless and hear nothing, so every user of a query
    gets the same scores; the message passing is what personalises."""
    _, req, feats = toy
    router = PersonalizedRouter(feats, layers=0, steps=40, eval_every=20, seed=0).fit(
        req.split("train"), req.split("val"))
    assert len(router.model.convs) == 0
    test = req.split("test")
    s = router.scores(test)
    by_query = pd.DataFrame(s).groupby(test.frame["query_id"].to_numpy()).std().fillna(0)
    assert by_query.to_numpy().max() < 1e-5
    assert picks_vary_share(test, s.argmax(1)) == 0.0


def test_add_llm_makes_a_new_candidate_routable(toy):
    _, req, feats = toy
    train, val, test = req.split("train"), req.split("val"), req.split("test")
    router = PersonalizedRouter(feats, steps=40, eval_every=20, seed=0).fit(train, val)
    with pytest.raises(ValueError, match="already"):
        router.add_llm("mid", "again", 0.5, 0.5)
    router.add_llm("new", "a brand-new large model", 1.0, 1.0)
    assert router.feats.llms == ["cheap", "mid", "big", "new"]
    # requests that offer the new LLM: extend the test set with a fourth candidate column
    util = np.hstack([test.utility, test.utility[:, 2:3]])
    offered = Requests(test.frame, router.feats.llms, util, test.chosen)
    s = router.scores(offered)
    assert s.shape == (len(test), 4) and np.isfinite(s[:, 3]).all()
    with pytest.raises(ValueError, match="history must be over the LLMs"):
        router.add_llm("newer", "x", 1.0, 1.0, history=test)
    assert router.feats.llms == ["cheap", "mid", "big", "new"]  # a refused call changes nothing


def test_choice_only_profiles_hear_one_pick_per_visible_request(toy):
    _, req, feats = toy
    visible = req.frame["split"].eq("train").to_numpy()
    g = build_graph(req, feats, visible, use_utility=False)
    check_no_label_leak(g, ~visible)
    rated_in = g["llm", "rated_in", "profile"]
    assert rated_in.edge_index.shape[1] == visible.sum()
    assert (rated_in.edge_attr[:, 1] == 1).all() and (rated_in.edge_attr[:, 2] == 0).all()
    picked = torch.as_tensor(req.chosen[visible])
    assert torch.equal(rated_in.edge_index[0], picked)
    picked_by = g["llm", "picked_by", "user"]  # users hear their visible picks directly
    assert torch.equal(picked_by.edge_index[0], picked)
    assert torch.equal(picked_by.edge_index[1], g.request_user[g.visible])
    g_util = build_graph(req, feats, visible)  # with utilities: every visible candidate
    assert ("llm", "picked_by", "user") not in g_util.edge_types
    assert g_util["llm", "rated_in", "profile"].edge_index.shape[1] == 3 * visible.sum()


def test_feedback_conv_dense_mean_equals_message_passing():
    """The dense ``C @ proj`` path gives the gathered messages' mean, gradients included, with
    duplicate edges and destinations that receive nothing (zeros)."""
    from prlib.routers.personalized import FeedbackConv

    torch.manual_seed(0)
    conv = FeedbackConv(8, 6, edge_dim=3)
    src = torch.randn(5, 8, requires_grad=True)
    dst = torch.zeros(40, 6)
    edge_index = torch.stack([torch.randint(0, 5, (300,)), torch.randint(0, 30, (300,))])
    edge_index = torch.cat([edge_index, edge_index[:, :20]], 1)  # duplicates count twice
    edge_attr = torch.rand(edge_index.shape[1], 3)
    dense = conv((src, dst), edge_index, edge_attr)
    (g_dense,) = torch.autograd.grad(dense.square().sum(), src)
    conv.dense_limit = 0  # force the message-passing path
    gathered = conv((src, dst), edge_index, edge_attr)
    (g_gathered,) = torch.autograd.grad(gathered.square().sum(), src)
    assert torch.allclose(dense, gathered, atol=1e-5)
    assert torch.allclose(g_dense, g_gathered, atol=1e-5)
    assert dense[30:].abs().max() == 0  # no incoming edge: no message


def test_build_requests_keeps_each_users_feedback_on_their_own_row():
    """Interactions in any order (a (user, query)'s rows apart): one request per (user, query)
    in order of first appearance, each LLM's utility and the pick on that request's row."""
    bank = Bank("toy", pd.DataFrame({"query_id": ["a", "b"], "task": "t", "text": ["x", "y"],
                                     "turns": 1}),
                pd.DataFrame({"llm": ["m1", "m2"], "family": "toy", "size_b": 1.0,
                              "input_usd_per_m": 1.0, "output_usd_per_m": 1.0,
                              "description": ["one", "two"]}),
                pd.DataFrame([{"query_id": q, "task": "t", "llm": m, "quality": 0.5,
                               "cost_usd": 0.1, "input_tokens": 1, "output_tokens": 1}
                              for q in "ab" for m in ("m1", "m2")]))
    inter = pd.DataFrame({"user_id": ["v", "u", "v", "u", "u", "v"],
                          "query_id": ["b", "a", "a", "b", "a", "b"],
                          "llm": ["m1", "m1", "m2", "m2", "m2", "m2"],
                          "utility": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                          "chosen": [False, False, True, True, True, True]})
    req = build_requests(inter, bank, QuerySplit(train=["a", "b"], val=[], test=[]))
    assert list(zip(req.frame["user_id"], req.frame["query_id"])) == [
        ("v", "b"), ("u", "a"), ("v", "a"), ("u", "b")]
    np.testing.assert_array_equal(req.utility, [[0.1, 0.6], [0.2, 0.5], [np.nan, 0.3],
                                                [np.nan, 0.4]])
    assert req.chosen.tolist() == [1, 1, 1, 1]
