"""Every registered baseline on tiny hand-made data whose right answer is known; the registry,
save/load of every router and the shared trainer."""

import numpy as np
import pandas as pd
import pytest
import torch

from prlib import routers as B
from prlib.experiment import describe_improvement, improvement, results_table
from prlib.features import NodeFeatures
from prlib.metrics import picks_vary_share, routing_metrics
from prlib.requests import Requests, choice_only

BASELINES = [c for c in B.registered() if c.family != "ours"]

LLMS = ["small", "mid", "large"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one torch thread is faster and does not fight other jobs for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
N_Q = 60  # queries; cluster = query index parity; split by position 60/20/20 %


def make_feats(n_q: int = N_Q, dim: int = 8, seed: int = 0) -> NodeFeatures:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(2, dim)) * 3
    x = centers[np.arange(n_q) % 2] + rng.normal(size=(n_q, dim)) * 0.3
    answers = torch.tensor(rng.normal(size=(n_q, len(LLMS), 4)), dtype=torch.float32)
    return NodeFeatures([f"q{i:02d}" for i in range(n_q)], torch.tensor(x, dtype=torch.float32),
                        ["t0", "t1"], torch.tensor(rng.normal(size=(2, 4)), dtype=torch.float32),
                        LLMS,
                        torch.tensor(rng.normal(size=(3, 5)), dtype=torch.float32), answers,
                        torch.ones(n_q, len(LLMS), dtype=torch.bool))


def make_requests(utility_fn, users=("frugal", "quality"), n_q: int = N_Q,
                  drop_mid_every: int = 0, task_of=None) -> Requests:
    """utility_fn(user, cluster) -> 3 utilities; mid is no candidate on every k-th query.
    ``task_of`` (n_q,): each query's task index (default: its cluster, ``i % 2``)."""
    rows, util = [], []
    for i in range(n_q):
        split = "train" if i < 0.6 * n_q else "val" if i < 0.8 * n_q else "test"
        for u in users:
            task = i % 2 if task_of is None else task_of[i]
            rows.append({"user_id": u, "query_id": f"q{i:02d}", "task": f"t{task}",
                         "split": split})
            v = np.array(utility_fn(u, i % 2), dtype=float)
            if drop_mid_every and i % drop_mid_every == 0:
                v[1] = np.nan
            util.append(v)
    util = np.array(util)
    cost = np.where(np.isnan(util), np.nan, np.array([1.0, 2.0, 3.0]) * 1e-4)
    quality = np.where(np.isnan(util), np.nan, np.array([0.2, 0.5, 0.9]))
    return Requests(pd.DataFrame(rows), LLMS, util, np.nanargmax(util, 1), quality, cost)


def by_user(u, c):  # opposite users, no query effect; mid is best on average
    return [1.0, 0.8, 0.0] if u == "frugal" else [0.0, 0.8, 1.0]


def by_query(u, c):  # the same for everyone: cluster 0 -> small, cluster 1 -> large
    return [1.0, 0.3, 0.2] if c == 0 else [0.0, 0.3, 1.0]


def by_both(u, c):  # frugal: small / mid; quality: mid / large
    table = {("frugal", 0): [1.0, 0.5, 0.0], ("frugal", 1): [0.2, 1.0, 0.0],
             ("quality", 0): [0.0, 1.0, 0.5], ("quality", 1): [0.0, 0.2, 1.0]}
    return table[(u, c)]


def fit_route(cls, req, feats=None, **kw):
    feats = feats or make_feats()
    router = cls(feats, seed=0, **kw).fit(req.split("train"), req.split("val"))
    test = req.split("test")
    return router, test, router.route(test)


def test_cheapest_and_most_expensive():
    req = make_requests(by_user)
    for cls, want in [(B.CheapestRouter, 0), (B.MostExpensiveRouter, 2)]:
        _, _, picks = fit_route(cls, req)
        assert (picks == want).all(), cls.name


def test_best_single_and_per_user():
    req = make_requests(by_user)
    _, _, picks = fit_route(B.BestSingleRouter, req)
    assert (picks == 1).all()
    router, test, picks = fit_route(B.BestPerUserRouter, req)
    users = test.frame["user_id"].to_numpy()
    assert (picks[users == "frugal"] == 0).all() and (picks[users == "quality"] == 2).all()
    assert picks_vary_share(test, picks) == 1.0
    stranger = test.select(np.arange(2))
    stranger.frame["user_id"] = "nobody"  # unknown users fall back to the overall best
    assert (router.route(stranger) == 1).all()


def test_best_per_user_and_task():
    req = make_requests(by_both)  # here the task is the cluster
    router, test, picks = fit_route(B.BestPerUserTaskRouter, req)
    want = {("frugal", "t0"): 0, ("frugal", "t1"): 1, ("quality", "t0"): 1, ("quality", "t1"): 2}
    expected = [want[k] for k in zip(test.frame["user_id"], test.frame["task"])]
    np.testing.assert_array_equal(picks, expected)
    stranger = test.select(np.arange(2))
    stranger.frame["task"] = "unseen task"  # an unseen (user, task) falls back to the user's best
    np.testing.assert_array_equal(router.route(stranger), B.BestPerUserRouter(
        make_feats(), seed=0).fit(req.split("train"), req.split("val")).route(stranger))


def test_oracle_is_the_row_max_and_random_is_seeded():
    req = make_requests(by_both, drop_mid_every=3)
    router, test, picks = fit_route(B.OracleRouter, req)
    assert "label" in router.name
    np.testing.assert_allclose(test.utility[np.arange(len(test)), picks],
                               np.nanmax(test.utility, 1))
    assert routing_metrics(test, picks)["pct_oracle"] == pytest.approx(100.0)
    r1, _, p1 = fit_route(B.RandomRouter, req)
    _, _, p2 = fit_route(B.RandomRouter, req)
    assert (p1 == p2).all() and len(set(p1)) > 1


@pytest.mark.parametrize("cls", BASELINES, ids=lambda c: c.__name__)
def test_every_baseline_masks_non_candidates(cls):
    req = make_requests(by_both, drop_mid_every=3)
    kw = {"steps": 20} if "torch" in cls.tags else {}
    router, test, picks = fit_route(cls, req, **kw)
    s = router.scores(test)
    assert s.shape == (len(test), 3)
    assert np.isneginf(s[np.isnan(test.utility)]).all()
    assert not np.isnan(s).any()
    routing_metrics(test, picks)  # raises if a pick is not a candidate
    assert isinstance(router.name, str) and router.name


@pytest.mark.parametrize("cls", [B.KNNRouter, B.MLPRouter, B.MFRouter, B.GraphRouterGNN,
                                 B.RouterDC, B.HybridLLMRouter, B.FrugalGPTRouter],
                         ids=lambda c: c.__name__)
def test_query_routers_learn_the_query_rule(cls):
    """Cluster 0 -> small, cluster 1 -> large for everybody: a query-level router gets it."""
    req = make_requests(by_query)
    kw = {"steps": 100} if "torch" in cls.tags else {}
    _, test, picks = fit_route(cls, req, **kw)
    assert (picks == test.chosen).mean() >= 0.9, cls.name


@pytest.mark.parametrize("cls", [B.PerUserKNNRouter, B.UserMLPRouter], ids=lambda c: c.__name__)
def test_personal_routers_learn_user_and_query(cls):
    req = make_requests(by_both)
    kw = {"steps": 200} if "torch" in cls.tags else {}
    _, test, picks = fit_route(cls, req, **kw)
    assert (picks == test.chosen).mean() >= 0.9
    assert picks_vary_share(test, picks) == 1.0
    _, _, pooled = fit_route(B.KNNRouter, req)  # a pooled router cannot exceed ~1/2 here
    assert (pooled == test.chosen).mean() <= 0.75


def test_hybrid_uses_small_and_large_only():
    req = make_requests(by_query)
    router, _, picks = fit_route(B.HybridLLMRouter, req)
    assert (router.small_, router.large_) == (0, 2)
    assert set(picks) <= {0, 2}


def test_frugal_cascade_chain_and_one_hot_scores():
    req = make_requests(by_query)
    router, test, _ = fit_route(B.FrugalGPTRouter, req)
    assert router.chain_ == [0, 2]  # mid never beats small on mean utility: skipped
    s = router.scores(test)
    assert ((s == 1.0).sum(1) == 1).all()


def test_routerdc_contrasts_the_pick_with_every_other_answer_on_choice_feedback():
    """Choice-only utilities are one-hot: every candidate not picked must be a negative (a rank
    cut would keep an arbitrary fixed half of them), the pick the only positive."""
    router = B.RouterDC(make_feats())
    util = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    cand = torch.tensor([[True, True, True], [True, True, True], [True, False, True]])
    pos, neg = router._contrast_sets(cand, util)
    assert pos.tolist() == (util == 1).tolist()
    assert neg.tolist() == (cand & (util == 0)).tolist()
    graded = torch.tensor([[0.9, 0.5, 0.1, 0.0]])  # utilities: bottom half by value
    pos, neg = B.RouterDC(NodeFeatures(["q"], torch.zeros(1, 2), ["t"], torch.zeros(1, 2),
                                       list("abcd"), torch.zeros(4, 2)))._contrast_sets(
        torch.ones(1, 4, dtype=torch.bool), graded)
    assert pos.tolist() == [[True, True, False, False]]
    assert neg.tolist() == [[False, False, True, True]]


def test_reference_design_never_personalises():
    """Opposite users: the released design gives both the same LLM on every query."""
    req = make_requests(by_both)
    router, test, picks = fit_route(B.ReferenceDesignRouter, req, steps=30)
    assert picks_vary_share(test, picks) == 0.0
    s = router.scores(test)
    f = test.frame.assign(row=np.arange(len(test)))
    for _, rows in f.groupby("query_id")["row"]:
        np.testing.assert_allclose(s[rows.to_numpy()], s[rows.to_numpy()[:1]].repeat(len(rows), 0))
    x = router._query_x()  # the tiled one-hot: query i carries user i mod n_users
    assert x.shape[1] == make_feats().query_x.shape[1] + 2
    assert x[3, -2:].tolist() == [0.0, 1.0] and x[4, -2:].tolist() == [1.0, 0.0]


def test_choice_only_hides_utilities():
    req = make_requests(by_both, drop_mid_every=3)
    view = choice_only(req)
    assert np.array_equal(np.isnan(view.utility), np.isnan(req.utility))
    assert (np.nansum(view.utility, 1) == 1).all()
    assert (view.utility[np.arange(len(req)), req.chosen] == 1).all()


def test_results_table_and_paired_improvement():
    """Ours vs the strongest baseline is a paired difference per seed with a Student-t 95 % CI
    (here: differences 0.10, 0.10, 0.08 -> mean 0.0933, half-width t(0.975, 2) * s / sqrt(3))."""
    rows = []
    for seed, (ours, base, oracle) in enumerate([(0.5, 0.4, 0.9), (0.6, 0.5, 0.9),
                                                 (0.55, 0.47, 0.9)]):
        for name, fam, v in [("ours", "ours", ours), ("kNN", "non-personalised", base),
                             ("Oracle", "upper bound", oracle)]:
            rows.append({"router": name, "family": fam, "seed": seed, "reward": v})
    res = pd.DataFrame(rows)
    imp = improvement(res, "reward", "ours")
    assert imp["strongest_baseline"] == "kNN" and imp["verdict"] == "ours wins"
    half = 4.302653 * np.std([0.10, 0.10, 0.08], ddof=1) / np.sqrt(3)
    assert imp["diff_mean"] == pytest.approx(0.28 / 3)
    assert (imp["diff_ci_low"], imp["diff_ci_high"]) == pytest.approx(
        (0.28 / 3 - half, 0.28 / 3 + half), rel=1e-5)
    assert "beats" in describe_improvement(imp)
    tab = results_table(res, ["reward"], mark="reward")
    assert tab.loc[tab["router"] == "ours", "reward"].item() == "0.550 ± 0.041"
    assert tab.loc[tab["best"] != "", "router"].tolist() == ["ours"]  # the oracle never "best"
    res.loc[(res["router"] == "kNN") & (res["seed"] == 0), "reward"] = 0.7  # one seed flips
    assert improvement(res, "reward", "ours")["verdict"] == "tie"
    res.loc[res["router"] == "kNN", "reward"] = 0.8  # a baseline wins: the text says so
    imp = improvement(res, "reward", "ours")
    assert imp["verdict"] == "baseline wins" and "BEATS" in describe_improvement(imp)


# ------------------------------------------------------------------ registry and interface
def test_registry_lists_every_router_once_in_table_order():
    classes = B.registered()
    assert len({c.name for c in classes}) == len(classes)
    fams = [B.FAMILIES.index(c.family) for c in classes]
    assert fams == sorted(fams)
    assert B.PersonalizedRouterV3 in classes and B.get_router("kNN per user") is B.PerUserKNNRouter
    assert B.PersonalizedRouterV2 not in classes  # v2: an ablation row of ours since v3
    assert B.PersonalizedRouterV2 in B.registered("ablation")
    assert B.PersonalizedRouter not in classes  # v1 and the ablations: family "ablation" only
    assert B.PersonalizedRouter in B.registered("ablation")
    with pytest.raises(B.RouterError, match="no registered router"):
        B.get_router("nonsense")
    table = B.catalogue()
    assert (table["description"].str.len() > 20).all()


def test_unregistered_or_malformed_routers_are_errors():
    class Unregistered(B.Router):
        """Never registered."""
        name, family = "unregistered", "simple"

    with pytest.raises(B.RouterError, match="not a registered router"):
        B.get_router(Unregistered)
    with pytest.raises(B.RouterError, match="family"):
        B.register(type("BadFamily", (B.Router,), {"__doc__": "x", "name": "x",
                                                     "family": "magic"}))
    with pytest.raises(B.RouterError, match="taken"):
        B.register(type("Clash", (B.Router,), {"__doc__": "x", "name": "Random",
                                                 "family": "simple"}))
    with pytest.raises(B.RouterError, match="hyper-parameter"):
        B.KNNRouter(make_feats(), neighbours=3)


@pytest.mark.parametrize("cls", B.registered() + B.registered("ablation"), ids=lambda c: c.__name__)
def test_every_router_saves_and_loads_without_pickles(cls, tmp_path):
    req = make_requests(by_both, drop_mid_every=3)
    feats = make_feats()
    kw = {"steps": 20, "eval_every": 10} if "torch" in cls.tags else {}
    router = cls(feats, seed=0, **kw).fit(req.split("train"), req.split("val"))
    test = req.split("test")
    folder = router.save(tmp_path / cls.__name__)
    with np.load(folder / "arrays.npz", allow_pickle=False):
        pass  # a pickled object would refuse to load here
    for pt in folder.glob("*.pt"):
        torch.load(pt, weights_only=True)
    loaded = B.Router.load(folder, feats)
    assert type(loaded) is cls and loaded.params == router.params
    np.testing.assert_allclose(loaded.scores(test), router.scores(test), rtol=1e-6, atol=1e-9)
    other = NodeFeatures(feats.query_ids, feats.query_x, feats.tasks, feats.task_x,
                         ["a", "b", "c"], feats.llm_x)
    with pytest.raises(B.RouterError, match="trained on the LLMs"):
        B.Router.load(folder, other)


# ------------------------------------------------------------------ the shared trainer
def test_trainer_reloads_the_validation_best_weights():
    """The loss keeps pushing w up, validation is best at w = 1: the weights kept are those of
    the best check, not the last, and training went on past it before stopping."""
    torch.manual_seed(0)
    module = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        module.weight.zero_()
    w = lambda: module.weight[0, 0]  # noqa: E731
    log = B.train_module(module, lambda: (w() - 10.0) ** 2, lambda: -float((w() - 1.0) ** 2),
                         steps=200, lr=0.05, eval_every=1, patience=5)
    best = int(np.argmax(log.val_metric))
    assert log.step[-1] > log.best_step == log.step[best]  # stopped after passing the best
    assert -float((w().detach() - 1.0) ** 2) == pytest.approx(log.val_metric[best])
    assert log.val_metric[-1] < log.val_metric[best]


def test_trainer_refuses_a_validation_that_is_never_finite():
    module = torch.nn.Linear(1, 1)
    with pytest.raises(RuntimeError, match="finite"):
        B.train_module(module, lambda: module.weight.sum() ** 2, lambda: float("nan"),
                       steps=5, lr=0.1, eval_every=1, patience=2)


def test_graph_router_computes_its_head_only_for_the_rows_it_reads_and_maps_them_back():
    """GraphRouter's output head runs only for the queries whose scores are read: the hidden
    training queries of a step and the asked queries when scoring. Each must equal the full
    graph's prediction at that query, and each request must read its own query's row."""
    req = make_requests(by_query)
    router, test, _ = fit_route(B.GraphRouterGNN, req, steps=20)
    train = req.split("train")
    router._prepare(train)  # the step's lookups (a fit drops them)
    seed = 7
    loss = router._train_loss(train, np.random.default_rng(seed))
    hidden = np.random.default_rng(seed).random(len(router.train_q_)) < router.params["hide_share"]
    with torch.no_grad():
        full = router._graph_scores(router.train_q_, router.train_u_, ~hidden)
        part = router._graph_scores(router.train_q_, router.train_u_, ~hidden,
                                    rows=np.flatnonzero(hidden))
    assert torch.allclose(part, full[torch.as_tensor(np.flatnonzero(hidden))], atol=1e-5)
    keep = np.flatnonzero(hidden[router._step_rows])
    want = router._loss_of(full[torch.as_tensor(router._step_rows[keep])],
                           *(t[torch.as_tensor(keep)] for t in router._step_targets))
    assert torch.allclose(loss.detach(), want, atol=1e-6), (loss, want)
    seen = {}
    original = router._graph_scores

    def full_graph(qids, util, visible, positions=None, rows=None):
        seen["qids"], seen["full"] = qids, original(qids, util, visible, positions)
        return seen["full"][torch.as_tensor(rows)]

    router._graph_scores = full_graph
    test = test.select(np.random.default_rng(0).permutation(len(test)))  # queries interleaved
    with torch.no_grad():
        got = router._forward(test)
    own = pd.Index(seen["qids"]).get_indexer(test.frame["query_id"])
    assert torch.allclose(got, seen["full"][torch.as_tensor(own)], atol=1e-6)
