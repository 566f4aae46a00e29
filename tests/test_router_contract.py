"""One contract for every registered router, checked generically (scikit-learn's
``parametrize_with_checks`` pattern): unfitted use fails clearly, fit is idempotent, a
request's scores do not depend on its batch, save/load round-trips, and every hyper-parameter
is validated by value."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from prlib import routers as R
from prlib.bank import Bank
from prlib.experiment import Setting, setting_views
from prlib.routers.base import (FAMILIES, GRID_POINTS, NotFittedError, Router, RouterError,
                                registered)
from prlib.simulate import simulate_multi_cost

LLMS = pd.DataFrame({"llm": ["small", "mid", "large"], "input_usd_per_m": [0.1, 1.0, 10.0],
                     "output_usd_per_m": [0.2, 2.0, 30.0],
                     "description": ["A small model.", "A medium model.", "A large model."]})
#: every registered router, ablations and notebook 90's pairwise routers included
EVERY = [c for f in FAMILIES for c in registered(f)]
#: small budgets, so that the battery over ~25 routers takes seconds
SMALL = {"steps": 6, "eval_every": 3, "patience": 2}


def small_params(cls) -> dict:
    return {k: v for k, v in SMALL.items() if k in cls.defaults}


@pytest.fixture(scope="module")
def views():
    rng = np.random.default_rng(3)
    rows = [{"query": f"{'math' if i % 2 else 'prose'} question {i} about topic {i % 5}",
             "llm": m, "task": "math" if i % 2 else "prose",
             "quality": float(rng.random() < q),
             "response": " ".join(["word"] * (5 + 20 * j)) + f" answer {i}."}
            for i in range(24) for j, (m, q) in enumerate(zip(LLMS["llm"], (0.3, 0.6, 0.8)))]
    bank = Bank.from_frame("contract", pd.DataFrame(rows), LLMS)
    setting = Setting("contract", bank, simulate_multi_cost(bank), fractions=(0.5, 0.25, 0.25))
    return setting, setting_views(setting, 0)


def fitted(cls, setting, train, val):
    return cls(setting.feats, seed=0, **small_params(cls)).fit(train, val)


@pytest.mark.parametrize("cls", EVERY, ids=lambda c: c.__name__)
def test_unfitted_use_raises_one_clear_error(cls, views, tmp_path):
    setting, (_, _, test) = views
    router = cls(setting.feats, seed=0)
    with pytest.raises(NotFittedError, match=f"{cls.__name__} is not fitted: call fit"):
        router.scores(test)
    with pytest.raises(NotFittedError):
        router.route(test)
    with pytest.raises(NotFittedError):
        router.save(tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("cls", EVERY, ids=lambda c: c.__name__)
def test_fit_is_idempotent_and_scores_do_not_depend_on_the_batch(cls, views):
    setting, (train, val, test) = views
    router = fitted(cls, setting, train, val)
    once = router.scores(test)
    assert once.shape == (len(test), len(setting.feats.llms))
    router.fit(train, val)
    np.testing.assert_allclose(router.scores(test), once, rtol=1e-5, atol=1e-6,
                               err_msg="a second fit on the same data scores differently")
    order = np.random.default_rng(0).permutation(len(test))
    np.testing.assert_allclose(router.scores(test.select(order)), once[order], rtol=1e-5,
                               atol=1e-6, err_msg="scores depend on the order of the batch")
    if "reads_batch" in cls.tags:  # a ceiling: best LLM per (user, task) over the batch's labels
        return
    for i in (0, len(test) // 2):
        np.testing.assert_allclose(router.scores(test.select([i]))[0], once[i], rtol=1e-5,
                                   atol=1e-6, err_msg=f"request {i} alone scores differently")


@pytest.mark.parametrize("cls", EVERY, ids=lambda c: c.__name__)
def test_save_and_load_round_trip(cls, views, tmp_path):
    setting, (train, val, test) = views
    router = fitted(cls, setting, train, val)
    loaded = Router.load(router.save(tmp_path / "r"), setting.feats)
    assert type(loaded) is cls and loaded.params == router.params and loaded.is_fitted()
    np.testing.assert_allclose(loaded.scores(test), router.scores(test), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls", EVERY, ids=lambda c: c.__name__)
def test_every_hyper_parameter_is_validated_by_value(cls, views):
    setting, _ = views
    for name, default in cls.defaults.items():
        constraint = cls.constraint(name)
        assert constraint is not None, f"{cls.__name__}.{name} declares no constraint"
        assert constraint.problem(default) is None, f"{cls.__name__}.{name}'s default is refused"
        bad = constraint.invalid_example()
        with pytest.raises(RouterError, match=f"{cls.__name__}: hyper-parameter {name} "):
            cls(setting.feats, **{name: bad})
    for name, values in cls.grid.items():
        assert all(cls.constraint(name).problem(v) is None for v in values), name
    assert not cls.grid or np.prod([len(v) for v in cls.grid.values()]) == GRID_POINTS


def test_the_issues_examples_are_refused_with_a_message(views):
    setting, _ = views
    cases = [(R.MLPRouter, {"loss": "cross-entropy"}, r"loss must be one of \('ce', 'mse'\)"),
             (R.PersonalizedRouterV2, {"loss": "ce"}, r"loss must be one of \('utility'"),
             (R.KNNRouter, {"k": -3}, "k must be >= 1"),
             (R.PersonalizedRouterV2, {"k": 0}, "k must be >= 1"),
             (R.PersonalizedRouterV2, {"dropout": 1.0}, "dropout must be < 1"),
             (R.MLPRouter, {"steps": 2.5}, "steps must be an integer"),
             (R.MLPRouter, {"device": "tpu"}, "device must be one of"),
             (R.BradleyTerryRouter, {"C": float("nan")}, "C must be finite")]
    for cls, params, message in cases:
        with pytest.raises(RouterError, match=message):
            cls(setting.feats, **params)
    R.MLPRouter(setting.feats, device="cuda:1")  # a numbered device is a device


@pytest.mark.parametrize("cls", EVERY, ids=lambda c: c.__name__)
def test_tags_say_what_a_router_needs(cls, views):
    """Special needs are declared as tags, and each tag is true of the router: a "torch"
    router trains with a step budget, an "online" one takes add_user, a "needs_answers" one
    says so on a bank without answer texts, a "pairwise" one is in notebook 90's family."""
    setting, _ = views
    assert cls.tags <= {"torch", "online", "pairwise", "needs_answers", "reads_batch"}, cls.tags
    assert "reads_batch" not in cls.tags or cls.reads_labels  # only an upper bound may
    assert ("torch" in cls.tags) == ("steps" in cls.defaults)
    assert ("online" in cls.tags) == callable(getattr(cls, "add_user", None))
    assert ("pairwise" in cls.tags) == (cls.family == R.base.PAIRWISE)
    no_answers = dataclasses.replace(setting.feats, answer_x=None, answer_ok=None)
    assert ("needs_answers" in cls.tags) == (cls.unavailable(no_answers) is not None)
