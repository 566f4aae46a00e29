"""Real, identified people judging pairs of LLM answers: two public data sets, read offline.

=====================  ================================================================
``mt-bench-human``     1,689 pairwise votes (``model_a`` / ``model_b`` / ``tie``) by 65
                       identified judges on the first turn of the 80 MT-Bench questions,
                       6 LLMs; the 480 answers they saw. CC-BY-4.0: Zheng et al., "Judging
                       LLM-as-a-Judge with MT-Bench and Chatbot Arena", 2023
                       (``lmsys/mt_bench_human_judgments``).
``tulu-human-eval``    1,150 graded pairwise judgments (5 levels) with an acceptability
                       flag per answer by 16 identified evaluators on 332 prompts, 4 LLMs.
                       Apache-2.0: Wang et al., "How Far Can Camels Go?", 2023
                       (``allenai/open-instruct``, ``human_eval/data``).
=====================  ================================================================

Both loaders return the pairwise-log frame of :mod:`prlib.arena_logs` (:data:`ARENA_COLUMNS`:
``user_id`` is the judge, ``turn`` is 1, ``history_*`` empty) plus :data:`LABEL_COLUMNS`:
``score_a``, the label of a vote as side a's win score. **Ties, as stated:** an MT-Bench tie is
``winner == "tie"`` and ``score_a == 0.5``; a Tulu grade maps to ``score_a`` by
:data:`TULU_GRADES` (``a-is-better`` 1, ``a-is-slightly-better`` 0.75, ``tie`` 0.5, ...) and
``winner`` is its side (``"tie"`` at 0.5). :func:`human_bank` makes the
:class:`~prlib.bank.Bank` of the questions and the answer texts the judges saw.

The one empty answer of MT-Bench (llama-13b on question 127, empty in the source; Tulu has one
too, tulu_human_only_65B on ``user_oriented_task_231``) is kept as an empty text: its judges saw
it empty, and their votes are real; ``attrs["empty_answers"]`` lists them. A bad record raises
:class:`~prlib.arena_logs.ArenaLogError` naming the file, the line (or sheet row) and the fix;
an unknown model name raises :class:`~prlib.errors.UnknownModelError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prlib.arena_logs import ARENA_COLUMNS, ArenaLogError
from prlib.bank import Bank, check_llm_names
from prlib.data import find_data_dir, read_jsonl, resolve_llms
from prlib.errors import DataError

SOURCES = ("mt-bench-human", "tulu-human-eval")
#: Columns after :data:`ARENA_COLUMNS`: the vote as side a's win score (ties 0.5).
LABEL_COLUMNS = ("score_a",)
#: Extra columns of the Tulu frame.
TULU_COLUMNS = ("grade", "acceptable_a", "acceptable_b", "timestamp")
MT_BENCH_HUMAN_LLMS = ("alpaca-13b", "claude-v1", "gpt-3.5-turbo", "gpt-4", "llama-13b",
                       "vicuna-13b-v1.2")
TULU_LLMS = ("chatgpt", "tulu_65B", "tulu_7B", "tulu_human_only_65B")
MT_WINNERS = {"model_a": ("a", 1.0), "model_b": ("b", 0.0), "tie": ("tie", 0.5)}
#: Tulu's five graded preferences as side a's win score.
TULU_GRADES = {"a-is-better": 1.0, "a-is-slightly-better": 0.75, "tie": 0.5,
               "b-is-slightly-better": 0.25, "b-is-better": 0.0}
TULU_SHEET_COLUMNS = ("instance_id", "prompt", "model_a", "model_b", "completion_a",
                      "completion_b", "completion_a_is_acceptable",
                      "completion_b_is_acceptable", "preference", "evaluator", "timestamp")
MT_FILES = ("mt-bench-human/human_judgments.jsonl", "mt-bench-human/human_judgment_answers.jsonl",
            "mt-bench/question.jsonl")
TULU_FILE = "tulu-human-eval/eval_annotations_tulu_1.xlsx"
_RESTORE = "restore the file from its source (`python -m prlib.data download` checks every file)"


def _root(root, required: str) -> Path:
    return Path(root) if root is not None else find_data_dir(required)


def _side(score: np.ndarray) -> np.ndarray:
    return np.where(score > 0.5, "a", np.where(score < 0.5, "b", "tie"))


def _check_models(where: str, a, b, known) -> None:
    for name in (a, b):
        if not isinstance(name, str) or not name:
            raise ArenaLogError(f"{where}: model name {name!r} must be a non-empty str")
    check_llm_names([a, b], known, where=f"{where}; the known models of this data set")
    if a == b:
        raise ArenaLogError(f"{where}: model_a and model_b are both {a!r}; a pairwise judgment "
                            "compares two different models")


def _frame(rows: list[dict], extra: tuple = ()) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["turn"] = np.int64(1)
    df["language"] = None
    df["history_a"] = [[] for _ in range(len(df))]
    df["history_b"] = [[] for _ in range(len(df))]
    return df[list(ARENA_COLUMNS) + list(LABEL_COLUMNS) + list(extra)].astype(
        {"turn": np.int64, "score_a": float})


# --------------------------------------------------------------------------- MT-Bench
def _mt_answers(path: Path) -> tuple[dict, list]:
    answers, empty = {}, []
    for n, rec in enumerate(read_jsonl(path), start=1):
        where = f"{path}: record {n}"
        if not isinstance(rec, dict) or not {"question_id", "model", "answer"} <= set(rec):
            raise ArenaLogError(f"{where}: needs the fields question_id, model and answer; "
                                f"{_RESTORE}")
        if not isinstance(rec["answer"], str):
            raise ArenaLogError(f"{where}: answer is a {type(rec['answer']).__name__}, not a "
                                "str")
        check_llm_names([rec["model"]], MT_BENCH_HUMAN_LLMS,
                        where=f"{where}; the known models of this data set")
        key = (str(rec["question_id"]), rec["model"])
        if key in answers:
            raise ArenaLogError(f"{where}: a second answer of {key[1]!r} to question {key[0]}; "
                                f"each (question, model) has one answer; {_RESTORE}")
        answers[key] = rec["answer"]
        if not rec["answer"].strip():
            empty.append(key)
    return answers, empty


def load_mt_bench_human(root: str | Path | None = None) -> pd.DataFrame:
    """The 1,689 MT-Bench turn-1 votes of 65 identified judges, one row per vote.

    :data:`ARENA_COLUMNS` + ``score_a`` (1 a wins, 0 b wins, 0.5 tie); ``query_text`` is the
    question's first turn (``mt-bench/question.jsonl``), ``response_a`` / ``response_b`` the
    answers the judge saw. ``attrs``: ``source``, ``license``, ``ties``, ``empty_answers``
    (``[(question_id, llm)]`` of empty answer texts, votes kept), ``duplicates`` (repeats of
    a judge's vote on the same question and unordered pair, all kept)."""
    root = _root(root, MT_FILES[0])
    votes_path, answers_path, questions_path = (root / f for f in MT_FILES)
    questions = {}
    for rec in read_jsonl(questions_path):
        questions[str(rec["question_id"])] = rec["turns"][0]
    answers, empty = _mt_answers(answers_path)
    rows = []
    for n, rec in enumerate(read_jsonl(votes_path), start=1):
        where = f"{votes_path}: record {n}"
        if not isinstance(rec, dict):
            raise ArenaLogError(f"{where}: a record must be a JSON object")
        missing = [k for k in ("question_id", "judge", "model_a", "model_b", "winner")
                   if k not in rec]
        if missing:
            raise ArenaLogError(f"{where}: missing field(s) {', '.join(missing)}; every vote "
                                "needs question_id, judge, model_a, model_b, winner")
        if not isinstance(rec["judge"], str) or not rec["judge"]:
            raise ArenaLogError(f"{where}: judge {rec['judge']!r} must be a non-empty str")
        _check_models(where, rec["model_a"], rec["model_b"], MT_BENCH_HUMAN_LLMS)
        if rec["winner"] not in MT_WINNERS:
            raise ArenaLogError(f"{where}: winner {rec['winner']!r} is not one of "
                                f"{', '.join(MT_WINNERS)} (a tie is stated as 'tie')")
        qid = str(rec["question_id"])
        if qid not in questions:
            raise ArenaLogError(f"{where}: question_id {rec['question_id']!r} is not an "
                                f"MT-Bench question of {questions_path}")
        for m in (rec["model_a"], rec["model_b"]):
            if (qid, m) not in answers:
                raise ArenaLogError(f"{where}: {answers_path} has no answer of {m!r} to "
                                    f"question {qid}; {_RESTORE}")
        side, score = MT_WINNERS[rec["winner"]]
        rows.append({"user_id": rec["judge"], "question_id": qid, "llm_a": rec["model_a"],
                     "llm_b": rec["model_b"], "winner": side, "winner_raw": rec["winner"],
                     "score_a": score, "query_text": questions[qid],
                     "response_a": answers[(qid, rec["model_a"])],
                     "response_b": answers[(qid, rec["model_b"])]})
    if not rows:
        raise ArenaLogError(f"{votes_path}: the file holds no votes; {_RESTORE}")
    df = _frame(rows)
    df.attrs = {"source": "mt-bench-human", "license": "CC-BY-4.0",
                "ties": int((df["winner"] == "tie").sum()), "empty_answers": empty,
                "duplicates": _duplicates(df)}
    return df


def _empty(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(question_id, llm) of every empty answer text, sorted."""
    out = set()
    for side in ("a", "b"):
        blank = df[f"response_{side}"].str.strip() == ""
        out |= set(zip(df.loc[blank, "question_id"], df.loc[blank, f"llm_{side}"]))
    return sorted(out)


def _duplicates(df: pd.DataFrame) -> int:
    lo = np.minimum(df["llm_a"].to_numpy(), df["llm_b"].to_numpy())
    hi = np.maximum(df["llm_a"].to_numpy(), df["llm_b"].to_numpy())
    key = df[["user_id", "question_id"]].assign(lo=lo, hi=hi)
    return int(key.duplicated().sum())


# --------------------------------------------------------------------------- Tulu
def _flag(where: str, name: str, value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("yes", "true", "1", "1.0"):
        return True
    if text in ("no", "false", "0", "0.0"):
        return False
    raise ArenaLogError(f"{where}: {name} {value!r} is not yes / no (true / false)")


def read_tulu_sheet(path: str | Path) -> pd.DataFrame:
    """Tulu's annotation sheet (``.xlsx``, needs ``openpyxl``) as one checked row per
    judgment; see :func:`load_tulu_human`."""
    path = Path(path)
    if not path.is_file():
        raise ArenaLogError(f"{path}: no such file; pass the path of eval_annotations_tulu_1.xlsx")
    try:
        sheet = pd.read_excel(path, engine="openpyxl", dtype=object)
    except ImportError as exc:
        raise DataError("reading Tulu's .xlsx needs openpyxl: pip install openpyxl "
                        "(pinned in requirements.txt)") from exc
    except (ValueError, OSError, KeyError) as exc:
        raise ArenaLogError(f"{path}: not a readable .xlsx sheet ({exc}); {_RESTORE}") from exc
    missing = [c for c in TULU_SHEET_COLUMNS if c not in sheet.columns]
    if missing:
        raise ArenaLogError(f"{path}: the sheet lacks column(s) {', '.join(missing)}; it needs "
                            f"{', '.join(TULU_SHEET_COLUMNS)}")
    rows = []
    for i, rec in enumerate(sheet.to_dict("records")):
        where = f"{path}: sheet row {i + 2}"  # row 1 is the header
        for key in ("instance_id", "prompt", "evaluator"):
            if pd.isna(rec[key]) or not str(rec[key]).strip():
                raise ArenaLogError(f"{where}: {key} is empty; every judgment needs one")
        _check_models(where, rec["model_a"], rec["model_b"], TULU_LLMS)
        grade = rec["preference"]
        if grade not in TULU_GRADES:
            raise ArenaLogError(f"{where}: preference {grade!r} is not one of "
                                f"{', '.join(TULU_GRADES)} (a tie is stated as 'tie')")
        texts = {}
        for side in ("a", "b"):
            text = rec[f"completion_{side}"]
            texts[side] = "" if pd.isna(text) else str(text)
        rows.append({"user_id": str(rec["evaluator"]).strip(),
                     "question_id": str(rec["instance_id"]), "llm_a": rec["model_a"],
                     "llm_b": rec["model_b"], "winner_raw": grade,
                     "score_a": TULU_GRADES[grade], "grade": grade,
                     "query_text": str(rec["prompt"]), "response_a": texts["a"],
                     "response_b": texts["b"],
                     "acceptable_a": _flag(where, "completion_a_is_acceptable",
                                           rec["completion_a_is_acceptable"]),
                     "acceptable_b": _flag(where, "completion_b_is_acceptable",
                                           rec["completion_b_is_acceptable"]),
                     "timestamp": str(rec["timestamp"])})
    if not rows:
        raise ArenaLogError(f"{path}: the sheet holds no judgments; {_RESTORE}")
    for row in rows:
        row["winner"] = str(_side(np.array([row["score_a"]]))[0])
    return _frame(rows, TULU_COLUMNS)


def load_tulu_human(root: str | Path | None = None) -> pd.DataFrame:
    """The 1,150 graded Tulu judgments of 16 identified evaluators, one row per judgment.

    :data:`ARENA_COLUMNS` + ``score_a`` (:data:`TULU_GRADES`; ``winner`` is its side, ``"tie"``
    at 0.5) + :data:`TULU_COLUMNS` (the grade as given, each answer's acceptability flag, the
    timestamp). ``question_id`` is the sheet's ``instance_id``. ``attrs``: ``source``,
    ``license``, ``ties``, ``empty_answers``, ``duplicates``."""
    root = _root(root, TULU_FILE)
    df = read_tulu_sheet(root / TULU_FILE)
    df.attrs = {"source": "tulu-human-eval", "license": "Apache-2.0",
                "ties": int((df["winner"] == "tie").sum()), "empty_answers": _empty(df),
                "duplicates": _duplicates(df)}
    return df


def load_human(source: str, root: str | Path | None = None) -> pd.DataFrame:
    """``load_mt_bench_human`` or ``load_tulu_human`` by name (one of :data:`SOURCES`)."""
    loaders = {"mt-bench-human": load_mt_bench_human, "tulu-human-eval": load_tulu_human}
    if source not in loaders:
        raise KeyError(f"unknown human data set {source!r}; known: {list(SOURCES)}")
    return loaders[source](root)


def sample_questions(pairs: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """The votes on a seeded sample of ``n`` questions (all when there are no more)."""
    questions = np.array(sorted(pairs["question_id"].astype(str).unique()))
    if n >= len(questions):
        return pairs
    keep = np.random.default_rng([seed, 850]).choice(questions, n, replace=False)
    out = pairs[pairs["question_id"].astype(str).isin(set(keep))].reset_index(drop=True)
    out.attrs = dict(pairs.attrs)
    return out


def describe(pairs: pd.DataFrame, name: str) -> dict:
    """Counts of a real-people data set: votes, persons, questions, LLMs, ties, votes per
    person, empty answers."""
    per = pairs["user_id"].value_counts()
    return {"data set": name, "votes": len(pairs), "persons": int(len(per)),
            "questions": pairs["question_id"].nunique(),
            "LLMs": len(set(pairs["llm_a"]) | set(pairs["llm_b"])),
            "ties (score 0.5)": int((pairs["score_a"] == 0.5).sum()),
            "votes per person (min / median / max)":
                f"{per.min()} / {per.median():g} / {per.max()}",
            "empty answers": ", ".join(f"{m} on {q}" for q, m in
                                       pairs.attrs.get("empty_answers", [])) or "none"}


# --------------------------------------------------------------------------- bank
def human_bank(pairs: pd.DataFrame, source: str, root: str | Path | None = None) -> Bank:
    """The :class:`~prlib.bank.Bank` of ``pairs`` (a loader's frame): one row per (question,
    LLM) answer a judge saw (texts as judged; the empty MT-Bench answer stays empty), quality
    NaN (the data has votes, no absolute scores), LLM names, families and prices from the alias
    table (source ``source``). Two different texts of one (question, LLM) are an error."""
    if source not in SOURCES:
        raise KeyError(f"unknown human data set {source!r}; known: {list(SOURCES)}")
    long = pd.concat([
        pairs[["question_id", "query_text", "llm_a", "response_a"]].set_axis(
            ["query_id", "query", "source_name", "response"], axis=1),
        pairs[["question_id", "query_text", "llm_b", "response_b"]].set_axis(
            ["query_id", "query", "source_name", "response"], axis=1)], ignore_index=True)
    texts = long.groupby(["query_id", "source_name"])["response"].nunique()
    if (texts > 1).any():
        q, m = texts[texts > 1].index[0]
        raise ArenaLogError(f"{source}: {m!r} has different answer texts on question {q}; one "
                            "answer per (question, LLM) is expected")
    long = long.drop_duplicates(["query_id", "source_name"]).reset_index(drop=True)
    data_root = _root(root, "prices/model_prices_and_context_window.json")
    llms = resolve_llms(source, sorted(long["source_name"].unique()), data_root)
    canon = dict(zip(llms["source_name"], llms["llm"]))
    frame = long.assign(llm=long["source_name"].map(canon), quality=np.nan)
    # an empty answer has no tokens to count: 0 output tokens, stated in meta
    frame["output_tokens"] = np.where(frame["response"].str.strip() == "", 0, np.nan)
    from prlib.tokens import count_tokens

    todo = frame["output_tokens"].isna()
    frame.loc[todo, "output_tokens"] = count_tokens(frame.loc[todo, "response"].tolist())
    bank = Bank.from_frame(source, frame.drop(columns="source_name"),
                           llms.drop(columns="source_name"),
                           meta={"source": pairs.attrs.get("source", source),
                                 "quality": "none: pairwise votes only (quality is NaN)",
                                 "empty_answers": list(pairs.attrs.get("empty_answers", []))})
    return bank


def canonical_pairs(pairs: pd.DataFrame, bank: Bank, source: str,
                    root: str | Path | None = None) -> pd.DataFrame:
    """``pairs`` with ``llm_a`` / ``llm_b`` renamed to the bank's canonical LLM names."""
    data_root = _root(root, "prices/model_prices_and_context_window.json")
    names = sorted(set(pairs["llm_a"]) | set(pairs["llm_b"]))
    llms = resolve_llms(source, names, data_root)
    canon = dict(zip(llms["source_name"], llms["llm"]))
    out = pairs.assign(llm_a=pairs["llm_a"].map(canon), llm_b=pairs["llm_b"].map(canon))
    out.attrs = dict(pairs.attrs)
    return out
