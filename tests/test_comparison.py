"""Notebook 50's protocol as one call (prlib.comparison.compare), on a bank of your own."""

import pytest

from prlib import routers as R
from prlib.bank import Bank
from prlib.comparison import compare
from prlib.experiment import Setting
from prlib.simulate import simulate_multi_cost
from test_experiment import LLM_TABLE, logged_frame


def test_compare_tunes_runs_writes_and_compares(tmp_path):
    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    setting = Setting("multi-cost · my-logs", bank, simulate_multi_cost(bank))
    out = compare(setting, "77_table_mine", seeds=[100, 101], tune_seeds=[0],
                  routers=[R.CheapestRouter, R.KNNRouter, R.OracleRouter], ours="kNN (pooled)",
                  progress=False, folder=tmp_path)
    assert (tmp_path / "77_table_mine.csv").is_file() and (tmp_path / "77_table_mine.md").is_file()
    assert (tmp_path / "77_tuning_table_mine.csv").is_file()
    assert set(out.tuning.frame["class"]) == {"KNNRouter"}  # the only one with a grid
    assert set(out.results["seed"]) == {100, 101} and len(out.table) == 3
    assert out.improvement["strongest_baseline"] == "Cheapest LLM"  # the oracle is no baseline
    assert "kNN (pooled)" in out.describe()
    with pytest.raises(ValueError, match="a notebook number first"):
        compare(setting, "table_mine", seeds=[100], folder=tmp_path)
    with pytest.raises(ValueError, match="give the report seeds"):
        compare(setting, "77_x", folder=tmp_path)


def test_routers_not_run_are_kept_when_results_are_saved(tmp_path):
    """results.attrs["not_run"] does not survive a CSV: save_table writes it beside the CSV and
    under the Markdown table, and removes a stale one."""
    import json

    import pandas as pd

    from prlib import report

    res = pd.DataFrame({"router": ["Cheapest LLM"], "seed": [0], "reward": [0.5]})
    res.attrs["not_run"] = {"FrugalGPT (cascade)": "the bank has no answer texts"}
    res.attrs["not_run_family"] = {"FrugalGPT (cascade)": "non-personalised"}
    csv = report.save_table(res, "77_per_seed", folder=tmp_path)
    sidecar = tmp_path / "77_per_seed.not_run.json"
    assert json.loads(sidecar.read_text()) == {
        "not_run": {"FrugalGPT (cascade)": "the bank has no answer texts"},
        "not_run_family": {"FrugalGPT (cascade)": "non-personalised"}}
    assert ("Not run: FrugalGPT (cascade): the bank has no answer texts"
            in csv.with_suffix(".md").read_text())
    report.save_table(res.drop(columns="reward").copy(), "77_per_seed", folder=tmp_path)
    assert sidecar.is_file()  # a copy keeps the attrs
    res.attrs.clear()
    report.save_table(res, "77_per_seed", folder=tmp_path)
    assert not sidecar.exists() and "Not run" not in csv.with_suffix(".md").read_text()


def test_results_concatenated_keep_every_frames_routers_not_run():
    import pandas as pd

    from prlib.comparison import concat_results

    a = pd.DataFrame({"setting": ["s1"], "router": ["R"], "seed": [0]})
    a.attrs.update(not_run={"F": "no texts"}, not_run_family={"F": "non-personalised"})
    b = pd.DataFrame({"setting": ["s2"], "feedback": ["choice"], "router": ["R"], "seed": [0]})
    b.attrs.update(not_run={"S": "multi-cost only"})
    assert pd.concat([a, b]).attrs == {}  # what concat alone does
    out = concat_results([a, b])
    assert len(out) == 2 and out.attrs == {
        "not_run": {"F (s1)": "no texts", "S (s2, choice)": "multi-cost only"},
        "not_run_family": {"F (s1)": "non-personalised"}}
