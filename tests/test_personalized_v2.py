"""PersonalizedRouter v2: its messages equal an explicit edge-list computation, never carry the
label of the request's own query, and routing reads a cache that does not grow."""

import numpy as np
import pytest

from prlib import analysis
import torch

from prlib import routers as R
from prlib.requests import Requests, concat_requests
from prlib.routers.retrieval import FeedbackStore, Messages, check_no_label_leak_v2
from test_routers import by_both, by_query, make_feats, make_requests
from v2_reference import reference_messages


@pytest.fixture(scope="module")
def toy():
    return make_requests(by_both, drop_mid_every=4)


def store_of(feats, history, k=5, k_small=2):
    st = FeedbackStore(feats.query_ids, feats.query_x.numpy(), feats.tasks, feats.llms, k, k_small)
    st.add(history)
    return st


@pytest.mark.parametrize("which", ["new requests", "leave-one-query-out on the history"])
def test_v2_messages_equal_the_explicit_edge_lists(toy, which):
    feats = make_feats()
    train = toy.split("train")
    req = toy.split("test") if which == "new requests" else train
    cached = store_of(feats, train).messages(req).static
    ref = reference_messages(train, req, feats.query_ids, feats.query_x.numpy(), 5, 2)
    np.testing.assert_allclose(cached.numpy(), ref.numpy(), atol=1e-5)


def by_three(u, c):  # three users, each with their own taste per cluster
    table = {("a", 0): [1.0, 0.5, 0.0], ("a", 1): [0.2, 1.0, 0.0],
             ("b", 0): [0.0, 1.0, 0.5], ("b", 1): [0.0, 0.2, 1.0],
             ("c", 0): [0.6, 0.0, 0.9], ("c", 1): [0.9, 0.3, 0.1]}
    return table[(u, c)]


def histories():
    """Training histories that take each path of the user search: every user has every
    training query (one search shared with the pooled one), users ``a`` and ``b`` share the
    same partial history (one search for the two) while ``c`` has another, and users whose
    histories all differ (a search per user)."""
    req = make_requests(by_three, users=("a", "b", "c"), drop_mid_every=4)
    train = req.split("train")
    f = train.frame
    q = f["query_id"].str[1:].astype(int).to_numpy()
    shared_gap = ~(f["user_id"].isin(["a", "b"]) & (q % 3 == 0)).to_numpy()
    all_differ = ~(((f["user_id"] == "a") & (q % 3 == 0)) | ((f["user_id"] == "b") & (q % 3 == 1))
                   | ((f["user_id"] == "c") & (q % 5 == 2))).to_numpy()
    few = ~((f["user_id"] == "c") & (q >= 3)).to_numpy()  # c: 3 rows, fewer than k = 5
    return req, {"every user every query": train, "two users share a partial history":
                 train.select(shared_gap), "every history differs": train.select(all_differ),
                 "a user with fewer rows than k": train.select(few)}


@pytest.mark.parametrize("case", ["every user every query", "two users share a partial history",
                                  "every history differs", "a user with fewer rows than k"])
def test_v2_user_search_equals_the_explicit_edge_lists_on_every_path(case):
    """The shared, grouped and per-user neighbour searches each give the explicit edge lists'
    messages, and every retrieved row is one of the request's own user's."""
    feats = make_feats()
    req, train = histories()
    train = train[case]
    st = store_of(feats, train)
    groups = st._same_rows_groups(list(range(len(st.users))))
    assert len(groups) == {"every user every query": 1, "two users share a partial history": 2,
                           "every history differs": 3, "a user with fewer rows than k": 2}[case]
    for new in (req.split("test"), train):
        msg = st.messages(new)
        ref = reference_messages(train, new, feats.query_ids, feats.query_x.numpy(), 5, 2)
        np.testing.assert_allclose(msg.static.numpy(), ref.numpy(), atol=1e-5)
        nb = msg.user_nb.numpy()
        users = np.array([st.upos[u] for u in new.frame["user_id"]])
        ok = nb >= 0  # -1: the user has fewer rows than k (besides the request's own)
        others = [len(st.user_rows(u)) - (own >= 0) for u, own in zip(users, msg.own.numpy())]
        assert (ok.sum(1) == np.minimum(5, others)).all()
        assert (st.row_user[nb[ok]] == np.broadcast_to(users[:, None], nb.shape)[ok]).all()
        check_no_label_leak_v2(st, new, msg)


def test_v2_messages_do_not_depend_on_the_labels_of_their_own_query(toy):
    """Scramble every user's feedback on one training query: the messages of that query's
    requests do not move (others may)."""
    feats = make_feats()
    train = toy.split("train")
    before = store_of(feats, train).messages(train)
    q0 = train.frame["query_id"].iloc[0]
    rows = (train.frame["query_id"] == q0).to_numpy()
    util = train.utility.copy()
    util[rows] = np.where(np.isnan(util[rows]), np.nan, np.random.default_rng(1).random(
        util[rows].shape))
    scrambled = Requests(train.frame, train.llms, util, np.nanargmax(util, 1))
    after = store_of(feats, scrambled).messages(scrambled)
    np.testing.assert_allclose(after.static[rows].numpy(), before.static[rows].numpy(), atol=1e-6)
    assert not np.allclose(after.static[~rows].numpy(), before.static[~rows].numpy())


def test_v2_leak_check_catches_a_request_that_retrieves_its_own_query(toy):
    feats = make_feats()
    train = toy.split("train")
    st = store_of(feats, train)
    msg = st.messages(train)
    check_no_label_leak_v2(st, train, msg)
    bad = msg.user_nb.clone()
    bad[0, 0] = 0  # row 0 is the request itself
    with pytest.raises(AssertionError, match="own query"):
        check_no_label_leak_v2(st, train, Messages(msg.static, bad, msg.user_sim, msg.pool_nb,
                                                   msg.pool_sim, msg.query, msg.own))
    ids = st.pooled()[0]
    bad_pool = msg.pool_nb.clone()
    bad_pool[0, 0] = int(np.flatnonzero(ids == int(msg.query[0]))[0])  # its own query, pooled
    with pytest.raises(AssertionError, match="own query from the pooled"):
        check_no_label_leak_v2(st, train, Messages(msg.static, msg.user_nb, msg.user_sim,
                                                   bad_pool, msg.pool_sim, msg.query, msg.own))


@pytest.fixture(scope="module")
def fitted(toy):
    return R.PersonalizedRouterV2(make_feats(), steps=100, batch_size=64).fit(
        toy.split("train"), toy.split("val"))


def test_v2_learns_users_and_queries(toy, fitted):
    test = toy.split("test")
    assert (fitted.route(test) == test.chosen).mean() >= 0.9
    req = make_requests(by_query)
    r = R.PersonalizedRouterV2(make_feats(), steps=100, batch_size=64).fit(
        req.split("train"), req.split("val"))
    assert (r.route(req.split("test")) == req.split("test").chosen).mean() >= 0.9


def test_v2_refuses_to_score_a_request_whose_feedback_is_visible(toy, fitted):
    with pytest.raises(ValueError, match="own label"):
        fitted.scores(toy.split("train").select(np.arange(3)))


def test_v2_cold_user_gets_the_population_route_and_add_user_changes_it(toy, fitted):
    test = toy.split("test")
    new = test.renamed("newcomer")
    s = fitted.scores(new)
    assert np.isfinite(s[~np.isnan(new.utility)]).all()
    import copy

    r = copy.deepcopy(fitted)
    hist = toy.split("val").select(toy.split("val").frame["user_id"].to_numpy() == "frugal")
    r.add_user(hist.renamed("newcomer"))
    assert not np.allclose(r.scores(new), s)


def test_v2_route_text_does_not_grow_the_router():
    """1,000 new query texts routed: the router's features and history stay as they were, and
    the Python heap does not grow with the calls."""
    import tracemalloc

    from prlib.bank import Bank
    from prlib.experiment import Setting, setting_views
    from prlib.simulate import simulate_multi_cost
    from test_experiment import LLM_TABLE, logged_frame

    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    setting = Setting("text", bank, simulate_multi_cost(bank))
    train, val, _ = setting_views(setting, 0)
    router = R.PersonalizedRouterV2(setting.feats, steps=20).fit(train, val)
    n_queries, n_rows = len(router.feats.query_ids), len(router.store_.row_user)
    user = train.frame["user_id"].iloc[0]
    router.route_text(user, "math question number 3: please help")  # warm (embedding cached)
    tracemalloc.start()
    router.route_text(user, "math question number 3: please help")
    before = tracemalloc.get_traced_memory()[0]
    picks = {router.route_text(user, "math question number 3: please help") for _ in range(1000)}
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(picks) == 1 and picks <= set(bank.llm_names)
    assert len(router.feats.query_ids) == n_queries and len(router.store_.row_user) == n_rows
    assert grown < 200_000, f"the heap grew by {grown} bytes over 1,000 calls"


def test_v2_saves_and_loads(toy, fitted, tmp_path):
    folder = fitted.save(tmp_path / "v2")
    loaded = R.Router.load(folder, make_feats())
    test = toy.split("test")
    np.testing.assert_allclose(loaded.scores(test), fitted.scores(test), atol=1e-5)


def test_v2_scores_are_the_same_batched_or_one_by_one(toy, fitted):
    test = toy.split("test")
    batched = fitted.scores(test)
    single = np.vstack([fitted.scores(test.select([i])) for i in range(0, len(test), 7)])
    np.testing.assert_allclose(single, batched[::7], atol=1e-5)


@pytest.mark.parametrize("case", ["every user every query", "every history differs"])
def test_v2_routing_path_equals_the_training_path(case):
    """Routing reads cached query states and computes the attention logits and the query term
    once per distinct row, summing in place; the training path (every request through the query
    MLP, with autograd) gives the same logits."""
    import copy

    req, train = histories()
    router = R.PersonalizedRouterV2(make_feats(), steps=30, batch_size=64).fit(
        train[case], req.split("val"))
    torch.manual_seed(0)
    with torch.no_grad():  # weights where every term counts (the read-out starts at zero)
        for w in router.model.parameters():
            w.normal_(0.0, 0.5)
    router._hq_cache = None
    test = req.split("test")
    routed = router.scores(test)
    training = copy.deepcopy(router)
    training._frozen = False
    msg = training.store_.messages(test)
    with torch.enable_grad():
        logits = training._logits(torch.from_numpy(~np.isnan(test.utility)), msg)
    np.testing.assert_allclose(routed, logits.detach().numpy(), atol=1e-6)


def test_v2_feedback_added_later_equals_a_store_built_at_once(toy):
    """Recording feedback after the store has answered (and cached) equals building the store
    from all of it at once: the incremental update leaves no stale cached state."""
    from prlib.requests import concat_requests

    feats = make_feats()
    train, val, test = (toy.split(s) for s in ("train", "val", "test"))
    late = store_of(feats, train)
    late.messages(test)  # fills the per-user and pooled caches
    late.add(val)
    at_once = store_of(feats, concat_requests(train, val))
    a, b = late.messages(test), at_once.messages(test)
    np.testing.assert_allclose(a.static.numpy(), b.static.numpy(), atol=1e-6)
    assert torch.equal(a.pool_nb, b.pool_nb)


def test_v2_add_llm_routes_to_a_new_llm_that_its_history_shows_is_best():
    """A new LLM, added with its description, prices and interactions in which it beats every
    other candidate, takes the test requests without retraining; without history its scores are
    finite (from its embedding alone); a refused call changes nothing."""
    import copy

    from prlib.bank import Bank
    from prlib.experiment import Setting, setting_views
    from prlib.simulate import simulate_multi_cost
    from test_experiment import LLM_TABLE, logged_frame

    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    setting = Setting("new-llm", bank, simulate_multi_cost(bank))
    train, val, test = setting_views(setting, 0)
    router = R.PersonalizedRouterV2(setting.feats, steps=60, batch_size=64).fit(train, val)
    old = list(router.feats.llms)

    def with_new(req):  # the new LLM: the best old answer's utility plus 0.5, for every request
        util = np.hstack([req.utility, np.nanmax(req.utility, 1, keepdims=True) + 0.5])
        return Requests(req.frame, old + ["new"], util, np.full(len(req), len(old)))

    bare = copy.deepcopy(router)
    with pytest.raises(ValueError, match="already"):
        bare.add_llm(old[0], "again", 0.5, 0.5)
    with pytest.raises(ValueError, match="history must be over the LLMs"):
        bare.add_llm("new", "x", 1.0, 1.0, history=val)
    assert bare.feats.llms == old
    bare.add_llm("new", "a brand-new large model", 1.0, 1.0)
    s = bare.scores(with_new(test))
    assert s.shape == (len(test), len(old) + 1) and np.isfinite(s[:, -1]).all()
    router.add_llm("new", "a brand-new large model", 1.0, 1.0, history=with_new(val))
    # where the history covers the request's (user, task), the new LLM takes the request
    key = lambda f: f["user_id"] + "/" + f["task"]  # noqa: E731
    covered = key(test.frame).isin(set(key(val.frame))).to_numpy()
    assert covered.sum() >= 5
    assert (router.route(with_new(test))[covered] == len(old)).mean() >= 0.8


def test_v2_user_states_tell_users_apart_and_depend_on_the_weights(toy, fitted):
    users, states = analysis.user_states(fitted)
    assert sorted(users) == sorted(toy.split("train").frame["user_id"].unique())
    assert states.shape == (len(users), len(fitted.feats.llms) * fitted.config.hidden)
    assert np.isfinite(states).all() and np.linalg.matrix_rank(states) >= 2
    fitted.scores(toy.split("test"))  # fills the query-state cache
    other = analysis.with_random_weights(fitted)
    assert not np.allclose(analysis.user_states(other)[1], states)
    assert not torch.equal(other._query_states(), fitted._query_states())  # no stale cache
    assert analysis.llm_states(fitted).shape == (len(fitted.feats.llms), fitted.config.hidden)


def test_v2_profile_states_average_to_the_user_states(toy, fitted):
    """A user's state is the request-count-weighted mean of their (user, task) profile states."""
    users, states = analysis.user_states(fitted)
    ids, prof = analysis.user_states(fitted, by="profile")
    h = fitted.history_.frame
    assert sorted(ids) == sorted(set(h["user_id"] + "|" + h["task"]))
    counts = h.groupby(["user_id", "task"]).size()
    for i, user in enumerate(users):
        mine = [j for j, p in enumerate(ids) if p.split("|")[0] == user]
        w = np.array([counts[user, ids[j].split("|")[1]] for j in mine], float)
        np.testing.assert_allclose((w[:, None] * prof[mine]).sum(0) / w.sum(), states[i],
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="by must be"):
        analysis.user_states(fitted, by="task")


def test_v2_llm_prototypes_sit_among_the_users_and_leave_the_router_unchanged(toy, fitted):
    """Each LLM's prototype (a user who always gave it the top feedback) is a state in the user
    space, distinct per LLM, and nearer to the users whose visible feedback favours that LLM
    than the other prototypes are; the router's history is untouched."""
    before = len(fitted.history_), list(fitted.store_.users)
    users, states = analysis.user_states(fitted)
    proto = analysis.llm_prototype_states(fitted, n_queries=20)
    assert proto.shape == (len(fitted.feats.llms), states.shape[1])
    assert (len(fitted.history_), list(fitted.store_.users)) == before
    assert np.linalg.matrix_rank(proto) == len(fitted.feats.llms)
    # each user's favourite LLM in their visible history (mean feedback value per LLM)
    h = fitted.history_
    fav = {u: int(np.nanargmax(np.nanmean(h.utility[(h.frame["user_id"] == u).to_numpy()], 0)))
           for u in users}
    dist = np.linalg.norm(states[:, None, :] - proto[None], axis=-1)  # (users, llms)
    nearest_is_fav = [dist[i].argmin() == fav[u] for i, u in enumerate(users)]
    assert np.mean(nearest_is_fav) > 1 / len(fitted.feats.llms) + 0.2, (nearest_is_fav, fav)


def test_v2_fine_tune_adds_the_history_and_keeps_weights_no_worse_on_validation(toy, fitted):
    import copy

    r = copy.deepcopy(fitted)
    val = toy.split("val")
    hist = val.select(val.frame["user_id"].to_numpy() == "frugal").renamed("newcomer")
    n_before = len(r.history_)
    r.fine_tune(hist, val.select(val.frame["user_id"].to_numpy() != "frugal"), steps=50)
    assert len(r.history_) == n_before + len(hist) and "newcomer" in r.store_.upos
    log = r.log_
    assert log.step[0] == 0 and max(log.val_metric) == log.val_metric[log.step.index(log.best_step)]
    assert np.isfinite(r.scores(toy.split("test").renamed("newcomer"))[
        ~np.isnan(toy.split("test").utility)]).all()


def test_v2_a_refused_add_changes_nothing(toy):
    feats = make_feats()
    train = toy.split("train")
    st = store_of(feats, train)
    before = st.messages(toy.split("test")).static
    newcomer = train.select(np.arange(3)).renamed("newcomer")
    twice = concat_requests(newcomer, train.select(np.arange(2)))  # the last two: visible already
    with pytest.raises(ValueError, match="visible once"):
        st.add(twice)
    assert "newcomer" not in st.upos and len(st.row_of) == len(st.row_user) == len(train)
    np.testing.assert_array_equal(st.messages(toy.split("test")).static.numpy(), before.numpy())
