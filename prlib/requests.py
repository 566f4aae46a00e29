"""Requests and splits: the data every router reads (most routers build no graph).

A *request* is one (user, query) pair with the utility of every candidate LLM for that user and
the LLM the user chose. Splits are by query: one seeded partition of the query ids into train /
val / test shared by all users, so a test query has never been seen with a label by anybody.
:func:`choice_only` is the view a router gets when a user reveals only their pick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from prlib.bank import Bank

SPLITS = ("train", "val", "test")
#: The (n, n_llms) arrays of :class:`Requests`, one column per LLM.
PER_LLM_FIELDS = ("utility", "quality", "cost", "call_cost", "previous")


class RequestsError(ValueError):
    """Inputs that cannot make sound requests or splits (empty splits, unknown LLMs, ...)."""


@dataclass
class QuerySplit:
    """A partition of query ids into train / val / test (disjoint by construction)."""

    train: list[str]
    val: list[str]
    test: list[str]

    def of(self) -> dict[str, str]:
        """``{query_id: split name}``."""
        return {q: s for s in SPLITS for q in getattr(self, s)}


def split_queries(query_ids, fractions=(0.7, 0.1, 0.2), seed: int = 0,
                  groups: dict[str, str] | None = None) -> QuerySplit:
    """Seeded random partition of ``query_ids`` (70/10/20 by default). With ``groups``
    (``{query_id: group}``, e.g. the conversation of each turn), whole groups are partitioned,
    so the turns of one conversation always share a split."""
    if groups is not None:
        missing = sorted(set(map(str, query_ids)) - set(groups))
        if missing:
            raise RequestsError(f"queries {missing[:3]} have no group; map every query id")
        part = split_queries({groups[str(q)] for q in query_ids}, fractions, seed)
        side = part.of()
        ids = sorted(set(map(str, query_ids)))
        return QuerySplit(*[[q for q in ids if side[groups[q]] == s] for s in SPLITS])
    ids = np.array(sorted(set(map(str, query_ids))))
    if len(ids) < 3:
        raise RequestsError(f"need at least 3 queries to split, got {len(ids)}")
    if not np.isclose(sum(fractions), 1.0) or min(fractions) <= 0:
        raise RequestsError(f"split fractions must be positive and sum to 1, got {fractions}")
    perm = np.random.default_rng(seed).permutation(ids)
    n_train = int(round(fractions[0] * len(ids)))
    n_val = max(1, int(round(fractions[1] * len(ids))))
    return QuerySplit(perm[:n_train].tolist(), perm[n_train:n_train + n_val].tolist(),
                      perm[n_train + n_val:].tolist())


@dataclass
class Requests:
    """The (user, query) requests of an experiment with their candidates' utilities.

    ``utility`` has shape (n_requests, n_llms), a NaN marking an LLM that is not a candidate for
    that request; ``chosen`` (n_requests,) is the index of the LLM the user picked.
    """

    frame: pd.DataFrame  # user_id, query_id, task, split
    llms: list[str]
    utility: np.ndarray
    chosen: np.ndarray  # int index of the chosen LLM per request
    quality: np.ndarray | None = None  # (n, n_llms) bank quality, for reporting only
    cost: np.ndarray | None = None  # (n, n_llms) bank cost in USD, for reporting only
    #: (n, n_llms) utility the user loses by *calling* that LLM (multi-cost users:
    #: ``(1 - p) * cost_norm``, already inside ``utility`` for the picked LLM); charged for every
    #: further LLM a cascade calls. ``None``: calling costs the user no utility (judge users).
    call_cost: np.ndarray | None = None
    #: (n, n_llms) the same user's utility of each LLM at the *previous turn* of the same
    #: conversation (multi-turn data; NaN at a first turn or where that LLM was not rated then):
    #: history the user has already given, never the label of the request itself. ``None``:
    #: single-turn requests.
    previous: np.ndarray | None = None
    #: positions memoised by :meth:`lookup`, ``{(column, id(index)): (index, positions)}``;
    #: carried (sliced) through :meth:`select`, never through ``replace`` (a fresh one there)
    _lookups: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.chosen)

    def select(self, mask) -> "Requests":
        """Requests by boolean mask or integer positions, shape (n,) -> a new set. Its
        ``frame`` is taken from this one's when first read: a training loop's mini-batches,
        whose ids :meth:`lookup` has resolved already, never build theirs (a pandas take of
        every column, about a sixth of a small torch router's fit)."""
        mask = np.asarray(mask)
        pick = lambda a: None if a is None else a[mask]  # noqa: E731
        out = Requests(None, self.llms, self.utility[mask], self.chosen[mask],
                       pick(self.quality), pick(self.cost), pick(self.call_cost),
                       pick(self.previous))
        out.__dict__["_frame_rows"] = (self.frame, mask)
        out._lookups = {k: (index, pos[mask]) for k, (index, pos) in self._lookups.items()}
        return out

    def __getstate__(self) -> dict:
        """Pickled with its own frame (not the frame it would be taken from)."""
        _ = self.frame
        return dict(self.__dict__)

    def lookup(self, column: str, index: pd.Index) -> np.ndarray:
        """Positions of each request's ``column`` value in ``index`` (-1: absent), shape (n,).

        Memoised per (column, index object) and sliced by :meth:`select`, so a training loop
        that draws mini-batches of one set resolves its ids once, not once per batch."""
        key = (column, id(index))
        hit = self._lookups.get(key)
        if hit is None or hit[0] is not index:
            hit = (index, index.get_indexer(self.frame[column]))
            self._lookups[key] = hit
        return hit[1]

    def with_llm_columns(self, llms, columns, chosen=None) -> "Requests":
        """The same requests over ``llms``: ``columns`` maps every (n, n_llms) array (utility,
        quality, cost, call_cost, previous) to its (n, len(llms)) new columns; ``chosen``: the
        new index of each request's pick (default: unchanged)."""
        return replace(self, llms=list(llms),
                       chosen=self.chosen if chosen is None else np.asarray(chosen),
                       **{f: None if getattr(self, f) is None else columns(getattr(self, f))
                          for f in PER_LLM_FIELDS})

    def renamed(self, user_id: str) -> "Requests":
        """The same requests asked by another (e.g. a new) user."""
        return replace(self, frame=self.frame.assign(user_id=user_id))

    def split(self, name: str) -> "Requests":
        """The requests of one split ("train", "val" or "test")."""
        return self.select(self.frame["split"].to_numpy() == name)

    @property
    def candidates(self) -> np.ndarray:
        """Boolean (n, n_llms): which LLMs are candidates of each request."""
        return ~np.isnan(self.utility)


def _get_frame(self: Requests) -> pd.DataFrame:
    frame = self.__dict__.get("_frame")
    if frame is None and "_frame_rows" in self.__dict__:  # made by select: take the rows now
        parent, rows = self.__dict__.pop("_frame_rows")
        frame = self.__dict__["_frame"] = parent.iloc[rows].reset_index(drop=True)
    return frame


def _set_frame(self: Requests, frame: pd.DataFrame) -> None:
    self.__dict__["_frame"] = frame
    if frame is not None:
        self.__dict__.pop("_frame_rows", None)


# a property set after the dataclass is made, so that the generated __init__, replace, repr and
# comparisons go through it: ``frame`` stays a field
Requests.frame = property(_get_frame, _set_frame,
                          doc="user_id, query_id, task, split per request (n rows)")


def build_requests(interactions: pd.DataFrame, bank: Bank, split: QuerySplit) -> Requests:
    """Wide per-request arrays from tidy interactions (user_id, query_id, llm, utility, chosen)."""
    llms = bank.llm_names
    inter = interactions[interactions["query_id"].isin(split.of())]
    if inter.empty:
        raise RequestsError("no interaction names a query of the split; check bank and split")
    # one request per (user, query), numbered in order of first appearance
    r = inter.groupby(["user_id", "query_id"], sort=False, dropna=False).ngroup().to_numpy()
    first = ~inter.duplicated(["user_id", "query_id"]).to_numpy()
    key = inter.loc[first, ["user_id", "query_id"]].reset_index(drop=True)
    key["task"] = key["query_id"].map(dict(zip(bank.queries["query_id"], bank.queries["task"])))
    key["split"] = key["query_id"].map(split.of())
    col = pd.Index(llms).get_indexer(inter["llm"])
    if (col < 0).any():
        raise RequestsError(f"interactions name LLMs not in bank {bank.name!r}: "
                            f"{sorted(set(inter['llm'][col < 0]))[:5]}")
    utility = np.full((len(key), len(llms)), np.nan)
    utility[r, col] = inter["utility"].to_numpy(dtype=float)
    chosen = np.full(len(key), -1)
    picked = inter["chosen"].to_numpy(dtype=bool)
    chosen[r[picked]] = col[picked]
    if (chosen < 0).any():
        raise RequestsError(f"{int((chosen < 0).sum())} requests have no chosen LLM")
    call_cost = None
    if "call_cost" in inter:
        call_cost = np.full((len(key), len(llms)), np.nan)
        call_cost[r, col] = inter["call_cost"].to_numpy(dtype=float)
    rows = pd.Index(bank.queries["query_id"]).get_indexer(key["query_id"])
    quality = bank.matrix("quality").to_numpy(dtype=float)[rows]
    cost = bank.matrix("cost_usd").to_numpy(dtype=float)[rows]
    return Requests(key, llms, utility, chosen, quality, cost, call_cost)


def with_previous_turn(requests: Requests, previous_query: dict[str, str]) -> Requests:
    """``requests`` with :attr:`Requests.previous` filled: for a request (user, q) whose query
    continues the conversation of ``previous_query[q]``, the same user's utilities of that
    previous turn (NaN where the user has no such request or did not rate that LLM then)."""
    f = requests.frame
    row = {(u, q): i for i, (u, q) in enumerate(zip(f["user_id"], f["query_id"]))}
    prev = np.full(requests.utility.shape, np.nan)
    for i, (u, q) in enumerate(zip(f["user_id"], f["query_id"])):
        j = row.get((u, previous_query.get(q)))
        if j is not None:
            prev[i] = requests.utility[j]
    return replace(requests, previous=prev)


def concat_requests(a: Requests, b: Requests) -> Requests:
    """Stack two request sets over the same LLMs."""
    if a.llms != b.llms:
        raise RequestsError("request sets differ in their LLMs")

    def both(x, y):
        return None if x is None or y is None else np.vstack([x, y])

    return Requests(pd.concat([a.frame, b.frame], ignore_index=True), a.llms,
                    np.vstack([a.utility, b.utility]), np.concatenate([a.chosen, b.chosen]),
                    both(a.quality, b.quality), both(a.cost, b.cost),
                    both(a.call_cost, b.call_cost), both(a.previous, b.previous))


def sample_per_user(requests: Requests, n: int, seed: int = 0,
                    users: Sequence[str] | None = None) -> Requests:
    """At most ``n`` requests of each user (a seeded draw, original order kept); a user with
    fewer keeps all of theirs. The sparsity knob of PersonaRoute-Bench's sweep: how many
    interactions per user a router learns from. ``users``: thin only these (the others keep
    every request; None: everyone)."""
    if n < 1:
        raise RequestsError(f"n must be >= 1 interaction per user, got {n}")
    rng = np.random.default_rng(seed)
    thinned = None if users is None else set(map(str, users))
    keep = [rows if len(rows) <= n or (thinned is not None and str(u) not in thinned)
            else rng.choice(rows, n, replace=False)
            for u, rows in requests.frame.groupby("user_id", sort=True).indices.items()]
    return requests.select(np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64))


def choice_only(requests: Requests) -> Requests:
    """The view a router gets when feedback is the choice only: utility = 1 for the chosen
    LLM, 0 for the other candidates (NaN stays NaN), so validation reward = accuracy."""
    u = np.where(requests.candidates, 0.0, np.nan)
    u[np.arange(len(u)), requests.chosen] = 1.0
    return replace(requests, utility=u)
