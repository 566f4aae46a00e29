"""The bank: one tidy table per benchmark, a row per (query, LLM), plus its queries and LLMs.

Every later stage reads benchmarks only through :class:`Bank`, whatever the source (replayed real
data or a live generation run).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from prlib.errors import UnknownModelError
from prlib.tokens import TOKENIZER_NOTE, count_tokens

QUERY_COLUMNS = ["query_id", "task", "text", "turns"]
LLM_COLUMNS = ["llm", "family", "size_b", "input_usd_per_m", "output_usd_per_m", "description"]
BANK_COLUMNS = ["query_id", "task", "llm", "quality", "input_tokens", "output_tokens", "cost_usd"]
OPTIONAL_BANK_COLUMNS = ["response"]
#: Columns of the frame that :meth:`Bank.from_frame` needs, and those it can fill in itself.
FRAME_REQUIRED = ["query", "llm", "quality"]
FRAME_OPTIONAL = ["query_id", "task", "response", "input_tokens", "output_tokens"]
#: Columns of the LLM table that :meth:`Bank.from_frame` needs (family and size_b are optional).
LLM_TABLE_REQUIRED = ["llm", "input_usd_per_m", "output_usd_per_m", "description"]
TASKS_PATH = Path(__file__).resolve().parent / "resources" / "task_descriptions.json"


class SchemaError(ValueError):
    """A bank table does not follow the bank schema."""


@dataclass
class Bank:
    """A benchmark as three tables.

    - ``queries``: query_id (str), task (str), text (str, the first user turn), turns (int), and
      optionally ``turn_texts`` (list of user turns for multi-turn sources);
    - ``llms``: llm, family, size_b (float or NaN), input/output USD per 1M tokens, description;
    - ``bank``: a row per (query_id, llm): quality in [0, 1] (NaN where the source has no score),
      input_tokens, output_tokens, cost_usd, and ``response`` text where the source has it.
    - ``meta``: provenance (source, token counting, quality mapping, dropped rows, assumptions),
      and optionally ``task_descriptions`` ({task: paragraph}, embedded as the task's features).

    Build one from your own logged responses with :meth:`from_frame`.
    """

    name: str
    queries: pd.DataFrame
    llms: pd.DataFrame
    bank: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_bank(self)

    @property
    def llm_names(self) -> list[str]:
        return self.llms["llm"].tolist()

    @property
    def has_text(self) -> bool:
        return "response" in self.bank.columns and self.bank["response"].notna().any()

    @property
    def has_quality(self) -> bool:
        return self.bank["quality"].notna().any()

    def matrix(self, column: str) -> pd.DataFrame:
        """Wide (query_id x llm) view of one bank column, rows in ``queries`` order."""
        wide = self.bank.pivot(index="query_id", columns="llm", values=column)
        return wide.reindex(index=self.queries["query_id"], columns=self.llm_names)

    def subset(self, query_ids=None, llms=None) -> "Bank":
        """A new bank restricted to some queries and/or LLMs (same schema)."""
        q, l, b = self.queries, self.llms, self.bank
        if query_ids is not None:
            keep = set(query_ids)
            q, b = q[q["query_id"].isin(keep)], b[b["query_id"].isin(keep)]
        if llms is not None:
            check_llm_names(llms, self.llm_names)
            l = l[l["llm"].isin(llms)].set_index("llm").loc[list(llms)].reset_index()
            b = b[b["llm"].isin(llms)]
        return Bank(self.name, q.reset_index(drop=True), l.reset_index(drop=True),
                    b.reset_index(drop=True), dict(self.meta))

    def sample_queries(self, n: int, seed: int = 0) -> "Bank":
        """A seeded subsample of at most ``n`` queries (the whole bank when it is smaller)."""
        ids = self.queries["query_id"].to_numpy()
        if n >= len(ids):
            return self
        keep = np.random.default_rng(seed).choice(ids, n, replace=False)
        return self.subset(query_ids=sorted(keep))

    def task_descriptions(self) -> dict[str, str]:
        """A description paragraph per task: the bank's own (``meta["task_descriptions"]``), else
        the package's resources file (``"bank:task"`` or ``"task"`` entry), else a template."""
        own = self.meta.get("task_descriptions") or {}
        known = json.loads(TASKS_PATH.read_text()) if TASKS_PATH.is_file() else {}
        return {t: own.get(t) or known.get(f"{self.name}:{t}", known.get(
                    t, f"Queries of the task '{t}' from the {self.name} benchmark."))
                for t in self.queries["task"].unique()}

    @classmethod
    def from_frame(cls, name: str, frame: pd.DataFrame, llms: pd.DataFrame,
                   task_descriptions: Mapping[str, str] | None = None,
                   meta: Mapping | None = None) -> "Bank":
        """A bank from your own logged responses: a row per (query, LLM).

        ``frame`` columns: ``query`` (the query text), ``llm``, ``quality`` (in [0, 1], NaN
        where unscored), and optionally ``query_id`` (default: numbered by first appearance),
        ``task`` (default ``"default"``), ``response`` (the answer text), ``input_tokens`` and
        ``output_tokens`` (default: counted from the query and response texts with the offline
        tokenizer). Each row needs a response or an ``output_tokens`` count.
        ``llms`` columns: ``llm``, ``input_usd_per_m``, ``output_usd_per_m`` (USD per 1M
        tokens), ``description`` (a sentence or two; it is embedded as the LLM's features), and
        optionally ``family`` and ``size_b``. ``task_descriptions`` maps tasks to a paragraph
        each (embedded as the task's features; a template otherwise). Costs are tokens x prices,
        as for the built-in banks.
        """
        frame, llms = pd.DataFrame(frame).copy(), pd.DataFrame(llms).copy()
        _require(frame, FRAME_REQUIRED, "frame", name,
                 hint=f" (optional: {FRAME_OPTIONAL})")
        _require(llms, LLM_TABLE_REQUIRED, "llms", name,
                 hint=" (optional: family, size_b); prices are USD per 1M tokens")
        check_llm_names(frame["llm"].unique(), llms["llm"],
                        where="the llms table passed to Bank.from_frame")
        for col in ("input_usd_per_m", "output_usd_per_m"):
            price = pd.to_numeric(llms[col], errors="coerce")
            if price.isna().any() or (price < 0).any():
                raise SchemaError(f"bank {name!r}: llms column {col!r} must be a non-negative "
                                  f"number for every LLM, got {llms[col].tolist()}")
            llms[col] = price.astype(float)
        llms["family"] = llms["family"] if "family" in llms else "unknown"
        llms["size_b"] = pd.to_numeric(llms["size_b"], errors="coerce") if "size_b" in llms \
            else np.nan
        llms = llms[llms["llm"].isin(set(frame["llm"]))].reset_index(drop=True)
        if "query_id" not in frame:
            codes, _ = pd.factorize(frame["query"])
            frame["query_id"] = [f"q{c:05d}" for c in codes]
        frame["query_id"] = frame["query_id"].astype(str)
        if "task" not in frame:
            frame["task"] = "default"
        texts = frame.groupby("query_id")[["query", "task"]].nunique()
        if (texts > 1).any().any():
            bad = texts[(texts > 1).any(axis=1)].index[0]
            raise SchemaError(f"bank {name!r}: query_id {bad!r} has more than one query text or "
                              "task; a query_id must name one query")
        queries = (frame.drop_duplicates("query_id")[["query_id", "task", "query"]]
                   .rename(columns={"query": "text"}).assign(turns=1).reset_index(drop=True))
        has_response = "response" in frame and frame["response"].notna().any()
        if "output_tokens" not in frame:
            if not has_response:
                raise SchemaError(f"bank {name!r}: the frame needs a 'response' column (answer "
                                  "texts) or an 'output_tokens' column (answer lengths) to cost "
                                  "the answers")
            frame["output_tokens"] = np.nan
        missing = frame["output_tokens"].isna().to_numpy()
        if missing.any():
            no_text = missing & (frame["response"].isna().to_numpy() if "response" in frame
                                 else True)
            if no_text.any():
                raise SchemaError(f"bank {name!r}: {int(no_text.sum())} of {len(frame)} rows "
                                  "have neither an output_tokens count nor a response text: "
                                  f"{_rows(frame, no_text)}; give one or drop the rows")
            frame.loc[missing, "output_tokens"] = count_tokens(frame.loc[missing, "response"])
        if "input_tokens" not in frame:
            frame["input_tokens"] = frame["query"].map(
                dict(zip(queries["text"], count_tokens(queries["text"]))))
        quality = pd.to_numeric(frame["quality"], errors="coerce").astype(float)
        not_number = (quality.isna() & frame["quality"].notna()).to_numpy()
        if not_number.any():
            raise SchemaError(f"bank {name!r}: {int(not_number.sum())} of {len(frame)} rows have "
                              "a quality that is not a number: "
                              f"{_rows(frame, not_number, 'quality')}; give a number in [0, 1], "
                              "or leave it empty (unscored)")
        frame["quality"] = quality
        for col in ("input_tokens", "output_tokens"):
            frame[col] = frame[col].astype(float).round().astype(np.int64) \
                if frame[col].notna().all() else frame[col]
        frame["cost_usd"] = cost_usd(frame, llms)
        columns = BANK_COLUMNS + (["response"] if has_response else [])
        tasks = dict(task_descriptions or {})
        unknown = sorted(set(tasks) - set(queries["task"]))
        if unknown:
            raise SchemaError(f"bank {name!r}: task descriptions name tasks that no query has: "
                              f"{unknown[:5]}; the tasks are {sorted(queries['task'].unique())}")
        info = {"source": "user-supplied frame (Bank.from_frame)",
                "input_tokens": "given" if "input_tokens" in frame else TOKENIZER_NOTE,
                "output_tokens": "given where present, else " + TOKENIZER_NOTE,
                **({"task_descriptions": tasks} if tasks else {}), **dict(meta or {})}
        return cls(name, queries, llms[LLM_COLUMNS], frame[columns].reset_index(drop=True), info)

    def save(self, folder: str | Path) -> Path:
        """Write the three tables as parquet and the metadata as JSON into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.queries.to_parquet(folder / "queries.parquet", index=False)
        self.llms.to_parquet(folder / "llms.parquet", index=False)
        self.bank.to_parquet(folder / "bank.parquet", index=False)
        (folder / "meta.json").write_text(json.dumps({"name": self.name, **self.meta}, indent=1,
                                                     default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Bank":
        """Read a bank written by :meth:`save`."""
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        name = meta.pop("name")
        return cls(name, pd.read_parquet(folder / "queries.parquet"),
                   pd.read_parquet(folder / "llms.parquet"),
                   pd.read_parquet(folder / "bank.parquet"), meta)


def _require(df: pd.DataFrame, columns: list[str], table: str, name: str, hint: str = "") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(f"bank {name!r}: table {table!r} lacks columns {missing}; "
                          f"it has {list(df.columns)}; it needs {columns}{hint}")


def _rows(frame: pd.DataFrame, mask: np.ndarray, column: str | None = None,
          shown: int = 3) -> str:
    """The first ``shown`` rows of ``frame`` where ``mask`` is true, named by their index
    label, (query_id, llm) and ``column``'s value: "row 4 ('q00001', 'huge', quality 7.0),
    ... and 9 more"."""
    picked = frame[np.asarray(mask, dtype=bool)]
    names = []
    for label, row in picked.head(shown).iterrows():
        what = [repr(row[c]) for c in ("query_id", "llm") if c in row.index]
        if column is not None:
            v = row[column]
            what.append(f"{column} {v:g}" if isinstance(v, (float, np.floating)) else
                        f"{column} {v!r}")
        names.append(f"row {label} ({', '.join(what)})")
    more = len(picked) - len(names)
    return ", ".join(names) + (f" and {more:,} more" if more > 0 else "")


def check_llm_names(names: Iterable[str], known: Iterable[str],
                    where: str = "prlib/resources/llm_aliases.csv") -> None:
    """Raise :class:`~prlib.errors.UnknownModelError` naming the closest known names for any
    unknown name; ``where`` says where the known names come from."""
    known = [str(k) for k in known]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.3)
            raise UnknownModelError(f"unknown model name {name!r}; closest known names: {close}. "
                                    f"Known names: {len(known)} (see {where}).")


def cost_usd(rows: pd.DataFrame, llms: pd.DataFrame) -> np.ndarray:
    """USD cost of each bank row: input/output tokens x the LLM's price per 1M tokens, (n,)."""
    prices = llms.set_index("llm")
    return (rows["input_tokens"].to_numpy(dtype=float)
            * prices.loc[rows["llm"], "input_usd_per_m"].to_numpy(dtype=float)
            + rows["output_tokens"].to_numpy(dtype=float)
            * prices.loc[rows["llm"], "output_usd_per_m"].to_numpy(dtype=float)) / 1e6


def describe_llm(llm: str, family: str, size_b: float, input_usd_per_m: float,
                 output_usd_per_m: float) -> str:
    """A factual one-paragraph description of an LLM (for sources that have none)."""
    size = (f"a {size_b:g}-billion-parameter" if pd.notna(size_b)
            else "a proprietary (size undisclosed)")
    return (f"{llm} is {size} model of the {family} family. It costs "
            f"${input_usd_per_m:.2f} per million input tokens and "
            f"${output_usd_per_m:.2f} per million output tokens.")


def validate_bank(b: Bank) -> None:
    """Raise :class:`SchemaError` with a precise message where ``b`` breaks the schema."""
    _require(b.queries, QUERY_COLUMNS, "queries", b.name)
    _require(b.llms, LLM_COLUMNS, "llms", b.name)
    _require(b.bank, BANK_COLUMNS, "bank", b.name)
    if b.queries["query_id"].duplicated().any():
        dup = b.queries.loc[b.queries["query_id"].duplicated(), "query_id"].iloc[0]
        raise SchemaError(f"bank {b.name!r}: duplicated query_id {dup!r} in queries")
    if b.llms["llm"].duplicated().any():
        raise SchemaError(f"bank {b.name!r}: duplicated llm names in llms")
    if b.bank.duplicated(["query_id", "llm"]).any():
        row = b.bank[b.bank.duplicated(["query_id", "llm"])].iloc[0]
        raise SchemaError(f"bank {b.name!r}: two rows for ({row.query_id!r}, {row.llm!r})")
    unknown_q = set(b.bank["query_id"]) - set(b.queries["query_id"])
    if unknown_q:
        raise SchemaError(f"bank {b.name!r}: {len(unknown_q)} bank rows name queries missing "
                          f"from the queries table, e.g. {sorted(unknown_q)[:3]}")
    unknown_l = set(b.bank["llm"]) - set(b.llms["llm"])
    if unknown_l:
        raise SchemaError(f"bank {b.name!r}: bank rows name LLMs missing from llms: "
                          f"{sorted(unknown_l)[:5]}")
    q = b.bank["quality"].to_numpy(dtype=float)
    outside = ~np.isnan(q) & ((q < 0) | (q > 1))
    if outside.any():
        raise SchemaError(
            f"bank {b.name!r}: quality outside [0, 1] in {int(outside.sum())} of {len(q)} rows "
            f"(range seen {np.nanmin(q):g} to {np.nanmax(q):g}): "
            f"{_rows(b.bank, outside, 'quality')}; map your scores into [0, 1] first (e.g. "
            "(score - lowest) / (highest - lowest) of your scale)")
    for col in ["input_tokens", "output_tokens", "cost_usd"]:
        v = b.bank[col].to_numpy(dtype=float)
        if np.isnan(v).any() or (v < 0).any():
            raise SchemaError(f"bank {b.name!r}: column {col!r} has missing or negative values")


def bank_summary(b: Bank) -> dict:
    """Counts of one bank: queries, tasks, LLMs, rows, turns, text and quality coverage."""
    return {"bank": b.name, "queries": len(b.queries), "tasks": b.queries["task"].nunique(),
            "llms": len(b.llms), "rows": len(b.bank), "turns": int(b.queries["turns"].max()),
            "has_text": b.has_text,
            "quality_coverage": float(b.bank["quality"].notna().mean())}


def per_llm_stats(b: Bank) -> pd.DataFrame:
    """Per LLM: mean quality (NaN-skipping), mean cost in USD per query, mean output tokens."""
    stats = b.bank.groupby("llm").agg(mean_quality=("quality", "mean"),
                                      mean_cost_usd=("cost_usd", "mean"),
                                      mean_output_tokens=("output_tokens", "mean"),
                                      answered=("query_id", "count"))
    out = b.llms[["llm", "family", "size_b", "input_usd_per_m", "output_usd_per_m"]].merge(
        stats, left_on="llm", right_index=True)
    return out.assign(bank=b.name).sort_values("mean_cost_usd").reset_index(drop=True)


_TURN_ID = re.compile(r"^(?P<conv>.+)/t(?P<turn>\d+)$")


def turn_query_id(conversation_id: str, turn: int) -> str:
    """``"<conversation>/t<turn>"``: the query id of one turn of a conversation."""
    return f"{conversation_id}/t{int(turn)}"


def parse_turn_query_ids(query_ids) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`turn_query_id`: ``(conversation, turn)`` arrays, (n,) object and
    (n,) int; ``"c/t2"`` -> ("c", 2), and any other id is a one-turn conversation of its own
    (turn 1)."""
    conv, turn = [], []
    for q in map(str, query_ids):
        m = _TURN_ID.match(q)
        conv.append(m["conv"] if m else q)
        turn.append(int(m["turn"]) if m else 1)
    return np.array(conv, dtype=object), np.array(turn, dtype=int)


def turn_bank(bank: Bank) -> Bank:
    """A multi-turn bank (queries with ``turn_texts``, rows with ``response_turns``, e.g.
    MT-Bench) as one query per (conversation, turn): ``query_id`` from :func:`turn_query_id`,
    ``text`` = the user messages so far (what a router knows when it routes that turn; the
    earlier turns first, separated by blank lines), ``turn_text`` = this turn's own message,
    ``conversation`` and ``turn`` (1, 2, ...) columns; a row per (turn query, LLM) with that
    turn's answer as ``response``, its own token counts (input: the conversation so far,
    re-sent at each turn; output: the answer) and cost. Quality is kept as the source has it
    (NaN for MT-Bench). Name: ``"<bank>-turns"``."""
    if "turn_texts" not in bank.queries or "response_turns" not in bank.bank:
        raise SchemaError(f"bank {bank.name!r} is not multi-turn: it needs queries.turn_texts "
                          "and bank.response_turns (e.g. load_bank('mt-bench'))")
    users = dict(zip(bank.queries["query_id"], bank.queries["turn_texts"]))
    tasks = dict(zip(bank.queries["query_id"], bank.queries["task"]))
    qrows, rows, contexts, outputs = [], [], [], []
    for conv, turns in users.items():
        for t in range(1, len(turns) + 1):
            qrows.append({"query_id": turn_query_id(conv, t), "task": tasks[conv],
                          "text": "\n\n".join(turns[:t]), "turns": 1, "conversation": conv,
                          "turn": t, "turn_text": turns[t - 1]})
    for r in bank.bank.itertuples(index=False):
        replies = list(r.response_turns)
        for t in range(1, min(len(users[r.query_id]), len(replies)) + 1):
            text = replies[t - 1]
            rows.append({"query_id": turn_query_id(r.query_id, t), "task": r.task, "llm": r.llm,
                         "quality": r.quality, "response": text})
            contexts.append(" ".join(users[r.query_id][:t] + replies[:t - 1]))
            outputs.append(text or "")
    frame = pd.DataFrame(rows)
    frame["input_tokens"] = count_tokens(contexts)
    frame["output_tokens"] = count_tokens(outputs)
    frame["cost_usd"] = cost_usd(frame, bank.llms)
    meta = {**bank.meta, "turns": "one query per (conversation, turn); text = the user messages "
            "so far; response = that turn's answer", "input_tokens": TOKENIZER_NOTE +
            "; the conversation so far", "output_tokens": TOKENIZER_NOTE + "; this turn's answer"}
    return Bank(f"{bank.name}-turns", pd.DataFrame(qrows), bank.llms.copy(),
                frame[BANK_COLUMNS + ["response"]], meta)


#: file types :func:`read_bank` reads (a folder written by :meth:`Bank.save` too)
BANK_FILE_TYPES = (".csv", ".parquet", ".pq", ".jsonl", ".json")


def _read_table(path: Path) -> pd.DataFrame:
    """A CSV, Parquet, JSON-lines or JSON (records) file as a frame."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=suffix == ".jsonl")
    raise SchemaError(f"{path}: a bank file must be one of {BANK_FILE_TYPES} (or a folder "
                      "written by Bank.save)")


def read_bank(path: str | Path, llms: str | Path | pd.DataFrame | None = None,
              name: str | None = None,
              task_descriptions: Mapping[str, str] | None = None) -> Bank:
    """A bank from a file of your own: a folder written by :meth:`Bank.save`, or a CSV,
    Parquet, JSON-lines or JSON file with :meth:`Bank.from_frame`'s columns, a row per
    (query, LLM). The LLM table comes from ``llms`` (a file or frame with
    :data:`LLM_TABLE_REQUIRED` columns) or, without it, from the same columns in the file
    (one value per LLM). ``name``: the bank's name (default: the file's stem)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "meta.json").is_file():
            raise SchemaError(f"{path} is a folder without meta.json: give a bank file "
                              f"({', '.join(BANK_FILE_TYPES)}) or a folder written by Bank.save")
        return Bank.load(path)
    if not path.is_file():
        raise FileNotFoundError(f"bank file {path} not found")
    frame = _read_table(path)
    name = name or path.stem
    if llms is None:
        _require(frame, LLM_TABLE_REQUIRED, "file", name,
                 hint=" (the LLM columns, one value per LLM, or pass an llms table: llms=FILE, "
                      "--llms FILE)")
        extra = [c for c in ("family", "size_b") if c in frame]
        table = frame[LLM_TABLE_REQUIRED + extra].drop_duplicates()
        twice = table["llm"][table["llm"].duplicated()].unique().tolist()
        if twice:
            raise SchemaError(f"bank {name!r}: the LLM columns of {path.name} differ between "
                              f"rows of the same LLM: {twice[:5]}; give one price and "
                              "description per LLM (or an llms table)")
        frame = frame.drop(columns=[c for c in table.columns if c != "llm"])
    else:
        table = llms if isinstance(llms, pd.DataFrame) else _read_table(Path(llms))
    return Bank.from_frame(name, frame, table, task_descriptions=task_descriptions,
                           meta={"file": str(path)})
