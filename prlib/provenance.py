"""Provenance guards: which requests reached fit, selection and scoring, checked at run time.

Every router records what its ``fit``, ``fine_tune`` and ``add_user`` received
(:class:`~prlib.routers.base.Router` wraps them; :func:`record`): the (user, query) ids of
each request set, a digest of those ids, and whether the set was a choice-only view.
The experiment paths then assert, after each fit, what must hold, and raise
:class:`ProvenanceError` naming what leaked and where:

* :func:`check_split`: train / val / test are disjoint by query (and by user where users are
  held out);
* :func:`check_fit`: the router was fitted on exactly the seed's train and validation views
  (so early stopping and checkpoint choice read that seed's validation part), choice-only
  views where the feedback is the choice;
* :func:`check_selection`: a grid point is judged on the validation requests its router was
  fitted with, never on test;
* :func:`check_scored`: no scored request shares a query with what the router learned from;
* :func:`check_shots`: a held-out user's history holds exactly its ``k`` shots;
* :func:`check_choice_view`: a choice-only view carries picks only (0/1 rows summing to 1);
* :func:`check_seeds_differ`: different seeds gave different splits;
* :func:`check_previous_turn`: previous-turn utilities are empty at first turns.

The checks hash ids and never touch a tensor: a few milliseconds per fit on the paper's
setting (the closing note of the guards issue gives the measurement).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

#: Router methods whose request arguments are recorded.
RECORDED = ("fit", "fine_tune", "add_user")


class ProvenanceError(RuntimeError):
    """A request reached a fit, a selection or a score that it must not reach (a leak, a
    mixed-up split or seed). The message names what leaked and where."""


@dataclass(frozen=True)
class RequestIds:
    """What identifies a request set: its queries, its rows per user, a digest of its sorted
    (user, query) pairs, and whether it is a choice-only view."""

    queries: frozenset
    per_user: Mapping[str, int] = field(repr=False)
    digest: str
    n: int
    choice_only: bool

    @property
    def users(self) -> frozenset:
        return frozenset(self.per_user)


def _pairs(frame: pd.DataFrame) -> np.ndarray:
    """Sorted uint64 hashes of the (user, query) rows, shape (n,)."""
    return np.sort(pd.util.hash_pandas_object(frame[["user_id", "query_id"]],
                                              index=False).to_numpy())


def is_choice_view(requests) -> bool:
    """Whether every candidate utility is 0 or 1 with exactly one 1 per request, at the pick."""
    u = requests.utility
    if len(u) == 0:
        return True
    cand = ~np.isnan(u)
    ok = np.isin(u[cand], (0.0, 1.0)).all()
    rows = np.arange(len(u))
    return bool(ok and (np.nansum(u, axis=1) == 1).all() and (u[rows, requests.chosen] == 1).all())


def ids_of(requests) -> RequestIds:
    """The :class:`RequestIds` of a :class:`~prlib.requests.Requests` (computed once per request
    set: request sets are not changed in place, every view is a new one)."""
    cached = requests.__dict__.get("_ids")
    if cached is not None and cached[0] == len(requests.frame):
        return cached[1]
    ids = _ids_of(requests)
    requests.__dict__["_ids"] = (len(requests.frame), ids)
    return ids


def _ids_of(requests) -> RequestIds:
    f = requests.frame
    return RequestIds(frozenset(map(str, f["query_id"].unique())),
                      {str(u): int(n) for u, n in f["user_id"].value_counts(sort=False).items()},
                      hashlib.sha1(_pairs(f).tobytes()).hexdigest(), len(f),
                      is_choice_view(requests))


def record(method):
    """Wrap a router method so that the request sets it receives are recorded in
    ``router.provenance[name]`` (a list, one entry per call; nested calls through ``super()``
    are recorded once). Not fitted state: never saved with the router."""
    name = method.__name__

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        if self.__dict__.get("_recording"):
            return method(self, *args, **kwargs)
        from prlib.requests import Requests

        sets = [ids_of(a) for a in list(args) + list(kwargs.values()) if isinstance(a, Requests)]
        log = self.__dict__.setdefault("provenance", {})
        if name == "fit":  # a refit starts a new history
            log.clear()
        calls = log.setdefault(name, [])
        calls.append(sets)
        self._recording = True
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            calls.pop()  # what failed was not learned from
            raise
        finally:
            self._recording = False

    wrapped._records = name
    return wrapped


def fitted_on(router) -> tuple[RequestIds, RequestIds]:
    """``(train, val)`` ids of the router's last ``fit``."""
    calls = getattr(router, "provenance", {}).get("fit")
    if not calls:
        raise ProvenanceError(f"{type(router).__name__} has no record of a fit; fit it through "
                              "its own fit method")
    train, val = calls[-1][:2]
    return train, val


def learned_from(router) -> list[RequestIds]:
    """Every request set the router learned from: fit's train and val, fine-tunes, add_user."""
    log = getattr(router, "provenance", {})
    return [s for calls in log.values() for sets in calls for s in sets]


def _show(items: Iterable, n: int = 5) -> str:
    items = sorted(map(str, items))
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def check_split(train, val, test, where: str, held_out_users: Iterable = ()) -> None:
    """Train, validation and test share no query; no held-out user is in train or val."""
    parts = {"train": ids_of(train), "val": ids_of(val), "test": ids_of(test)}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = parts[a].queries & parts[b].queries
        if shared:
            raise ProvenanceError(f"{where}: the {a} and {b} parts share {len(shared)} queries "
                                  f"({_show(shared)}); splits must be disjoint by query")
    held = set(map(str, held_out_users))
    for part in ("train", "val"):
        seen = parts[part].users & held
        if seen:
            raise ProvenanceError(f"{where}: held-out users ({_show(seen)}) have requests in "
                                  f"the {part} part")


def check_fit(router, train, val, where: str, feedback: str = "utility") -> None:
    """The router's last fit received exactly ``train`` and ``val`` (the seed's views: its
    early stopping and checkpoint choice read that validation part), choice-only views where
    ``feedback == "choice"``."""
    got_train, got_val = fitted_on(router)
    for part, got, want in (("train", got_train, train), ("val", got_val, val)):
        want = ids_of(want)
        if got.digest != want.digest:
            extra = got.queries - want.queries
            raise ProvenanceError(
                f"{where}: {type(router).__name__} was fitted with {got.n} {part} requests that "
                f"are not the seed's {want.n} {part} requests"
                + (f" (queries outside that part: {_show(extra)})" if extra else ""))
        if feedback == "choice" and not got.choice_only:
            raise ProvenanceError(f"{where}: {type(router).__name__}'s {part} requests carry "
                                  "utilities, not picks only (feedback='choice')")


def check_fitted_and_scored(router, train, val, test, where: str,
                            feedback: str = "utility") -> None:
    """:func:`check_fit` on ``train`` / ``val``, then :func:`check_scored` on ``test``: what every
    path that fits one router on a seed's views and scores it on that seed's test checks."""
    check_fit(router, train, val, where, feedback)
    check_scored(router, test, where)


def check_selection(router, val, where: str) -> None:
    """A selection (a grid point, a checkpoint) is judged on the validation requests the
    router was fitted with, not on any other set (test above all)."""
    _, got_val = fitted_on(router)
    scored = ids_of(val)
    if scored.digest != got_val.digest:
        raise ProvenanceError(f"{where}: selection scored {scored.n} requests that are not the "
                              f"{got_val.n} validation requests {type(router).__name__} was "
                              "fitted with (a tuner must read validation, never test)")


def check_scored(router, test, where: str) -> None:
    """No scored request shares a query with anything the router learned from."""
    scored = ids_of(test)
    for seen in learned_from(router):
        shared = scored.queries & seen.queries
        if shared:
            raise ProvenanceError(f"{where}: {len(shared)} scored queries ({_show(shared)}) are "
                                  f"also in requests {type(router).__name__} learned from")


def check_shots(history, users: Iterable, k: int | Mapping[str, int], where: str) -> None:
    """Each of ``users`` (held out) has exactly ``k`` requests in ``history`` (a
    :class:`~prlib.requests.Requests` or its :class:`RequestIds`); ``k`` may map each user to
    their own count (users absent from it: 0)."""
    ids = history if isinstance(history, RequestIds) else ids_of(history)
    want = (lambda u: k.get(str(u), 0)) if isinstance(k, Mapping) else (lambda u: k)
    wrong = {u: ids.per_user.get(str(u), 0) for u in users
             if ids.per_user.get(str(u), 0) != want(u)}
    if wrong:
        shown = ", ".join(f"{u}: {n} (not {want(u)})" for u, n in list(wrong.items())[:5])
        raise ProvenanceError(f"{where}: held-out users must have exactly their k shots in "
                              f"the history, got {shown}")


def check_learned_shots(router, users: Iterable, k: int | Mapping[str, int],
                        where: str) -> None:
    """The router's fit history (train) holds exactly ``k`` requests of each held-out user."""
    check_shots(fitted_on(router)[0], users, k, where)


def check_fine_tune(router, users: Iterable, k: int, val, where: str) -> None:
    """The router's last fine-tune saw exactly ``k`` shots of each of ``users`` and chose its
    checkpoint on ``val`` (the known users' validation requests)."""
    calls = getattr(router, "provenance", {}).get("fine_tune")
    if not calls:
        raise ProvenanceError(f"{where}: {type(router).__name__} has no record of a fine-tune")
    support, got_val = calls[-1][:2]
    check_shots(support, users, k, where)
    if got_val.digest != ids_of(val).digest:
        raise ProvenanceError(f"{where}: the fine-tune chose its checkpoint on {got_val.n} "
                              f"requests that are not the {len(val)} validation requests")


def check_choice_view(requests, where: str) -> None:
    """A choice-only view: candidate utilities 0/1, one 1 per request, at the pick."""
    if not is_choice_view(requests):
        raise ProvenanceError(f"{where}: a choice-only view carries utilities other than the "
                              "pick (rows must be 0/1 and sum to 1)")


def check_seeds_differ(split_ids: Mapping[int, str], where: str) -> None:
    """``{seed: digest of its split}``: two different seeds never give the same split."""
    seen: dict[str, int] = {}
    for seed, digest in split_ids.items():
        if digest in seen and seen[digest] != seed:
            raise ProvenanceError(f"{where}: seeds {seen[digest]} and {seed} gave the same "
                                  "split; a seed must change the split")
        seen.setdefault(digest, seed)


def split_digest(test) -> str:
    """A short digest of a split, from its test queries."""
    return hashlib.sha1("\n".join(sorted(ids_of(test).queries)).encode()).hexdigest()[:12]


def check_previous_turn(requests, previous_query: Mapping[str, str], where: str) -> None:
    """A request with no previous turn carries no previous-turn utilities."""
    if requests.previous is None:
        return
    first = ~requests.frame["query_id"].map(lambda q: q in previous_query).to_numpy(bool)
    if first.any() and not np.isnan(requests.previous[first]).all():
        raise ProvenanceError(f"{where}: first turns carry previous-turn utilities: they can "
                              "only be the request's own labels")
