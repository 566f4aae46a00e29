"""The `prlib` command: help, route with a saved router, clear errors, notebook parameters."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prlib import cli, cli_compare
from prlib.cli import BANKS, ENCODERS, main, parser
from prlib.runner import _literal

#: modules `prlib --help` and a bad argument must not import (seconds of loading)
HEAVY = ("torch", "pandas", "fastapi", "sentence_transformers", "torch_geometric", "sklearn")
COMMANDS = ("run", "data", "train", "route", "users", "serve", "compare")
#: a CSV file that exists (for the arguments checked after --bank)
A_CSV = str(Path(cli.__file__).parent / "resources" / "llm_aliases.csv")


@pytest.fixture(scope="module")
def router_folder(tmp_path_factory):
    from prlib.bank import Bank
    from prlib.experiment import Setting, setting_views
    from prlib.routers import PersonalizedRouterV2
    from prlib.serve import save_for_serving
    from prlib.simulate import simulate_multi_cost
    from test_experiment import LLM_TABLE, logged_frame

    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    setting = Setting("cli", bank, simulate_multi_cost(bank))
    train, val, _ = setting_views(setting, 0)
    router = PersonalizedRouterV2(setting.feats, seed=0, steps=10, eval_every=5).fit(train, val)
    return save_for_serving(router, tmp_path_factory.mktemp("cli") / "r"), router, bank


def prlib(*args):
    """``python -X importtime -m prlib.cli ARGS``: (exit code, stdout, stderr without the
    import lines, the top-level packages imported)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "prlib.cli", *args],
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.splitlines()
    imported = {line.split("|")[-1].strip().split(".")[0] for line in lines
                if line.startswith("import time:")}
    err = "\n".join(line for line in lines if not line.startswith("import time:"))
    return done.returncode, done.stdout, err, imported


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out
    assert ".venv/bin/prlib" in out


@pytest.mark.parametrize("command", ("",) + COMMANDS)
def test_help_answers_without_loading_anything_heavy(command):
    code, out, _, imported = prlib(*([command] if command else []), "--help")
    assert code == 0 and "usage: prlib" in out
    assert not imported & set(HEAVY), imported & set(HEAVY)


def test_every_option_has_help_and_shows_its_default():
    p = parser()
    subs = next(a for a in p._actions if isinstance(a, type(p._subparsers._group_actions[0])))
    for name, sub in subs.choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            assert action.help, (name, action.dest)
            if action.default not in (None, False, [], "==SUPPRESS==") and action.option_strings:
                assert "%(default)s" in formatter._get_help_string(action), (name, action.dest)
    serve_help = subs.choices["serve"].format_help()
    for endpoint in ("/v1/chat/completions", "/v1/feedback", "/health", "/v1/admin/save"):
        assert endpoint in serve_help
    assert "(default: 127.0.0.1)" in serve_help and "(default: 8080)" in serve_help


@pytest.mark.parametrize("args, says", [
    (["train", "--bank", "nope", "--out", "x"], "invalid choice: 'nope'"),
    (["train", "--bank", "llmrouter", "--steps", "0", "--out", "x"], "must be at least 1"),
    (["route", "--router", "no-such-folder", "hi"], "no-such-folder is not a folder"),
    (["serve", "--router", "no-such-folder", "--upstream", "http://x/v1"], "is not a folder"),
    (["serve", "--upstream", "http://x/v1"], "--router"),
    (["compare", "--bank", "no-such-bank.csv"], "no-such-bank.csv not found"),
    (["compare", "--bank", "bank.xlsx"], "a bank file is one of .csv"),
    (["compare", "--bank", "tests", "--steps", "5"], "a folder without meta.json"),
    (["compare", "--bank", A_CSV, "--users", "robots"], "invalid choice: 'robots'"),
    (["compare", "--bank", A_CSV, "--levels", "0"], "must be at least 1"),
    (["compare", "--bank", A_CSV, "--routers", "KNNRouter", "GraphRouter"],
     "no router 'GraphRouter'; closest: ['GraphRouterGNN'"),
], ids=["bank", "steps", "route-router", "serve-router", "serve-no-router", "compare-no-file",
        "compare-file-type", "compare-folder", "compare-users", "compare-levels",
        "compare-routers"])
def test_a_bad_argument_is_reported_without_loading_anything_heavy(args, says):
    code, _, err, imported = prlib(*args)
    assert code == 2 and says in err, err
    assert not imported & set(HEAVY), imported & set(HEAVY)


def test_serve_checks_its_map_keys_and_host_before_loading_the_router(tmp_path):
    folder = tmp_path / "r"  # what the checks read: router.json; the rest is never loaded
    folder.mkdir()
    (folder / "router.json").write_text(json.dumps({"llms": ["small", "huge"]}))
    (folder / "features.npz").write_bytes(b"")
    bad_map = tmp_path / "map.json"
    bad_map.write_text(json.dumps({"gpt-9": {"base_url": "http://127.0.0.1:1/v1"}}))
    bad_keys = tmp_path / "keys.json"
    bad_keys.write_text("[1, 2]")
    for args, says in [
            (["--map", str(bad_map)], "does not know: ['gpt-9']"),
            (["--map", str(tmp_path / "none.json")], "none.json not found"),
            (["--upstream", "http://x/v1", "--host", "0.0.0.0"], "--insecure-no-keys"),
            (["--upstream", "http://x/v1", "--keys", str(bad_keys)], 'expected {"keys"'),
            (["--upstream", "http://x/v1", "--local-llm", "smollm2"], "not allowed with"),
            (["--upstream", "http://x/v1", "--read-timeout", "0"], "positive number")]:
        code, _, err, imported = prlib("serve", "--router", str(folder), *args)
        assert code == 2 and says in err, (args, err)
        assert not imported & set(HEAVY), (args, imported & set(HEAVY))


def test_compare_checks_its_bank_file_before_loading_anything(tmp_path):
    bank = tmp_path / "my-logs.csv"  # no LLM columns, no answer texts
    bank.write_text("query,llm,quality,output_tokens\nwhat is 2 + 2?,tiny,1.0,4\n")
    llms = tmp_path / "llms.csv"
    llms.write_text("llm,input_usd_per_m,output_usd_per_m,description\ntiny,0.1,0.2,A model.\n")
    for args, says in [
            ([], "lacks the columns ['input_usd_per_m', 'output_usd_per_m', 'description']"),
            (["--llms", str(tmp_path / "none.csv")], "none.csv not found"),
            (["--llms", str(llms), "--users", "judge"], "no 'response' column"),
            (["--llms", str(llms), "--tune-seeds", "100"], "are report seeds")]:
        code, _, err, imported = prlib("compare", "--bank", str(bank), *args)
        assert code == 2 and says in err, (args, err)
        assert not imported & set(HEAVY), (args, imported & set(HEAVY))


def test_compare_runs_notebook_55_and_the_sweep_on_a_bank_file(tmp_path, monkeypatch, capsys):
    """End to end on a hand-made bank file (10 queries x 3 LLMs, answer texts, the LLM columns
    inline): both kinds of users, one seed, two routers (+ the upper bounds and references),
    the sweep at two levels. The figures are built but not rendered (seconds of drawing)."""
    import pandas as pd

    from prlib import comparison
    from test_experiment import LLM_TABLE, logged_frame

    bank = tmp_path / "my-logs.csv"
    logged_frame(True).merge(LLM_TABLE, on="llm").to_csv(bank, index=False)
    drawn = []
    monkeypatch.setattr(comparison, "_save_figure", lambda fig, name, folder: drawn.append(
        (name, len(fig.axes))) or __import__("matplotlib.pyplot").pyplot.close(fig))
    out = tmp_path / "out"
    assert main(["compare", "--bank", str(bank), "--users", "multi-cost", "judge", "--seeds",
                 "100", "--steps", "5", "--routers", "CheapestRouter", "kNN (pooled)",
                 "--sweep", "--levels", "2", "all", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "Cheapest LLM" in said and f"written to {out}" in said
    assert [n for n, _ in drawn] == ["55_main_results", "50_sweep"]
    for name in ("55_multicost", "55_judge", "55_tuning_multicost", "55_improvement_summary",
                 "55_results_per_seed", "50_sweep_per_seed", "50_tuning_sweep", "50_headroom"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.md").is_file(), name
    table = pd.read_csv(out / "55_multicost.csv")
    assert {"Cheapest LLM", "kNN (pooled)"} <= set(table["router"])
    assert table["family"].isin(["upper bound"]).any()  # every table reads against the oracle
    per_seed = pd.read_csv(out / "55_results_per_seed.csv")
    assert set(per_seed["seed"]) == {100}
    assert set(per_seed["setting"]) == {"multi-cost · my-logs", "judge · my-logs"}
    not_run = json.loads((out / "55_results_per_seed.not_run.json").read_text())["not_run"]
    assert any("judge · my-logs" in k for k in not_run)  # the multi-cost reference, for judges
    sweep = pd.read_csv(out / "50_sweep_per_seed.csv")
    assert set(sweep["train_per_user"].astype(str)) == {"2", "all"}
    assert set(sweep["feedback"]) == {"utility", "choice"}
    assert set(pd.read_csv(out / "50_headroom.csv")["strongest_baseline"]) <= {
        "Cheapest LLM", "kNN (pooled)"}


def test_compare_needs_two_routers_that_compete(tmp_path):
    from prlib.comparison import compare_bank

    with pytest.raises(ValueError, match="at least two that compete"):
        compare_bank(tmp_path / "unread.csv", routers=["CheapestRouter", "OracleRouter"],
                     folder=tmp_path)
    with pytest.raises(ValueError, match="is not among the routers run"):
        compare_bank(tmp_path / "unread.csv", routers=["CheapestRouter", "RandomRouter"],
                     ours="KNNRouter", folder=tmp_path)
    with pytest.raises(ValueError, match="users must be some of"):
        compare_bank(tmp_path / "unread.csv", users=["robots"], folder=tmp_path)


def test_serve_passes_every_option_on(router_folder, monkeypatch):
    folder, _, _ = router_folder
    seen = {}
    monkeypatch.setattr("prlib.serve.serve", lambda router, **kw: seen.update(kw, router=router))
    assert main(["serve", "--router", str(folder), "--local-llm", "smollm2", "--api-key",
                 "client-key-1", "--admin-key", "admin-key-1", "--host", "0.0.0.0",
                 "--journal", "fb.jsonl", "--max-body-bytes", "5000", "--read-timeout", "9",
                 "--fallbacks", "1", "--remember", "10"]) == 0
    assert seen["local_llm"] == "smollm2" and seen["upstream"] is None
    assert seen["keys"].keys == {"client-key-1": None} and seen["keys"].admin_key == "admin-key-1"
    assert (seen["journal"], seen["max_body_bytes"], seen["read_timeout"], seen["fallbacks"],
            seen["remember"], seen["host"]) == ("fb.jsonl", 5000, 9.0, 1, 10, "0.0.0.0")


def test_the_banks_and_encoders_the_command_knows_are_the_libraries():
    from prlib import bank, comparison, config, embed, headroom
    from prlib.data import BANK_NAMES

    assert BANKS == tuple(BANK_NAMES) and ENCODERS == embed.ENCODERS
    assert cli_compare.COMPARE_USERS == comparison.USERS
    assert cli_compare.REPORT_SEEDS == config.REPORT_SEEDS
    assert cli_compare.DEVELOPMENT_SEEDS == config.DEVELOPMENT_SEEDS
    assert cli_compare.BANK_FILE_TYPES == bank.BANK_FILE_TYPES
    assert cli_compare.SWEEP_LEVELS == tuple(headroom.level_label(x) for x in headroom.LEVELS)
    assert list(cli_compare.FRAME_REQUIRED) == bank.FRAME_REQUIRED
    assert list(cli_compare.LLM_TABLE_REQUIRED) == bank.LLM_TABLE_REQUIRED
    from prlib import routers
    from prlib.report import NOT_COMPETING

    assert cli_compare.ROUTERS == {c.__name__: c.name for c in routers.registered()
                           if c.family not in NOT_COMPETING}


def test_route_prints_the_choice_and_scores_of_a_saved_router(router_folder, capsys):
    folder, router, bank = router_folder
    assert main(["route", "--router", str(folder), "--user", "mc-02", "math question 9"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["known_user"] and out["llm"] == router.route_text("mc-02", "math question 9")
    assert list(out["scores"])[0] == out["llm"] and set(out["scores"]) == set(bank.llm_names)


def test_users_lists_a_routers_users_with_their_requests(router_folder, capsys):
    import numpy as np

    folder, router, _ = router_folder
    assert main(["users", "--router", str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    st = router.store_
    counts = np.bincount(np.asarray(st.row_user), minlength=len(st.users))
    assert out == {u: int(n) for u, n in zip(st.users, counts)} and len(out) == 9
    assert sum(out.values()) == len(st.row_user) > 0
    assert main(["users", "--router", str(folder)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == f"9 users, {len(st.row_user):,} visible requests"
    assert [line.split("\t") for line in text[1:]] == [
        [u, str(n)] for u, n in sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))]


def test_errors_say_what_to_do(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["route", "--router", str(tmp_path), "hi"])
    assert exit_.value.code == 2 and "save_for_serving" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--router", str(tmp_path)])
    assert exit_.value.code == 2


def test_notebook_parameters_from_the_command_line_are_json_or_text():
    assert _literal("true") is True and _literal("3") == 3 and _literal("[1, 2]") == [1, 2]
    assert _literal("arena-bench-v1") == "arena-bench-v1"


def test_users_lists_the_users_of_ours_v3_too(tmp_path, capsys):
    """`prlib train` saves v3: `prlib users` must list its users (it read v2's store only)."""
    import numpy as np

    from prlib.bank import Bank
    from prlib.experiment import Setting, setting_views
    from prlib.routers import PersonalizedRouterV3
    from prlib.serve import save_for_serving
    from prlib.simulate import simulate_multi_cost
    from test_experiment import LLM_TABLE, logged_frame

    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    setting = Setting("cli", bank, simulate_multi_cost(bank))
    train, val, _ = setting_views(setting, 0)
    router = PersonalizedRouterV3(setting.feats, seed=0).fit(train, val)
    router.add_user(train.select(np.arange(3)).renamed("late"))
    folder = save_for_serving(router, tmp_path / "v3")
    assert main(["users", "--router", str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = train.frame["user_id"].value_counts().to_dict()
    assert out == {**expected, "late": 3} and len(out) == 10
