"""prlib.human_logs on small hand-made files: values, ties, the empty answer, every bad row."""

import json
import re

import pandas as pd
import pytest

from prlib.arena_logs import ARENA_COLUMNS, ArenaLogError
from prlib.errors import DataError, UnknownModelError
from prlib.human_logs import (LABEL_COLUMNS, TULU_COLUMNS, TULU_FILE, human_bank,
                              load_mt_bench_human, load_tulu_human)

QUESTIONS = [{"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter."]},
             {"question_id": 82, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]}]
ANSWERS = [{"question_id": q, "model": m, "answer": f"{m} on {q}"}
           for q in (81, 82) for m in ("gpt-4", "claude-v1")]
ANSWERS.append({"question_id": 82, "model": "llama-13b", "answer": ""})  # empty, as in the source
VOTES = [
    {"question_id": 81, "judge": "expert_1", "model_a": "gpt-4", "model_b": "claude-v1",
     "winner": "model_a"},
    {"question_id": 82, "judge": "expert_1", "model_a": "llama-13b", "model_b": "gpt-4",
     "winner": "model_b"},
    {"question_id": 82, "judge": "author_0", "model_a": "claude-v1", "model_b": "gpt-4",
     "winner": "tie"},
]


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")


def mt_dir(tmp_path, votes=VOTES, answers=ANSWERS):
    write_jsonl(tmp_path / "mt-bench" / "question.jsonl", QUESTIONS)
    write_jsonl(tmp_path / "mt-bench-human" / "human_judgment_answers.jsonl", answers)
    write_jsonl(tmp_path / "mt-bench-human" / "human_judgments.jsonl", votes)
    return tmp_path


def test_mt_bench_values(tmp_path):
    df = load_mt_bench_human(mt_dir(tmp_path))
    assert tuple(df.columns) == ARENA_COLUMNS + LABEL_COLUMNS
    assert df["user_id"].tolist() == ["expert_1", "expert_1", "author_0"]
    assert df["question_id"].tolist() == ["81", "82", "82"]
    assert df["winner"].tolist() == ["a", "b", "tie"]
    assert df["score_a"].tolist() == [1.0, 0.0, 0.5]  # a tie is half a win for each side
    assert df["query_text"].tolist() == ["Write a poem.", "What is 2+2?", "What is 2+2?"]
    assert df.loc[0, "response_b"] == "claude-v1 on 81"
    assert df.loc[1, "response_a"] == ""  # the empty answer is kept, as the judge saw it
    assert df["turn"].tolist() == [1, 1, 1] and df.loc[2, "history_a"] == []
    assert df.attrs["empty_answers"] == [("82", "llama-13b")]
    assert df.attrs["ties"] == 1 and df.attrs["duplicates"] == 0


def _mutated(i, **change):
    votes = [dict(v) for v in VOTES]
    votes[i].update(change)
    return votes


BAD_VOTES = {
    "bad winner": (_mutated(1, winner="draw"), ArenaLogError, "winner 'draw' is not one of"),
    "unknown model": (_mutated(1, model_b="gpt-5"), UnknownModelError,
                      "unknown model name 'gpt-5'"),
    "same models": (_mutated(1, model_a="gpt-4"), ArenaLogError,
                    "model_a and model_b are both 'gpt-4'"),
    "no judge": (_mutated(1, judge=""), ArenaLogError, "judge '' must be a non-empty str"),
    "unknown question": (_mutated(1, question_id=999), ArenaLogError,
                         "question_id 999 is not an MT-Bench question"),
    "no answer": (_mutated(1, model_a="alpaca-13b"), ArenaLogError,
                  "no answer of 'alpaca-13b' to question 82"),
}


@pytest.mark.parametrize("case", list(BAD_VOTES))
def test_mt_bench_bad_vote(tmp_path, case):
    votes, error, message = BAD_VOTES[case]
    with pytest.raises(error) as info:
        load_mt_bench_human(mt_dir(tmp_path, votes=votes))
    text = str(info.value)
    assert re.search(message, text), text
    assert "human_judgments.jsonl: record 2" in text
    assert isinstance(info.value, DataError)


def test_mt_bench_missing_field_and_bad_json(tmp_path):
    votes = [dict(v) for v in VOTES]
    del votes[2]["winner"]
    with pytest.raises(ArenaLogError, match="record 3: missing field.*winner"):
        load_mt_bench_human(mt_dir(tmp_path, votes=votes))
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_mt_bench_human(mt_dir(tmp_path, votes=[VOTES[0], '{"question_id": ']))


def test_mt_bench_bad_answers(tmp_path):
    with pytest.raises(ArenaLogError, match="second answer of 'gpt-4' to question 81"):
        load_mt_bench_human(mt_dir(tmp_path, answers=ANSWERS + [ANSWERS[0]]))
    bad = ANSWERS + [{"question_id": 81, "model": "llama-13b", "answer": None}]
    with pytest.raises(ArenaLogError, match="answer is a NoneType"):
        load_mt_bench_human(mt_dir(tmp_path, answers=bad))
    with pytest.raises(UnknownModelError, match="'gpt4'"):
        load_mt_bench_human(mt_dir(tmp_path, answers=ANSWERS + [
            {"question_id": 81, "model": "gpt4", "answer": "x"}]))


# ---------------------------------------------------------------- Tulu
def tulu_rows():
    base = {"instance_id": "task_1", "prompt": "Fix: teh cat", "model_a": "tulu_65B",
            "model_b": "chatgpt", "completion_a": "the cat", "completion_b": "The cat.",
            "completion_a_is_acceptable": "yes", "completion_b_is_acceptable": "no",
            "preference": "a-is-slightly-better", "evaluator": "yo",
            "timestamp": "2023-05-19 13:11:45"}
    return [base, {**base, "evaluator": "yu", "preference": "tie",
                   "completion_b_is_acceptable": "yes"},
            {**base, "instance_id": "task_2", "prompt": "Say hi", "model_b": "tulu_7B",
             "completion_a": "hi", "completion_b": "", "preference": "b-is-better"}]


def tulu_dir(tmp_path, rows):
    path = tmp_path / TULU_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_excel(path, index=False, engine="openpyxl")
    return tmp_path


def test_tulu_values(tmp_path):
    df = load_tulu_human(tulu_dir(tmp_path, tulu_rows()))
    assert tuple(df.columns) == ARENA_COLUMNS + LABEL_COLUMNS + TULU_COLUMNS
    assert df["score_a"].tolist() == [0.75, 0.5, 0.0]  # the graded label
    assert df["winner"].tolist() == ["a", "tie", "b"]
    assert df["grade"].tolist() == ["a-is-slightly-better", "tie", "b-is-better"]
    assert df["acceptable_b"].tolist() == [False, True, False]
    assert df["user_id"].tolist() == ["yo", "yu", "yo"]
    assert df.attrs["empty_answers"] == [("task_2", "tulu_7B")]
    assert df.attrs["ties"] == 1


def _tulu_bad(change):
    rows = tulu_rows()
    change(rows[1])
    return rows


BAD_TULU = {
    "bad grade": (lambda r: r.update(preference="a-is-much-better"),
                  ArenaLogError, "preference 'a-is-much-better' is not one of"),
    "unknown model": (lambda r: r.update(model_b="tulu_13B"), UnknownModelError,
                      "unknown model name 'tulu_13B'"),
    "bad flag": (lambda r: r.update(completion_a_is_acceptable="maybe"), ArenaLogError,
                 "completion_a_is_acceptable 'maybe' is not yes / no"),
    "no evaluator": (lambda r: r.update(evaluator=None), ArenaLogError, "evaluator is empty"),
}


@pytest.mark.parametrize("case", list(BAD_TULU))
def test_tulu_bad_row(tmp_path, case):
    change, error, message = BAD_TULU[case]
    with pytest.raises(error) as info:
        load_tulu_human(tulu_dir(tmp_path, _tulu_bad(change)))
    text = str(info.value)
    assert re.search(message, text), text
    assert "sheet row 3" in text  # the header is row 1


def test_tulu_missing_column_and_file(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "evaluator"} for r in tulu_rows()]
    with pytest.raises(ArenaLogError, match="lacks column.*evaluator"):
        load_tulu_human(tulu_dir(tmp_path, rows))
    with pytest.raises(ArenaLogError, match="no such file"):
        load_tulu_human(tmp_path / "elsewhere")


def test_human_bank_from_hand_made_votes(tmp_path):
    root = mt_dir(tmp_path)
    prices = root / "prices" / "model_prices_and_context_window.json"
    prices.parent.mkdir()
    prices.write_text(json.dumps({"gpt-4-0314": {"input_cost_per_token": 3e-5,
                                                 "output_cost_per_token": 6e-5}}))
    pairs = load_mt_bench_human(root)
    bank = human_bank(pairs, "mt-bench-human", root)
    assert bank.llm_names == ["claude-1", "gpt-4-0314", "llama-13b"]  # canonical names
    rows = bank.bank.set_index(["query_id", "llm"])
    assert rows.loc[("82", "llama-13b"), "response"] == ""
    assert rows.loc[("82", "llama-13b"), "output_tokens"] == 0
    assert rows.loc[("81", "gpt-4-0314"), "response"] == "gpt-4 on 81"
    assert bank.queries.set_index("query_id").loc["82", "text"] == "What is 2+2?"
    assert bank.meta["empty_answers"] == [("82", "llama-13b")]
    changed = pairs.copy()
    changed.loc[0, "response_a"] = "another text"
    changed.loc[len(changed)] = changed.loc[0].copy()
    changed.loc[len(changed) - 1, "response_a"] = "gpt-4 on 81"
    with pytest.raises(ArenaLogError, match="different answer texts on question 81"):
        human_bank(changed, "mt-bench-human", root)


# ---------------------------------------------------------------- the real files
def test_registry_covers_the_human_files():
    from prlib.data import load_registry

    files = {e["file"]: e for e in load_registry()}
    for name in ("mt-bench-human/human_judgments.jsonl",
                 "mt-bench-human/human_judgment_answers.jsonl", TULU_FILE,
                 "tulu-human-eval/eval_instances_tulu_1.jsonl"):
        assert len(files[name]["sha256"]) == 64


def _real_root():
    from prlib.data import DataNotFoundError, find_data_dir

    try:
        return find_data_dir(TULU_FILE)
    except DataNotFoundError:
        pytest.skip("the shared data folder with the human judgments is not here")


def test_real_data_counts():
    root = _real_root()
    mt = load_mt_bench_human(root)
    assert (len(mt), mt["user_id"].nunique(), mt["question_id"].nunique()) == (1689, 65, 80)
    assert mt["winner"].value_counts().to_dict() == {"a": 656, "b": 628, "tie": 405}
    assert ("127", "llama-13b") in mt.attrs["empty_answers"]
    tulu = load_tulu_human(root)
    assert (len(tulu), tulu["user_id"].nunique(), tulu["question_id"].nunique()) == (1150, 16,
                                                                                      332)
    assert ((tulu["llm_a"] == "tulu_65B") | (tulu["llm_b"] == "tulu_65B")).all()
