"""Provenance guards (prlib.provenance): a spy router through every entry point, each runtime
guard triggered and its message read, on a hand-made bank where a leak changes the number."""

import numpy as np
import pandas as pd
import pytest

from prlib import experiment, provenance, requests as rq, studies
from prlib.bank import Bank
from prlib.metrics import routing_metrics
from prlib.experiment import Setting, run_setting, setting_views, tune_and_run, tune_setting
from prlib.provenance import ProvenanceError, ids_of
from prlib.routers.base import Router, register, unregister
from prlib.simulate import simulate_multi_cost

LLMS = pd.DataFrame({"llm": ["small", "mid", "large"], "input_usd_per_m": [0.1, 1.0, 10.0],
                     "output_usd_per_m": [0.2, 2.0, 30.0],
                     "description": ["A small model.", "A medium model.", "A large model."]})


def leaky_bank(n_queries: int = 40) -> Bank:
    """Each LLM answers each query right or wrong at random (seeded), so per-query labels are
    unpredictable from anything but the labels themselves: a router that sees a test label
    scores far above one that does not, and a leak moves the number."""
    rng = np.random.default_rng(7)
    rows = [{"query": f"{'math' if i % 2 else 'prose'} question {i}", "llm": m,
             "task": "math" if i % 2 else "prose", "quality": float(rng.random() < 0.5),
             "output_tokens": 100} for i in range(n_queries) for m in LLMS["llm"]]
    return Bank.from_frame("leaky", pd.DataFrame(rows), LLMS)


class Spy(Router):
    """Test-only spy: remembers every training and validation label by (user, query) and routes
    a remembered request by its label (else by the per-LLM training mean); records every
    request id given to fit and to scoring in ``Spy.LOG``."""

    name = "Spy (tests only)"
    family = "simple"
    defaults = {"layers": 1, "shrink": 0.0}
    grid = {"shrink": [0.0, 0.1, 0.2, 0.3]}
    LOG: list = []

    def fit(self, train, val, *, progress=False):
        Spy.LOG.append(("fit", self.seed, ids_of(train), ids_of(val)))
        self.memory_ = {}
        for req in (train, val):
            for key, row in zip(zip(req.frame["user_id"], req.frame["query_id"]), req.utility):
                self.memory_[key] = np.nan_to_num(row, nan=-1.0)
        self.mean_ = np.nan_to_num(np.nanmean(train.utility, axis=0), nan=-1.0)
        return self

    def _raw_scores(self, requests):
        Spy.LOG.append(("score", self.seed, ids_of(requests)))
        keys = zip(requests.frame["user_id"], requests.frame["query_id"])
        return np.stack([self.memory_.get(k, self.mean_) for k in keys]) if len(requests) \
            else np.zeros((0, self.n_llms))


@pytest.fixture()
def spy():
    register(Spy)
    Spy.LOG.clear()
    yield Spy
    unregister(Spy)


@pytest.fixture(scope="module")
def setting():
    bank = leaky_bank()
    return Setting("leaky", bank, simulate_multi_cost(bank))


def _views(setting, seed):
    return [ids_of(v) for v in setting_views(setting, seed)]


def _check_log(setting, seeds, scored_parts=("test",)):
    """Every fit of the spy saw exactly its seed's train and val views; every scoring call
    read one of ``scored_parts`` of the same seed."""
    fits = [e for e in Spy.LOG if e[0] == "fit"]
    assert {e[1] for e in fits} == set(seeds)
    for _, seed, train, val in fits:
        want = _views(setting, seed)
        assert train.digest == want[0].digest and val.digest == want[1].digest
    part = {"train": 0, "val": 1, "test": 2}
    for _, seed, scored in (e for e in Spy.LOG if e[0] == "score"):
        want = _views(setting, seed)
        assert scored.digest in {want[part[p]].digest for p in scored_parts}, seed


def test_a_leak_changes_the_number_on_the_hand_made_bank(setting, spy):
    """The bank discriminates: the spy fitted with the test labels reaches the oracle; fitted
    as it should be, it is far below (so a leak cannot pass unseen)."""
    train, val, test = setting_views(setting, 0)
    honest = Spy(setting.feats).fit(train, val)
    leaky = Spy(setting.feats).fit(rq.concat_requests(train, test), val)
    reward = lambda r: routing_metrics(test, r.route(test))["reward"]  # noqa: E731
    oracle = routing_metrics(test, honest.route(test))["oracle_reward"]
    assert reward(leaky) == pytest.approx(oracle)
    assert reward(honest) < oracle - 0.05


def test_the_spy_sees_exactly_its_seeds_views_through_run_and_tune(setting, spy):
    run_setting(setting, [Spy], seeds=[0, 1])
    _check_log(setting, [0, 1])
    Spy.LOG.clear()
    tune_setting(setting, [Spy], seeds=[0])
    _check_log(setting, [0], scored_parts=("val",))
    Spy.LOG.clear()
    tune_and_run(setting, seeds=[1, 2], routers=[Spy])
    _check_log(setting, [0, 1, 2], scored_parts=("val", "test"))
    Spy.LOG.clear()
    studies.layer_sweep(setting, Spy, [1, 2], seeds=[3])
    _check_log(setting, [3])


def test_the_spy_sees_exactly_its_seeds_views_in_workers(setting, spy):
    """The same through worker processes (jobs=2): the guards run there too, and the rows
    carry each seed's split digest."""
    res = run_setting(setting, [Spy], seeds=[0, 1], jobs=2)
    assert res["split"].nunique() == 2
    assert set(res["split"]) == {provenance.split_digest(setting_views(setting, s)[2])
                                 for s in (0, 1)}


def test_the_spy_as_a_few_shot_baseline_sees_exactly_k_shots_of_each_new_user(setting, spy):
    from prlib.routers import PersonalizedRouterV2

    out = studies.few_shot_users(setting, seeds=[0], ks=[0, 2], n_heldout=3,
                                 params={"steps": 5, "eval_every": 5}, fine_tune_steps=0,
                                 ours=PersonalizedRouterV2, baselines=(Spy,))
    assert set(out["k"]) == {0, 2}
    train, val, test = setting_views(setting, 0)
    known, new = studies.split_users(train.frame["user_id"], 3, 0)
    fits = [e for e in Spy.LOG if e[0] == "fit"]
    assert len(fits) == 2
    for (_, _, hist, val_ids), k in zip(fits, (0, 2)):
        assert all(hist.per_user.get(u, 0) == k for u in new)
        assert all(hist.per_user[u] == ids_of(studies.of_users(train, [u])).n for u in known)
        assert val_ids.digest == ids_of(studies.of_users(val, known)).digest
    scored = [e[2] for e in Spy.LOG if e[0] == "score"]
    assert all(s.digest == ids_of(studies.of_users(test, new)).digest for s in scored)


# ----------------------------------------------------------------- each guard, triggered
def test_split_guard_names_the_shared_queries(setting):
    train, val, test = setting_views(setting, 0)
    with pytest.raises(ProvenanceError, match=r"the val and test parts share \d+ queries"):
        provenance.check_split(train, test, test, "here")
    with pytest.raises(ProvenanceError,
                       match=r"held-out users \(mc-00\) have requests in the train part"):
        provenance.check_split(train, val, test, "here",
                               held_out_users=[train.frame["user_id"].iloc[0]])


def test_fit_guard_catches_test_requests_used_for_early_stopping(setting):
    train, val, test = setting_views(setting, 0)
    router = Spy(setting.feats).fit(train, test)
    with pytest.raises(ProvenanceError, match=r"fitted with \d+ val requests that are not the "
                                              r"seed's \d+ val requests \(queries outside"):
        provenance.check_fit(router, train, val, "run")
    router.fit(train, val)
    provenance.check_fit(router, train, val, "run")  # a refit starts a new record
    with pytest.raises(ProvenanceError, match="carry utilities, not picks only"):
        provenance.check_fit(router, train, val, "run", feedback="choice")


def test_selection_guard_catches_a_tuner_reading_test(setting):
    train, val, test = setting_views(setting, 0)
    router = Spy(setting.feats).fit(train, val)
    assert np.isfinite(experiment.validation_metric(setting, router, val))
    with pytest.raises(ProvenanceError, match="a tuner must read validation, never test"):
        experiment.validation_metric(setting, router, test)


def test_scoring_guard_catches_scoring_what_was_learned(setting):
    train, val, test = setting_views(setting, 0)
    router = Spy(setting.feats).fit(train, val)
    experiment.test_metric(setting, router, test)
    with pytest.raises(ProvenanceError, match=r"scored queries .* also in requests Spy learned"):
        experiment.test_metric(setting, router, val)


def test_shot_guards_name_the_users_with_the_wrong_count(setting):
    train, val, _ = setting_views(setting, 0)
    users = sorted(set(train.frame["user_id"]))[:2]
    support = studies.support_requests(train, users, 3, seed=0)
    provenance.check_shots(support, users, 3, "here")
    with pytest.raises(ProvenanceError, match=r"exactly their k shots.*: 3 \(not 2\)"):
        provenance.check_shots(support, users, 2, "here")
    router = Spy(setting.feats).fit(rq.concat_requests(train, support), val)
    with pytest.raises(ProvenanceError, match="exactly their k shots"):
        provenance.check_learned_shots(router, users, 3, "here")


def test_fine_tune_guard_reads_the_checkpoint_choice(setting):
    from prlib.routers import PersonalizedRouterV2

    train, val, test = setting_views(setting, 0)
    known, users = studies.split_users(train.frame["user_id"], 1, seed=0)
    support = studies.support_requests(train, users, 2, seed=0)
    router = PersonalizedRouterV2(setting.feats, steps=5, eval_every=5).fit(
        studies.of_users(train, known), studies.of_users(val, known))
    router.fine_tune(support, test, 2)
    with pytest.raises(ProvenanceError, match="chose its checkpoint on .* not the"):
        provenance.check_fine_tune(router, users, 2, val, "here")


def test_choice_view_guard_and_previous_turn_guard(setting):
    train, _, _ = setting_views(setting, 0)
    provenance.check_choice_view(rq.choice_only(train), "here")
    with pytest.raises(ProvenanceError, match="carries utilities other than the pick"):
        provenance.check_choice_view(train, "here")
    q = sorted(set(train.frame["query_id"]))
    later = {q[1]: q[0]}  # q[0] is a first turn: nothing before it
    ok = rq.with_previous_turn(train, later)
    provenance.check_previous_turn(ok, later, "here")
    bad = rq.with_previous_turn(train, {**later, q[0]: q[0]})
    with pytest.raises(ProvenanceError, match="first turns carry previous-turn utilities"):
        provenance.check_previous_turn(bad, later, "here")


def test_seed_guard_fires_when_seeds_give_one_split(setting, spy, monkeypatch):
    with pytest.raises(ProvenanceError, match="seeds 0 and 1 gave the same split"):
        provenance.check_seeds_differ({0: "a", 1: "a"}, "here")
    fixed = rq.split_queries
    experiment._VIEWS.clear()  # views of earlier tests are cached by (setting, seed)
    monkeypatch.setattr(experiment, "split_queries",
                        lambda ids, fractions, seed, groups=None: fixed(ids, fractions, 0, groups))
    with pytest.raises(ProvenanceError, match="gave the same split"):
        run_setting(setting, [Spy], seeds=[0, 1])


def test_run_setting_refuses_a_mixed_up_split_and_an_unpicked_choice_view(setting, spy,
                                                                         monkeypatch):
    real = rq.Requests.split
    monkeypatch.setattr(rq.Requests, "split",
                        lambda self, name: real(self, "test" if name == "val" else name))
    with pytest.raises(ProvenanceError, match="the val and test parts share"):
        run_setting(setting, [Spy], seeds=[5])
    monkeypatch.undo()
    monkeypatch.setattr(experiment, "choice_only", lambda r: r)
    choice = Setting("leaky choice", setting.bank, setting.preferences, feedback="choice")
    with pytest.raises(ProvenanceError, match="choice-only view carries utilities"):
        run_setting(choice, [Spy], seeds=[6])


def test_grouped_multi_turn_and_choice_runs_pass_their_guards(setting, spy):
    """Conversations (two turns per group, previous-turn utilities) and choice-only feedback
    run through run_setting with the guards on: different seeds give different grouped splits,
    first turns carry no previous-turn utilities, the routers' views are picks only."""
    q = sorted(setting.bank.queries["query_id"])
    groups = {x: f"c{i // 2}" for i, x in enumerate(q)}
    previous = {q[i + 1]: q[i] for i in range(0, len(q) - 1, 2)}
    turns = Setting("leaky turns", setting.bank, setting.preferences, query_groups=groups,
                    previous_query=previous)
    res = run_setting(turns, [Spy], seeds=[0, 1, 2])
    assert res["split"].nunique() == 3
    for seed in (0, 1, 2):
        train, val, test = setting_views(turns, seed)
        part = {x: p for p, r in enumerate((train, val, test)) for x in r.frame["query_id"]}
        side = pd.Series(part).groupby(pd.Series(groups)).nunique()
        assert (side == 1).all()  # a conversation's turns share a split
        first = ~test.frame["query_id"].isin(previous).to_numpy()
        assert np.isnan(test.previous[first]).all() and not np.isnan(test.previous[~first]).all()
    choice = Setting("leaky choice", setting.bank, setting.preferences, feedback="choice")
    Spy.LOG.clear()
    run_setting(choice, [Spy], seeds=[0])
    (_, _, train, val), = [e for e in Spy.LOG if e[0] == "fit"]
    assert train.choice_only and val.choice_only


def test_the_spy_through_the_sparsity_sweep_and_the_new_llm_study(setting, spy):
    """PersonaRoute-Bench's sparsity sweep: each level's fit sees exactly that level's thinned
    train view; the new-LLM study's baselines (padded to the new LLMs) pass their guards."""
    from dataclasses import replace

    from prlib.personaroute import sparsity_sweep

    out = sparsity_sweep(setting, [1, 3], [Spy], seeds=[0])
    assert sorted(out["n_train"]) == [9, 27]  # nine users, 1 and 3 training requests each
    for level, (_, seed, train, val) in zip((1, 3), (e for e in Spy.LOG if e[0] == "fit")):
        want = setting_views(replace(setting, train_per_user=level), seed)
        assert train.digest == ids_of(want[0]).digest and val.digest == ids_of(want[1]).digest
        assert set(train.per_user.values()) == {level}
    llms = studies.few_shot_llms(setting, [0], [2], ["large"], params={},
                                 n_heldout_users=2)
    assert np.isfinite(llms["pct_of_full"]).all()


def test_fit_checked_fits_on_the_seeds_views_and_guards_them(setting, spy, monkeypatch):
    router, (train, val, test) = experiment.fit_checked(Spy, setting, 0)
    assert provenance.fitted_on(router)[0].digest == ids_of(train).digest
    real = Spy.fit
    monkeypatch.setattr(Spy, "fit", lambda self, tr, va, progress=False: real(
        self, rq.concat_requests(tr, test), va))
    with pytest.raises(ProvenanceError, match="not the seed's"):
        experiment.fit_checked(Spy, setting, 0)
