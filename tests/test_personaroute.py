"""prlib.personaroute and prlib.efficiency: the bench as settings, the sparsity sweep, a scaling
point, and the efficiency measurements (what they measure, not how fast: timings are never
asserted)."""

import json

import numpy as np
import pandas as pd
import pytest

from prlib import efficiency, personaroute
from prlib.bank import Bank
from prlib.experiment import setting_views
from prlib.routers import BestPerUserRouter, BestSingleRouter, PersonalizedRouterV2
from prlib.simulate import BenchConfig, PreferencesError, personaroute_bench


def small_bank() -> Bank:
    """24 queries x 4 LLMs with quality and token counts (no texts: multi-cost users only)."""
    llms = pd.DataFrame({"llm": ["a", "b", "c", "d"], "input_usd_per_m": [0.1, 0.5, 2.0, 10.0],
                         "output_usd_per_m": [0.2, 1.0, 6.0, 30.0],
                         "description": ["A small model.", "A mid model.", "A large model.",
                                         "A frontier model."]})
    rng = np.random.default_rng(0)
    rows = [{"query": f"question {i} about topic {i % 4}", "llm": m, "task": "chat",
             "quality": float(np.clip(0.2 * j + 0.3 * rng.random(), 0, 1)),
             "output_tokens": 40 * (j + 1)}
            for i in range(24) for j, m in enumerate(llms["llm"])]
    return Bank.from_frame("small-bench", pd.DataFrame(rows), llms)


@pytest.fixture(scope="module")
def bench():
    bank = small_bank()
    cfg = BenchConfig(n_users=30, queries_per_user=16, llms=("a", "b", "c", "d"))
    return bank, cfg


def test_bench_settings_thin_training_per_user_and_keep_the_strategys_feedback(bench):
    bank, cfg = bench
    full = personaroute.bench_settings(bank, cfg, strategies=["multi_cost"])["multi_cost"]
    sparse = personaroute.bench_settings(bank, cfg, train_per_user=3, features=full.feats,
                                         strategies=["multi_cost"])["multi_cost"]
    assert (full.feedback, full.metric) == ("utility", "reward")
    assert full.preferences.users["user_id"].nunique() == 30
    tr_full, _, te_full = setting_views(full, 0)
    tr, _, te = setting_views(sparse, 0)
    per_user = tr.frame.groupby("user_id").size()
    assert per_user.max() <= 3 and per_user.max() < tr_full.frame.groupby("user_id").size().max()
    pd.testing.assert_frame_equal(te.frame, te_full.frame)  # the test requests do not move


def test_the_bench_refuses_an_unknown_strategy(bench):
    bank, cfg = bench
    with pytest.raises(PreferencesError, match="strategies must be a non-empty subset"):
        personaroute_bench(bank, cfg, strategies=("multicost",))
    assert list(personaroute_bench(bank, cfg, strategies=("multi_cost",))) == ["multi_cost"]


def test_sparsity_sweep_runs_each_level_on_the_same_test_requests(bench):
    bank, cfg = bench
    setting = personaroute.bench_settings(bank, cfg, strategies=["multi_cost"])["multi_cost"]
    out = personaroute.sparsity_sweep(setting, [2, 8], [BestSingleRouter, BestPerUserRouter],
                                      seeds=[0], params={"UserMLPRouter": {"steps": 5}})
    assert sorted(out["train_per_user"].unique()) == [2, 8]
    assert out.groupby("train_per_user")["n_test"].nunique().eq(1).all()
    assert out["n_test"].nunique() == 1
    n_train = out.groupby("train_per_user")["n_train"].first()
    assert n_train[2] < n_train[8] <= 8 * 30
    # the best LLM per user reads each user's few requests: more of them change its picks
    picks = out[out["router"] == BestPerUserRouter.name].set_index("train_per_user")["picks_hash"]
    assert picks[2] != picks[8]
    with pytest.raises(ValueError, match="levels is empty"):
        personaroute.sparsity_sweep(setting, [], [BestSingleRouter], seeds=[0])


def test_a_scaling_point_measures_ours_on_a_bench_of_that_size(bench):
    bank, _ = bench
    row = personaroute.scaling_point(20, bank, queries_per_user=16, train_per_user=5, calls=5,
                                     llms=("a", "b", "c", "d"))
    assert row["router"] == "PersonalizedRouter v3 (ours)"
    assert row["n_users"] == 20 and row["train_requests"] <= 20 * 5
    assert row["fit_s"] > 0 and row["steps_run"] is None  # v3 is not trained by steps
    assert row["single_calls"] == 5
    assert np.isfinite(row["test_metric"]) and row["metric"] == "reward"
    assert row["process_peak_rss_mb"] >= row["fit_memory_increase_mb"] >= 0
    json.dumps(row)  # one JSON line per point (the subprocess protocol)
    v2 = personaroute.scaling_point(20, bank, router="PersonalizedRouterV2", queries_per_user=16,
                                    train_per_user=5, params={"steps": 10, "eval_every": 5},
                                    calls=5, llms=("a", "b", "c", "d"))
    assert v2["steps_run"] == 10 and v2["s_per_step"] > 0


def test_a_fresh_process_reports_its_own_peak_memory_not_its_parents():
    """A scaling point runs in a process started by a big one (a notebook's kernel): its peak
    is its own. (``ru_maxrss`` would report the parent's 1.5 GB.)"""
    import subprocess
    import sys

    held = np.ones(1_500 * 2 ** 20 // 8)  # 1.5 GB, touched
    assert efficiency.peak_rss_mb() > 1_500
    out = subprocess.run([sys.executable, "-c", "from prlib.efficiency import peak_rss_mb; "
                          "print(peak_rss_mb())"], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 1_000
    del held


def test_peak_memory_sees_an_allocation_made_and_freed_inside_the_block():
    with efficiency.PeakMemory(interval=0.001) as quiet:
        pass
    with efficiency.PeakMemory(interval=0.001) as mem:
        block = np.ones(200 * 2 ** 20 // 8)  # 200 MB, touched
        block[::512] += 1
        import time
        time.sleep(0.05)
        del block
    assert mem.increase_mb > 150 > quiet.increase_mb
    assert mem.peak_mb >= mem.before_mb


def test_routing_speed_times_batches_and_single_requests(bench):
    bank, cfg = bench
    setting = personaroute.bench_settings(bank, cfg, strategies=["multi_cost"])["multi_cost"]
    train, val, test = setting_views(setting, 0)
    router = BestPerUserRouter(setting.feats, seed=0).fit(train, val)
    calls = []
    route = router.route
    router.route = lambda req: (calls.append(len(req)), route(req))[1]
    out = efficiency.routing_speed(router, test, calls=7, warmup=3, repeats=2)
    assert out["single_calls"] == 7 and out["batch_requests"] == len(test)
    assert calls == [len(test)] * 3 + [1] * 10  # warm-up + 2 repeats, then 3 + 7 singles
    assert 0 < out["single_p50_ms"] <= out["single_p99_ms"] and out["requests_per_second"] > 0
    calls.clear()
    single = efficiency.routing_speed(router, test, calls=7, warmup=3, batched=False)
    assert calls == [1] * 10 and "requests_per_second" not in single  # no batched call
    with pytest.raises(ValueError, match="at least one request"):
        efficiency.routing_speed(router, test.select(np.zeros(len(test), bool)))


def test_a_timed_fit_reports_the_steps_of_a_torch_router_and_none_for_a_table(bench):
    bank, cfg = bench
    setting = personaroute.bench_settings(bank, cfg, strategies=["multi_cost"])["multi_cost"]
    train, val, _ = setting_views(setting, 0)
    ours = efficiency.timed_fit(PersonalizedRouterV2(setting.feats, seed=0, steps=10,
                                                     eval_every=5), train, val)
    table = efficiency.timed_fit(BestPerUserRouter(setting.feats, seed=0), train, val)
    assert ours.steps_run == 10 and ours.best_step in (0, 5, 10) and ours.seconds_per_step > 0
    assert table.steps_run is None and np.isnan(table.seconds_per_step)
