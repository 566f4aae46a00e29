"""prlib.arena_logs on small hand-written logs: values, derived tables, every bad-record message."""

import copy
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from prlib.arena_logs import (ARENA_COLUMNS, ArenaLogError, load_pairwise_logs,
                              pairs_to_interactions, pairs_to_ratings)
from prlib.errors import DataError
from prlib.simulate.preferences import Preferences


def conv(model, qid):
    """A two-turn conversation of ``model`` on question ``qid``."""
    return [{"role": "user", "content": f"q{qid} turn1"},
            {"role": "assistant", "content": f"{model} answers q{qid} t1"},
            {"role": "user", "content": f"q{qid} turn2"},
            {"role": "assistant", "content": f"{model} answers q{qid} t2"}]


def rec(qid, a, b, winner, judge, turn, language="English"):
    r = {"question_id": qid, "model_a": a, "model_b": b, "winner": winner, "judge": judge,
         "conversation_a": conv(a, qid), "conversation_b": conv(b, qid), "turn": turn}
    if language is not None:
        r["language"] = language
    return r


#: Hand-made log. author_0 judges llama/gpt-4 twice on (81, t2) with opposite verdicts (a repeat
#: of the same unordered pair); expert_1 judges three pairs on (82, t1), two of them ties.
RECORDS = [
    rec(81, "gpt-4", "llama", "model_a", "author_0", 1),
    rec(81, "llama", "gpt-4", "model_a", "author_0", 2),
    rec("82", "claude", "gpt-4", "tie", "expert_1", 1, language=None),
    rec("82", "claude", "llama", "tie (bothbad)", "expert_1", 1),
    rec(81, "gpt-4", "llama", "model_a", "author_0", 2),
    rec("82", "llama", "gpt-4", "model_b", "expert_1", 1),
]


def write_jsonl(path, records, blank_after=(1,)):
    lines = []
    for i, r in enumerate(records):
        lines.append(r if isinstance(r, str) else json.dumps(r))
        if i in blank_after:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def log_file(tmp_path):
    # a blank line after the second record: the records sit on lines 1, 2, 4, 5, 6, 7
    return write_jsonl(tmp_path / "judgments.jsonl", RECORDS)


# ---------------------------------------------------------------- loading
def test_frame_values(log_file):
    df = load_pairwise_logs(log_file)
    assert tuple(df.columns) == ARENA_COLUMNS
    assert len(df) == 6  # the repeated votes are kept
    assert df["user_id"].tolist() == ["author_0"] * 2 + ["expert_1"] * 2 + ["author_0",
                                                                      "expert_1"]
    assert df["question_id"].tolist() == ["81", "81", "82", "82", "81", "82"]
    assert df["turn"].dtype == np.int64 and df["turn"].tolist() == [1, 2, 1, 1, 2, 1]
    assert df["winner"].tolist() == ["a", "a", "tie", "tie", "a", "b"]
    assert df["winner_raw"].tolist() == ["model_a", "model_a", "tie", "tie (bothbad)", "model_a",
                                         "model_b"]
    assert df["language"].tolist() == ["English", "English", None, "English", "English",
                                       "English"]
    assert df.attrs["duplicates"] == 1  # (author_0, 81, t2, {gpt-4, llama}) twice, order swapped
    assert df.attrs["records"] == 6 and df.attrs["query_mismatches"] == 0

    turn1 = df.iloc[0]
    assert turn1["query_text"] == "q81 turn1"
    assert turn1["response_a"] == "gpt-4 answers q81 t1"
    assert turn1["response_b"] == "llama answers q81 t1"
    assert turn1["history_a"] == [] and turn1["history_b"] == []

    turn2 = df.iloc[1]  # llama (a) vs gpt-4 (b) on turn 2
    assert (turn2["llm_a"], turn2["llm_b"]) == ("llama", "gpt-4")
    assert turn2["query_text"] == "q81 turn2"
    assert turn2["response_a"] == "llama answers q81 t2"
    assert turn2["response_b"] == "gpt-4 answers q81 t2"
    assert turn2["history_a"] == [{"role": "user", "content": "q81 turn1"},
                                  {"role": "assistant", "content": "llama answers q81 t1"}]
    assert turn2["history_b"] == [{"role": "user", "content": "q81 turn1"},
                                  {"role": "assistant", "content": "gpt-4 answers q81 t1"}]


def test_no_duplicates_without_repeats(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS[:4])
    assert load_pairwise_logs(path).attrs["duplicates"] == 0


def test_judge_filter(log_file):
    experts = load_pairwise_logs(log_file, judges=["expert_1"])
    assert experts["user_id"].tolist() == ["expert_1"] * 3
    assert experts["question_id"].tolist() == ["82"] * 3
    assert experts.index.tolist() == [0, 1, 2]
    assert experts.attrs["records"] == 6 and experts.attrs["duplicates"] == 0
    authors = load_pairwise_logs(log_file, judges="author_0")  # one id, not its characters
    assert authors["user_id"].tolist() == ["author_0"] * 3
    assert authors.attrs["duplicates"] == 1
    with pytest.raises(ArenaLogError, match="none of the judges.*author_0"):
        load_pairwise_logs(log_file, judges={"nobody"})


def test_json_array_matches_jsonl(tmp_path, log_file):
    path = tmp_path / "judgments.json"
    path.write_text(json.dumps(RECORDS, indent=2))
    from_array = load_pairwise_logs(path)
    pd.testing.assert_frame_equal(from_array, load_pairwise_logs(log_file))
    assert from_array.attrs["duplicates"] == 1


def test_query_mismatch_counted(tmp_path):
    r = copy.deepcopy(RECORDS[0])
    r["conversation_b"][0]["content"] = "something else"
    df = load_pairwise_logs(write_jsonl(tmp_path / "m.jsonl", [r, RECORDS[1]]))
    assert df.attrs["query_mismatches"] == 1
    assert df["query_text"].iloc[0] == "q81 turn1"  # taken from conversation_a


# ---------------------------------------------------------------- ratings and interactions
def test_ratings_hand_computed(log_file):
    r = pairs_to_ratings(load_pairwise_logs(log_file))
    got = {(u, q, t, l): (x, n) for u, q, t, l, x, n in
           r[["user_id", "question_id", "turn", "llm", "rating", "n_judgments"]].itertuples(
               index=False)}
    assert got == {
        ("author_0", "81", 1, "gpt-4"): (1.0, 1),
        ("author_0", "81", 1, "llama"): (0.0, 1),
        ("author_0", "81", 2, "gpt-4"): (0.5, 2),    # lost once, won once
        ("author_0", "81", 2, "llama"): (0.5, 2),
        ("expert_1", "82", 1, "claude"): (0.5, 2),   # two ties
        ("expert_1", "82", 1, "gpt-4"): (0.75, 2),   # tie + win
        ("expert_1", "82", 1, "llama"): (0.25, 2),   # tie + loss
    }
    assert r["query_id"].tolist() == ["81/t1", "81/t1", "81/t2", "81/t2", "82/t1", "82/t1",
                                      "82/t1"]
    assert r["rating"].dtype == float and r["n_judgments"].dtype == np.int64


def test_interactions_hand_computed(log_file):
    inter = pairs_to_interactions(load_pairwise_logs(log_file))
    assert inter.columns.tolist() == ["user_id", "query_id", "llm", "utility", "chosen"]
    chosen = inter[inter["chosen"]].set_index(["user_id", "query_id"])["llm"].to_dict()
    assert chosen == {
        ("author_0", "81/t1"): "gpt-4",
        # 0.5 each: the tie goes to the first name in sorted order, though llama won the first vote
        ("author_0", "81/t2"): "gpt-4",
        ("expert_1", "82/t1"): "gpt-4",  # highest rating (0.75), not the first name (claude)
    }
    assert inter.groupby(["user_id", "query_id"])["chosen"].sum().eq(1).all()
    assert inter["utility"].tolist() == [1.0, 0.0, 0.5, 0.5, 0.5, 0.75, 0.25]
    assert inter["chosen"].dtype == bool and inter["utility"].dtype == float
    assert all(isinstance(v, str) for col in ("user_id", "query_id", "llm") for v in inter[col])


def test_interactions_fit_preferences(log_file):
    inter = pairs_to_interactions(load_pairwise_logs(log_file))
    users = pd.DataFrame({"user_id": sorted(inter["user_id"].unique()), "strategy": "judge",
                          "archetype": "human", "params": "{}"})
    prefs = Preferences("arena", "judge", "mt-bench", users, inter)  # validates the contract
    assert prefs.summary()["user_query_pairs"] == 3
    assert prefs.utility_matrix("expert_1").loc["82/t1", "gpt-4"] == 0.75


def test_pairs_checked():
    with pytest.raises(ArenaLogError, match="lacks columns"):
        pairs_to_ratings(pd.DataFrame({"user_id": ["u"]}))
    bad = pd.DataFrame({"user_id": ["u"], "question_id": ["1"], "turn": [1], "llm_a": ["x"],
                        "llm_b": ["y"], "winner": ["model_a"]})
    with pytest.raises(ArenaLogError, match="winner values"):
        pairs_to_interactions(bad)


# ---------------------------------------------------------------- malformed files
def _mutated(change):
    r = copy.deepcopy(RECORDS[2])
    change(r)
    return r


BAD_RECORDS = {
    "bad json": ('{"question_id": 81, "model_a": ', "not valid JSON"),
    "not an object": ("[1, 2]", "must be a JSON object"),
    "missing field": (_mutated(lambda r: r.pop("winner")), "missing required field.*winner"),
    "missing conversation": (_mutated(lambda r: r.pop("conversation_b")),
                             "missing required field.*conversation_b"),
    "same models": (_mutated(lambda r: r.update(model_b="claude")),
                    "model_a and model_b are both 'claude'"),
    "bad winner": (_mutated(lambda r: r.update(winner="model_c")),
                   r"winner 'model_c' is not one of model_a, model_b, tie, tie \(bothbad\)"),
    "turn zero": (_mutated(lambda r: r.update(turn=0)), "turn 0 is not a positive int"),
    "turn str": (_mutated(lambda r: r.update(turn="2")), "turn '2' is not a positive int"),
    "turn float": (_mutated(lambda r: r.update(turn=1.5)), "turn 1.5 is not a positive int"),
    "turn bool": (_mutated(lambda r: r.update(turn=True)), "turn True is not a positive int"),
    "turn too large": (_mutated(lambda r: r.update(turn=3)),
                       "turn 3 is larger than the 2 user message.*conversation_a"),
    "turn too large in b": (_mutated(lambda r: r.update(conversation_b=r["conversation_b"][:2],
                                                        turn=2)),
                            "turn 2 is larger than the 1 user message.*conversation_b"),
    "no reply": (_mutated(lambda r: r.update(conversation_a=r["conversation_a"][:3], turn=2)),
                 "conversation_a has no assistant reply to user message 2"),
    "conversation not list": (_mutated(lambda r: r.update(conversation_a="hello")),
                              "conversation_a is a str, not a list"),
    "message without content": (_mutated(lambda r: r["conversation_b"][1].pop("content")),
                                r"conversation_b\[1\] is not a message dict"),
    "message not dict": (_mutated(lambda r: r["conversation_a"].__setitem__(0, "hi")),
                         r"conversation_a\[0\] is not a message dict"),
    "bad role": (_mutated(lambda r: r["conversation_a"][0].update(role="system")),
                 r"conversation_a\[0\] has role 'system'"),
    "content not str": (_mutated(lambda r: r["conversation_a"][1].update(content=None)),
                        r"conversation_a\[1\] content is a NoneType"),
    "question id null": (_mutated(lambda r: r.update(question_id=None)),
                         "question_id None must be"),
    "judge empty": (_mutated(lambda r: r.update(judge="")), "judge '' must be a non-empty str"),
    "language not str": (_mutated(lambda r: r.update(language=3)), "language 3 must be a str"),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_bad_record_names_line(tmp_path, case):
    bad, message = BAD_RECORDS[case]
    # good record, blank line, bad record: the bad one is the second record but on line 3
    path = write_jsonl(tmp_path / "bad.jsonl", [RECORDS[0], bad, RECORDS[1]], blank_after=(0,))
    with pytest.raises(ArenaLogError, match="line 3") as info:
        load_pairwise_logs(path)
    text = str(info.value)
    assert str(path) in text
    assert re.search(message, text), text
    assert isinstance(info.value, ValueError) and isinstance(info.value, DataError)


def test_bad_record_in_json_array_names_index(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([RECORDS[0], {**RECORDS[1], "winner": "draw"}]))
    with pytest.raises(ArenaLogError, match="record 1: winner 'draw'"):
        load_pairwise_logs(path)


def test_unparseable_json_array_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n{"question_id": 1},\n{"question_id": \n')
    with pytest.raises(ArenaLogError, match="line 4: not valid JSON"):
        load_pairwise_logs(path)


def test_json_top_level_not_array(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"data": RECORDS}))
    with pytest.raises(ArenaLogError, match="top level is a dict, not a JSON array"):
        load_pairwise_logs(path)


@pytest.mark.parametrize("name, text", [("blank.jsonl", "\n  \n\n"), ("empty.jsonl", ""),
                                        ("empty.json", ""), ("list.json", "[]")])
def test_empty_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ArenaLogError, match=f"{name}: the file holds no records"):
        load_pairwise_logs(path)


def test_unsupported_suffix_and_missing_file(tmp_path):
    path = tmp_path / "judgments.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(ArenaLogError, match=r"'\.parquet' is not supported.*not Parquet or CSV"):
        load_pairwise_logs(path)
    with pytest.raises(ArenaLogError, match="no such file"):
        load_pairwise_logs(tmp_path / "absent.jsonl")


def test_no_torch_import():
    code = "import sys, prlib.arena_logs; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pairs_become_real_user_preferences(tmp_path):
    from prlib.arena_logs import pairs_to_preferences

    rec = {"question_id": 81, "model_a": "gpt-4", "model_b": "claude-v1", "winner": "model_b",
           "judge": "expert_1", "turn": 1,
           "conversation_a": [{"role": "user", "content": "q"},
                              {"role": "assistant", "content": "a"}],
           "conversation_b": [{"role": "user", "content": "q"},
                              {"role": "assistant", "content": "b"}]}
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    prefs = pairs_to_preferences(load_pairwise_logs(path), "mt-bench-turns")
    assert prefs.meta["simulated"] is False
    assert prefs.users["user_id"].tolist() == ["expert_1"]
    chosen = prefs.interactions[prefs.interactions["chosen"]]
    assert chosen[["query_id", "llm"]].values.tolist() == [["81/t1", "claude-v1"]]
