"""The reference rows: the decide-before-answers ceiling and the structured reference."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from prlib import routers as R
from prlib.bank import Bank
from prlib.experiment import Setting, run_setting, setting_views
from prlib.report import strongest
from prlib.simulate import simulate_multi_cost

LLMS = pd.DataFrame({"llm": ["small", "mid", "large"], "input_usd_per_m": [0.1, 1.0, 10.0],
                     "output_usd_per_m": [0.2, 2.0, 30.0],
                     "description": ["A small model.", "A medium model.", "A large model."]})
#: P(correct) per task and LLM: which LLM is best depends on the user's p and the task, and
#: nothing about a query predicts its correctness (drawn independently): a per-user, per-task
#: lookup table is the best a router can do.
P_CORRECT = {"math": (0.1, 0.5, 0.9), "prose": (0.7, 0.8, 0.9)}
PS = (0.3, 0.6, 0.9)


@pytest.fixture(scope="module")
def setting():
    rng = np.random.default_rng(11)
    rows = [{"query": f"{task} question {i}", "llm": m, "task": task,
             "quality": float(rng.random() < P_CORRECT[task][j]), "input_tokens": 100,
             "output_tokens": 100 + 50 * j}
            for i in range(300) for task in P_CORRECT for j, m in enumerate(LLMS["llm"])]
    bank = Bank.from_frame("lookup-optimal", pd.DataFrame(rows), LLMS)
    return Setting("lookup-optimal", bank, simulate_multi_cost(bank, ps=PS))


ROUTERS = [R.RandomRouter, R.BestPerUserTaskRouter, R.CeilingRouter, R.OracleRouter,
           R.StructuredReferenceRouter]


def test_where_the_lookup_table_is_optimal_the_ceiling_equals_it(setting):
    res = run_setting(setting, ROUTERS, seeds=[0, 1])
    means = res.groupby("router")[["reward", "score"]].mean()
    lookup = means.loc[R.BestPerUserTaskRouter.name]
    ceiling, oracle = means.loc[setting.ceiling_name], means.loc[setting.oracle_name]
    assert abs(lookup["reward"] - ceiling["reward"]) < 0.003, (lookup, ceiling)
    assert oracle["reward"] > ceiling["reward"] + 0.05  # per-query correctness: unpredictable
    assert ceiling["score"] == pytest.approx(100.0)  # the score runs random 0 .. ceiling 100
    assert oracle["score"] > 100


def test_references_and_upper_bounds_are_never_the_strongest_baseline(setting):
    res = run_setting(setting, ROUTERS, seeds=[0])
    assert res.set_index("router").loc[R.StructuredReferenceRouter.name, "family"] == "reference"
    # the reference and the ceiling made the best, by hand: still not the strongest baseline
    res.loc[res["family"].isin(["reference", "upper bound"]), "reward"] += 10.0
    assert strongest(res, "reward") == R.BestPerUserTaskRouter.name


def test_the_structured_reference_learns_p_from_utilities_and_from_picks(setting):
    train, val, _ = setting_views(setting, 0)
    ref = R.StructuredReferenceRouter(setting.feats).fit(train, val)
    users = setting.preferences.users.set_index("user_id")["p"]
    for user, p in users.items():  # revealed utilities pin p down (cost normalised on train)
        assert ref.user_p_[user] == pytest.approx(p, abs=0.03)
    noisy = dataclasses.replace(setting, feedback="choice", preferences=simulate_multi_cost(
        setting.bank, ps=PS, temperature=0.05, seed=0))
    train, val, _ = setting_views(noisy, 0)
    assert set(np.unique(train.utility[~np.isnan(train.utility)])) == {0.0, 1.0}  # picks only
    ref = R.StructuredReferenceRouter(setting.feats, feedback="choice").fit(train, val)
    learned = np.array([ref.user_p_[u] for u in users.index])
    assert np.abs(learned - users.to_numpy()).max() < 0.15, learned
    assert np.all(np.diff(learned) > 0)  # the users' order of p is recovered from picks



def _choice_posterior_by_loops(ref, train, q, cn):
    """The choice likelihood as first written (np.logaddexp.reduce, a loop over users): the
    reference's vectorised fit must give the same posterior."""
    users = train.frame["user_id"].astype(str).to_numpy()
    grid = ref.P_GRID
    util = grid[:, None, None] * np.nan_to_num(q)[None] - (1 - grid[:, None, None]) * (
        np.nan_to_num(cn)[None])
    ok = ~np.isnan(train.utility)[None]
    best = None
    for tau in ref.TEMPERATURES:
        logits = np.where(ok, util / tau, -np.inf)
        loglik = (logits[:, np.arange(len(train)), train.chosen]
                  - np.logaddexp.reduce(logits, 2))
        per_user = np.stack([loglik[:, users == u].sum(1) for u in np.unique(users)])
        prior = np.full(len(grid), 1.0 / len(grid))
        for _ in range(50):
            post = per_user + np.log(prior)[None]
            post = np.exp(post - post.max(1, keepdims=True))
            post /= post.sum(1, keepdims=True)
            prior = post.mean(0) + 1e-12
            prior /= prior.sum()
        marginal = np.logaddexp.reduce(per_user + np.log(prior)[None], 1).sum()
        if best is None or marginal > best[0]:
            best = (marginal, tau, post, prior)
    _, tau, post, prior = best
    return dict(zip(np.unique(users), post @ grid)), float(prior @ grid), tau


def test_the_choice_likelihood_fit_equals_the_loop_over_users_it_replaced(setting,
                                                                         monkeypatch):
    noisy = dataclasses.replace(setting, feedback="choice", preferences=simulate_multi_cost(
        setting.bank, ps=PS, temperature=0.05, seed=0))
    train, val, _ = setting_views(noisy, 0)
    rng = np.random.default_rng(0)
    train = train.select(rng.permutation(len(train)))  # users interleaved, not in order
    utility = train.utility.copy()
    utility[(rng.random(len(train)) < 0.3) & (train.chosen != 0), 0] = np.nan  # not offered
    train = dataclasses.replace(train, utility=utility)
    seen = {}
    fit_preferences = R.StructuredReferenceRouter._fit_preferences

    def spy(self, train, q, cn):
        seen.update(train=train, q=q.copy(), cn=cn.copy())
        return fit_preferences(self, train, q, cn)

    monkeypatch.setattr(R.StructuredReferenceRouter, "_fit_preferences", spy)
    ref = R.StructuredReferenceRouter(setting.feats, feedback="choice").fit(train, val)
    users_p, population_p, tau = _choice_posterior_by_loops(ref, seen["train"], seen["q"],
                                                            seen["cn"])
    assert ref.temperature_ == tau
    assert ref.population_p_ == pytest.approx(population_p, abs=1e-9)
    assert ref.user_p_ == pytest.approx(users_p, abs=1e-9)

def test_a_user_with_one_pick_is_shrunk_towards_the_population(setting):
    noisy = dataclasses.replace(setting, feedback="choice", train_per_user=1,
                                preferences=simulate_multi_cost(setting.bank, ps=PS,
                                                                temperature=0.05, seed=0))
    train, val, _ = setting_views(noisy, 0)
    ref = R.StructuredReferenceRouter(setting.feats, feedback="choice").fit(train, val)
    learned = np.array(list(ref.user_p_.values()))
    # one pick each says little: every user's p sits nearer the population's than the truth's
    # spread (0.3 .. 0.9) would put it
    assert np.abs(learned - ref.population_p_).max() < 0.25, (learned, ref.population_p_)


def test_the_structured_reference_runs_on_multi_cost_users_only(setting):
    judge = dataclasses.replace(setting, preferences=dataclasses.replace(
        setting.preferences, strategy="judge"), feedback="choice", metric="accuracy")
    res = run_setting(judge, [R.RandomRouter, R.StructuredReferenceRouter], seeds=[0])
    assert R.StructuredReferenceRouter.name not in set(res["router"])
    assert "multi_cost users only" in res.attrs["not_run"][R.StructuredReferenceRouter.name]


def test_the_sweep_tunes_and_runs_every_level_and_the_headroom_table_pairs_by_seed(setting):
    from prlib import headroom

    routers = [R.RandomRouter, R.CheapestRouter, R.BestPerUserTaskRouter, R.CeilingRouter,
               R.OracleRouter, R.StructuredReferenceRouter]
    res, tuning = headroom.sweep(setting, [1, None], [100, 101], routers, tune_seeds=[0])
    assert set(res["train_per_user"]) == {"1", "all"}
    assert set(tuning["train_per_user"]) == {"1", "all"}  # each level tunes its own grid
    n_train = res.groupby("train_per_user")["n_train"].max()
    assert n_train["1"] == len(PS) < n_train["all"]  # one training request per user
    table = headroom.headroom_table(res, "reward", R.CheapestRouter.name,
                                    reference=R.StructuredReferenceRouter.name).set_index(
        "train_per_user")
    dense = res[res["train_per_user"] == "all"].pivot(index="seed", columns="router",
                                                       values="reward")
    assert table.loc["all", "strongest_baseline"] == R.BestPerUserTaskRouter.name
    diff = dense[R.CheapestRouter.name] - dense[R.BestPerUserTaskRouter.name]
    assert table.loc["all", "ours_minus_baseline"] == pytest.approx(diff.mean())
    assert table.loc["all", "ceiling"] == pytest.approx(dense[setting.ceiling_name].mean())
    assert table.loc["all", "oracle"] > table.loc["all", "ceiling"]


def test_smoke_runs_may_tune_fewer_grid_points_and_the_same_for_every_router(setting):
    from prlib.experiment import tune_setting

    routers = [R.StructuredReferenceRouter, R.PerUserKNNRouter]
    full = tune_setting(setting, routers, [0]).frame.groupby("class").size()
    one = tune_setting(setting, routers, [0], max_points=1).frame.groupby("class").size()
    assert (full == 4).all() and (one == 1).all()
    with pytest.raises(ValueError, match="max_points must be >= 1"):
        tune_setting(setting, routers, [0], max_points=0)
