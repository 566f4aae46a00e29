"""Pairwise human judgments in the Chatbot Arena / MT-Bench-human-judgments schema, read offline.

A record (``lmsys/mt_bench_human_judgments``, ``lmsys/chatbot_arena_conversations``) holds
``question_id``, ``model_a``, ``model_b``, ``winner`` (``model_a``, ``model_b``, ``tie`` or
``tie (bothbad)``), ``judge`` (the user id), ``conversation_a`` / ``conversation_b`` (lists of
``{"role": "user" | "assistant", "content": str}``), ``turn`` (the judged turn, from 1) and,
optionally, ``language``. Files are JSON Lines (``.jsonl``) or one JSON array (``.json``).

- :func:`load_pairwise_logs`: one row per judgment (:data:`ARENA_COLUMNS`), every record checked;
  a bad record raises :class:`ArenaLogError` naming the file, the line (or the array index) and
  the fix;
- :func:`pairs_to_ratings`: per (user, question, turn, LLM) the mean win score, the record format
  of GMTRouter's reference data;
- :func:`pairs_to_interactions`: the tidy ``interactions`` table of
  :class:`prlib.simulate.preferences.Preferences` (utility = rating, one chosen LLM per request).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from prlib.errors import MalformedFileError

#: Columns of :func:`load_pairwise_logs`, in order.
ARENA_COLUMNS = ("user_id", "question_id", "turn", "llm_a", "llm_b", "winner", "winner_raw",
                 "language", "query_text", "response_a", "response_b", "history_a", "history_b")
#: Columns of :func:`pairs_to_ratings`, in order.
RATING_COLUMNS = ("user_id", "question_id", "turn", "query_id", "llm", "rating", "n_judgments")
#: Columns of :func:`pairs_to_interactions` (those of ``Preferences.interactions``).
INTERACTION_COLUMNS = ("user_id", "query_id", "llm", "utility", "chosen")
#: Raw winner labels and the side they give.
WINNERS = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "tie"}
REQUIRED_FIELDS = ("question_id", "model_a", "model_b", "winner", "judge", "conversation_a",
                   "conversation_b", "turn")
SUFFIXES = (".jsonl", ".json")
#: Win score of side a per winner; side b gets one minus it.
SCORE_A = {"a": 1.0, "b": 0.0, "tie": 0.5}
_CONVERT_HINT = ("convert it first, e.g. pd.read_parquet(src).to_json(dst, orient='records', "
                 "lines=True) for a .jsonl file")


class ArenaLogError(MalformedFileError):
    """A pairwise log file (or a pairs frame) is unusable; the message names the place and the fix.

    A ``ValueError`` (and a :class:`prlib.errors.DataError`, like the other loaders' errors).
    """


# --------------------------------------------------------------------------- reading
def _read_records(path: Path) -> list[tuple[str, Any]]:
    """(place, record) per record; place is ``<path>: line N`` (from 1) or ``<path>: record N``
    (the index in the JSON array, from 0)."""
    if not path.is_file():
        raise ArenaLogError(f"{path}: no such file; pass the path of a .jsonl or .json dump of "
                            "the pairwise judgments")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ArenaLogError(f"{path}: suffix {path.suffix!r} is not supported; only JSON Lines "
                            f"(.jsonl) and JSON arrays (.json) are read, not Parquet or CSV: "
                            f"{_CONVERT_HINT}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ArenaLogError(f"{path}: not UTF-8 text ({exc}); re-save the dump as UTF-8") from exc
    if suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}: line {lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ArenaLogError(f"{path}: line {lineno}: not valid JSON ({exc.msg} at column "
                                    f"{exc.colno}); each line must hold one JSON object") from exc
    else:
        if not text.strip():
            records = []
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ArenaLogError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg} at "
                                    f"column {exc.colno}); a .json file must hold one JSON array "
                                    "of records (use .jsonl for one record per line)") from exc
            if not isinstance(data, list):
                raise ArenaLogError(f"{path}: the top level is a {type(data).__name__}, not a JSON "
                                    "array of records; wrap the records in [...] or write them "
                                    "as JSON Lines (.jsonl)")
            records = [(f"{path}: record {i}", rec) for i, rec in enumerate(data)]
    if not records:
        raise ArenaLogError(f"{path}: the file holds no records; point to a non-empty dump of "
                            "the pairwise judgments")
    return records


def _check_messages(where: str, name: str, conv: Any) -> list[dict]:
    """``conv`` as a list of ``{"role", "content"}`` dicts (extra keys dropped), or an error."""
    if not isinstance(conv, list):
        raise ArenaLogError(f"{where}: {name} is a {type(conv).__name__}, not a list of "
                            '{"role": ..., "content": ...} messages')
    out = []
    for i, msg in enumerate(conv):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ArenaLogError(f"{where}: {name}[{i}] is not a message dict with 'role' and "
                                f"'content' keys (got {str(msg)[:60]!r})")
        if msg["role"] not in ("user", "assistant"):
            raise ArenaLogError(f"{where}: {name}[{i}] has role {msg['role']!r}; roles must be "
                                "'user' or 'assistant' (drop system messages first)")
        if not isinstance(msg["content"], str):
            raise ArenaLogError(f"{where}: {name}[{i}] content is a "
                                f"{type(msg['content']).__name__}, not a str")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def _split_turn(where: str, name: str, conv: list[dict], turn: int) -> tuple[list, str, str]:
    """(history before the turn's user message, that user message, the assistant reply)."""
    users = [i for i, m in enumerate(conv) if m["role"] == "user"]
    if turn > len(users):
        raise ArenaLogError(f"{where}: turn {turn} is larger than the {len(users)} user "
                            f"message(s) of {name}; turn counts the judged user message from 1")
    start = users[turn - 1]
    end = users[turn] if turn < len(users) else len(conv)
    replies = [m["content"] for m in conv[start + 1:end] if m["role"] == "assistant"]
    if not replies:
        raise ArenaLogError(f"{where}: {name} has no assistant reply to user message {turn}; "
                            "a judged turn needs both the question and the answer")
    return conv[:start], conv[start]["content"], replies[0]


def _parse_record(where: str, rec: Any) -> dict:
    """One checked row of :data:`ARENA_COLUMNS` from one raw record."""
    if not isinstance(rec, dict):
        raise ArenaLogError(f"{where}: a record must be a JSON object, got a "
                            f"{type(rec).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in rec]
    if missing:
        raise ArenaLogError(f"{where}: missing required field(s) {', '.join(missing)}; every "
                            f"record needs {', '.join(REQUIRED_FIELDS)}")
    qid = rec["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or str(qid) == "":
        raise ArenaLogError(f"{where}: question_id {qid!r} must be a non-empty str or an int")
    for key in ("model_a", "model_b", "judge"):
        if not isinstance(rec[key], str) or not rec[key]:
            raise ArenaLogError(f"{where}: {key} {rec[key]!r} must be a non-empty str")
    if rec["model_a"] == rec["model_b"]:
        raise ArenaLogError(f"{where}: model_a and model_b are both {rec['model_a']!r}; a "
                            "pairwise judgment compares two different models")
    if rec["winner"] not in WINNERS:
        raise ArenaLogError(f"{where}: winner {rec['winner']!r} is not one of "
                            f"{', '.join(WINNERS)}")
    turn = rec["turn"]
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
        raise ArenaLogError(f"{where}: turn {turn!r} is not a positive int (1 for the first "
                            "user message, 2 for the second, ...)")
    language = rec.get("language")
    if language is not None and not isinstance(language, str):
        raise ArenaLogError(f"{where}: language {language!r} must be a str or absent")
    conv_a = _check_messages(where, "conversation_a", rec["conversation_a"])
    conv_b = _check_messages(where, "conversation_b", rec["conversation_b"])
    hist_a, query_a, resp_a = _split_turn(where, "conversation_a", conv_a, turn)
    hist_b, query_b, resp_b = _split_turn(where, "conversation_b", conv_b, turn)
    return {"user_id": rec["judge"], "question_id": str(qid), "turn": turn,
            "llm_a": rec["model_a"], "llm_b": rec["model_b"], "winner": WINNERS[rec["winner"]],
            "winner_raw": rec["winner"], "language": language, "query_text": query_a,
            "response_a": resp_a, "response_b": resp_b, "history_a": hist_a,
            "history_b": hist_b, "_query_b": query_b}


def load_pairwise_logs(path: str | Path, judges: Iterable[str] | str | None = None
                       ) -> pd.DataFrame:
    """One row per judgment of a ``.jsonl`` / ``.json`` pairwise log (:data:`ARENA_COLUMNS`).

    ``winner`` is ``"a"``, ``"b"`` or ``"tie"`` (both tie kinds; the label as given is in
    ``winner_raw``). ``query_text`` is the judged turn's user message of ``conversation_a``;
    ``response_a`` / ``response_b`` the first assistant reply to it in each conversation;
    ``history_a`` / ``history_b`` the messages before it (``[]`` on turn 1). Every record is
    checked, whatever ``judges`` keeps; the first bad one raises :class:`ArenaLogError`.
    ``judges`` keeps only those judge ids (a single str is one id). Repeated judgments of the
    same (judge, question, turn, unordered model pair) are all kept (real repeated votes);
    ``attrs["duplicates"]`` counts the rows that repeat an earlier one. ``attrs`` also holds
    ``path``, ``records`` (before the judge filter) and ``query_mismatches`` (rows whose
    conversation_b asks a different judged question than conversation_a).
    """
    path = Path(path)
    rows = [_parse_record(where, rec) for where, rec in _read_records(path)]
    df = pd.DataFrame(rows)
    n_records = len(df)
    if judges is not None:
        keep = {judges} if isinstance(judges, str) else set(judges)
        df = df[df["user_id"].isin(keep)]
        if df.empty:
            present = sorted(set(r["user_id"] for r in rows))
            raise ArenaLogError(f"{path}: none of the judges {sorted(keep)[:5]} judged anything "
                                f"in this file; its judges look like {present[:5]}")
        df = df.reset_index(drop=True)
    mismatches = int((df["query_text"] != df["_query_b"]).sum())
    df = df[list(ARENA_COLUMNS)].astype({"turn": np.int64})
    df["language"] = df["language"].astype(object).where(df["language"].notna(), None)
    pair = pd.DataFrame({"lo": np.minimum(df["llm_a"].to_numpy(), df["llm_b"].to_numpy()),
                         "hi": np.maximum(df["llm_a"].to_numpy(), df["llm_b"].to_numpy())})
    key = pd.concat([df[["user_id", "question_id", "turn"]], pair], axis=1)
    df.attrs = {"path": str(path), "records": n_records,
                "duplicates": int(key.duplicated().sum()), "query_mismatches": mismatches}
    return df


# --------------------------------------------------------------------------- derived tables
def _check_pairs(pairs: pd.DataFrame) -> None:
    need = ["user_id", "question_id", "turn", "llm_a", "llm_b", "winner"]
    missing = [c for c in need if c not in pairs.columns]
    if missing:
        raise ArenaLogError(f"pairs lacks columns {missing}; pass the frame of "
                            "load_pairwise_logs")
    bad = sorted(set(pairs["winner"]) - set(SCORE_A))
    if bad:
        raise ArenaLogError(f"pairs has winner values {bad[:3]}; they must be 'a', 'b' or 'tie' "
                            "(load_pairwise_logs maps the raw labels)")


def pairs_to_ratings(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per (user_id, question_id, turn, llm): ``rating`` = mean win score, ``n_judgments``.

    Each judgment scores its two LLMs win 1, tie 0.5, loss 0; ``rating`` is an LLM's mean score
    over that user's judgments of that (question, turn), ``n_judgments`` how many there were.
    ``query_id`` is ``f"{question_id}/t{turn}"``. This is the record format of GMTRouter's
    reference data; note that pairs re-labelled later from these ratings (a pair per two rated
    LLMs, the higher rating winning) skip pairs of equal rating, so ties drop out there.
    Rows are sorted by user_id, question_id, turn, llm (:data:`RATING_COLUMNS`).
    """
    _check_pairs(pairs)
    score_a = pairs["winner"].map(SCORE_A).to_numpy(dtype=float)
    keys = pairs[["user_id", "question_id", "turn"]].reset_index(drop=True)
    long = pd.concat([
        keys.assign(llm=pairs["llm_a"].to_numpy(), score=score_a),
        keys.assign(llm=pairs["llm_b"].to_numpy(), score=1.0 - score_a),
    ], ignore_index=True)
    long = long.astype({"user_id": str, "question_id": str, "llm": str, "turn": np.int64})
    out = (long.groupby(["user_id", "question_id", "turn", "llm"], sort=True)["score"]
           .agg(rating="mean", n_judgments="size").reset_index())
    out["query_id"] = out["question_id"] + "/t" + out["turn"].astype(str)
    out = out.astype({"rating": float, "n_judgments": np.int64})
    return out[list(RATING_COLUMNS)].reset_index(drop=True)


def pairs_to_interactions(pairs: pd.DataFrame) -> pd.DataFrame:
    """The ``interactions`` table of :class:`~prlib.simulate.preferences.Preferences`.

    Columns user_id, query_id, llm (str), utility (float: the rating of :func:`pairs_to_ratings`)
    and chosen (bool). Per (user_id, query_id) exactly one LLM is chosen: the highest rating,
    equal ratings broken by the LLM name, the first in sorted order winning. A query is a judged
    turn (``query_id = f"{question_id}/t{turn}"``); the candidates are the LLMs that user judged
    there. Rows are sorted by user_id, query_id, llm.
    """
    r = pairs_to_ratings(pairs)
    inter = pd.DataFrame({"user_id": r["user_id"].astype(str), "query_id": r["query_id"],
                          "llm": r["llm"].astype(str),
                          "utility": r["rating"].astype(float)})
    inter = inter.sort_values(["user_id", "query_id", "llm"], kind="stable").reset_index(drop=True)
    best = inter.groupby(["user_id", "query_id"], sort=False)["utility"].transform("max")
    tied = np.isclose(inter["utility"], best, rtol=0, atol=1e-12)
    first = inter[tied].groupby(["user_id", "query_id"], sort=False).head(1).index
    inter["chosen"] = inter.index.isin(first)
    return inter[list(INTERACTION_COLUMNS)]


def pairs_to_preferences(pairs: pd.DataFrame, bank_name: str, name: str | None = None):
    """Real users' :class:`~prlib.simulate.preferences.Preferences` from pairwise logs: one user
    per ``judge`` (strategy "judge", archetype "human"), interactions of
    :func:`pairs_to_interactions`, ``meta`` saying they are real judgments, not simulated.
    ``bank_name``: the bank whose turn queries (``"<question_id>/t<turn>"``, e.g.
    ``turn_bank(load_bank("mt-bench"))``) and LLM names the logs use."""
    from prlib.simulate.preferences import Preferences

    inter = pairs_to_interactions(pairs)
    users = pd.DataFrame({"user_id": sorted(inter["user_id"].unique()), "strategy": "judge",
                          "archetype": "human", "params": "{}", "p": np.nan,
                          "temperature": np.nan})
    prefs = Preferences(name or f"arena-logs-{bank_name}", "judge", bank_name, users, inter,
                        {"source": "pairwise human judgments (Chatbot Arena schema)",
                         "rating": "mean win score per (user, question, turn, LLM): win 1, "
                         "tie 0.5, loss 0", "duplicates": int(pairs.attrs.get("duplicates", 0))})
    prefs.meta["simulated"] = False
    return prefs
