"""The bank: one tidy table per benchmark, a row per (query, LLM), plus its queries and LLMs.

Every later stage reads benchmarks only through :class:`Bank`, whatever the source (replayed real
data or a live generation run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

QUERY_COLUMNS = ["query_id", "task", "text", "turns"]
LLM_COLUMNS = ["llm", "family", "size_b", "input_usd_per_m", "output_usd_per_m", "description"]
BANK_COLUMNS = ["query_id", "task", "llm", "quality", "input_tokens", "output_tokens", "cost_usd"]
OPTIONAL_BANK_COLUMNS = ["response"]


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
    - ``meta``: provenance (source, token counting, quality mapping, dropped rows, assumptions).
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
            from prlib.data import check_llm_names

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


def _require(df: pd.DataFrame, columns: list[str], table: str, name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(f"bank {name!r}: table {table!r} lacks columns {missing}; "
                          f"it has {list(df.columns)}")


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
    if np.any((q[~np.isnan(q)] < 0) | (q[~np.isnan(q)] > 1)):
        raise SchemaError(f"bank {b.name!r}: quality outside [0, 1]")
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
