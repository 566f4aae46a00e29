"""The headroom checks (prlib.headroom.verdicts and their wording) and the benchmarks that read
notebook 50's cells: more report seeds, the sparse-user study, every user sparse in turn."""
import numpy as np
import pandas as pd
import pytest


def _table(ours, ours_ci, ref, ref_ci):
    return pd.DataFrame([{"setting": "s", "feedback": "utility", "train_per_user": "3",
                          "ours_minus_baseline": ours, "ours_ci_low": ours_ci[0],
                          "ours_ci_high": ours_ci[1], "reference_minus_baseline": ref,
                          "reference_ci_low": ref_ci[0], "reference_ci_high": ref_ci[1]}])


@pytest.mark.parametrize("ours, ours_ci, ref, ref_ci, never_worse, takes", [
    (0.009, (0.002, 0.016), 0.010, (0.004, 0.016), True, True),  # 90 % of the lead, CI > 0
    (0.008, (-0.001, 0.017), 0.009, (0.001, 0.017), True, False),  # CI not above 0
    (0.006, (0.001, 0.011), 0.010, (0.004, 0.016), True, False),  # 60 % of the lead
    (-0.01, (-0.02, -0.001), 0.010, (0.004, 0.016), False, False),  # worse than the baseline
    (0.002, (-0.004, 0.008), 0.001, (-0.003, 0.005), True, None),  # no headroom: no verdict
])
def test_the_verdicts_say_never_worse_and_takes_the_headroom_as_the_router_issue_asks(
        ours, ours_ci, ref, ref_ci, never_worse, takes):
    from prlib import headroom

    row = headroom.verdicts(_table(ours, ours_ci, ref, ref_ci)).iloc[0]
    assert bool(row["never_worse"]) is never_worse
    if takes is None:
        assert not row["headroom"] and row["takes_headroom"] is pd.NA
    else:
        assert row["headroom"] and bool(row["takes_headroom"]) is takes


def test_the_more_seeds_benchmark_runs_notebook_50s_sweep_at_smoke_size():
    import headroom_seeds  # writes into build/smoke-figures/, as a smoke notebook does

    table, checks = headroom_seeds.main(["--smoke", "--jobs", "1"])
    assert len(table) == len(checks) == 6  # 2 levels x 2 feedback kinds + 2 one-sparse cells
    assert set(checks["feedback"]) == {"utility", "choice"}
    assert table["ours"].notna().all() and table["reference"].notna().all()


def test_the_sparse_user_study_scores_each_seeds_rotated_user_on_development_seeds_only():
    import sparse_user_study  # writes into build/smoke-figures/

    from prlib.experiment import sparse_users_of

    for seeds in (["3", "100"], ["3", "105"], ["0", "3"]):  # report seeds, the tuning seed
        with pytest.raises(SystemExit):
            sparse_user_study.main(["--smoke", "--seeds", *seeds])
    results, by_user, stats = sparse_user_study.main(["--smoke", "--seeds", "3", "4"])
    users = [f"mc-0{i}" for i in range(9)]
    assert {s: u for s, u in zip(results["seed"], results["sparse_user"])} == {
        s: sparse_users_of(users, 1, s)[0] for s in (3, 4)}
    assert set(results["role"]) == {"ours", "reference", "baseline", "ceiling", "oracle"}
    assert sorted(by_user["sparse_user"]) == ["mc-03", "mc-04"]
    assert results[["val_reward", "test_reward"]].notna().all().all()
    assert "ours - baseline (val)" in stats
    # every row is scored on the sparse user's own requests: the oracle's reward is the mean
    # best true utility of exactly those (val: that user's validation requests; test: the cell's)
    from prlib.config import SMOKE_SIZES
    from prlib.experiment import setting_views

    setting = sparse_user_study.cell_setting("choice", 5, SMOKE_SIZES["max_queries"])
    oracle = results[results["role"] == "oracle"].set_index("seed")
    for seed in (3, 4):
        _, val, test = setting_views(setting, seed, raw=True)
        val = val.select(val.frame["user_id"].to_numpy() == oracle.loc[seed, "sparse_user"])
        for split, req in (("val_reward", val), ("test_reward", test)):
            best = np.where(req.candidates, req.utility, -np.inf).max(1).mean()
            assert oracle.loc[seed, split] == pytest.approx(best), (seed, split)


def test_the_rotated_one_sparse_benchmark_scores_every_user_once_per_seed():
    import one_sparse_rotated  # writes into build/smoke-figures/

    from prlib import routers

    names = ["PersonalizedRouterV3", "StructuredReferenceRouter", "KNNRouter", "CeilingRouter",
             "OracleRouter"]
    rows, table, checks = one_sparse_rotated.main(["--smoke", "--jobs", "1", "--routers", *names])
    users = [f"mc-0{i}" for i in range(9)]
    for _, part in rows.groupby(["router", "seed"]):
        assert sorted(part["sparse_user"]) == users  # each user sparse once on each seed
        assert sorted(part["sparse_offset"]) == list(range(9))
    assert set(rows["seed"]) == {110, 111}
    # a seed's value is the mean over its nine sparse users, and the table pairs those
    seed_rows = one_sparse_rotated.per_seed(rows, users)
    ours = rows["router"].str.contains("v3")
    expect = rows[ours].groupby("seed")["reward"].mean()
    got = seed_rows[seed_rows["router"].str.contains("v3")].set_index("seed")["reward"]
    assert np.allclose(got.sort_index(), expect.sort_index())
    assert len(table) == len(checks) == 1 and table["setting"].iloc[0].endswith(
        one_sparse_rotated.SUFFIX)
    assert np.isfinite(table[["ours_ci_low", "reference_ci_low"]].to_numpy()).all()
    for broken in (rows[~((rows["seed"] == 110) & (rows["sparse_offset"] == 3))],  # a user out
                   rows[rows["sparse_user"] != "mc-05"],  # one user missing everywhere
                   pd.concat([rows, rows.iloc[:1]])):  # a row twice
        with pytest.raises(ValueError, match="each of the same sparse users once"):
            one_sparse_rotated.per_seed(broken, users)
    with pytest.raises(SystemExit):  # development seeds are not reported
        one_sparse_rotated.main(["--smoke", "--seeds", "3", "4"])
    # the per-user gains the figure shows: each user once, ours minus the named baseline
    gains = one_sparse_rotated.gains_by_user(rows, table)
    assert sorted(gains["sparse_user"]) == users
    base = table["strongest_baseline"].iloc[0]
    one = rows[rows["sparse_user"] == "mc-04"].set_index(["router", "seed"])["reward"]
    got = gains.set_index("sparse_user").loc["mc-04"]
    ceiling = next(r for r in set(rows["router"]) if r.startswith("Ceiling"))  # its row name
    for column, name in (("ours", routers.PersonalizedRouterV3.name),
                         ("reference", routers.StructuredReferenceRouter.name),
                         ("ceiling", ceiling)):
        expect = (one.loc[name] - one.loc[base]).mean()
        assert np.isclose(got[column], expect), column


def test_a_findings_line_ends_with_the_cells_verdict_and_the_paragraph_with_their_tally():
    from prlib import headroom
    from prlib.report import seeds_text

    table = pd.concat([_table(+0.02, (0.01, 0.03), 0.02, (0.01, 0.03)),  # takes it
                       _table(+0.01, (-0.01, 0.03), 0.02, (0.01, 0.03)),  # misses it
                       _table(-0.02, (-0.03, -0.01), 0.0, (-0.01, 0.01))],  # worse, no headroom
                      ignore_index=True)
    checks = headroom.verdicts(table)
    said = [headroom.verdict_suffix(c) for c in checks.itertuples()]
    assert said == [": takes 100% of the reference's lead, the CI above 0",
                    ": takes 50% of the reference's lead, NOT the headroom",
                    ", WORSE than that baseline"]
    assert headroom.verdict_tally(checks) == (
        "Never worse in 2 of 3 cells; takes the headroom in 1 of the 2 cells where the "
        "reference leads with its CI above 0.")
    assert seeds_text([112, 110, 111]) == "110-112" and seeds_text([3, 9, 5]) == "3, 5, 9"
