"""Bring your own bank (public API only) and the one experiment path over every router."""

import numpy as np
import pandas as pd
import pytest

from prlib import routers as R
from prlib.bank import Bank, SchemaError
from prlib.data import resolve_llms
from prlib.errors import UnknownModelError
from prlib.experiment import Setting, improvement, results_table, run_setting, setting_views
from prlib.simulate import simulate_judge, simulate_multi_cost

LLM_TABLE = pd.DataFrame({
    "llm": ["tiny", "medium", "huge"], "input_usd_per_m": [0.1, 1.0, 10.0],
    "output_usd_per_m": [0.2, 2.0, 30.0],
    "description": ["A tiny fast model for simple questions.", "A medium general model.",
                    "A huge frontier model, strong at reasoning."]})


def logged_frame(with_text: bool) -> pd.DataFrame:
    """10 queries x 3 LLMs of hand-made logs: quality rises with size, longer answers cost more."""
    rows = []
    for i in range(10):
        task = "math" if i % 2 else "writing"
        for j, llm in enumerate(LLM_TABLE["llm"]):
            row = {"query": f"{task} question number {i}: please help", "llm": llm, "task": task,
                   "quality": [0.3, 0.6, 0.9][j] - 0.05 * (i % 3)}
            if with_text:
                row["response"] = " ".join(["step"] * (5 + 10 * j)) + f" answer {i}."
            else:
                row["output_tokens"] = 50 * (j + 1)
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("with_text", [True, False], ids=["responses", "token-counts"])
def test_bank_from_a_frame_costs_like_the_built_in_banks(with_text):
    bank = Bank.from_frame("my-logs", logged_frame(with_text), LLM_TABLE,
                           task_descriptions={"math": "Arithmetic word problems."})
    assert len(bank.queries) == 10 and bank.llm_names == ["tiny", "medium", "huge"]
    assert bank.has_text == with_text
    b = bank.bank.merge(LLM_TABLE, on="llm")
    expected = (b["input_tokens"] * b["input_usd_per_m"]
                + b["output_tokens"] * b["output_usd_per_m"]) / 1e6
    np.testing.assert_allclose(b["cost_usd"], expected)
    assert (b["input_tokens"] > 0).all() and (b["output_tokens"] > 0).all()
    desc = bank.task_descriptions()
    assert desc["math"] == "Arithmetic word problems." and "writing" in desc["writing"]


def test_bank_from_a_frame_says_what_is_wrong():
    frame = logged_frame(True)
    with pytest.raises(SchemaError, match=r"lacks columns \['quality'\]"):
        Bank.from_frame("x", frame.drop(columns="quality"), LLM_TABLE)
    with pytest.raises(UnknownModelError, match="the llms table passed to Bank.from_frame"):
        Bank.from_frame("x", frame.replace({"llm": {"huge": "hugee"}}), LLM_TABLE)
    with pytest.raises(SchemaError, match="'response' column .* or an 'output_tokens'"):
        Bank.from_frame("x", frame.drop(columns="response"), LLM_TABLE)
    with pytest.raises(SchemaError, match="quality outside"):
        Bank.from_frame("x", frame.assign(quality=2.0), LLM_TABLE)
    with pytest.raises(SchemaError, match="non-negative number"):
        Bank.from_frame("x", frame, LLM_TABLE.assign(input_usd_per_m="free"))
    with pytest.raises(SchemaError, match="no query has"):
        Bank.from_frame("x", frame, LLM_TABLE, task_descriptions={"cooking": "..."})


def test_bank_errors_count_the_rows_name_them_and_give_the_range():
    frame = logged_frame(True).assign(output_tokens=50.0)
    frame.loc[[3, 7, 8, 9], "output_tokens"] = np.nan  # four without a count ...
    frame.loc[7, "response"] = None  # ... of which one has no text either
    with pytest.raises(SchemaError, match=r"^bank 'x': 1 of 30 rows have neither an "
                       r"output_tokens count nor a response text: row 7 \('q00002', 'medium'\);"):
        Bank.from_frame("x", frame, LLM_TABLE)
    frame.loc[7, "response"] = "an answer"
    assert Bank.from_frame("x", frame, LLM_TABLE).bank["output_tokens"].gt(0).all()
    scores = logged_frame(True).assign(quality=0.5)
    scores.loc[[4, 11, 12, 20], "quality"] = [7.0, -1.0, 3.0, 9.5]
    with pytest.raises(SchemaError, match=r"quality outside \[0, 1\] in 4 of 30 rows \(range "
                       r"seen -1 to 9.5\): row 4 \('q00001', 'medium', quality 7\), row 11 .* "
                       r"and 1 more; map your scores"):
        Bank.from_frame("x", scores, LLM_TABLE)
    with pytest.raises(SchemaError, match=r"1 of 30 rows have a quality that is not a number: "
                       r"row 2 \('q00000', 'huge', quality 'good'\)"):
        Bank.from_frame("x", logged_frame(True).astype({"quality": object}).assign(
            quality=lambda f: f["quality"].where(f.index != 2, "good")), LLM_TABLE)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_bank_file_reads_with_its_llm_columns_inline_or_an_llms_table(tmp_path, suffix):
    from prlib.bank import read_bank

    frame = logged_frame(True)
    expected = Bank.from_frame("my-logs", frame, LLM_TABLE)
    inline, bare, llms = (tmp_path / f"my-logs{suffix}", tmp_path / f"bare{suffix}",
                          tmp_path / "llms.csv")
    write = {".csv": lambda f, p: f.to_csv(p, index=False), ".parquet": pd.DataFrame.to_parquet,
             ".jsonl": lambda f, p: f.to_json(p, orient="records", lines=True)}[suffix]
    write(frame.merge(LLM_TABLE, on="llm"), inline)
    write(frame, bare)
    LLM_TABLE.to_csv(llms, index=False)
    for bank in (read_bank(inline), read_bank(bare, llms=llms, name="my-logs"),
                 read_bank(expected.save(tmp_path / "saved"))):
        assert bank.name == "my-logs"
        pd.testing.assert_frame_equal(bank.bank, expected.bank, check_dtype=False)
        pd.testing.assert_frame_equal(bank.llms, expected.llms, check_dtype=False)
    with pytest.raises(SchemaError, match="lacks columns .*--llms FILE"):
        read_bank(bare)
    write(frame.merge(LLM_TABLE, on="llm").assign(
        input_usd_per_m=lambda f: f["input_usd_per_m"].where(f.index != 4, 9.0)), inline)
    with pytest.raises(SchemaError, match=r"differ between rows of the same LLM: \['medium'\]"):
        read_bank(inline)


def test_an_unknown_source_is_named_as_such(tmp_path):
    with pytest.raises(UnknownModelError, match="unknown source 'my-lab'.*Bank.from_frame"):
        resolve_llms("my-lab", ["gpt-x"], tmp_path)


SMALL = {c.__name__: {"steps": 10, "eval_every": 5} for c in R.registered()
         if "torch" in c.tags}


@pytest.mark.parametrize("feedback", ["utility", "choice"])
def test_every_registered_router_runs_on_a_bank_of_your_own(feedback):
    bank = Bank.from_frame("my-logs", logged_frame(True), LLM_TABLE)
    prefs = simulate_multi_cost(bank) if feedback == "utility" else simulate_judge(bank)
    setting = Setting("own bank", bank, prefs, feedback=feedback,
                      metric="reward" if feedback == "utility" else "accuracy")
    res = run_setting(setting, seeds=[0], params=SMALL)
    assert res["router"].tolist() == [
        c.row_name(setting.feedback, setting.preferences.strategy) for c in R.registered()
        if not c.unavailable_on(setting.feats, setting.preferences.strategy)]
    assert set(res.attrs["not_run"]) == ({R.StructuredReferenceRouter.name}
                                         if feedback == "choice" else set())
    assert res["reward"].notna().all() and (res["n_test"] > 0).all()
    oracle = res.loc[res["router"] == setting.oracle_name, "reward"].item()
    assert (res["reward"] <= oracle + 1e-9).all()


def test_a_new_router_is_one_class_and_a_decorator():
    """A toy router registered here shows up in the comparison (the path notebook 50 runs)
    without touching any other file."""

    @R.register
    class AlwaysTheSecond(R.Router):
        """Routes every request to the second LLM (a toy)."""

        name, family = "Always the second LLM", "simple"

        def _raw_scores(self, requests):
            s = np.zeros((len(requests), self.n_llms))
            s[:, 1] = 1.0
            return s

    try:
        bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
        setting = Setting("toy", bank, simulate_multi_cost(bank))
        res = run_setting(setting, seeds=[0, 1], params=SMALL)
        assert AlwaysTheSecond.name in set(res["router"])
        row = res[res["router"] == AlwaysTheSecond.name]
        assert (row["family"] == "simple").all() and (row["cost_per_1k"] > 0).all()
        table = results_table(res, ["reward"], mark="reward")
        assert AlwaysTheSecond.name in table["router"].tolist()
        assert improvement(res, "reward", R.PersonalizedRouter.name)["strongest_baseline"] != \
            setting.oracle_name
        assert AlwaysTheSecond.name in R.catalogue()["router"].tolist()
    finally:
        R.unregister(AlwaysTheSecond)
    assert AlwaysTheSecond.name not in R.catalogue()["router"].tolist()


def test_a_setting_refuses_mismatched_inputs():
    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    prefs = simulate_multi_cost(bank)
    with pytest.raises(ValueError, match="feedback"):
        Setting("x", bank, prefs, feedback="stars")
    other = Bank.from_frame("other", logged_frame(False), LLM_TABLE)
    with pytest.raises(ValueError, match="over bank 'my-logs'"):
        Setting("x", other, prefs)
    with pytest.raises(R.RouterError, match="not a registered router"):
        run_setting(Setting("x", bank, prefs), routers=[type("Loose", (R.Router,), {})])


def test_smoke_numbers_are_pinned(llmrouter_bank):
    """Regression pins of the smoke setting (400 LLMRouter queries, seed 0, one torch thread):
    the deterministic routers to 1e-4, v2 and v1 (30 steps each) to 0.01 reward. A change
    that moves them must say why in its commit and update the pins."""
    from prlib import routers as R

    bank = llmrouter_bank.sample_queries(400, seed=0)
    setting = Setting("pin", bank, simulate_multi_cost(bank))
    res = run_setting(setting, [R.BestPerUserTaskRouter, R.PerUserKNNRouter, R.OracleRouter,
                                R.CeilingRouter, R.RandomRouter, R.PersonalizedRouter,
                                R.PersonalizedRouterV2],
                      seeds=[0], params={"PersonalizedRouter": {"steps": 30},
                                         "PersonalizedRouterV2": {"steps": 30},
                                         "PerUserKNNRouter": {"k": 10}}).set_index("router")
    reward = res["reward"]
    assert reward["Best LLM per user and task"] == pytest.approx(0.361916, abs=1e-4)
    assert reward["kNN per user"] == pytest.approx(0.323018, abs=1e-4)
    assert reward[setting.oracle_name] == pytest.approx(0.449361, abs=1e-4)
    assert reward[setting.ceiling_name] == pytest.approx(0.396978, abs=1e-4)
    assert res.loc[setting.ceiling_name, "score"] == pytest.approx(100.0)  # the score's top
    assert res.loc[setting.oracle_name, "score"] > 100.0
    assert abs(res.loc["Random", "score"]) < 5  # random routing scores about 0 by definition
    assert reward[R.PersonalizedRouter.name] == pytest.approx(0.331965, abs=0.01)  # v1
    assert reward[R.PersonalizedRouterV2.name] == pytest.approx(0.368140, abs=0.01)  # v2


def test_routers_that_route_identically_are_marked():
    """same_picks_as names the routers whose test picks equal on every seed, and only those."""
    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    setting = Setting("marks", bank, simulate_multi_cost(bank))
    res = run_setting(setting, [R.CheapestRouter, R.RandomRouter, R.OracleRouter], seeds=[0, 1])
    cheap = res[res["router"] == "Cheapest LLM"].copy().assign(router="Cheapest again")
    table = results_table(pd.concat([res, cheap]), ["reward"])
    marks = dict(zip(table["router"], table["same_picks_as"]))
    assert marks["Cheapest LLM"] == "Cheapest again" and marks["Cheapest again"] == "Cheapest LLM"
    assert marks["Random"] == "" and marks[setting.oracle_name] == ""


# ------------------------------------------------------------------ selection budget (grids)
def test_every_router_with_hyper_parameters_gets_the_same_grid_budget():
    """Ours and every baseline with hyper-parameters declare exactly GRID_POINTS points; a
    router that declares another number is refused at registration."""
    from prlib.routers.base import GRID_POINTS, grid_points

    for cls in R.registered():
        if cls.defaults:
            assert len(grid_points(cls)) == GRID_POINTS, cls.__name__
    with pytest.raises(R.RouterError, match="same selection budget"):
        @R.register
        class Greedy(R.Router):
            """Tries more points than the others."""
            name, family = "Greedy", "simple"
            defaults = {"a": 1}
            grid = {"a": [1, 2, 3, 4, 5]}
    assert "Greedy" not in {c.__name__ for c in R.registered()}


def test_tuning_picks_the_validation_best_point_on_development_seeds_only():
    """tune_setting fits every grid point and keeps the one with the best validation reward;
    run_setting then runs that point. Report seeds are refused for tuning."""
    from prlib.experiment import tune_and_run, tune_setting

    @R.register
    class FixedLLM(R.Router):
        """Always the LLM named by its hyper-parameter (a toy with a known best point)."""
        name, family = "Fixed LLM (toy)", "simple"
        defaults = {"llm": 0, "unused": 0}
        grid = {"llm": [0, 1], "unused": [0, 1]}

        def _raw_scores(self, requests):
            s = np.zeros((len(requests), self.n_llms))
            s[:, self.params["llm"]] = 1.0
            return s

    try:
        bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
        setting = Setting("tune", bank, simulate_multi_cost(bank, ps=(1.0,)))
        tuning = tune_setting(setting, [FixedLLM], seeds=[0])
        assert len(tuning.frame) == 4
        # quality only (p = 1): the medium LLM (index 1) beats the tiny one on validation
        assert tuning.chosen["FixedLLM"] == {"llm": 1, "unused": 0}
        assert tuning.frame["chosen"].sum() == 1
        _, res = tune_and_run(setting, [100], routers=[FixedLLM], tune_seeds=[0])
        test = setting_views(setting, 100)[2]
        assert res["reward"].iloc[0] == pytest.approx(np.nanmean(test.utility[:, 1]))
        with pytest.raises(ValueError, match="report seeds"):
            tune_setting(setting, [FixedLLM], seeds=[100])
    finally:
        R.unregister(FixedLLM)


# ------------------------------------------------------------------ cascades pay for every call
def test_frugalgpt_is_charged_for_every_llm_it_calls():
    """A cascade that calls cheap LLMs first pays for each: its cost is the sum over the LLMs it
    called, and a multi-cost user's reward loses (1 - p) * cost_norm of every rejected one."""
    from prlib.metrics import routing_metrics

    bank = Bank.from_frame("my-logs", logged_frame(True), LLM_TABLE)
    setting = Setting("cascade", bank, simulate_multi_cost(bank, ps=(0.9, 0.95)))
    train, val, test = setting_views(setting, 0)
    router = R.FrugalGPTRouter(setting.feats, max_chain=3).fit(train, val)
    assert len(router.chain_) == 3
    router.thresholds_ = np.array([np.inf, np.inf])  # reject every answer: all three are called
    picks = router.route(test)
    calls = router.calls(test, picks)
    assert calls.all() and (picks == router.chain_[-1]).all()
    m = routing_metrics(test, picks, calls)
    rows = np.arange(len(test))
    assert m["cost_usd"] == pytest.approx(test.cost.sum(1).mean())
    assert m["calls"] == 3
    extra = test.call_cost.sum(1) - test.call_cost[rows, picks]
    assert m["reward"] == pytest.approx((test.utility[rows, picks] - extra).mean())
    assert m["reward"] < routing_metrics(test, picks)["reward"]  # charging the calls costs


def test_frugalgpt_is_listed_not_run_on_a_bank_without_answers():
    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    setting = Setting("no answers", bank, simulate_multi_cost(bank))
    res = run_setting(setting, [R.CheapestRouter, R.FrugalGPTRouter], seeds=[0])
    assert set(res["router"]) == {"Cheapest LLM"}
    assert "no answer texts" in res.attrs["not_run"]["FrugalGPT (cascade)"]
    table = results_table(res, ["reward"])
    row = table[table["router"] == "FrugalGPT (cascade)"].iloc[0]
    assert row["reward"].startswith("not run") and row["seeds"] == 0
    with pytest.raises(R.RouterError, match="no answer texts"):
        R.FrugalGPTRouter(setting.feats).fit(*setting_views(setting, 0)[:2])


def test_fits_in_worker_processes_give_the_same_numbers_as_in_one():
    """``jobs=2`` runs the fits in two processes: the frame (timings aside), the tuning and the
    fitted routers are those of ``jobs=1``, in the same order."""
    from prlib.experiment import tune_setting

    bank = Bank.from_frame("my-logs", logged_frame(True), LLM_TABLE)
    setting = Setting("jobs", bank, simulate_multi_cost(bank))
    routers = [R.BestPerUserRouter, R.UserMLPRouter, R.PerUserKNNRouter]
    small = {"UserMLPRouter": {"steps": 10, "eval_every": 5}}
    runs = {}
    for jobs in (1, 2):
        fitted = {}
        res = run_setting(setting, routers, [0, 1], small, fitted=fitted, jobs=jobs)
        tuning = tune_setting(setting, routers[1:2], [0], small, jobs=jobs)
        runs[jobs] = (res.drop(columns=["fit_s", "fit_memory_mb"]),
                      tuning.frame.drop(columns="fit_s"), fitted)
    pd.testing.assert_frame_equal(runs[1][0], runs[2][0])
    pd.testing.assert_frame_equal(runs[1][1], runs[2][1])
    assert list(runs[1][2]) == list(runs[2][2])
    for (name, seed), router in runs[1][2].items():
        test = setting_views(setting, seed)[2]
        np.testing.assert_allclose(router.scores(test), runs[2][2][name, seed].scores(test),
                                   err_msg=name)
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        run_setting(setting, routers[:1], [0], jobs=0)


def test_train_per_user_thins_each_users_training_requests_and_nothing_else():
    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    full = Setting("all", bank, simulate_multi_cost(bank))
    sparse = Setting("sparse", bank, full.preferences, train_per_user=3)
    (train, val, test), (s_train, s_val, s_test) = setting_views(full, 0), setting_views(sparse, 0)
    have = train.frame.groupby("user_id").size()
    kept = s_train.frame.groupby("user_id").size().reindex(have.index, fill_value=0)
    assert (kept == np.minimum(3, have)).all() and (have > 3).any()
    key = lambda r: set(zip(r.frame["user_id"], r.frame["query_id"]))  # noqa: E731
    assert key(s_train) <= key(train)
    rows = [train.frame.index[(train.frame["user_id"] == u) & (train.frame["query_id"] == q)][0]
            for u, q in zip(s_train.frame["user_id"], s_train.frame["query_id"])]
    np.testing.assert_array_equal(s_train.utility, train.utility[rows])  # labels travel along
    for a, b in ((s_val, val), (s_test, test)):
        pd.testing.assert_frame_equal(a.frame, b.frame)
    assert key(setting_views(sparse, 0)[0]) == key(s_train)  # seeded
    with pytest.raises(ValueError, match="train_per_user must be >= 1"):
        Setting("none", bank, full.preferences, train_per_user=0)


def test_one_sparse_user_among_dense_ones_rotates_with_the_seed_and_alone_is_scored():
    from prlib.experiment import sparse_users_of

    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    full = Setting("all", bank, simulate_multi_cost(bank))
    one = Setting("one sparse", bank, full.preferences, train_per_user=2, sparse_users=1)
    users = sorted(full.preferences.users["user_id"])
    picked = [sparse_users_of(users, 1, seed)[0] for seed in range(len(users))]
    assert sorted(picked) == users  # a different user for each of len(users) seeds
    for seed in (0, 1):
        (train, _, test), (s_train, _, s_test) = setting_views(full, seed), setting_views(one, seed)
        [sparse] = sparse_users_of(users, 1, seed)
        have = train.frame.groupby("user_id").size()
        kept = s_train.frame.groupby("user_id").size().reindex(have.index, fill_value=0)
        assert kept[sparse] == min(2, have[sparse]) and have[sparse] > 2
        assert (kept.drop(sparse) == have.drop(sparse)).all()  # the others stay dense
        assert set(s_test.frame["user_id"]) == {sparse}  # only the sparse user is scored
        assert len(s_test) == int((test.frame["user_id"] == sparse).sum())
    with pytest.raises(ValueError, match="sparse_users must be between 1 and"):
        Setting("all sparse", bank, full.preferences, train_per_user=2,
                sparse_users=len(users))


def test_a_sparse_offset_thins_each_user_in_turn_on_one_split():
    from dataclasses import replace

    from prlib.experiment import sparse_users_of

    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    full = Setting("all", bank, simulate_multi_cost(bank))
    one = Setting("one sparse", bank, full.preferences, train_per_user=2, sparse_users=1)
    users = sorted(full.preferences.users["user_id"])
    seed = 3
    scored, splits = [], set()
    for offset in range(len(users)):
        train, val, test = setting_views(replace(one, sparse_offset=offset), seed)
        [user] = set(test.frame["user_id"])
        kept = train.frame.groupby("user_id").size()
        assert kept[user] == 2 and (kept.drop(user) > 2).all()  # that user alone is thinned
        scored.append(user)
        splits.add(tuple(sorted(val.frame["query_id"])))
    assert sorted(scored) == users  # every user once, on the same split of queries
    assert len(splits) == 1
    assert scored[0] == sparse_users_of(users, 1, seed)[0]  # offset 0: the seed's own user
    assert replace(one, sparse_offset=1).fingerprint != one.fingerprint
    for bad in ({"sparse_offset": 1, "sparse_users": None}, {"sparse_offset": -1},
                {"sparse_offset": len(users)}, {"sparse_offset": True}, {"sparse_offset": 1.0}):
        with pytest.raises(ValueError, match="sparse_offset shifts which users are sparse"):
            replace(one, **bad)
    assert replace(one, sparse_offset=len(users) - 1).sparse_offset == len(users) - 1


def test_a_shared_object_is_written_once_and_read_once_per_process():
    import gc
    import os
    import pickle

    from prlib import parallel

    big = {"rows": list(range(1000))}
    shared = parallel.Shared(big)
    first, second = pickle.dumps(shared), pickle.dumps(shared)
    assert len(first) < 500 and first == second  # a path, the same one each time
    path = shared.path
    parallel._SHARED.clear()
    a, b = pickle.loads(first), pickle.loads(second)
    assert a.obj == big and a.obj is b.obj  # loaded once in this process
    assert shared.obj is big  # the sender keeps the object itself
    del shared
    gc.collect()
    assert not os.path.exists(path)  # the file goes with the sender's object


def test_views_sent_to_a_worker_land_in_that_workers_cache():
    """What a worker receives (the pickled views function) must fill the module's cache, so the
    worker's next fit of the same seed reuses the views; a closure would carry its own copy."""
    import cloudpickle

    from prlib import experiment, parallel

    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    setting = Setting("cache", bank, simulate_multi_cost(bank))
    shared = parallel.Shared(setting)  # the sender keeps it (its file lives as long)
    sent = cloudpickle.loads(cloudpickle.dumps(experiment._views_by_seed(shared)))
    experiment._VIEWS.clear()
    first = sent(0)
    assert (setting.fingerprint, 0) in experiment._VIEWS
    assert sent(0) is first  # the second fit of the seed reads the cache


def _sleep_and_report(seconds):
    import time

    start = time.monotonic()
    time.sleep(seconds)
    return seconds, start


def test_parallel_fits_start_the_costliest_first_and_return_in_task_order():
    """``map_fits(cost=...)`` with two workers: the two costliest tasks (last in task order)
    start before any other, and results come back in task order."""
    from prlib.parallel import map_fits

    tasks = [(0.05,), (0.05,), (0.05,), (0.05,), (0.5,), (0.5,)]
    out = list(map_fits(_sleep_and_report, tasks, jobs=2, cost=lambda s: s))
    assert [o[0] for o in out] == [t[0] for t in tasks]
    assert max(o[1] for o in out[4:]) < min(o[1] for o in out[:4])


# ------------------------------------------------------------------ the fit cache across notebooks
def test_the_fit_cache_reuses_a_fit_only_when_nothing_it_depends_on_changed(monkeypatch,
                                                                            tmp_path):
    """With the cache on, a second identical tune-and-run reads every row back without fitting
    (the same frames); another seed, other parameters, other users or other features fit
    again; fitted routers asked for are always fitted; with the cache off every fit runs."""
    from dataclasses import replace

    from prlib.experiment import tune_and_run

    monkeypatch.setenv("PRLIB_FIT_CACHE", "1")
    monkeypatch.setenv("PRLIB_CACHE_DIR", str(tmp_path))
    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    setting = Setting("cache", bank, simulate_multi_cost(bank))
    fits = []
    fit = R.PerUserKNNRouter.fit

    def counted(self, *args, **kw):
        fits.append(self.params["k"])
        return fit(self, *args, **kw)

    monkeypatch.setattr(R.PerUserKNNRouter, "fit", counted)
    run = dict(routers=[R.PerUserKNNRouter], tune_seeds=[0])
    tuning, res = tune_and_run(setting, [100], **run)
    n_grid = len(tuning.frame)
    assert len(fits) == n_grid + 1 and n_grid >= 2
    again_tuning, again = tune_and_run(replace(setting, name="renamed"), [100], **run)
    assert len(fits) == n_grid + 1  # nothing fitted: every row read back
    pd.testing.assert_frame_equal(again.drop(columns="setting"), res.drop(columns="setting"))
    pd.testing.assert_frame_equal(again_tuning.frame.drop(columns="setting"),
                                  tuning.frame.drop(columns="setting"))
    assert set(again["setting"]) == {"renamed"}  # the row says where it is now
    tune_and_run(setting, [101], **run)  # another report seed: one more fit
    assert len(fits) == n_grid + 2
    k = tuning.chosen["PerUserKNNRouter"]["k"]
    run_setting(setting, [R.PerUserKNNRouter], [100], {"PerUserKNNRouter": {"k": k + 1}})
    assert fits[-1] == k + 1 and len(fits) == n_grid + 3  # other parameters: fitted
    other_users = Setting("cache", bank, simulate_multi_cost(bank, ps=(0.2, 0.9)))
    tune_and_run(other_users, [100], **run)
    assert len(fits) == 2 * n_grid + 4  # other users: tuned and run again
    feats = setting.feats
    other_feats = replace(setting, features=replace(feats, llm_x=feats.llm_x + 1.0))
    run_setting(other_feats, [R.PerUserKNNRouter], [100], tuning.params())
    assert len(fits) == 2 * n_grid + 5  # other features: fitted
    fitted = {}
    run_setting(setting, [R.PerUserKNNRouter], [100], tuning.params(), fitted=fitted)
    assert len(fits) == 2 * n_grid + 6 and fitted  # a fitted router asked for: fitted
    for stored in (tmp_path / "fits").rglob("*.pkl"):
        stored.write_bytes(b"cut short")  # unreadable entries: fitted again, not an error
    tune_and_run(setting, [100], **run)
    assert len(fits) == 3 * n_grid + 7
    monkeypatch.setenv("PRLIB_FIT_CACHE", "0")
    tune_and_run(setting, [100], **run)
    assert len(fits) == 4 * n_grid + 8  # cache off: everything fitted
