"""The :class:`Preferences` contract: simulated users, their utilities and choices per (user,
query).

Every router reads simulated users only through this class. Utilities are per (user, query, LLM)
for the *candidate* LLMs of the query (those with a usable row in the bank); exactly one row per
(user, query) has ``chosen == True``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

STRATEGIES = ("multi_cost", "judge")
USER_COLUMNS = ["user_id", "strategy", "archetype", "params"]
INTERACTION_COLUMNS = ["user_id", "query_id", "llm", "utility", "chosen"]


class PreferencesError(ValueError):
    """A Preferences object breaks the contract, or a simulation input is unusable."""


def to_jsonable(value):
    """Numpy scalars/arrays, tuples and paths turned into plain JSON values (recursively)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class Preferences:
    """Simulated users of one bank under one strategy.

    - ``users``: user_id (str), strategy, archetype, params (JSON str of the user's generating
      parameters), plus numeric columns (``p``, ``temperature``; judge users also ``persona`` and
      one ``w_<persona>`` weight column per persona);
    - ``interactions``: a row per (user_id, query_id, llm) for the candidate LLMs of the query:
      ``utility`` (float, higher is better for that user) and ``chosen`` (bool, exactly one per
      (user_id, query_id));
    - ``meta``: ``simulated: True``, notes (stand-ins, cost normalisation), dropped counts and the
      generator's parameters.
    """

    name: str
    strategy: str
    bank_name: str
    users: pd.DataFrame
    interactions: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.meta = {"simulated": True, **self.meta}
        self.validate()

    # ------------------------------------------------------------------ contract
    def validate(self) -> None:
        """Raise :class:`PreferencesError` where the object breaks the contract."""
        if self.strategy not in STRATEGIES:
            raise PreferencesError(f"strategy {self.strategy!r} is not one of {STRATEGIES}")
        for table, cols in (("users", USER_COLUMNS), ("interactions", INTERACTION_COLUMNS)):
            df = getattr(self, table)
            missing = [c for c in cols if c not in df.columns]
            if missing:
                raise PreferencesError(f"preferences {self.name!r}: {table} lacks {missing}")
        if self.users["user_id"].duplicated().any():
            raise PreferencesError(f"preferences {self.name!r}: duplicated user_id")
        inter = self.interactions
        if inter.duplicated(["user_id", "query_id", "llm"]).any():
            raise PreferencesError(f"preferences {self.name!r}: duplicated (user, query, llm) rows")
        unknown = set(inter["user_id"].unique()) - set(self.users["user_id"])
        if unknown:
            raise PreferencesError(f"preferences {self.name!r}: interactions of unknown users "
                                   f"{sorted(unknown)[:3]}")
        if len(inter):
            per = inter.groupby(["user_id", "query_id"], sort=False)["chosen"].sum()
            if (per != 1).any():
                bad = per[per != 1].index[0]
                raise PreferencesError(f"preferences {self.name!r}: (user, query) {bad} has "
                                       f"{int(per[bad])} chosen LLMs; exactly one is required")
            if not np.isfinite(inter["utility"].to_numpy(dtype=float)).all():
                raise PreferencesError(f"preferences {self.name!r}: non-finite utilities")

    # ------------------------------------------------------------------ views
    @property
    def user_ids(self) -> list[str]:
        return self.users["user_id"].tolist()

    @property
    def llm_names(self) -> list[str]:
        return self.meta.get("llms") or sorted(self.interactions["llm"].unique())

    def choices(self) -> pd.DataFrame:
        """One row per (user_id, query_id): ``chosen_llm``."""
        c = self.interactions[self.interactions["chosen"]]
        return c[["user_id", "query_id", "llm"]].rename(columns={"llm": "chosen_llm"}) \
            .reset_index(drop=True)

    def utility_matrix(self, user_id: str) -> pd.DataFrame:
        """Wide (query_id x llm) utilities of one user; NaN where an LLM is no candidate."""
        rows = self.interactions[self.interactions["user_id"] == user_id]
        if rows.empty and user_id not in set(self.users["user_id"]):
            raise KeyError(f"unknown user {user_id!r}; users look like {self.user_ids[:3]}")
        wide = rows.pivot(index="query_id", columns="llm", values="utility")
        return wide.reindex(columns=[l for l in self.llm_names if l in wide.columns])

    def summary(self) -> dict:
        """Counts: users, queries, interactions, mean candidates per (user, query)."""
        inter = self.interactions
        n_pairs = len(inter[inter["chosen"]])
        return {"name": self.name, "strategy": self.strategy, "bank": self.bank_name,
                "users": len(self.users), "queries": int(inter["query_id"].nunique()),
                "user_query_pairs": n_pairs, "interactions": len(inter),
                "candidates_per_pair": len(inter) / max(n_pairs, 1)}

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        """Write ``users.parquet``, ``interactions.parquet`` and ``meta.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.users.to_parquet(folder / "users.parquet", index=False)
        self.interactions.to_parquet(folder / "interactions.parquet", index=False)
        head = {"name": self.name, "strategy": self.strategy, "bank_name": self.bank_name}
        (folder / "meta.json").write_text(json.dumps(to_jsonable({**head, "meta": self.meta}),
                                                     indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Preferences":
        """Read preferences written by :meth:`save`."""
        folder = Path(folder)
        if not (folder / "meta.json").is_file():
            raise FileNotFoundError(f"{folder} holds no saved preferences (no meta.json); run "
                                    "notebook 20 (python -m prlib.runner 20) to create them")
        head = json.loads((folder / "meta.json").read_text())
        inter = pd.read_parquet(folder / "interactions.parquet")
        inter["chosen"] = inter["chosen"].astype(bool)
        return cls(head["name"], head["strategy"], head["bank_name"],
                   pd.read_parquet(folder / "users.parquet"), inter, head.get("meta", {}))


def preferences_dir() -> Path:
    """``data/interim/preferences`` (git-ignored): where notebook 20 saves every Preferences."""
    from prlib.config import interim_dir

    path = interim_dir() / "preferences"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------- choice rule
def choose(utility: np.ndarray, temperature: float = 0.0, rng: np.random.Generator | None = None,
           tie_break: np.ndarray | None = None) -> np.ndarray:
    """Index of the chosen candidate per row of ``utility`` (shape (n, k), -inf = no candidate).

    ``temperature == 0``: argmax, ties broken by the smallest ``tie_break`` value (e.g. cost),
    then by column order. ``temperature > 0``: a draw from softmax(utility / temperature),
    implemented as argmax(utility + temperature * Gumbel noise) with ``rng``. Returns (n,) ints.
    """
    u = np.asarray(utility, dtype=float)
    if temperature < 0:
        raise PreferencesError(f"temperature must be >= 0, got {temperature}")
    if not np.isfinite(u).any(axis=1).all():
        raise PreferencesError("a row of utilities has no finite candidate")
    if temperature > 0:
        if rng is None:
            raise PreferencesError("a noisy choice (temperature > 0) needs a seeded rng")
        u = u + temperature * rng.gumbel(size=u.shape)
    best = np.max(u, axis=1, keepdims=True)
    tied = np.isclose(u, best, rtol=0, atol=1e-12) & np.isfinite(u)
    if tie_break is None:
        return np.argmax(tied, axis=1)
    tb = np.where(tied, np.asarray(tie_break, dtype=float), np.inf)
    return np.argmin(tb, axis=1)
