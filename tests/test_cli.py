"""The `prlib` command: help, route with a saved router, clear errors, notebook parameters."""

import json

import pytest

from prlib.cli import main
from prlib.runner import _literal


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "data", "train", "route", "serve"):
        assert command in out


def test_route_prints_the_choice_and_scores_of_a_saved_router(tmp_path, capsys):
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
    folder = save_for_serving(router, tmp_path / "r")
    assert main(["route", "--router", str(folder), "--user", "mc-02", "math question 9"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["known_user"] and out["llm"] == router.route_text("mc-02", "math question 9")
    assert list(out["scores"])[0] == out["llm"] and set(out["scores"]) == set(bank.llm_names)


def test_errors_say_what_to_do(tmp_path, capsys):
    assert main(["route", "--router", str(tmp_path), "hi"]) == 2
    assert "save_for_serving" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--router", str(tmp_path)])
    assert exit_.value.code == 2 and "--upstream URL or --map FILE" in capsys.readouterr().err


def test_notebook_parameters_from_the_command_line_are_json_or_text():
    assert _literal("true") is True and _literal("3") == 3 and _literal("[1, 2]") == [1, 2]
    assert _literal("arena-bench-v1") == "arena-bench-v1"
