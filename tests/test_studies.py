"""prlib.studies: held-out users and LLMs, few-shot support, the new-user and new-LLM studies."""

import numpy as np
import pytest

from prlib import analysis

from prlib.bank import Bank
from prlib.experiment import Setting
from prlib.requests import RequestsError
from prlib.simulate import simulate_multi_cost
from prlib.studies import (OURS_FINE_TUNED, OURS_NO_RETRAINING, USER_BASELINES, drop_llms,
                           few_shot_llms, few_shot_users, of_users, raw_views, split_users,
                           support_requests)
from test_experiment import LLM_TABLE, logged_frame


@pytest.fixture(scope="module")
def setting():
    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    return Setting("few-shot", bank, simulate_multi_cost(bank))


def test_held_out_users_are_disjoint_seeded_and_never_in_the_training_requests(setting):
    train, _, _ = raw_views(setting, 0)
    users = train.frame["user_id"].unique()
    known, held = split_users(users, 3, seed=0)
    assert len(held) == 3 and not set(known) & set(held) and set(known) | set(held) == set(users)
    assert split_users(users, 3, seed=0) == (known, held)
    assert split_users(users, 3, seed=1) != (known, held)
    assert not set(of_users(train, known).frame["user_id"]) & set(held)
    with pytest.raises(RequestsError, match="n_heldout must be between 1 and 8"):
        split_users(users, 9, seed=0)


def test_the_held_out_check_catches_a_router_trained_on_a_held_out_user_or_llm(setting):
    from prlib.studies import _ours, check_held_out

    train, val, _ = raw_views(setting, 0)
    known, held = split_users(train.frame["user_id"], 3, seed=0)
    router = _ours(setting, 0, {}, train, val)
    with pytest.raises(AssertionError, match="held-out users"):
        check_held_out(router, users=held)
    with pytest.raises(AssertionError, match="held-out LLMs"):
        check_held_out(router, llms=["huge"])
    check_held_out(_ours(setting, 0, {}, of_users(train, known), of_users(val, known)),
                   users=held)


def test_support_is_k_requests_per_user_and_too_large_a_k_says_the_largest(setting):
    train, _, _ = raw_views(setting, 0)
    users = sorted(train.frame["user_id"].unique())[:2]
    s = support_requests(train, users, 3, seed=0)
    assert s.frame.groupby("user_id").size().to_dict() == {u: 3 for u in users}
    assert len(support_requests(train, users, 0, seed=0)) == 0
    most = int(train.frame.groupby("user_id").size().min())
    with pytest.raises(RequestsError, match=f"use k <= {most}"):
        support_requests(train, users, most + 1, seed=0)


def test_dropping_an_llm_removes_its_column_and_moves_its_choices_to_the_best_left(setting):
    train, _, _ = raw_views(setting, 0)
    dropped = drop_llms(train, ["huge"])
    assert dropped.llms == ["tiny", "medium"] and dropped.utility.shape == (len(train), 2)
    was_huge = train.chosen == train.llms.index("huge")
    assert was_huge.any()
    np.testing.assert_array_equal(dropped.chosen[was_huge],
                                  np.nanargmax(dropped.utility[was_huge], 1))
    with pytest.raises(RequestsError, match="unknown LLMs"):
        drop_llms(train, ["gigantic"])


def test_few_shot_users_and_llms_give_a_finite_share_of_the_full_model_for_every_k(setting):
    users = few_shot_users(setting, [0], [0, 2], n_heldout=3, params={},
                           fine_tune_steps=10)
    assert set(users["method"]) == {OURS_NO_RETRAINING, OURS_FINE_TUNED,
                                    *(c.name for c in USER_BASELINES)}
    assert OURS_FINE_TUNED not in set(users.loc[users["k"] == 0, "method"])  # nothing to tune on
    assert np.isfinite(users["pct_of_full"]).all() and set(users["k"]) == {0, 2}
    llms = few_shot_llms(setting, [0], [0, 1], ["huge"], params={})
    both = few_shot_llms(setting, [0], [1], ["huge"], params={}, n_heldout_users=3)
    for frame in (llms, both):
        assert np.isfinite(frame["pct_of_full"]).all() and (frame["full"] > 0).all()


def test_layer_sweep_fits_each_layer_count_and_refuses_a_router_without_layers(setting):
    from prlib.routers import BestPerUserRouter, PersonalizedRouterV2
    from prlib.studies import layer_sweep

    out = layer_sweep(setting, PersonalizedRouterV2, [0, 1], [0], {"steps": 10})
    assert sorted(out["layers"]) == [0, 1] and np.isfinite(out["reward"]).all()
    assert out.loc[out["layers"] == 0, "picks_vary"].iloc[0] == 0  # no messages: no users
    with pytest.raises(ValueError, match="no 'layers'"):
        layer_sweep(setting, BestPerUserRouter, [0], [0])


def _two_archetype_requests(same_taste: bool):
    """Eight users of two archetypes on 60 queries in two clusters: frugal users prefer the
    small LLM on cluster 0 and the mid one on cluster 1, quality users the mid and the large
    (``same_taste``: everyone has the frugal taste); tasks are drawn independently of the
    clusters, utilities carry noise."""
    from test_routers import N_Q, make_requests

    rng = np.random.default_rng(0)
    users = [f"frugal{i}" for i in range(4)] + [f"quality{i}" for i in range(4)]
    task_of = rng.integers(0, 2, N_Q)
    taste = {("f", 0): [1.0, 0.5, 0.0], ("f", 1): [0.2, 1.0, 0.0],
             ("q", 0): [0.0, 1.0, 0.5], ("q", 1): [0.0, 0.2, 1.0]}

    def utility(user, cluster):
        kind = "f" if same_taste else user[0]
        return np.clip(np.array(taste[kind, cluster]) + rng.normal(0, 0.1, 3), 0, 1)

    return make_requests(utility, users=users, task_of=task_of)


def test_user_states_separate_two_clear_archetypes_and_not_users_of_one_taste():
    """Notebook 80's score on a tiny bank: the trained router's user states separate two
    archetypes of opposite tastes (silhouette > 0.5) and do not separate two arbitrary halves of
    users who share one taste (< 0.25). Not tested: that the random-weight control scores lower
    than the trained router; on this bank it does on 3 of 6 seeds (its messages already carry
    the users' feedback), so such a test would pass by the seed's luck."""
    from prlib.routers import PersonalizedRouterV2
    from prlib.studies import archetype_silhouette
    from test_routers import make_feats

    scores = {}
    for same_taste in (False, True):
        req = _two_archetype_requests(same_taste)
        router = PersonalizedRouterV2(make_feats(), seed=0, steps=100, batch_size=64).fit(
            req.split("train"), req.split("val"))
        users, states = analysis.user_states(router)
        scores[same_taste] = archetype_silhouette(states, [u[0] for u in users])
    assert scores[False] > 0.5 and scores[True] < 0.25, scores
    with pytest.raises(ValueError, match="2 to n - 1 classes"):
        archetype_silhouette(states, ["a"] * len(states))
